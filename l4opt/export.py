"""torch -> ONNX (FP32, FP16, or Q/DQ from a ModelOpt-quantized model), as an artifact record."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import StageFailed

OPSET = 17
FP8_OPSET = 19  # FP8 QuantizeLinear needs opset 19+ (ModelOpt upgrades ONNX-PTQ FP8 graphs to 21)
STANDARD_DOMAINS = ("", "ai.onnx")


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

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inspect(path: str | Path) -> OnnxArtifact:
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


def export_torch(model, workload, path: str | Path, opset: int = OPSET,
                 batch: int = 2) -> OnnxArtifact:
    """Export a torch module (plain or ModelOpt-quantized) with the workload's dynamic axes,
    traced at `batch` samples (the deployment batch, so shapes ModelOpt reads match the L4's).

    PyTorch's fused fast path (nn.TransformerEncoderLayer / MultiheadAttention in eval mode
    under no_grad calls aten::_transformer_encoder_layer_fwd, which ONNX cannot express) is
    switched off for the export."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    args = workload.example_args(batch)
    model = model.eval()
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha else None
    try:
        if mha:
            mha.set_fastpath_enabled(False)
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, args, str(tmp), input_names=workload.input_names,
                output_names=workload.output_names, dynamic_axes=workload.dynamic_axes(),
                opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise StageFailed("export", _explain_export_error(exc, model, args)) from exc
    finally:
        if mha:
            mha.set_fastpath_enabled(fast)
    os.replace(tmp, path)
    return inspect(path)


GEMM_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def gemm_nodes(path_or_model) -> list[str]:
    """Names of the GEMM/conv nodes (MatMul, Gemm, Conv, ConvTranspose): the layers a
    quantizing recipe is about."""
    g = _graph(path_or_model)
    return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(g.node) if n.op_type in GEMM_OPS]


def quantized_gemm_nodes(path_or_model) -> list[str]:
    """GEMM/conv nodes with an input coming from a DequantizeLinear (standard or TensorRT's FP8
    form): the layers that run in INT8/FP8 on TensorRT."""
    g = _graph(path_or_model)
    dq = {o for n in g.node if "Dequantize" in n.op_type for o in n.output}
    return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(g.node)
            if n.op_type in GEMM_OPS and any(x in dq for x in n.input)]


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


def _explain_export_error(exc: Exception, model, args) -> str:
    """Name the unsupported operator and the torch module that calls it."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "has not been calibrated" in str(exc):
        try:
            from .quantize import missing_amax

            names = missing_amax(model)
        except Exception:  # noqa: BLE001 - naming the quantizer is best effort
            names = []
        return (f"ONNX export of the quantized model failed: calibration never reached "
                f"quantizer(s) {', '.join(names) if names else '(unnamed)'}, so they have no "
                f"amax (ModelOpt: {msg}); their module was not called by the calibration "
                f"forward loop (e.g. a fused fast path or a weight applied functionally): "
                f"calibrate with l4opt.quantize.quantize_torch, which disables such "
                f"quantizers, or disable that layer with the recipe's disabled_layers")
    ops = re.findall(r"'?(aten::[A-Za-z0-9_.]+|prim::[A-Za-z0-9_]+)'?", str(exc))
    where = _locate_op(model, args, ops[0]) if ops else None
    text = f"ONNX export of the torch model failed: {type(exc).__name__}: {msg}"
    if ops:
        text += f"; unsupported operator {ops[0]}"
    if where:
        text += f" called from module {where!r}"
    return text + ("; replace or rewrite that module, or register a custom symbolic "
                   "(torch.onnx.register_custom_op_symbolic)")


def _locate_op(model, args, op: str) -> str | None:
    """Module path (from TorchScript scopes) of the first node of kind `op`."""
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, args, check_trace=False, strict=False)
        for node in traced.inlined_graph.nodes():
            if node.kind() == op:
                scope = node.scopeName()
                parts = [p.split("__module.")[-1] for p in scope.split("/") if p]
                return parts[-1] if parts else "<top-level forward>"
    except Exception:
        return None
    return "<top-level forward>"


# Ops AutoCast keeps in FP32 in the FP16 baseline graph. LayerNormalization: TensorRT itself
# advises FP32 layernorm (FP16 accumulation overflows after attention), and ONNX Runtime CPU
# 1.24's full optimisation level segfaults on an FP16 LayerNormalization graph of
# nn.TransformerEncoder (bisected: blocking this op type alone makes the graph run).
FP32_OPS = ("LayerNormalization",)


def to_fp16(src: str | Path, dst: str | Path) -> OnnxArtifact:
    """FP32 graph -> FP16 with FP32 I/O (ModelOpt AutoCast): the baseline's TensorRT graph,
    with FP32_OPS kept in FP32."""
    import onnx
    from modelopt.onnx.autocast.convert import convert_to_f16

    from .quantize import _quiet

    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        model16 = convert_to_f16(onnx.load(str(src)), low_precision_type="fp16",
                                 keep_io_types=True, op_block_list=list(FP32_OPS))
    dst = Path(dst)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    onnx.save(model16, str(tmp))
    os.replace(tmp, dst)
    return inspect(dst)
