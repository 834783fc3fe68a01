"""A full disk during ModelOpt's ONNX PTQ (issue 18, item 10): the failed row names the file
and the step, and no partial file is left (ModelOpt's `*_reconciled.onnx`, `*_opset19.onnx`,
its mkstemp models in TMPDIR, l4opt's temporary files). Real sweeps in a subprocess: one
whose writes exceed its file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG, works without
root), one on a small tmpfs filled to just past the FP32 export (a real ENOSPC; in a user
namespace, skipped where those are not allowed)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

# argv: run dir, mode ("fsize" or "full"). Prints {"row": the int8 row, "files": what the run
# directory holds afterwards, "tmp": what TMPDIR holds}. Two weights of 256x256: the FP32
# export is ~512 KiB, and every intermediate ModelOpt writes is as large.
SCRIPT = textwrap.dedent("""
    import json, os, resource, signal, sys
    from pathlib import Path
    import numpy as np
    import torch
    import l4opt
    from l4opt.pipeline.context import Context
    from l4opt.results.store import Store

    run, mode = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 256)).eval()
    x = np.random.default_rng(0).normal(size=(48, 256)).astype(np.float32)
    w = l4opt.Workload(name="disk-full", model=net, inputs=[l4opt.InputSpec("x", ("batch", 256))],
                       calib_data={"x": x[:16]}, eval_data={"x": x[16:]},
                       metric=l4opt.Metric("cos", lambda o, r, lab: 1.0), batch_size=8,
                       batch_range=(1, 8, 16), min_calib_samples=8)
    ctx = Context(w, Store(run), False)  # the FP32 export and reference, while there is room
    ctx.prepare()
    ctx.reference()
    ctx.store.close()
    size = ctx.base_onnx().stat().st_size
    if mode == "fsize":  # no file may grow past half the graph: the copy for ModelOpt fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))
    else:  # room for the copy ModelOpt is given, not for the models it writes next
        st = os.statvfs(run)
        free = st.f_bavail * st.f_frsize
        with open(run / "ballast", "wb") as f:
            f.write(b"\\0" * (free - int(size * 1.5)))
    row = l4opt.sweep(w, "int8", run, progress=False, latency=False).rows[0]
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != "ballast")
    tmp = sorted(p.name for p in Path(os.environ["TMPDIR"]).iterdir())
    print(json.dumps({"row": {k: row.get(k) for k in ("status", "error")}, "files": files,
                      "tmp": tmp, "size": size}))
""")


def _run(cmd, tmp_path) -> dict:
    tmpdir = tmp_path / "tmpdir"  # ModelOpt's and ONNX Runtime's temporary files, if any
    tmpdir.mkdir()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, TMPDIR=str(tmpdir)))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _no_partial_files(res: dict) -> None:
    left = [f for f in res["files"] if f.endswith(("_reconciled.onnx", "_opset19.onnx",
                                                   "_ir10.onnx", "_named.onnx"))
            or ".tmp" in f or ".l4opt-ptq-" in f or ".calib" in f]
    assert left == [], res["files"]
    assert not [f for f in res["files"] if f.startswith("artifacts/") and
                f.endswith("model.onnx") and "fp32" not in f], res["files"]
    assert res["tmp"] == [], res["tmp"]  # nothing of ModelOpt's left in TMPDIR


@pytest.mark.slow  # a sweep with ModelOpt's ONNX PTQ in a subprocess
def test_a_file_size_limit_names_the_file_and_the_step(tmp_path):
    script = tmp_path / "quantize.py"
    script.write_text(SCRIPT)
    res = _run([sys.executable, str(script), str(tmp_path / "run"), "fsize"], tmp_path)
    row = res["row"]
    assert row["status"] == "failed", row
    err = row["error"]
    assert "onnx-ptq failed" in err and "copying the FP32 graph for ModelOpt" in err, err
    # the file being written (the copy in the trial's work directory), not the one read
    arts = re.escape(str(tmp_path / "run" / "artifacts"))
    assert re.search(rf"cannot write the copy of the FP32 graph to {arts}/\w+/"
                     rf"\.l4opt-ptq-[^/ ]+/model\.fp32\.onnx: ", err), err
    assert "larger than this process may write" in err, err
    _no_partial_files(res)


@pytest.mark.slow  # the same, in a user namespace
def test_a_full_disk_names_the_file_and_modelopt_leaves_nothing_behind(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "quantize.py"
    script.write_text(SCRIPT)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no user namespace for a private tmpfs here: {probe.stderr.strip()}")
    cmd = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=8m tmpfs "$1" && '
           'exec "$2" "$3" "$1/run" full', "sh", str(mnt), sys.executable, str(script)]
    res = _run(cmd, tmp_path)
    row = res["row"]
    assert row["status"] == "failed", row  # and the failed row itself was written
    err = row["error"]
    assert "onnx-ptq failed" in err and "ModelOpt ONNX PTQ (int8, entropy)" in err, err
    arts = re.escape(str(mnt / "run" / "artifacts"))  # the intermediate ModelOpt was writing
    assert re.search(rf"cannot write an intermediate model to {arts}/\w+/\.l4opt-ptq-[^/ ]+/"
                     rf"model\.fp32_\w+\.onnx: ", err), err
    assert "no space left on the device" in err, err
    _no_partial_files(res)


def test_a_work_directory_a_killed_process_left_is_removed_by_the_next_one(tmp_path):
    """SIGKILL mid-quantization leaves ModelOpt's directory behind; the next ONNX-PTQ trial of
    that artifact removes it (its process is gone), and leaves a live process's alone."""
    from l4opt.files import _host
    from l4opt.pipeline.quantize import _work_dir

    host = _host()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id that no longer runs
    dead = tmp_path / f".l4opt-ptq-{host}-{child.pid}-abc"
    live = tmp_path / f".l4opt-ptq-{host}-{os.getpid()}-def"
    for d in (dead, live):
        d.mkdir()
        (d / "model.fp32_reconciled.onnx").write_bytes(b"partial")
    new = _work_dir(tmp_path)
    assert not dead.exists() and live.exists() and new.is_dir()
    assert new.parent == tmp_path and new.name.startswith(f".l4opt-ptq-{host}-{os.getpid()}-")


def test_temporary_files_a_killed_writer_left_are_swept_when_the_trial_dir_is_reused(tmp_path):
    """A SIGKILL between safe_write's temporary file and its rename leaves a hidden
    '.row.json.<host>.<pid>.<tid>.tmp' in the trial's artifact dir; the next use of that dir
    removes it when its pid is gone on this host, and keeps a live writer's and another
    host's (a run directory on a shared filesystem)."""
    from l4opt.files import _host, _tmp_name
    from l4opt.results.store import Store

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    store = Store(tmp_path)
    d = store.artifact_dir("k1")
    mine = _tmp_name("row.json")
    assert mine.startswith(f".row.json.{_host()}.{os.getpid()}.") and mine.endswith(".tmp.json")
    dead = f".row.json.{_host()}.{child.pid}.140001.tmp.json"
    live = f".model.onnx.{_host()}.{os.getpid()}.140002.tmp.onnx"
    other = f".row.json.otherhost.{child.pid}.140003.tmp.json"
    for n in (dead, live, other):
        (d / n).write_bytes(b"partial")
    assert store.artifact_dir("k1") == d
    left = sorted(p.name for p in d.iterdir())
    assert dead not in left and live in left and other in left, left
    store.close()
