"""What is installed and present: the one place that knows the optional dependencies."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
from functools import lru_cache

from .errors import MissingDependency

# module name -> (pip extra that installs it, distribution name for its version)
OPTIONAL = {
    "tensorrt": ("gpu", "tensorrt"),
    "polygraphy": ("gpu", "polygraphy"),
    "pynvml": ("gpu", "nvidia-ml-py"),
    "cuda": ("gpu", "cuda-python"),
    "plotly": ("notebook", "plotly"),
    "ipywidgets": ("notebook", "ipywidgets"),
    "papermill": ("notebook", "papermill"),
    "ray": ("ray", "ray"),
}

TRACKED_DISTRIBUTIONS = (
    "l4opt", "torch", "nvidia-modelopt", "onnx", "onnxruntime", "onnxruntime-gpu",
    "transformers", "numpy", "tensorrt", "polygraphy",
)


def require(module: str, why: str = ""):
    """Import an optional module, or raise MissingDependency naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = OPTIONAL.get(module.split(".")[0], ("all", module))[0]
        raise MissingDependency(module, extra, why) from exc


def has(module: str) -> bool:
    """True when a module can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of the packages that decide a trial's result (absent ones left out)."""
    return {d: v for d in TRACKED_DISTRIBUTIONS if (v := version(d))}


@lru_cache(maxsize=1)
def gpu() -> dict | None:
    """Name, compute capability and memory of GPU 0 via NVML, or None (never initialises CUDA)."""
    if not has("pynvml"):
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            return {"name": name if isinstance(name, str) else name.decode(),
                    "compute_capability": f"{major}.{minor}", "memory_bytes": int(mem)}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no device: a CPU machine
        return None


def has_tensorrt() -> bool:
    """True when TensorRT's Python bindings import (the PyPI stub without libraries does not)."""
    try:
        import tensorrt  # noqa: F401

        return hasattr(tensorrt, "Builder")
    except Exception:
        return False


@lru_cache(maxsize=1)
def machine() -> dict:
    """Where a number came from: host, CPU, core count, OS, and the GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    g = gpu()
    return {
        "host": platform.node(), "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(),
        "gpu": g["name"] if g else "none",
    }
