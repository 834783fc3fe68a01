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
import math
import sqlite3
from pathlib import Path

from . import env
from .errors import BadInput

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
"""

SWEEP_COLUMNS = ["workload", "recipe", "status", "format", "path", "algorithm", "metric_name",
                 "metric", "metric_delta", "cos_mean", "cos_min", "sqnr_db", "drift_backend",
                 "latency_ms", "latency_source", "latency_estimate_ms", "throughput_samples_s",
                 "throughput_batch", "pareto_here", "quantized_layers", "error"]
SEARCH_COLUMNS = ["workload", "name", "strategy", "met", "pareto", "fraction_quantized",
                  "metric_drop", "cos_mean", "sqnr_db", "latency_ms", "latency_opt_ms",
                  "latency_batch", "latency_source", "pareto_here"]
SENS_COLUMNS = ["rank", "layer", "share", "only_drop", "only_cos_mean", "all_but_drop",
                "recovery"]
FINDING_COLUMNS = ["kind", "layer", "time_ms", "share", "message"]
SOURCE_MEANING = {
    "estimated": "l4opt's roofline cost model (not a measurement; a ranking aid)",
    "measured": "a TensorRT engine timed on that GPU (trtexec or l4opt.trt)",
}

e = html.escape


# ------------------------------------------------------------------ reading a run

def _read_rows(run_dir: Path) -> tuple[list[dict], list[str]]:
    from .store import Store

    try:
        store = Store(run_dir)
    except BadInput:  # a read-only run directory (shared with us): read the database as is
        con = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True)
        try:
            rows = [json.loads(r) for (r,) in con.execute(
                "SELECT row FROM trials ORDER BY created_at")]
        finally:
            con.close()
        return rows, [f"{run_dir} is read-only; read its results.sqlite as it is"]
    try:
        return store.rows(), list(store.notes)
    finally:
        store.close()


def _load_json_dir(d: Path) -> list[tuple[str, dict]]:
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            data = json.loads(f.read_text())
            out.append((f.stem, data if isinstance(data, dict) else {"layers": data}))
        except (OSError, json.JSONDecodeError) as exc:
            out.append((f.stem, {"error": f"unreadable {f.name}: {exc}"}))
    return out


def load_run(run_dir) -> dict:
    """Trials, sensitivity and lint results of a run directory, as the report reads them."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.sqlite").exists():
        raise BadInput(f"{run_dir} holds no results.sqlite: run `l4opt sweep WORKLOAD --out "
                       f"{run_dir}` first")
    rows, notes = _read_rows(run_dir)
    return {"run_dir": run_dir, "rows": [r for r in rows if r.get("kind", "trial") == "trial"],
            "notes": notes, "sensitivity": _load_json_dir(run_dir / "sensitivity"),
            "lint": _load_json_dir(run_dir / "lint")}


# ------------------------------------------------------------------ pieces

def _fmt(v):
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}"
    return v


def latency_header(sources, what: str = "L4 latency ms, batch 1") -> str:
    """A column header that says whether the numbers under it are estimated or measured."""
    from .plots import ESTIMATED, MEASURED, source_gpu, source_kind

    kinds = {source_kind(s) for s in sources if source_kind(s)}
    if kinds == {ESTIMATED}:
        return f"{what} (estimated)"
    if kinds == {MEASURED} and {source_gpu(s) for s in sources if s} == {"l4"}:
        return f"{what} (measured)"
    return f"{what} (measured or estimated: see latency_source)"


def html_table(df, columns, rename=None, max_rows: int | None = None) -> str:
    """A DataFrame as an escaped HTML table: listed columns that exist, in order."""
    cols = [c for c in columns if c in df.columns]
    shown = df[cols].copy()
    if max_rows is not None:
        shown = shown.head(max_rows)
    for c in shown.columns:
        shown[c] = [_cell(v) for v in shown[c]]
    shown = shown.rename(columns=rename or {})
    return "<div class=tbl>" + shown.to_html(index=False, escape=True, na_rep="–", border=0) \
        + "</div>"


def _cell(v):
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)[:200]
    if v is None:
        return "–"
    return _fmt(v)


def _sweep_table(df) -> str:
    src = list(df.get("latency_source", []))
    rename = {
        "latency_ms": latency_header(src),
        "latency_estimate_ms": "L4 latency ms, batch 1 (estimated; kept beside a measurement)",
        "throughput_samples_s": "L4 samples/s at throughput_batch (estimated)",
        "pareto_here": "on the Pareto front (drop vs batch-1 latency)",
        "metric_delta": "metric change vs unquantized",
    }
    return html_table(df, SWEEP_COLUMNS, rename)


def _search_table(df) -> str:
    src = list(df.get("latency_source", []))
    rename = {
        "latency_ms": latency_header(src),
        "latency_opt_ms": latency_header(src, "L4 latency ms at latency_batch"),
        "pareto": "search Pareto flag (stored)",
        "pareto_here": "on the Pareto front (drop vs batch-1 latency)",
        "met": "meets budget",
    }
    df = df.sort_values(["workload", "strategy", "latency_ms"], na_position="last")
    return html_table(df, SEARCH_COLUMNS, rename)


def _with_pareto(df):
    """pareto_here: on the front of metric drop against batch-1 latency, per workload."""
    import numpy as np

    from .plots import pareto_mask, source_kind

    out = np.zeros(len(df), bool)
    for _, idx in df.groupby("workload", dropna=False).groups.items():
        sub = df.loc[idx]
        has = sub["latency_source"].map(lambda s: source_kind(s) is not None)
        lat = sub["latency_ms"].where(has)
        out[df.index.get_indexer(idx)] = pareto_mask(sub["metric_drop"], lat)
    return df.assign(pareto_here=out)


def _provenance(rows, data) -> list[str]:
    import pandas as pd

    from .plots import source_kind, source_label

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


# ------------------------------------------------------------------ the page

def build_html(run_dir, title: str | None = None) -> str:
    """The report of a run directory as one HTML string."""
    import pandas as pd

    env.require("plotly", "writing reports")
    from plotly.offline import get_plotlyjs

    from . import plots

    data = load_run(run_dir)
    run_dir, rows = data["run_dir"], data["rows"]
    figs: list = []

    def fig_html(fig) -> str:
        figs.append(fig)
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{len(figs)}",
                           default_width="100%", config={"displaylogo": False,
                                                          "responsive": True})

    df = plots.trials_frame(pd.DataFrame(rows))
    all_df = pd.DataFrame(rows)
    failed = all_df[all_df["status"] != "ok"] if "status" in all_df else all_df.iloc[0:0]
    if len(df):
        df = _with_pareto(df)
    sweep_df = df[df["group"] == "sweep"] if len(df) else df
    search_df = df[df["group"] != "sweep"] if len(df) else df
    title = title or f"l4opt report: {run_dir.resolve().name}"
    sources = sorted({str(s) for s in df.get("latency_source", []) if plots.source_kind(s)})
    p: list[str] = [f"<h1>{e(title)}</h1>"]
    p.append(f"<p class=note>{len(sweep_df)} sweep trials, {len(search_df)} search candidates, "
             f"{len(failed)} failed; workloads: "
             f"{e(', '.join(sorted({str(w) for w in df.get('workload', [])})) or 'none')}</p>")
    p.append("<nav><a href='#summary'>Summary</a><a href='#chart'>Accuracy vs latency</a>"
             "<a href='#sensitivity'>Per-layer sensitivity</a><a href='#lint'>Engine lint</a>"
             "<a href='#batch'>Batch-size curves</a><a href='#provenance'>Provenance</a></nav>")
    if any(plots.source_kind(s) == plots.ESTIMATED for s in sources):
        p.append("<p class=est>L4 latencies marked <b>estimated</b> come from l4opt's cost model "
                 "(a roofline per kernel), not from an L4: use them to rank recipes, not as "
                 "measurements. In the charts they are open markers; measured ones are "
                 "filled. CPU timings of this workbench are never shown as L4 latency.</p>")

    p.append("<h2 id=summary>Summary</h2>")
    if len(sweep_df):
        p.append(_sweep_table(sweep_df))
    else:
        p.append("<p>no finished sweep trials in this run</p>")
    if len(search_df):
        p.append("<h3>Mixed-precision search candidates</h3>")
        p.append("<p class=note>Each candidate keeps some layers in high precision; drift "
                 "measured on the fake-quantized torch model. The chosen recipe is re-run "
                 "through the sweep (its row is in the table above).</p>")
        p.append(_search_table(search_df))
    if len(failed):
        p.append("<h3 class=bad>Failed trials</h3>")
        p.append(html_table(failed, ["workload", "recipe", "error"]))

    p.append("<h2 id=chart>Accuracy drift vs L4 latency</h2>")
    p.append("<p class=note>One point per trial; the dotted line is the Pareto front (no other "
             "trial is both faster and more accurate). Use the menu to switch between the "
             "task-metric drop and the cosine drift; click legend entries to hide groups.</p>")
    if len(df):
        for wl, sub in df.groupby("workload", dropna=False, sort=True):
            p.append(fig_html(plots.accuracy_latency_switchable(
                sub, title=f"{plots.esc(wl)}: accuracy drift vs L4 latency")))
    else:
        p.append("<p>no finished trials in this run</p>")

    p.append("<h2 id=sensitivity>Per-layer sensitivity</h2>")
    if not data["sensitivity"]:
        p.append("<p>none in this run (<code>l4opt sensitivity WORKLOAD --recipe R --out "
                 "RUN_DIR</code>)</p>")
    for name, d in data["sensitivity"]:
        layers = d.get("layers") or []
        wl, rc = d.get("workload", ""), d.get("recipe", "")
        p.append(f"<h3>{e(str(wl or name))}{(' / ' + e(str(rc))) if rc else ''}</h3>")
        if d.get("error"):
            p.append(f"<p class=bad>{e(str(d['error']))}</p>")
            continue
        facts = [f"{k} {e(_fmt_any(d.get(k)))}" for k in ("metric_name", "metric_ref",
                                                           "eval_samples") if k in d]
        if facts:
            p.append(f"<p class=note>{'; '.join(facts)}. Drift measured on the fake-quantized "
                     f"torch model with one layer quantized at a time.</p>")
        for n in d.get("notes") or []:
            p.append(f"<p class=note>{e(str(n))}</p>")
        p.append(fig_html(plots.sensitivity_bars(
            layers, title=f"Per-layer sensitivity: {plots.esc(wl or name)} {plots.esc(rc)}")))
        if layers:
            p.append(html_table(pd.DataFrame(layers), SENS_COLUMNS, max_rows=15))

    p.append("<h2 id=lint>Engine lint</h2>")
    if not data["lint"]:
        p.append("<p>none in this run (<code>l4opt lint ENGINE.graph.json --profile "
                 "ENGINE.profile.json --out RUN_DIR</code>)</p>")
    for name, d in data["lint"]:
        p.append(f"<h3>{e(name)}</h3>")
        if d.get("error"):
            p.append(f"<p class=bad>{e(str(d['error']))}</p>")
            continue
        total = d.get("total_ms")
        p.append(f"<p class=note>{'quantized' if d.get('quantized_engine') else 'unquantized'} "
                 f"engine; " + (f"{total:.4g} ms per inference, the sum of the layers' times in "
                                f"its TensorRT profile (measured on the GPU that built it)"
                                if d.get("has_profile") and total else
                                "no profile: times unknown") + "</p>")
        p.append(fig_html(plots.lint_shares(d, title=f"{plots.esc(name)}: engine time")))
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

    p.append("<h2 id=batch>Batch-size curves</h2>")
    if len(df) and plots.has_batch_curves(df):
        p.append(fig_html(plots.batch_curves(df)))
    else:
        p.append("<p>none measured in this run (they come from an L4: <code>l4opt bundle"
                 "</code>, run its script on the L4, then <code>l4opt import</code>)</p>")

    notes = [(r.get("recipe"), n) for r in rows for n in (r.get("notes") or [])]
    if notes:
        p.append("<h2 id=notes>Notes on trials</h2><ul>" + "".join(
            f"<li><b>{e(str(rc))}</b>: {e(str(n))}</li>" for rc, n in notes) + "</ul>")
    p.append("<h2 id=provenance>Provenance</h2>")
    p.extend(_provenance(rows, data))

    return ("<!doctype html>\n<html lang=en><head><meta charset='utf-8'>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title><style>{CSS}</style>\n"
            f"<script type='text/javascript'>{get_plotlyjs()}</script>\n"
            f"</head><body>\n" + "\n".join(p) + "\n</body></html>\n")


def _fmt_any(v) -> str:
    return str(_fmt(v)) if v is not None else "–"


def write_report(run_dir, out=None) -> Path:
    """Write the report of RUN_DIR (default RUN_DIR/report.html) and return its path."""
    text = build_html(run_dir)
    out = Path(out) if out else Path(run_dir) / "report.html"
    if out.is_dir():
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
