"""Bundle import trusts nothing in the bundle (issue 18): only regular files inside it, sizes
bounded, every manifest and timing field checked with one BadInput naming the file and the
field, nothing written to the run unless the whole import validates; bundle and import refuse
a run directory that does not exist and create nothing; bundle -o elsewhere reads a read-only
run. Real files, a real run directory (Store), hand-made bundles."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from l4opt.cli import main
from l4opt.errors import BadInput
from l4opt.latency import bundle
from l4opt.results.store import Store

TIMING = Path(__file__).resolve().parents[2] / "fixtures" / "trtexec" / \
    "synthesized.trt10.b8.engine.timing.json"
IDS = ("t1", "t2")


def _row(key):
    return {"key": key, "kind": "trial", "status": "ok", "recipe": "int8", "workload": "w",
            "created_at": key, "latency_ms": 2.0, "latency_source": "estimated-l4",
            "inputs": [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}],
            "onnx_path": f"artifacts/{key}/model.onnx", "batch_range": [1, 4, 8],
            "latency_batch": 4}


@pytest.fixture()
def run(tmp_path):
    d = tmp_path / "run"
    s = Store(d)
    for k in IDS:
        s.put(_row(k))
    s.close()
    return d


def _rows(run):
    s = Store(run, readonly=True)
    try:
        return {r["key"]: r for r in s.rows()}
    finally:
        s.close()


@pytest.fixture()
def bdir(tmp_path):
    """A bundle as the script leaves it on an L4: a manifest and real timing exports."""
    b = tmp_path / "bundle"
    (b / "results").mkdir(parents=True)
    (b / "manifest.json").write_text(json.dumps({"trials": [
        {"trial_id": k, "latency_batch": 4, "batches": [1, 4, 8]} for k in IDS]}))
    for k in IDS:
        d = b / "results" / k
        d.mkdir()
        shutil.copyfile(TIMING, d / f"{k}.engine.timing.json")
        (d / "build.args").write_text("--onnx=onnx/x.onnx\n")
        (d / "trtexec.log").write_text("[I] Selected Device: NVIDIA L4\n")
    return b


@pytest.fixture()
def secret(tmp_path):
    s = tmp_path / "secret.txt"
    s.write_text("root:x:0:0:SECRET")
    return s


def _timing(b, key="t2"):
    return b / "results" / key / f"{key}.engine.timing.json"


def _refused(run, b, match):
    before = _rows(run)
    with pytest.raises(BadInput, match=match):
        bundle.import_bundle(run, b)
    assert _rows(run) == before  # nothing written to the run


def test_a_good_bundle_imports(run, bdir):
    rows = bundle.import_bundle(run, bdir)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    got = _rows(run)["t1"]
    assert got["latency_source"].startswith("measured") and got["latency_ms"] > 0
    assert got["trtexec_build_args"] == ["--onnx=onnx/x.onnx"]


def test_symlinks_inside_a_bundle_are_never_read(run, bdir, secret, tmp_path):
    args = bdir / "results" / "t1" / "build.args"
    args.unlink()
    args.symlink_to(secret)
    _refused(run, bdir, r"build.args is a symlink")
    args.unlink()
    t = _timing(bdir)
    t.unlink()
    t.symlink_to(TIMING)
    _refused(run, bdir, r"t2.engine.timing.json is a symlink")
    t.unlink()
    shutil.copyfile(TIMING, t)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(bdir / "results" / "t2", elsewhere)
    (bdir / "results" / "t2").symlink_to(elsewhere)
    _refused(run, bdir, r"results/t2 is a symlink")
    assert "SECRET" not in json.dumps(_rows(run))


@pytest.mark.parametrize("trial_id", ["../../../../tmp/x", "/etc", "..", 12345, "", "a\0b",
                                      ["t1"]])
def test_unsafe_trial_ids_are_refused(run, bdir, trial_id):
    (bdir / "manifest.json").write_text(json.dumps({"trials": [{"trial_id": trial_id}]}))
    _refused(run, bdir, r"manifest.json: trials\[0\].trial_id")


@pytest.mark.parametrize("manifest, field", [
    ([], "expected a JSON object"),
    ({}, "'trials' must be a list"),
    ({"trials": {"t1": {}}}, "'trials' must be a list"),
    ({"trials": ["t1"]}, r"trials\[0\] must be an object"),
    ({"trials": [{"trial_id": "t1", "latency_batch": "abc"}]}, r"trials\[0\].latency_batch"),
    ({"trials": [{"trial_id": "t1", "latency_batch": 0}]}, r"trials\[0\].latency_batch"),
    ({"trials": [{"trial_id": "t1", "latency_batch": True}]}, r"trials\[0\].latency_batch"),
    ({"trials": [{"trial_id": "t1", "batches": "xyz"}]}, r"trials\[0\].batches"),
    ({"trials": [{"trial_id": "t1", "batches": [4, -1]}]}, r"trials\[0\].batches\[1\]"),
    ({"trials": [{"trial_id": "t1"}, {"trial_id": "t1"}]}, r"trials\[1\].trial_id"),
])
def test_malformed_manifests_are_one_clear_error(run, bdir, manifest, field):
    (bdir / "manifest.json").write_text(json.dumps(manifest))
    _refused(run, bdir, field)


def _edit_records(path, fn):
    recs = json.loads(path.read_text())
    fn(recs)
    path.write_text(json.dumps(recs))


@pytest.mark.parametrize("edit, field", [
    (lambda r: r[3].update(computeMs=-5), r"record 3 field computeMs = -5"),
    (lambda r: r[3].update(computeMs="fast"), r"record 3 field computeMs = 'fast'"),
    (lambda r: r[3].update(computeMs=float("nan")), r"record 3 field computeMs = nan"),
    (lambda r: r[3].update(latencyMs=float("inf")), r"record 3 field latencyMs = inf"),
    (lambda r: r[0].pop("endComputeMs"), r"record 0 has no endComputeMs"),
    (lambda r: r[5].pop("startEnqMs"), r"record 5 has no startEnqMs"),
    (lambda r: r.__setitem__(2, [1, 2]), r"record 2 is list"),
    (lambda r: r.clear(), r"not a per-iteration timing export"),
    (lambda r: r[4].update(endComputeMs=0), r"record 4 ends"),
])
def test_impossible_or_malformed_timings_are_refused_and_nothing_is_imported(run, bdir, edit,
                                                                            field):
    _edit_records(_timing(bdir), edit)  # t1 is fine, t2 is not: neither is imported
    _refused(run, bdir, r"t2.engine.timing.json:? (is )?" + field)


def test_a_timing_of_a_batch_is_checked_too(run, bdir):
    b8 = bdir / "results" / "t1" / "t1.engine.b8.timing.json"
    shutil.copyfile(TIMING, b8)
    _edit_records(b8, lambda r: r[0].update(computeMs=-1))
    _refused(run, bdir, r"t1.engine.b8.timing.json: record 0 field computeMs")


def test_json_nested_too_deep_is_refused(run, bdir):
    _timing(bdir).write_text("[" * 200_000 + "]" * 200_000)
    _refused(run, bdir, r"t2.engine.timing.json nests JSON too deep")
    (bdir / "manifest.json").write_text("{\"trials\": " + "[" * 200_000 + "]" * 200_000 + "}")
    _refused(run, bdir, r"manifest.json nests JSON too deep")


def test_files_over_the_size_limit_are_refused(run, bdir, monkeypatch):
    assert bundle.MAX_TIMING_BYTES == 64 << 20  # the documented limit
    monkeypatch.setattr(bundle, "MAX_TIMING_BYTES", TIMING.stat().st_size - 1)
    _refused(run, bdir, r"t1.engine.timing.json is larger than")


def test_a_manifest_that_is_not_a_regular_file_is_refused(run, bdir):
    (bdir / "manifest.json").unlink()
    (bdir / "manifest.json").mkdir()
    _refused(run, bdir, "manifest.json")


def test_import_and_bundle_refuse_a_missing_run_directory_and_create_nothing(bdir, tmp_path,
                                                                           capsys):
    missing = tmp_path / "no-such-run"
    assert main(["import", str(missing), str(bdir), "--json"]) == 2
    assert main(["bundle", str(missing)]) == 2
    assert main(["bundle", str(missing), "-o", str(tmp_path / "b2")]) == 2
    err = capsys.readouterr().err
    assert err.count("does not exist") == 3
    assert not missing.exists() and not (tmp_path / "b2").exists()


def _tiny_onnx(path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
                          [w])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]), str(path))


def test_bundle_reads_no_symlinked_artifact(run, secret, tmp_path):
    (run / "artifacts" / "t2" / "model.onnx").symlink_to(secret)
    _tiny_onnx(run / "artifacts" / "t1" / "model.onnx")
    with pytest.raises(BadInput, match="model.onnx is a symlink"):
        bundle.bundle_run(run, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*.onnx")) if (tmp_path / "out").exists() else True


def test_bundle_elsewhere_works_on_a_read_only_run_directory(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (not root): {r.stderr.strip()}")
    try:
        run = mnt / "run"
        s = Store(run)
        s.put(_row("t1"))
        s.close()
        _tiny_onnx(run / "artifacts" / "t1" / "model.onnx")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        assert main(["bundle", str(run), "-o", str(tmp_path / "b")]) == 0
        assert (tmp_path / "b" / "onnx" / "t1.onnx").exists()
        assert "run_trial t1" in (tmp_path / "b" / "build_and_profile.sh").read_text()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
