"""TensorRT paths. CPU tests check the guards and the cache logic; `gpu` tests build, profile
and time a real engine and skip (with the reason) on machines without a GPU and TensorRT."""
import json
import subprocess
import sys

import pytest

import l4opt
from l4opt.latency import trt
from l4opt.errors import BadInput, MissingDependency, UnsupportedOnL4


def test_import_without_tensorrt_initialises_nothing():
    code = ("import sys; sys.modules['tensorrt'] = None; import l4opt.latency.trt as t; "
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


def test_network_flags_follow_the_tensorrt_version():
    assert trt.network_flag_names("10.13.0.35") == ["STRONGLY_TYPED"]
    assert trt.network_flag_names("10.13.0", strongly_typed=False) == []
    assert trt.network_flag_names("11.1.0") == []  # deprecated no-op there: strongly typed only
    assert trt.trt_major("11.0.0.1") == 11
    with pytest.raises(BadInput, match="TensorRT version"):
        trt.trt_major("unknown")


def test_timing_cache_is_keyed_by_version_and_gpu():
    names = {trt.timing_cache_name(v, g, cc) for v, g, cc in (
        ("10.13.0", "NVIDIA L4", "8.9"), ("11.1.0", "NVIDIA L4", "8.9"),
        ("10.13.0", "NVIDIA H100 80GB HBM3", "9.0"), ("10.13.0", "NVIDIA L4", "8.9"))}
    assert len(names) == 3
    assert trt.timing_cache_name("10.13.0", "NVIDIA L4", "8.9") == "timing-trt10.13.0-nvidia-l4-sm89.cache"
    assert "/" not in trt.timing_cache_name("10", "../../etc GPU/x", "8.9")


def test_file_lock_and_atomic_write_serialise_writers(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "timing.cache"
    procs = [mp.get_context("fork").Process(target=_append_under_lock, args=(path, i))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = path.read_text().split()
    assert sorted(lines) == sorted(f"{i}-{k}" for i in range(4) for k in range(20))
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def _append_under_lock(path, i):
    for k in range(20):
        with trt.FileLock(path):  # read-merge-write, as the timing cache does
            old = path.read_text() if path.exists() else ""
            trt.atomic_write(path, (old + f"{i}-{k}\n").encode())


def test_shapes_from_the_recorded_row():
    inputs = [{"name": "ids", "shape": ["batch", "seq"]}, {"name": "mask", "shape": ["batch", "seq"]}]
    dims = trt.dims_from_shapes(inputs, {"ids": [4, 128], "mask": [4, 128]})
    assert dims == {"seq": 128}  # the batch axis is left to the batch range
    s = trt.BuildSettings(batch=(2, 8, 32), dims=dims)
    assert s.shapes(inputs)["ids"] == ([2, 128], [8, 128], [32, 128])
    with pytest.raises(BadInput, match="two recorded values"):
        trt.dims_from_shapes(inputs, {"ids": [4, 128], "mask": [4, 64]})
    assert trt.clip_batch(1, 2, 32) == 2 and trt.clip_batch(None, 2, 32) == 2
    assert trt.clip_batch(64, 2, 32) == 32 and trt.clip_batch(8, 2, 32) == 8
    assert trt.shapes_arg({"ids": [2, 128], "in:0": [1]}) == "ids:2x128,'in:0':1"
    with pytest.raises(BadInput, match="shape spec"):
        trt.shapes_arg({"a,b": [1]})


def test_nvml_device_is_found_by_cuda_uuid_not_index():
    uuid = trt.uuid_string(bytes(range(16)))
    assert uuid == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    nvml = [{"uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000", "pci_bus_id": "00000000:01:00.0"},
            {"uuid": uuid.upper(), "pci_bus_id": "00000000:41:00.0"}]
    # CUDA_VISIBLE_DEVICES=1: CUDA's device 0 is NVML's device 1
    assert trt.match_nvml_device(nvml, uuid=uuid) == 1
    assert trt.match_nvml_device(nvml, uuid=None, pci_bus_id="0000:41:00.0") == 1
    assert trt.normalize_pci_bus_id("00000000:41:00.0") == "0000:41:00.0"
    with pytest.raises(l4opt.errors.StageFailed, match="no NVML device"):
        trt.match_nvml_device(nvml, uuid="GPU-ffffffff-0000-0000-0000-000000000000")


def test_clock_events_and_power_reach_each_measurement():
    assert trt.clock_event_names(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert trt.clock_event_names(0x1000) == ["0x1000"]
    samples = [{"power_w": 70.0, "power_instant_w": 75.5, "clock_events": ["sw_power_cap"]},
               {"power_w": 60.0, "power_instant_w": 58.0, "clock_events": []}]
    s = trt.telemetry_summary(samples, 72.0)
    assert s["clock_events"] == {"sw_power_cap": 0.5}
    assert s["power_instant_w"]["max"] == 75.5 and s["power_w"]["mean"] == 65.0
    (w,) = trt.telemetry_warnings(s)
    assert "sw_power_cap in 50% of samples" in w and "72.0 W" in w
    assert trt.telemetry_warnings(trt.telemetry_summary(samples[1:], 72.0)) == []


def test_bf16_and_fp8_io_are_read_by_item_size():
    import numpy as np

    assert trt.host_dtype("DataType.BF16", 2) == np.uint16
    assert trt.host_dtype("DataType.FP8", 1) == np.uint8
    assert trt.host_dtype("DataType.HALF", 2) == np.float16
    with pytest.raises(BadInput, match="sub-byte"):
        trt.host_dtype("DataType.INT4", 0.5)
    x = np.array([0.0, 1.0, -2.5, 3.140625, 1e-3], np.float32)
    bf = trt.host_input(x, "BF16")
    assert bf.dtype == np.uint16
    np.testing.assert_allclose(trt.to_float32(bf, "BF16"), x, rtol=2 ** -8)
    with pytest.raises(BadInput, match="FP8 graph inputs"):
        trt.host_input(x, "DataType.FP8", 1)
    assert trt.host_input([1, 2], "DataType.INT64", 8).dtype == np.int64
    # FP8 E4M3FN: 0x38 = 1.0, 0xC0 = -2.0, 0x7E = 448 (largest), 0x7F = NaN, 0x01 = 2^-9
    got = trt.to_float32(np.array([0x38, 0xC0, 0x7E, 0x01, 0x7F], np.uint8), "FP8")
    np.testing.assert_array_equal(got[:4], [1.0, -2.0, 448.0, 2.0 ** -9])
    assert np.isnan(got[4])


def test_throughput_is_iterations_over_wall_time():
    t = trt.wall_throughput(3000, 1.5, batch=8)
    assert t["throughput_qps"] == pytest.approx(2000.0) and t["throughput_samples_s"] == pytest.approx(16000.0)
    assert trt.drift_backend_label("NVIDIA L4") == "tensorrt-l4"
    import numpy as np

    feed = [np.arange(10), np.arange(10) * 2]
    parts = trt.split_batches(feed, 4)
    assert [len(p[0]) for p in parts] == [4, 4, 2] and parts[2][1].tolist() == [16, 18]


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    res = l4opt.sweep("digits-cnn", "int8", d, progress=False)
    return d, res.rows[0]


@pytest.mark.gpu
def test_build_profile_and_read_back(digits_int8, tmp_path):
    from l4opt.latency import trtexec as engine_report

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


@pytest.mark.gpu
def test_benchmark_is_honest_about_graphs_transfers_and_the_device(digits_int8, tmp_path):
    run_dir, row = digits_int8
    rec = trt.build_engine(run_dir / row["onnx_path"], trt.BuildSettings(batch=(2, 64, 256)),
                           tmp_path, row["inputs"])
    assert rec.network_flags == trt.network_flag_names(rec.trt_version)
    assert rec.timing_cache.endswith(trt.timing_cache_name(rec.trt_version, rec.gpu,
                                                           rec.compute_capability))
    plain = trt.benchmark(rec.path, batch=2, duration_s=0.3, cuda_graph=False)
    moved = trt.benchmark(rec.path, batch=2, duration_s=0.3, transfers=True)
    assert plain["cuda_graph"] is False and moved["cuda_graph"] in (True, False)
    assert moved["cuda_graph"] or moved["cuda_graph_fallback"]
    assert moved["h2d_ms"]["median"] > 0 and moved["d2h_ms"]["median"] > 0
    assert moved["latency_ms"]["median"] >= moved["gpu_compute_ms"]["median"]
    # throughput as trtexec computes it: iterations over the wall time of the timed phase
    assert plain["throughput_qps"] == pytest.approx(plain["iterations"] / plain["walltime_ms"] * 1e3)
    assert plain["telemetry"]["nvml_uuid"] == trt.cuda_device()["uuid"]
    assert "clock_events" in plain["telemetry"]
    with pytest.raises(BadInput, match="outside the engine's profile"):
        trt.benchmark(rec.path, batch=1, duration_s=0.1)


@pytest.mark.gpu
def test_trt_runner_returns_every_output_close_to_onnxruntime(digits_int8, tmp_path):
    import numpy as np

    from l4opt.pipeline.runners import OrtRunner

    run_dir, row = digits_int8
    onnx_path = run_dir / row["onnx_path"]
    rng = np.random.default_rng(0)
    batches = [[rng.standard_normal((n, 1, 8, 8)).astype(np.float32)] for n in (1, 16, 300)]
    outs = trt.engine_drift_outputs(onnx_path, row["inputs"], batches, cache_dir=tmp_path,
                                    batch_range=(1, 64, 256))
    ort = OrtRunner(str(onnx_path), [i["name"] for i in row["inputs"]], quantized=True)
    ort.activate()
    try:
        for feed, got in zip(batches, outs):
            want = ort.infer(feed)
            assert set(got) == set(want)
            for k in want:
                assert got[k].shape == want[k].shape and got[k].dtype == np.float32
                cos = float((got[k] * want[k]).sum() / np.linalg.norm(got[k]) / np.linalg.norm(want[k]))
                assert cos > 0.99, (k, cos)
    finally:
        ort.deactivate()
