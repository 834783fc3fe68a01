"""TensorRT paths. CPU tests check the guards and the cache logic; `gpu` tests build, profile
and time a real engine and skip (with the reason) on machines without a GPU and TensorRT."""
import json
import subprocess
import sys

import pytest

import l4opt
from l4opt import trt
from l4opt.errors import BadInput, MissingDependency, UnsupportedOnL4


def test_import_without_tensorrt_initialises_nothing():
    code = ("import sys; sys.modules['tensorrt'] = None; import l4opt.trt as t; "
            "assert 'tensorrt' not in [m for m in sys.modules if sys.modules[m] is not None]; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.skipif(l4opt.env.has_tensorrt(), reason="TensorRT is installed here")
def test_build_without_tensorrt_names_the_extra(tmp_path):
    with pytest.raises(MissingDependency, match=r"l4opt\[gpu\]"):
        trt.build_engine(tmp_path / "m.onnx", trt.BuildSettings(), tmp_path, inputs=[])


def test_settings_round_trip_and_shapes():
    s = trt.BuildSettings(opt_level=5, batch=(1, 16, 128), dims={"seq": 64})
    assert trt.BuildSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    shapes = s.shapes([{"name": "ids", "shape": ["batch", "seq"]}])
    assert shapes == {"ids": ([1, 64], [16, 64], [128, 64])}
    with pytest.raises(BadInput, match="dynamic"):
        trt.BuildSettings().shapes([{"name": "ids", "shape": ["batch", "tokens"]}])


def test_engine_cache_key_covers_settings_gpu_and_version(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    base = trt.cache_key(onnx, trt.BuildSettings(), "10.13.0", "NVIDIA L4", "8.9")
    assert base == trt.cache_key(onnx, trt.BuildSettings(), "10.13.0", "NVIDIA L4", "8.9")
    assert len({base,
                trt.cache_key(onnx, trt.BuildSettings(opt_level=5), "10.13.0", "NVIDIA L4", "8.9"),
                trt.cache_key(onnx, trt.BuildSettings(), "11.4.0", "NVIDIA L4", "8.9"),
                trt.cache_key(onnx, trt.BuildSettings(), "10.13.0", "NVIDIA H100", "9.0")}) == 4


def test_engine_from_another_gpu_or_version_is_refused():
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "trt_version": "10.13.0"}
    l4 = {"name": "NVIDIA L4", "compute_capability": "8.9"}
    with pytest.raises(BadInput, match="built for NVIDIA H100.*this GPU is NVIDIA L4"):
        trt.check_sidecar(meta, "10.13.0", l4)
    with pytest.raises(BadInput, match="TensorRT 10.13.0 but 11.4.0"):
        trt.check_sidecar(dict(meta, gpu="NVIDIA L4", compute_capability="8.9"), "11.4.0", l4)


def test_formats_the_gpu_cannot_run_are_refused():
    trt.check_format(["float8e4m3fn", "int8"], "8.9")
    with pytest.raises(UnsupportedOnL4, match="sm_89"):
        trt.check_format(["float8e4m3fn"], "7.5")
    with pytest.raises(UnsupportedOnL4, match="Blackwell"):
        trt.check_format(["float4e2m1"], "8.9")
    assert trt.source_label("NVIDIA L4") == "measured-l4"
    assert trt.source_label("NVIDIA TITAN RTX") == "measured-titan-rtx"


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    res = l4opt.sweep("digits-cnn", "int8", d, progress=False)
    return d, res.rows[0]


@pytest.mark.gpu
def test_build_profile_and_read_back(digits_int8, tmp_path):
    from l4opt import engine_report

    run_dir, row = digits_int8
    settings = trt.BuildSettings(batch=(1, 64, 256))
    rec = trt.build_engine(run_dir / row["onnx_path"], settings, tmp_path, row["inputs"],
                           row["quantized_dtypes"])
    again = trt.build_engine(run_dir / row["onnx_path"], settings, tmp_path, row["inputs"])
    assert again.cached and again.key == rec.key
    engine = trt.load_engine(rec.path)
    graph = trt.export_layer_info(engine, tmp_path / "x.engine.graph.json")
    prof = trt.profile_layers(engine, tmp_path / "x.engine.profile.json", batch=1, iterations=50)
    layers = engine_report.read_layer_info(graph)
    profile = engine_report.read_profile(prof)
    assert (layers["precision"] == "int8").any()
    assert set(profile["name"]) <= set(layers["name"])
    engine_report.lint(layers, profile)


@pytest.mark.gpu
def test_benchmark_reports_trtexec_statistics_and_telemetry(digits_int8, tmp_path):
    run_dir, row = digits_int8
    rec = trt.build_engine(run_dir / row["onnx_path"], trt.BuildSettings(batch=(1, 64, 256)),
                           tmp_path, row["inputs"])
    r = trt.benchmark(rec.path, batch=8, duration_s=0.5)
    assert r["source"].startswith("measured-") and r["iterations"] > 10
    for k in ("min", "mean", "median", "p90", "p95", "p99", "cv"):
        assert k in r["gpu_compute_ms"]
    assert r["throughput_samples_s"] == pytest.approx(8 * r["throughput_qps"])
    assert r["telemetry"]["samples"] > 0 and r["telemetry"]["power_limit_w"] > 0
    curve = trt.batch_sweep(rec.path, batches=(1, 8), duration_s=0.3)
    assert [c["batch"] for c in curve] == [1, 8]


@pytest.mark.gpu
def test_sweep_on_a_gpu_measures_the_engine_and_keeps_the_estimate(tmp_path):
    res = l4opt.sweep("digits-cnn", ["baseline", "int8-max"], tmp_path, progress=False)
    for row in res.rows:
        assert row["status"] == "ok"
        assert row["latency_source"].startswith("measured-") and row["latency_ms"] > 0
        assert row["est_latency_source"] == "estimated-l4" and row["est_latency_ms"] > 0
        assert row["engine"]["settings"]["strongly_typed"] is True
