"""What TensorRT runs for a (Q/DQ) ONNX graph on one GPU, kernel by kernel, and what it costs.

Two halves. `kernels()` (its pieces in the modules imported below) turns a graph into the
kernels a TensorRT engine would launch (its fusions and precision rules, below, each with its
source) and gives each kernel its work: FLOPs, the share of the tensor cores its shape can
use, bytes from DRAM and from L2. Nothing in that half is fitted. `kernel_ms()` prices a
kernel with constants (`Constants`: a tensor-core efficiency per precision, FP16, INT8 and
FP8, a bandwidth efficiency and a per-kernel cost) fitted on published L4 measurements
(l4opt/data/l4_truth.csv, `fit()` / `loo()` here). No verified FP8 row on an L4 exists in the
table, so the shipped fit leaves FP8 tied to INT8 and says which evidence bounds it
(FP8_EVIDENCE).

TensorRT behaviour modelled, and where it comes from:
- Conv + BatchNorm + activation (+ residual add) and GEMM + bias + activation (GELU's Erf
  chain included) are one kernel; Q/DQ fuse into the kernel around them. TensorRT developer
  guide, "Types of Fusions" and "Q/DQ Fusion"; the fixtures' layer exports show it
  (tests/fixtures/trtexec/*.graph.json: one layer per conv with its BN, ReLU, Q/DQ).
- Chains of reductions and pointwise ops (LayerNorm as ReduceMean/Sub/Pow/.../Add, softmax)
  are one kernel; the residual add before a LayerNorm travels with it. TensorRT's Myelin
  backend ("Fused Attention" and "Working with Transformers" pages of the TensorRT docs).
- Attention MatMul -> Softmax -> MatMul is one fused kernel (no S x S scores in memory) when
  the Q/DQ placement allows it: both BMMs at the same precision (both unquantized, both INT8,
  or both FP8). INT8 only up to sequence length 512 (ModelOpt 0.47
  modelopt/onnx/quantization/graph_utils.py find_nodes_from_mha_to_exclude mirrors TensorRT's
  INT8 fMHA limit); FP8 on Ada only from TensorRT 10.6, sequence <= 3072 and head size <= 64
  (TensorRT 10.6.0 release notes, "FP8 Multi-Head Attention (MHA) on Ada GPUs"). Otherwise
  three kernels: BMM1 writes the scores, a softmax kernel, BMM2.
- FP8 vs INT8 on Ada: same dense peak (L4 datasheet: 242 TFLOPS/TOPS), but no FP8 kernels for
  grouped/depthwise convs, convs with <= 16 channels or filters larger than 32 taps: those run
  in FP16 (ModelOpt 0.47 graph_utils.find_nodes_from_convs_to_exclude, whose comment says the
  FP8 conv kernels are slower than FP16 ones there). INT8 has grouped/depthwise kernels (same
  function: OC % 8 and k >= 3), priced on CUDA cores at 4x the FP32 rate (dp4a).
- A QuantizeLinear with no producing kernel to fuse into (network input, or after a layer
  TensorRT cannot fuse it with) is a reformat kernel of its own (fixtures: QuantizeLinear_2).
- Tensor-core shape efficiency: TensorRT times tactics and keeps the fastest, so a GEMM/conv
  gets the best of a CUTLASS-style tile menu: tile quantization (M, N padded to the tile),
  wave quantization over 58 SMs, split-K when there are too few tiles, operand reuse of the
  tile (small tiles feed the tensor cores worse), and a pipeline fill cost for small K.
- Recurrent nodes (LSTM, GRU, RNN) are sequential over time: one kernel per time step and
  direction, each the step's input and recurrent GEMMs for every gate (l4opt/latency/recurrent.py
  states the rule and its ASSUMPTION).
- L2 residency (48 MB on the L4): the kernels' reads and writes are replayed through an LRU
  cache of the usable L2 for two back-to-back inferences; what the second finds in L2 moves at
  L2 speed (so small models keep their weights in L2 between runs, large batches spill).
- Sustained clocks under the 72 W cap: the datasheet peaks are at the 2040 MHz boost clock;
  what a tensor-core kernel sustains under the cap cannot be observed separately from its
  efficiency here, so the fitted `tc_eff`/`tc8_eff`/`tcf8_eff` carry it (and say so).
Assumptions that are not from a document are named ASSUMPTION where they are set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from l4opt.errors import BadInput
# GPUs, kernels and the pieces of `kernels()` live in their own modules (gpus, validate,
# graph_shapes, attention, partition, recurrent, memory, tiles); the names callers use stay
# importable from here (costmodel.all_gpus, costmodel.get_gpu, costmodel.Kernel, ...).
from l4opt.latency import validate
from l4opt.latency.attention import attention_blocks
from l4opt.latency.gpus import BYTES, GPUSpec, all_gpus, get_gpu  # noqa: F401
from l4opt.latency.graph_shapes import (ShapeMismatch, Tensors, input_dims,  # noqa: F401
                                        resolve_shapes)
from l4opt.latency.kernel import TC_KINDS, Graph, Kernel  # noqa: F401
from l4opt.latency.memory import (L2_USABLE_FRACTION, _lru_hits, assign_bytes,  # noqa: F401
                                   tensor_bytes)
from l4opt.latency.partition import Partition
from l4opt.latency.tiles import K_FILL, REUSE_FULL, TILES, gemm_efficiency  # noqa: F401

# The rules' version: bump it whenever kernels() would list different kernels or work for some
# graph (fusions, precision rules, shape efficiency, L2), never for a pure refactor. The shipped
# fit (l4opt/data/l4_fit.json) is stamped with it; estimate.py says so when they differ, and
# trial keys include it so cached rows are re-estimated.
# 1: first fit; 2: attention head-size/key-length rules, FP8 conv rules (fit of 2026-11-25);
# 3: recurrent nodes (LSTM/GRU/RNN) priced per time step (recurrent.py); graphs without them
#    list the same kernels as in 2, so the fit's features (ResNet-50, RetinaNet, BERT) hold.
COSTMODEL_VERSION = 3

# ------------------------------------------------------------------ constants

@dataclass(frozen=True)
class Constants:
    """The fitted part of the model (see l4opt/data/l4_fit.json for the values in use).

    One tensor-core efficiency per precision: FP16 (`tc_eff`), INT8 (`tc8_eff`) and FP8
    (`tcf8_eff`). `tcf8_eff` is None when no measured row had FP8 tensor-core work to fit it
    on (the shipped L4 fit: no verified FP8 row on an L4): FP8 kernels then take the INT8
    efficiency (`fp8_eff`), the L4 datasheet giving both the same dense peak (242 TFLOPS/TOPS),
    and estimate.py widens their band by the sm_89 evidence (FP8_EVIDENCE)."""

    tc_eff: float = 0.55     # FP16/FP32 tensor-core efficiency at ideal shape, incl. sustained clock
    tc8_eff: float = 0.45    # INT8 tensor-core efficiency at ideal shape, incl. sustained clock
    mem_eff: float = 0.70    # share of DRAM bandwidth a streaming kernel reaches
    kernel_us: float = 4.0   # fixed cost per kernel (launch gap in a CUDA graph, ramp, tail)
    schema_version: int = 1
    tcf8_eff: float | None = None  # FP8 tensor-core efficiency; None: tied to tc8_eff (not fitted)

    NAMES = ("tc_eff", "tc8_eff", "mem_eff", "kernel_us")  # always fitted (the vector)
    BOUNDS = ((0.05, 1.0), (0.05, 1.0), (0.2, 1.0), (0.3, 30.0))
    FP8_BOUNDS = (0.05, 1.0)

    @property
    def fp8_eff(self) -> float:
        """The efficiency FP8 tensor-core kernels are priced with (tied to INT8 when unfitted)."""
        return self.tc8_eff if self.tcf8_eff is None else self.tcf8_eff

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in self.NAMES], float)

    @classmethod
    def from_vector(cls, v, tcf8_eff: float | None = None) -> "Constants":
        return cls(**{n: float(x) for n, x in zip(cls.NAMES, v)}, tcf8_eff=tcf8_eff)

    def to_dict(self) -> dict:
        return {**{n: getattr(self, n) for n in self.NAMES}, "tcf8_eff": self.tcf8_eff}

    @classmethod
    def from_dict(cls, d: dict) -> "Constants":
        f8 = d.get("tcf8_eff")
        return cls(**{n: float(d.get(n, getattr(cls(), n))) for n in cls.NAMES},
                   tcf8_eff=None if f8 is None else float(f8))


# What bounds FP8 on Ada where no L4 row fits it (estimate.py widens FP8 bands by these and
# cites them; benchmarks/bench_estimate.py turns the pairs into the band it writes).
FP8_EVIDENCE = {
    "gemm": ("FP8 tensor-core efficiency NOT fitted on any L4 row (no verified FP8 row on an L4 "
             "in l4opt/data/l4_truth.csv): tied to INT8's, the L4 datasheet giving both the same "
             "dense peak (242 TFLOPS/TOPS); bounded by the FP8/INT8 SDXL pairs on three sm_89 "
             "cards (RTX 6000 Ada, RTX 4090, L40S; TensorRT 9.3; l4opt/data/l4_pairs.csv from "
             "github:NVIDIA/TensorRT-Model-Optimizer examples/benchmark.md), FP8/INT8 speed-up "
             "0.95-1.08x"),
    "conv": ("FP8 convs on Ada may run no faster than FP16: NVIDIA/TensorRT issue #4081 "
             "(https://github.com/NVIDIA/TensorRT/issues/4081; RTX 4090, TensorRT 10.3, ModelOpt "
             "0.15.1: FP8 conv kernels nearly as long as FP16 ones under nsys); not measured on "
             "an L4"),
    "gemm_slow": ("FP8 transformer GEMMs on an L4 may run no faster than FP16: NVIDIA's L4 "
                  "BERT-99.9 engine, configured use_fp8=True (NVIDIA's MLPerf code, "
                  "github:MiaoXiaodongIntel/mlperf_inference_results_v5.0@"
                  "7c697832b98ad5f275fc5ac6da7dc98ce159bbb9:closed/NVIDIA/configs/bert/Offline/"
                  "__init__.py#L229-L237, L4x1_HighAccuracy: precision fp16 with use_fp8, "
                  "expected 640 samples/s, one inference stream where INT8 has two), measured "
                  "631.5 samples/s in MLPerf v3.1 (TensorRT 9.0), the same as the v3.0 FP16 "
                  "engine (630.6) and 0.61x the INT8 engine (1029); whether FP8 kernels ran in it "
                  "is not established (l4opt/data/l4_pairs.csv, not counted in the band)"),
}

# Not fitted (no truth row constrains them); ASSUMPTION where marked.
CUDA_CORE_EFF = 0.35            # depthwise/grouped convs on CUDA cores (ASSUMPTION)
L2_BW_MULT = 3.0                # L2 bandwidth over DRAM bandwidth (ASSUMPTION: not published for L4)
DEFAULT_TRT = (10, 8)           # TensorRT version the rules are evaluated for by default


def _version(v) -> tuple:
    if v is None:  # the TensorRT that would build the engine here, else the default
        from l4opt import env

        v = env.version("tensorrt") or env.version("tensorrt-cu12") or ".".join(map(str, DEFAULT_TRT))
    if isinstance(v, (tuple, list)):
        return tuple(int(x) for x in v[:2])
    parts = str(v).split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError as exc:
        raise BadInput(f"TensorRT version {v!r} is not like '10.8'") from exc


def kernels(model, gpu, batch: int = 1, float_precision: str = "fp16",
            dynamic_dims: dict | None = None, trt_version=None,
            input_quantized: bool = False) -> Graph:
    """The kernels TensorRT would run for `model` (a ModelProto) at `batch` on `gpu`.

    `input_quantized`: the network input arrives already quantized (MLPerf harnesses do that),
    so a QuantizeLinear on a graph input costs nothing."""
    g = get_gpu(gpu)
    trt = _version(trt_version)
    validate.check_structure(model)      # refused: no nodes, a cycle, a dangling input
    validate.check_weights(model, g)      # refused: weights beyond the GPU's memory
    in_dims = input_dims(model, batch, dynamic_dims)
    notes: list[str] = []
    t = Tensors.of(model, resolve_shapes(model, in_dims, notes))
    validate.check_tensor_sizes(t, g, lambda name: tensor_bytes(t, name, float_precision))
    # ---- the rules: attention fusion, then the walk placing nodes into kernels, then bytes
    facts: dict = {"mha_fused": 0, "mha_unfused": 0, "mha_reasons": [], "fp8_conv_fp16": 0,
                   "int8_dw": 0, "fp8_dw_fp16": 0, "standalone_q": 0, "tc_kernels": {},
                   "trt_version": ".".join(map(str, trt))}
    mha_of, mha_groups = attention_blocks(t, g, trt, float_precision, facts)
    part = Partition(t, g, float_precision, input_quantized, facts, mha_of, mha_groups).run()
    assign_bytes(t, part, g, float_precision)
    ks = part.ks
    for kern in ks:
        if kern.kind == "dwconv":
            kern.shape_eff = 1.0
    unknown = sum(1 for kern in ks if kern.kind in ("conv", "gemm", "bmm") and not kern.flops)
    if unknown:
        notes.append(f"{unknown} conv/matmul nodes had shapes shape inference could not resolve; "
                     f"their FLOPs are counted as 0")
    return Graph(ks, notes, facts)


# ------------------------------------------------------------------ pricing

def compute_seconds(k: Kernel, gpu: GPUSpec) -> float:
    """Compute time of a kernel at 100% of the efficiency constant (0 when not compute)."""
    if not k.flops:
        return 0.0
    if k.kind == "dwconv":
        fp32 = gpu.tflops["fp32"] * 1e12
        rate = fp32 * (4 if k.precision == "int8" else 2 if k.precision != "fp32" else 1)
        return k.flops / (rate * CUDA_CORE_EFF)
    prec = k.precision if (k.precision != "fp8" or gpu.fp8) else "fp16"
    return k.flops / (gpu.peak(prec) * max(k.shape_eff, 1e-3))


def memory_seconds(k: Kernel, gpu: GPUSpec) -> float:
    """Memory time at 100% of the bandwidth constant."""
    bw = gpu.bandwidth_gbs * 1e9
    return k.dram_bytes / bw + k.l2_bytes / (bw * L2_BW_MULT)


KLASS_FP16, KLASS_INT8, KLASS_OTHER, KLASS_FP8 = 0, 1, 2, 3
TC_KLASSES = (KLASS_FP16, KLASS_INT8, KLASS_FP8)


def klass(k: Kernel, gpu: GPUSpec | None = None) -> int:
    """0: FP16/FP32 tensor-core kernel, 1: INT8, 3: FP8 (FP16 on a GPU without FP8 tensor
    cores, where it runs at FP16), 2: other (memory-bound, CUDA cores)."""
    if k.kind in TC_KINDS and k.flops:
        if k.precision == "int8":
            return KLASS_INT8
        if k.precision == "fp8":
            return KLASS_FP8 if gpu is None or gpu.fp8 else KLASS_FP16
        return KLASS_FP16
    return KLASS_OTHER


def features(ks: list, gpu) -> dict:
    """Per-kernel numbers the fitted constants act on (what the fit and LOO store)."""
    g = get_gpu(gpu)
    return {"klass": [klass(k, g) for k in ks],
            "compute_s": [compute_seconds(k, g) for k in ks],
            "memory_s": [memory_seconds(k, g) for k in ks]}


FP16_TC_SHARE = 0.10  # FP16 tensor-core share of tensor-core compute that makes a graph "FP16"


def validation_kinds(feat: dict, facts: dict | None = None) -> list[str]:
    """The kinds of work in a graph that the truth table validates separately: 'fp16_gemm'
    (FP16 tensor-core kernels carry >= 10% of its tensor-core compute), 'fp8_gemm' (FP8 ones
    do) and 'attention' (any attention block, fused MHA or not). The shipped fit's absolute
    rows are INT8 CNNs, so a graph of these kinds gets the band of the evidence that does
    validate them (estimate.py)."""
    kl = np.asarray(feat["klass"])
    comp = np.asarray(feat["compute_s"], float)
    tc = float(comp[np.isin(kl, TC_KLASSES)].sum())
    out = []
    if tc > 0 and float(comp[kl == KLASS_FP16].sum()) >= FP16_TC_SHARE * tc:
        out.append("fp16_gemm")
    if tc > 0 and float(comp[kl == KLASS_FP8].sum()) >= FP16_TC_SHARE * tc:
        out.append("fp8_gemm")
    if facts and (facts.get("mha_fused") or facts.get("mha_unfused")):
        out.append("attention")
    return out


def efficiencies(klass_: np.ndarray, c: Constants) -> np.ndarray:
    """Each kernel's compute efficiency: its precision's tensor-core constant, 1 for the rest."""
    return np.select([klass_ == KLASS_FP16, klass_ == KLASS_INT8, klass_ == KLASS_FP8],
                     [c.tc_eff, c.tc8_eff, c.fp8_eff], 1.0)


def kernel_ms(klass_: np.ndarray, comp: np.ndarray, mem: np.ndarray, c: Constants) -> np.ndarray:
    """Each kernel's time: max(compute / efficiency, memory / bandwidth efficiency) + fixed."""
    return 1e3 * np.maximum(comp / efficiencies(klass_, c), mem / c.mem_eff) + c.kernel_us * 1e-3


def predict_ms(feat: dict, c: Constants) -> float:
    return float(kernel_ms(np.asarray(feat["klass"]), np.asarray(feat["compute_s"], float),
                           np.asarray(feat["memory_s"], float), c).sum())


# ------------------------------------------------------------------ fitting

def row_ms(row: dict, c: Constants) -> float:
    """A fit row's predicted latency (ms)."""
    return predict_ms(row["features"], c)


def _has_fp8_work(rows: list) -> bool:
    """True when some row has FP8 tensor-core compute (so the FP8 efficiency can be fitted)."""
    def f8(feat):
        return any(k == KLASS_FP8 and c > 0 for k, c in zip(feat["klass"], feat["compute_s"]))

    return any(f8(r["ratio"][0]) or f8(r["ratio"][1]) if "ratio" in r else f8(r["features"])
               for r in rows)


def fit(rows: list, start: Constants | None = None, prior: Constants | None = None,
        prior_weight: float = 0.0) -> Constants:
    """Least squares in log space over rows.

    Each row: {"features": dict, "measured_ms": float} (an absolute row) or
    {"ratio": (features_a, features_b), "measured": a_ms / b_ms} (a speed-up pair). With
    `prior`, a pull of `prior_weight` towards it (used when refitting on a user's few rows).
    The FP8 efficiency is fitted only when some row has FP8 tensor-core work; otherwise it
    stays tied to INT8's (tcf8_eff None) unless the prior fixes it."""
    from scipy.optimize import least_squares

    if not rows:
        raise BadInput("nothing to fit: no rows")
    start = start or Constants()
    with_fp8 = _has_fp8_work(rows)
    bounds = list(Constants.BOUNDS) + ([Constants.FP8_BOUNDS] if with_fp8 else [])
    lo = np.log([b[0] for b in bounds])
    hi = np.log([b[1] for b in bounds])
    v0 = list(start.vector()) + ([start.fp8_eff] if with_fp8 else [])
    x0 = np.clip(np.log(v0), lo + 1e-9, hi - 1e-9)
    n = len(Constants.NAMES)

    def constants(x) -> Constants:
        v = np.exp(x)
        return Constants.from_vector(v[:n], float(v[n]) if with_fp8 else
                                     (prior.tcf8_eff if prior is not None else None))

    prior_x = None
    if prior is not None and prior_weight:
        prior_x = np.log(list(prior.vector()) + ([prior.fp8_eff] if with_fp8 else []))

    def resid(x):
        c = constants(x)
        r = []
        for row in rows:
            if "ratio" in row:
                fa, fb = row["ratio"]
                r.append(math.log(predict_ms(fa, c) / predict_ms(fb, c)) - math.log(row["measured"]))
            else:
                r.append(math.log(row_ms(row, c) / row["measured_ms"]))
        if prior_x is not None:
            r.extend(prior_weight * (x - prior_x))
        return np.array(r)

    best = None
    for scale in (1.0, 0.6, 1.6):  # a few starts: the max() makes the surface piecewise
        x = np.clip(x0 + np.log(scale), lo + 1e-9, hi - 1e-9)
        sol = least_squares(resid, x, bounds=(lo, hi), method="trf")
        if best is None or sol.cost < best.cost:
            best = sol
    return constants(best.x)


def relative_error(pred: float, measured: float) -> float:
    return (pred - measured) / measured


def loo(rows: list, groups: list, start: Constants | None = None) -> list:
    """Leave-one-group-out: each row predicted by a fit on the rows of the other groups.

    Rows of one group (e.g. one MLPerf scenario in two submission rounds) leave together, so a
    near-duplicate cannot predict its twin. Returns, per row, the predicted value (ms, or the
    ratio for ratio rows) and its relative error."""
    out = []
    for gname in dict.fromkeys(groups):
        train = [r for r, gg in zip(rows, groups) if gg != gname]
        test = [(i, r) for i, (r, gg) in enumerate(zip(rows, groups)) if gg == gname]
        c = fit(train, start) if train else (start or Constants())
        for i, r in test:
            if "ratio" in r:
                fa, fb = r["ratio"]
                p = predict_ms(fa, c) / predict_ms(fb, c)
                out.append((i, p, relative_error(p, r["measured"]), c))
            else:
                p = row_ms(r, c)
                out.append((i, p, relative_error(p, r["measured_ms"]), c))
    out.sort(key=lambda t: t[0])
    return [{"predicted": p, "error": e, "constants": c.to_dict()} for _, p, e, c in out]


def band_quantiles(errors, lo_q: float = 0.1, hi_q: float = 0.9) -> tuple:
    """(low, high) relative-error quantiles of LOO errors: estimate / (1 + q) brackets truth."""
    e = np.asarray([x for x in errors if x is not None and np.isfinite(x)], float)
    if len(e) == 0:
        raise BadInput("no errors to make a band from")
    return float(np.quantile(e, lo_q)), float(np.quantile(e, hi_q))

