"""What TensorRT runs for a (Q/DQ) ONNX graph on one GPU, kernel by kernel, and what it costs.

Two halves. `kernels()` turns a graph into the kernels a TensorRT engine would launch (its
fusions and precision rules, below, each with its source) and gives each kernel its work:
FLOPs, the share of the tensor cores its shape can use, bytes from DRAM and from L2. Nothing
in that half is fitted. `kernel_ms()` prices a kernel with four constants (`Constants`) fitted
on published L4 measurements (l4opt/data/l4_truth.csv, `fit()` / `loo()` here).

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
- L2 residency (48 MB on the L4): the kernels' reads and writes are replayed through an LRU
  cache of the usable L2 for two back-to-back inferences; what the second finds in L2 moves at
  L2 speed (so small models keep their weights in L2 between runs, large batches spill).
- Sustained clocks under the 72 W cap: the datasheet peaks are at the 2040 MHz boost clock;
  what a tensor-core kernel sustains under the cap cannot be observed separately from its
  efficiency here, so the fitted `tc_eff`/`tc8_eff` carry it (and say so).
Assumptions that are not from a document are named ASSUMPTION where they are set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import BadInput

# The rules' version: bump it whenever kernels() would list different kernels or work for some
# graph (fusions, precision rules, shape efficiency, L2), never for a pure refactor. The shipped
# fit (l4opt/data/l4_fit.json) is stamped with it; estimate.py says so when they differ, and
# trial keys include it so cached rows are re-estimated.
# 1: first fit; 2: attention head-size/key-length rules, FP8 conv rules (fit of 2026-11-25).
COSTMODEL_VERSION = 2

# ------------------------------------------------------------------ GPUs

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


GPUS: dict[str, GPUSpec] = {g.name: g for g in (
    GPUSpec("L4", "Ada", "8.9", 58, 2.04, 24, 300, 48, 72,
            {"fp32": 30.3, "fp16": 121, "bf16": 121, "fp8": 242, "int8": 242},
            "NVIDIA L4 datasheet (dense tensor: FP16 121, FP8/INT8 242)"),
    GPUSpec("T4", "Turing", "7.5", 40, 1.59, 16, 320, 4, 70,
            {"fp32": 8.1, "fp16": 65, "int8": 130, "fp8": None},
            "NVIDIA T4 datasheet"),
    GPUSpec("A10G", "Ampere", "8.6", 80, 1.71, 24, 600, 6, 300,
            {"fp32": 31.2, "fp16": 125, "bf16": 125, "int8": 250, "fp8": None},
            "assumed equal to the A10 datasheet (AWS does not publish A10G tensor figures)"),
    GPUSpec("A100", "Ampere", "8.0", 108, 1.41, 80, 2039, 40, 400,
            {"fp32": 19.5, "fp16": 312, "bf16": 312, "int8": 624, "fp8": None},
            "NVIDIA A100 80GB SXM4 datasheet"),
    GPUSpec("H100", "Hopper", "9.0", 132, 1.98, 80, 3350, 50, 700,
            {"fp32": 67, "fp16": 989, "bf16": 989, "fp8": 1979, "int8": 1979},
            "NVIDIA H100 SXM5 datasheet (dense)"),
    GPUSpec("TITAN RTX", "Turing", "7.5", 72, 1.77, 24, 672, 6, 280,
            {"fp32": 16.3, "fp16": 130, "int8": 261, "fp8": None},
            "NVIDIA TITAN RTX specs (384-bit GDDR6 at 14 Gbps; tensor FP16 130, INT8 261)"),
)}


def get_gpu(name) -> GPUSpec:
    if isinstance(name, GPUSpec):
        return name
    key = str(name).lower().replace("nvidia", "").strip().replace("_", " ").replace("-", " ")
    for g in GPUS.values():
        if g.name.lower() == key:
            return g
    raise BadInput(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")


# ------------------------------------------------------------------ constants

@dataclass(frozen=True)
class Constants:
    """The fitted part of the model (see l4opt/data/l4_fit.json for the values in use)."""

    tc_eff: float = 0.55     # FP16/FP32 tensor-core efficiency at ideal shape, incl. sustained clock
    tc8_eff: float = 0.45    # INT8/FP8 tensor-core efficiency at ideal shape, incl. sustained clock
    mem_eff: float = 0.70    # share of DRAM bandwidth a streaming kernel reaches
    kernel_us: float = 4.0   # fixed cost per kernel (launch gap in a CUDA graph, ramp, tail)
    schema_version: int = 1

    NAMES = ("tc_eff", "tc8_eff", "mem_eff", "kernel_us")
    BOUNDS = ((0.05, 1.0), (0.05, 1.0), (0.2, 1.0), (0.3, 30.0))

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in self.NAMES], float)

    @classmethod
    def from_vector(cls, v) -> "Constants":
        return cls(**{n: float(x) for n, x in zip(cls.NAMES, v)})

    def to_dict(self) -> dict:
        return {n: getattr(self, n) for n in self.NAMES}

    @classmethod
    def from_dict(cls, d: dict) -> "Constants":
        return cls(**{n: float(d.get(n, getattr(cls(), n))) for n in cls.NAMES})


# Not fitted (no truth row constrains them); ASSUMPTION where marked.
CUDA_CORE_EFF = 0.35            # depthwise/grouped convs on CUDA cores (ASSUMPTION)
L2_USABLE_FRACTION = 0.75       # share of the L2 an LRU replay may count on (ASSUMPTION:
                                # associativity, other traffic)
L2_BW_MULT = 3.0                # L2 bandwidth over DRAM bandwidth (ASSUMPTION: not published for L4)
K_FILL = 64                     # K elements of pipeline fill/drain per GEMM tile loop (ASSUMPTION)
REUSE_FULL = 64.0               # tm*tn/(tm+tn) of a 128x128 tile: full operand reuse (ASSUMPTION)
TILES = ((256, 128, 1), (128, 256, 1), (128, 128, 1), (128, 64, 2), (64, 128, 2), (64, 64, 4),
         (64, 32, 4), (32, 32, 8))   # (tile M, tile N, CTAs per SM): a CUTLASS-style menu
DEFAULT_TRT = (10, 8)           # TensorRT version the rules are evaluated for by default
TC_KINDS = ("gemm", "conv", "mha", "bmm")


def gemm_efficiency(m: float, n: float, k: float, count: float, sms: int) -> float:
    """Best share of tensor-core peak over the tile menu for `count` GEMMs of M x N x K."""
    m, n, k, count = max(1.0, m), max(1.0, n), max(1.0, k), max(1.0, count)
    best = 0.0
    for tm, tn, occ in TILES:
        tiles_m, tiles_n = math.ceil(m / tm), math.ceil(n / tn)
        ctas = count * tiles_m * tiles_n
        slots = sms * occ
        split = 1
        if ctas < slots and k >= 512:  # split-K: more CTAs when there are too few tiles
            split = int(min(slots // ctas, k // 256)) or 1
        kk = k / split
        util_tile = (m * n) / (tiles_m * tm * tiles_n * tn)
        waves = math.ceil(ctas * split / slots)
        util_wave = ctas * split / (waves * slots)
        reuse = min(1.0, (tm * tn / (tm + tn)) / REUSE_FULL)
        eff = util_tile * util_wave * reuse * kk / (kk + K_FILL)
        best = max(best, eff)
    return best


# ------------------------------------------------------------------ graph -> kernels

SHAPE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Shape", "Constant", "Flatten",
             "Identity", "ConstantOfShape", "Range", "Expand", "Slice", "Gather", "Concat",
             "Split", "Size", "NonZero"}
POINTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Erf", "Gelu",
             "Sqrt", "Pow", "Where", "Cast", "Neg", "Exp", "Abs", "LeakyRelu", "HardSigmoid",
             "HardSwish", "Not", "Equal", "Less", "Greater", "And", "Or", "Min", "Max",
             "QuantizeLinear", "DequantizeLinear", "BatchNormalization", "Dropout", "Softplus",
             "Mish", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "IsNaN", "PRelu", "Elu",
             "Selu", "Log", "Sin", "Cos"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "Softmax",
          "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
          "RMSNormalization", "SimplifiedLayerNormalization"}
COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
QDQ = ("QuantizeLinear", "DequantizeLinear")


def _is_qdq(op: str) -> bool:
    return "Quantize" in op or "Dequantize" in op


@dataclass
class Kernel:
    """One kernel of the engine as the model sees it."""

    name: str
    kind: str               # gemm conv bmm mha dwconv norm pointwise gather reformat pool other
    precision: str
    flops: float = 0.0
    shape_eff: float = 1.0  # share of tensor-core peak the shape allows (tiles, waves, K)
    dram_bytes: float = 0.0
    l2_bytes: float = 0.0
    ops: list = field(default_factory=list)
    note: str = ""


@dataclass
class Graph:
    """A graph's kernels plus what the rules decided (for notes)."""

    kernels: list
    notes: list
    facts: dict


def _np_dtype_bytes(elem_type: int) -> int:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 1


def input_dims(model, batch: int, dynamic_dims: dict | None) -> dict[str, list[int]]:
    """Concrete input shapes by `shapes.resolve`: axis 0 (named or not) takes `batch`, other
    named axes their value in `dynamic_dims` (values for axes the graph lacks, or for its
    batch axis, are ignored: rows pass every axis they recorded)."""
    from . import shapes as shapes_mod

    init = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in init:
            continue
        shape = []
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.dim_value:
                shape.append(int(d.dim_value))
            elif i == 0:
                shape.append(d.dim_param or f"(axis 0 of {inp.name})")
            elif d.dim_param:
                shape.append(d.dim_param)
            else:
                raise BadInput(f"input {inp.name!r} has an unnamed dynamic axis {i}; give the "
                               f"graph a named axis (e.g. 'seq') and its value, e.g. "
                               f"dynamic_dims={{'seq': 128}} (CLI: --dim seq=128)")
        specs.append({"name": inp.name, "shape": shape})
    named = {d for s in specs for d in s["shape"] if isinstance(d, str)}
    batch_names = shapes_mod.batch_axes(specs)
    dims = {k: int(v) for k, v in (dynamic_dims or {}).items()
            if k in named and k not in batch_names}
    return dict(shapes_mod.resolve(specs, int(batch), dims).inputs)


def _count(facts: dict, key: str, what: str) -> None:
    d = facts.setdefault(key, {})
    d[what] = d.get(what, 0) + 1


def _known(dims) -> int:
    """The first of `dims` if it is a known positive size, else 0."""
    d = dims[0] if len(dims) else None
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else 0


def _light_copy(model, in_dims: dict):
    """The graph with large initializers turned into typed inputs (no weight bytes) and
    concrete input shapes: cheap to copy and to run shape inference on."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = []
    for init in m.graph.initializer:
        if int(np.prod(init.dims) if init.dims else 1) > 64:
            m.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                                    list(init.dims)))
        else:
            keep.append(init)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    for inp in m.graph.input:
        if inp.name in in_dims:
            for d, v in zip(inp.type.tensor_type.shape.dim, in_dims[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = v
    return m


def _shapes_by_inference(model, in_dims) -> dict[str, list]:
    import onnx

    light = _light_copy(model, in_dims)
    inf = onnx.shape_inference.infer_shapes(light, data_prop=True)
    out = {}
    for vi in list(inf.graph.input) + list(inf.graph.value_info) + list(inf.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                            for d in tt.shape.dim]
    return out


def _shapes_by_running(model, in_dims) -> dict[str, list]:
    """Exact shapes from one ONNX Runtime run of the graph with its Q/DQ bypassed (so FP8 and
    TensorRT-only quantize ops do not stop it), every tensor exposed as an output."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    alias = {}
    for n in g.node:
        if _is_qdq(n.op_type):
            alias[n.output[0]] = alias.get(n.input[0], n.input[0])
    nodes = [n for n in g.node if n.output[0] not in alias]
    for n in nodes:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del g.node[:]
    g.node.extend(nodes)
    for o in g.output:
        if o.name in alias:
            o.name = alias[o.name]
    names = {o for n in nodes for o in n.output if o}
    del g.output[:]
    g.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in sorted(names))
    feeds = {}
    for inp in g.input:
        if inp.name in in_dims:
            dt = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
            feeds[inp.name] = np.ones(in_dims[inp.name], dtype=dt)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    try:
        outs = sess.run(None, feeds)
    except Exception as exc:  # the graph loads but cannot compute at these shapes
        raise ShapeMismatch(str(exc).strip().splitlines()[-1][:300]) from None
    shapes = {o.name: list(np.shape(v)) for o, v in zip(sess.get_outputs(), outs)}
    shapes.update({q: shapes[src] for q, src in alias.items() if src in shapes})
    return shapes


class ShapeMismatch(BadInput):
    """The graph cannot run at the requested input shapes (e.g. an axis baked at export)."""


def _version(v) -> tuple:
    if v is None:  # the TensorRT that would build the engine here, else the default
        from . import env

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
    import onnx

    g = get_gpu(gpu)
    trt = _version(trt_version)
    in_dims = input_dims(model, batch, dynamic_dims)
    graph = model.graph
    shapes = _shapes_by_inference(model, in_dims)
    notes: list[str] = []
    facts: dict = {"mha_fused": 0, "mha_unfused": 0, "mha_reasons": [], "fp8_conv_fp16": 0,
                   "int8_dw": 0, "fp8_dw_fp16": 0, "standalone_q": 0, "tc_kernels": {},
                   "trt_version": ".".join(map(str, trt))}
    compute_nodes = [n for n in graph.node if n.op_type in COMPUTE]
    if any(not shapes.get(n.output[0]) or None in shapes[n.output[0]] for n in compute_nodes):
        try:
            shapes = _shapes_by_running(model, in_dims)
        except ShapeMismatch as exc:
            raise ShapeMismatch(
                f"the graph cannot run at input shapes {in_dims}: {exc}. An axis the inputs "
                f"declare dynamic is fixed inside the graph (the exporter baked the value it "
                f"traced with), so no engine could run these shapes either; export at these "
                f"shapes or with an exporter that keeps the axis dynamic") from None
        except Exception as exc:
            notes.append(f"shapes from static inference only (running the graph to resolve "
                         f"them failed: {type(exc).__name__}: {str(exc)[:200]})")
    dtypes = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dtypes[vi.name] = vi.type.tensor_type.elem_type
    inits = {i.name: i for i in graph.initializer}
    for name, t in inits.items():
        shapes[name], dtypes[name] = list(t.dims), t.data_type
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            t = n.attribute[0].t
            inits[n.output[0]] = t
            shapes[n.output[0]], dtypes[n.output[0]] = list(t.dims), t.data_type
    for n in graph.node:  # Q/DQ keep their input's shape
        if _is_qdq(n.op_type) and not shapes.get(n.output[0]):
            shapes[n.output[0]] = shapes.get(n.input[0])
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_inputs = {i.name for i in graph.input if i.name not in inits}
    graph_outputs = {o.name for o in graph.output}

    def numel(name):
        s = shapes.get(name)
        return float(np.prod(s)) if s and all(isinstance(x, int) and x > 0 for x in s) else 0.0

    def q_precision(name):
        """Precision of a tensor fed through DequantizeLinear (int8/fp8), else None."""
        p, hops = producer.get(name), 0
        while p is not None and p.op_type in ("Transpose", "Reshape", "Cast", "Squeeze",
                                               "Unsqueeze") and hops < 4:
            p, hops = producer.get(p.input[0]), hops + 1
        if p is None or "Dequantize" not in p.op_type:
            return None
        src = p.input[0]
        et = dtypes.get(src)
        if et is None and producer.get(src) is not None and len(producer[src].input) > 2:
            et = dtypes.get(producer[src].input[2])
        if et in (onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2) or "FP8" in p.op_type:
            return "fp8"
        return "int8"

    constant = set(inits)
    for n in graph.node:  # folded at build time: weight Q/DQ, transposes of weights
        if all(i in constant for i in n.input if i):
            constant.update(n.output)

    def tensor_bytes(name) -> float:
        """Bytes of a tensor as the engine stores it."""
        ne = numel(name)
        p = producer.get(name)
        if p is not None and p.op_type == "QuantizeLinear" or (p is not None and "FP8Quantize" in p.op_type):
            return ne * 1
        if name in inits:
            return ne * _np_dtype_bytes(inits[name].data_type)
        if name in constant:  # a weight quantized at build time
            return ne * BYTES[q_precision(name) or float_precision]
        et = dtypes.get(name)
        if et in (onnx.TensorProto.INT64,):
            return ne * 8
        if et in (onnx.TensorProto.INT32,):
            return ne * 4
        if et in (onnx.TensorProto.BOOL, onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            return ne * 1
        return ne * BYTES["fp32" if float_precision == "fp32" else float_precision]

    # ---- attention: MatMul -> (scale, mask) -> Softmax -> MatMul
    mha_of: dict[str, int] = {}       # node name -> mha group index
    mha_groups: list[dict] = []
    passthrough = {"Add", "Div", "Mul", "Where", "Cast", "Sub", "Reshape", "Transpose",
                   "QuantizeLinear", "DequantizeLinear", "Squeeze", "Unsqueeze"}

    def nid(n):
        return n.name or f"{n.op_type}:{n.output[0]}"

    for sm in (n for n in graph.node if n.op_type == "Softmax"):
        between, cur, bmm1 = [], producer.get(sm.input[0]), None
        for _ in range(8):
            if cur is None:
                break
            if cur.op_type == "MatMul" and not any(i in constant for i in cur.input):
                bmm1 = cur
                break
            if cur.op_type not in passthrough:
                break
            between.append(cur)
            main = [i for i in cur.input if i and i not in constant]
            main.sort(key=lambda i: -numel(i))  # the scores, not a broadcast mask
            cur = producer.get(main[0]) if main else None
        bmm2, t, after = None, sm.output[0], []
        for _ in range(6):
            cs = consumers.get(t, [])
            if len(cs) == 2 and {c.op_type for c in cs} == {"IsNaN", "Where"}:
                # exporters guard fully masked rows: Where(IsNaN(p), 0, p), fused with softmax
                after.extend(cs)
                t = next(c for c in cs if c.op_type == "Where").output[0]
                continue
            if len(cs) != 1:
                break
            c = cs[0]
            if c.op_type == "MatMul" and c.input[0] == t and c.input[1] not in constant:
                bmm2 = c
                break
            if c.op_type not in ("Cast", "QuantizeLinear", "DequantizeLinear", "Reshape"):
                break
            after.append(c)
            t = c.output[0]
        if bmm1 is None or bmm2 is None:
            continue
        p1 = {q_precision(bmm1.input[0]), q_precision(bmm1.input[1])}
        p2 = {q_precision(bmm2.input[0]), q_precision(bmm2.input[1])}
        qs, ks = shapes.get(bmm1.input[0]) or [], shapes.get(bmm1.input[1]) or []
        sc, o2 = shapes.get(bmm1.output[0]) or [], shapes.get(bmm2.output[0]) or []
        # head size: Q's last axis, else the output's; key length: K's last axis, else the
        # scores' (static inference can leave any of them unknown)
        head = _known(qs[-1:]) or _known(o2[-1:]) or _known(ks[-2:-1])
        seq_kv = _known(ks[-1:]) or _known(sc[-1:])
        reason, fused, prec = "", True, float_precision
        if len(p1) > 1 or len(p2) > 1 or p1 != p2:
            fused, reason = False, ("Q/DQ placement: the two attention BMMs are not quantized "
                                    "alike, so TensorRT cannot fuse them into one MHA kernel")
        else:
            q = next(iter(p1))
            prec = q or float_precision
            if q == "fp8" and not g.fp8:
                fused, reason = False, f"{g.name} has no FP8 tensor cores"
            elif q == "fp8" and g.arch == "Ada" and (trt < (10, 6) or seq_kv > 3072 or head > 64):
                fused, reason = False, (f"FP8 MHA fusion on Ada needs TensorRT >= 10.6, sequence "
                                        f"<= 3072, head size <= 64 (here TRT {'.'.join(map(str, trt))},"
                                        f" seq {seq_kv}, head {head})")
            elif q == "int8" and seq_kv > 512:
                fused, reason = False, f"INT8 fused MHA needs sequence <= 512 (here {seq_kv})"
            if q in ("fp8", "int8"):  # would the other format fuse this block?
                f8 = g.fp8 and not (g.arch == "Ada" and (trt < (10, 6) or seq_kv > 3072
                                                           or head > 64))
                i8 = seq_kv <= 512
                _count(facts, "fp8_int8_differ" if f8 != i8 else "fp8_int8_same",
                       f"attention block(s) (key length {seq_kv}, head size {head}) fused into "
                       f"one MHA kernel " + ("in FP8 and in INT8" if f8 and i8 else
                                             "in neither FP8 nor INT8" if not (f8 or i8) else
                                             "in FP8 only" if f8 else "in INT8 only"))
        idx = len(mha_groups)
        mha_groups.append({"bmm1": bmm1, "bmm2": bmm2, "softmax": sm, "fused": fused,
                           "precision": prec, "reason": reason, "head": head, "seq": seq_kv,
                           "nodes": [bmm1, *between, sm, *after, bmm2]})
        if fused:
            for n in mha_groups[-1]["nodes"]:
                mha_of[nid(n)] = idx
            facts["mha_fused"] += 1
            if prec not in facts.setdefault("mha_fused_precision", []):
                facts["mha_fused_precision"].append(prec)
        else:
            facts["mha_unfused"] += 1
            if reason not in facts["mha_reasons"]:
                facts["mha_reasons"].append(reason)

    # ---- partition into kernels, in graph order
    ks: list[Kernel] = []
    kernel_of: dict[str, int] = {}   # tensor -> kernel that produces it
    node_kernel: dict[str, int] = {}
    alias: dict[str, str] = {}       # tensor -> the tensor whose bytes it is (shape ops, no copy)
    mha_kernel: dict[int, int] = {}
    prequant: set = set()            # tensors that arrive from the host already quantized
    extra_read: dict[int, float] = {}  # kernel -> bytes it reads beyond its inputs' storage
    extra_write: dict[int, float] = {}  # reformat kernel -> bytes of the FP16 copy it writes
    ins_extra: list = []               # (reformat kernel, tensor it reads)

    def new(kernel: Kernel) -> int:
        ks.append(kernel)
        return len(ks) - 1

    def place(n, key, k: int) -> None:
        """Node `n` runs inside kernel `k`; its outputs come from that kernel."""
        node_kernel[key] = k
        for o in n.output:
            kernel_of[o] = k

    def src_kernel(n, kinds=None):
        best = None
        for i in n.input:
            if i in kernel_of and (kinds is None or ks[kernel_of[i]].kind in kinds):
                best = kernel_of[i] if best is None else max(best, kernel_of[i])
        return best

    for n in graph.node:
        op = n.op_type
        if all(i in constant for i in n.input if i):
            continue
        key = nid(n)
        if key in mha_of:
            gi = mha_of[key]
            if gi not in mha_kernel:
                grp = mha_groups[gi]
                b1, b2 = grp["bmm1"], grp["bmm2"]
                s_shape = shapes.get(b1.output[0]) or []
                sq = _known(s_shape[-2:-1]) or 1
                count = float(np.prod([d or 1 for d in s_shape[:-2]])) if len(s_shape) > 2 else 1.0
                head, seq = grp["head"] or 1, grp["seq"] or 1
                flops = 2.0 * numel(b1.output[0]) * head + 2.0 * numel(b2.output[0]) * seq
                eff = gemm_efficiency(sq, seq, head, count, g.sms)
                mha_kernel[gi] = new(Kernel(f"mha:{b1.name or b1.output[0]}", "mha", grp["precision"],
                                            flops=flops, shape_eff=eff, ops=[]))
            k = mha_kernel[gi]
            ks[k].ops.append(op)
            place(n, key, k)
            continue
        if op in SHAPE_OPS:
            src = src_kernel(n)
            main = [i for i in n.input if i and i not in constant]
            for o in n.output:
                if src is not None:
                    kernel_of[o] = src
                if main and op not in ("Gather", "Concat", "Shape", "Size"):
                    alias[o] = alias.get(main[0], main[0])
            if op == "Gather" and main and n.input[0] in constant:
                # an embedding lookup: a gather kernel reading rows of the table
                k = new(Kernel(key, "gather", float_precision, ops=[op]))
                place(n, key, k)
            continue
        if op in COMPUTE:
            a, b, y = shapes.get(n.input[0]), shapes.get(n.input[1]), shapes.get(n.output[0])
            qa = q_precision(n.input[0])
            qw = q_precision(n.input[1]) if len(n.input) > 1 else None
            prec = qa if qa and qw and qa == qw else float_precision
            kind, flops, eff, note = "gemm", 0.0, 1.0, ""
            if op in ("Conv", "ConvTranspose"):
                groups = next((x.i for x in n.attribute if x.name == "group"), 1)
                kind = "conv"
                if b and y and all(b) and all(y):
                    cin_g, cout = b[1], b[0]
                    taps = float(np.prod(b[2:]))
                    flops = 2.0 * float(np.prod(y)) * cin_g * taps
                    m = float(np.prod(y)) / y[1]
                    if groups > 1 and cin_g == 1:
                        kind = "dwconv"
                    else:
                        eff = gemm_efficiency(m, cout / groups, cin_g * taps, groups, g.sms)
                    no_fp8 = (kind == "dwconv" or groups > 1 or taps > 32
                              or cin_g * groups <= 16 or cout <= 16)
                    if prec in ("fp8", "int8"):
                        _count(facts, "fp8_int8_differ" if no_fp8 else "fp8_int8_same",
                               "conv(s) with no FP8 kernel on Ada (FP8 runs them in FP16, "
                               "INT8 in INT8)" if no_fp8 else
                               "conv(s) with FP8 and INT8 kernels alike")
                    if prec == "fp8" and no_fp8:
                        note = "no FP8 kernel for this conv on Ada: runs in FP16"
                        if kind == "dwconv":
                            facts["fp8_dw_fp16"] += 1
                        else:
                            facts["fp8_conv_fp16"] += 1
                        prec = float_precision
                    elif prec == "int8" and kind == "dwconv":
                        facts["int8_dw"] += 1
            else:
                if a and y and all(a) and all(y):
                    trans_a = any(x.name == "transA" and x.i for x in n.attribute)
                    k_dim = a[0] if (op == "Gemm" and trans_a) else a[-1]
                    flops = 2.0 * numel(n.output[0]) * k_dim
                    weight = len(n.input) > 1 and n.input[1] in constant
                    if weight or len(y) <= 2:
                        m, count = float(np.prod(y[:-1])), 1.0
                    else:
                        m, count = y[-2], float(np.prod(y[:-2]))
                        kind = "bmm"
                    eff = gemm_efficiency(m, y[-1], k_dim, count, g.sms)
                if prec in ("fp8", "int8"):
                    _count(facts, "fp8_int8_same", "GEMM(s) with the same kernel rules and "
                           "tensor-core peak in FP8 and INT8")
            if note and qa:
                # the FP8 input cannot be fused into an FP16 kernel: TensorRT runs the DQ as a
                # reformat kernel of its own (FP8 in, FP16 out), then the conv reads FP16
                x = n.input[0]
                rk = new(Kernel(f"{key}:dequantize", "reformat", float_precision,
                                ops=["DequantizeLinear"], note="FP8 input of an FP16 conv"))
                nb = numel(x)
                ins_extra.append((rk, x))
                extra_write[rk] = nb * BYTES[float_precision]
                facts["standalone_q"] += 1
                extra_read[len(ks)] = nb * (BYTES[float_precision] - 1)
            k = new(Kernel(key, kind, prec, flops=flops, shape_eff=eff, ops=[op], note=note))
            if kind in TC_KINDS:
                facts["tc_kernels"][prec] = facts["tc_kernels"].get(prec, 0) + 1
            place(n, key, k)
            continue
        if "Dequantize" in op and n.input[0] not in constant:
            # an activation DQ fuses into its consumer (which reads the quantized bytes)
            src = src_kernel(n)
            for o in n.output:
                alias[o] = alias.get(n.input[0], n.input[0])
                if src is not None:
                    kernel_of[o] = src
            if any(alias.get(i, i) in prequant for i in n.input):
                prequant.update(n.output)
            continue
        if op in POINTWISE or _is_qdq(op):
            src = src_kernel(n)
            if src is None:
                if input_quantized and op == "Cast" and n.input[0] in graph_inputs:
                    graph_inputs.add(n.output[0])  # the host sends the input already cast
                    alias[n.output[0]] = n.input[0]
                    continue
                is_input_q = op == "QuantizeLinear" and any(i in graph_inputs for i in n.input)
                if is_input_q and input_quantized:  # arrives quantized: no kernel
                    prequant.add(n.output[0])
                    continue
                if _is_qdq(op) and any(alias.get(i, i) in prequant for i in n.input):
                    alias[n.output[0]] = alias.get(n.input[0], n.input[0])
                    prequant.add(n.output[0])
                    continue
                kind = "reformat" if _is_qdq(op) else "pointwise"
                if op == "QuantizeLinear":
                    facts["standalone_q"] += 1
                k = new(Kernel(key, kind, float_precision, ops=[op]))
            else:
                k = src
                ks[k].ops.append(op)
            place(n, key, k)
            continue
        if op in REDUCE:
            src = src_kernel(n, kinds=("norm",))
            if src is None:
                k = new(Kernel(key, "norm", float_precision, ops=[op]))
            else:
                k = src
                ks[k].ops.append(op)
            place(n, key, k)
            continue
        kind = "pool" if "Pool" in op else "other"
        k = new(Kernel(key, kind, float_precision, ops=[op]))
        place(n, key, k)

    # ---- bytes: what enters and leaves each kernel, through DRAM or L2
    node_by_key = {nid(n): n for n in graph.node}
    ins: list[set] = [set() for _ in ks]
    outs: list[set] = [set() for _ in ks]
    for rk, x in ins_extra:
        ins[rk].add(("a", alias.get(x, x)))
    for key, k in node_kernel.items():
        n = node_by_key[key]
        for i in n.input:
            if not i:
                continue
            src = kernel_of.get(i)
            base = alias.get(i, i)
            if src == k and i not in graph_inputs:
                continue
            if i in constant and not (i in alias and alias[i] in graph_inputs):
                if i in inits or producer.get(i) is not None:
                    ins[k].add(("w", base))
                continue
            ins[k].add(("a", base))
        for o in n.output:
            ext = o in graph_outputs or any(
                node_kernel.get(nid(c)) != k for c in consumers.get(o, [])
                if not all(x in constant for x in c.input if x))
            if ext:
                outs[k].add(alias.get(o, o))
    # L2 residency: replay the kernels' reads and writes through an LRU cache of the usable L2
    # for two back-to-back inferences and keep the second (steady state). A read hits for the
    # part of the tensor that less than the cache's worth of other data has pushed out since it
    # was last touched (LRU stack distance); a write costs DRAM only for the part its next read
    # misses (write-back cache). Network inputs arrive in DRAM; outputs leave to DRAM.
    events = []
    for k, kern in enumerate(ks):
        for typ, t in sorted(ins[k]):
            if kern.kind == "gather" and typ == "w":
                continue  # an embedding lookup reads the rows it returns, not the table
            events.append((k, "r", t, tensor_bytes(t), t in graph_inputs or t in prequant))
        for t in sorted(outs[k]):
            nb = tensor_bytes(t)
            if kern.kind == "gather":
                events.append((k, "r", f"{t}:table-rows", nb, True))
            events.append((k, "w", t, nb, t in graph_outputs))
        if extra_write.get(k):
            events.append((k, "w", f"{k + 1}:fp16-copy", extra_write[k], False))
        if extra_read.get(k):
            events.append((k, "r", f"{k}:fp16-copy", extra_read[k], False))
    hits = _lru_hits(events, g.l2_mb * 1e6 * L2_USABLE_FRACTION)
    for (k, op_, t, nb, external), h in zip(events, hits):
        ks[k].l2_bytes += nb * h
        ks[k].dram_bytes += nb * (1 - h)
    for kern in ks:
        if kern.kind == "dwconv":
            kern.shape_eff = 1.0

    unknown = sum(1 for kern in ks if kern.kind in ("conv", "gemm", "bmm") and not kern.flops)
    if unknown:
        notes.append(f"{unknown} conv/matmul nodes had shapes shape inference could not resolve; "
                     f"their FLOPs are counted as 0")
    return Graph(ks, notes, facts)


def _lru_hits(events, capacity: float) -> list:
    """Per event, the share served by L2 in the second of two back-to-back passes."""
    from collections import OrderedDict

    n = len(events)
    hit = [0.0] * n
    for pass_ in range(2):
        lru: OrderedDict = OrderedDict()
        if pass_ == 1:
            lru = state
        for i, (_, op_, t, nb, external) in enumerate(events):
            if op_ == "r":
                if external or t not in lru:
                    h = 0.0
                else:
                    dist, found = 0.0, False
                    for name in reversed(lru):
                        if name == t:
                            found = True
                            break
                        dist += lru[name]
                        if dist >= capacity:
                            break
                    h = min(1.0, max(0.0, (capacity - dist) / nb)) if found and nb else 0.0
                if pass_ == 1:
                    hit[i] = h
            lru[t] = nb
            lru.move_to_end(t)
            while len(lru) > 4096:
                lru.popitem(last=False)
        state = lru
    # a write is absorbed by L2 for the part its next read finds there
    nxt: dict = {}
    for i in range(n - 1, -1, -1):
        _, op_, t, nb, external = events[i]
        if op_ == "w":
            hit[i] = 0.0 if external else nxt.get(t, 0.0)
        else:
            nxt[t] = hit[i]
    return hit


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


def klass(k: Kernel) -> int:
    """0: FP16/FP32 tensor-core kernel, 1: INT8/FP8 tensor-core kernel, 2: other."""
    if k.kind in TC_KINDS and k.flops:
        return 1 if k.precision in ("int8", "fp8") else 0
    return 2


def features(ks: list, gpu) -> dict:
    """Per-kernel numbers the fitted constants act on (what the fit and LOO store)."""
    g = get_gpu(gpu)
    return {"klass": [klass(k) for k in ks],
            "compute_s": [compute_seconds(k, g) for k in ks],
            "memory_s": [memory_seconds(k, g) for k in ks]}


FP16_TC_SHARE = 0.10  # FP16 tensor-core share of tensor-core compute that makes a graph "FP16"


def validation_kinds(feat: dict, facts: dict | None = None) -> list[str]:
    """The kinds of work in a graph that the truth table validates separately: 'fp16_gemm'
    (FP16 tensor-core kernels carry >= 10% of its tensor-core compute) and 'attention' (any
    attention block, fused MHA or not). The shipped fit's absolute rows are INT8 CNNs, so a
    graph of these kinds gets the band of the rows that do validate them (estimate.py)."""
    kl = np.asarray(feat["klass"])
    comp = np.asarray(feat["compute_s"], float)
    tc = float(comp[kl < 2].sum())
    out = []
    if tc > 0 and float(comp[kl == 0].sum()) >= FP16_TC_SHARE * tc:
        out.append("fp16_gemm")
    if facts and (facts.get("mha_fused") or facts.get("mha_unfused")):
        out.append("attention")
    return out


def kernel_ms(klass_: np.ndarray, comp: np.ndarray, mem: np.ndarray, c: Constants) -> np.ndarray:
    """Each kernel's time: max(compute / efficiency, memory / bandwidth efficiency) + fixed."""
    eff = np.where(klass_ == 0, c.tc_eff, np.where(klass_ == 1, c.tc8_eff, 1.0))
    return 1e3 * np.maximum(comp / eff, mem / c.mem_eff) + c.kernel_us * 1e-3


def predict_ms(feat: dict, c: Constants) -> float:
    return float(kernel_ms(np.asarray(feat["klass"]), np.asarray(feat["compute_s"], float),
                           np.asarray(feat["memory_s"], float), c).sum())


# ------------------------------------------------------------------ fitting

def row_ms(row: dict, c: Constants) -> float:
    """A fit row's predicted latency (ms)."""
    return predict_ms(row["features"], c)


def fit(rows: list, start: Constants | None = None, prior: Constants | None = None,
        prior_weight: float = 0.0) -> Constants:
    """Least squares in log space over rows.

    Each row: {"features": dict, "measured_ms": float} (an absolute row) or
    {"ratio": (features_a, features_b), "measured": a_ms / b_ms} (a speed-up pair). With
    `prior`, a pull of `prior_weight` towards it (used when refitting on a user's few rows)."""
    from scipy.optimize import least_squares

    if not rows:
        raise BadInput("nothing to fit: no rows")
    start = start or Constants()
    lo = np.log([b[0] for b in Constants.BOUNDS])
    hi = np.log([b[1] for b in Constants.BOUNDS])
    x0 = np.clip(np.log(start.vector()), lo + 1e-9, hi - 1e-9)

    def resid(x):
        c = Constants.from_vector(np.exp(x))
        r = []
        for row in rows:
            if "ratio" in row:
                fa, fb = row["ratio"]
                r.append(math.log(predict_ms(fa, c) / predict_ms(fb, c)) - math.log(row["measured"]))
            else:
                r.append(math.log(row_ms(row, c) / row["measured_ms"]))
        if prior is not None and prior_weight:
            r.extend(prior_weight * (x - np.log(prior.vector())))
        return np.array(r)

    best = None
    for scale in (1.0, 0.6, 1.6):  # a few starts: the max() makes the surface piecewise
        x = np.clip(x0 + np.log(scale), lo + 1e-9, hi - 1e-9)
        sol = least_squares(resid, x, bounds=(lo, hi), method="trf")
        if best is None or sol.cost < best.cost:
            best = sol
    return Constants.from_vector(np.exp(best.x))


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

