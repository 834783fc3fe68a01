"""One self-contained HTML report of a run directory: opens offline, no kernel, no CDN."""
from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path

from . import env
from .errors import BadInput

SHOW = ["workload", "recipe", "status", "format", "path", "algorithm", "metric_name", "metric",
        "metric_delta", "cos_mean", "cos_min", "sqnr_db", "max_abs_err", "drift_backend",
        "latency_ms", "latency_source", "throughput_samples_s", "fraction_quantized", "pareto",
        "error"]

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f3f3f3}.est{color:#a15c00;font-weight:600}.note{color:#555}
h2{border-bottom:1px solid #ddd;margin-top:1.6em}"""


def _load_json_dir(d: Path) -> list[tuple[str, dict]]:
    out = []
    for f in sorted(d.glob("*.json")) if d.exists() else []:
        try:
            out.append((f.stem, json.loads(f.read_text())))
        except (OSError, json.JSONDecodeError):
            out.append((f.stem, {"error": f"unreadable {f.name}"}))
    return out


def _table(df, columns) -> str:
    cols = [c for c in columns if c in df.columns]
    shown = df[cols].copy()
    shown = shown.rename(columns={"latency_ms": "L4 latency ms (b=1; see source)",
                                  "throughput_samples_s": "L4 samples/s at opt batch (see source)"})
    return shown.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}",
                         na_rep="–", border=0)


def build_html(run_dir) -> str:
    import pandas as pd

    plotly = env.require("plotly", "writing reports")
    from plotly.offline import get_plotlyjs

    from . import plots
    from .store import Store

    run_dir = Path(run_dir)
    if not (run_dir / "results.sqlite").exists():
        raise BadInput(f"{run_dir} holds no results.sqlite; run `l4opt sweep ... --out {run_dir}`")
    store = Store(run_dir)
    rows = [r for r in store.rows() if r.get("kind", "trial") == "trial"]
    store.close()
    df = pd.DataFrame(rows)
    figs, parts = [], []

    def fig_html(fig) -> str:
        figs.append(fig)
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{len(figs)}",
                           config={"displaylogo": False})

    e = html.escape
    sources = sorted({str(r.get("latency_source")) for r in rows if r.get("latency_source")})
    estimated = [s for s in sources if s.startswith("estimated")]
    parts.append(f"<h1>l4opt report: {e(run_dir.name)}</h1>")
    parts.append(f"<p class=note>generated {e(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'))}"
                 f" by l4opt {e(env.version('l4opt') or '')}; {len(rows)} trials</p>")
    if estimated:
        parts.append("<p class=est>L4 latencies marked estimated-* are ESTIMATES from l4opt's "
                     "cost model, not measurements on an L4. Open markers in the chart.</p>")
    parts.append("<h2>Summary</h2>")
    parts.append(_table(df, SHOW) if len(df) else "<p>no trials in this run</p>")
    parts.append("<h2>Accuracy drift vs L4 latency</h2>")
    parts.append(fig_html(plots.accuracy_latency_switchable(df)))
    parts.append("<h2>Per-layer sensitivity</h2>")
    sens = _load_json_dir(run_dir / "sensitivity")
    if not sens:
        parts.append("<p>none in this run (<code>l4opt sensitivity WORKLOAD --recipe R "
                     "--out RUN_DIR</code>)</p>")
    for name, d in sens:
        layers = d.get("layers") or []
        parts.append(f"<h3>{e(name)}</h3>")
        parts.append(fig_html(plots.sensitivity_bars(layers, title=f"Per-layer sensitivity: {name}")))
        if layers:
            parts.append(_table(pd.DataFrame(layers).head(15),
                                ["rank", "layer", "share", "only_drop", "only_cos_mean",
                                 "all_but_drop", "recovery"]))
    parts.append("<h2>Engine lint</h2>")
    lints = _load_json_dir(run_dir / "lint")
    if not lints:
        parts.append("<p>none in this run (<code>l4opt lint GRAPH.json --profile PROFILE.json "
                     "--out RUN_DIR</code>)</p>")
    for name, d in lints:
        parts.append(f"<h3>{e(name)}</h3>")
        parts.append(fig_html(plots.lint_shares(d)))
        summ = d.get("summary") or {}
        parts.append("<ul>" + "".join(
            f"<li>{e(str(k))}: {v.get('count')} layers, {v.get('time_ms', 0):.4f} ms</li>"
            for k, v in summ.items()) + "</ul>")
    parts.append("<h2>Batch-size curves</h2>")
    if any(isinstance(r.get("batch_sweep"), list) and r["batch_sweep"] for r in rows):
        parts.append(fig_html(plots.batch_curves(df)))
    else:
        parts.append("<p>none measured in this run (they come from an L4: <code>l4opt bundle"
                     "</code> / <code>l4opt import</code>)</p>")
    parts.append("<h2>Provenance</h2>")
    machines = {json.dumps(r.get("machine"), sort_keys=True) for r in rows if r.get("machine")}
    versions = {json.dumps(r.get("versions"), sort_keys=True) for r in rows if r.get("versions")}
    parts.append("<p>latency sources in this run: " + (", ".join(e(s) for s in sources) or "none")
                 + "</p>")
    for label, items in (("machine", machines), ("package versions", versions)):
        for m in sorted(items):
            parts.append(f"<p><b>{label}</b>: <code>{e(m)}</code></p>")
    parts.append(f"<p><b>GPU on the machine that wrote this report</b>: {e(str(env.machine()['gpu']))}</p>")
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>l4opt report: "
            f"{e(run_dir.name)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>{body}"
            f"<p class=note>plotly {e(plotly.__version__)}, embedded; this file needs no network.</p>"
            f"</body></html>")


def write_report(run_dir, out=None) -> Path:
    """Write the report (default RUN_DIR/report.html) and return its path."""
    out = Path(out) if out else Path(run_dir) / "report.html"
    text = build_html(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
