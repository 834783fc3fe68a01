"""torch -> ONNX (FP32, FP16, or Q/DQ from a ModelOpt-quantized model), as an artifact record."""
from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from pathlib import Path

from l4opt.errors import StageFailed
from l4opt.onnx.graph import OnnxArtifact, describe

OPSET = 17
FP8_OPSET = 19  # FP8 QuantizeLinear needs opset 19+ (ModelOpt upgrades ONNX-PTQ FP8 graphs to 21)


EXPORTERS = ("auto", "torchscript", "dynamo")
DYNAMO_MIN_OPSET = 18  # torch.onnx's dynamo exporter writes opset 18 and later


def export_options(options: dict | None) -> dict:
    """A workload's or sweep's export options checked: exporter auto|torchscript|dynamo
    (auto: TorchScript, then torch's dynamo exporter when TorchScript fails), opset."""
    from l4opt.errors import BadInput

    o = {"exporter": "auto", "opset": OPSET}
    for k, v in (options or {}).items():
        if k == "dynamo":  # export=dict(dynamo=True/False), as torch.onnx.export spells it
            k, v = "exporter", ("dynamo" if v else "torchscript") if v is not None else "auto"
        if k not in o:
            raise BadInput(f"export option {k!r} is unknown; known: exporter (or dynamo), opset")
        o[k] = v
    if o["exporter"] not in EXPORTERS:
        raise BadInput(f"export exporter {o['exporter']!r}: choose one of {EXPORTERS}")
    if isinstance(o["opset"], bool) or not isinstance(o["opset"], int) or not 13 <= o["opset"] <= 23:
        raise BadInput(f"export opset {o['opset']!r} must be a whole number from 13 to 23")
    return o


def export_torch(model, workload, path: str | Path, opset: int = OPSET,
                 batch: int = 2, exporter: str = "torchscript") -> OnnxArtifact:
    """Export a torch module (plain or ModelOpt-quantized) with the workload's dynamic axes,
    traced at `batch` samples (the deployment batch, so shapes ModelOpt reads match the L4's).
    `exporter`: torch.onnx's TorchScript exporter, torch's dynamo exporter, or "auto" (the
    first, then the second when it fails; the artifact's `exporter` says which ran).

    PyTorch's fused fast path (nn.TransformerEncoderLayer / MultiheadAttention in eval mode
    under no_grad calls aten::_transformer_encoder_layer_fwd, which ONNX cannot express) is
    switched off for the export."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = workload.example_args(batch)
    model = model.eval()
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    errors = []
    for which in order:
        try:
            _export_with(model, workload, args, path, which, opset)
        except Exception as exc:  # noqa: BLE001 - each exporter's failure is explained below
            errors.append((which, exc))
            continue
        art = describe(path)
        art.exporter = which
        if errors:
            art.notes.append(f"the TorchScript exporter failed ({_explain_export_error(errors[0][1], model, args)}); "
                             f"exported with torch's dynamo exporter instead")
        return art
    text = "; ".join(f"{w} exporter: {_explain_export_error(e, model, args)}" for w, e in errors)
    hint = (" Try export=dict(dynamo=True) (CLI --exporter dynamo)" if exporter == "torchscript"
            else "") + (". A Hugging Face decoder often exports once its forward is given an "
                        "attention_mask input" if "diff" in text or "triu" in text else "")
    raise StageFailed("export", text + hint) from errors[-1][1]


def _export_with(model, workload, args, path: Path, exporter: str, opset: int) -> None:
    """One exporter into `path` (through a temporary file, so a failure leaves nothing)."""
    import torch

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha else None
    try:
        if mha:
            mha.set_fastpath_enabled(False)
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            dynamo = exporter == "dynamo"
            torch.onnx.export(
                model, args, str(tmp), input_names=workload.input_names,
                output_names=workload.output_names, dynamic_axes=workload.dynamic_axes(),
                opset_version=max(opset, DYNAMO_MIN_OPSET) if dynamo else opset,
                do_constant_folding=True, dynamo=dynamo)
        _move_export(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for data in tmp.parent.glob(tmp.name + "*.data"):
            data.unlink(missing_ok=True)
        if mha:
            mha.set_fastpath_enabled(fast)


# a graph this large keeps its weights in PATH.data (protobuf's 2 GB limit, less margin)
PROTO_LIMIT = 2 ** 31 - 2 ** 26


def _move_export(tmp: Path, path: Path) -> None:
    """The exported graph at `path` with its weights inside it (or, past protobuf's 2 GB, in
    PATH.data, where l4opt's ONNX-PTQ stage looks): torch's dynamo exporter writes them to
    TMP.data, which a rename of TMP would leave pointing at a file that is then deleted."""
    import onnx

    if not list(tmp.parent.glob(tmp.name + "*.data")):
        os.replace(tmp, path)
        return
    model = onnx.load(str(tmp))  # reads the external weights in
    out = path.with_name(path.name + f".whole{os.getpid()}")
    large = model.ByteSize() > PROTO_LIMIT
    onnx.save(model, str(out), save_as_external_data=large, location=path.name + ".data")
    os.replace(out, path)
    tmp.unlink(missing_ok=True)


def _explain_export_error(exc: Exception, model, args) -> str:
    """Name the unsupported operator and the torch module that calls it."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "has not been calibrated" in str(exc):
        try:
            from l4opt.pipeline.quantize import missing_amax

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

    from l4opt.pipeline.quantize import _quiet

    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        model16 = convert_to_f16(onnx.load(str(src)), low_precision_type="fp16",
                                 keep_io_types=True, op_block_list=list(FP32_OPS))
    unshare_unknown_dims(model16)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    onnx.save(model16, str(tmp))
    os.replace(tmp, dst)
    return describe(dst)


def unshare_unknown_dims(model) -> int:
    """Clear the dim_param "unk" AutoCast's shape inference writes for every axis it cannot
    name (ModelOpt 0.47): one symbol for axes of different sizes tells ONNX Runtime they are
    equal, and its memory planner then reuses a buffer of the wrong size (seen on a dynamo-
    exported GPT-2: "Shape mismatch attempting to re-use buffer"). Returns how many it cleared."""
    n = 0
    g = model.graph
    for vi in list(g.value_info) + list(g.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param == "unk":
                d.ClearField("dim_param")
                n += 1
    return n
