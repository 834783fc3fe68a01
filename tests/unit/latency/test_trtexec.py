"""Readers and lint on real trtexec exports of two real engines (TITAN RTX, TensorRT 8.x)."""
import json

import numpy as np
import pytest

from l4opt.latency import stats as bench
from l4opt.latency import trtexec as engine_report
from l4opt.errors import BadInput

ENGINES = ["mobilenet.qat.onnx", "mobilenet_v2_residuals.qat.onnx"]


@pytest.fixture(scope="module", params=ENGINES)
def export(request, trtexec_dir):
    return engine_report.load_engine_export(trtexec_dir / f"{request.param}.engine.graph.json")


def test_readers_load_every_file(export):
    layers, profile = export.layers, export.profile
    assert len(layers) >= 57 and {"name", "layer_type", "precision"} <= set(layers.columns)
    assert set(layers["precision"]) <= {"int8", "fp16", "fp32"}
    assert (layers["precision"] == "int8").sum() > 40
    assert profile.attrs["count"] > 1000
    assert set(profile["name"]) <= set(layers["name"]) | {"Reformatting CopyNode"}
    assert export.summary["device"]["Selected Device"] == "NVIDIA TITAN RTX"
    assert export.build["build_options"]["Precision"] == "FP32+FP16+INT8"


def test_percentiles_from_timings_match_the_summary(trtexec_dir):
    ex = engine_report.load_engine_export(trtexec_dir / "mobilenet.qat.onnx.engine.graph.json")
    timed = engine_report.timed_iterations(ex.timing, ex.summary)
    assert 0 < len(timed) < len(ex.timing)  # warm-up iterations are excluded
    got = bench.latency_stats(timed["computeMs"])
    want = ex.summary["performance"]["GPU Compute Time"]
    for k in ("min", "max", "median", "p90", "p95", "p99"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-4)
    # throughput: iterations / wall time of the timed phase, as trtexec reports it
    span_s = (timed["endComputeMs"].iloc[-1] - timed["startComputeMs"].iloc[0]) / 1e3
    assert len(timed) / span_s == pytest.approx(ex.summary["performance"]["Throughput"], rel=0.01)


def test_lint_finds_standalone_quantize_and_reformat_copies(export):
    rep = engine_report.lint(export.layers, export.profile)
    kinds = rep.summary()
    qdq = [f for f in rep.findings if f.kind == "unfused-qdq"]
    assert qdq and all("QuantizeLinear" in f.layer for f in qdq)
    assert all(f.time_ms > 0 for f in qdq)
    reformat = [f for f in rep.findings if f.kind == "reformat"]
    assert len(reformat) == 1 and "Reformatting CopyNode" in reformat[0].layer
    shares = sum(r["share"] for r in rep.by_precision)
    assert shares == pytest.approx(1.0)
    assert rep.total_ms == pytest.approx(export.profile["average_ms"].sum())
    assert kinds["unfused-qdq"]["count"] == (17 if "residuals" not in export.name else 2)
    json.dumps(rep.to_dict())
    assert "unfused-qdq" in rep.to_text()


def test_lint_without_profile_still_lists_findings(export):
    rep = engine_report.lint(export.layers)
    assert rep.total_ms is None and rep.findings and all(f.time_ms is None for f in rep.findings)


def test_bad_files_are_named(tmp_path, trtexec_dir):
    with pytest.raises(BadInput, match="not found"):
        engine_report.read_layer_info(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(BadInput, match="not TensorRT layer information"):
        engine_report.read_layer_info(tmp_path / "x.json")
    with pytest.raises(BadInput, match="per-layer profile"):
        engine_report.read_profile(tmp_path / "x.json")
    with pytest.raises(BadInput, match="exportLayerInfo"):
        engine_report.read_layer_info(trtexec_dir / "mobilenet.qat.onnx.engine.profile.json")


def test_stability_warnings_follow_trtexec_rules():
    steady = np.full(1000, 1.0) + np.linspace(0, 0.01, 1000)
    assert bench.stability_warnings(steady, enqueue_ms=np.full(1000, 0.1)) == []
    noisy = np.r_[np.full(900, 1.0), np.full(100, 2.0)]
    assert any("unstable" in w for w in bench.stability_warnings(noisy))
    assert any("enqueue-bound" in w for w in bench.stability_warnings(steady, np.full(1000, 0.9)))


def test_cli_lint_json(trtexec_dir, tmp_path):
    from l4opt.cli import main

    g = trtexec_dir / "mobilenet.qat.onnx.engine.graph.json"
    p = trtexec_dir / "mobilenet.qat.onnx.engine.profile.json"
    assert main(["lint", str(g), "--profile", str(p), "--json", "--out", str(tmp_path)]) == 0
    (path,) = (tmp_path / "lint").glob("mobilenet.qat.onnx.engine*.json")  # name: slug + hash
    saved = json.loads(path.read_text())
    assert saved["summary"]["reformat"]["count"] == 1


# TRT 10/11-shaped per-iteration exports, synthesized by tests/standins/trtexec (see the
# fixtures README): they start after the warm-up, as trtexec >= 8.5 writes them.
SYNTH = ["synthesized.trt10.b8.engine.timing.json", "synthesized.trt11.b8.engine.timing.json"]


@pytest.mark.parametrize("name", SYNTH)
def test_warmup_is_not_dropped_twice_on_trt10_11_exports(trtexec_dir, name):
    t = engine_report.read_timing(trtexec_dir / name)
    assert t["startComputeMs"].iloc[0] >= 200.0  # exportTimes already skipped the warm-up
    timed = engine_report.timed_iterations(t)
    assert len(timed) == len(t)
    # the old rule (200 ms after the first record) lost a large share of a short run
    assert (t["startComputeMs"] >= t["startComputeMs"].iloc[0] + 200).sum() < 0.6 * len(t)
    thr = engine_report.walltime_throughput(timed)
    wall = t["endD2hMs"].iloc[-1] - t["startH2dMs"].iloc[0]
    assert thr["throughput_qps"] == pytest.approx(len(t) / wall * 1e3)
    # wall time includes the gaps between launches: below 1000 / median compute time
    assert thr["throughput_qps"] < 1000 / bench.latency_stats(t["computeMs"])["median"]


def test_old_exports_drop_warmup_by_the_absolute_rule(trtexec_dir):
    ex = engine_report.load_engine_export(trtexec_dir / "mobilenet.qat.onnx.engine.graph.json")
    timed = engine_report.timed_iterations(ex.timing, ex.summary)
    assert timed["startComputeMs"].min() >= 200.0
    assert (ex.timing["startComputeMs"] < 200.0).sum() == len(ex.timing) - len(timed)
    thr = engine_report.walltime_throughput(timed)
    assert thr["throughput_qps"] == pytest.approx(ex.summary["performance"]["Throughput"],
                                                  rel=1e-5)


def test_duplicate_layer_names_are_disambiguated_like_trex(trtexec_dir, tmp_path):
    from l4opt.latency import estimate

    src = "mobilenet_v2_residuals.qat.onnx.engine"
    graph = json.loads((trtexec_dir / f"{src}.graph.json").read_text())
    prof = json.loads((trtexec_dir / f"{src}.profile.json").read_text())
    dup = graph["Layers"][3]["Name"]
    for i in (5, 9):  # two more layers with the same name, in the graph and the profile
        prof[1 + i]["name"] = graph["Layers"][i]["Name"] = dup
    assert [r["name"] for r in prof[1:]] == [la["Name"] for la in graph["Layers"]]
    for suffix, data in ((".graph.json", graph), (".profile.json", prof)):
        (tmp_path / f"d.engine{suffix}").write_text(json.dumps(data))
    ex = engine_report.load_engine_export(tmp_path / "d.engine.graph.json")
    assert ex.layers["name"].is_unique and ex.profile["name"].is_unique
    assert list(ex.layers["name"][[3, 5, 9]]) == [dup, f"{dup}_2", f"{dup}_3"]
    assert (ex.layers["raw_name"][[3, 5, 9]] == dup).all()
    rep = engine_report.lint(ex.layers, ex.profile)
    assert rep.total_ms == pytest.approx(ex.profile["average_ms"].sum())
    v = estimate.validate_on_export(ex)
    assert v["layers_compared"] > 0
