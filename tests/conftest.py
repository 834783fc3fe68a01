"""Shared test fixtures: the real trtexec exports the repo carries, and GPU test gating."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


FIXTURES = REPO / "tests" / "fixtures" / "trtexec"  # carried by the repo (see its README)


@pytest.fixture(scope="session")
def trtexec_dir() -> Path:
    if not (FIXTURES / "mobilenet.qat.onnx.engine.graph.json").exists():
        pytest.fail(f"trtexec fixtures missing from the repo at {FIXTURES}")
    return FIXTURES


def pytest_collection_modifyitems(config, items):
    from l4opt import env

    if env.has_tensorrt() and env.gpu() is not None:
        return
    reason = "needs an NVIDIA GPU with TensorRT 10/11 libraries; this machine has " + (
        "no GPU" if env.gpu() is None else "no TensorRT libraries")
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
