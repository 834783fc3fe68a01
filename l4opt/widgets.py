"""The notebook dashboard: ipywidgets controls over sweeps, a live plotly FigureWidget, the
results table, a per-layer view of the clicked trial, and a report button.

Drawing is l4opt.plots, tables are l4opt.report.html_table, running is l4opt.sweep: this module
only wires them to widgets, so everything it shows is tested where it is made.
"""
from __future__ import annotations

import html
import inspect
import json
import threading
import traceback
from pathlib import Path

from . import env

BUDGETS = [("task metric drop <=", "max_drop"), ("mean cosine >=", "min_cosine")]
TABLE_COLUMNS = ["name", "format", "path", "algorithm", "metric", "metric_drop", "cos_mean",
                 "sqnr_db", "dash_latency_ms", "dash_latency_source", "within_budget",
                 "pareto_here", "drift_backend", "cached"]
e = html.escape


def _workload_defaults(name: str) -> dict:
    from . import workloads

    fn = workloads.BUILTIN.get(name)
    if fn is None:
        return {}
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


class Dashboard:
    """Choose the workload and recipes, the calibration sample count, the batch size the L4
    latency is shown at, and an accuracy budget; press Run and the accuracy-drift-vs-latency
    chart fills in trial by trial (open markers: estimated L4 latency, filled: measured).
    Clicking a point shows that trial's per-layer view; Export writes the HTML report.

    `workload` is a built-in name or an l4opt.Workload; `background=False` runs in the calling
    thread (tests, papermill), otherwise Run returns at once and the chart updates live.
    """

    def __init__(self, run_dir="runs/dashboard", workload=None, recipes=None,
                 calib_samples: int | None = None, eval_samples: int | None = None,
                 batch_size: int = 1, max_drop: float | None = 0.01,
                 min_cosine: float | None = None, background: bool = True):
        w = env.require("ipywidgets", "the dashboard")
        go = env.require("plotly.graph_objects", "the dashboard")
        from . import recipes as rlib
        from . import workloads

        self.run_dir, self.background, self.eval_samples = Path(run_dir), background, eval_samples
        self.rows: list[dict] = []
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self._lock = threading.RLock()
        self._latency_cache: dict = {}
        self._custom = {}
        if workload is not None and not isinstance(workload, str):
            self._custom[workload.name] = workload
            workload = workload.name
        workload = workload or workloads.DEFAULT
        wl_names = list(dict.fromkeys(list(self._custom) + workloads.names()))
        if workload not in wl_names:
            from .errors import BadInput

            raise BadInput(f"unknown workload {workload!r}; choose one of {wl_names} or pass "
                           f"an l4opt.Workload")
        style = {"description_width": "initial"}
        self.workload = w.Dropdown(options=wl_names, value=workload, description="workload",
                                   style=style)
        names = rlib.names()
        chosen = list(recipes.split(",") if isinstance(recipes, str) else recipes or names)
        extra = [r for r in chosen if r not in names]  # recipe files are allowed too
        self.recipes = w.SelectMultiple(options=names + extra, value=tuple(chosen),
                                        description="recipes", rows=min(8, len(names) + len(extra)),
                                        style=style)
        calib = calib_samples or _workload_defaults(workload).get("calib_samples") or 128
        self.calib = w.BoundedIntText(value=calib, min=1, max=1_000_000,
                                      description="calibration samples", style=style)
        self.batch = w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                                value=batch_size, description="latency at batch", style=style)
        kind = "min_cosine" if min_cosine is not None else "max_drop"
        self.budget_kind = w.Dropdown(options=BUDGETS, value=kind, description="budget",
                                      style=style)
        self.budget = w.BoundedFloatText(
            value=min_cosine if kind == "min_cosine" else (max_drop if max_drop is not None
                                                           else 0.01),
            min=-1.0, max=1.0, step=0.001, description="", layout={"width": "90px"})
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="sweep the chosen recipes; the chart fills in")
        self.report_button = w.Button(description="Export report", icon="file",
                                      tooltip="write RUN_DIR/report.html")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="trials", style=style)
        self.status = w.HTML(f"run directory: <code>{e(str(self.run_dir))}</code>")
        self.figure = go.FigureWidget()
        self.figure.layout.height = 480
        self.table = w.HTML()
        self.detail = w.HTML("<i>click a point to see that trial's per-layer view</i>")
        self.layer_figure = go.FigureWidget()
        self.layer_figure.layout.height = 300
        self.run_button.on_click(lambda _: self.run())
        self.report_button.on_click(lambda _: self.export_report())
        for control in (self.batch, self.budget, self.budget_kind):
            control.observe(lambda _ch: self.redraw(), names="value")
        self.workload.observe(self._workload_changed, names="value")
        self.widget = w.VBox([
            w.HTML("<b>l4opt</b>: accuracy drift against L4 latency. L4 latencies are "
                   "<b>estimated</b> (open markers) unless an L4 measured them (filled)."),
            w.HBox([self.workload, self.recipes]),
            w.HBox([self.calib, self.batch, self.budget_kind, self.budget]),
            w.HBox([self.run_button, self.progress, self.report_button]), self.status,
            self.figure, self.table, self.detail, self.layer_figure])
        self.redraw()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -------------------------------------------------------------- actions
    def run(self):
        """Sweep the chosen recipes one at a time (in a thread unless background=False)."""
        if self.thread is not None and self.thread.is_alive():
            self.status.value = "already running"
            return
        self.run_button.disabled = True
        if self.background:
            self.thread = threading.Thread(target=self._run, name="l4opt-dashboard", daemon=True)
            self.thread.start()
        else:
            self._run()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background run has finished."""
        if self.thread is not None:
            self.thread.join(timeout)

    def _load_workload(self):
        from .workloads import load

        name = self.workload.value
        if name in self._custom:
            return self._custom[name]
        accepted = _workload_defaults(name)
        kw = {"calib_samples": self.calib.value}
        if self.eval_samples and "eval_samples" in accepted:
            kw["eval_samples"] = self.eval_samples
        return load(name, **{k: v for k, v in kw.items() if k in accepted})

    def _run(self):
        from .errors import L4OptError
        from .sweeps import sweep

        names = list(self.recipes.value)
        self.error = None
        self.progress.max, self.progress.value = max(1, len(names)), 0
        self.progress.bar_style = ""
        try:
            if not names:
                self.status.value = "choose at least one recipe"
                return
            self.status.value = f"loading workload {e(self.workload.value)} ..."
            wl = self._load_workload()
            cached = 0
            for i, name in enumerate(names, 1):
                self.status.value = f"trial {i}/{len(names)}: <b>{e(name)}</b> (quantize, " \
                                    f"export, drift, L4 estimate) ..."
                res = sweep(wl, [name], self.run_dir, progress=False)
                with self._lock:
                    for row in res.rows:
                        cached += bool(row.get("cached"))
                        self.rows = [r for r in self.rows if r["key"] != row["key"]] + [row]
                self.progress.value = i
                self.redraw()
            failed = [r["recipe"] for r in self.rows if r.get("status") != "ok"]
            self.progress.bar_style = "danger" if failed else "success"
            self.status.value = (f"done: {len(names)} trials ({cached} served from the store) "
                                 f"in <code>{e(str(self.run_dir))}</code>" +
                                 (f"; <b style='color:#b00'>failed: {e(', '.join(failed))}</b>"
                                  if failed else ""))
        except L4OptError as exc:
            self.error = str(exc)
            self.progress.bar_style = "danger"
            self.status.value = f"<b style='color:#b00'>{e(str(exc))}</b>"
        except Exception as exc:  # a thread has nobody to raise to: show it
            self.error = traceback.format_exc()
            self.progress.bar_style = "danger"
            self.status.value = (f"<b style='color:#b00'>{e(type(exc).__name__)}: "
                                 f"{e(str(exc))}</b> (full traceback in dashboard.error)")
        finally:
            self.run_button.disabled = False

    def export_report(self) -> Path | None:
        """Write RUN_DIR/report.html (self-contained, opens offline)."""
        from .errors import L4OptError
        from .report import write_report

        try:
            path = write_report(self.run_dir)
        except L4OptError as exc:
            self.status.value = f"<b style='color:#b00'>{e(str(exc))}</b>"
            return None
        self.status.value = f"report written: <code>{e(str(path))}</code>"
        return path

    def _workload_changed(self, change):
        with self._lock:
            self.rows = []
        default = _workload_defaults(change["new"]).get("calib_samples")
        if default:
            self.calib.value = default
        self.redraw()

    # -------------------------------------------------------------- latency at a batch
    def _latency_at(self, row: dict, b: int) -> tuple[float | None, str | None]:
        """L4 latency of a trial at batch b: measured when the row's batch sweep has it, the
        row's own number at its batch, else an estimate on its Q/DQ ONNX. Never invented."""
        from .plots import curve_points

        for p in curve_points(row.get("batch_sweep")):
            if p["batch"] == b:
                return p["latency_ms"], row.get("latency_source")
        if b == (row.get("latency_batch") or 1) and row.get("latency_ms") is not None:
            return row["latency_ms"], row.get("latency_source")
        if b == row.get("latency_batch") and row.get("latency_opt_ms") is not None:
            return row["latency_opt_ms"], row.get("latency_source")
        onnx = row.get("onnx_path")
        if not onnx or not (self.run_dir / onnx).exists():
            return None, None
        est = self._estimate(row, b)
        return (est.total_ms, est.source) if est is not None else (None, None)

    def _estimate(self, row: dict, b: int):
        key = (row["key"], b)
        if key not in self._latency_cache:
            from .estimate import estimate_onnx

            dims = {d for i in row.get("inputs") or [] for d in i.get("shape", [])
                    if isinstance(d, str)} or {"batch"}
            try:
                self._latency_cache[key] = estimate_onnx(
                    str(self.run_dir / row["onnx_path"]), "L4", batch=b,
                    dynamic_dims={d: b for d in dims})
            except Exception:  # no estimate: the point is left out and named under the chart
                self._latency_cache[key] = None
        return self._latency_cache[key]

    # -------------------------------------------------------------- views
    def frame(self):
        """The trials shown, with the latency at the chosen batch and the budget verdict."""
        import numpy as np
        import pandas as pd

        from . import plots

        with self._lock:
            rows = list(self.rows)
        df = plots.trials_frame(pd.DataFrame(rows))
        if not len(df):
            return df
        b = self.batch.value
        lat = [self._latency_at(r, b) for r in df.to_dict("records")]
        df["dash_latency_ms"] = np.array([np.nan if v is None else v for v, _ in lat], float)
        df["dash_latency_source"] = [s for _, s in lat]
        if self.budget_kind.value == "max_drop":
            df["within_budget"] = df["metric_drop"] <= self.budget.value + 1e-12
        else:
            df["within_budget"] = df["cos_mean"] >= self.budget.value
        y = self._y()
        has = df["dash_latency_source"].map(lambda s: plots.source_kind(s) is not None)
        df["pareto_here"] = plots.pareto_mask(df[y], df["dash_latency_ms"].where(has))
        df.loc[~has, "dash_latency_ms"] = np.nan
        return df

    def _y(self) -> str:
        return "metric_drop" if self.budget_kind.value == "max_drop" else "cos_drop"

    def redraw(self) -> None:
        """Redraw the chart and the table from the trials so far."""
        from . import plots
        from .report import html_table, latency_header

        with self._lock:
            df = self.frame()
            line = self.budget.value if self.budget_kind.value == "max_drop" \
                else 1.0 - self.budget.value
            fig = plots.accuracy_latency(df, self._y(), x="dash_latency_ms",
                                         source="dash_latency_source", batch=self.batch.value,
                                         budget=line if len(df) else None)
            with self.figure.batch_update():
                self.figure.data = ()
                for t in fig.data:
                    self.figure.add_trace(t)
                self.figure.layout = fig.layout
            for t in self.figure.data:
                if t.mode and "markers" in t.mode and t.name != "Pareto front":
                    t.on_click(self._on_click)
            self.results = df
            if len(df):
                header = latency_header(list(df["dash_latency_source"]),
                                        f"L4 latency ms, batch {self.batch.value}")
                self.table.value = html_table(df, TABLE_COLUMNS, {
                    "dash_latency_ms": header, "dash_latency_source": "latency source",
                    "within_budget": "within budget", "pareto_here": "on Pareto front"})
            else:
                self.table.value = "<i>no trials yet: press Run</i>"

    def _on_click(self, trace, points, selector=None):
        if points.point_inds:
            self.show_trial(trace.customdata[points.point_inds[0]][2])

    def show_trial(self, key: str) -> str:
        """The per-layer view of one trial: its facts, the ESTIMATED per-layer L4 latency of
        its Q/DQ graph at the chosen batch (coloured by precision), its fallback layers if it
        is a search candidate, and the run's per-layer sensitivity for its workload."""
        from . import plots

        with self._lock:
            row = next((r for r in self.rows if r["key"] == key), None) or \
                next((r for r in self.rows if r.get("recipe") == key), None)
        if row is None:
            self.detail.value = f"no trial {e(str(key))} in this dashboard"
            return self.detail.value
        keys = ["workload", "recipe", "format", "path", "algorithm", "metric_name", "metric",
                "metric_delta", "cos_mean", "cos_min", "sqnr_db", "quantized_layers",
                "qdq_nodes", "latency_ms", "latency_batch", "latency_source", "drift_backend",
                "custom_ops", "onnx_path", "notes", "error"]
        items = "".join(f"<tr><th>{e(k)}</th><td>{e(json.dumps(row.get(k), default=str))}"
                        f"</td></tr>" for k in keys if row.get(k) not in (None, [], {}))
        parts = [f"<h4>{e(str(row.get('name') or row['recipe']))}</h4><table>{items}</table>"]
        if row.get("fallback"):
            parts.append(f"<p>kept in high precision: {e(', '.join(map(str, row['fallback'])))}</p>")
        b = self.batch.value
        est = self._estimate(row, b) if row.get("onnx_path") and \
            (self.run_dir / row["onnx_path"]).exists() else None
        if est is not None:
            fig = plots.layer_latency(est.layers, batch=b, title=(
                f"{plots.esc(row['recipe'])}: per-layer L4 latency, ESTIMATED, batch {b} "
                f"({est.total_ms:.4g} ms in all)"))
            parts.append("<p>per-layer L4 latency below is an <b>estimate</b> from the Q/DQ "
                         "graph (precision per layer as TensorRT would run it)</p>")
        else:
            fig = plots.layer_latency([], batch=b)
            parts.append("<p>no ONNX artifact for this trial: no per-layer latency</p>")
        with self.layer_figure.batch_update():
            self.layer_figure.data = ()
            for t in fig.data:
                self.layer_figure.add_trace(t)
            self.layer_figure.layout = fig.layout
        for f in sorted((self.run_dir / "sensitivity").glob("*.json")):
            try:
                d = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if d.get("workload") != row.get("workload"):
                continue
            layers = sorted(d.get("layers") or [], key=lambda x: x.get("rank", 0))[:8]
            parts.append(f"<p>per-layer sensitivity ({e(f.stem)}), most harmful first:</p><ol>"
                         + "".join(f"<li>{e(str(x.get('layer')))}: share "
                                   f"{float(x.get('share', 0)):.3f}, recovery "
                                   f"{float(x.get('recovery', 0)):.4g}</li>" for x in layers)
                         + "</ol>")
        self.selected = row["key"]
        self.detail.value = "".join(parts)
        return self.detail.value
