"""l4opt: which precision recipe to ship on an NVIDIA L4, and what it costs in accuracy.

`import l4opt` stays light: torch, ModelOpt, ONNX Runtime and TensorRT load when a verb needs them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "sweep": ("l4opt.run.sweep", "sweep"),
    "SweepResult": ("l4opt.run.sweep", "SweepResult"),
    "Workload": ("l4opt.spec.workloads", "Workload"),
    "InputSpec": ("l4opt.spec.workloads", "InputSpec"),
    "Metric": ("l4opt.spec.workloads", "Metric"),
    "Recipe": ("l4opt.spec.recipes", "Recipe"),
    "search": ("l4opt.precision.api", "search"),
    "sensitivity": ("l4opt.precision.api", "sensitivity"),
    "plan": ("l4opt.fleet.plan", "plan"),
}
# the layers, lowest first; each imports only from those before it (tests/unit/test_layers.py)
LAYERS = ("errors", "env", "files", "spec", "onnx", "results", "latency", "fleet", "pipeline",
          "run", "precision", "ui", "cli")
_SUBMODULES = set(LAYERS)

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"l4opt.{name}")
    raise AttributeError(f"module 'l4opt' has no attribute {name!r}")
