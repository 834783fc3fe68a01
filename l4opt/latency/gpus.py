"""Datasheet figures of the GPUs the cost model prices for, and bytes per element by precision."""
from __future__ import annotations

from dataclasses import dataclass


BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int32": 4, "int64": 8,
         "bool": 1, "unknown": 2}


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures of one GPU (dense, no sparsity); TFLOPS or TOPS by precision."""

    name: str
    arch: str
    compute_capability: str
    sms: int
    boost_ghz: float
    memory_gb: float
    bandwidth_gbs: float
    l2_mb: float
    tdp_w: float
    tflops: dict
    source: str = ""

    @property
    def fp8(self) -> bool:
        return tuple(int(x) for x in self.compute_capability.split(".")) >= (8, 9)

    def peak(self, precision: str) -> float:
        """Peak tensor FLOP/s at a precision (FP8 falls back to FP16 where unsupported)."""
        if precision == "fp32":  # TensorRT enables TF32 by default: half the FP16 rate
            return self.tflops["fp16"] * 1e12 / 2
        p = precision if precision in self.tflops and self.tflops[precision] else "fp16"
        return self.tflops[p] * 1e12


# The specs the cost model's constants were fitted on (the L4) and the fixtures' engines were
# built on (TITAN RTX): kept here exactly as fitted. Every other GPU comes from the data table
# l4opt/data/gpus.csv (l4opt.latency.hardware), each figure with its source.
FITTED: dict[str, GPUSpec] = {g.name: g for g in (
    GPUSpec("L4", "Ada", "8.9", 58, 2.04, 24, 300, 48, 72,
            {"fp32": 30.3, "fp16": 121, "bf16": 121, "fp8": 242, "int8": 242},
            "NVIDIA L4 datasheet (dense tensor: FP16 121, FP8/INT8 242)"),
    GPUSpec("TITAN RTX", "Turing", "7.5", 72, 1.77, 24, 672, 6, 280,
            {"fp32": 16.3, "fp16": 130, "int8": 261, "fp8": None},
            "NVIDIA TITAN RTX specs (384-bit GDDR6 at 14 Gbps; tensor FP16 130, INT8 261)"),
)}


def all_gpus() -> dict[str, GPUSpec]:
    """Every GPU the estimator knows: the fitted specs, then the data table's."""
    from l4opt.latency import hardware

    return {**hardware.gpus(), **FITTED}


def get_gpu(name) -> GPUSpec:
    """A GPU by name or alias: the fitted L4 (and TITAN RTX), else l4opt/data/gpus.csv's."""
    if isinstance(name, GPUSpec):
        return name
    key = str(name).lower().replace("nvidia", "").strip().replace("_", " ").replace("-", " ")
    for g in FITTED.values():
        if g.name.lower() == key:
            return g
    from l4opt.latency import hardware

    return hardware.get(name)
