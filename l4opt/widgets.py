"""The notebook dashboard: ipywidgets controls over sweeps, a live plotly FigureWidget, the
results table, a per-trial view on click, and a report button. All drawing is l4opt.plots."""
from __future__ import annotations

import html
import json
import threading
from pathlib import Path

from . import env


class Dashboard:
    """Choose workload, recipes, calibration samples, batch size and an accuracy budget; Run
    sweeps trial by trial so the chart fills in as trials finish."""

    def __init__(self, run_dir="runs/dashboard", workload: str = "minilm", recipes=None,
                 calib_samples: int | None = None, eval_samples: int | None = None,
                 batch_size: int | None = None, min_cosine: float = 0.99,
                 background: bool = True):
        w = env.require("ipywidgets", "the dashboard")
        go = env.require("plotly.graph_objects", "the dashboard")
        from . import recipes as rlib
        from . import workloads

        self.run_dir, self.background, self.eval_samples = Path(run_dir), background, eval_samples
        self.rows: list[dict] = []
        self.thread = None
        self.workload = w.Dropdown(options=workloads.names(), value=workload, description="workload")
        self.recipes = w.SelectMultiple(options=rlib.names(), value=tuple(recipes or rlib.names()),
                                        description="recipes", rows=7)
        self.calib = w.BoundedIntText(value=calib_samples or 128, min=1, max=100000,
                                      description="calib n")
        self.batch = w.BoundedIntText(value=batch_size or 32, min=1, max=4096, description="batch")
        self.budget = w.BoundedFloatText(value=min_cosine, min=-1, max=1, step=0.001,
                                         description="min cosine")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.report_button = w.Button(description="Export report", icon="file")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="trials")
        self.status = w.HTML()
        self.table = w.HTML()
        self.detail = w.HTML("<i>click a point to see that trial</i>")
        self.figure = go.FigureWidget()
        self.run_button.on_click(lambda _: self.run())
        self.report_button.on_click(lambda _: self.export_report())
        self.widget = w.VBox([
            w.HBox([self.workload, self.recipes]),
            w.HBox([self.calib, self.batch, self.budget]),
            w.HBox([self.run_button, self.report_button, self.progress]), self.status,
            self.figure, self.table, self.detail])
        self._redraw()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -------------------------------------------------------------- actions
    def run(self):
        if self.background:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        else:
            self._run()

    def _run(self):
        from .errors import L4OptError
        from .sweeps import sweep
        from .workloads import load

        names = list(self.recipes.value)
        self.progress.max, self.progress.value = max(1, len(names)), 0
        self.run_button.disabled = True
        kw = {"calib_samples": self.calib.value}
        if self.eval_samples:
            kw["eval_samples"] = self.eval_samples
        try:
            wl = load(self.workload.value, **kw)
            wl.batch_size = self.batch.value
            for name in names:
                self.status.value = f"running {html.escape(name)} ..."
                res = sweep(wl, [name], self.run_dir, progress=False)
                self.rows = [r for r in self.rows if r["key"] != res.rows[0]["key"]] + res.rows
                self.progress.value += 1
                self._redraw()
            self.status.value = f"done: {len(names)} trials in {html.escape(str(self.run_dir))}"
        except L4OptError as exc:
            self.status.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"
        finally:
            self.run_button.disabled = False

    def export_report(self) -> Path:
        from .report import write_report

        path = write_report(self.run_dir)
        self.status.value = f"report written: {html.escape(str(path))}"
        return path

    # -------------------------------------------------------------- views
    def frame(self):
        import pandas as pd

        df = pd.DataFrame(self.rows)
        if len(df):
            df["meets_budget"] = df["cos_mean"] >= self.budget.value
        return df

    def _redraw(self):
        from . import plots
        from .report import SHOW, _table

        df = self.frame()
        fig = plots.accuracy_latency(df)
        with self.figure.batch_update():
            self.figure.data = ()
            for t in fig.data:
                self.figure.add_trace(t)
            self.figure.layout = fig.layout
        for t in self.figure.data:
            if t.mode and "markers" in t.mode:
                t.on_click(self._on_click)
        self.table.value = _table(df, SHOW + ["meets_budget"]) if len(df) else ""

    def _on_click(self, trace, points, state=None):
        if points.point_inds:
            self.show_trial(trace.customdata[points.point_inds[0]][2])

    def show_trial(self, key: str) -> str:
        """The per-layer view of one trial: its row, and sensitivity if this run has one."""
        row = next((r for r in self.rows if r["key"] == key or r["recipe"] == key), None)
        if row is None:
            self.detail.value = f"no trial {html.escape(key)}"
            return self.detail.value
        e = html.escape
        keys = ["recipe", "format", "path", "algorithm", "metric", "metric_delta", "cos_mean",
                "cos_min", "sqnr_db", "quantized_layers", "latency_ms", "latency_source",
                "drift_backend", "custom_ops", "notes"]
        items = "".join(f"<tr><th>{e(k)}</th><td>{e(json.dumps(row.get(k), default=str))}</td></tr>"
                        for k in keys if k in row)
        parts = [f"<h4>{e(row['recipe'])}</h4><table>{items}</table>"]
        for f in sorted((self.run_dir / "sensitivity").glob(f"{row['workload']}-*.json")):
            layers = json.loads(f.read_text()).get("layers", [])[:10]
            parts.append(f"<h5>per-layer sensitivity ({e(f.stem)})</h5><ol>" + "".join(
                f"<li>{e(x['layer'])}: share {x['share']:.3f}, drop alone {x['only_drop']:.4g}</li>"
                for x in layers) + "</ol>")
        self.detail.value = "".join(parts)
        return self.detail.value
