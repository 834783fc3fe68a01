"""Per-layer INT8 / FP8 / FP16 in one Q/DQ graph, from ModelOpt ONNX PTQ calibrated once per
8-bit format and spliced per layer (l4opt.qdq).

Why splicing is sound: ModelOpt calibrates every activation quantizer with quantization off, so
a pair's scale does not depend on the other layers' formats, and both calibrations start from
the same FP32 export (same node names). Both formats in one graph are legal ONNX (opset 19+
QuantizeLinear takes int8 and float8e4m3fn zero points) and TensorRT builds precision per
layer from the Q/DQ types (strongly typed); a GEMM's operands always share one format here.
FP8 runs on the L4 for GEMMs/convs; Q/DQ pairs read by other ops (residual adds) take the
recipe's format or FP16, never the other 8-bit format.
"""
from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

from .errors import BadInput
from .recipes import Recipe

# the calibration of the format a recipe does not name: ModelOpt's defaults for each format
OTHER_ALGORITHM = {"int8": "entropy", "fp8": "max"}


def format_recipe(recipe: Recipe, fmt: str) -> Recipe:
    """The plain ONNX-PTQ recipe that calibrates `fmt` for a mixed recipe (no layer map)."""
    if fmt == recipe.format:
        algo = recipe.algorithm
    else:
        algo = OTHER_ALGORITHM[fmt]
    return Recipe(f"{recipe.name}-{fmt}", "onnx-ptq", fmt, algo,
                  high_precision_dtype=recipe.high_precision_dtype,
                  nodes_to_exclude=recipe.nodes_to_exclude)


def formats_needed(recipe: Recipe) -> list[str]:
    """The recipe's format first, then the other 8-bit format when its layer map asks for it."""
    out = [recipe.format]
    for v in (recipe.layer_formats or {}).values():
        if v in ("int8", "fp8") and v not in out:
            out.append(v)
    return out


# In-process memo of ModelOpt ONNX PTQ results: the same FP32 graph, calibration data, format
# recipe, shapes and package versions give the same Q/DQ graph, so a search's calibration is
# reused by the sweep of the recipe it saves (in the same process) instead of being redone.
_MEMO: dict[str, tuple[bytes, dict]] = {}
_MEMO_SIZE = 4


def _inputs_key(onnx_in, calib_data, shapes) -> str:
    """What every format's calibration of one call shares: graph bytes, data, shapes, versions
    (taken once, before ModelOpt runs)."""
    import hashlib

    import numpy as np

    from . import env

    h = hashlib.sha256(Path(onnx_in).read_bytes())
    for k in sorted(calib_data):
        a = np.ascontiguousarray(calib_data[k])
        h.update(f"{k}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    v = env.versions()
    h.update(repr((shapes.to_dict() if shapes is not None else None,
                   v.get("nvidia-modelopt"), v.get("onnxruntime"))).encode())
    return h.hexdigest()


def calibrate(onnx_in, workdir, recipe: Recipe, calib_data, formats, *, shapes=None,
              log=None) -> tuple[dict, dict]:
    """ModelOpt ONNX PTQ of `onnx_in` once per format -> ({fmt: QdqGraph}, {fmt: info})."""
    from .qdq import QdqGraph
    from .quantize import quantize_onnx

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params = inspect.signature(quantize_onnx).parameters
    graphs, infos = {}, {}
    base_key = _inputs_key(onnx_in, calib_data, shapes)
    for fmt in formats:
        out = workdir / f"model.{fmt}.onnx"
        fr = format_recipe(recipe, fmt)
        key = base_key + repr(sorted(fr.identity().items()))
        if key in _MEMO:
            data, info = _MEMO[key]
            out.write_bytes(data)
            if log is not None:
                with open(log, "a") as f:
                    f.write(f"l4opt: {fmt} Q/DQ graph reused from this process's earlier "
                            f"identical ModelOpt ONNX PTQ run\n")
        else:
            kw = {}
            if "shapes" in params:
                kw["shapes"] = shapes
            if "log" in params and log is not None:
                kw["log"] = log
            info = quantize_onnx(str(onnx_in), str(out), fr, calib_data, **kw)
            info = info if isinstance(info, dict) else {}
            _MEMO[key] = (out.read_bytes(), info)
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.pop(next(iter(_MEMO)))
        graphs[fmt] = QdqGraph(out, fmt)
        infos[fmt] = dict(info)
    return graphs, infos


def resolve_formats(qg, layer_formats: dict, default: str,
                    others: dict | None = None) -> tuple[dict, list[str]]:
    """Per choosable layer of `qg`, the format its first matching pattern (re.match) names;
    notes for patterns that only match layers ModelOpt left unquantized. A pattern matching
    no node at all is refused."""
    out, notes = {}, []
    others = others or {}
    names = [n.name for n in qg.model.graph.node]
    for pat in layer_formats:
        if not any(re.match(pat, n) for n in names):
            close = [n for n in qg.choices if pat.strip("^$").replace("\\", "") in n][:3]
            raise BadInput(f"layer_formats pattern {pat!r} matches no ONNX node of the model"
                           + (f" (close: {', '.join(close)})" if close else "")
                           + "; patterns are re.match regexes over ONNX node names")
        if not any(re.match(pat, n) for n in qg.choices):
            notes.append(f"layer_formats pattern {pat!r} matches only layers ModelOpt left "
                         f"unquantized; they stay in high precision")
    for lay in qg.order:
        fmt = next((v for p, v in layer_formats.items() if re.match(p, lay.name)), default)
        if lay.kind == "other" and fmt not in (default, "fp16"):
            notes.append(f"{lay.name} ({lay.op_type}, not a GEMM) cannot take {fmt}: kept at "
                         f"{default} (FP8 is for GEMMs/convs on the L4)")
            fmt = default
        elif fmt not in (default, "fp16") and not qg.can_take(lay.name, others.get(fmt)):
            notes.append(f"{lay.name}: ModelOpt does not quantize it in {fmt}; kept at {default}")
            fmt = default
        out[lay.name] = fmt
    return out, notes


def build(graphs: dict, default: str, formats: dict, check: bool = True):
    """The spliced ModelProto: `formats` (layer -> format) over the `default` format graph."""
    base = graphs[default]
    other = next((g for f, g in graphs.items() if f != default), None)
    return base.build(formats, other, check=check)


def quantize_mixed_onnx(onnx_in, onnx_out, recipe: Recipe, calib_data, log=None, *,
                        shapes=None) -> dict:
    """ModelOpt ONNX PTQ with a per-layer precision map (`recipe.layer_formats`): calibrate
    once per 8-bit format needed, splice per layer, write `onnx_out`. Returns what
    quantize_onnx returns (calib_batch, reasons) plus `layer_formats` per layer and notes."""
    import onnx

    from .qdq import formats_of

    if recipe.path != "onnx-ptq":
        raise BadInput(f"recipe {recipe.name!r}: a per-layer format map needs the onnx-ptq path")
    onnx_out = Path(onnx_out)
    work = onnx_out.parent / (onnx_out.stem + ".calib")
    graphs, infos = calibrate(onnx_in, work, recipe, calib_data, formats_needed(recipe),
                              shapes=shapes, log=log)
    base = graphs[recipe.format]
    formats, notes = resolve_formats(base, dict(recipe.layer_formats or {}), recipe.format,
                                     graphs)
    model = build(graphs, recipe.format, formats)
    onnx.save(model, str(onnx_out))
    shutil.rmtree(work, ignore_errors=True)
    info = dict(infos.get(recipe.format) or {})
    info.update(layer_formats=formats, gemm_formats=formats_of(base, model), notes=notes,
                formats_calibrated=list(graphs))
    return info
