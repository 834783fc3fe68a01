"""Bundle for a remote L4 and import of its trtexec results, with real trtexec exports."""
import json
import shutil
import subprocess

import pytest

import l4opt
from l4opt import bundle
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
        assert f"run_trial {r['key']} image:@B@x1x8x8 image:64x1x8x8 image:256x1x8x8" in script
    for flag in ("--stronglyTyped", "--builderOptimizationLevel=3", "--timingCacheFile",
                 "--noDataTransfers", "--useCudaGraph", "--separateProfileRun", "--useSpinWait",
                 "--profilingVerbosity=detailed", "--exportTimes", "--exportProfile",
                 "--exportLayerInfo", "--warmUp=200", "--duration=3"):
        assert flag in script, flag
    assert subprocess.run(["bash", "-n", str(bundle_dir / "build_and_profile.sh")]).returncode == 0
    if shutil.which("shellcheck"):
        sc = subprocess.run(["shellcheck", "-S", "warning", str(bundle_dir / "build_and_profile.sh")],
                            capture_output=True, text=True)
        assert sc.returncode == 0, sc.stdout


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
    assert row["latency_source"] == "measured-titan-rtx" and row["latency_estimate_source"] == "estimated-l4"
    assert row["latency_ms"] == pytest.approx(0.351196, abs=1e-6) and row["latency_estimate_ms"] > 0
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
