"""What is installed and present: the one place that knows the optional dependencies."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
from functools import lru_cache

from l4opt.errors import MissingDependency

# module name -> (pip extra that installs it, distribution name for its version)
OPTIONAL = {
    "tensorrt": ("gpu", "tensorrt"),
    "pynvml": ("gpu", "nvidia-ml-py"),
    "cuda": ("gpu", "cuda-python"),
    "ray": ("ray", "ray"),
}
# module name -> distribution: base dependencies (pyproject `dependencies`) imported lazily; when
# one is missing the install is broken and reinstalling l4opt brings it back (no extra holds it)
BASE = {
    "plotly": "plotly",
    "ipywidgets": "ipywidgets",
    "papermill": "papermill",
    "nbformat": "nbformat",
    "nbclient": "nbclient",
    "polygraphy": "polygraphy",
    "anywidget": "anywidget",
}

TRACKED_DISTRIBUTIONS = (
    "l4opt", "torch", "nvidia-modelopt", "onnx", "onnxruntime", "onnxruntime-gpu",
    "transformers", "numpy", "tensorrt", "polygraphy",
)


def require(module: str, why: str = ""):
    """Import a lazily imported module, or raise MissingDependency saying how to install it:
    the extra that holds it, or (a base dependency) reinstalling l4opt."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(module, why) from exc


def missing(module: str, why: str = "") -> MissingDependency:
    """The MissingDependency for `module`, its message naming the right install command."""
    top = module.split(".")[0]
    if top in OPTIONAL:
        return MissingDependency(module, OPTIONAL[top][0], why)
    err = MissingDependency(module, "", why)
    dist = BASE.get(top, top)
    msg = (f"{module!r} is not installed, yet it is a dependency of l4opt itself ({dist}): the "
           f"install is incomplete. Reinstall l4opt: `pip install -e .` in a checkout, or "
           f"`pip install --force-reinstall l4opt`")
    err.msg = f"{why}: {msg}" if why else msg  # ImportError's str() is its msg
    err.args = (err.msg,)
    return err


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


# ------------------------------------------------------------------ progress bars

def in_kernel():
    """The running Jupyter kernel's IPython shell, or None (a terminal, a script, plain
    IPython): the rule tqdm.autonotebook uses to pick its widget bars."""
    import sys

    ip = sys.modules.get("IPython")
    try:
        shell = ip.get_ipython() if ip is not None else None
    except Exception:
        return None
    return shell if shell is not None and "IPKernelApp" in getattr(shell, "config", {}) else None


def progress(iterable=None, **kwargs):
    """A tqdm progress bar. In a Jupyter kernel: text lines of the running cell, one output
    updated in place (no ipywidget, so nothing dead after a page reload or a restart, and no
    comm, whose subshell request makes JupyterLab show the kernel Idle while the cell runs);
    elsewhere tqdm's terminal bar on `file`."""
    from tqdm.std import tqdm

    if in_kernel() is None:
        return tqdm(iterable, **kwargs)
    return _cell_bar_class()(iterable, **kwargs)


class _CellLines:
    """The progress lines of the cell that runs now, shown as one display output (updated with
    update_display_data); a bar that closes with leave=False takes its line away."""

    def __init__(self):
        import itertools
        import threading

        self.lock, self.ids = threading.Lock(), itertools.count()
        self.cell, self.handle, self.lines = None, None, {}

    def set(self, line: int, text: str) -> None:
        from IPython.display import display

        cell = _cell_id(in_kernel())
        with self.lock:
            if cell != self.cell:  # another cell: its own output
                self.cell, self.handle, self.lines = cell, None, {}
            if text:
                self.lines[line] = text
            else:
                self.lines.pop(line, None)
            body = {"text/plain": "\n".join(self.lines.values())}
            if self.handle is None:
                if text:
                    self.handle = display(body, raw=True, display_id=True)
            else:
                self.handle.update(body, raw=True)


_CELL = _CellLines()


def _cell_id(shell):
    """The msg_id of the request the kernel runs now (one per cell execution)."""
    kernel = getattr(shell, "kernel", None)
    try:
        parent = kernel.get_parent() if hasattr(kernel, "get_parent") else \
            getattr(shell, "parent_header", None)
    except Exception:
        parent = None
    return ((parent or {}).get("header") or {}).get("msg_id")


@lru_cache(maxsize=1)
def _cell_bar_class():
    import io

    from tqdm.std import tqdm

    class _Null(io.TextIOBase):
        encoding = "utf-8"

        def write(self, s):
            return len(s)

    class CellBar(tqdm):
        """tqdm drawn as a line of the running cell's progress output, never as a widget."""

        def __init__(self, *args, **kwargs):
            kwargs["file"] = _Null()
            kwargs.setdefault("mininterval", 0.5)
            self._l4opt_line = next(_CELL.ids)
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None):
            _CELL.set(self._l4opt_line, self.__str__() if msg is None else msg)
            return True

    return CellBar
