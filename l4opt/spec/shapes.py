"""Concrete input shapes, resolved once: every named axis gets its value here.

The batch axis (axis 0, whatever its name) takes the deployment batch; every other named axis
takes its value from explicit `dims`, else from the workload's data (all arrays must agree),
else it is refused with the way to give it. Sweeps, search, the dashboard, the bundle, engine
builds and the estimator all ask this module, so a row's latency is for the shapes it records.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from l4opt.errors import BadInput


@dataclass(frozen=True)
class Shapes:
    """Resolved shapes at one batch: axis name -> value, input name -> concrete shape."""

    batch: int
    axes: dict = field(default_factory=dict)      # every named axis, the batch axis included
    inputs: dict = field(default_factory=dict)    # input name -> [int, ...]

    def to_dict(self) -> dict:
        return {"batch": self.batch, "axes": dict(self.axes),
                "inputs": {k: list(v) for k, v in self.inputs.items()}}

    def describe(self) -> str:
        """e.g. 'batch 32; input_ids 32x64, attention_mask 32x64'."""
        return f"batch {self.batch}; " + ", ".join(
            f"{k} {'x'.join(str(d) for d in v)}" for k, v in self.inputs.items())


def _spec(i):
    """(name, shape) of an InputSpec or of a row's input dict."""
    if isinstance(i, dict):
        return i["name"], tuple(i["shape"])
    return i.name, tuple(i.shape)


def batch_axes(inputs) -> set[str]:
    """Names of the axes that stand for the batch (a named axis 0 of any input)."""
    return {shape[0] for _, shape in map(_spec, inputs) if shape and isinstance(shape[0], str)}


def resolve(inputs, batch: int, dims: dict | None = None, data: dict | None = None) -> Shapes:
    """Resolve every named axis of `inputs` (InputSpecs or row input dicts) at `batch`.

    `dims` gives named axes explicitly (e.g. {"seq": 128}); `data` (input name -> array) gives
    the others from the arrays the workload evaluates on."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise BadInput(f"batch must be a positive whole number, got {batch!r}")
    dims = dict(dims or {})
    for k, v in dims.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise BadInput(f"dimension {k}={v!r} must be a positive whole number "
                           f"(e.g. --dim {k}=128)")
    specs = [_spec(i) for i in inputs]
    bnames = batch_axes(inputs)
    unknown = set(dims) - {d for _, s in specs for d in s if isinstance(d, str)}
    if unknown:
        known = sorted({d for _, s in specs for d in s if isinstance(d, str)} - bnames)
        raise BadInput(f"dims {sorted(unknown)} name no axis of the inputs; their named axes "
                       f"are {known or 'none besides the batch'}")
    overridden = bnames & set(dims)
    if overridden:
        raise BadInput(f"{sorted(overridden)} is the batch axis: set the deployment batch "
                       f"(batch=/--batch), not a dim")
    axes = {b: batch for b in bnames}
    for name, shape in specs:
        for ax, d in enumerate(shape):
            if not isinstance(d, str) or d in axes:
                continue
            if d in dims:
                axes[d] = int(dims[d])
                continue
            seen = _from_data(d, specs, data)
            if seen is None:
                raise BadInput(f"input {name!r} has a named axis {d!r} (axis {ax}) whose value "
                               f"is unknown: give it with dims={{'{d}': N}} (CLI: --dim {d}=N)")
            axes[d] = seen
    resolved = {name: [axes[d] if isinstance(d, str) else int(d) for d in shape]
                for name, shape in specs}
    return Shapes(batch, axes, resolved)


def _from_data(axis: str, specs, data) -> int | None:
    """The axis's size in the workload's arrays; all inputs that carry it must agree."""
    if not data:
        return None
    sizes = {}
    for name, shape in specs:
        arr = data.get(name)
        if arr is None:
            continue
        for ax, d in enumerate(shape):
            if d == axis and ax < getattr(arr, "ndim", 0):
                sizes[name] = int(arr.shape[ax])
    if len(set(sizes.values())) > 1:
        raise BadInput(f"axis {axis!r} has different sizes in the data {sizes}; give it with "
                       f"dims={{'{axis}': N}}")
    return next(iter(sizes.values()), None)


def for_workload(workload, batch: int | None = None, dims: dict | None = None) -> Shapes:
    """A workload's shapes at its deployment batch (or `batch`), its dims, else its data."""
    b = batch if batch is not None else deploy_batch(workload)
    d = dict(getattr(workload, "dims", None) or {})
    d.update(dims or {})
    return resolve(workload.inputs, int(b), d, workload.eval_data)


def deploy_batch(workload) -> int:
    """The batch the L4 will run: the workload's stated deployment batch, else its optimum."""
    b = getattr(workload, "deploy_batch", None)
    return int(b) if b else int(workload.batch_range[1])
