"""Run a mixed FP16 / Q-DQ ONNX graph in ONNX Runtime CPU with TensorRT-like numerics.

Why: ModelOpt ONNX PTQ with ``high_precision_dtype="fp16"`` writes a graph whose non-quantized
parts are FP16-typed: FP16 initializers, FP16 Q/DQ scales, Cast(to=FLOAT16). ONNX Runtime's CPU
kernels run such a graph with numerics TensorRT does not have. The decisive one
(onnxruntime <= 1.24.4 at least, microsoft/onnxruntime#22741, fixed upstream by #32452): the
MLFloat16 QuantizeLinear kernel converts ``x / scale`` with a C cast, i.e. it **truncates
toward zero** instead of rounding half to even, so every INT8 activation quantizer of an FP16
graph loses on average half a step toward zero (a systematic gain loss that compounds layer by
layer). FP32 QuantizeLinear in the same ORT follows the ONNX spec. TensorRT's IQuantizeLayer
rounds half to even (TensorRT developer guide, "Quantization Scheme":
``x_q = roundWithTiesToEven(clip(x / s, -128, 127))``).

What `trt_numerics` does (the model a TensorRT strongly typed engine computes):

* every FP16 tensor becomes FP32: FP16 initializers and Constant/ConstantOfShape tensors are
  upcast (exactly: every FP16 value is an FP32 value), ``dtype``/``output_dtype`` attributes
  and value_info entries that say FLOAT16 say FLOAT, so each op (Conv/MatMul/Gemm accumulation,
  LayerNormalization, Softmax, Q/DQ) runs in ONNX Runtime's FP32 kernel;
* FP16 storage is re-applied where TensorRT stores an FP16 tensor: after each op whose output
  was FP16-typed a ``Cast(to=FLOAT16) -> Cast(to=FLOAT)`` pair rounds the FP32 result to FP16
  (round to nearest even, with FP16 overflow to inf and underflow to subnormals/zero) and
  keeps the original tensor name. A GEMM/conv accumulates in FP32 and is rounded once, at
  its output, never inside the accumulation;
* no rounding point where TensorRT keeps no FP16 tensor or rounding changes nothing:
  - outputs consumed only by QuantizeLinear (TensorRT fuses the Q into the producer's epilogue
    and writes INT8/FP8 straight from its FP32 result),
  - DequantizeLinear outputs (fused into the consuming INT8/FP8 kernel, which rescales its
    INT32/FP32 accumulator by s_x * s_w),
  - ops whose FP32 result is already an FP16 value when their inputs are (data movement,
    Relu, Max/Min, Clip with FP16 bounds, Neg, Abs, MaxPool, Where, ...);
* explicit ``Cast(to=FLOAT16)`` keeps its rounding: it still casts to FP16 and a
  ``Cast(to=FLOAT)`` follows;
* Q/DQ then run with FP32 inputs and FP32 scales (ORT's FP32 QuantizeLinear rounds half to
  even), for INT8 and FP8 (float8e4m3fn zero points, opset 19/21) alike;
* the graph's declared inputs and outputs keep their original types (an FP16 graph input is
  cast to FP32 inside, an FP16 graph output is cast back to FP16 at the end).

Approximation (documented, not hidden): TensorRT may fuse pointwise epilogues (bias, Relu,
residual Add) into a conv/GEMM and skip the FP16 stores between them, and may use different
accumulation orders; this transform rounds at every FP16-typed op boundary except the cases
above, which changes results by at most about one FP16 ulp per extra store. Subgraphs (If/Loop
bodies) are upcast but get no rounding points beyond their explicit Casts.

Run the result with ORT_ENABLE_BASIC or ORT_DISABLE_ALL: at ORT_ENABLE_EXTENDED/ALL ONNX
Runtime fuses Q/DQ around Conv/MatMul into its own integer kernels (QLinearConv,
MatMulIntegerToFloat, ...), whose requantization rounding is ORT's, not TensorRT's
(microsoft/onnxruntime#24711, #32132). The Cast pairs survive every ORT level (tested).
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16 = TensorProto.FLOAT16
FP32 = TensorProto.FLOAT

# ops whose FP32 output is exactly an FP16 value whenever their float inputs are FP16 values
# (no arithmetic, or selection/comparison only): no rounding point needed after them
EXACT_OPS = frozenset({
    "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Where", "Relu", "Max", "Min", "Clip", "Neg", "Abs", "Sign", "MaxPool",
    "ReduceMax", "ReduceMin", "DepthToSpace", "SpaceToDepth", "Dropout", "Constant",
    "ConstantOfShape", "TopK", "Compress", "Floor", "Ceil", "Round", "Trilu", "ArgMax",
    "ArgMin", "Shape", "Size",
})
# attributes that name a tensor element type (Cast's `to` is handled separately)
DTYPE_ATTRS = ("dtype", "output_dtype")

_SUFFIX_F32 = "__trt_f32"   # an op's FP32 result before its FP16 rounding point
_SUFFIX_F16 = "__trt_f16"   # the same value stored as FP16


def _upcast_tensor(t: TensorProto) -> bool:
    """FP16 TensorProto -> FP32 in place (exact). True when it changed."""
    if t.data_type != FP16:
        return False
    if t.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"tensor {t.name!r} is stored externally; load the model with "
                         f"onnx.load(..., load_external_data=True) first")
    arr = numpy_helper.to_array(t).astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return True


def _upcast_value_infos(infos, stats: Counter) -> None:
    for vi in infos:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type == FP16:
            tt.elem_type = FP32
            stats["value_info_upcast"] += 1


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph we can find (ONNX shape inference,
    falling back on each node's own inputs for what inference leaves untyped)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is best effort, the fallback below remains
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
        elif n.op_type == "Cast":
            to = next(a.i for a in n.attribute if a.name == "to")
            types.setdefault(n.output[0], to)
        for o in n.output:
            if o and o not in types and n.op_type not in ("QuantizeLinear", "Shape", "Size"):
                floats = [types[i] for i in n.input if i in types
                          and types[i] in (FP16, FP32, TensorProto.DOUBLE, TensorProto.BFLOAT16)]
                if floats:
                    types[o] = floats[0]
    return types


def _upcast_graph(graph: onnx.GraphProto, stats: Counter) -> None:
    """Upcast initializers, constants, dtype attributes and value_info of `graph` and its
    subgraphs; split every Cast(to=FLOAT16) into Cast(to=FLOAT16) -> Cast(to=FLOAT)."""
    for t in graph.initializer:
        if _upcast_tensor(t):
            stats["initializers_upcast"] += 1
    _upcast_value_infos(graph.value_info, stats)
    new_nodes = []
    for n in graph.node:
        new_nodes.append(n)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and _upcast_tensor(a.t):
                stats["constants_upcast"] += 1
            elif a.type == onnx.AttributeProto.TENSORS:
                for t in a.tensors:
                    if _upcast_tensor(t):
                        stats["constants_upcast"] += 1
            elif a.name in DTYPE_ATTRS and a.type == onnx.AttributeProto.INT and a.i == FP16:
                a.i = FP32
                stats["dtype_attrs_upcast"] += 1
            if a.type == onnx.AttributeProto.GRAPH:
                _upcast_graph(a.g, stats)
            for sub in a.graphs:
                _upcast_graph(sub, stats)
        if n.op_type == "Cast" and n.domain in ("", "ai.onnx"):
            to = next(a for a in n.attribute if a.name == "to")
            # a Cast whose output ends in _SUFFIX_F16 is a rounding point (this pass's or an
            # earlier one's): it is followed by its Cast(to=FLOAT) already
            if to.i == FP16 and not n.output[0].endswith(_SUFFIX_F16):
                # keep the FP16 rounding the Cast performs, hand FP32 on
                out = n.output[0]
                n.output[0] = out + _SUFFIX_F16
                new_nodes.append(helper.make_node("Cast", [n.output[0]], [out], to=FP32,
                                                  name=(n.name or out) + "/trt_to_fp32"))
                stats["casts_to_fp16_kept_as_rounding"] += 1
    del graph.node[:]
    graph.node.extend(new_nodes)


def _rounding_decision(node, out: str, consumers: dict, graph_outputs: set) -> str | None:
    """None when a rounding point goes after `out`, else the reason it does not."""
    if node.op_type in EXACT_OPS:
        return "exact_in_fp16"
    if node.op_type == "DequantizeLinear":
        return "dq_fused_into_consumer"
    cons = consumers.get(out, [])
    if cons and out not in graph_outputs and all(c.op_type == "QuantizeLinear" for c in cons):
        return "q_fused_into_producer"
    return None


def trt_numerics(model: onnx.ModelProto, *, round_fp16: bool = True
                 ) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` that ONNX Runtime CPU runs with TensorRT-like numerics (see the module
    docstring): FP16 computed in FP32, FP16 rounding re-applied at FP16 tensor boundaries,
    Q/DQ in FP32. Graph inputs/outputs keep their declared types.

    With round_fp16=False no rounding points are inserted (plain FP32 upcast, explicit
    Cast(to=FLOAT16) still rounds): a diagnostic to size the FP16-storage effect.

    Returns (model, stats): stats counts what changed (initializers_upcast, constants_upcast,
    value_info_upcast, dtype_attrs_upcast, casts_to_fp16_kept_as_rounding, fp16_ops (nodes
    with an FP16 output), rounding_points, rounding_skipped_<reason>, io_casts)."""
    src = model
    model = onnx.ModelProto()
    model.CopyFrom(src)
    types = _elem_types(src)
    stats: Counter = Counter()
    g = model.graph

    # which outputs of which nodes were FP16 (decided on the original graph, before the
    # Cast split renames Cast outputs)
    fp16_outs = {(i, o) for i, n in enumerate(g.node) for o in n.output
                 if o and types.get(o) == FP16 and n.op_type != "Cast"}
    stats["fp16_ops"] = len({i for i, _ in fp16_outs}) + sum(
        1 for n in g.node if n.op_type == "Cast" and types.get(n.output[0]) == FP16)

    graph_outputs = {o.name for o in g.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for x in n.input:
            consumers[x].append(n)

    # rounding points after FP16-typed op outputs (original node indices)
    rounding_after: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for i, o in sorted(fp16_outs):
        node = g.node[i]
        why = (_rounding_decision(node, o, consumers, graph_outputs) if round_fp16
               else "round_fp16_off")
        if why is not None:
            stats[f"rounding_skipped_{why}"] += 1
            continue
        rounding_after[i].append((o, node.name or o))
    nodes = list(g.node)
    del g.node[:]
    for i, n in enumerate(nodes):
        extra = []
        for out, name in rounding_after.get(i, []):
            pos = list(n.output).index(out)
            n.output[pos] = out + _SUFFIX_F32
            extra.extend([
                helper.make_node("Cast", [out + _SUFFIX_F32], [out + _SUFFIX_F16], to=FP16,
                                 name=f"{name}/trt_round_fp16"),
                helper.make_node("Cast", [out + _SUFFIX_F16], [out], to=FP32,
                                 name=f"{name}/trt_back_fp32")])
            stats["rounding_points"] += 1
        # (append after editing: a repeated protobuf field stores a copy)
        g.node.append(n)
        g.node.extend(extra)

    _upcast_graph(g, stats)

    # graph I/O keep their declared types
    head, tail = [], []
    for vi in g.input:
        if vi.type.tensor_type.elem_type == FP16 and vi.name not in {t.name for t in g.initializer}:
            inner = vi.name + "__trt_in_f32"
            for n in g.node:
                for k, x in enumerate(n.input):
                    if x == vi.name:
                        n.input[k] = inner
            head.append(helper.make_node("Cast", [vi.name], [inner], to=FP32,
                                         name=f"{vi.name}/trt_input_to_fp32"))
            stats["io_casts"] += 1
    for vi in g.output:
        if vi.type.tensor_type.elem_type == FP16:
            inner = vi.name + "__trt_out_f32"
            for n in g.node:
                for k, x in enumerate(n.output):
                    if x == vi.name:
                        n.output[k] = inner
                for k, x in enumerate(n.input):
                    if x == vi.name:
                        n.input[k] = inner
            tail.append(helper.make_node("Cast", [inner], [vi.name], to=FP16,
                                         name=f"{vi.name}/trt_output_to_fp16"))
            stats["io_casts"] += 1
    if head or tail:
        body = list(g.node)
        del g.node[:]
        g.node.extend(head + body + tail)
    return model, dict(sorted(stats.items()))


def session(model: onnx.ModelProto, level: str = "BASIC"):
    """An ONNX Runtime CPU session for a (transformed) model, at ORT_ENABLE_<level> /
    ORT_DISABLE_ALL ("DISABLE_ALL")."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                                   if level == "DISABLE_ALL"
                                   else getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}"))
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
