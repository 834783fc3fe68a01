"""Shared test fixtures: where the real trtexec exports live, and GPU test gating."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _fixtures_dir() -> Path:
    env = os.environ.get("L4OPT_TRTEXEC_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures" / "trtexec"


@pytest.fixture(scope="session")
def trtexec_dir() -> Path:
    d = _fixtures_dir()
    if not (d / "mobilenet.qat.onnx.engine.graph.json").exists():
        pytest.fail(f"trtexec fixtures not found at {d}; set L4OPT_TRTEXEC_FIXTURES")
    return d


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
