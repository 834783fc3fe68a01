"""Readers and lint on real trtexec exports of two real engines (TITAN RTX, TensorRT 8.x)."""
import json

import numpy as np
import pytest

from l4opt import bench, engine_report
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
    saved = json.loads((tmp_path / "lint" / "mobilenet.qat.onnx.engine.json").read_text())
    assert saved["summary"]["reformat"]["count"] == 1
