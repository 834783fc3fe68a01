"""The notebook dashboard: ipywidgets controls over sweeps, a live plotly FigureWidget, the
results table, a per-layer view of the clicked trial, and a report button.

Drawing is l4opt.plots, tables are l4opt.tables, running is l4opt.sweep: this module only
wires them to widgets, so everything it shows is tested where it is made. It shows the recipes
selected (the others hidden or dimmed), reads the run directory's store when it is built or
displayed again, and keeps each workload's choices when switching workloads and back.
"""
from __future__ import annotations

import copy
import dataclasses
import html
import inspect
import json
import threading
import traceback
from pathlib import Path

from . import env

BUDGETS = [("task metric drop <=", "max_drop"), ("mean cosine >=", "min_cosine")]
OTHERS = [("hide", "hide"), ("dim", "dim")]
TABLE_COLUMNS = ["name", "status", "format", "path", "algorithm", "layers", "calib_samples",
                 "metric", "metric_drop", "cos_mean", "cos_min", "sqnr_db", "dash_latency_ms",
                 "dash_latency_source", "latency_batch", "within_budget", "pareto_here",
                 "drift_backend", "cached"]
TABLE_NAMES = {"dash_latency_source": "latency source", "within_budget": "within budget",
               "pareto_here": "on Pareto front", "layers": "quantized layers (GEMM/conv)",
               "calib_samples": "calibration samples", "latency_batch": "deployment batch"}
e = html.escape


def _sync_figure(fig) -> None:
    """Make a FigureWidget's synced state what it shows now. plotly sends later edits as
    messages only, so a view built again (page reload) would start from the empty figure of
    its creation: with this it draws the current one."""
    fig._widget_layout = copy.deepcopy(fig._layout_obj._props)
    fig._widget_data = copy.deepcopy(fig._data)


def search_summary(d: dict) -> str:
    """One line (HTML) for a saved search: met or NOT MET as its message says, the chosen
    candidate's L4 latency with its estimate band and batch, and the share at 8 bits."""
    if d.get("error"):
        return f"<b style='color:#b00'>{e(str(d['error']))}</b>"
    met = "met" if d.get("met") else "NOT MET"
    colour = "#070" if d.get("met") else "#b00"
    parts = [f"<b style='color:{colour}'>budget {met}</b>: {e(str(d.get('message', '')))}"]

    def num(v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return f if f == f else None

    lat, lo, hi = (num(d.get(k)) for k in ("latency_ms", "latency_low_ms", "latency_high_ms"))
    if lat is not None:
        band = f" (estimate band {lo:.4g} to {hi:.4g} ms)" if lo is not None and hi is not None \
            else " (no error band recorded)"
        src = str(d.get("latency_source") or "")
        kind = "measured" if src.startswith("measured") else "estimated"
        parts.append(f"{kind} L4 latency {lat:.4g} ms at batch "
                     f"{e(str(d.get('latency_batch')))}{band}")
    else:
        parts.append("no L4 latency estimate")
    frac = num(d.get("fraction_quantized"))
    parts.append(f"{100 * frac:.0f}% of GEMM/conv layers at 8 bits" if frac is not None
                 else "8-bit share not recorded")
    return "; ".join(parts)


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
    Clicking a point shows that trial's per-layer view; Export writes the HTML report. The
    "Mixed precision" section shows a saved search of the workload (RUN_DIR/search/*.json, read
    as the report reads it): its per-layer precision map and its candidates' Pareto front.

    `workload` is a built-in name, an l4opt.Workload, or 'pkg.module:make_workload' /
    'path/to/file.py:make_workload'; `background=False` runs in the calling thread (tests,
    papermill), otherwise Run returns at once and the chart updates live. Trials already in
    `run_dir` are drawn at once; only the selected recipes are shown (the others hidden or
    dimmed, as the "recipes not selected" control says).
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
        self.rows: list[dict] = []  # every trial this dashboard knows, oldest first
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self._lock = threading.RLock()
        self._latency_cache: dict = {}
        self._custom = {}
        self._state: dict[str, dict] = {}  # per workload: its recipes and calibration count
        self.notes: list[str] = []
        self._names: dict[str, str] = {}  # recipe choice -> the name its rows carry
        if isinstance(workload, str) and workload not in workloads.names() and ":" in workload:
            from .userload import load_workload  # 'pkg.module:make_workload' or 'file.py:fn'

            workload = load_workload(workload)
        if workload is not None and not isinstance(workload, str):
            self._custom[workload.name] = workload
            workload = workload.name
        workload = workload or workloads.DEFAULT
        wl_names = list(dict.fromkeys(list(self._custom) + workloads.names()))
        if workload not in wl_names:
            from .errors import BadInput

            raise BadInput(f"unknown workload {workload!r}; choose one of {wl_names}, pass "
                           f"an l4opt.Workload, or name one as 'pkg.module:make_workload' or "
                           f"'path/to/file.py:make_workload'")
        style = {"description_width": "initial"}
        self.workload = w.Dropdown(options=wl_names, value=workload, description="workload",
                                   style=style)
        names = rlib.names()
        chosen = list(recipes.split(",") if isinstance(recipes, str) else recipes or names)
        chosen = [str(r).strip() for r in chosen if str(r).strip()]
        extra = [r for r in chosen if r not in names]  # recipe files are allowed too
        self.recipes = w.SelectMultiple(options=names + extra, value=tuple(chosen),
                                        description="recipes", rows=min(8, len(names) + len(extra)),
                                        style=style)
        self.calib = w.BoundedIntText(value=calib_samples or self._default_calib(workload),
                                      min=1, max=1_000_000,
                                      description="calibration samples", style=style)
        self.others = w.ToggleButtons(options=OTHERS, value="hide",
                                      description="recipes not selected", style=style,
                                      tooltip="trials of recipes not selected: hidden, or "
                                              "shown dimmed")
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
        self.searches: list[tuple[str, dict]] = []  # this workload's saved searches
        self.search_pick = w.Dropdown(options=[], description="search", style=style,
                                      layout={"width": "70%"})
        self.search_info = w.HTML()
        self.search_map = go.FigureWidget()
        self.search_map.layout.height = 360
        self.front_figure = go.FigureWidget()
        self.front_figure.layout.height = 360
        self._picking = False
        self.search_pick.observe(lambda _ch: None if self._picking else self.show_search(),
                                 names="value")
        self.mixed = w.Accordion(children=[w.VBox([
            w.HTML("the chosen per-layer precision of a saved search (bars: ESTIMATED L4 time "
                   "per layer, coloured by format; line: sensitivity) and its candidates' "
                   "Pareto front with estimate error bands"),
            self.search_pick, self.search_info, self.search_map, self.front_figure])])
        self.mixed.set_title(0, "Mixed precision")
        self.run_button.on_click(lambda _: self.run())
        self.report_button.on_click(lambda _: self.export_report())
        for control in (self.batch, self.budget, self.budget_kind, self.others, self.recipes):
            control.observe(lambda _ch: self.redraw(), names="value")
        self.workload.observe(self._workload_changed, names="value")
        self.widget = w.VBox([
            w.HTML("<b>l4opt</b>: accuracy drift against L4 latency. L4 latencies are "
                   "<b>estimated</b> (open markers) unless an L4 measured them (filled)."),
            w.HBox([self.workload, self.recipes, self.others]),
            w.HBox([self.calib, self.batch, self.budget_kind, self.budget]),
            w.HBox([self.run_button, self.progress, self.report_button]), self.status,
            self.figure, self.table, self.detail, self.layer_figure, self.mixed])
        self.load_store()
        self.redraw()
        self.load_searches()

    def _ipython_display_(self):
        from IPython.display import display

        self.load_store()  # displayed again (re-run cell): draw what the store holds now
        self.redraw()
        self.load_searches()
        display(self.widget)

    def load_store(self) -> int:
        """Read the run directory's finished trials (kept from earlier sessions, or written by
        the CLI) into the dashboard; returns how many trials it knows."""
        from .errors import L4OptError
        from .report import load_run

        if not (self.run_dir / "results.sqlite").exists():
            return len(self.rows)
        try:
            stored = load_run(self.run_dir)["rows"]
        except (L4OptError, OSError, ValueError) as exc:
            self.status.value = f"<b style='color:#b00'>cannot read the store: {e(str(exc))}</b>"
            return len(self.rows)
        with self._lock:
            known = {r.get("key") for r in self.rows}
            new = [r for r in stored if r.get("key") not in known]
            self.rows = new + self.rows  # the store's older trials first, this session's last
        self._ensure_options([r.get("recipe") for r in new
                              if r.get("workload") == self.workload.value])
        return len(self.rows)

    def _ensure_options(self, recipes) -> None:
        """Recipes met in the store (recipe files, imported trials) become choices too."""
        add = [r for r in dict.fromkeys(recipes) if r and r not in self.recipes.options]
        if add:
            value = self.recipes.value
            self.recipes.options = tuple(self.recipes.options) + tuple(add)
            self.recipes.value = value
            self.recipes.rows = min(10, len(self.recipes.options))

    def _recipe_name(self, choice: str) -> str:
        """The name a chosen recipe's rows carry (a recipe file's rows carry its 'name')."""
        if choice not in self._names:
            from . import recipes as rlib
            from .errors import L4OptError

            try:
                self._names[choice] = rlib.get(choice).name
            except L4OptError:
                self._names[choice] = choice
        return self._names[choice]

    def _default_calib(self, name: str) -> int:
        if name in self._custom:
            return max(1, self._custom[name].num_samples(self._custom[name].calib_data))
        return _workload_defaults(name).get("calib_samples") or 128

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
        n = self.calib.value
        if name in self._custom:
            w = self._custom[name]
            have = w.num_samples(w.calib_data)
            if n < have:  # the control decides, for a user's workload too
                w = dataclasses.replace(w, calib_data={k: v[:n] for k, v in w.calib_data.items()})
            elif n > have:
                self.notes.append(f"{name} has {have} calibration samples, fewer than the "
                                  f"{n} asked: calibrating on all {have}")
            return w
        accepted = _workload_defaults(name)
        kw = {"calib_samples": n}
        if self.eval_samples and "eval_samples" in accepted:
            kw["eval_samples"] = self.eval_samples
        elif self.eval_samples:
            self.notes.append(f"{name} takes no eval_samples: evaluated on its own "
                              f"evaluation set")
        return load(name, **{k: v for k, v in kw.items() if k in accepted})

    def _run(self):
        from .errors import L4OptError
        from .sweeps import sweep

        from .tables import row_status

        names = list(self.recipes.value)
        self.error = None
        self.notes: list[str] = []
        self.progress.max, self.progress.value = max(1, len(names)), 0
        self.progress.bar_style = ""
        try:
            if not names:
                self.status.value = "choose at least one recipe"
                return
            self.status.value = f"loading workload {e(self.workload.value)} ..."
            wl = self._load_workload()
            cached, ran = 0, []
            for i, name in enumerate(names, 1):
                self.status.value = f"trial {i}/{len(names)}: <b>{e(name)}</b> (quantize, " \
                                    f"export, drift, L4 estimate) ..."
                res = sweep(wl, [name], self.run_dir, progress=False)
                with self._lock:
                    for row in res.rows:
                        cached += bool(row.get("cached"))
                        ran.append(row)
                        self.rows = [r for r in self.rows if r["key"] != row["key"]] + [row]
                self.progress.value = i
                self.redraw()
            by_status: dict[str, list[str]] = {}
            for r in ran:
                by_status.setdefault(row_status(r), []).append(str(r["recipe"]))
            bad = {k: v for k, v in by_status.items() if k != "ok"}
            self.progress.bar_style = "danger" if "failed" in bad else \
                "warning" if bad else "success"
            self.status.value = (f"done: {len(names)} trials ({cached} served from the store) "
                                 f"in <code>{e(str(self.run_dir))}</code>" +
                                 "".join(f"; <b style='color:#b00'>{e(k)}: {e(', '.join(v))}</b>"
                                         for k, v in bad.items()) +
                                 "".join(f"<br>note: {e(n)}" for n in self.notes))
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
        """Keep the old workload's choices; restore the new one's (or its defaults)."""
        self._state[change["old"]] = {"recipes": self.recipes.value, "calib": self.calib.value}
        state = self._state.get(change["new"])
        if state:
            self.recipes.value = tuple(r for r in state["recipes"] if r in self.recipes.options)
            self.calib.value = state["calib"]
        else:
            self.calib.value = self._default_calib(change["new"])
        self._ensure_options([r.get("recipe") for r in self.rows
                              if r.get("workload") == change["new"]])
        self.redraw()
        self.load_searches()

    # -------------------------------------------------------------- latency at a batch
    def _latency_at(self, row: dict, b: int) -> tuple[float | None, str | None]:
        """L4 latency of a trial at batch b: measured when the row's batch sweep has it, the
        row's own number at its batch, else an estimate on its Q/DQ ONNX. Never invented."""
        from .plots import curve_points

        for p in curve_points(row.get("batch_sweep")):
            if p["batch"] == b:
                return p["latency_ms"], row.get("latency_source"), None, None
        if b == (row.get("latency_batch") or 1) and row.get("latency_ms") is not None:
            return (row["latency_ms"], row.get("latency_source"), row.get("latency_low_ms"),
                    row.get("latency_high_ms"))
        if b == row.get("latency_batch") and row.get("latency_opt_ms") is not None:
            return row["latency_opt_ms"], row.get("latency_source"), None, None
        onnx = row.get("onnx_path")
        if not onnx or not (self.run_dir / onnx).exists():
            return None, None, None, None
        est = self._estimate(row, b)
        if est is None:
            return None, None, None, None
        return (est.total_ms, est.source, getattr(est, "low_ms", None),
                getattr(est, "high_ms", None))

    def _estimate(self, row: dict, b: int):
        key = (row["key"], b)
        if key not in self._latency_cache:
            from .estimate import estimate_onnx

            from .shapes import batch_axes

            inputs = row.get("inputs") or []
            # the row's named axes (seq, ...) as it ran them; the batch axes at b
            axes = dict((row.get("shapes") or {}).get("axes") or {})
            named = {d for i in inputs for d in i.get("shape", []) if isinstance(d, str)}
            for d in (batch_axes(inputs) or named) or {"batch"}:
                axes[d] = b
            try:
                self._latency_cache[key] = estimate_onnx(
                    str(self.run_dir / row["onnx_path"]), "L4", batch=b, dynamic_dims=axes)
            except Exception:  # no estimate: the point is left out and named under the chart
                self._latency_cache[key] = None
        return self._latency_cache[key]

    # -------------------------------------------------------------- views
    def _view_rows(self) -> tuple[list[dict], list[dict]]:
        """The latest trial of each recipe of this workload: those selected, in the order
        selected, and the others."""
        wl, chosen = self.workload.value, [self._recipe_name(r) for r in self.recipes.value]
        latest: dict = {}
        with self._lock:
            for r in self.rows:
                if r.get("workload") == wl and r.get("kind", "trial") in ("trial", None):
                    latest[r.get("recipe")] = r
        selected = [latest[n] for n in chosen if n in latest]
        others = [r for n, r in latest.items() if n not in chosen]
        return selected, others

    def frame(self, rows: list[dict] | None = None):
        """The trials shown (the selected recipes unless `rows` is given), every status kept,
        with the latency at the chosen batch (and its band) and the budget verdict."""
        import numpy as np

        from . import plots
        from .tables import trial_frame

        if rows is None:
            rows = self._view_rows()[0]
        df = trial_frame(rows)
        if not len(df):
            return df
        b = self.batch.value
        ok = (df["status"].isna() | (df["status"] == "ok")).to_numpy()
        lat = [self._latency_at(r, b) if good else (None, None, None, None)
               for r, good in zip(df.to_dict("records"), ok)]
        nums = [[np.nan if v[i] is None else float(v[i]) for v in lat] for i in (0, 2, 3)]
        df["dash_latency_ms"], df["dash_latency_low_ms"], df["dash_latency_high_ms"] = nums
        df["dash_latency_source"] = [v[1] for v in lat]
        if self.budget_kind.value == "max_drop":
            within = df["metric_drop"] <= self.budget.value + 1e-12
        else:
            within = df["cos_mean"] >= self.budget.value
        df["within_budget"] = [bool(w) if good else None for w, good in zip(within, ok)]
        has = df["dash_latency_source"].map(lambda s: plots.source_kind(s) is not None)
        has &= df["dash_latency_ms"].gt(0) & ok
        df.loc[~has, "dash_latency_ms"] = np.nan
        front = plots.pareto_mask(df[self._y()].where(ok), df["dash_latency_ms"].where(has))
        df["pareto_here"] = [bool(f) if good else None for f, good in zip(front, ok)]
        return df

    def _y(self) -> str:
        return "metric_drop" if self.budget_kind.value == "max_drop" else "cos_drop"

    def redraw(self) -> None:
        """Redraw the chart and the table from the trials of the selected recipes (the
        others hidden or dimmed, as chosen)."""
        import pandas as pd

        from . import plots
        from .report import latency_header
        from .tables import html_table

        with self._lock:
            selected, others = self._view_rows()
            dim = self.others.value == "dim"
            df = self.frame(selected)
            other_df = self.frame(others) if dim and others else self.frame([])
            line = self.budget.value if self.budget_kind.value == "max_drop" \
                else 1.0 - self.budget.value
            fig = plots.accuracy_latency(df, self._y(), x="dash_latency_ms",
                                         source="dash_latency_source", batch=self.batch.value,
                                         budget=line if len(df) else None)
            dimmed_trace = self._dimmed_trace(other_df)
            with self.figure.batch_update():
                self.figure.data = ()
                for t in fig.data:
                    self.figure.add_trace(t)
                if dimmed_trace is not None:
                    self.figure.add_trace(dimmed_trace)
                self.figure.layout = fig.layout
            for t in self.figure.data:
                if t.mode and "markers" in t.mode and t.name != "Pareto front":
                    t.on_click(self._on_click)
            _sync_figure(self.figure)
            self.results = df
            shown = pd.concat([df, other_df], ignore_index=True) if len(other_df) else df
            self.results_shown = shown
            if len(shown):
                header = latency_header(list(shown["dash_latency_source"]),
                                        f"L4 latency ms, batch {self.batch.value}")
                self.table.value = html_table(
                    shown, TABLE_COLUMNS, dict(TABLE_NAMES, dash_latency_ms=header),
                    dimmed=[False] * len(df) + [True] * len(other_df))
            elif others and not dim:
                self.table.value = (f"<i>no trials of the selected recipes yet: press Run "
                                    f"({len(others)} other recipes' trials hidden)</i>")
            else:
                self.table.value = "<i>no trials yet: press Run</i>"

    def _dimmed_trace(self, df):
        """The trials of recipes not selected, greyed out and unclickable (dim mode)."""
        import plotly.graph_objects as go

        from .plots import esc

        if not len(df):
            return None
        y = self._y()
        part = df[df["dash_latency_ms"].notna() & df[y].notna()]
        if not len(part):
            return None
        return go.Scatter(x=part["dash_latency_ms"].tolist(), y=part[y].tolist(),
                          mode="markers", name="not selected (dimmed)", opacity=0.3,
                          marker={"size": 10, "color": "#999"}, hoverinfo="text",
                          hovertext=[f"{esc(n)} (not selected)" for n in part["name"]])

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
        keys = ["workload", "recipe", "status", "collapse_note", "format", "path", "algorithm",
                "metric_name", "metric", "metric_delta", "cos_mean", "cos_min", "sqnr_db",
                "tensor_metrics_by_output", "quantized_layers", "gemm_layers",
                "excluded_layers", "qdq_nodes", "calib_samples", "latency_ms",
                "latency_low_ms", "latency_high_ms", "latency_batch", "latency_source",
                "drift_backend", "custom_ops", "onnx_path", "log_path", "notes", "error"]
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
        _sync_figure(self.layer_figure)
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

    # -------------------------------------------------------------- mixed precision
    def load_searches(self) -> list[str]:
        """Read the run directory's saved searches of the current workload (as the report
        reads them) into the Mixed precision view, keep the one picked if it is still there,
        and draw it; returns the searches' names."""
        from .report import load_searches

        wl = self.workload.value
        found = [(n, d) for n, d in load_searches(self.run_dir)
                 if d.get("error") or d.get("workload") == wl]
        self.searches = found
        names = [n for n, _ in found]
        keep = self.search_pick.value if self.search_pick.value in names else \
            (names[-1] if names else None)
        self._picking = True  # one drawing below, not one per option change
        try:
            self.search_pick.options = names
            self.search_pick.value = keep
        finally:
            self._picking = False
        self.show_search()
        return names

    def show_search(self) -> str:
        """Draw the picked search: its summary line, precision map and candidates' front."""
        from . import plots

        d = dict(self.searches).get(self.search_pick.value)
        if d is None:
            self.search_info.value = (
                f"<i>no search in this run dir yet for {e(str(self.workload.value))}: run "
                f"<code>l4opt search {e(str(self.workload.value))} --recipe R --max-drop D "
                f"--out {e(str(self.run_dir))}</code></i>")
            maps = (plots.precision_map([]), plots.search_front([]))
        else:
            self.search_info.value = search_summary(d)
            maps = (plots.precision_map(d.get("layer_map") or [],
                                        batch=d.get("latency_batch")),
                    plots.search_front(d))
        for target, fig in zip((self.search_map, self.front_figure), maps):
            with target.batch_update():
                target.data = ()
                for t in fig.data:
                    target.add_trace(t)
                target.layout = fig.layout
            _sync_figure(target)
        return self.search_info.value

