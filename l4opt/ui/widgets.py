"""The notebook dashboard: ipywidgets controls over sweeps, a live plotly FigureWidget, the
results table, the stated recommendation, a per-layer view of the clicked trial, and a report
button.

Wiring only: what it shows is computed by l4opt.ui.view_model.DashboardModel (widget-free),
drawn by l4opt.ui.plots, tabled by l4opt.ui.tables, and run by l4opt.sweep, so everything is
tested where it is made. It shows the recipes selected (the others hidden or dimmed), reads the
run directory's store when it is built or displayed again, and keeps each workload's choices
when switching workloads and back.

Choose the workload and recipes, the calibration sample count, the batch size the L4 latency
is shown at, and an accuracy budget; press Run and the accuracy-drift-vs-latency chart fills in
trial by trial (open markers: estimated L4 latency, filled: measured; error bars: the
estimate's band). The recommendation above the chart names the recipe to ship within the
budget. Clicking a point shows that trial's details and per-layer view; Export writes the HTML
report with the budget chosen. The "Mixed precision" section shows a saved search of the
workload. Trials already in the run directory are drawn at once; only the selected recipes are
shown (the others hidden or dimmed, as the "recipes not selected" control says).
"""
from __future__ import annotations

import copy
import html
import threading
import traceback
from pathlib import Path

from l4opt import env
from l4opt.ui.fleet_panel import FleetPanel
from l4opt.ui.view_model import (BUDGET_DEFAULTS, BUDGET_KINDS, MORE_COLUMNS, TABLE_COLUMNS,
                                 DashboardModel, exclusions_table, outputs_table,
                                 workload_defaults)

BUDGETS = [(label, kind) for kind, label in BUDGET_KINDS.items()]
OTHERS = [("hide", "hide"), ("dim", "dim")]
TABLE_NAMES = {"name": "recipe", "metric_drop": "metric drop (lower is better)",
               "speedup": "speed-up vs FP16 (band)", "layers": "8-bit layers",
               "within_budget": "within budget", "dash_latency_source": "latency source",
               "dash_latency_batch": "batch", "pareto_here": "on Pareto front",
               "calib_samples": "calibration samples", "cos_mean": "mean cosine",
               "cos_min": "worst cosine", "sqnr_db": "SQNR dB"}
e = html.escape
_workload_defaults = workload_defaults  # kept for callers of the old name


def _sync_figure(fig) -> None:
    """Make a FigureWidget's synced state what it shows now. plotly sends later edits as
    messages only, so a view built again (page reload) would start from the empty figure of
    its creation: with this it draws the current one."""
    fig._widget_layout = copy.deepcopy(fig._layout_obj._props)
    fig._widget_data = copy.deepcopy(fig._data)


def _replace_figure(target, fig, extra=()) -> None:
    """Draw `fig` (and extra traces) in the FigureWidget `target`, synced for a reload."""
    with target.batch_update():
        target.data = ()
        for t in list(fig.data) + [t for t in extra if t is not None]:
            target.add_trace(t)
        target.layout = fig.layout
    _sync_figure(target)


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


def recommendation_html(rec: dict) -> str:
    """The stated recommendation as one paragraph (green when something meets the budget)."""
    colour = "#070" if rec.get("met") else "#b00"
    return (f"<div class='l4opt-recommendation' style='border-left:4px solid {colour};"
            f"padding:.3em .7em;margin:.4em 0'><b>Recommendation</b>: "
            f"{e(rec.get('sentence', ''))}</div>")


def detail_html(model: DashboardModel, row: dict) -> str:
    """A trial's facts for people: grouped, formatted, with units; tables, never JSON."""
    import pandas as pd

    from l4opt.ui.tables import html_table

    parts = [f"<h4>{e(str(row.get('name') or row.get('recipe')))}</h4>"]
    for title, fields in model.detail(row):
        rows = "".join(f"<tr><th style='text-align:left'>{e(k)}</th><td>{e(v)}</td></tr>"
                       for k, v in fields)
        parts.append(f"<b>{e(title)}</b><table class='l4opt-detail'>{rows}</table>")
    outs, ex = outputs_table(row), exclusions_table(row)
    if outs:
        parts.append("<b>Drift per output</b>" + html_table(pd.DataFrame(outs), list(outs[0])))
    if ex:
        parts.append("<b>Layers left in high precision</b>" +
                     html_table(pd.DataFrame(ex), ["node", "reason"], css_class="l4opt-ex"))
    if row.get("fallback"):
        parts.append(f"<p>kept in high precision: {e(', '.join(map(str, row['fallback'])))}</p>")
    for name, layers in model.sensitivities(row.get("workload")):
        parts.append(f"<p>per-layer sensitivity ({e(name)}), most harmful first:</p><ol>"
                     + "".join(f"<li>{e(str(x.get('layer')))}: share "
                               f"{float(x.get('share', 0)):.3f}, recovery "
                               f"{float(x.get('recovery', 0)):.4g}</li>" for x in layers)
                     + "</ol>")
    return "".join(parts)


def _build(d, w, go, recipes, calib_samples, batch_size) -> None:
    """The dashboard's widgets, set as attributes of `d` (a Dashboard)."""
    from l4opt.spec import recipes as rlib

    m, style = d.model, {"description_width": "initial"}
    d.workload = w.Dropdown(options=d._workload_names, value=m.workload,
                            description="workload", style=style)
    names = rlib.names()
    chosen = list(recipes.split(",") if isinstance(recipes, str) else recipes or names)
    chosen = [str(r).strip() for r in chosen if str(r).strip()]
    extra = [r for r in chosen if r not in names]  # recipe files are allowed too
    d.recipes = w.SelectMultiple(options=names + extra, value=tuple(chosen), description="recipes",
                                 rows=min(8, len(names) + len(extra)), style=style)
    d.calib = w.BoundedIntText(value=calib_samples or m.default_calib(m.workload), min=1,
                               max=1_000_000, description="calibration samples", style=style)
    d.others = w.ToggleButtons(options=OTHERS, value="hide", description="recipes not selected",
                               style=style, tooltip="trials of recipes not selected: hidden, "
                                                    "or shown dimmed")
    d.batch = w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64, 128, 256], value=batch_size,
                         description="latency at batch", style=style)
    d.budget_kind = w.Dropdown(options=BUDGETS, value=m.budget_kind, description="budget",
                               style=style)
    d.budget = w.BoundedFloatText(value=m.budget, min=-1.0, max=1.0, step=0.001,
                                  description="", layout={"width": "90px"})
    d.run_button = w.Button(description="Run", button_style="primary", icon="play",
                            tooltip="sweep the chosen recipes; the chart fills in")
    d.report_button = w.Button(description="Export report", icon="file",
                               tooltip="write RUN_DIR/report.html with this budget")
    d.progress = w.IntProgress(value=0, min=0, max=1, description="trials", style=style)
    d.status = w.HTML(f"run directory: <code>{e(str(m.run_dir))}</code>")
    d.recommendation = w.HTML()
    d.figure = go.FigureWidget()
    d.figure.layout.height = 480
    d.table = w.HTML(layout={"max_width": "100%", "overflow_x": "auto"})
    d.panel = _TrialPanel(w, go, m)
    d.search_view = _SearchView(w, go, d, style)
    d.fleet = FleetPanel(w, go, d, style)
    d.widget = w.VBox([
        w.HTML("<b>l4opt</b>: accuracy drift against L4 latency. L4 latencies are "
               "<b>estimated</b> (open markers, error bars: the estimate's band) unless an L4 "
               "measured them (filled)."),
        w.HBox([d.workload, d.recipes, d.others]),
        w.HBox([d.calib, d.batch, d.budget_kind, d.budget]),
        w.HBox([d.run_button, d.progress, d.report_button]), d.status, d.recommendation,
        d.figure, d.table, d.panel.detail, d.panel.box, d.search_view.widget, d.fleet.widget])
    d.run_button.on_click(lambda _: d.run())
    d.report_button.on_click(lambda _: d.export_report())
    d.budget_kind.observe(lambda ch: _budget_kind_changed(d, ch), names="value")
    for control in (d.batch, d.budget, d.others, d.recipes):
        control.observe(lambda _ch: d.redraw(), names="value")
    d.workload.observe(lambda ch: _workload_changed(d, ch), names="value")


class _SearchView:
    """The "Mixed precision" section: a saved search of the workload (RUN_DIR/search/*.json,
    read as the report reads it), its per-layer precision map and its candidates' front."""

    def __init__(self, w, go, dash, style):
        self.dash, self.searches = dash, []
        self.pick = w.Dropdown(options=[], description="search", style=style,
                               layout={"width": "70%"})
        self.info = w.HTML()
        self.map, self.front = go.FigureWidget(), go.FigureWidget()
        self.map.layout.height = self.front.layout.height = 360
        self._picking = False
        self.pick.observe(lambda _ch: None if self._picking else self.show(), names="value")
        self.widget = w.Accordion(children=[w.VBox([
            w.HTML("the chosen per-layer precision of a saved search (bars: ESTIMATED L4 time "
                   "per layer, coloured by format; line: sensitivity) and its candidates' "
                   "Pareto front with estimate error bands"),
            self.pick, self.info, self.map, self.front])])
        self.widget.set_title(0, "Mixed precision")

    def load(self) -> list[str]:
        found = self.dash.model.searches()
        self.searches = found
        names = [n for n, _ in found]
        keep = self.pick.value if self.pick.value in names else (names[-1] if names else None)
        self._picking = True  # one drawing below, not one per option change
        try:
            self.pick.options = names
            self.pick.value = keep
        finally:
            self._picking = False
        self.show()
        return names

    def show(self) -> str:
        from l4opt.ui import plots

        d, wl = dict(self.searches).get(self.pick.value), self.dash.model.workload
        if d is None:
            self.info.value = (f"<i>no search in this run dir yet for {e(str(wl))}: run "
                               f"<code>l4opt search {e(str(wl))} --recipe R --max-drop D --out "
                               f"{e(str(self.dash.run_dir))}</code></i>")
            maps = (plots.precision_map([]), plots.search_front([]))
        else:
            self.info.value = search_summary(d)
            maps = (plots.precision_map(d.get("layer_map") or [], batch=d.get("latency_batch")),
                    plots.search_front(d))
        for target, fig in zip((self.map, self.front), maps):
            _replace_figure(target, fig)
        return self.info.value


class _Runner:
    """Runs the chosen recipes one sweep at a time (in a thread unless background=False),
    showing progress and the outcome in the dashboard's status line."""

    def __init__(self, dash):
        self.dash, self.thread, self.error, self.notes = dash, None, None, []

    def start(self):
        d = self.dash
        if self.thread is not None and self.thread.is_alive():
            d.status.value = "already running"
            return
        d.run_button.disabled = True
        if d.background:
            self.thread = threading.Thread(target=self.run, name="l4opt-dashboard", daemon=True)
            self.thread.start()
        else:
            self.run()

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self):
        from l4opt.errors import L4OptError

        d = self.dash
        names = list(d.recipes.value)
        self.error, self.notes = None, []
        d.progress.max, d.progress.value, d.progress.bar_style = max(1, len(names)), 0, ""
        try:
            if not names:
                d.status.value = "choose at least one recipe"
                return
            d.status.value = f"loading workload {e(d.workload.value)} ..."
            wl, self.notes = d.model.load_workload(d.workload.value, d.calib.value,
                                                   d.eval_samples)
            ran = self._sweep_each(wl, names)
            d.status.value, d.progress.bar_style = _done_text(names, ran, d.run_dir, self.notes)
        except L4OptError as exc:
            self.error = str(exc)
            d.progress.bar_style = "danger"
            d.status.value = f"<b style='color:#b00'>{e(str(exc))}</b>"
        except Exception as exc:  # a thread has nobody to raise to: show it
            self.error = traceback.format_exc()
            d.progress.bar_style = "danger"
            d.status.value = (f"<b style='color:#b00'>{e(type(exc).__name__)}: "
                              f"{e(str(exc))}</b> (full traceback in dashboard.error)")
        finally:
            d.run_button.disabled = False

    def _sweep_each(self, wl, names) -> list[dict]:
        from l4opt.run.sweep import sweep

        d, ran = self.dash, []
        for i, name in enumerate(names, 1):
            d.status.value = (f"trial {i}/{len(names)}: <b>{e(name)}</b> (quantize, export, "
                              f"drift, L4 estimate) ...")
            res = sweep(wl, [name], d.run_dir, progress=False)
            d.model.add_rows(res.rows)
            ran.extend(res.rows)
            d.progress.value = i
            d.redraw()
        return ran


class _TrialPanel:
    """The clicked trial's details and its per-layer L4 latency (shown once a point is
    clicked, at the batch of the trial's own latency)."""

    def __init__(self, w, go, model):
        self.model = model
        self.detail = w.HTML("<i>click a point to see that trial's details and per-layer "
                             "view</i>")
        self.figure = go.FigureWidget()
        self.figure.layout.height = 300
        self.box = w.Box([self.figure], layout={"display": "none"})
        self.selected = None

    def show(self, key: str) -> str:
        from l4opt.ui import plots

        row = self.model.row(key)
        if row is None:
            self.detail.value = f"no trial {e(str(key))} in this dashboard"
            return self.detail.value
        b = int(row.get("latency_batch") or self.model.batch)
        est = self.model.estimate(row, b)
        if est is not None:
            fig = plots.layer_latency(est.layers, batch=b, title=(
                f"{plots.esc(row['recipe'])}: per-layer L4 latency, ESTIMATED, batch {b} "
                f"({est.total_ms:.4g} ms in all)"))
            note = (f"<p>per-layer L4 latency below: an <b>estimate</b> from the Q/DQ graph at "
                    f"batch {b}, the batch of the trial's latency</p>")
        else:
            fig = plots.layer_latency([], batch=b)
            note = "<p>no ONNX artifact for this trial: no per-layer latency</p>"
        _replace_figure(self.figure, fig)
        self.box.layout.display = None if est is not None else "none"
        self.selected = row["key"]
        self.detail.value = detail_html(self.model, row) + note
        return self.detail.value


class Dashboard:
    """The dashboard (see the module's docstring). `workload`: a built-in name, an
    l4opt.Workload, or 'pkg.module:make_workload' / 'path/to/file.py:make_workload';
    `background=False` runs in the calling thread (tests, papermill), otherwise Run returns
    at once and the chart updates live. The computations are `self.model`."""

    def __init__(self, run_dir="runs/dashboard", workload=None, recipes=None,
                 calib_samples: int | None = None, eval_samples: int | None = None,
                 batch_size: int = 1, max_drop: float | None = 0.01,
                 min_cosine: float | None = None, background: bool = True):
        w = env.require("ipywidgets", "the dashboard")
        go = env.require("plotly.graph_objects", "the dashboard")
        self.background, self.eval_samples = background, eval_samples
        self.runner = _Runner(self)
        custom, name = _resolve_workload(workload)
        kind = "min_cosine" if min_cosine is not None else "max_drop"
        value = min_cosine if kind == "min_cosine" else max_drop
        self.model = DashboardModel(run_dir, name, batch=batch_size, budget_kind=kind,
                                    budget=value, custom=custom)
        self._workload_names = list(dict.fromkeys(list(custom) + _builtin_names()))
        opened = _open_on_store(self, workload is None, recipes is None)
        _build(self, w, go, opened.get("recipes", recipes), calib_samples, batch_size)
        _show_opened(self, opened)
        self._refresh()

    # the parts' state, as attributes of the dashboard (tests and notebooks read them)
    run_dir = property(lambda self: self.model.run_dir)
    rows = property(lambda self: self.model.rows,
                    lambda self, rows: setattr(self.model, "rows", list(rows)))
    error, notes, thread = (property(lambda self, a=a: getattr(self.runner, a))
                            for a in ("error", "notes", "thread"))
    detail, layer_figure, selected = (property(lambda self, a=a: getattr(self.panel, a))
                                      for a in ("detail", "figure", "selected"))
    # the Fleet plan panel: dashboard.fleet (.qps, .p99, .gpus, .plan(), .result)
    searches, search_pick, search_info, search_map, front_figure = (
        property(lambda self, a=a: getattr(self.search_view, a))
        for a in ("searches", "pick", "info", "map", "front"))

    def _ipython_display_(self):
        from IPython.display import display

        self._refresh()  # displayed again (re-run cell): draw what the store holds now
        display(self.widget)

    def _refresh(self) -> None:
        self.load_store()
        self.redraw()
        self.load_searches()

    def load_store(self) -> int:
        """Read the run directory's finished trials (kept from earlier sessions, or written by
        the CLI) into the dashboard; returns how many trials it knows."""
        from l4opt.errors import L4OptError

        try:
            new = self.model.load_store()
        except (L4OptError, OSError, ValueError) as exc:
            self.status.value = f"<b style='color:#b00'>cannot read the store: {e(str(exc))}</b>"
            return len(self.rows)
        self._ensure_options([r.get("recipe") for r in new
                              if r.get("workload") == self.workload.value])
        return len(self.rows)

    def _ensure_options(self, recipes) -> None:
        """Recipes met in the store (recipe files, imported trials) become choices too."""
        _add_options(self.recipes, recipes)

    def run(self):
        """Sweep the chosen recipes one at a time (in a thread unless background=False)."""
        self.runner.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background run has finished."""
        self.runner.wait(timeout)

    def export_report(self) -> Path | None:
        """Write RUN_DIR/report.html (self-contained, offline) with the dashboard's budget,
        latency batch and, once the Fleet plan panel has planned, its fleet plan."""
        from l4opt.errors import L4OptError
        from l4opt.ui.report import write_report
        from l4opt.ui.view_model import report_link

        try:
            path = write_report(self.run_dir, budget={self.budget_kind.value: self.budget.value},
                                fleet=self.fleet.settings(), batch=int(self.batch.value))
        except L4OptError as exc:
            self.status.value = f"<b style='color:#b00'>{e(str(exc))}</b>"
            return None
        self.status.value = report_link(path)
        return path

    def _sync(self) -> None:
        """The controls' values into the model."""
        m = self.model
        m.workload, m.recipes, m.batch = self.workload.value, tuple(self.recipes.value), \
            self.batch.value
        m.budget_kind, m.budget, m.others = self.budget_kind.value, self.budget.value, \
            self.others.value

    def frame(self, rows: list[dict] | None = None):
        """The trials shown (see DashboardModel.frame)."""
        self._sync()
        return self.model.frame(rows)

    def redraw(self) -> None:
        """Redraw the recommendation, the chart and the table from the trials of the selected
        recipes (the others hidden or dimmed, as chosen)."""
        self._sync()
        self.results, self.results_shown = _draw(self, self.model)

    def show_trial(self, key: str) -> str:
        """The clicked trial: its facts (grouped, formatted), the ESTIMATED per-layer L4
        latency of its Q/DQ graph at the batch its latency is for (coloured by precision), its
        fallback layers if it is a search candidate, and the run's per-layer sensitivity."""
        return self.panel.show(key)

    def load_searches(self) -> list[str]:
        """Read the run directory's saved searches of the current workload (as the report
        reads them) into the Mixed precision view and draw the one picked."""
        self._sync()
        return self.search_view.load()

    def show_search(self) -> str:
        """Draw the picked search: its summary line, precision map and candidates' front."""
        return self.search_view.show()


# ------------------------------------------------------------------ helpers of the wiring

def _draw(d, m: DashboardModel):
    """Draw the model's view in the dashboard `d`: the chart (clicks open the trial panel),
    the recommendation and the table; returns (selected trials, every trial shown)."""
    from l4opt.ui import plots

    with m.lock:
        selected, others = m.view_rows()
        dim = m.others == "dim"
        df = m.frame(selected)
        other_df = m.frame(others) if dim and others else m.frame([])
        fig = plots.accuracy_latency(df, m.y, x="dash_latency_ms", source="dash_latency_source",
                                     batch=m.batch, budget=m.budget_line if len(df) else None)
        _replace_figure(d.figure, fig, [_dimmed_trace(other_df, m.y)])
        for t in d.figure.data:
            if t.mode and "markers" in t.mode and t.name != "Pareto front":
                t.on_click(lambda trace, points, _sel=None: points.point_inds and d.show_trial(
                    trace.customdata[points.point_inds[0]][2]))
        _sync_figure(d.figure)
        shown = _concat(df, other_df)
        d.recommendation.value = recommendation_html(m.recommendation(df)) if len(df) else ""
        d.table.value = _table_html(shown, len(df), len(other_df), m.batch,
                                    len(others) if not dim else 0)
    return df, shown


def _workload_changed(d, change):
    """Keep the old workload's choices; restore the new one's (or its defaults)."""
    d.model.remember(change["old"], d.recipes.value, d.calib.value)
    state = d.model.recall(change["new"])
    if state["recipes"] is not None:
        d.recipes.value = tuple(r for r in state["recipes"] if r in d.recipes.options)
    d.calib.value = state["calib"]
    d._ensure_options(d.model.recipes_of(change["new"]))
    d.redraw()
    d.load_searches()


def _budget_kind_changed(d, change):
    """A new budget kind starts at its own default (a drop of 0.01 is no cosine)."""
    d.model.set_budget_kind(change["new"])
    if d.budget.value != BUDGET_DEFAULTS[change["new"]]:
        d.budget.value = BUDGET_DEFAULTS[change["new"]]  # redraws
    else:
        d.redraw()


def _open_on_store(d, no_workload: bool, no_recipes: bool) -> dict:
    """After a kernel restart: open on what the run directory holds (its latest workload when
    none is named, the recipes its trials used when none are chosen) and say so."""
    from l4opt.errors import L4OptError

    m = d.model
    try:
        m.load_store()
    except (L4OptError, OSError, ValueError):
        return {}  # said in the status line when the dashboard reads the store
    stored = m.stored_workload()
    if no_workload and stored in d._workload_names:
        m.workload = stored
    used = m.recipes_of(m.workload)
    if not used or not (no_recipes or no_workload):
        return {}
    return {"recipes": used, "note": f"opened on what {m.run_dir} holds: the trials of "
                                     f"{m.workload} ({', '.join(used)}); choose others and "
                                     f"press Run to add to them"}


def _show_opened(d, opened: dict) -> None:
    if opened:
        d._ensure_options(opened["recipes"])
        d.recipes.value = tuple(opened["recipes"])
        d.status.value += f"<br>{e(opened['note'])}"


def _add_options(select, recipes) -> None:
    add = [r for r in dict.fromkeys(recipes) if r and r not in select.options]
    if add:
        value = select.value
        select.options = tuple(select.options) + tuple(add)
        select.value = value
        select.rows = min(10, len(select.options))


def _builtin_names() -> list[str]:
    from l4opt.spec import workloads

    return workloads.names()


def _resolve_workload(workload) -> tuple[dict, str]:
    """({name: Workload} of a user's workload, the name to open on)."""
    from l4opt.errors import BadInput
    from l4opt.spec import workloads

    custom = {}
    if isinstance(workload, str) and workload not in workloads.names() and ":" in workload:
        from l4opt.spec.loader import load_workload  # 'pkg.module:make_workload' or 'file.py:fn'

        workload = load_workload(workload)
    if workload is not None and not isinstance(workload, str):
        custom[workload.name] = workload
        workload = workload.name
    workload = workload or workloads.DEFAULT
    names = list(dict.fromkeys(list(custom) + workloads.names()))
    if workload not in names:
        raise BadInput(f"unknown workload {workload!r}; choose one of {names}, pass an "
                       f"l4opt.Workload, or name one as 'pkg.module:make_workload' or "
                       f"'path/to/file.py:make_workload'")
    return custom, workload


def _done_text(names, ran, run_dir, notes) -> tuple[str, str]:
    """The status line after a run and the progress bar's style."""
    from l4opt.spec.row import status

    by_status: dict[str, list[str]] = {}
    for r in ran:
        by_status.setdefault(status(r), []).append(str(r["recipe"]))
    bad = {k: v for k, v in by_status.items() if k != "ok"}
    style = "danger" if "failed" in bad else "warning" if bad else "success"
    cached = sum(bool(r.get("cached")) for r in ran)
    return (f"done: {len(names)} trials ({cached} served from the store) in "
            f"<code>{e(str(run_dir))}</code>" +
            "".join(f"; <b style='color:#b00'>{e(k)}: {e(', '.join(v))}</b>"
                    for k, v in bad.items()) +
            "".join(f"<br>note: {e(n)}" for n in notes)), style


def _concat(df, other_df):
    import pandas as pd

    return pd.concat([df, other_df], ignore_index=True) if len(other_df) else df


def _table_html(shown, n_selected: int, n_dimmed: int, batch: int, hidden: int) -> str:
    """The laptop-sized table (recipe, status, drop, latency with band, speed-up, 8-bit
    layers, budget verdict) and every other column behind a toggle."""
    from l4opt.ui.report import latency_header
    from l4opt.ui.tables import html_table

    if not len(shown):
        if hidden:
            return (f"<i>no trials of the selected recipes yet: press Run ({hidden} other "
                    f"recipes' trials hidden)</i>")
        return "<i>no trials yet: press Run</i>"
    header = latency_header(list(shown["dash_latency_source"]), f"L4 latency ms, batch {batch}")
    names = dict(TABLE_NAMES, dash_latency_ms=header)
    dimmed = [False] * n_selected + [True] * n_dimmed
    return (html_table(shown, TABLE_COLUMNS, names, dimmed=dimmed) +
            "<details><summary>all columns</summary>" +
            html_table(shown, MORE_COLUMNS, names, dimmed=dimmed, css_class="l4opt-table-more") +
            "</details>")


def _dimmed_trace(df, y: str):
    """The trials of recipes not selected, greyed out and unclickable (dim mode)."""
    import plotly.graph_objects as go

    from l4opt.ui.plots import esc

    if not len(df):
        return None
    part = df[df["dash_latency_ms"].notna() & df[y].notna()]
    if not len(part):
        return None
    return go.Scatter(x=part["dash_latency_ms"].tolist(), y=part[y].tolist(), mode="markers",
                      name="not selected (dimmed)", opacity=0.3,
                      marker={"size": 10, "color": "#999"}, hoverinfo="text",
                      hovertext=[f"{esc(n)} (not selected)" for n in part["name"]])
