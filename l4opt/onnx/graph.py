"""One place that reads ONNX graphs: GEMM/conv and Q/DQ recognition, an artifact record
(opset, I/O, Q/DQ counts, custom ops), the FP32 export check, external tensors."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from l4opt.errors import BadInput, StageFailed
from l4opt.files import file_sha256

STANDARD_DOMAINS = ("", "ai.onnx")
GEMM_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
PASS_OPS = ("Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten")  # no new values
Q_OPS = ("QuantizeLinear", "TRT_FP8QuantizeLinear")
DQ_OPS = ("DequantizeLinear", "TRT_FP8DequantizeLinear")


def is_q(node) -> bool:
    """A QuantizeLinear (standard, or TensorRT's FP8 form)."""
    return node.op_type in Q_OPS


def is_dq(node) -> bool:
    """A DequantizeLinear (standard, or TensorRT's FP8 form)."""
    return node.op_type in DQ_OPS


def is_qdq_op(op_type: str) -> bool:
    """Any quantize/dequantize op type, whatever its domain."""
    return "Quantize" in op_type or "Dequantize" in op_type


@dataclass
class OnnxArtifact:
    """An exported ONNX file and what a reader needs to know about it without opening it."""

    path: str
    sha256: str
    opset: int
    inputs: list[str]
    outputs: list[str]
    qdq: dict[str, int] = field(default_factory=dict)  # op type -> count of Q/DQ-like nodes
    quantized_dtypes: list[str] = field(default_factory=list)
    custom_ops: list[str] = field(default_factory=list)  # "domain::op" outside the ONNX standard
    num_nodes: int = 0
    exporter: str = ""  # which torch exporter wrote it (torchscript or dynamo), when l4opt did
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def describe(path: str | Path) -> OnnxArtifact:
    """Read an ONNX file's opset, I/O names, Q/DQ counts and non-standard ops."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise StageFailed("export", f"not a readable ONNX file: {exc}", str(path)) from exc
    opset = max((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS),
                default=0)
    qdq, custom, dtypes = Counter(), set(), set()
    for n in model.graph.node:
        if "Quantize" in n.op_type or "Dequantize" in n.op_type:
            qdq[n.op_type if n.domain in STANDARD_DOMAINS else f"{n.domain}::{n.op_type}"] += 1
        if n.domain not in STANDARD_DOMAINS:
            custom.add(f"{n.domain}::{n.op_type}")
    init = {i.name: i for i in model.graph.initializer}
    consts = dict(init)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            consts[n.output[0]] = n.attribute[0].t
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = consts.get(n.input[2]) if len(n.input) > 2 else None
            dt = zp.data_type if zp is not None else onnx.TensorProto.UINT8
            dtypes.add(onnx.TensorProto.DataType.Name(dt).lower())
        if n.domain not in STANDARD_DOMAINS and "FP8" in n.op_type:
            dtypes.add("float8e4m3fn")
    return OnnxArtifact(
        path=str(path), sha256=file_sha256(path), opset=opset,
        inputs=[i.name for i in model.graph.input if i.name not in init],
        outputs=[o.name for o in model.graph.output], qdq=dict(qdq),
        quantized_dtypes=sorted(dtypes), custom_ops=sorted(custom),
        num_nodes=len(model.graph.node))





def gemm_nodes(path_or_model) -> list[str]:
    """Names of the GEMM/conv nodes (MatMul, Gemm, Conv, ConvTranspose): the layers a
    quantizing recipe is about."""
    g = _graph(path_or_model)
    return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(g.node) if n.op_type in GEMM_OPS]


def quantized_gemm_nodes(path_or_model) -> list[str]:
    """GEMM/conv nodes whose two operands both come through a DequantizeLinear (standard or
    TensorRT's FP8 form; reshape-like ops between allowed): the layers that run in INT8/FP8 on
    TensorRT. A half-quantized GEMM runs in high precision (the rule l4opt.onnx.qdq keeps)."""
    g = _graph(path_or_model)
    producer = {o: n for n in g.node for o in n.output}

    def through_dq(t) -> bool:
        p, hops = producer.get(t), 0
        while p is not None and p.op_type in PASS_OPS and hops < 3:
            p, hops = producer.get(p.input[0]), hops + 1
        return p is not None and is_dq(p)

    return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(g.node)
            if n.op_type in GEMM_OPS and len(n.input) >= 2 and all(map(through_dq, n.input[:2]))]


def _graph(path_or_model):
    import onnx

    if isinstance(path_or_model, (str, Path)):
        return onnx.load(str(path_or_model), load_external_data=False).graph
    return path_or_model.graph


def _node_reads(node) -> list[str]:
    """A node's inputs plus the outer names its subgraphs (If/Loop/Scan bodies) read."""
    reads = list(node.input)
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in sub.node:
                reads.extend(_node_reads(n))
    return reads


def check_graph(path, input_names: list[str], output_names: list[str]) -> None:
    """Refuse an FP32 export that lost what the model computes: every declared input consumed
    by a node, every output depending on an input. Raises StageFailed saying what broke."""
    g = _graph(path)
    init = {i.name for i in g.initializer}
    have = [i.name for i in g.input if i.name not in init]
    hint = ("; the usual cause is a forward that leaves torch (.numpy(), .item(), .tolist(), "
            "Python control flow on tensor values): tracing then records constants. Keep the "
            "computation in torch ops")
    lost = [n for n in input_names if n not in have]
    if lost:
        raise StageFailed("export check", f"the FP32 ONNX export has no input {lost} (graph "
                          f"inputs: {have or 'none'}){hint}", str(path))
    used = {x for n in g.node for x in _node_reads(n)}
    unused = [n for n in have if n not in used and n not in {o.name for o in g.output}]
    if unused:
        raise StageFailed("export check", f"the FP32 ONNX export never reads input(s) "
                          f"{unused}{hint}", str(path))
    producer = {o: n for n in g.node for o in n.output}
    for out in g.output:
        seen, stack, reaches = set(), [out.name], False
        while stack:
            t = stack.pop()
            if t in have:
                reaches = True
                break
            node = producer.get(t)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(_node_reads(node))
        if not reaches:
            raise StageFailed("export check", f"output {out.name!r} of the FP32 ONNX export "
                              f"does not depend on any input (a constant graph){hint}", str(path))


def onnx_files(path) -> dict[str, bytes]:
    """A graph and the external-weight files it names, by file name, to ship to another node
    (TensorRT's parser opens the weights by their `location` beside the graph)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    files = {"model.onnx": path.read_bytes()}
    for t in _external_tensors(model.graph):
        for e in t.external_data:
            if e.key == "location" and e.value not in files:
                f = (path.parent / e.value).resolve()
                if Path(e.value).is_absolute() or path.parent.resolve() not in f.parents:
                    raise StageFailed("engine", f"external weights {e.value!r} of {path} lie "
                                      f"outside its folder: refused", str(path))
                if not f.is_file():
                    raise StageFailed("engine", f"external weights {e.value!r} of {path} are "
                                      f"missing", str(path))
                files[e.value] = f.read_bytes()
    return files


def write_onnx_files(files: dict[str, bytes], folder) -> Path:
    """Write what onnx_files gave into `folder`; returns the graph's path. A file name that
    would leave the folder is refused."""
    folder = Path(folder).resolve()
    for name, data in files.items():
        dest = (folder / name).resolve()
        if folder not in dest.parents:
            raise BadInput(f"refusing to write {name!r} outside {folder}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return folder / "model.onnx"


def _external_tensors(graph):
    import onnx

    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t") and a.t.data_location == onnx.TensorProto.EXTERNAL:
                yield a.t
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _external_tensors(g)


def recurrent_nodes(path_or_model) -> list[dict]:
    """The recurrent layers (LSTM, GRU, RNN nodes), each with whether its weights come through
    DequantizeLinear (quantized) or not: TensorRT runs them as per-step GEMMs."""
    g = _graph(path_or_model)
    dq = {o for n in g.node if is_dq(n) for o in n.output}
    return [{"node": n.name or f"{n.op_type}_{i}", "op_type": n.op_type,
             "quantized": any(x in dq for x in n.input[1:3])}
            for i, n in enumerate(g.node) if n.op_type in RECURRENT_OPS]
