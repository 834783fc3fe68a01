"""GPU specs and a per-layer latency model. Every number it gives is an ESTIMATE, and says so.

Per kernel: time = max(FLOPs / (peak at the kernel's precision x efficiency),
                       bytes moved / (DRAM bandwidth x efficiency)) + a fixed per-kernel cost.
Pointwise ops and Q/DQ fold into the kernel that produces their input (as TensorRT fuses
them); shape ops cost nothing. It is a roofline with a launch floor, nothing more: it knows no
tactics, no L2 residency and no clock behaviour under the L4's 72 W cap.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import BadInput

COMPUTE_EFF = 0.55      # share of dense tensor-core peak a well-shaped GEMM/conv reaches
CUDA_CORE_EFF = 0.35    # depthwise/grouped convs run on CUDA cores, badly fed
MEMORY_EFF = 0.70       # share of DRAM bandwidth a streaming kernel reaches
KERNEL_US = 4.0         # fixed cost of one kernel inside a CUDA graph (launch gap, ramp, tail)
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


@dataclass
class Estimate:
    """Per-layer and total estimated latency of one graph on one GPU at one batch size."""

    layers: object  # DataFrame
    total_ms: float
    gpu: str
    batch: int
    source: str
    notes: list = field(default_factory=list)

    @property
    def throughput_qps(self) -> float:
        return 1000.0 / self.total_ms if self.total_ms > 0 else float("nan")

    @property
    def throughput_samples_s(self) -> float:
        return self.throughput_qps * self.batch

    def to_dict(self) -> dict:
        return {"estimate": True, "source": self.source, "gpu": self.gpu, "batch": self.batch,
                "total_ms": self.total_ms, "throughput_qps": self.throughput_qps,
                "throughput_samples_s": self.throughput_samples_s, "notes": self.notes,
                "model": {"compute_eff": COMPUTE_EFF, "memory_eff": MEMORY_EFF,
                          "kernel_us": KERNEL_US},
                "layers": self.layers.to_dict(orient="records")}

    def to_text(self, top: int = 25) -> str:
        df = self.layers.sort_values("latency_ms", ascending=False).head(top)
        lines = [f"ESTIMATE - not measured on {self.gpu}: l4opt cost model, batch {self.batch}",
                 f"{'layer':60s} {'prec':5s} {'GFLOP':>8s} {'MB':>8s} {'est. ms':>9s}"]
        for r in df.itertuples():
            lines.append(f"{str(r.layer)[:60]:60s} {r.precision:5s} {r.flops / 1e9:8.3f} "
                         f"{r.bytes / 1e6:8.3f} {r.latency_ms:9.4f}")
        lines.append(f"... {len(self.layers)} kernels in all")
        lines.append(f"est. latency {self.total_ms:.4f} ms, est. throughput "
                     f"{self.throughput_samples_s:.1f} samples/s on {self.gpu} (ESTIMATE)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _kernel_time(gpu: GPUSpec, flops: float, nbytes: float, precision: str, cuda_core: bool):
    if cuda_core:
        peak = gpu.tflops["fp32"] * 1e12 * (2 if precision != "fp32" else 1) * CUDA_CORE_EFF
    elif precision == "fp32":
        peak = gpu.tflops["fp32"] * 1e12 * COMPUTE_EFF
    else:
        peak = gpu.peak(precision) * COMPUTE_EFF
    compute_ms = 1e3 * flops / peak if flops else 0.0
    memory_ms = 1e3 * nbytes / (gpu.bandwidth_gbs * 1e9 * MEMORY_EFF)
    return compute_ms, memory_ms, KERNEL_US / 1e3


def _finish(rows: list[dict], gpu: GPUSpec, batch: int, notes: list) -> Estimate:
    import pandas as pd

    for r in rows:
        c, m, o = _kernel_time(gpu, r["flops"], r["bytes"], r["precision"], r.pop("cuda_core"))
        r.update(compute_ms=c, memory_ms=m, overhead_ms=o if r["kernel"] else 0.0)
        r["latency_ms"] = (max(c, m) + r["overhead_ms"]) if r["kernel"] else 0.0
    df = pd.DataFrame(rows, columns=["layer", "op_type", "precision", "flops", "bytes",
                                     "compute_ms", "memory_ms", "overhead_ms", "latency_ms",
                                     "kernel"])
    if not gpu.fp8 and (df["precision"] == "fp8").any():
        notes.append(f"{gpu.name} (sm_{gpu.compute_capability.replace('.', '')}) has no FP8 "
                     f"tensor cores; FP8 layers priced at FP16")
    return Estimate(df, float(df["latency_ms"].sum()), gpu.name, batch,
                    f"estimated-{gpu.name.lower().replace(' ', '-')}", notes)


# ------------------------------------------------------------------ engine layer info

def estimate_engine(layers, gpu="L4", batch: int = 1) -> Estimate:
    """Estimate from an engine's layer information (l4opt.engine_report.read_layer_info)."""
    g = get_gpu(gpu)
    rows = []
    for r in layers.to_dict("records"):
        ins = [d for d in (r.get("in_dims") or []) if d]
        outs = [d for d in (r.get("out_dims") or []) if d]
        scale = batch / max(1, (ins[0][0] if ins and ins[0] else 1))
        prec = r.get("precision", "unknown")
        in_prec = r.get("in_precision", prec)
        act = sum(np.prod(d) * BYTES.get(in_prec, 2) for d in ins) + \
            sum(np.prod(d) * BYTES.get(prec, 2) for d in outs)
        wbytes = r.get("weights_count", 0) * BYTES.get(r.get("weights_type") or prec, 2)
        flops, cuda_core = 0.0, False
        if r.get("param_type") == "Convolution" and outs and r.get("kernel"):
            k = float(np.prod(r["kernel"]))
            cin = ins[0][1] if ins and len(ins[0]) > 1 else 1
            groups = r.get("groups") or 1
            flops = 2.0 * np.prod(outs[0]) * (cin / groups) * k
            cuda_core = groups > 1 and groups == cin
        elif r.get("param_type") in ("FullyConnected", "MatrixMultiply", "Gemm"):
            flops = 2.0 * r.get("weights_count", 0) * (ins[0][0] if ins else 1)
        kernel = r.get("layer_type") not in ("NoOp", "Shuffle") or r.get("fused_ops", 1) > 1
        rows.append({"layer": r["name"], "op_type": r.get("layer_type"),
                     "precision": in_prec if flops and in_prec in ("int8", "fp8") else prec,
                     "flops": flops * scale, "bytes": act * scale + wbytes,
                     "cuda_core": cuda_core, "kernel": bool(kernel)})
    return _finish(rows, g, batch, [])


# ------------------------------------------------------------------ ONNX graphs

SHAPE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Shape", "Constant", "Flatten",
             "Identity", "ConstantOfShape", "Range", "Expand", "Slice", "Gather", "Concat",
             "Split", "Size", "NonZero"}
POINTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Erf", "Gelu",
             "Sqrt", "Pow", "Where", "Cast", "Neg", "Exp", "Abs", "LeakyRelu", "HardSigmoid",
             "HardSwish", "Not", "Equal", "Less", "Greater", "And", "Or", "Min", "Max",
             "QuantizeLinear", "DequantizeLinear", "BatchNormalization", "Dropout", "Softplus",
             "Mish", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "IsNaN"}
COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def _np_dtype_bytes(elem_type: int) -> int:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 1


def _input_dims(model, batch: int, dynamic_dims: dict | None) -> dict[str, list[int]]:
    """Concrete input shapes: named dynamic dims from `dynamic_dims`, axis 0 from `batch`."""
    dims = dict(dynamic_dims or {})
    init = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        shape = []
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.dim_value:
                shape.append(int(d.dim_value))
            elif d.dim_param in dims:
                shape.append(int(dims[d.dim_param]))
            elif i == 0:
                shape.append(int(batch))
            else:
                raise BadInput(f"input {inp.name!r} has dynamic axis {i} ({d.dim_param or '?'}); "
                               f"give its value, e.g. dynamic_dims={{'{d.dim_param or 'seq'}': 128}} "
                               f"(CLI: --dim {d.dim_param or 'seq'}=128)")
        out[inp.name] = shape
    return out


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
        if "Quantize" in n.op_type or "Dequantize" in n.op_type:
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
    outs = sess.run(None, feeds)
    shapes = {o.name: list(np.shape(v)) for o, v in zip(sess.get_outputs(), outs)}
    shapes.update({q: shapes[src] for q, src in alias.items() if src in shapes})
    return shapes


def estimate_onnx(model_or_path, gpu="L4", batch: int = 1, float_precision: str = "fp16",
                  dynamic_dims: dict | None = None) -> Estimate:
    """Estimate a (Q/DQ) ONNX graph as TensorRT would run it strongly typed.

    Conv/MatMul/Gemm fed by DequantizeLinear on both data and weights run at the Q/DQ
    precision; other float math at `float_precision` (the baseline deploys as FP16).
    """
    import onnx

    g = get_gpu(gpu)
    try:
        model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else \
            onnx.load(str(model_or_path))
    except Exception as exc:
        raise BadInput(f"cannot read ONNX model {model_or_path}: {exc}") from exc
    in_dims = _input_dims(model, batch, dynamic_dims)
    graph = model.graph
    compute = [n for n in graph.node if n.op_type in COMPUTE]
    shapes = _shapes_by_inference(model, in_dims)
    notes = []
    if any(not shapes.get(n.output[0]) or None in shapes[n.output[0]] for n in compute):
        try:
            shapes = _shapes_by_running(model, in_dims)
        except Exception as exc:
            notes.append(f"shapes from static inference only (running the graph to resolve "
                         f"them failed: {type(exc).__name__}: {str(exc)[:200]})")
    dtypes = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dtypes[vi.name] = vi.type.tensor_type.elem_type
    inits = {i.name: i for i in graph.initializer}
    for name, t in inits.items():
        shapes[name], dtypes[name] = list(t.dims), t.data_type
    for n in graph.node:  # Q/DQ keep their input's shape
        if ("Quantize" in n.op_type or "Dequantize" in n.op_type) and not shapes.get(n.output[0]):
            shapes[n.output[0]] = shapes.get(n.input[0])
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            t = n.attribute[0].t
            inits[n.output[0]] = t
            shapes[n.output[0]], dtypes[n.output[0]] = list(t.dims), t.data_type
    producer = {o: n for n in graph.node for o in n.output}

    def numel(name):
        s = shapes.get(name)
        return float(np.prod(s)) if s and all(isinstance(x, int) and x > 0 for x in s) else None

    def q_precision(name):
        """Precision of a tensor fed through DequantizeLinear (int8/fp8), else None."""
        p = producer.get(name)
        hops = 0
        while p is not None and p.op_type in ("Transpose", "Reshape", "Cast") and hops < 3:
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

    rows, unknown, kernel_of = [], 0, {}
    constant = set(inits)
    for n in graph.node:
        op = n.op_type
        out_n = sum(numel(o) or 0 for o in n.output)
        if all(i in constant for i in n.input if i):
            constant.update(n.output)  # folded at build time (weight Q/DQ, transposes)
            continue
        if op in SHAPE_OPS:
            src = next((kernel_of[i] for i in n.input if i in kernel_of), None)
            if src is not None:
                for o in n.output:
                    kernel_of[o] = src
            continue
        if op in POINTWISE or "Quantize" in op or "Dequantize" in op:
            src = next((kernel_of[i] for i in n.input if i in kernel_of), None)
            if src is not None:  # fused into the kernel producing its input
                for o in n.output:
                    kernel_of[o] = src
                rows[src]["bytes"] += 0  # the fused op reuses the kernel's output in registers
                continue
        prec = float_precision
        flops, cuda_core = 0.0, False
        if op in COMPUTE:
            qa, qw = q_precision(n.input[0]), q_precision(n.input[1]) if len(n.input) > 1 else None
            prec = qa if qa and qw else float_precision
            a, b, y = shapes.get(n.input[0]), shapes.get(n.input[1]), shapes.get(n.output[0])
            if op in ("MatMul", "Gemm") and a and y and all(a) and all(y):
                k = a[-1] if op == "MatMul" else (a[0] if any(x.name == "transA" and x.i for x in n.attribute) else a[-1])
                flops = 2.0 * (numel(n.output[0]) or 0) * k
            elif op in ("Conv", "ConvTranspose") and b and y and all(b) and all(y):
                groups = next((x.i for x in n.attribute if x.name == "group"), 1)
                flops = 2.0 * float(np.prod(y)) * b[1] * float(np.prod(b[2:]))
                cuda_core = groups > 1 and b[1] == 1
            if not flops:
                unknown += 1
        in_bytes = 0.0
        for i in n.input:
            ne = numel(i)
            if ne is None:
                continue
            w = inits.get(i)
            q = q_precision(i)
            if w is not None:
                in_bytes += ne * _np_dtype_bytes(w.data_type)
            elif i in constant:  # a weight quantized at build time
                in_bytes += ne * BYTES[q or float_precision]
            else:
                in_bytes += ne * BYTES[q or ("fp32" if dtypes.get(i) == onnx.TensorProto.FLOAT and float_precision == "fp32" else float_precision)]
        nbytes = in_bytes + out_n * BYTES.get(prec if prec in ("int8", "fp8") else float_precision, 2)
        rows.append({"layer": n.name or f"{op}_{len(rows)}", "op_type": op, "precision": prec,
                     "flops": flops, "bytes": nbytes, "cuda_core": cuda_core, "kernel": True})
        for o in n.output:
            kernel_of[o] = len(rows) - 1
    if unknown:
        notes.append(f"{unknown} conv/matmul nodes had shapes shape inference could not resolve; "
                     f"their FLOPs are counted as 0")
    return _finish(rows, g, batch, notes)


# ------------------------------------------------------------------ validation

def validate_on_export(export, gpu="TITAN RTX") -> dict:
    """Estimate a measured engine (EngineExport) and compare per layer and end to end."""
    est = estimate_engine(export.layers, gpu=gpu, batch=1)
    out = {"engine": export.name, "gpu": get_gpu(gpu).name, "estimated_ms": est.total_ms}
    if export.summary:
        measured = export.summary["performance"]["GPU Compute Time"]["median"]
        out.update(measured_median_ms=measured,
                   end_to_end_error=(est.total_ms - measured) / measured)
    if export.profile is not None:
        m = export.profile.set_index("name")["average_ms"]
        per = est.layers.assign(measured_ms=est.layers["layer"].map(m)).dropna(subset=["measured_ms"])
        per = per[per["measured_ms"] > 0]
        err = (per["latency_ms"] - per["measured_ms"]) / per["measured_ms"]
        out.update(layers_compared=int(len(per)),
                   per_layer_median_abs_error=float(err.abs().median()),
                   per_layer_p90_abs_error=float(err.abs().quantile(0.9)),
                   profiled_sum_ms=float(per["measured_ms"].sum()))
        out["per_layer"] = per.assign(error=err)[["layer", "op_type", "precision", "latency_ms",
                                                  "measured_ms", "error"]]
    return out
