"""Bundle for a remote L4 and import of its trtexec results, with real trtexec exports."""
import json
import shutil
import subprocess

import pytest

import l4opt
from l4opt.latency import bundle
from l4opt.errors import BadInput

FIXTURE = "mobilenet.qat.onnx.engine"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    res = l4opt.sweep("digits-cnn", "baseline,int8,fp8", d, progress=False)
    return d, res


@pytest.fixture()
def bundle_dir(run, tmp_path):
    return bundle.bundle_run(run[0], tmp_path / "bundle")


def test_bundle_has_every_onnx_a_manifest_and_a_valid_script(run, bundle_dir):
    run_dir, res = run
    man = json.loads((bundle_dir / "manifest.json").read_text())
    assert [t["trial_id"] for t in man["trials"]] == [r["key"] for r in res.rows]
    script = (bundle_dir / "build_and_profile.sh").read_text()
    for r in res.rows:
        assert (bundle_dir / "onnx" / f"{r['key']}.onnx").read_bytes() == \
            (run_dir / r["onnx_path"]).read_bytes()
        lo, opt, hi = r["batch_range"]
        lb = r["latency_batch"]
        assert (f"run_trial {r['key']} 3 4096 image:{lo}x1x8x8 image:{opt}x1x8x8 "
                f"image:{hi}x1x8x8 image:@B@x1x8x8 {lb} "
                + " ".join(str(b) for b in sorted({lb, lo, opt, hi}))) in script
    for flag in ("--stronglyTyped", "--builderOptimizationLevel=", "--timingCacheFile",
                 "--noDataTransfers", "--useCudaGraph", "--separateProfileRun", "--useSpinWait",
                 "--profilingVerbosity=detailed", "--exportTimes", "--exportProfile",
                 "--exportLayerInfo", "--warmUp=200", "--duration=3"):
        assert flag in script, flag
    assert subprocess.run(["bash", "-n", str(bundle_dir / "build_and_profile.sh")]).returncode == 0
    # shellcheck and the runs per TensorRT version: tests/e2e/test_trtexec_standin.py


def test_script_refuses_to_run_without_trtexec(bundle_dir):
    out = subprocess.run(["bash", str(bundle_dir / "build_and_profile.sh")], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "TRTEXEC": "no-such-trtexec"})
    assert out.returncode == 2 and "trtexec not found" in out.stderr


def _fake_remote_results(bundle_dir, trial_id, trtexec_dir, device="NVIDIA TITAN RTX"):
    """What the script leaves behind on a GPU machine: here the real exports of a real engine."""
    d = bundle_dir / "results" / trial_id
    d.mkdir(parents=True)
    for suffix in (".graph.json", ".profile.json", ".timing.json"):
        shutil.copyfile(trtexec_dir / f"{FIXTURE}{suffix}", d / f"{trial_id}.engine{suffix}")
    (d / "trtexec.log").write_text(f"=== Device Information ===\n[I] Selected Device: {device}\n")


def test_read_bundle_measures_from_real_timings(run, bundle_dir, trtexec_dir):
    run_dir, res = run
    first, second = res.rows[0]["key"], res.rows[1]["key"]
    _fake_remote_results(bundle_dir, first, trtexec_dir)
    (bundle_dir / "results" / second).mkdir(parents=True)  # the build failed there
    rows = {r["trial_id"]: r for r in bundle.read_bundle(bundle_dir)}
    summary = json.loads((trtexec_dir / f"{FIXTURE}.profile.metadata.json").read_text())
    median = summary["performance_summary"]["GPU Compute Time"][3]
    ok = rows[first]
    assert ok["status"] == "ok" and ok["gpu"] == "NVIDIA TITAN RTX"
    assert ok["latency_source"] == "measured-titan-rtx"  # measured, but not on an L4
    assert ok["latency_ms_median"] == pytest.approx(median, abs=1e-6)
    assert ok["latency_ms_p99"] == pytest.approx(summary["performance_summary"]["GPU Compute Time"][6])
    assert rows[second]["status"] == "missing" and "trtexec.log" in rows[second]["reason"]
    assert rows[res.rows[2]["key"]]["status"] == "missing"


def test_import_puts_measurements_beside_the_estimate(run, bundle_dir, trtexec_dir):
    run_dir, res = run
    key = res.rows[1]["key"]
    _fake_remote_results(bundle_dir, key, trtexec_dir)
    rows = bundle.import_bundle(run_dir, bundle_dir)
    assert sum(r["status"] == "ok" for r in rows) == 1
    again = l4opt.sweep("digits-cnn", "baseline,int8,fp8", run_dir, progress=False)
    row = {r["key"]: r for r in again.rows}[key]
    assert row["latency_source"] == "measured-titan-rtx" and row["est_latency_source"] == "estimated-l4"
    assert row["latency_ms"] == pytest.approx(0.351196, abs=1e-6) and row["est_latency_ms"] > 0
    # one name for the estimate kept beside a measurement, with its band; the measurement's
    # band is itself; latency and throughput at the batch the row names
    before = {r["key"]: r for r in res.rows}[key]
    assert (row["est_latency_ms"], row["est_latency_low_ms"], row["est_latency_high_ms"]) == (
        before["latency_ms"], before["latency_low_ms"], before["latency_high_ms"])
    assert row["est_latency_notes"] == before["latency_notes"]
    assert row["latency_low_ms"] == row["latency_high_ms"] == row["latency_ms"]
    assert row["throughput_batch"] == row["latency_batch"]
    assert not any(k.startswith("latency_estimate") for k in row)
    # importing again keeps the estimate, not the first measurement, as est_*
    bundle.import_bundle(run_dir, bundle_dir)
    row2 = {r["key"]: r for r in l4opt.sweep("digits-cnn", "baseline,int8,fp8", run_dir,
                                             progress=False).rows}[key]
    assert row2["est_latency_ms"] == before["latency_ms"]
    others = [r for r in again.rows if r["key"] != key]
    assert all(r["latency_source"] == "estimated-l4" for r in others)


def test_results_of_an_unknown_trial_are_refused(bundle_dir):
    (bundle_dir / "results" / "not-a-trial").mkdir(parents=True)
    with pytest.raises(BadInput, match="not in the manifest"):
        bundle.read_bundle(bundle_dir)


def test_cli_bundle_and_import(run, tmp_path):
    from l4opt.cli import main

    assert main(["bundle", str(run[0]), "-o", str(tmp_path / "b")]) == 0
    assert main(["import", str(run[0]), str(tmp_path / "b"), "--json"]) == 1  # nothing measured yet
    assert main(["bundle", str(tmp_path / "empty")]) == 2


def _inputs(*shape, name="ids"):
    return [{"name": name, "shape": list(shape), "dtype": "int64"}]


def test_plan_uses_the_rows_shapes_and_batches(tmp_path):
    plan = bundle.trial_plan({"inputs": _inputs("batch", "seq"), "batch_range": [4, 16, 64],
                              "shapes": {"inputs": {"ids": [16, 128]}, "axes": {"batch": 16, "seq": 128}},
                              "latency_batch": 1}, bundle.BuildSettings())
    # a named non-batch axis takes the recorded value; the latency batch stays in the profile
    assert (plan["min"], plan["opt"], plan["max"]) == ("ids:4x128", "ids:16x128", "ids:64x128")
    assert plan["run"] == "ids:@B@x128" and plan["latency_batch"] == 4
    assert plan["batches"] == [4, 16, 64]
    old_row = {"inputs": _inputs("batch", "seq"), "shapes": {"ids": [8, 32]}}
    assert bundle.trial_plan(old_row, bundle.BuildSettings())["min"] == "ids:1x32"
    with pytest.raises(BadInput, match="seq"):  # nothing says how long a sequence is
        bundle.trial_plan({"inputs": _inputs("batch", "seq")}, bundle.BuildSettings())
    static = bundle.trial_plan({"inputs": _inputs(2, 5)}, bundle.BuildSettings())
    assert static["min"] == "" and static["run"] == "" and static["batches"] == [1]


def test_external_weights_keep_their_location(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(64 * 8, dtype=np.float32).reshape(64, 8), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w])
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(helper.make_model(g), str(src), save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    out = bundle.write_bundle([{"trial_id": "t1", "onnx_path": str(src),
                                "inputs": [{"name": "x", "shape": ["batch", 64]}]}],
                              tmp_path / "b")
    copied = onnx.load(str(out / "onnx" / "t1.onnx"))  # loads the weights by their location
    np.testing.assert_array_equal(numpy_helper.to_array(copied.graph.initializer[0]),
                                  numpy_helper.to_array(w))
    loc = {e.key: e.value for e in onnx.load(str(out / "onnx" / "t1.onnx"),
                                            load_external_data=False).graph.initializer[0].external_data}
    assert loc["location"] == "t1.onnx.data" and (out / "onnx" / "t1.onnx.data").exists()
    assert json.loads((out / "manifest.json").read_text())["trials"][0]["external_weights"] == \
        ["t1.onnx.data"]
