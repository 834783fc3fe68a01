"""A torch-PTQ recipe studied in torch: quantizer groups toggled on one calibrated model."""
from __future__ import annotations

import copy
import time

import numpy as np

from l4opt.errors import BadInput
from l4opt.precision.common import measure, one_output, reference_outputs, subset
from l4opt.spec.recipes import Recipe
from l4opt.spec.workloads import Workload

MATMUL_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d")


def torch_form(recipe: Recipe) -> Recipe:
    """The torch-PTQ recipe with the same format and algorithm (quantizers are per module)."""
    if recipe.route == "torch-ptq":
        return recipe
    if recipe.route == "none":
        raise BadInput(f"recipe {recipe.name!r} quantizes nothing; choose a quantizing recipe")
    return Recipe(f"{recipe.name}-torch", "torch-ptq", recipe.format, recipe.algorithm,
                  f"torch-PTQ form of {recipe.name}", high_precision_dtype=recipe.high_precision_dtype)


class Calibrated:
    """A copy of the workload's model calibrated once (torch PTQ); candidates toggle quantizer
    groups. Drift is the fake-quantized torch model's."""

    drift_backend = "torch-fakequant-cpu"

    def __init__(self, workload: Workload, recipe: Recipe, eval_samples: int | None,
                 progress: bool, tty=None, *, batch: int | None = None, dims: dict | None = None):
        import torch
        from l4opt.env import progress as tqdm

        from l4opt.pipeline.quantize import quantize_torch, quantizers
        from l4opt.spec.shapes import for_workload

        self.w, self.recipe, self.progress, self.tty = workload, torch_form(recipe), progress, tty
        self.shapes = for_workload(workload, batch=batch, dims=dims)
        n = workload.num_samples(workload.eval_data)
        k = min(n, eval_samples or n)
        self.eval = subset(workload.eval_data, k)
        self.labels = None if workload.eval_labels is None else np.asarray(workload.eval_labels)[:k]
        self.reference = reference_outputs(workload, self.eval, progress, tty)
        self.ref_metric = workload.metric(one_output(self.reference), one_output(self.reference), self.labels)
        self.model = copy.deepcopy(workload.module())
        self.evaluations = 0

        def forward_loop(m):
            with torch.no_grad():
                # calibrated at the deployment batch, as the sweep's torch-PTQ stage does
                for b in tqdm(list(workload.batches(workload.calib_data, self.shapes.batch)),
                              desc="calibrate once",
                              leave=False, disable=not progress, file=tty):
                    m(*[torch.from_numpy(np.ascontiguousarray(x)) for x in b])

        t = time.perf_counter()
        quantize_torch(self.model, self.recipe, forward_loop)
        self.calib_s = time.perf_counter() - t
        self.groups: dict[str, list] = {}
        for name, q in quantizers(self.model).items():
            self.groups.setdefault(name.rsplit(".", 1)[0], []).append(q)
        modules = dict(self.model.named_modules())
        self.matmul_layers = [g for g in self.groups
                              if type(modules.get(g)).__name__.replace("Quant", "") in MATMUL_TYPES]

    @property
    def layers(self) -> list[str]:
        return list(self.groups)

    def kind(self, layer: str) -> str:
        return "gemm" if layer in self.matmul_layers else "other"

    def configure(self, enabled) -> None:
        enabled = set(enabled)
        for layer, qs in self.groups.items():
            for q in qs:
                q.enable() if layer in enabled else q.disable()

    def evaluate(self, enabled) -> dict:
        from l4opt.pipeline.runners import TorchRunner, run_all

        self.configure(enabled)
        self.evaluations += 1
        out = run_all(TorchRunner(self.model, "torch-fakequant", self.w.output_names),
                      self.w.batches(self.eval), progress=False)
        return measure(self.w, out, self.reference, self.labels, self.ref_metric)

    def close(self) -> None:
        """Nothing to stop: the torch study runs in this process."""

    def fraction_quantized(self, enabled) -> float:
        e = set(enabled)
        return sum(g in e for g in self.matmul_layers) / max(1, len(self.matmul_layers))
