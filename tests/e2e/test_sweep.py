"""The sweep end to end on real ModelOpt, ONNX Runtime and the built-in workloads."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import l4opt
from l4opt.spec import recipes
from l4opt.spec import workloads
from l4opt.errors import BadInput
from l4opt.onnx.graph import onnx_files, write_onnx_files
from l4opt.spec import row as rowspec

ALL = recipes.names()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    return d, l4opt.sweep("digits-cnn", ALL, d, progress=False)


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("minilm")
    return d, l4opt.sweep("minilm", ALL, d, progress=False, calib_samples=32, eval_samples=64)


def _check_rows(res, n):
    df = res.table()
    assert list(df["recipe"]) == ALL and len(df) == n
    # every trial finished (ok, or collapsed with its note): none failed
    assert df["status"].isin(["ok", "collapsed"]).all(), \
        df[[c for c in ("recipe", "status", "error") if c in df]].to_string()
    for r in res.rows:
        assert -1 <= r["cos_min"] <= r["cos_mean"] <= 1.0 + 1e-6
        assert np.isfinite(r["sqnr_db"]) and r["max_abs_err"] >= 0
        assert r["metric_delta"] == pytest.approx(r["metric"] - r["metric_ref"])
        assert r["drift_backend"]
        assert r["versions"]["nvidia-modelopt"] and r["machine"]["cores"]
        # no L4 here: the latency is the cost model's, and the row says so
        assert r["latency_source"] == "estimated-l4" and r["latency_ms"] > 0
        # latency and throughput at the deployment batch (the workload's optimum batch),
        # with the shapes they are for
        b = res_batch(r)
        assert r["latency_batch"] == r["shapes"]["batch"] == r["modelopt_batch"] or \
            r["route"] == "none"
        assert r["latency_batch"] == b and r["throughput_batch"] == b
        assert r["throughput_samples_s"] == pytest.approx(b * 1000 / r["latency_ms"])
        assert r["latency_low_ms"] <= r["latency_ms"] <= r["latency_high_ms"]
        # the estimator's explanation and the TensorRT version its rules assumed
        assert isinstance(r["latency_notes"], list) and len(r["latency_notes"]) <= 6
        assert r["latency_trt_version"] and r["latency_trt_version"][0].isdigit()
        assert r["gemm_layers"] >= r["quantized_layers"] >= (1 if r["route"] != "none" else 0)
        assert r["log_path"].endswith("trial.log") and r["outputs"]
    return df


def res_batch(row):
    return row["batch_range"][1]


def test_every_recipe_on_digits(digits_run):
    run_dir, res = digits_run
    df = _check_rows(res, len(ALL))
    by = df.set_index("recipe")
    assert by.loc["baseline", "metric_ref"] > 0.95
    # the baseline is the FP16 deployment graph: tiny but nonzero drift
    assert by.loc["baseline", "sqnr_db"] > 50
    for r in ("fp8", "int8", "int8-max", "int8-percentile", "int8-smoothquant"):
        assert by.loc[r, "drift_backend"] == "onnxruntime-cpu, TensorRT numerics"
        # torch PTQ quantizes all 3 convs and 2 linears; ONNX PTQ skips few-channel convs
        if by.loc[r, "route"] == "torch-ptq":
            assert by.loc[r, "quantized_layers"] >= 5
        else:
            assert 2 <= by.loc[r, "quantized_layers"] <= 5
        assert 15 < by.loc[r, "sqnr_db"] < 80
        assert abs(by.loc[r, "metric_delta"]) < 0.05
    # the torch FP8 export uses TensorRT-only ops: said in the row, drift on fake-quant torch
    assert any("trt::" in op for op in by.loc["fp8-torch", "custom_ops"])
    assert by.loc["fp8-torch", "drift_backend"] == "torch-fakequant-cpu"
    assert any("TensorRT-only" in n for n in by.loc["fp8-torch", "notes"])
    # ModelOpt saw the deployment batch (64): its calibration shapes and the export's
    assert by.loc["int8", "shapes"]["inputs"] == {"image": [64, 1, 8, 8]}
    assert (run_dir / by.loc["int8", "log_path"]).read_text().count("image:64x1x8x8") >= 1


def test_qdq_exports_are_explicit(digits_run):
    import onnx

    run_dir, res = digits_run
    for r in res.rows:
        m = onnx.load(str(run_dir / r["onnx_path"]))
        ops = {n.op_type for n in m.graph.node}
        if r["recipe"] == "baseline":
            assert "QuantizeLinear" not in ops
            assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
        elif r["recipe"] != "fp8-torch":
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
            want = "float8e4m3fn" if r["format"] == "fp8" else "int8"
            assert want in r["quantized_dtypes"]


def test_every_recipe_on_minilm(minilm_run):
    run_dir, res = minilm_run
    df = _check_rows(res, len(ALL))
    by = df.set_index("recipe")
    assert by.loc["baseline", "cos_min"] > 0.99
    assert by.loc["fp8", "drift_backend"] == "onnxruntime-cpu, TensorRT numerics"
    # transformers have activation outliers: every quantized recipe drifts more than FP16
    for r in ALL[1:]:
        assert by.loc[r, "sqnr_db"] < by.loc["baseline", "sqnr_db"]
    # at the opt batch the estimate prices INT8/FP8 matmuls below the FP16 baseline
    assert by.loc["int8", "throughput_samples_s"] > by.loc["baseline", "throughput_samples_s"]
    # FP8 vs INT8: each row says whether they run the same kernels at its TensorRT version,
    # and the figures agree with what it says
    verdicts = {r: [n for n in by.loc[r, "latency_notes"] if n.startswith("FP8 and INT8 run")]
                for r in ("fp8", "int8")}
    assert all(len(v) == 1 for v in verdicts.values()), verdicts
    assert all(by.loc[r, "latency_trt_version"] in v[0] for r, v in verdicts.items())
    same = ["SAME kernels" in v[0] for v in verdicts.values()]
    assert same[0] == same[1]
    assert (by.loc["fp8", "latency_ms"] == pytest.approx(by.loc["int8", "latency_ms"])) == same[0]


def test_results_store_has_one_row_per_trial(digits_run):
    run_dir, res = digits_run
    con = sqlite3.connect(run_dir / "results.sqlite")
    rows = [json.loads(r) for (r,) in con.execute("SELECT row FROM trials")]
    trials = [r for r in rows if r.get("kind") == "trial"]
    assert sorted(r["recipe"] for r in trials) == sorted(ALL)
    for r in trials:
        assert (run_dir / r["onnx_path"]).exists() and r["timings_s"] and r["recipe_config"]


def test_identical_sweep_is_served_from_cache(digits_run):
    run_dir, first = digits_run
    t = time.perf_counter()
    again = l4opt.sweep("digits-cnn", ALL, run_dir, progress=False)
    took = time.perf_counter() - t
    assert all(r["cached"] for r in again.rows)
    assert [r["metric"] for r in again.rows] == [r["metric"] for r in first.rows]
    assert took < sum(r["total_s"] for r in first.rows)


def test_corrupted_artifact_is_recomputed(tmp_path):
    res = l4opt.sweep("digits-cnn", "int8-max", tmp_path, progress=False)
    onnx_path = tmp_path / res.rows[0]["onnx_path"]
    onnx_path.write_bytes(b"garbage")
    again = l4opt.sweep("digits-cnn", "int8-max", tmp_path, progress=False)
    assert again.rows[0]["cached"] is False
    assert any("corrupted" in n for n in again.notes)
    assert again.rows[0]["metric"] == res.rows[0]["metric"]


def test_corrupted_database_is_rebuilt_without_losing_rows(tmp_path):
    res = l4opt.sweep("digits-cnn", "int8-max,int8-smoothquant", tmp_path, progress=False)
    (tmp_path / "results.sqlite").write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    again = l4opt.sweep("digits-cnn", "int8-max,int8-smoothquant", tmp_path, progress=False)
    assert all(r["cached"] for r in again.rows)
    assert any("corrupted" in n and "rebuilt" in n for n in again.notes)
    assert list((tmp_path).glob("results.sqlite.corrupt-*"))
    assert [r["key"] for r in again.rows] == [r["key"] for r in res.rows]


def test_resume_after_kill_finishes_only_what_is_missing(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "l4opt.cli", "sweep", "digits-cnn", "--out", str(tmp_path),
           "--recipes", ",".join(ALL)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "results.sqlite"
    done_before = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=5)
                done_before = con.execute(
                    "SELECT count(*) FROM trials WHERE status='ok' AND recipe != '(fp32 export)'"
                ).fetchone()[0]
                con.close()
            except sqlite3.Error:
                pass
            if done_before >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= done_before < len(ALL), "the sweep was not caught half-way"
    res = l4opt.sweep("digits-cnn", ALL, tmp_path, progress=False)
    cached = sum(r["cached"] for r in res.rows)
    assert cached >= done_before and cached < len(ALL)
    con = sqlite3.connect(db)
    keys = [k for (k,) in con.execute("SELECT key FROM trials WHERE recipe != '(fp32 export)'")]
    assert len(keys) == len(set(keys)) == len(ALL)


def test_user_workload_is_first_class(tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    rng = np.random.default_rng(0)
    w = workloads.Workload(
        name="my-mlp", model=model, inputs=[workloads.InputSpec("x", ("batch", 16))],
        calib_data={"x": rng.normal(size=(64, 16)).astype(np.float32)},
        eval_data={"x": rng.normal(size=(48, 16)).astype(np.float32)},
        metric=workloads.Metric("agree", lambda o, r, l: float(np.mean(o.argmax(1) == r.argmax(1)))))
    res = l4opt.sweep(w, "baseline,int8,int8-max", tmp_path, progress=False)
    assert [r["status"] for r in res.rows] == ["ok"] * 3
    assert res.rows[0]["workload"] == "my-mlp"


def test_unexportable_model_names_the_op_and_module(tmp_path):
    import torch

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.erfinv(torch.tanh(x))

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), Odd())
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    w = workloads.Workload(name="odd", model=model, inputs=[workloads.InputSpec("x", ("batch", 8))],
                           calib_data={"x": x}, eval_data={"x": x},
                           metric=workloads.Metric("cos", lambda o, r, l: 1.0))
    res = l4opt.sweep(w, "int8-max", tmp_path, progress=False)
    err = res.rows[0]["error"]
    assert res.rows[0]["status"] == "failed"
    assert "aten::erfinv" in err and "'1'" in err  # module '1' of the Sequential


def test_bad_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(BadInput, match="unknown workload"):
        l4opt.sweep("nope", "fp8", tmp_path)
    with pytest.raises(BadInput, match="unknown recipe"):
        l4opt.sweep("digits-cnn", "fp8,int3", tmp_path)
    with pytest.raises(l4opt.errors.UnsupportedOnL4):
        l4opt.sweep("digits-cnn", "nvfp4", tmp_path)
    assert not (tmp_path / "results.sqlite").exists()


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BadInput, match="not writable"):
        l4opt.sweep("digits-cnn", "fp8", blocker / "run")


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "l4opt.cli", *args], capture_output=True,
                          text=True, **kw)


def test_cli_json_rows_and_clear_errors(digits_run):
    run_dir, first = digits_run
    out = _cli("sweep", "digits-cnn", "--recipes", "int8,fp8", "--out", str(run_dir), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)["rows"]
    assert [r["recipe"] for r in rows] == ["int8", "fp8"] and all(r["cached"] for r in rows)
    bad = _cli("sweep", "digits-cnn", "--recipes", "mxfp8", "--out", str(run_dir))
    assert bad.returncode == 2 and "Blackwell" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli("sweep", "imagenet", "--out", str(run_dir))
    assert bad.returncode == 2 and "minilm, digits-cnn" in bad.stderr


# ------------------------------------------------------------------ the engine stage's inputs

def test_engine_stage_gets_the_rows_shapes_and_latency_batch(digits_run):
    """Local and Ray engine stages build trt.measure_onnx's arguments from the row (pure, so a
    CPU can check them): every named axis from the row's shapes, latency at its batch."""
    import inspect

    from l4opt.pipeline import trial
    from l4opt.latency import trt

    run_dir, res = digits_run
    row = next(r for r in res.rows if r["recipe"] == "int8")
    kw = rowspec.engine_kwargs(row)
    inspect.signature(trt.measure_onnx).bind(run_dir / row["onnx_path"], cache_dir=run_dir, **kw)
    assert kw["shapes"] == row["shapes"] and kw["latency_batch"] == row["latency_batch"] == 64
    assert kw["batch_range"] == row["batch_range"] and "int8" in kw["quantized_dtypes"]
    seq_row = {"inputs": [{"name": "ids", "shape": ["batch", "seq"], "dtype": "int64"}],
               "batch_range": [1, 8, 32], "latency_batch": 8,
               "shapes": {"batch": 8, "axes": {"batch": 8, "seq": 128},
                          "inputs": {"ids": [8, 128]}}}
    kw = rowspec.engine_kwargs(seq_row)
    assert trt.dims_from_shapes(seq_row["inputs"], kw["shapes"]) == {"seq": 128}
    assert kw["latency_batch"] == 8


def test_engine_stage_ships_external_weights_with_the_graph(tmp_path):
    """A graph with external-weight files reaches another node whole: onnx_files takes the
    .data files its tensors name, write_onnx_files puts them back beside it, ONNX Runtime
    runs the copy; a name that would leave the folder is refused."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from l4opt.pipeline import trial

    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
                          [numpy_helper.from_array(w, "w")])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              str(src / "model.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    files = onnx_files(src / "model.onnx")
    assert set(files) == {"model.onnx", "weights.bin"}
    path = write_onnx_files(files, tmp_path / "node")
    x = np.ones((2, 64), np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(y, x @ w, atol=1e-4)
    with pytest.raises(BadInput, match="outside"):
        write_onnx_files({"../evil.bin": b"x"}, tmp_path / "node2")
    (src / "weights.bin").unlink()
    with pytest.raises(l4opt.errors.StageFailed, match="weights.bin"):
        onnx_files(src / "model.onnx")


@pytest.mark.gpu
def test_a_measured_row_is_at_the_batch_and_shapes_it_names(tmp_path):
    """On a GPU with TensorRT: the engine is timed at the row's latency batch (the deployment
    batch) and the estimate stays beside it under est_* with its band and notes."""
    row = l4opt.sweep("digits-cnn", "int8", tmp_path, progress=False, batch=16).rows[0]
    assert row["latency_source"].startswith("measured-") and row["latency_batch"] == 16
    assert row["shapes"]["batch"] == 16 and row["latency_low_ms"] == row["latency_ms"]
    assert row["est_latency_source"] == "estimated-l4"
    assert row["est_latency_low_ms"] <= row["est_latency_ms"] <= row["est_latency_high_ms"]
    assert row["est_latency_batch"] == 16 and isinstance(row["est_latency_notes"], list)


def test_a_row_json_whose_database_insert_was_killed_is_served_not_recomputed(tmp_path):
    from l4opt.results.store import Store

    store = Store(tmp_path)
    row = {"key": "k1", "kind": "trial", "workload": "w", "recipe": "r", "status": "ok",
           "created_at": "2026-01-01T00:00:00+00:00", "artifacts": {}}
    d = store.artifact_dir("k1")
    (d / "row.json").write_text(json.dumps(row))  # put() was killed before its database insert
    assert store.row("k1") is None
    assert store.cached("k1")["created_at"] == row["created_at"]
    assert store.row("k1") is not None  # taken back into the database
    (store.artifact_dir("k2") / "row.json").write_text(json.dumps(dict(row, key="other")))
    assert store.cached("k2") is None  # a row.json that is not this trial's is ignored
    store.close()
