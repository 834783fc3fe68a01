"""safe_write / safe_output / Store: nothing is written through a symlink or outside the run
directory, a full or read-only disk names the file, and no partial file is left (issue 18)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from l4opt.errors import BadInput
from l4opt.files import safe_mkdir, safe_output, safe_write
from l4opt.results.store import Store


@pytest.fixture()
def victim(tmp_path):
    v = tmp_path / "victim.txt"
    v.write_text("precious")
    return v


def test_a_symlinked_target_is_refused_and_its_target_kept(tmp_path, victim):
    run = tmp_path / "run"
    (run / "artifacts" / "k").mkdir(parents=True)
    link = run / "artifacts" / "k" / "model.onnx"
    link.symlink_to(victim)
    with pytest.raises(BadInput, match="model.onnx.*symlink"):
        safe_write(link, b"new onnx", run)
    assert victim.read_text() == "precious" and link.is_symlink()
    with pytest.raises(BadInput, match="symlink"):
        with safe_output(link, run) as tmp:
            tmp.write_bytes(b"new onnx")
    assert victim.read_text() == "precious"
    assert [p.name for p in link.parent.iterdir()] == ["model.onnx"]  # no temp file left


def test_a_symlinked_parent_is_refused_before_anything_is_written(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir(), outside.mkdir()
    (run / "artifacts").symlink_to(outside)
    for target in (run / "artifacts" / "row.json", run / "artifacts" / "k" / "row.json"):
        with pytest.raises(BadInput, match=f"{run / 'artifacts'}.* is a symlink"):
            safe_write(target, "{}", run)
    with pytest.raises(BadInput, match="symlink"):
        safe_mkdir(run / "artifacts" / "k", run)
    assert list(outside.iterdir()) == []


def test_paths_leaving_the_run_directory_are_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for bad in (run / ".." / "x", tmp_path / "x", Path("/etc/l4opt-probe"), run):
        with pytest.raises(BadInput, match="not inside the run directory"):
            safe_write(bad, "x", run)
    assert not (tmp_path / "x").exists()


def test_writes_are_atomic_and_replace_the_old_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    safe_write(run / "a" / "b" / "f.json", "one", run)
    safe_write(run / "a" / "b" / "f.json", "two", run)
    with safe_output(run / "a" / "w.npz", run, "arrays") as tmp:
        assert tmp.parent == run / "a" and tmp.suffix == ".npz"
        np.savez(tmp, x=np.arange(3))
    assert (run / "a" / "b" / "f.json").read_text() == "two"
    assert sorted(p.name for p in (run / "a").iterdir()) == ["b", "w.npz"]
    with pytest.raises(RuntimeError):
        with safe_output(run / "a" / "w.npz", run) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the library failed")
    assert sorted(p.name for p in (run / "a").iterdir()) == ["b", "w.npz"]


def test_store_refuses_symlinked_artifact_dirs_and_rows(tmp_path, victim):
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    store = Store(run)
    (run / "artifacts" / "k1").symlink_to(outside)
    with pytest.raises(BadInput, match="k1.*symlink"):
        store.artifact_dir("k1")
    with pytest.raises(BadInput, match="symlink"):
        store.put({"key": "k1", "status": "ok"})
    assert list(outside.iterdir()) == []
    (run / "artifacts" / "k2").mkdir()
    (run / "artifacts" / "k2" / "row.json").symlink_to(victim)
    with pytest.raises(BadInput, match="row.json.*symlink"):
        store.put({"key": "k2", "status": "ok"})
    assert victim.read_text() == "precious"
    (run / "artifacts" / "arrays").symlink_to(outside)
    with pytest.raises(BadInput, match="arrays.*symlink"):
        store.save_arrays("ref", {"out": np.ones(2)})
    assert list(outside.iterdir()) == []
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(BadInput, match="not a safe directory name"):
            store.artifact_dir(bad)
    store.close()


@pytest.fixture()
def small_fs(tmp_path):
    """A real 64 KiB file system (tmpfs), unmounted afterwards; skipped where mounting is not
    allowed (not root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(small_fs):
    run = small_fs / "run"
    store = Store(run)
    d = store.artifact_dir("k")
    with pytest.raises(BadInput) as e:
        safe_write(d / "model.fp32_reconciled.onnx", os.urandom(1 << 20), run,
                   what="the reconciled FP32 export")
    msg = str(e.value)
    assert "model.fp32_reconciled.onnx" in msg and "reconciled FP32 export" in msg
    assert "no space left" in msg
    assert list(d.iterdir()) == []
    with pytest.raises(BadInput, match="no space left"):
        with safe_output(d / "model.onnx", run, "the ONNX export") as tmp:
            with open(tmp, "wb") as f:
                f.write(os.urandom(1 << 20))
    assert list(d.iterdir()) == []
    store.close()


def test_a_read_only_disk_names_the_file(small_fs):
    run = small_fs / "run"
    Store(run).close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(BadInput, match=r"cannot write the row .*row.json.*permission denied"):
        safe_write(run / "artifacts" / "row.json", "{}", run, what="the row")


def test_a_symlinked_log_is_never_appended_through(tmp_path, victim):
    from l4opt.files import safe_append_fd

    run = tmp_path / "run"
    (run / "artifacts" / "k").mkdir(parents=True)
    log = run / "artifacts" / "k" / "trial.log"
    log.symlink_to(victim)
    with pytest.raises(BadInput, match="trial.log.*symlink"):
        safe_append_fd(log, run)
    assert victim.read_text() == "precious"
    log.unlink()
    for line in (b"one\n", b"two\n"):
        with os.fdopen(safe_append_fd(log, run), "ab") as f:
            f.write(line)
    assert log.read_bytes() == b"one\ntwo\n"
