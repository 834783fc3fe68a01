"""The study of a recipe, by its route: one protocol (layers, kind, evaluate, fraction_quantized) for
the torch and the ONNX studies, in a registry."""
from __future__ import annotations

from typing import Protocol

from l4opt.errors import BadInput
from l4opt.precision.onnx_study import OnnxStudy
from l4opt.precision.torch_study import Calibrated
from l4opt.spec.recipes import Recipe
from l4opt.spec.workloads import Workload


class Study(Protocol):
    """What sensitivity and the searches need of a study."""

    drift_backend: str
    evaluations: int

    @property
    def layers(self) -> list[str]: ...
    def kind(self, layer: str) -> str: ...
    def evaluate(self, enabled) -> dict: ...
    def fraction_quantized(self, enabled) -> float: ...
    def close(self) -> None: ...


def _onnx(w, r, eval_samples, progress, workdir, batch, dims, mixed, tty) -> Study:
    return OnnxStudy(w, r, eval_samples, progress, workdir, mixed=mixed, batch=batch, dims=dims,
                     tty=tty)


def _torch(w, r, eval_samples, progress, workdir, batch, dims, mixed, tty) -> Study:
    return Calibrated(w, r, eval_samples, progress, tty, batch=batch, dims=dims)


# a recipe's route -> the study of what the sweep measures for it
STUDIES = {"onnx-ptq": _onnx, "torch-ptq": _torch}


def study_for(w: Workload, r: Recipe, eval_samples, progress: bool, workdir, batch=None,
              dims=None, mixed: bool = True, tty=None) -> Study:
    """The study of the quantization the sweep measures for this recipe."""
    if r.route not in STUDIES:
        raise BadInput(f"recipe {r.name!r} quantizes nothing (route {r.route!r}); choose a "
                       f"quantizing recipe")
    return STUDIES[r.route](w, r, eval_samples, progress, workdir, batch, dims, mixed, tty)
