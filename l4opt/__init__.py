"""l4opt: which precision recipe to ship on an NVIDIA L4, and what it costs in accuracy.

`import l4opt` stays light: torch, ModelOpt, ONNX Runtime and TensorRT load when a verb needs them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "sweep": ("l4opt.sweeps", "sweep"),
    "SweepResult": ("l4opt.sweeps", "SweepResult"),
    "Workload": ("l4opt.workloads", "Workload"),
    "InputSpec": ("l4opt.workloads", "InputSpec"),
    "Metric": ("l4opt.workloads", "Metric"),
    "Recipe": ("l4opt.recipes", "Recipe"),
    "search": ("l4opt.searches", "search"),
    "sensitivity": ("l4opt.searches", "sensitivity"),
}
_SUBMODULES = {"workloads", "recipes", "errors", "env", "store", "drift", "export", "quantize",
               "runners", "estimate", "engine_report", "bench", "trt", "bundle", "plots",
               "widgets", "report", "cli", "sweeps", "searches", "shapes", "names", "trial", "costmodel", "mixed", "tables", "userload",
               "qdq", "cluster", "execute"}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"l4opt.{name}")
    raise AttributeError(f"module 'l4opt' has no attribute {name!r}")
