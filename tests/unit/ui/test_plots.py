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

from l4opt.ui import plots  # noqa: E402


@pytest.fixture(scope="module")
def rows(report_run):  # noqa: F811
    from l4opt.results.store import Store

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
    assert set(raw["kind"]) - {"trial"}  # the store holds non-trial rows (exports) ...
    assert len(df) == ((raw["kind"] == "trial") &
                       raw["status"].isin(["ok", "collapsed"])).sum()  # ... dropped
    assert set(df["group"]) == {"sweep", "greedy"}
    hand = plots.trials_frame([
        {"recipe": "a", "metric_delta": -0.1, "metric_higher_is_better": True, "cos_mean": 0.9},
        {"recipe": "b", "metric_delta": -0.1, "metric_higher_is_better": False},
        {"recipe": "c", "status": "failed"}])
    assert list(hand["metric_drop"]) == [0.1, -0.1]
    assert hand["cos_drop"].iloc[0] == pytest.approx(0.1) and np.isnan(hand["cos_drop"].iloc[1])
    assert plots.trials_frame(None).empty and plots.trials_frame([]).empty


def test_trials_frame_is_the_tables_frame_of_ok_trials(rows):
    """plots.trials_frame is l4opt.tables.trial_frame (every status) kept to ok trial rows, with
    the same derived columns, plus the plot's group."""
    from l4opt.ui.tables import trial_frame

    everything = trial_frame([r for r in rows if r.get("kind", "trial") == "trial"])
    ok = everything[everything["status"].isna() | (everything["status"] == "ok")]
    df = plots.trials_frame(rows)
    assert len(df) == len(ok) > 0
    assert list(df["key"]) == list(ok["key"]) and list(df["name"]) == list(ok["name"])
    for c in ("metric_drop", "cos_drop"):
        np.testing.assert_array_equal(df[c].to_numpy(float), ok[c].to_numpy(float))
    assert not (np.signbit(df["metric_drop"]) & (df["metric_drop"] == 0)).any()  # never -0
    assert "group" in df and "group" not in everything


def test_estimated_latencies_are_open_markers_and_the_axis_says_so(rows):
    df = pd.DataFrame([dict(r, latency_source=r.get("est_latency_source",
                                                   r.get("latency_source")),
                            latency_ms=r.get("est_latency_ms", r.get("latency_ms")),
                            latency_batch=64)
                       for r in rows])  # every row as the sweep estimated it
    fig = plots.accuracy_latency(df)
    assert fig.layout.xaxis.title.text == "L4 latency (ms, estimated), batch 64"
    mixed = df.assign(latency_batch=[64] * (len(df) - 1) + [1])  # never one batch claimed
    assert plots.accuracy_latency(mixed).layout.xaxis.title.text.endswith("see latency_batch")
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
    assert t.layout.xaxis.title.text == "GPU latency (ms, measured on titan-rtx)"  # batch unknown
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
    from l4opt.spec.names import safe_filename

    data = json.loads((report_run / "sensitivity" / safe_filename(
        "digits-cnn", "int8-max", suffix=".json")).read_text())
    fig = plots.sensitivity_bars(data)  # the whole to_dict() works, as does its layers list
    # rank score, task-metric share, output-noise share, recovery: both drift measures shown
    assert len(fig.data) == 4 and fig.data[0].visible and not any(t.visible for t in fig.data[1:])
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels == ["share of drift", "task-metric share", "output-noise share", "recovery"]
    assert set(fig.data[0].y) == {x["layer"] for x in data["layers"]}
    assert list(fig.data[0].x) == sorted(fig.data[0].x, reverse=True)
    only_task = plots.sensitivity_bars(pd.DataFrame({"layer": ["a", "b"], "share_task": [0.2, 0.8]}))
    assert list(only_task.data[0].y) == ["b", "a"] and len(only_task.data) == 1
    assert plots.sensitivity_bars([]).layout.annotations[0].text == "no per-layer sensitivity data"
    assert plots.sensitivity_bars([{"name": "no layer column"}]).data == ()


def test_layer_latency_from_a_real_estimate(report_run, rows):  # noqa: F811
    from l4opt.latency.estimate import estimate_onnx

    row = next(r for r in rows if r.get("recipe") == "fp8")
    est = estimate_onnx(str(report_run / row["onnx_path"]), "L4", batch=8,
                        dynamic_dims={"batch": 8})
    fig = plots.layer_latency(est.layers, batch=8)
    assert {t.name for t in fig.data} == set(est.layers.loc[est.layers["kernel"], "precision"])
    assert "ESTIMATED" in fig.layout.title.text and "batch 8" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "L4 latency (ms, estimated)"
    assert sum(sum(t.x) for t in fig.data) == pytest.approx(est.total_ms)


def test_lint_shares_with_and_without_a_profile(trtexec_dir):
    from l4opt.latency import trtexec as engine_report

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
    code = ("import sys, json, l4opt.ui.plots, l4opt.ui.widgets, l4opt.ui.report, l4opt.ui.playbooks; "
            "print(json.dumps([m for m in ('plotly', 'ipywidgets', 'papermill', 'torch', "
            "'nbclient') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_row_facts_noop_zero_latency_bands_and_collapse():
    """The contract's row facts: a no-op is not a free speed-up, a 0/NaN latency is no result,
    estimate bands are error bars, a collapsed row says so."""
    df = pd.DataFrame([
        {"recipe": "ok", "status": "ok", "metric_drop": 0.0, "cos_mean": 0.999,
         "latency_ms": 0.5, "latency_low_ms": 0.3, "latency_high_ms": 0.9, "latency_batch": 32,
         "latency_source": "estimated-l4", "quantized_layers": 40, "gemm_layers": 48},
        {"recipe": "noop", "status": "no-op", "metric_drop": 0.0, "latency_ms": 0.1,
         "latency_source": "estimated-l4", "quantized_layers": 0, "gemm_layers": 48},
        {"recipe": "zero", "status": "ok", "metric_drop": 0.0, "latency_ms": 0.0,
         "latency_source": "estimated-l4"},
        {"recipe": "nan", "status": "ok", "metric_drop": 0.0, "latency_ms": float("nan"),
         "latency_source": "estimated-l4"},
        {"recipe": "broke", "status": "ok", "metric_drop": 0.6, "cos_mean": 0.4,
         "latency_ms": 0.4, "latency_batch": 32, "latency_source": "estimated-l4",
         "collapsed": True, "collapse_note": "entropy <clipped> the outliers"}])
    fig = plots.accuracy_latency(df)
    pts = [t for t in fig.data if t.name != "Pareto front"]
    assert sorted(x for t in pts for x in t.x) == [0.4, 0.5]  # no 0, no NaN, no no-op
    notes = " ".join(a.text for a in fig.layout.annotations)
    assert "zero" in notes and "nan" in notes and "no-op" in notes and "noop" in notes
    t = pts[0]
    i = list(t.x).index(0.5)
    assert t.error_x.array[i] == pytest.approx(0.4) and t.error_x.arrayminus[i] == pytest.approx(0.2)
    hover = " ".join(c[5] for c in t.customdata)
    assert "COLLAPSED" in hover and "&lt;clipped&gt;" in hover and "40 of 48" in hover
    assert fig.layout.xaxis.title.text.endswith("batch 32")


def test_precision_map_orders_layers_and_colours_formats():
    layers = [{"layer": "/b/<MatMul>", "format": "fp8", "kind": "gemm", "sensitivity": 0.02,
               "est_ms": 0.01, "order": 2, "op_type": "MatMul"},
              {"layer": "/a/MatMul", "format": "int8", "kind": "gemm", "sensitivity": 0.001,
               "est_ms": 0.02, "order": 1, "op_type": "MatMul"},
              {"layer": "/c/MatMul", "format": "fp16", "kind": "gemm", "sensitivity": 0.3,
               "est_ms": float("nan"), "order": 3, "op_type": "MatMul"}]
    fig = plots.precision_map(layers, batch=32)
    bars = {t.name.split(" ")[0]: t for t in fig.data if t.type == "bar"}
    assert set(bars) == {"INT8", "FP8", "FP16"}
    assert bars["INT8"].marker.color == plots.PRECISION_COLORS["int8"]
    assert list(fig.layout.xaxis.categoryarray) == ["1. /a/MatMul", "2. /b/&lt;MatMul&gt;",
                                                    "3. /c/MatMul"]
    line = next(t for t in fig.data if t.type == "scatter")
    assert list(line.y) == [0.001, 0.02, 0.3] and fig.layout.yaxis2.type == "log"
    assert "2 of 3 GEMM/conv layers at 8 bits" in fig.layout.title.text
    assert "ESTIMATED" in fig.layout.title.text and "batch 32" in fig.layout.title.text
    assert any("without an estimate" in a.text for a in fig.layout.annotations)
    assert plots.precision_map([]).layout.annotations[0].text == "no per-layer precision map"
    assert "<MatMul>" not in fig.to_json()
    # residual/norm options are not layers: the legend counts them apart, as the title does
    opts = layers + [{"layer": "/a/Add", "format": "int8", "kind": "residual", "order": 4},
                     {"layer": "/a/LayerNorm", "format": "int8", "kind": "norm", "order": 5}]
    fig = plots.precision_map(opts)
    names = [t.name for t in fig.data if t.type == "bar"]
    assert "INT8 (1 GEMM/conv + 2 other)" in names and "FP8 (1 GEMM/conv)" in names
    assert "2 of 3 GEMM/conv layers at 8 bits" in fig.layout.title.text


def test_search_front_stars_the_chosen_with_bands():
    doc = {"budget": {"min_cosine": 0.99}, "chosen": "b", "indistinguishable": ["a"],
           "candidate_rows": [
               {"name": "a", "strategy": "bisect", "status": "ok", "cos_mean": 0.98,
                "metric_drop": 0.1, "latency_ms": 1.0, "latency_low_ms": 0.5,
                "latency_high_ms": 2.0, "latency_source": "estimated-l4", "latency_batch": 32},
               {"name": "b", "strategy": "bisect", "status": "ok", "cos_mean": 0.995,
                "metric_drop": 0.05, "latency_ms": 1.1, "latency_low_ms": 0.55,
                "latency_high_ms": 2.2, "latency_source": "estimated-l4", "latency_batch": 32}]}
    fig = plots.search_front(doc)
    star = next(t for t in fig.data if t.name == "chosen")
    assert list(star.x) == [1.1] and star.y[0] == pytest.approx(0.005)
    assert any(s.type == "line" and s.y0 == pytest.approx(0.01) for s in fig.layout.shapes)
    assert any(t.error_x is not None and t.error_x.array is not None for t in fig.data
               if t.name not in ("chosen", "Pareto front"))
    assert any("told apart" in a.text or "distinguishable" in a.text
               for a in fig.layout.annotations)


def test_bands_on_any_latency_column_and_an_axis_that_does_not_exaggerate():
    """Issue 21 item 5: 1% apart with overlapping bands must not look far apart: error bars
    from the band of whichever latency column is drawn, the axis from 0, and the chart says
    the two cannot be told apart."""
    df = pd.DataFrame([
        {"recipe": "baseline", "status": "ok", "metric_drop": 0.0, "cos_mean": 1.0,
         "dash_latency_ms": 0.006456, "dash_latency_low_ms": 0.0047,
         "dash_latency_high_ms": 0.0104, "dash_latency_source": "estimated-l4"},
        {"recipe": "int8", "status": "ok", "metric_drop": 0.0059, "cos_mean": 0.999,
         "dash_latency_ms": 0.006395, "dash_latency_low_ms": 0.0046,
         "dash_latency_high_ms": 0.0103, "dash_latency_source": "estimated-l4"},
        {"recipe": "fp8", "status": "ok", "metric_drop": 0.001, "cos_mean": 0.9995,
         "dash_latency_ms": 0.020, "dash_latency_low_ms": 0.019,
         "dash_latency_high_ms": 0.021, "dash_latency_source": "estimated-l4"}])
    fig = plots.accuracy_latency(df, x="dash_latency_ms", source="dash_latency_source")
    (pts,) = [t for t in fig.data if t.name == "estimated L4 latency"]
    assert list(pts.error_x.array) == pytest.approx([0.0104 - 0.006456, 0.0103 - 0.006395,
                                                     0.001])
    lo, hi = fig.layout.xaxis.range
    assert lo == 0 and hi >= 0.021
    notes = [a.text for a in fig.layout.annotations]
    assert any("indistinguishable" in n and "baseline" in n and "int8" in n and "fp8" not in n
               for n in notes), notes
    assert plots.overlap_groups(plots.trials_frame(df).assign(
        dash_latency_ms=df["dash_latency_ms"], dash_latency_low_ms=df["dash_latency_low_ms"],
        dash_latency_high_ms=df["dash_latency_high_ms"]), "dash_latency_ms") == \
        [["int8", "baseline"]]
    switch = plots.accuracy_latency_switchable(df.rename(columns=lambda c: c.replace(
        "dash_", "")))
    assert switch.layout.xaxis.range[0] == 0
    assert any("indistinguishable" in a.text for a in switch.layout.annotations)


def test_overlap_groups_chain_and_leave_apart_what_is_apart():
    df = pd.DataFrame({"name": list("abcd"), "latency_ms": [1.0, 1.1, 2.0, 5.0],
                       "latency_low_ms": [0.9, 1.0, 1.05, 4.9],
                       "latency_high_ms": [1.2, 1.3, 2.2, 5.1]})
    assert plots.overlap_groups(df) == [["a", "b", "c"]]
    measured = pd.DataFrame({"name": ["x", "y"], "latency_ms": [1.0, 1.0]})  # no band
    assert plots.overlap_groups(measured) == [["x", "y"]]
    assert plots.overlap_groups(df.iloc[3:]) == []
