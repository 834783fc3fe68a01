"""DataFrame in, plotly Figure out: pure functions shared by widgets, notebooks and reports.

Estimated latencies are drawn with open markers and say "estimated" in the legend and axis;
measured ones are filled. Rows without any latency are left out of latency plots, never given
an invented value.
"""
from __future__ import annotations

import numpy as np

from . import env

MEASURED, ESTIMATED = "measured", "estimated"
Y_TITLES = {"metric_drop": "task metric drop (lower is better)",
            "cos_drop": "1 - mean cosine to unquantized (lower is better)"}


def _go():
    return env.require("plotly.graph_objects", "plotting")


def pareto_mask(drop, latency) -> np.ndarray:
    """True where no other point has both lower-or-equal drop and latency (one strictly)."""
    d, l = np.asarray(drop, float), np.asarray(latency, float)
    mask = np.ones(len(d), bool)
    for i in range(len(d)):
        mask[i] = not np.any((d <= d[i]) & (l <= l[i]) & ((d < d[i]) | (l < l[i])))
    return mask


def trials_frame(df):
    """The rows a latency plot can use, with the columns plots need."""
    import pandas as pd

    if df is None or len(df) == 0:
        return pd.DataFrame()
    df = df.copy()
    if "kind" in df:
        df = df[df["kind"].fillna("trial") == "trial"]
    if "status" in df:
        df = df[df["status"] == "ok"]
    for c in ("latency_ms", "metric_drop", "cos_mean", "latency_source"):
        if c not in df:
            df[c] = np.nan
    df["cos_drop"] = 1.0 - df["cos_mean"].astype(float)
    df["latency_kind"] = np.where(df["latency_source"].astype(str).str.startswith("measured"),
                                  MEASURED, ESTIMATED)
    df["name"] = df["recipe"] if "recipe" in df else df.index.astype(str)
    return df


def accuracy_latency(df, y: str = "metric_drop", title: str | None = None):
    """Accuracy drift against L4 latency, the Pareto front drawn, estimates marked."""
    go = _go()
    df = trials_frame(df)
    fig = go.Figure()
    has = df.dropna(subset=["latency_ms", y]) if len(df) else df
    for kind, symbol in ((MEASURED, "circle"), (ESTIMATED, "circle-open")):
        part = has[has["latency_kind"] == kind] if len(has) else has
        if len(part) == 0:
            continue
        fig.add_trace(go.Scatter(
            x=part["latency_ms"], y=part[y], mode="markers+text", text=part["name"],
            textposition="top center", name=f"{kind} L4 latency",
            marker={"symbol": symbol, "size": 12, "line": {"width": 2}},
            customdata=np.stack([part["name"], part["latency_source"].astype(str),
                                 part.get("key", part["name"]).astype(str)], axis=-1),
            hovertemplate="%{customdata[0]}<br>latency %{x:.4f} ms (%{customdata[1]})"
                          f"<br>{y} %{{y:.4g}}<extra></extra>"))
    if len(has):
        m = pareto_mask(has[y], has["latency_ms"])
        front = has[m].sort_values("latency_ms")
        fig.add_trace(go.Scatter(x=front["latency_ms"], y=front[y], mode="lines",
                                 name="Pareto front", line={"dash": "dot"}, hoverinfo="skip"))
    all_est = len(has) and (has["latency_kind"] == ESTIMATED).all()
    fig.update_layout(
        title=title or "Accuracy drift vs L4 latency",
        xaxis_title="L4 latency, batch 1 (ms, " + ("ESTIMATED" if all_est else
                                                     "measured where filled, estimated where open") + ")",
        yaxis_title=Y_TITLES.get(y, y),
        legend={"orientation": "h", "y": -0.2}, margin={"t": 60})
    if not len(has):
        fig.add_annotation(text="no trial has an L4 latency yet", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def accuracy_latency_switchable(df, title: str | None = None):
    """accuracy_latency with a dropdown between task-metric drop and cosine drift (works
    without a kernel: plotly's own updatemenus)."""
    figs = {y: accuracy_latency(df, y, title) for y in ("metric_drop", "cos_drop")}
    fig = figs["metric_drop"]
    if len(figs["cos_drop"].data) == len(fig.data) and len(fig.data):
        buttons = [{"label": label, "method": "update",
                    "args": [{"x": [list(t.x) if t.x is not None else [] for t in f.data],
                              "y": [list(t.y) if t.y is not None else [] for t in f.data]},
                             {"yaxis.title.text": Y_TITLES[y]}]}
                   for y, f, label in (("metric_drop", figs["metric_drop"], "task metric drop"),
                                       ("cos_drop", figs["cos_drop"], "cosine drift"))]
        fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.15,
                                        "xanchor": "right"}])
    return fig


def sensitivity_bars(layers, top: int = 25, title: str = "Per-layer sensitivity"):
    """Share of the drift each layer explains (only that layer quantized)."""
    import pandas as pd

    go = _go()
    df = pd.DataFrame(layers)
    fig = go.Figure()
    if len(df):
        df = df.sort_values("share", ascending=False).head(top)
        fig.add_trace(go.Bar(x=df["share"], y=df["layer"], orientation="h", name="share of drift",
                             hovertemplate="%{y}<br>share %{x:.3f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, xaxis_title="share of total drift", margin={"l": 220})
    return fig


def lint_shares(lint: dict, title: str = "Engine time by precision (measured profile)"):
    """Share of engine time per precision, from LintReport.to_dict()."""
    go = _go()
    rows = lint.get("by_precision") or []
    fig = go.Figure(go.Bar(x=[str(r["precision"]) for r in rows],
                           y=[r.get("time_ms") or 0 for r in rows], name="time (ms)"))
    fig.update_layout(title=title, yaxis_title="time per inference (ms)")
    return fig


def batch_curves(df, title: str = "Latency-throughput per recipe (measured)"):
    """Latency against throughput over batch sizes, for rows with a measured batch sweep."""
    go = _go()
    fig = go.Figure()
    df = trials_frame(df)
    for _, r in (df.iterrows() if len(df) else []):
        curve = r.get("batch_sweep")
        if isinstance(curve, list) and curve:
            fig.add_trace(go.Scatter(
                x=[c["throughput_samples_s"] for c in curve],
                y=[c["latency_ms_median"] for c in curve], mode="lines+markers",
                name=str(r["name"]), text=[f"batch {c['batch']}" for c in curve]))
    fig.update_layout(title=title, xaxis_title="samples/s", yaxis_title="median latency (ms)")
    return fig
