"""One self-contained HTML report of a run directory: opens offline, with no kernel and no CDN.

plotly.js is embedded once in the page head; every figure is a plotly div drawn by it, so the
interaction that survives without a kernel is plotly's own (hover, legend, dropdown menus).
Every user-supplied string is escaped (html.escape, DataFrame.to_html(escape=True), and
plots.esc inside figures), and every estimated number says so in its column header or axis.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import dataclasses
from pathlib import Path

from l4opt import env
from l4opt.errors import BadInput
from l4opt.spec import row as rowspec

CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:1.5em auto;max-width:1250px;
 padding:0 1.2em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;margin-top:1.8em;padding-bottom:.2em}
table{border-collapse:collapse;font-size:12.5px;margin:.4em 0 1em}
td,th{border:1px solid #d6d6d6;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.tbl{overflow-x:auto}.note{color:#555;font-size:13px}.est{color:#8a4b00;background:#fff4e0;
 border-left:4px solid #e69500;padding:.5em .8em}.bad{color:#a00}
code{background:#f5f5f5;padding:0 3px;border-radius:3px}nav a{margin-right:1em}
.rec{border-left:4px solid #070;padding:.4em .8em;background:#f3faf3}.rec.bad{border-color:#b00;
 background:#fdf3f3}.tbl-more{overflow-x:auto}details>summary{cursor:pointer;color:#235}
#l4opt-noscript{border:2px solid #e69500;background:#fff4e0;padding:.6em .9em;margin:0 0 1em}
"""
# Shown where the page's scripts do not run (JupyterLab's HTML viewer until "Trust HTML"); the
# report's own script in <head> removes it as soon as scripts run, so a browser never shows it.
NOSCRIPT_NOTE = (
    "<div id=l4opt-noscript role=note><b>The charts need JavaScript, and this viewer runs "
    "none.</b> In JupyterLab, press <b>Trust HTML</b> in this viewer's toolbar (the file is "
    "self-contained: plotly.js is inside it, nothing is loaded from the network), or open it "
    "in a browser tab (file browser: right-click the file, <i>Open in New Browser Tab</i>). "
    "The recommendation and the tables below read without it.</div>")
NOSCRIPT_HIDE = ("<script>document.addEventListener('DOMContentLoaded',function(){"
                 "var n=document.getElementById('l4opt-noscript');if(n)n.remove();});</script>")

SWEEP_COLUMNS = ["workload", "recipe", "status", "collapsed", "format", "route", "algorithm",
                 "metric_name", "metric", "metric_drop", "cos_mean", "cos_min", "sqnr_db",
                 "drift_backend", "quantized_layers", "gemm_layers", "latency_ms",
                 "latency_low_ms", "latency_high_ms", "latency_batch", "latency_source",
                 "est_latency_ms", "trial_latency_ms", "trial_latency_batch",
                 "throughput_samples_s", "throughput_batch", "shapes", "pareto_here", "error"]
SEARCH_COLUMNS = ["workload", "name", "strategy", "met", "pareto", "eval_samples",
                  "fraction_quantized", "int8_layers", "fp8_layers", "fp16_layers",
                  "metric_drop", "cos_mean", "sqnr_db", "drift_backend", "latency_ms",
                  "latency_low_ms", "latency_high_ms", "latency_batch", "latency_source",
                  "pareto_here"]
SENS_COLUMNS = ["rank", "layer", "kind", "share", "share_task", "share_drift", "only_drop",
                "only_cos_mean", "only_sqnr_db", "all_but_drop", "recovery", "local_int8",
                "local_fp8"]
LAYER_COLUMNS = ["layer", "op_type", "kind", "format", "sensitivity", "local_int8", "local_fp8",
                 "est_ms"]
FINDING_COLUMNS = ["kind", "layer", "time_ms", "share", "message"]
SOURCE_MEANING = {
    "estimated": "l4opt's L4 cost model fitted on published L4 results (not a measurement; "
                 "its band is the held-out error, l4opt/data/l4_fit.json)",
    "measured": "a TensorRT engine timed on that GPU (trtexec or l4opt.trt)",
}

METRIC_DROP = "metric drop (lower is better)"  # the one sign convention (l4opt.ui.tables)
e = html.escape


# reading a run directory lives in l4opt.results.rundir; kept importable from here
from l4opt.results.rundir import load_run, load_searches  # noqa: E402,F401


# ------------------------------------------------------------------ pieces

def latency_header(sources, what: str = "L4 latency ms at latency_batch") -> str:
    """A column header that says whether the numbers under it are estimated or measured."""
    from l4opt.ui.plots import ESTIMATED, MEASURED, source_gpu, source_kind

    kinds = {source_kind(s) for s in sources if source_kind(s)}
    if kinds == {ESTIMATED}:
        return f"{what} (estimated)"
    if kinds == {MEASURED} and {source_gpu(s) for s in sources if s} == {"l4"}:
        return f"{what} (measured)"
    return f"{what} (measured or estimated: see latency_source)"


def html_table(df, columns, rename=None, max_rows: int | None = None, css: str = "tbl") -> str:
    """A DataFrame as an escaped HTML table of the listed columns that exist, formatted as
    l4opt.tables formats every table (statuses as row_status says, 0.99996 never '1', 0 never
    '-0')."""
    from l4opt.ui import tables

    shown = df.head(max_rows) if max_rows is not None else df
    return f"<div class={css}>" + tables.html_table(shown, columns, rename) + "</div>"


def _summary_table(df) -> str:
    """The first table: laptop-sized (recipe, status, metric drop, L4 latency with its band,
    speed-up over FP16, 8-bit layers); the workload too when the run holds several."""
    from l4opt.ui.tables import SUMMARY_COLUMNS, SUMMARY_NAMES

    cols = list(SUMMARY_COLUMNS)
    if df["workload"].nunique(dropna=False) > 1:
        cols.insert(0, "workload")
    rename = dict(SUMMARY_NAMES, latency_ms=latency_header(
        list(df.get("latency_source", [])), "L4 latency ms"))
    return html_table(_hide_bad_latency(df), cols, rename)


def _band_sources_note(df) -> str:
    """Where the latency bands come from, said once under the table (not once per row)."""
    if "latency_band_source" not in df:
        return ""
    srcs = list(dict.fromkeys(str(s) for s in df["latency_band_source"] if isinstance(s, str) and s))
    if not srcs:
        return ""
    batches = sorted({int(b) for b in df.get("latency_batch", []) if b == b and b is not None})
    at = f" Latencies are at batch {', '.join(map(str, batches))} (latency_batch)." \
        if batches else ""
    return ("<p class=note>Where the latency bands come from: " +
            " | ".join(e(x) for x in srcs) + f".{at} Speed-up: the FP16 baseline's latency "
            f"over the row's at the same shapes; its band is the worst case of the two "
            f"bands.</p>")


def _sweep_table(df) -> str:
    src = list(df.get("latency_source", []))
    rename = {
        "latency_ms": latency_header(src),
        "latency_low_ms": "estimate band low (ms)",
        "latency_high_ms": "estimate band high (ms)",
        "est_latency_ms": "L4 latency ms (estimated; kept beside a measurement)",
        "trial_latency_ms": "L4 latency ms at the trial's own batch",
        "trial_latency_batch": "the trial's own latency batch",
        "throughput_samples_s": "L4 samples/s at throughput_batch (estimated)",
        "pareto_here": "on the Pareto front (drop vs latency)",
        "metric_drop": METRIC_DROP,
        "quantized_layers": "GEMM/conv layers quantized",
        "gemm_layers": "GEMM/conv layers",
    }
    return html_table(_hide_bad_latency(df), SWEEP_COLUMNS, rename, css="tbl-more")


def _hide_bad_latency(df):
    """A latency that is 0, NaN or missing is never shown as a result: its cells read '–'."""
    if "latency_ms" not in df:
        return df
    bad = ~df["latency_ms"].map(rowspec.valid_latency)
    df = df.copy()
    for c in ("latency_ms", "latency_low_ms", "latency_high_ms", "throughput_samples_s"):
        if c in df:
            df[c] = df[c].astype(object).where(~bad, None)
    return df


def _bad_latency_note(df) -> str:
    if "latency_ms" not in df or not len(df):
        return ""
    names = [str(n) for n, v in zip(df["name"] if "name" in df else df["recipe"], df["latency_ms"])
             if not rowspec.valid_latency(v)]
    if not names:
        return ""
    return (f"<p class=note>No L4 latency shown for {len(names)} trial(s) (0, NaN or missing; "
            f"never plotted or ranked as results): {e(', '.join(names[:12]))}"
            f"{' ...' if len(names) > 12 else ''}</p>")


def _search_table(df) -> str:
    src = list(df.get("latency_source", []))
    rename = {
        "latency_ms": latency_header(src),
        "latency_low_ms": "estimate band low (ms)",
        "latency_high_ms": "estimate band high (ms)",
        "pareto": "search Pareto flag (stored)",
        "pareto_here": "on the Pareto front (drop vs latency)",
        "met": "meets budget",
        "eval_samples": "samples (screen = subset)",
    }
    df = df.sort_values(["workload", "strategy", "latency_ms"], na_position="last")
    return html_table(_hide_bad_latency(df), SEARCH_COLUMNS, rename)


def _with_pareto(df):
    """pareto_here: on the front of metric drop against the latency, per workload, among the
    trials whose status is ok (never collapsed, no-op or failed)."""
    import numpy as np

    from l4opt.ui.plots import source_kind

    out = np.zeros(len(df), bool)
    if "latency_source" not in df or "latency_ms" not in df:
        return df.assign(pareto_here=out)
    for _, idx in df.groupby("workload", dropna=False).groups.items():
        sub = df.loc[idx]
        ok = sub.apply(lambda r: rowspec.status(r.to_dict()) == "ok", axis=1)
        has = sub["latency_source"].map(lambda s: source_kind(s) is not None) & \
            sub["latency_ms"].map(rowspec.valid_latency) & ok
        lat = sub["latency_ms"].where(has)
        out[df.index.get_indexer(idx)] = rowspec.pareto_mask(sub["metric_drop"].where(ok), lat)
    return df.assign(pareto_here=out)


_with_pareto_all = _with_pareto


def _provenance(rows, data) -> list[str]:
    import pandas as pd

    from l4opt.ui.plots import source_kind, source_label

    parts = []
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get("latency_source") or "none")] = counts.get(
            str(r.get("latency_source") or "none"), 0) + 1
    src = pd.DataFrame([{"latency_source": s, "label": source_label(s) if s != "none" else
                         "no latency", "trials": n,
                         "what it is": SOURCE_MEANING.get(source_kind(s), "no L4 latency for "
                                                          "these trials")}
                        for s, n in sorted(counts.items())])
    parts.append("<h3>Measured or estimated</h3>")
    parts.append(html_table(src, list(src.columns)) if len(src) else "<p>no trials</p>")
    gpus = sorted({str(r.get("latency_gpu")) for r in rows if r.get("latency_gpu")
                   and source_kind(r.get("latency_source")) == "measured"})
    parts.append(f"<p>GPUs that measured latencies in this run: "
                 f"{e(', '.join(gpus)) if gpus else 'none (every L4 latency here is estimated)'}</p>")

    versions: dict[str, set] = {}
    for r in rows:
        for k, v in (r.get("versions") or {}).items():
            versions.setdefault(str(k), set()).add(str(v))
    vdf = pd.DataFrame([{"package": k, "versions in this run's trials": ", ".join(sorted(v))}
                        for k, v in sorted(versions.items())])
    parts.append("<h3>Package versions</h3>")
    parts.append(html_table(vdf, list(vdf.columns)) if len(vdf) else "<p>not recorded</p>")

    machines = {json.dumps(r.get("machine"), sort_keys=True, default=str)
                for r in rows if isinstance(r.get("machine"), dict)}
    mdf = pd.DataFrame([json.loads(m) for m in sorted(machines)])
    parts.append("<h3>Machines that ran the trials</h3>")
    if len(mdf):
        mdf = mdf.rename(columns={"gpu": "GPU"})
        parts.append(html_table(mdf, list(mdf.columns)))
    else:
        parts.append("<p>not recorded</p>")
    plotly = env.require("plotly", "writing reports")
    me = env.machine()
    parts.append(f"<p class=note>This report: l4opt {e(env.version('l4opt') or '?')}, plotly "
                 f"{e(plotly.__version__)} (plotly.js embedded once, no network needed), "
                 f"written on {e(str(me.get('host')))} (GPU: {e(str(me.get('gpu')))}) at "
                 f"{e(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'))}.</p>")
    for n in data["notes"]:
        parts.append(f"<p class=note>store: {e(n)}</p>")
    return parts


def _counts(all_df) -> tuple[int, int]:
    """(sweep trials, search candidates) among all trial rows, whatever their status."""
    if not len(all_df):
        return 0, 0
    strat = all_df["strategy"] if "strategy" in all_df else None
    if strat is None:
        return len(all_df), 0
    sweep = int(strat.map(lambda v: v is None or v != v).sum())
    return sweep, len(all_df) - sweep


def _by_output(row) -> list[dict]:
    from l4opt.ui.view_model import outputs_table

    return outputs_table(row)


def _exclusions(row) -> list[dict]:
    from l4opt.ui.view_model import exclusions_table

    return exclusions_table(row)


def _trial_details(rows) -> list[str]:
    """Per trial, folded: each output's drift (models with several outputs) and every layer
    left unquantized with ModelOpt's reason, for every trial that has them."""
    import pandas as pd

    out = ["<h3 id=details>Per-trial details: outputs and layers left unquantized</h3>"]
    shown = 0
    for r in rows:
        outs, ex = _by_output(r), _exclusions(r)
        if not outs and not ex:
            continue
        shown += 1
        name = r.get("name") or r.get("recipe")
        what = [f"{len(outs)} outputs" if outs else "", f"{len(ex)} layers left unquantized"
                if ex else ""]
        out.append(f"<details class=trial><summary>{e(str(r.get('workload')))} / {e(str(name))} "
                   f"({e(str(r.get('status', '?')))}): {e(', '.join(x for x in what if x))}"
                   f"</summary>")
        if outs:
            out.append("<p class=note>Drift per output (the row's cos_mean/cos_min are the "
                       "worst output's; its SQNR is over all outputs):</p>")
            out.append(html_table(pd.DataFrame(outs), ["output", "cos_mean", "cos_min",
                                                        "sqnr_db", "max_abs_err"]))
        if ex:
            out.append("<p class=note>Layers left in high precision, with the reason:</p>")
            out.append(html_table(pd.DataFrame(ex), ["node", "reason"]))
        out.append("</details>")
    if not shown:
        out.append("<p class=note>no trial here has several outputs or layers left "
                   "unquantized</p>")
    return out


def _calibration_section(run_dir) -> list[str]:
    """The estimator's before/after table on this run's measured L4 rows (nothing when the run
    has no measured L4 rows)."""
    from l4opt.latency import estimate

    try:
        measured = estimate.measured_rows(Path(run_dir))
    except Exception:  # a read-only or odd store: the section is an extra, never a failure
        measured = []
    if not measured:
        return []
    out = ["<h2 id=calibration>Estimate vs measured on this L4</h2>"]
    try:
        table = estimate.refit_table(run_dir)
    except BadInput as exc:
        return out + [f"<p class=bad>{e(str(exc))}</p>"]
    if not len(table):
        return out + [f"<p class=note>{len(measured)} trial(s) here were measured on an L4, but "
                      f"the estimator was not calibrated on them: run <code>l4opt estimate "
                      f"--refit-from {e(str(run_dir))}</code> to see the estimate's error "
                      f"before and after.</p>"]
    out.append("<p class=note>L4 latency the cost model estimated for each measured trial with "
               "its shipped constants (before) and with constants refitted on this run's "
               "measurements (after); errors are relative to the measurement. The refit is "
               "used by estimates made with this run directory's calibration.</p>")
    rename = {"measured_ms": "measured L4 ms", "est_before_ms": "estimated ms (shipped fit)",
              "error_before": "error (shipped fit)", "est_after_ms": "estimated ms (refit)",
              "error_after": "error (refit)"}
    out.append(html_table(table, list(table.columns), rename))
    return out


# ------------------------------------------------------------------ the page

@dataclasses.dataclass
class _Page:
    """What every section reads: the run, its trial rows cut the ways the sections need, the
    budget, and the figures drawn so far (each gets its own div id)."""

    data: dict
    budget: object = None
    figs: list = dataclasses.field(default_factory=list)
    fleet: dict | None = None   # p99_ms, qps, gpus, instances of the fleet plan, or None
    batch: int | None = None    # the latency batch shown (the dashboard's); None: each trial's
    batch_notes: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        import pandas as pd

        from l4opt.ui import plots

        self.run_dir, self.rows = self.data["run_dir"], self.data["rows"]
        if self.batch is not None:
            from l4opt.ui.view_model import BatchLatency, rows_at_batch

            sweep = [r for r in self.rows if not isinstance(r.get("strategy"), str)]
            moved, self.batch_notes = rows_at_batch(sweep, self.batch, BatchLatency(self.run_dir))
            by_key = {id(a): b for a, b in zip(sweep, moved)}
            self.rows = [by_key.get(id(r), r) for r in self.rows]
        self.all_df = pd.DataFrame(self.rows)
        df = plots.trials_frame(self.all_df)
        self.df = _with_pareto(df) if len(df) else df
        a = self.all_df
        status = a.apply(lambda r: rowspec.status(r.to_dict()), axis=1) if len(a) else \
            pd.Series(dtype=object)
        self.failed, self.noop = a[status == "failed"], a[status == "no-op"]
        self.collapsed = a[status == "collapsed"]
        self.n_ok = sum(rowspec.status(r) == "ok" for r in self.rows
                        if not isinstance(r.get("strategy"), str))
        self.sweep_df = self.df[self.df["group"] == "sweep"] if len(self.df) else self.df
        self.search_df = self.df[self.df["group"] != "sweep"] if len(self.df) else self.df
        self.sweep_rows = [r for r in self.rows if not isinstance(r.get("strategy"), str)]

    def fig(self, fig) -> str:
        self.figs.append(fig)
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{len(self.figs)}",
                           default_width="100%", config={"displaylogo": False,
                                                          "responsive": True})


def _header(pg: _Page, title: str) -> list[str]:
    from l4opt.ui import plots

    n_sweep, n_search = _counts(pg.all_df)
    workloads = sorted({str(w) for w in pg.all_df.get("workload", []) if w == w and w is not None})
    p = [f"<h1>{e(title)}</h1>",
         f"<p class=note>{n_sweep} sweep trials ({pg.n_ok} ok), {n_search} search candidates, {len(pg.failed)} failed, {len(pg.noop)} no-op, "
         f"{len(pg.collapsed)} collapsed; workloads: {e(', '.join(workloads)) or 'none'}</p>",
         "<nav><a href='#recommendation'>Recommendation</a><a href='#summary'>Summary</a>"
         "<a href='#chart'>Accuracy vs latency</a><a href='#mixed'>Mixed precision</a>"
         "<a href='#sensitivity'>Per-layer sensitivity</a><a href='#lint'>Engine lint</a>"
         "<a href='#details'>Per-trial details</a><a href='#batch'>Batch-size curves</a>"
         "<a href='#fleet'>Fleet plan</a>"
         "<a href='#provenance'>Provenance</a></nav>"]
    sources = {str(s) for s in pg.df.get("latency_source", []) if plots.source_kind(s)}
    if any(plots.source_kind(s) == plots.ESTIMATED for s in sources):
        p.append("<p class=est>L4 latencies marked <b>estimated</b> come from l4opt's cost model "
                 "(TensorRT's fusions and kernels priced per kernel, fitted on published MLPerf "
                 "L4 results), not from an L4; each carries the band of the model's error with a "
                 "model family held out. Use them to rank recipes, not as measurements. In the "
                 "charts they are "
                 "open markers with the band as error bars; measured ones are filled. CPU timings "
                 "of this workbench are never shown as L4 latency.</p>")
    return p


def _recommendation_section(pg: _Page) -> list[str]:
    """The stated answer per workload: what to ship within the budget, at what cost, for
    what speed-up, and what would do better."""
    from l4opt.ui.view_model import budget_text, recommend

    out = [f"<h2 id=recommendation>Recommendation</h2><p class=note>Budget: "
           f"{e(budget_text(pg.budget))} (the fastest trial whose status is ok within it, or "
           f"the least drifting of those within 5% of it; "
           f"collapsed, no-op and failed trials are never recommended).</p>"]
    by_wl: dict = {}
    for r in pg.sweep_rows:
        by_wl.setdefault(str(r.get("workload")), []).append(r)
    if not by_wl:
        return out + ["<p>no sweep trials in this run</p>"]
    for wl, rows in sorted(by_wl.items()):
        rec = recommend(rows, pg.budget, run_dir=pg.run_dir)
        cls = "rec" if rec["met"] else "rec bad"
        out.append(f"<p class='{cls}'><b>{e(wl)}</b>: {e(rec['sentence'])}</p>")
    return out


def _summary_section(pg: _Page) -> list[str]:
    from l4opt.ui.tables import trial_frame

    p = ["<h2 id=summary>Summary</h2>"]
    sweep = trial_frame(pg.sweep_rows)
    if len(sweep):
        from l4opt.ui.view_model import with_speedups

        sweep = with_speedups(_with_pareto_all(sweep))
        p.append(_summary_table(sweep))
        if pg.batch is not None:
            p.append(f"<p class=note>L4 latencies at batch {pg.batch}, as chosen (the "
                     f"dashboard's <i>latency at batch</i>, or <code>l4opt report --batch</code>"
                     f"): measured at that batch where the trial's batch sweep has it, else "
                     f"estimated on its Q/DQ ONNX; each trial's own figure is in the "
                     f"all-columns table.</p>")
        p.extend(f"<p class=bad>{e(n)}</p>" for n in pg.batch_notes)
        p.append(_band_sources_note(sweep))
        p.append(_bad_latency_note(sweep[sweep.apply(
            lambda r: rowspec.status(r.to_dict()) in ("ok", "collapsed"), axis=1)]))
        p.append("<details><summary>all columns of the sweep trials</summary>"
                 + _sweep_table(sweep) + "</details>")
    else:
        p.append("<p>no finished sweep trials in this run</p>")
    if len(pg.search_df):
        p.append("<h3>Mixed-precision search candidates</h3>")
        backends = sorted({str(b) for b in pg.search_df.get("drift_backend", []) if b == b and b})
        p.append("<p class=note>Each candidate sets some layers to another format or to high "
                 f"precision; drift measured with {e(', '.join(backends) or 'unknown')}. "
                 "Strategy 'bisect-screen' rows were measured on a subset of the evaluation "
                 "set only. Each search's saved recipe is re-run through the sweep; what that "
                 "sweep measured is the search's answer (see Mixed precision below).</p>")
        p.append("<details><summary>the candidates' table</summary>"
                 + _search_table(pg.search_df) + "</details>")
    return p


def _not_ok_section(pg: _Page) -> list[str]:
    p = []
    if len(pg.collapsed):
        p.append("<h3 class=bad>Collapsed trials</h3><p class=note>Drift far past a sensible "
                 "threshold; the likely cause and what to do:</p>")
        p.append(html_table(pg.collapsed, ["workload", "recipe", "cos_mean", "metric_drop",
                                           "collapse_note"], {"metric_drop": METRIC_DROP}))
    if len(pg.noop):
        p.append("<h3>No-op trials</h3><p class=note>These quantizing recipes quantized no "
                 "GEMM/conv layer: not a result and never plotted as a speed-up.</p>")
        p.append(html_table(pg.noop, ["workload", "recipe", "status", "format", "quantized_layers",
                                      "gemm_layers", "excluded_layers", "notes"]))
    if len(pg.failed):
        p.append("<h3 class=bad>Failed trials</h3>")
        p.append(html_table(pg.failed, ["workload", "recipe", "error"]))
    return p


def _chart_section(pg: _Page) -> list[str]:
    from l4opt.ui import plots

    p = ["<h2 id=chart>Accuracy drift vs L4 latency</h2>",
         "<p class=note>One point per trial, error bars: the estimate's band; the dotted line is "
         "the Pareto front (no other trial is both faster and more accurate). The latency axis "
         "starts at 0 so that differences smaller than the band do not look large. Use the menu "
         "to switch between the task-metric drop and the cosine drift; click legend entries to "
         "hide groups.</p>"]
    if not len(pg.df):
        return p + ["<p>no finished trials in this run</p>"]
    for wl, sub in pg.df.groupby("workload", dropna=False, sort=True):
        p.append(pg.fig(plots.accuracy_latency_switchable(
            sub, title=f"{plots.esc(wl)}: accuracy drift vs L4 latency")))
    return p


def _mixed_section(pg: _Page) -> list[str]:
    p = ["<h2 id=mixed>Mixed precision (search)</h2>"]
    if not pg.data["search"]:
        p.append("<p>none in this run (<code>l4opt search WORKLOAD --recipe R --min-cosine C "
                 "--out RUN_DIR</code>)</p>")
    for name, d in pg.data["search"]:
        p.extend(_search_section(name, d, pg.fig))
    return p


def _sensitivity_section(pg: _Page) -> list[str]:
    import pandas as pd

    from l4opt.ui import plots

    p = ["<h2 id=sensitivity>Per-layer sensitivity</h2>"]
    if not pg.data["sensitivity"]:
        p.append("<p>none in this run (<code>l4opt sensitivity WORKLOAD --recipe R --out "
                 "RUN_DIR</code>)</p>")
    for name, d in pg.data["sensitivity"]:
        layers = d.get("layers") or []
        wl, rc = d.get("workload", ""), d.get("recipe", "")
        p.append(f"<h3>{e(str(wl or name))}{(' / ' + e(str(rc))) if rc else ''}</h3>")
        if d.get("error"):
            p.append(f"<p class=bad>{e(str(d['error']))}</p>")
            continue
        facts = [f"{k} {e(_fmt(d.get(k)))}" for k in ("metric_name", "metric_ref",
                                                           "eval_samples") if k in d]
        if facts:
            backend = d.get("drift_backend") or "torch-fakequant-cpu"
            p.append(f"<p class=note>{'; '.join(facts)}. Drift measured with {e(str(backend))}, "
                     f"one layer quantized at a time; a layer ranks by the larger of its share "
                     f"of the task-metric drop and of the output noise power.</p>")
        for n in d.get("notes") or []:
            p.append(f"<p class=note>{e(str(n))}</p>")
        p.append(pg.fig(plots.sensitivity_bars(
            layers, title=f"Per-layer sensitivity: {plots.esc(wl or name)} {plots.esc(rc)}")))
        if layers:
            p.append(html_table(pd.DataFrame(layers), SENS_COLUMNS, max_rows=15))
    return p


def _lint_section(pg: _Page) -> list[str]:
    p = ["<h2 id=lint>Engine lint</h2>"]
    if not pg.data["lint"]:
        p.append("<p>none in this run (<code>l4opt lint ENGINE.graph.json --profile "
                 "ENGINE.profile.json --out RUN_DIR</code>)</p>")
    for name, d in pg.data["lint"]:
        p.append(f"<h3>{e(name)}</h3>")
        if d.get("error"):
            p.append(f"<p class=bad>{e(str(d['error']))}</p>")
            continue
        p.extend(_lint_one(pg, name, d))
    return p


def _lint_one(pg: _Page, name: str, d: dict) -> list[str]:
    import pandas as pd

    from l4opt.ui import plots

    total = d.get("total_ms")
    p = [f"<p class=note>{'quantized' if d.get('quantized_engine') else 'unquantized'} "
         f"engine; " + (f"{total:.4g} ms per inference, the sum of the layers' times in its "
                        f"TensorRT profile (measured on the GPU that built it)"
                        if d.get("has_profile") and total else "no profile: times unknown")
         + "</p>", pg.fig(plots.lint_shares(d, title=f"{plots.esc(name)}: engine time"))]
    findings = pd.DataFrame(d.get("findings") or [])
    summary = d.get("summary") or {}
    if summary:
        sdf = pd.DataFrame([{"finding": k, **(v if isinstance(v, dict) else {"count": v})}
                            for k, v in summary.items()])
        p.append(html_table(sdf, list(sdf.columns)))
    if len(findings):
        p.append(html_table(findings, FINDING_COLUMNS, max_rows=15))
        if len(findings) > 15:
            p.append(f"<p class=note>... {len(findings) - 15} more findings in "
                     f"lint/{e(name)}.json</p>")
    else:
        p.append("<p>no findings</p>")
    return p


def _batch_section(pg: _Page) -> list[str]:
    from l4opt.ui import plots

    p = ["<h2 id=batch>Batch-size curves</h2>"]
    if len(pg.df) and plots.has_batch_curves(pg.df):
        return p + [pg.fig(plots.batch_curves(pg.df))]
    return p + ["<p>none measured in this run (they come from an L4: <code>l4opt bundle"
                "</code>, run its script on the L4, then <code>l4opt import</code>)</p>"]


def _notes_section(pg: _Page) -> list[str]:
    """Each trial's notes, the same note said once with the recipes it concerns (the one rule
    notebooks use too: l4opt.ui.tables.folded_notes)."""
    from l4opt.ui.tables import folded_notes

    folded = folded_notes(pg.rows, "notes")
    if not folded:
        return []
    return ["<h2 id=notes>Notes on trials</h2><ul>" + "".join(
        f"<li><b>{e(', '.join(rcs))}</b>: {e(n)}</li>" for n, rcs in folded) + "</ul>"]


def _fleet_section(pg: _Page) -> list[str]:
    """GPUs needed, USD per million and joules per inference per recipe and GPU at the chosen
    p99 target (l4opt.plan under the report's budget), with the cost-vs-accuracy chart."""
    from l4opt.errors import BadInput
    from l4opt.fleet.plan import (cost_accuracy_figure, display_table, folded_notes,
                                  recommendation)
    from l4opt.ui.view_model import FLEET_GPUS, fleet_plan

    out = ["<h2 id=fleet>Fleet plan</h2>"]
    if not pg.fleet:
        return out + ["<p class=note>not planned: <code>l4opt report RUN_DIR --p99-ms T "
                      "[--qps N] [--gpus L4,T4]</code> (or the dashboard's Fleet plan panel) "
                      "adds the GPUs needed, USD per million and joules per inference per "
                      "recipe and GPU; <code>l4opt plan</code> prints the same.</p>"]
    f = dict(pg.fleet)
    for wl in sorted({str(r.get("workload")) for r in pg.sweep_rows}):
        try:
            res = fleet_plan(pg.run_dir, wl, pg.budget, p99_ms=f.get("p99_ms"), qps=f.get("qps"),
                             gpus=f.get("gpus") or FLEET_GPUS, instances=f.get("instances") or (1,))
        except BadInput as exc:
            out.append(f"<p class='rec bad'><b>{e(wl)}</b>: no fleet plan: {e(str(exc))}</p>")
            continue
        out.append(f"<p class=note><b>{e(wl)}</b>: p99 &le; {res.p99_ms:g} ms (queueing "
                   f"included), " + (f"{res.qps:g} QPS of Poisson traffic" if res.qps else
                                     "one GPU at its highest QPS") + "; latencies ESTIMATED "
                   "unless measured, bands from the estimate; power at TDP unless measured. "
                   "Rows outside the budget or not ok are shown, never recommended.</p>")
        out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in recommendation(res)) + "</ul>")
        shown = display_table(res)
        out.append(html_table(shown, list(shown.columns)))
        out.append(pg.fig(cost_accuracy_figure(res)))
        notes = folded_notes(res.table)
        if notes or res.notes:
            out.append("<details><summary>notes</summary><ul>" + "".join(
                f"<li>{e(n)}</li>" for n in dict.fromkeys(notes + list(res.notes))) +
                "</ul></details>")
    return out


def _provenance_section(pg: _Page) -> list[str]:
    return ["<h2 id=provenance>Provenance</h2>"] + _provenance(pg.rows, pg.data)


def build_html(run_dir, title: str | None = None, budget=None, fleet: dict | None = None,
               batch: int | None = None) -> str:
    """The report of a run directory as one HTML string; `budget` (default: a task-metric drop
    of at most 0.01) decides the recommendation at the top; `fleet` ({'p99_ms': T, 'qps': N,
    'gpus': [...], 'instances': [...]}) adds the fleet plan; `batch` shows every sweep trial's
    L4 latency at that batch (the dashboard's "latency at batch") instead of at its own."""
    env.require("plotly", "writing reports")
    from plotly.offline import get_plotlyjs

    batch = _batch_arg(batch)
    pg = _Page(load_run(run_dir), budget, fleet=fleet, batch=batch)
    title = title or f"l4opt report: {pg.run_dir.resolve().name}"
    p: list[str] = []
    for section in (lambda: _header(pg, title), lambda: _recommendation_section(pg),
                    lambda: _summary_section(pg), lambda: _not_ok_section(pg),
                    lambda: _trial_details(pg.rows), lambda: _calibration_section(pg.run_dir),
                    lambda: _chart_section(pg), lambda: _mixed_section(pg),
                    lambda: _sensitivity_section(pg), lambda: _lint_section(pg),
                    lambda: _batch_section(pg), lambda: _fleet_section(pg),
                    lambda: _notes_section(pg),
                    lambda: _provenance_section(pg)):
        p.extend(section())
    return ("<!doctype html>\n<html lang=en><head><meta charset='utf-8'>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title><style>{CSS}</style>\n"
            f"<script type='text/javascript'>{get_plotlyjs()}</script>\n{NOSCRIPT_HIDE}\n"
            f"</head><body>\n{NOSCRIPT_NOTE}\n" + "\n".join(x for x in p if x) +
            "\n</body></html>\n")

def _search_section(name: str, d: dict, fig_html) -> list[str]:
    """One saved search: what was chosen (latency, band, batch, look-alikes), its per-layer
    precision map and the candidates' front with latency error bands."""
    import pandas as pd

    from l4opt.ui import plots

    rname = (d.get("recipe") or {}).get("name", "")
    out = [f"<h3>{e(str(d.get('workload') or name))} / {e(str(rname))}</h3>"]
    if d.get("error"):
        return out + [f"<p class=bad>{e(str(d['error']))}</p>"]
    lat, lo, hi = d.get("latency_ms"), d.get("latency_low_ms"), d.get("latency_high_ms")
    band = (f" (estimate band {_fmt(float(lo))} to {_fmt(float(hi))} ms)"
            if rowspec.valid_latency(lo) and rowspec.valid_latency(hi) else " (no error band recorded)")
    lat_text = (f"estimated L4 latency {_fmt(float(lat))} ms at batch "
                f"{e(str(d.get('latency_batch')))}" + band) if rowspec.valid_latency(lat) else \
        "no L4 latency estimate"
    frac = d.get("fraction_quantized")
    out.append(f"<p>{e(str(d.get('message', '')))}. Chosen: <b>{e(str(d.get('chosen')))}</b>; "
               f"{lat_text}; mean cosine {_cos(d.get('cos_mean'))}, "
               f"{e(str(d.get('metric_name') or 'metric'))} {e(_fmt(d.get('metric')))}; "
               + (f"{100 * float(frac):.0f}% of GEMM/conv layers at 8 bits; " if frac is not None
                  else "")
               + f"{e(str(d.get('evaluations', '?')))} evaluations in "
               f"{e(_fmt(d.get('seconds')))} s.</p>")
    same = d.get("indistinguishable") or []
    out.append(f"<p class=note>Candidates whose latency cannot be told apart from the chosen "
               f"one (estimate bands overlap): {e(', '.join(map(str, same))) or 'none'}.</p>")
    out.append(_final_sweep_text(d))
    if d.get("log_path"):
        out.append(f"<p class=note>ModelOpt's and ONNX Runtime's output during the search: "
                   f"<code>logs/{e(Path(str(d['log_path'])).name)}</code></p>")
    for n in d.get("notes") or []:
        out.append(f"<p class=note>{e(str(n))}</p>")
    shapes = d.get("shapes") or {}
    if shapes:
        from l4opt.ui.tables import shapes_text

        out.append(f"<p class=note>shapes: {e(shapes_text(shapes))}</p>")
    if d.get("layer_map"):
        out.append(fig_html(plots.precision_map(d["layer_map"], batch=d.get("latency_batch"))))
        out.append(html_table(pd.DataFrame(d["layer_map"]), LAYER_COLUMNS, max_rows=200))
    if d.get("candidate_rows"):
        out.append(fig_html(plots.search_front(d)))
    return out


def _final_sweep_text(d: dict) -> str:
    """What the sweep of the saved recipe measured (the search's answer), never a reference to
    a row that is not in the report."""
    row = d.get("final_sweep_row") or {}
    status = d.get("final_status") or row.get("status")
    rc = e(str(row.get("recipe") or (d.get("recipe") or {}).get("name", "")))
    if status == "ok":
        return (f"<p class=note>The saved recipe {rc} was re-run through the sweep: its row is "
                f"in the Summary table (mean cosine {_cos(row.get('cos_mean'))}, "
                f"{e(str(d.get('metric_name') or 'metric'))} {e(_fmt(row.get('metric')))}); "
                f"budget {'met' if d.get('met') else 'NOT met'} there.</p>")
    if status is None:
        return ("<p class=bad>The saved recipe's sweep is not recorded in this search: the "
                "budget is not shown to hold.</p>")
    what = "failed" if status == "failed" else f"ended {status}"
    where = {"failed": "Failed trials", "no-op": "No-op trials"}.get(str(status), "its status")
    err = row.get("error") or row.get("collapse_note") or "no error recorded"
    return (f"<p class=bad>The sweep of the saved recipe {what} ({e(str(err))}): the row of "
            f"{rc} is listed under {e(where)}, not in the Summary table, and the budget is not "
            f"shown to hold.</p>")


def _cos(v) -> str:
    """A cosine with enough digits to compare with a budget like 0.9999 (4g shows '1')."""
    try:
        return f"{float(v):.6g}"
    except (TypeError, ValueError):
        return "–"


def _fmt(v) -> str:
    """One number in prose, formatted as the tables format it ('–' when missing)."""
    from l4opt.ui.tables import format_column

    return format_column([v])[0]



def _batch_arg(batch):
    """The report's latency batch: None (each trial's own) or a whole number >= 1."""
    if batch is None:
        return None
    import numbers

    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise BadInput(f"batch={batch!r}: give the latency batch as a whole number >= 1, or "
                       f"None for each trial's own batch")
    return int(batch)


def write_report(run_dir, out=None, budget=None, fleet: dict | None = None,
                 batch: int | None = None) -> Path:
    """Write the report of RUN_DIR (default RUN_DIR/report.html) and return its path. `budget`
    ({"max_drop": D}, {"min_cosine": C} or an l4opt Budget; default a task-metric drop of at
    most 0.01) decides the recommendation at its top; `batch`, the latency batch shown."""
    text = build_html(run_dir, budget=budget, fleet=fleet, batch=batch)
    out = Path(out) if out else Path(run_dir) / "report.html"
    if out.is_dir():
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
