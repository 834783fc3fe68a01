"""DataFrame in, plotly Figure out: pure functions shared by notebooks, widgets and reports.

Conventions every figure keeps:
- Estimated latencies are open markers, measured ones filled, and the latency axis says which
  ("L4 latency (ms, estimated)"). A row without any latency is left out of latency plots and
  named in a note under the chart: no number is ever invented for it.
- Every user-supplied string (workload, recipe, layer names) is HTML-escaped before it reaches
  plotly, whose labels understand a little HTML: a name like `<b>` shows as text.
- Interaction that must work without a kernel uses plotly's own controls (legend, hover,
  dropdown menus), so the figures behave the same in a notebook and in a static report.
"""
from __future__ import annotations

import html
import math

import numpy as np

from l4opt import env
from l4opt.spec import row as rowspec

MEASURED, ESTIMATED = "measured", "estimated"
SYMBOLS = {MEASURED: "circle", ESTIMATED: "circle-open"}
# plotly's default qualitative palette, spelled out so that this module imports nothing heavy
PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692",
           "#B6E880", "#FF97FF", "#FECB52"]
PRECISION_COLORS = {"int8": "#00CC96", "fp8": "#AB63FA", "fp16": "#636EFA", "fp32": "#EF553B"}
Y_TITLES = {"metric_drop": "{metric} drop vs unquantized (lower is better)",
            "cos_drop": "1 - mean cosine to unquantized (lower is better)"}
Y_LABELS = {"metric_drop": "task metric drop", "cos_drop": "cosine drift"}
MAX_TEXT_LABELS = 15


def _menu(buttons, active: int = 0) -> dict:
    """A plotly dropdown above the plot's top-right corner (works without a kernel)."""
    return {"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.02, "yanchor": "bottom",
            "showactive": True, "active": active, "pad": {"b": 4}}


def _go():
    return env.require("plotly.graph_objects", "plotting")


def esc(s) -> str:
    """A user string made safe for plotly labels (which render a subset of HTML)."""
    return html.escape("" if s is None else str(s), quote=False)


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


# ------------------------------------------------------------------ latency sources

def source_kind(source) -> str | None:
    """'measured', 'estimated', or None for a row without an L4 latency."""
    s = "" if source is None or (isinstance(source, float) and math.isnan(source)) else str(source)
    if s.startswith("measured"):
        return MEASURED
    if s.startswith("estimated"):
        return ESTIMATED
    return None


def source_gpu(source) -> str:
    """'l4' for 'estimated-l4' / 'measured-l4', else the GPU slug ('titan-rtx')."""
    s = str(source or "")
    return s.split("-", 1)[1] if "-" in s else "?"


def source_label(source) -> str:
    """'estimated L4', 'measured L4', 'measured titan-rtx'."""
    kind, gpu = source_kind(source), source_gpu(source)
    if kind is None:
        return "no latency"
    return f"{kind} {'L4' if gpu == 'l4' else gpu}"


def latency_axis_title(sources, batch=1) -> str:
    """The latency axis title: says whether the numbers are estimated or measured."""
    sources = [s for s in sources if source_kind(s)]
    b = "" if batch is None else f", {batch}" if isinstance(batch, str) else f", batch {batch}"
    if not sources:
        return f"L4 latency (ms{b})"
    kinds = {source_kind(s) for s in sources}
    gpus = {source_gpu(s) for s in sources}
    where = "L4" if gpus == {"l4"} else "GPU"
    if kinds == {ESTIMATED}:
        what = "estimated"
    elif kinds == {MEASURED}:
        what = "measured" + ("" if gpus == {"l4"} else " on " + ", ".join(sorted(gpus)))
    else:
        what = "estimated = open markers, measured = filled"
    return f"{where} latency (ms, {what}){b}"


# ------------------------------------------------------------------ frames

def trials_frame(df):
    """The finished trials of a run as a DataFrame with the columns the plots read.

    Accepts a DataFrame or a list of row dicts; tolerates missing optional columns. The ok trial
    rows of l4opt.tables.trial_frame (`name`, `metric_drop`, `cos_drop`), plus `group` ('sweep'
    or the search strategy) and numeric latency columns.
    """
    import pandas as pd

    from l4opt.ui.tables import trial_frame

    df = pd.DataFrame(df if df is not None else [])
    if "kind" in df:
        df = df[df["kind"].isna() | (df["kind"] == "trial")]
    if "status" in df:
        df = df[df["status"].isna() | df["status"].isin(["ok", "collapsed"])]
    df = df.reset_index(drop=True).copy()
    for c in ("strategy", "latency_source", "metric_name", "pareto"):
        if c not in df:
            df[c] = None
    for c in ("latency_ms", "latency_low_ms", "latency_high_ms"):
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else np.nan
    df = trial_frame(df)
    df["name"] = df["name"].where(df["name"].notna(), pd.Series(df.index.astype(str)))
    df["key"] = df["key"].where(df["key"].notna(), df["name"])
    df["group"] = df["strategy"].where(df["strategy"].notna(), "sweep").astype(str)
    return df


pareto_mask = rowspec.pareto_mask  # the one Pareto rule (l4opt.spec.row)


def _ytitle(df, y: str) -> str:
    names = {str(m) for m in df.get("metric_name", []) if m is not None and m == m}
    metric = next(iter(names)) if len(names) == 1 else "task metric"
    return Y_TITLES.get(y, y).format(metric=esc(metric))


# ------------------------------------------------------------------ accuracy vs latency

def _accuracy_traces(df, y: str, x: str, source: str):
    """Scatter traces (one per group and latency kind), the Pareto front, and what was left out."""
    import pandas as pd

    go = _go()
    raw = pd.DataFrame(df if df is not None else [])
    noop = [str(n) for n in raw.get("recipe", pd.Series(dtype=object))[
        raw.get("status", pd.Series(index=raw.index, dtype=object)) == "no-op"]] if len(raw) else []
    df = trials_frame(df)
    if source not in df:
        df[source] = None
    df[x] = pd.to_numeric(df[x], errors="coerce") if x in df else np.nan
    has_y = df[y].notna()
    usable = df[x].map(lambda v: math.isfinite(v) and v > 0)
    has_x = usable & df[source].map(lambda s: source_kind(s) is not None)
    plotted = df[has_x & has_y]
    missing = [str(n) for n in df.loc[has_y & ~has_x, "name"]]
    groups = list(dict.fromkeys(plotted["group"]))
    multi_wl = df["workload"].nunique() > 1
    labels_at = _merged_labels(plotted, x, y) if len(plotted) <= MAX_TEXT_LABELS else {}
    traces = []
    for gi, group in enumerate(groups):
        color = PALETTE[gi % len(PALETTE)]
        for kind in (MEASURED, ESTIMATED):
            part = plotted[(plotted["group"] == group)
                           & (plotted[source].map(source_kind) == kind)]
            if not len(part):
                continue
            labels = sorted({source_label(s) for s in part[source]})
            name = f"{', '.join(labels)} latency"
            if len(groups) > 1 or group != "sweep":
                name = f"{group}: {name}"
            names = [esc(n) + (f" ({esc(w)})" if multi_wl else "")
                     for n, w in zip(part["name"], part["workload"])]
            stored = ["search Pareto: yes" if p is True else
                      "search Pareto: no" if p is False else "" for p in part["pareto"]]
            text = [labels_at.get(i, "") for i in part.index]
            facts = [_row_facts(r) for _, r in part.iterrows()]
            traces.append(go.Scatter(
                x=part[x].tolist(), y=part[y].tolist(),
                mode="markers+text" if any(text) else "markers",
                text=text if any(text) else None, cliponaxis=False,
                textposition=[_text_side(v, plotted[x]) for v in part[x]],
                name=name, legendgroup=kind,
                marker={"symbol": SYMBOLS[kind], "size": 12, "color": color,
                        "line": {"width": 2, "color": color}},
                error_x=_band_errors(part, x),
                customdata=[[n, esc(s), str(k), esc(group), st, f] for n, s, k, st, f in
                            zip(names, part[source], part["key"], stored, facts)],
                hovertemplate="<b>%{customdata[0]}</b> (%{customdata[3]})<br>"
                              "latency %{x:.4g} ms, %{customdata[1]}<br>"
                              f"{Y_LABELS.get(y, y)} %{{y:.4g}}<br>%{{customdata[4]}}"
                              "%{customdata[5]}<extra></extra>"))
    if len(plotted):
        front = plotted[pareto_mask(plotted[y], plotted[x])].sort_values(x)
        traces.append(go.Scatter(
            x=front[x].tolist(), y=front[y].tolist(), mode="lines+markers", name="Pareto front",
            legendgroup="pareto", line={"dash": "dot", "color": "#444", "shape": "hv"},
            marker={"symbol": "circle-open", "size": 22, "color": "#444", "line": {"width": 1}},
            hoverinfo="skip"))
    return traces, {"sources": list(plotted[source]), "missing": missing, "frame": df,
                    "x_range": _x_range(plotted, x), "same": overlap_groups(plotted, x),
                    "noop": noop, "batches": sorted({int(b) for b in plotted.get(
                        "latency_batch", pd.Series(dtype=float)).dropna()})}


def _band_cols(x: str) -> tuple[str, str]:
    """The band columns of a latency column: latency_ms -> latency_low_ms, latency_high_ms;
    dash_latency_ms -> dash_latency_low_ms, dash_latency_high_ms."""
    stem = x[:-3] if x.endswith("_ms") else x
    return f"{stem}_low_ms", f"{stem}_high_ms"


def _band_errors(part, x: str):
    """The estimate's error band as asymmetric horizontal error bars (none when absent)."""
    low, high = _band_cols(x)
    if low not in part or high not in part:
        return None
    lo, hi, v = pd_float(part[low]), pd_float(part[high]), part[x]
    if not any(math.isfinite(a) or math.isfinite(b) for a, b in zip(lo, hi)):
        return None
    plus = [max(0.0, h - c) if math.isfinite(_num(h)) else 0.0 for h, c in zip(hi, v)]
    minus = [max(0.0, c - l) if math.isfinite(_num(l)) else 0.0 for l, c in zip(lo, v)]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
            "thickness": 1.2, "width": 3}


def _band_of(df, x: str):
    """(latency, low, high) per row; a missing band end is the latency itself."""
    low, high = _band_cols(x)
    v = pd_float(df[x])
    lo = pd_float(df[low]) if low in df else v
    hi = pd_float(df[high]) if high in df else v
    return [(a, b if math.isfinite(b) else a, c if math.isfinite(c) else a)
            for a, b, c in zip(v, lo, hi)]


def _x_range(plotted, x: str):
    """A latency axis that does not exaggerate differences smaller than the band: from 0 to
    a little past the highest band end."""
    if not len(plotted):
        return None
    top = max(max(v, h) for v, _, h in _band_of(plotted, x))
    return [0, top * 1.1] if math.isfinite(top) and top > 0 else None


def overlap_groups(plotted, x: str = "latency_ms") -> list[list[str]]:
    """Names of the points whose latency bands overlap (chains of overlaps joined): latencies
    that cannot be told apart. Groups of two or more, in latency order."""
    if not len(plotted):
        return []
    pts = sorted(zip(_band_of(plotted, x), [str(n) for n in plotted["name"]]),
                 key=lambda p: p[0][1])
    groups, reach = [], -math.inf
    for (_, lo, hi), name in pts:
        if groups and lo <= reach:
            groups[-1].append(name)
            reach = max(reach, hi)
        else:
            groups.append([name])
            reach = hi
    return [g for g in groups if len(g) > 1]


def _same_note(fig, same) -> None:
    if not same:
        return
    text = "; ".join(", ".join(esc(n) for n in g[:6]) + (" ..." if len(g) > 6 else "")
                     for g in same[:3])
    fig.add_annotation(text=f"indistinguishable in L4 latency (bands overlap): {text}",
                       showarrow=False, xref="paper", yref="paper", x=0, y=1.0,
                       xanchor="left", yanchor="bottom", font={"size": 11, "color": "#555"})


def _row_facts(r) -> str:
    """Hover lines for what a row says about itself: collapse, layers at low precision,
    latency band and batch."""
    out = []
    if r.get("collapsed") is True:
        out.append(f"<br><b>COLLAPSED</b>: {esc(r.get('collapse_note') or '')}")
    q, g = r.get("quantized_layers"), r.get("gemm_layers")
    if q is not None and g is not None and _num(g) == _num(g):
        out.append(f"<br>{_num(q):.0f} of {_num(g):.0f} GEMM/conv layers quantized")
    lo, hi = _num(r.get("latency_low_ms")), _num(r.get("latency_high_ms"))
    if math.isfinite(lo) and math.isfinite(hi):
        out.append(f"<br>estimate band {lo:.4g} to {hi:.4g} ms")
    b = _num(r.get("latency_batch"))
    if math.isfinite(b):
        out.append(f"<br>latency at batch {b:.0f}")
    return "".join(out)


def _merged_labels(plotted, x: str, y: str) -> dict:
    """Text labels for the points: points that would overlap on the chart (within 2% of the
    axis ranges) share one label ('a, b, c') on the first of them."""
    xs, ys = plotted[x].astype(float), plotted[y].astype(float)
    tx = 0.02 * ((xs.max() - xs.min()) or abs(xs.max()) or 1.0)
    ty = 0.04 * ((ys.max() - ys.min()) or abs(ys.max()) or 1.0)
    clusters: list[list] = []  # [x, y, [(index, name)]]
    for i, xv, yv, n in zip(plotted.index, xs, ys, plotted["name"]):
        for c in clusters:
            if abs(c[0] - xv) <= tx and abs(c[1] - yv) <= ty:
                c[2].append((i, esc(n)))
                break
        else:
            clusters.append([xv, yv, [(i, esc(n))]])
    out = {}
    for _, _, pts in clusters:
        names = [n for _, n in pts]
        out[pts[0][0]] = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    return out


def _text_side(v: float, xs) -> str:
    lo, hi = float(xs.min()), float(xs.max())
    f = (v - lo) / (hi - lo) if hi > lo else 0.5
    return "top right" if f < 0.2 else "top left" if f > 0.8 else "top center"


def _missing_note(fig, missing, x_label="an L4 latency", noop=()) -> None:
    lines = []
    if missing:
        shown = ", ".join(esc(m) for m in missing[:8]) + (" ..." if len(missing) > 8 else "")
        lines.append(f"not plotted, without {x_label}: {shown}")
    if noop:
        shown = ", ".join(esc(m) for m in list(noop)[:8]) + (" ..." if len(noop) > 8 else "")
        lines.append(f"not plotted, no-op (quantized no GEMM/conv, so no speed-up): {shown}")
    for i, text in enumerate(lines):
        fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0, y=0,
                           xanchor="left", yanchor="top", yshift=-62 - 16 * i,
                           font={"size": 11, "color": "#a15c00"})


def accuracy_latency(df, y: str = "metric_drop", *, x: str = "latency_ms",
                     source: str = "latency_source", batch=None, budget: float | None = None,
                     title: str | None = None, indistinguishable: bool = True):
    """Accuracy drift (`y`: 'metric_drop' or 'cos_drop') against L4 latency, one point per
    trial; the Pareto front drawn; estimated latencies open markers, measured filled; a
    dashed line at `budget` when given. `x`/`source` name the latency column and its source
    column (default: the batch-1 latency every sweep row carries)."""
    go = _go()
    traces, info = _accuracy_traces(df, y, x, source)
    fig = go.Figure(traces)
    _layout_accuracy(fig, info, y, batch, title)
    if indistinguishable:
        _same_note(fig, info["same"])
    if budget is not None and math.isfinite(_num(budget)):
        fig.add_hline(y=float(budget), line_dash="dash", line_color="#b00",
                      annotation_text="budget", annotation_position="top left")
    if not info["sources"]:
        fig.add_annotation(text="no trial has an L4 latency yet", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _layout_accuracy(fig, info, y, batch, title) -> None:
    if batch is None:  # the rows say at which batch their latency is
        bs = info.get("batches") or []
        batch = bs[0] if len(bs) == 1 else ("see latency_batch" if bs else None)
    fig.update_layout(
        title=title or "Accuracy drift vs L4 latency",
        xaxis_title=latency_axis_title(info["sources"], batch),
        yaxis_title=_ytitle(info["frame"], y), template="plotly_white",
        legend={"groupclick": "toggleitem"}, height=480,
        margin={"t": 80, "b": 110 if info["missing"] or info.get("noop") else 60})
    if info.get("x_range"):
        fig.update_xaxes(range=info["x_range"])
    fig.update_yaxes(exponentformat="e")  # 1e-05, never an SI 'µ' on a drift axis
    _missing_note(fig, info["missing"], noop=info.get("noop", ()))


def accuracy_latency_switchable(df, *, x: str = "latency_ms", source: str = "latency_source",
                                batch=None, title: str | None = None):
    """accuracy_latency with a dropdown between task-metric drop and cosine drift. The
    dropdown is plotly's own (updatemenus), so it works in a static HTML file."""
    go = _go()
    ys = ("metric_drop", "cos_drop")
    built = {y: _accuracy_traces(df, y, x, source) for y in ys}
    fig = go.Figure()
    owner = []
    for y in ys:
        for t in built[y][0]:
            t.visible = y == ys[0]
            fig.add_trace(t)
            owner.append(y)
    first = built[ys[0]][1]
    _layout_accuracy(fig, first, ys[0], batch, title)
    _same_note(fig, first["same"])
    if not first["sources"]:
        fig.add_annotation(text="no trial has an L4 latency yet", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    buttons = [{"label": Y_LABELS[y], "method": "update",
                "args": [{"visible": [o == y for o in owner]},
                         {"yaxis.title.text": _ytitle(built[y][1]["frame"], y)}]}
               for y in ys]
    fig.update_layout(updatemenus=[_menu(buttons)])
    return fig


# ------------------------------------------------------------------ per layer

def _layers_frame(layers):
    import pandas as pd

    if isinstance(layers, dict):
        layers = layers.get("layers") or []
    return pd.DataFrame(layers if layers is not None else [])


def sensitivity_bars(layers, top: int = 20, title: str | None = None):
    """Per-layer sensitivity (SensitivityResult.layers, its to_dict(), or a DataFrame): the
    share of the total drift each layer explains when only it is quantized, and (dropdown)
    how much accuracy keeping it in high precision recovers."""
    go = _go()
    df = _layers_frame(layers)
    fig = go.Figure()
    value = next((c for c in ("share", "share_task", "share_cosine") if c in df), None)
    if not len(df) or "layer" not in df or value is None:
        fig.add_annotation(text="no per-layer sensitivity data", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_layout(title=title or "Per-layer sensitivity", template="plotly_white")
        return fig
    df = df.sort_values(value, ascending=False).head(top).reset_index(drop=True)
    names = [esc(n) for n in df["layer"]]
    extra = [c for c in ("only_drop", "only_cos_mean", "only_sqnr_db", "share_task",
                         "share_drift", "all_but_drop", "recovery", "rank") if c in df]
    hover = ["<br>".join(f"{c} {_num(r[c]):.4g}" for c in extra) for _, r in df.iterrows()]
    series = [(value, "share of the total drift (only this layer quantized)")]
    if value == "share" and "share_task" in df and "share_drift" in df:
        series[0] = (value, "rank score: larger of the task-metric and the output-noise share")
        series += [("share_task", "share of the task-metric drop (only this layer quantized)"),
                   ("share_drift", "share of the output noise power (only this layer quantized)")]
    if "recovery" in df:
        series.append(("recovery", "metric recovered by keeping only this layer in high precision"))
    for i, (col, label) in enumerate(series):
        fig.add_trace(go.Bar(x=pd_float(df[col]), y=names, orientation="h", name=label,
                             visible=i == 0, customdata=hover, marker_color=PALETTE[i],
                             hovertemplate="<b>%{y}</b><br>%{x:.4g}<br>%{customdata}"
                                           "<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(title=title or "Per-layer sensitivity", xaxis_title=series[0][1],
                      template="plotly_white", height=max(320, 120 + 24 * len(df)),
                      margin={"l": 10, "t": 80}, showlegend=False)
    if len(series) > 1:
        fig.update_layout(updatemenus=[_menu([
            {"label": {"share": "share of drift", "share_task": "task-metric share",
                       "share_drift": "output-noise share", "recovery": "recovery"}.get(c, c),
             "method": "update",
             "args": [{"visible": [j == i for j in range(len(series))]},
                      {"xaxis.title.text": label}]} for i, (c, label) in enumerate(series)])])
    return fig


def pd_float(s) -> list:
    return [_num(v) for v in s]


def layer_latency(layers, top: int = 30, title: str | None = None, batch=None,
                  gpu: str = "L4"):
    """Per-layer ESTIMATED latency (Estimate.layers from l4opt.estimate), bars coloured by the
    precision each layer runs at."""
    go = _go()
    df = _layers_frame(layers)
    fig = go.Figure()
    if not len(df) or "latency_ms" not in df:
        fig.add_annotation(text="no per-layer latency", showarrow=False, xref="paper",
                           yref="paper", x=0.5, y=0.5)
        return fig
    total = float(df["latency_ms"].sum())
    if "kernel" in df:
        df = df[df["kernel"].astype(bool)]
    df = df.sort_values("latency_ms", ascending=False).head(top)
    prec = df["precision"] if "precision" in df else ["?"] * len(df)
    df = df.assign(precision=list(prec))
    for p in dict.fromkeys(df["precision"]):
        part = df[df["precision"] == p]
        fig.add_trace(go.Bar(
            x=pd_float(part["latency_ms"]), y=[esc(n) for n in part["layer"]], orientation="h",
            name=esc(p), marker_color=PRECISION_COLORS.get(str(p), "#999"),
            customdata=[esc(o) for o in part.get("op_type", [""] * len(part))],
            hovertemplate="<b>%{y}</b> (%{customdata})<br>%{x:.4g} ms, ESTIMATED<extra></extra>"))
    b = f", batch {batch}" if batch is not None else ""
    fig.update_yaxes(autorange="reversed", type="category",
                     categoryorder="array", categoryarray=[esc(n) for n in df["layer"]])
    fig.update_layout(
        title=title or f"Per-layer {esc(gpu)} latency, ESTIMATED{b}: {total:.4g} ms in all",
        xaxis_title=f"{esc(gpu)} latency (ms, estimated)", template="plotly_white",
        barmode="stack", legend_title_text="precision", height=max(300, 60 + 22 * len(df)),
        margin={"l": 10})
    return fig


# ------------------------------------------------------------------ mixed precision

FORMAT_ORDER = ("int8", "fp8", "fp16")


def precision_map(layers, title: str | None = None, gpu: str = "L4", batch=None,
                  sensitivity: str = "sensitivity"):
    """The chosen per-layer precision of a network: one bar per layer in graph order, its
    height the layer's ESTIMATED L4 time, its colour the format (INT8 / FP8 / FP16), and a
    line (right axis, log) with each layer's sensitivity (local relative noise power when
    quantized in the recipe's format). `layers`: SearchResult.layer_map, its DataFrame, or a
    saved search JSON ({"layer_map": [...]}); columns layer, format, and optionally
    sensitivity, est_ms, op_type, kind, order."""
    import pandas as pd

    go = _go()
    if isinstance(layers, dict):
        layers = layers.get("layer_map") or layers.get("layers") or []
    df = pd.DataFrame(layers if layers is not None else [])
    fig = go.Figure()
    if not len(df) or "layer" not in df or "format" not in df:
        fig.add_annotation(text="no per-layer precision map", showarrow=False, xref="paper",
                           yref="paper", x=0.5, y=0.5)
        fig.update_layout(title=title or "Per-layer precision", template="plotly_white")
        return fig
    if "order" in df:
        df = df.sort_values("order", kind="stable")
    df = df.reset_index(drop=True)
    labels = [f"{i + 1}. {esc(n)}" for i, n in enumerate(df["layer"])]
    est = [_num(v) for v in df.get("est_ms", [math.nan] * len(df))]
    sens = [_num(v) for v in df.get(sensitivity, [math.nan] * len(df))]
    ops = [esc(o) for o in df.get("op_type", [""] * len(df))]
    no_est = [str(n) for n, v in zip(df["layer"], est) if not math.isfinite(v)]
    fmts = [str(f) for f in df["format"]]
    kinds = [str(k) for k in df.get("kind", ["gemm"] * len(df))]
    for fmt in [f for f in FORMAT_ORDER if f in fmts] + sorted(set(fmts) - set(FORMAT_ORDER)):
        idx = [i for i, f in enumerate(fmts) if f == fmt]
        # GEMM/conv layers and the other options (residual adds, norms) counted apart, as the
        # title counts them
        n_gemm = sum(kinds[i] == "gemm" for i in idx)
        count = f"{n_gemm} GEMM/conv" + (f" + {len(idx) - n_gemm} other" if len(idx) > n_gemm
                                         else "")
        fig.add_trace(go.Bar(
            x=[labels[i] for i in idx], y=[est[i] if math.isfinite(est[i]) else 0 for i in idx],
            name=f"{esc(fmt).upper()} ({count})",
            marker_color=PRECISION_COLORS.get(fmt, "#999"),
            customdata=[[ops[i], esc(fmt), f"{sens[i]:.3g}" if math.isfinite(sens[i]) else "–",
                         f"{est[i]:.4g} ms" if math.isfinite(est[i]) else "no estimate"]
                        for i in idx],
            hovertemplate="<b>%{x}</b> (%{customdata[0]})<br>format %{customdata[1]}<br>"
                          "sensitivity %{customdata[2]}<br>est. L4 time %{customdata[3]}"
                          "<extra></extra>"))
    if any(math.isfinite(v) and v > 0 for v in sens):
        fig.add_trace(go.Scatter(
            x=labels, y=[v if math.isfinite(v) and v > 0 else None for v in sens],
            mode="lines+markers", name="sensitivity (right axis)", yaxis="y2",
            line={"color": "#444", "width": 1}, marker={"size": 5, "color": "#444"},
            hovertemplate="<b>%{x}</b><br>sensitivity %{y:.3g}<extra></extra>"))
    b = f", batch {batch}" if batch is not None else ""
    total = sum(v for v in est if math.isfinite(v))
    q8 = sum(f in ("int8", "fp8") for f, k in zip(fmts, kinds) if k == "gemm")
    ng = sum(k == "gemm" for k in kinds)
    fig.update_layout(
        title=title or (f"Per-layer precision: {q8} of {ng} GEMM/conv layers at 8 bits; "
                        f"est. {esc(gpu)} time of these layers {total:.4g} ms{b} (ESTIMATED)"),
        xaxis={"title": "layers in graph order", "type": "category", "tickangle": -60,
               "categoryorder": "array", "categoryarray": labels,
               "showticklabels": len(labels) <= 80},
        yaxis={"title": f"{esc(gpu)} time per layer (ms, estimated{b})"},
        yaxis2={"title": "sensitivity (relative noise power, log)", "overlaying": "y",
                "side": "right", "type": "log", "showgrid": False},
        barmode="overlay", template="plotly_white", height=520, bargap=0.15,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        margin={"t": 100, "b": 180})
    if no_est:
        fig.add_annotation(text=f"{len(no_est)} layer(s) without an estimate drawn at 0: "
                                + ", ".join(esc(n) for n in no_est[:5]), showarrow=False,
                           xref="paper", yref="paper", x=0, y=0, xanchor="left",
                           yanchor="top", yshift=-150, font={"size": 11, "color": "#a15c00"})
    return fig


def search_front(doc, title: str | None = None):
    """A search's candidates (saved search JSON, or a list of candidate rows): accuracy drift
    against ESTIMATED L4 latency with the estimate's error band as error bars, the Pareto
    front, the budget and the chosen candidate starred."""
    import pandas as pd

    go = _go()
    doc = doc if isinstance(doc, dict) else {"candidate_rows": list(doc or [])}
    rows = pd.DataFrame(doc.get("candidate_rows") or [])
    budget = doc.get("budget") or {}
    y = "cos_drop" if budget.get("min_cosine") is not None else "metric_drop"
    line = (1 - budget["min_cosine"]) if budget.get("min_cosine") is not None else \
        budget.get("max_drop") if not budget.get("relative") else None
    fig = accuracy_latency(rows, y=y, budget=line, title=title or "Search candidates: "
                           "accuracy drift vs estimated L4 latency (error bars: estimate band)",
                           indistinguishable=False)  # the search names its own look-alikes
    chosen = doc.get("chosen")
    if chosen is not None and len(rows) and "name" in rows:
        c = trials_frame(rows)
        c = c[(c["name"] == chosen) & c["latency_ms"].notna()]
        if "strategy" in c:
            full = c[c["strategy"] != "bisect-screen"]
            c = full if len(full) else c
        if len(c):
            r = c.iloc[0]
            fig.add_trace(go.Scatter(
                x=[float(r["latency_ms"])], y=[float(r[y])], mode="markers", name="chosen",
                marker={"symbol": "star", "size": 18, "color": "#d62728"},
                hovertemplate=f"<b>chosen: {esc(chosen)}</b><br>%{{x:.4g}} ms<extra></extra>"))
    same = doc.get("indistinguishable") or []
    if same:
        fig.add_annotation(text="latency not distinguishable from the chosen one (bands "
                                "overlap): " + ", ".join(esc(n) for n in same[:6])
                                + (" ..." if len(same) > 6 else ""),
                           showarrow=False, xref="paper", yref="paper", x=0, y=1.0,
                           xanchor="left", yanchor="bottom", font={"size": 11})
    return fig


# ------------------------------------------------------------------ engine lint

def lint_shares(lint: dict, title: str | None = None):
    """Where a TensorRT engine's time goes (LintReport.to_dict()): share of the profiled time
    per precision, and (dropdown) per layer type. Without a profile: layer counts."""
    go = _go()
    lint = lint or {}
    timed = bool(lint.get("has_profile"))
    tables = [("precision", lint.get("by_precision") or []),
              ("layer_type", lint.get("by_layer_type") or [])]
    fig = go.Figure()
    for i, (key, rows) in enumerate(tables):
        xs = [esc(r.get(key)) for r in rows]
        if timed:
            ys = [100 * (_num(r.get("share")) if r.get("share") is not None else math.nan)
                  for r in rows]
            custom = [f"{r.get('layers')} layers, {_num(r.get('time_ms')):.4g} ms" for r in rows]
        else:
            ys = [r.get("layers") for r in rows]
            custom = ["no profile: time unknown" for _ in rows]
        fig.add_trace(go.Bar(
            x=xs, y=ys, visible=i == 0, name=key.replace("_", " "),
            marker_color=[PRECISION_COLORS.get(str(r.get(key)), PALETTE[0]) for r in rows]
            if key == "precision" else PALETTE[3],
            customdata=custom, hovertemplate="<b>%{x}</b><br>%{y:.3g}"
            + ("% of engine time" if timed else " layers") + "<br>%{customdata}<extra></extra>"))
    ylab = "share of profiled engine time (%)" if timed else "layers (no profile: times unknown)"
    total = lint.get("total_ms")
    sub = f": {total:.4g} ms per inference (profiled)" if timed and total else ""
    fig.update_layout(
        title=title or f"Engine time by precision{sub}", yaxis_title=ylab,
        template="plotly_white", showlegend=False, height=420,
        margin={"t": 80}, updatemenus=[_menu([
            {"label": f"by {key.replace('_', ' ')}", "method": "update",
             "args": [{"visible": [j == i for j in range(len(tables))]}]}
            for i, (key, _) in enumerate(tables)])])
    return fig


# ------------------------------------------------------------------ batch curves

def curve_points(curve) -> list[dict]:
    """Normalise a measured batch sweep: rows from `l4opt import` ({batch, latency_ms_median,
    throughput_samples_s}) or from l4opt.trt.batch_sweep ({batch, gpu_compute_ms: {median}}).
    No sweep (None, or the NaN a DataFrame puts where another row has one) is no points."""
    out = []
    for c in curve if isinstance(curve, (list, tuple)) else []:
        if not isinstance(c, dict):
            continue
        b = _num(c.get("batch"))
        lat = _num(c.get("latency_ms_median", c.get("latency_ms")))
        if not math.isfinite(lat) and isinstance(c.get("gpu_compute_ms"), dict):
            lat = _num(c["gpu_compute_ms"].get("median"))
        thr = _num(c.get("throughput_samples_s"))
        if not math.isfinite(thr) and math.isfinite(lat) and lat > 0 and math.isfinite(b):
            thr = b * 1000.0 / lat
        if math.isfinite(b) and math.isfinite(lat):
            out.append({"batch": int(b), "latency_ms": lat, "throughput_samples_s": thr})
    return sorted(out, key=lambda p: p["batch"])


def has_batch_curves(df) -> bool:
    d = trials_frame(df)
    return "batch_sweep" in d and any(curve_points(c) for c in d["batch_sweep"]
                                      if isinstance(c, list))


def batch_curves(df, title: str | None = None):
    """Median latency (and, dropdown, throughput) against batch size, for every trial with a
    measured batch sweep. Rows without one are named in a note, never extrapolated."""
    go = _go()
    d = trials_frame(df)
    fig = go.Figure()
    if "batch_sweep" not in d:
        d["batch_sweep"] = None
    curves, sources, missing = [], set(), []
    for i, r in d.iterrows():
        pts = curve_points(r["batch_sweep"]) if isinstance(r["batch_sweep"], list) else []
        if pts:
            curves.append((r, pts))
            sources.add(r.get("latency_source"))
        elif r["group"] == "sweep":
            missing.append(str(r["name"]))
    for metric_i, (col, label) in enumerate((("latency_ms", "median latency (ms, measured)"),
                                             ("throughput_samples_s", "samples/s (measured)"))):
        for ci, (r, pts) in enumerate(curves):
            fig.add_trace(go.Scatter(
                x=[p["batch"] for p in pts], y=[p[col] for p in pts], mode="lines+markers",
                name=f"{esc(r['name'])} ({esc(source_label(r.get('latency_source')))})",
                visible=metric_i == 0, showlegend=True, legendgroup=str(ci),
                line={"color": PALETTE[ci % len(PALETTE)]},
                hovertemplate="batch %{x}<br>%{y:.4g}<extra>" + esc(r["name"]) + "</extra>"))
    n = len(curves)
    where = ", ".join(sorted(source_label(s) for s in sources if s)) or "measured"
    fig.update_layout(
        title=title or f"Latency and throughput vs batch size ({esc(where)})",
        xaxis={"title": "batch size", "type": "log", "dtick": math.log10(2)},
        yaxis_title="median latency (ms, measured)", template="plotly_white", height=440,
        margin={"t": 80, "b": 110},
        updatemenus=[_menu([
            {"label": lab, "method": "update",
             "args": [{"visible": [k // max(n, 1) == i for k in range(2 * n)]},
                      {"yaxis.title.text": lab}]}
            for i, lab in enumerate(("median latency (ms, measured)", "samples/s (measured)"))])])
    if not curves:
        fig.add_annotation(text="no measured batch sweep", showarrow=False, xref="paper",
                           yref="paper", x=0.5, y=0.5)
    elif missing:
        _missing_note(fig, missing, "a measured batch sweep")
    return fig
