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


def export_torch(model, workload, path: str | Path, opset: int = OPSET) -> OnnxArtifact:
    """Export a torch module (plain or ModelOpt-quantized) with the workload's dynamic axes."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    args = workload.example_args(2)
    model = model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, args, str(tmp), input_names=workload.input_names,
                output_names=workload.output_names, dynamic_axes=workload.dynamic_axes(),
                opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise StageFailed("export", _explain_export_error(exc, model, args)) from exc
    os.replace(tmp, path)
    return inspect(path)


def _explain_export_error(exc: Exception, model, args) -> str:
    """Name the unsupported operator and the torch module that calls it."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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


def to_fp16(src: str | Path, dst: str | Path) -> OnnxArtifact:
    """FP32 graph -> FP16 with FP32 I/O (ModelOpt AutoCast): the baseline's TensorRT graph."""
    import onnx
    from modelopt.onnx.autocast.convert import convert_to_f16

    from .quantize import _quiet

    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        model16 = convert_to_f16(onnx.load(str(src)), low_precision_type="fp16",
                                 keep_io_types=True)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    onnx.save(model16, str(tmp))
    os.replace(tmp, dst)
    return inspect(dst)
