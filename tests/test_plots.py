"""l4opt.plots: DataFrame in, plotly Figure out. Real sweep rows (the shared report run) plus
hand-built frames for the optional columns (measured latencies, batch sweeps, missing ones)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from test_report import XSS_RECIPE, XSS_WORKLOAD, report_run  # noqa: F401 (fixture)

pytest.importorskip("plotly", reason="the notebook extra is not installed")

from l4opt import plots  # noqa: E402


@pytest.fixture(scope="module")
def rows(report_run):  # noqa: F811
    from l4opt.store import Store

    store = Store(report_run)
    try:
        return store.rows()
    finally:
        store.close()


def _digits_sweep(rows):
    return pd.DataFrame([r for r in rows if r.get("workload") == "digits-cnn"
                         and not r.get("strategy")])


def test_pareto_mask():
    assert list(plots.pareto_mask([0.0, 0.1, 0.05, 0.2], [2.0, 1.0, 1.5, 1.5])) == \
        [True, True, True, False]
    assert list(plots.pareto_mask([0.0, 0.0, np.nan], [1.0, np.nan, 0.5])) == [True, False, False]
    assert list(plots.pareto_mask([0.1, 0.1], [1.0, 1.0])) == [True, True]  # ties both stay


def test_trials_frame_keeps_finished_trials_and_derives_drops(rows):
    df = plots.trials_frame(pd.DataFrame(rows))
    raw = pd.DataFrame(rows)
    assert "artifact" in set(raw["kind"])  # the store holds non-trial rows ...
    assert len(df) == ((raw["kind"] == "trial") & (raw["status"] == "ok")).sum()  # ... dropped
    assert set(df["group"]) == {"sweep", "greedy"}
    hand = plots.trials_frame([
        {"recipe": "a", "metric_delta": -0.1, "metric_higher_is_better": True, "cos_mean": 0.9},
        {"recipe": "b", "metric_delta": -0.1, "metric_higher_is_better": False},
        {"recipe": "c", "status": "failed"}])
    assert list(hand["metric_drop"]) == [0.1, -0.1]
    assert hand["cos_drop"].iloc[0] == pytest.approx(0.1) and np.isnan(hand["cos_drop"].iloc[1])
    assert plots.trials_frame(None).empty and plots.trials_frame([]).empty


def test_estimated_latencies_are_open_markers_and_the_axis_says_so(rows):
    df = pd.DataFrame([dict(r, latency_source=r.get("latency_estimate_source",
                                                   r.get("latency_source")),
                            latency_ms=r.get("latency_estimate_ms", r.get("latency_ms")))
                       for r in rows])  # every row as the sweep estimated it
    fig = plots.accuracy_latency(df)
    assert fig.layout.xaxis.title.text == "L4 latency (ms, estimated), batch 1"
    markers = [t for t in fig.data if t.name != "Pareto front"]
    assert markers and all(t.marker.symbol == "circle-open" for t in markers)
    assert sum(len(t.x) for t in markers) == len(plots.trials_frame(df))
    assert {t.name for t in markers} >= {"sweep: estimated L4 latency",
                                         "greedy: estimated L4 latency"}
    assert "top1 drop" in fig.layout.yaxis.title.text


def test_measured_and_estimated_are_told_apart(rows):
    fig = plots.accuracy_latency(_digits_sweep(rows))
    by_name = {t.name: t for t in fig.data}
    assert by_name["measured L4 latency"].marker.symbol == "circle"
    assert by_name["estimated L4 latency"].marker.symbol == "circle-open"
    assert len(by_name["measured L4 latency"].x) == 1
    assert "measured = filled" in fig.layout.xaxis.title.text
    # measured on another GPU is not called an L4 latency
    other = pd.DataFrame([{"recipe": "x", "metric_drop": 0.0, "latency_ms": 1.0,
                           "latency_source": "measured-titan-rtx"}])
    t = plots.accuracy_latency(other)
    assert t.layout.xaxis.title.text == "GPU latency (ms, measured on titan-rtx), batch 1"
    assert t.data[0].name == "measured titan-rtx latency"


def test_pareto_front_is_drawn_through_the_undominated_trials(rows):
    df = _digits_sweep(rows)
    fig = plots.accuracy_latency(df)
    front = next(t for t in fig.data if t.name == "Pareto front")
    d = plots.trials_frame(df)
    want = d[plots.pareto_mask(d["metric_drop"], d["latency_ms"])]
    assert sorted(front.x) == sorted(want["latency_ms"])
    assert list(front.x) == sorted(front.x)  # drawn left to right
    assert front.line.shape == "hv" and front.hoverinfo == "skip"


def test_rows_without_latency_are_left_out_and_named_never_invented():
    df = pd.DataFrame([
        {"recipe": "has", "status": "ok", "metric_drop": 0.0, "latency_ms": 0.5,
         "latency_source": "estimated-l4"},
        {"recipe": "cpu-only", "status": "ok", "metric_drop": 0.1, "latency_ms": 12.0},  # no source
        {"recipe": "none", "status": "ok", "metric_drop": 0.2}])
    fig = plots.accuracy_latency(df)
    xs = [x for t in fig.data if t.name != "Pareto front" for x in t.x]
    assert xs == [0.5]
    note = fig.layout.annotations[0].text
    assert note.startswith("not plotted, without an L4 latency: ")
    assert "cpu-only" in note and "none" in note
    empty = plots.accuracy_latency(df.drop(columns=["latency_ms", "latency_source"]))
    assert [t for t in empty.data] == []
    assert any("no trial has an L4 latency" in a.text for a in empty.layout.annotations)


def test_user_strings_are_escaped_in_figures(rows):
    fig = plots.accuracy_latency(pd.DataFrame(rows))
    dumped = fig.to_json()
    assert XSS_RECIPE not in dumped and XSS_WORKLOAD not in dumped
    labels = [c[0] for t in fig.data if t.customdata is not None for c in t.customdata]
    assert any("&lt;/script&gt;&lt;script&gt;alert(2)" in s for s in labels)
    bars = plots.sensitivity_bars([{"layer": "<b>x</b>", "share": 1.0}])
    assert list(bars.data[0].y) == ["&lt;b&gt;x&lt;/b&gt;"]


def test_switchable_dropdown_toggles_whole_trace_sets(rows):
    fig = plots.accuracy_latency_switchable(_digits_sweep(rows))
    menu = fig.layout.updatemenus[0]
    assert [b.label for b in menu.buttons] == ["task metric drop", "cosine drift"]
    first, second = (b.args[0]["visible"] for b in menu.buttons)
    assert len(first) == len(second) == len(fig.data)
    assert [t.visible for t in fig.data] == first and not any(a and b for a, b in
                                                               zip(first, second))
    assert "cosine" in menu.buttons[1].args[1]["yaxis.title.text"]


def test_budget_line_and_stored_search_pareto_in_hover(rows):
    search = pd.DataFrame([r for r in rows if r.get("strategy")])
    fig = plots.accuracy_latency(search, budget=0.01)
    assert any(s.type == "line" and s.y0 == 0.01 for s in fig.layout.shapes)
    hovers = [c[4] for t in fig.data if t.customdata is not None for c in t.customdata]
    assert any(h.startswith("search Pareto: ") for h in hovers)


def test_sensitivity_bars_from_a_real_result_and_tolerant_input(report_run):  # noqa: F811
    data = json.loads((report_run / "sensitivity" / "digits-cnn-int8-max.json").read_text())
    fig = plots.sensitivity_bars(data)  # the whole to_dict() works, as does its layers list
    assert len(fig.data) == 2 and fig.data[0].visible and not fig.data[1].visible
    assert set(fig.data[0].y) == {x["layer"] for x in data["layers"]}
    assert list(fig.data[0].x) == sorted(fig.data[0].x, reverse=True)
    only_task = plots.sensitivity_bars(pd.DataFrame({"layer": ["a", "b"], "share_task": [0.2, 0.8]}))
    assert list(only_task.data[0].y) == ["b", "a"] and len(only_task.data) == 1
    assert plots.sensitivity_bars([]).layout.annotations[0].text == "no per-layer sensitivity data"
    assert plots.sensitivity_bars([{"name": "no layer column"}]).data == ()


def test_layer_latency_from_a_real_estimate(report_run, rows):  # noqa: F811
    from l4opt.estimate import estimate_onnx

    row = next(r for r in rows if r.get("recipe") == "fp8")
    est = estimate_onnx(str(report_run / row["onnx_path"]), "L4", batch=8,
                        dynamic_dims={"batch": 8})
    fig = plots.layer_latency(est.layers, batch=8)
    assert {t.name for t in fig.data} == set(est.layers.loc[est.layers["kernel"], "precision"])
    assert "ESTIMATED" in fig.layout.title.text and "batch 8" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "L4 latency (ms, estimated)"
    assert sum(sum(t.x) for t in fig.data) == pytest.approx(est.total_ms)


def test_lint_shares_with_and_without_a_profile(trtexec_dir):
    from l4opt import engine_report

    g = trtexec_dir / "mobilenet.qat.onnx.engine.graph.json"
    layers = engine_report.read_layer_info(g)
    timed = engine_report.lint(layers, engine_report.read_profile(
        str(g).replace(".graph.json", ".profile.json"))).to_dict()
    fig = plots.lint_shares(timed)
    assert set(fig.data[0].x) == {"int8", "fp16", "fp32"}
    assert sum(fig.data[0].y) == pytest.approx(100.0)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["by precision",
                                                                    "by layer type"]
    untimed = plots.lint_shares(engine_report.lint(layers, None).to_dict())
    assert untimed.layout.yaxis.title.text.startswith("layers (no profile")
    assert sum(untimed.data[0].y) == len(layers)


def test_batch_curves_read_both_measured_formats():
    bundle_format = [{"batch": 8, "latency_ms_median": 0.4, "throughput_samples_s": 20000.0},
                     {"batch": 1, "latency_ms_median": 0.1, "throughput_samples_s": 10000.0}]
    trt_format = [{"batch": 1, "gpu_compute_ms": {"median": 0.2}},  # l4opt.trt.batch_sweep
                  {"batch": 4, "gpu_compute_ms": {"median": 0.4}, "throughput_samples_s": 1e4}]
    df = pd.DataFrame([
        {"recipe": "a", "status": "ok", "latency_source": "measured-l4", "batch_sweep": bundle_format},
        {"recipe": "b", "status": "ok", "latency_source": "measured-l4", "batch_sweep": trt_format},
        {"recipe": "c", "status": "ok", "latency_source": "estimated-l4", "batch_sweep": None}])
    assert plots.has_batch_curves(df)
    fig = plots.batch_curves(df)
    lat = [t for t in fig.data if t.visible]
    assert [list(t.x) for t in lat] == [[1, 8], [1, 4]]
    assert [list(t.y) for t in lat] == [[0.1, 0.4], [0.2, 0.4]]
    thr = [t for t in fig.data if not t.visible]
    assert list(thr[1].y) == [pytest.approx(5000.0), 1e4]  # derived from batch / latency
    assert "c" in fig.layout.annotations[0].text  # named, not drawn
    assert not plots.has_batch_curves(df.iloc[2:])
    assert plots.batch_curves(df.iloc[2:]).layout.annotations[0].text == "no measured batch sweep"


def test_importing_the_show_modules_stays_light():
    code = ("import sys, json, l4opt.plots, l4opt.widgets, l4opt.report, l4opt.execute; "
            "print(json.dumps([m for m in ('plotly', 'ipywidgets', 'papermill', 'torch', "
            "'nbclient') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
