"""The dashboard's "Fleet plan" panel: QPS and p99 target in; the stated answer per GPU, a
GPU-by-recipe table and the cost-vs-accuracy chart out. Wiring only: the plan is
l4opt.ui.view_model.fleet_plan (l4opt.plan under the dashboard's budget), its table, sentences
and chart come from l4opt.fleet.plan, so the report and the CLI show the same."""
from __future__ import annotations

import html
import threading
import traceback

from l4opt.ui.view_model import FLEET_GPUS, fleet_plan

e = html.escape


class FleetPanel:
    """The panel's widgets (an Accordion in `widget`) and its last plan (`result`)."""

    def __init__(self, w, go, dash, style):
        from l4opt.latency import hardware

        self.dash, self.result, self.error, self.thread = dash, None, None, None
        self.qps = w.FloatText(value=0.0, description="traffic QPS (0: one GPU at its max)",
                               style=style)
        self.p99 = w.BoundedFloatText(value=20.0, min=1e-3, max=1e6, step=1.0,
                                      description="p99 target ms", style=style)
        known = list(dict.fromkeys(list(FLEET_GPUS) + list(hardware.gpus())))
        self.gpus = w.SelectMultiple(options=known, value=FLEET_GPUS, rows=min(6, len(known)),
                                     description="GPUs", style=style)
        self.button = w.Button(description="Plan", icon="server",
                               tooltip="max QPS per GPU at the p99 target, GPUs needed, USD per "
                                       "million and joules per inference per recipe and GPU")
        self.info = w.HTML("<i>set the traffic and the p99 target, then press Plan (latencies "
                           "are the L4 cost model's ESTIMATES unless an L4 measured them)</i>")
        self.table = w.HTML(layout={"max_width": "100%", "overflow_x": "auto"})
        self.figure = go.FigureWidget()
        self.figure.layout.height = 420
        self.button.on_click(lambda _: self.start())
        self.widget = w.Accordion(children=[w.VBox([
            w.HBox([self.qps, self.p99, self.gpus, self.button]), self.info, self.table,
            self.figure])])
        self.widget.set_title(0, "Fleet plan")

    def settings(self) -> dict | None:
        """The panel's inputs as the report's `fleet` argument (None before any plan)."""
        if self.result is None:
            return None
        return {"p99_ms": float(self.p99.value), "qps": float(self.qps.value) or None,
                "gpus": list(self.gpus.value)}

    def start(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.info.value = "already planning"
            return
        if self.dash.background:
            self.thread = threading.Thread(target=self.plan, name="l4opt-plan", daemon=True)
            self.thread.start()
        else:
            self.plan()

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def plan(self):
        """Plan the dashboard's workload under its budget and draw the answer."""
        from l4opt.errors import L4OptError
        from l4opt.fleet.plan import (cost_accuracy_figure, display_table, folded_notes,
                                      recommendation)
        from l4opt.ui.report import html_table
        from l4opt.ui.widgets import _replace_figure

        d = self.dash
        d._sync()
        self.button.disabled, self.error = True, None
        self.info.value = f"planning {e(str(d.model.workload))} on {e(', '.join(self.gpus.value))} ..."
        try:
            res = fleet_plan(d.run_dir, d.model.workload, (d.model.budget_kind, d.model.budget),
                             p99_ms=self.p99.value, qps=self.qps.value or None,
                             gpus=tuple(self.gpus.value) or FLEET_GPUS)
        except L4OptError as exc:
            self.error = str(exc)
            self.info.value = f"<b style='color:#b00'>{e(str(exc))}</b>"
            return None
        except Exception as exc:  # a thread has nobody to raise to: show it
            self.error = traceback.format_exc()
            self.info.value = (f"<b style='color:#b00'>{e(type(exc).__name__)}: {e(str(exc))}"
                               f"</b> (traceback in dashboard.fleet.error)")
            return None
        finally:
            self.button.disabled = False
        self.result = res
        shown = display_table(res)
        notes = folded_notes(res.table) + list(res.notes)
        self.info.value = "<ul>" + "".join(f"<li>{e(x)}</li>" for x in recommendation(res)) + \
            "</ul>" + (f"<details><summary>{len(notes)} notes</summary><ul>" + "".join(
                f"<li>{e(n)}</li>" for n in notes) + "</ul></details>" if notes else "")
        self.table.value = html_table(shown, list(shown.columns))
        _replace_figure(self.figure, cost_accuracy_figure(res))
        return res
