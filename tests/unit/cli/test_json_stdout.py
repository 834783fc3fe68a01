"""--json output is the only thing on stdout (issue 18): whatever a library, native code or a
child process prints while the verb runs (Ray's "worker died" lines among them) goes to
stderr. Real subprocess runs of the CLI, whose stdout must parse as JSON."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

NOISE = """
import os, subprocess, sys
import l4opt.latency.estimate as est
real = est.estimate_onnx
def noisy(*a, **k):
    print("(raylet) A worker died or was killed while executing a task")  # Python level
    sys.stdout.flush()
    os.write(1, b"native library noise on fd 1\\n")  # C level
    subprocess.run(["echo", "child process noise"])  # inherits fd 1
    return real(*a, **k)
est.estimate_onnx = noisy
from l4opt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    p = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]), str(p))
    return p


def _run(*args, code=None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "l4opt.cli",
                                                             *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_noise_during_a_json_verb_goes_to_stderr(tiny_onnx):
    r = _run("estimate", "--onnx", str(tiny_onnx), "--json", code=NOISE)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # nothing else on stdout
    assert isinstance(doc, dict) and doc
    for noise in ("worker died", "native library noise", "child process noise"):
        assert noise in r.stderr and noise not in r.stdout


def test_without_json_the_text_stays_on_stdout(tiny_onnx):
    r = _run("estimate", "--onnx", str(tiny_onnx), code=NOISE)
    assert r.returncode == 0, r.stderr
    assert "worker died" in r.stdout and "ESTIMATE" in r.stdout.upper()


def test_a_json_verb_that_fails_prints_nothing_on_stdout(tmp_path):
    r = _run("import", str(tmp_path / "no-run"), str(tmp_path / "no-bundle"), "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert "does not exist" in r.stderr
    assert not (tmp_path / "no-run").exists()
