"""Tensor shapes and types of a graph at concrete input shapes, and the tensor facts the cost
model's rules read (producers, consumers, build-time constants, the Q/DQ precision feeding a
tensor).

Shapes (`resolve_shapes`) come, in order, from: ONNX shape inference with data propagation on
a copy without the weights; the same with the graph's shape arithmetic (Shape, Gather, Div,
Concat, ... on tensors of at most FOLD_MAX elements) evaluated and folded in, repeated until
nothing more folds; ONNX Runtime's symbolic shape inference; and only as a last resort one run
of the graph in ONNX Runtime with every tensor exposed, refused when the tensors inference knows
would exceed MAX_RUN_LARGEST / MAX_RUN_TOTAL. Shapes that contradict each other (strict
inference errors, Reshape/MatMul/Conv checks in `check_consistent`) raise ShapeMismatch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l4opt.errors import BadInput
from l4opt.onnx.graph import GEMM_OPS, is_dq, is_qdq_op


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
    from l4opt.spec import shapes as shapes_mod

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


def _known(dims) -> int:
    """The first of `dims` if it is a known positive size, else 0."""
    d = dims[0] if len(dims) else None
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else 0


def _copy_field(dst, name: str, value) -> None:
    if hasattr(value, "extend"):        # a repeated field
        getattr(dst, name).extend(value)
    elif hasattr(value, "CopyFrom"):    # a message
        getattr(dst, name).CopyFrom(value)
    else:
        setattr(dst, name, value)


def _light_copy(model, in_dims: dict):
    """The graph with large initializers turned into typed inputs (no weight bytes) and
    concrete input shapes: cheap to copy and to run shape inference on."""
    import onnx

    # everything but the graph, then the graph without its large initializers: the weights
    # are never copied (a model is often several GB)
    m = onnx.ModelProto()
    g = model.graph
    for fd, value in model.ListFields():
        if fd.name == "graph":
            continue
        _copy_field(m, fd.name, value)
    for fd, value in g.ListFields():
        if fd.name == "initializer":
            continue
        _copy_field(m.graph, fd.name, value)
    for init in g.initializer:
        if int(np.prod(init.dims) if init.dims else 1) > 64:
            m.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                                    list(init.dims)))
        else:
            m.graph.initializer.append(init)
    for inp in m.graph.input:
        if inp.name in in_dims:
            for d, v in zip(inp.type.tensor_type.shape.dim, in_dims[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = v
    return m


def _shape_dict(inf) -> dict[str, list]:
    out = {}
    for vi in list(inf.graph.input) + list(inf.graph.value_info) + list(inf.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                            for d in tt.shape.dim]
    return out


# words of ONNX's strict shape inference that mean the graph contradicts itself at these shapes
# (not that an op lacks an inference function, nor that a declared output or value_info shape,
# metadata an exporter may have written at another batch, differs from the inferred one)
INCONSISTENT = ("Incompatible dimensions", "incompatible", "mismatch", "does not match",
                "cannot reshape", "Cannot reshape", "broadcast")


def _infer(light):
    """ONNX shape inference with data propagation; strict, so a graph whose shapes contradict
    each other at these input shapes raises ShapeMismatch (errors that only mean an op has no
    inference function fall back to the lenient pass)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        msg = " ".join(str(exc).split())
        if any(w in msg for w in INCONSISTENT):
            raise ShapeMismatch(f"shape inference: {msg[:400]}") from None
    return onnx.shape_inference.infer_shapes(light, data_prop=True)


def _shapes_by_inference(model, in_dims) -> dict[str, list]:
    return _shape_dict(_infer(_light_copy(model, in_dims)))


def _gemms_known(model, shapes) -> bool:
    return all(shapes.get(n.output[0]) and None not in shapes[n.output[0]]
               for n in model.graph.node if n.op_type in GEMM_OPS)


# Shape arithmetic the folding pass evaluates (on tensors of at most FOLD_MAX elements)
FOLD_OPS = {"Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Add", "Sub", "Mul",
            "Div", "Mod", "Floor", "Ceil", "Neg", "Abs", "Equal", "Less", "Greater", "Not",
            "And", "Or", "Where", "Reshape", "Identity", "Min", "Max", "ReduceProd",
            "ReduceMin", "ReduceMax", "ReduceSum", "Sqrt", "Transpose", "Range",
            "ConstantOfShape", "Expand", "Flatten"}
FOLD_MAX = 256


def _fold_value(n, values: dict, shapes: dict, opset: int):
    """The value of node `n`'s outputs when they are small shape arithmetic on known values
    (Shape/Size of a tensor whose shape is known, FOLD_OPS on small constants), else None."""
    if n.op_type in ("Shape", "Size"):
        s = shapes.get(n.input[0])
        if not s or None in s:
            return None
        if n.op_type == "Size":
            return [np.array(int(np.prod(s)), np.int64)]
        att = {a.name: a.i for a in n.attribute}
        return [np.array(s, np.int64)[att.get("start", 0):att["end"] if "end" in att else None]]
    if n.op_type not in FOLD_OPS or not n.input or n.domain not in ("", "ai.onnx"):
        return None
    ins = [values.get(i) if i else None for i in n.input]
    if any(i and v is None for i, v in zip(n.input, ins)):
        return None
    if any(v is not None and v.size > FOLD_MAX for v in ins):
        return None
    if n.op_type in ("ConstantOfShape", "Expand") and int(np.prod(ins[1 if n.op_type == "Expand"
                                                                      else 0])) > FOLD_MAX:
        return None
    if n.op_type == "Range" and abs(float((ins[1] - ins[0]) / (ins[2] or 1))) > FOLD_MAX:
        return None
    from onnx.reference import ReferenceEvaluator

    try:
        out = ReferenceEvaluator(n, opsets={"": opset}).run(
            None, {i: v for i, v in zip(n.input, ins) if i})
    except Exception:
        return None
    return [np.asarray(o) for o in out]


def _shapes_by_folding(model, in_dims) -> dict[str, list]:
    """Shape inference, with the graph's shape arithmetic (Shape -> Gather -> Div -> Concat ->
    Reshape, as exporters write it) evaluated on the known shapes and folded in as constants,
    repeated until nothing more folds. Evaluates only tensors of <= FOLD_MAX elements: no
    activation is ever computed."""
    import onnx
    from onnx import numpy_helper

    light = _light_copy(model, in_dims)
    opset = max((o.version for o in light.opset_import if o.domain in ("", "ai.onnx")), default=17)
    values = {t.name: numpy_helper.to_array(t) for t in light.graph.initializer}
    for n in light.graph.node:
        if n.op_type == "Constant" and n.attribute and \
                n.attribute[0].type == onnx.AttributeProto.TENSOR:
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    folded_shapes: dict[str, list] = {}
    for _ in range(16):
        shapes = _shape_dict(_infer(light))
        shapes.update(folded_shapes)
        folded, keep = [], []
        for n in light.graph.node:
            out = None if n.op_type == "Constant" else _fold_value(n, values, shapes, opset)
            if out is None or len(out) != len([o for o in n.output if o]):
                keep.append(n)
                continue
            for name, v in zip([o for o in n.output if o], out):
                values[name] = v
                folded_shapes[name] = list(v.shape)
                shapes[name] = list(v.shape)
                folded.append(numpy_helper.from_array(v, name))
        if not folded:
            return shapes
        del light.graph.node[:]
        light.graph.node.extend(keep)
        light.graph.initializer.extend(folded)
        names = {t.name for t in folded}
        kept_vi = [vi for vi in light.graph.value_info if vi.name not in names]
        del light.graph.value_info[:]
        light.graph.value_info.extend(kept_vi)
    return shapes


def _shapes_by_symbolic(model, in_dims) -> dict[str, list] | None:
    """ONNX Runtime's symbolic shape inference (a pure-Python pass, no session), or None when
    it is not installed or cannot handle the graph."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except Exception:
        return None
    import contextlib
    import io

    try:
        # the steps of SymbolicShapeInference.infer_shapes, without its save of a partial
        # result to 'sym_shape_infer_temp.onnx' in the current folder: a partial inference is
        # still an answer here (unknown shapes stay unknown)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sym = SymbolicShapeInference(2**31 - 1, False, False, 0)
            sym._preprocess(_light_copy(model, in_dims))
            while sym.run_:
                sym._infer_impl()
            sym._update_output_from_vi()
            inf = sym.out_mp_
    except Exception:
        return None
    return _shape_dict(inf) if inf is not None else None


MAX_RUN_LARGEST = 1e9   # bytes: a tensor larger than this is never computed to learn shapes
MAX_RUN_TOTAL = 2e9     # bytes: nor a graph whose known tensors sum to more (a run keeps them all)


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
        if is_qdq_op(n.op_type):
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


def resolve_shapes(model, in_dims: dict, notes: list) -> dict[str, list]:
    """Every tensor's shape at `in_dims`, by ONNX shape inference (data propagation; strict, so
    a graph whose shapes contradict each other is refused with ShapeMismatch). When a GEMM/conv
    output stays unknown: inference again with the graph's shape arithmetic folded in, then ONNX
    Runtime's symbolic shape inference, and only as a last resort one run of the graph in ONNX
    Runtime, refused when its tensors would be large (MAX_RUN_LARGEST / MAX_RUN_TOTAL)."""
    try:
        shapes = _shapes_by_inference(model, in_dims)
        if not _gemms_known(model, shapes):
            shapes = _shapes_by_folding(model, in_dims)
        if not _gemms_known(model, shapes):
            sym = _shapes_by_symbolic(model, in_dims)
            shapes = sym if sym is not None and _gemms_known(model, sym) else shapes
        check_consistent(model, shapes)
    except ShapeMismatch as exc:
        raise ShapeMismatch(_cannot_run(in_dims, exc)) from None
    if _gemms_known(model, shapes):
        return shapes
    _refuse_a_large_run(model, shapes, in_dims)
    try:
        return _shapes_by_running(model, in_dims)
    except ShapeMismatch as exc:
        raise ShapeMismatch(_cannot_run(in_dims, exc)) from None
    except Exception as exc:
        notes.append(f"shapes from static inference only (running the graph to resolve "
                     f"them failed: {type(exc).__name__}: {str(exc)[:200]})")
    return shapes


def _full(s) -> bool:
    return bool(s) and None not in s


def check_consistent(model, shapes: dict) -> None:
    """Raise ShapeMismatch where resolved shapes contradict a node ONNX's inference does not
    check: a Reshape that changes the element count, a MatMul/Gemm whose inner sizes differ, a
    Conv whose weight does not match its input's channels."""
    for n in model.graph.node:
        ins = [shapes.get(i) if i else None for i in n.input]
        out = shapes.get(n.output[0]) if n.output else None
        what = f"{n.op_type} {n.name or n.output[0]!r}"
        if n.op_type == "Reshape" and _full(ins[0]) and _full(out):
            a, b = int(np.prod(ins[0])), int(np.prod(out))
            if a != b:
                raise ShapeMismatch(f"{what} turns {ins[0]} ({a} elements) into {out} ({b})")
        elif n.op_type in ("MatMul", "Gemm") and len(ins) > 1 and _full(ins[0]) and _full(ins[1]):
            a, b = ins[0], ins[1]
            att = {x.name: x.i for x in n.attribute}
            if n.op_type == "Gemm" and len(a) == 2 and len(b) == 2:
                ka, kb = a[0 if att.get("transA") else 1], b[1 if att.get("transB") else 0]
            elif len(a) >= 1 and len(b) >= 1:
                ka, kb = a[-1], (b[-2] if len(b) >= 2 else b[0])
            else:
                continue
            if ka != kb:
                raise ShapeMismatch(f"{what} multiplies {a} by {b}: inner sizes {ka} and {kb} "
                                    f"differ")
        elif n.op_type == "Conv" and len(ins) > 1 and _full(ins[0]) and _full(ins[1]) \
                and len(ins[0]) > 1 and len(ins[1]) > 1:
            groups = next((x.i for x in n.attribute if x.name == "group"), 1)
            if ins[0][1] != ins[1][1] * groups:
                raise ShapeMismatch(f"{what}: input {ins[0]} has {ins[0][1]} channels, weight "
                                    f"{ins[1]} x group {groups} expects {ins[1][1] * groups}")


def _cannot_run(in_dims, exc) -> str:
    return (f"the graph cannot run at input shapes {in_dims}: {exc}. Either the graph is "
            f"inconsistent, or an axis the inputs declare dynamic is fixed inside the graph "
            f"(the exporter baked the value it traced with), so no engine could run these "
            f"shapes either; export at these shapes or with an exporter that keeps the axis "
            f"dynamic")


def _refuse_a_large_run(model, shapes: dict, in_dims: dict) -> None:
    """Refuse to learn shapes by running the graph when its tensors (as far as inference knows
    them; every one is kept as an output of that run) would be large."""
    elem = {vi.name: vi.type.tensor_type.elem_type
            for vi in list(model.graph.input) + list(model.graph.value_info)}
    sizes = {}
    for name, s in shapes.items():
        if s and None not in s:
            sizes[name] = float(np.prod(s)) * (_np_dtype_bytes(elem[name]) if name in elem else 4)
    largest = max(sizes.items(), key=lambda kv: kv[1], default=("", 0.0))
    total = sum(sizes.values())
    if largest[1] > MAX_RUN_LARGEST or total > MAX_RUN_TOTAL:
        raise BadInput(f"shape inference could not resolve every GEMM/conv shape of this graph "
                       f"at input shapes {in_dims}, and learning them by running the graph "
                       f"would hold {total / 1e9:.1f} GB of tensors (largest {largest[0]!r}, "
                       f"{largest[1] / 1e9:.1f} GB; limits {MAX_RUN_LARGEST / 1e9:.0f} GB and "
                       f"{MAX_RUN_TOTAL / 1e9:.0f} GB): refused. Export the graph with static "
                       f"shapes, or simplify it (e.g. onnxsim) so its shapes can be inferred")


# Ops a DQ's precision is traced back through (layout only, no arithmetic)
LAYOUT_OPS = ("Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze")


@dataclass
class Tensors:
    """What the rules read about a graph's tensors, at one set of input shapes."""

    graph: object           # the GraphProto
    shapes: dict            # tensor -> [dims] (None where unknown)
    dtypes: dict            # tensor -> ONNX elem_type
    inits: dict             # initializer and Constant-node tensors -> TensorProto
    constant: set           # tensors folded at build time (weights, their Q/DQ and transposes)
    producer: dict          # tensor -> node
    consumers: dict         # tensor -> [nodes]
    graph_inputs: set
    graph_outputs: set

    @classmethod
    def of(cls, model, shapes: dict) -> "Tensors":
        import onnx

        graph = model.graph
        dtypes = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            dtypes[vi.name] = vi.type.tensor_type.elem_type
        inits = {i.name: i for i in graph.initializer}
        for name, t in inits.items():
            shapes[name], dtypes[name] = list(t.dims), t.data_type
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and \
                    n.attribute[0].type == onnx.AttributeProto.TENSOR:
                t = n.attribute[0].t
                inits[n.output[0]] = t
                shapes[n.output[0]], dtypes[n.output[0]] = list(t.dims), t.data_type
        for n in graph.node:  # Q/DQ keep their input's shape
            if is_qdq_op(n.op_type) and not shapes.get(n.output[0]):
                shapes[n.output[0]] = shapes.get(n.input[0])
        producer = {o: n for n in graph.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        constant = set(inits)
        for n in graph.node:  # folded at build time: weight Q/DQ, transposes of weights
            if all(i in constant for i in n.input if i):
                constant.update(n.output)
        return cls(graph, shapes, dtypes, inits, constant, producer, consumers,
                   {i.name for i in graph.input if i.name not in inits},
                   {o.name for o in graph.output})

    def numel(self, name) -> float:
        s = self.shapes.get(name)
        return float(np.prod(s)) if s and all(isinstance(x, int) and x > 0 for x in s) else 0.0

    def q_precision(self, name):
        """Precision of a tensor fed through DequantizeLinear (int8/fp8), else None."""
        import onnx

        p, hops = self.producer.get(name), 0
        while p is not None and p.op_type in LAYOUT_OPS and hops < 4:
            p, hops = self.producer.get(p.input[0]), hops + 1
        if p is None or not is_dq(p):
            return None
        src = p.input[0]
        et = self.dtypes.get(src)
        if et is None and self.producer.get(src) is not None and len(self.producer[src].input) > 2:
            et = self.dtypes.get(self.producer[src].input[2])
        if et in (onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2) or "FP8" in p.op_type:
            return "fp8"
        return "int8"
