"""A trial never writes through a symlink in the run directory (issue 18, item 1): the ONNX-PTQ
stage hands ModelOpt a temporary file and renames it; a symlinked artifact directory is refused."""
from __future__ import annotations

import os
import shutil

import pytest

import l4opt
from l4opt.errors import BadInput

pytestmark = pytest.mark.slow  # real sweeps of digits-cnn


@pytest.mark.parametrize("recipe", ["int8", "int8-max", "baseline"])
def test_a_symlinked_model_onnx_is_never_written_through(tmp_path, recipe):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("precious")
    res = l4opt.sweep("digits-cnn", recipe, run, progress=False)
    key = res.rows[0]["key"]
    art = run / "artifacts" / key / "model.onnx"
    art.unlink()
    art.symlink_to(victim)
    try:
        again = l4opt.sweep("digits-cnn", recipe, run, progress=False, force=True)
        row = again.rows[0]
        assert row["status"] == "failed" and "symlink" in row["error"], row.get("error")
    except BadInput as exc:
        assert "model.onnx" in str(exc) and "symlink" in str(exc)
    assert victim.read_text() == "precious"


def test_a_symlinked_artifact_dir_receives_nothing(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    key = l4opt.sweep("digits-cnn", "int8", run, progress=False).rows[0]["key"]
    shutil.rmtree(run / "artifacts" / key)
    os.symlink(outside, run / "artifacts" / key)
    with pytest.raises(BadInput, match="symlink"):
        l4opt.sweep("digits-cnn", "int8", run, progress=False, force=True)
    assert list(outside.iterdir()) == []
