"""GPU specs as data (l4opt/data/gpus.csv) and what each GPU can run.

`gpus()` reads the versioned table (schema 1; every figure with its source and a status saying
what is verified and what is assumed) into `FleetGPU` objects: `costmodel.GPUSpec`s the
estimator takes as they are (``estimate_onnx(path, gpu=spec)``), with the precisions TensorRT
runs on that architecture and the table's sources. `runs_as(gpu, what)` says at which precision
a graph would run on a GPU, and why, refusing what it cannot run.

TensorRT precision rules per architecture (`RULES`): FP8 needs compute capability 8.9 or higher
(Ada, Hopper), BF16 and TF32 8.0 or higher (Ampere on), INT8 and FP16 run everywhere in the
table (Turing on); NVFP4 and the MX formats are Blackwell-only (sm_100+) and no GPU here runs
them. Sources: TransformerEngine's support matrix ("BF16 requires compute capability 8.0 or
higher ... [FP8] requires compute capability 8.9 or higher"), the TensorRT support matrix's
per-compute-capability precision table (Turing 7.5: BF16 No, FP8 No; Ampere 8.6: FP8 No).

One deviation from the cost model's own table: on a GPU without TF32 (Turing), FP32 layers
run on CUDA cores at the FP32 rate, not at half the FP16 tensor rate (`FleetGPU.peak`).
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from importlib import resources

from l4opt.errors import BadInput
from l4opt.latency import gpus as gpu_specs

SCHEMA = 1
TABLE = "gpus.csv"

# (precision, minimum compute capability, architectures that introduced it)
RULES = {
    "fp32": ((0, 0), "all"),
    "fp16": ((7, 0), "Volta and later (tensor cores)"),
    "int8": ((6, 1), "all GPUs in the table (Turing and later have INT8 tensor cores)"),
    "tf32": ((8, 0), "Ampere and later"),
    "bf16": ((8, 0), "Ampere and later"),
    "fp8": ((8, 9), "Ada and Hopper and later"),
    "nvfp4": ((10, 0), "Blackwell only"),
    "mxfp8": ((10, 0), "Blackwell only"),
}
RULES_SOURCE = ("TransformerEngine support matrix (BF16 >= sm_80, FP8 >= sm_89); TensorRT "
                "support matrix per compute capability (Turing 7.5: no BF16, no FP8; Ampere "
                "8.6: no FP8)")


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def rule_allows(precision: str, compute_capability: str) -> bool:
    need = RULES.get(precision)
    if need is None:
        raise BadInput(f"unknown precision {precision!r}; known: {', '.join(RULES)}")
    return cc_tuple(compute_capability) >= need[0]


@dataclass(frozen=True)
class FleetGPU(gpu_specs.GPUSpec):
    """A GPUSpec with what TensorRT runs on it and where each figure came from."""

    precisions: tuple = ()
    aliases: tuple = ()
    form_factor: str = ""
    status: str = ""
    sources: dict = field(default_factory=dict)
    notes: str = ""

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def supports(self, precision: str) -> bool:
        return precision in self.precisions

    def peak(self, precision: str) -> float:
        if precision == "fp32":
            # TensorRT runs FP32 layers as TF32 where the GPU has TF32 (sm_80+); on Turing
            # they run on CUDA cores
            tf32 = self.tflops.get("tf32")
            return (tf32 if tf32 else self.tflops["fp32"]) * 1e12
        return super().peak(precision)


def _num(v: str):
    v = (v or "").strip()
    return float(v) if v else None


def _read(text: str) -> dict[str, FleetGPU]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    out = {}
    for r in csv.DictReader(lines):
        if int(r["schema"]) != SCHEMA:
            raise BadInput(f"{TABLE}: row {r['name']} has schema {r['schema']}, this l4opt "
                           f"reads schema {SCHEMA}")
        precs = tuple(p.strip() for p in r["precisions"].split(";") if p.strip())
        for p in precs:
            if not rule_allows(p, r["compute_capability"]):
                raise BadInput(f"{TABLE}: {r['name']} (sm_{r['compute_capability']}) lists "
                               f"{p}, which TensorRT's rules do not allow there")
        tf = {"fp32": _num(r["fp32_tflops"]), "tf32": _num(r["tf32_tflops"]),
              "fp16": _num(r["fp16_tflops"]), "bf16": _num(r["bf16_tflops"]),
              "fp8": _num(r["fp8_tflops"]), "int8": _num(r["int8_tops"])}
        tf = {k: (v if k in precs or k in ("fp32", "fp16") else None) for k, v in tf.items()}
        g = FleetGPU(
            name=r["name"], arch=r["arch"], compute_capability=r["compute_capability"],
            sms=int(r["sms"]), boost_ghz=float(r["boost_mhz"]) / 1e3,
            memory_gb=float(r["memory_gb"]), bandwidth_gbs=float(r["bandwidth_gbs"]),
            l2_mb=float(r["l2_mb"]), tdp_w=float(r["tdp_w"]), tflops=tf,
            source=f"l4opt/data/{TABLE} ({r['status']})", precisions=precs,
            aliases=tuple(a.strip() for a in r["aliases"].split(";") if a.strip()),
            form_factor=r.get("form_factor") or "", status=r["status"],
            sources={k: r[k] for k in r if k.startswith("source_")}, notes=r["notes"])
        out[g.name] = g
    return out


@functools.lru_cache(maxsize=1)
def gpus() -> dict[str, FleetGPU]:
    """Every GPU of l4opt/data/gpus.csv by name."""
    return _read(resources.files("l4opt").joinpath("data", TABLE).read_text())


def _key(name: str) -> str:
    return str(name).lower().replace("nvidia", "").strip().replace("_", "-").replace(" ", "-")


def get(name) -> FleetGPU:
    """A GPU of the table by name or alias (case-insensitive, 'NVIDIA ' ignored)."""
    if isinstance(name, FleetGPU):
        return name
    if not isinstance(name, str) or not name.strip():
        raise BadInput(f"gpu: give a GPU name; known: {', '.join(gpus())}")
    k = _key(name)
    for g in gpus().values():
        if k == _key(g.name) or k in (_key(a) for a in g.aliases):
            return g
    raise BadInput(f"gpu: unknown GPU {name!r}; known: {', '.join(gpus())}")


def estimator_gpu(name):
    """The spec to estimate on: the L4 is the cost model's own (its constants were fitted on
    it; the table's figures agree within 0.5 %), every other GPU the table's."""
    g = get(name)
    if g.name in gpu_specs.FITTED:
        return gpu_specs.FITTED[g.name]
    return g


# ------------------------------------------------------------------ what runs where

_DTYPES = {"float8e4m3fn": "fp8", "float8e5m2": "fp8", "fp8": "fp8", "int8": "int8",
           "uint8": "int8", "int4": "int4", "nvfp4": "nvfp4", "float4e2m1": "nvfp4",
           "mxfp8": "mxfp8", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16",
           "float16": "fp16", "fp32": "fp32", "float32": "fp32"}


def requested(what) -> set[str]:
    """The precisions a row's graph asks for: from its quantized_dtypes (a list of ONNX dtype
    names; empty = unquantized) or its format ('fp16', 'int8', 'fp8', ...)."""
    if what is None:
        return {"fp16"}
    if isinstance(what, str):
        items = [what]
    else:
        items = list(what)
        if not items:
            return {"fp16"}
    out = set()
    for x in items:
        p = _DTYPES.get(str(x).lower().strip())
        if p is None:
            raise BadInput(f"quantized_dtypes/format: unknown precision {x!r}; known: "
                           f"{', '.join(sorted(set(_DTYPES)))}")
        out.add(p)
    return out


def runs_as(gpu, what) -> tuple[str, str]:
    """("fp8" | "int8" | "fp16" | "unsupported", note): the precision the graph's quantized
    layers would run at on `gpu`, and a note about that GPU when it is not what was asked.

    An FP8 graph on a GPU without FP8 tensor cores (T4, A10G, A100) would not run as FP8:
    TensorRT has no FP8 kernels below sm_89, so it would run at FP16 (the unquantized graph) and
    is estimated as the FP16 baseline. INT8 runs everywhere in the table. BF16 below sm_80,
    NVFP4/MX and INT4 anywhere in the table are unsupported."""
    g = get(gpu)
    want = requested(what)
    arch = f"{g.name} ({g.arch}, {g.sm})"
    for p in ("nvfp4", "mxfp8", "int4"):
        if p in want:
            return "unsupported", (f"{p.upper()} does not run on {arch}: TensorRT runs it on "
                                   f"Blackwell (sm_100+) only")
    if "bf16" in want and not g.supports("bf16"):
        return "unsupported", (f"{arch} has no BF16 (needs sm_80+); a BF16 graph does not run "
                               f"there (cast it to FP16 and re-check the accuracy)")
    if "fp8" in want and not g.supports("fp8"):
        if "int8" in want:
            return "int8", (f"{arch} has no FP8 tensor cores (needs sm_89+): the FP8 layers "
                            f"would run at FP16, the INT8 layers at INT8; estimated so")
        return "fp16", (f"would run at FP16 on {arch} (no FP8 tensor cores on "
                        f"{g.arch}; FP8 needs sm_89+): estimated as the FP16 baseline")
    if "fp8" in want:
        return "fp8", ""
    if "int8" in want:
        return "int8", ""
    return "fp16", ""


def speak_of(notes, gpu) -> list[str]:
    """The estimator's notes, made to speak of the GPU at hand (some say 'the L4')."""
    g = get(gpu)
    if g.name == "L4":
        return list(notes or [])
    peak = g.tflops.get("int8") or 0
    out = []
    for n in notes or []:
        if not g.supports("fp8") and str(n).startswith(("FP8 and INT8 run", "tensor-core kernels by")):
            continue  # the L4's FP8-vs-INT8 verdict means nothing where FP8 does not run
        n = str(n).replace("the L4's dense peak (242 TOPS/TFLOPS)",
                           f"the {g.name}'s dense peak ({peak:g} TOPS/TFLOPS)"
                           if g.supports("fp8") else f"the {g.name}'s INT8 peak ({peak:g} TOPS)")
        n = n.replace("no FP8 kernel on Ada", f"no FP8 kernel on {g.arch}")
        n = n.replace("only an L4 measurement", f"only a measurement on the {g.name}")
        out.append(n)
    return out
