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

from l4opt.errors import BadInput
from l4opt.spec.recipes import Recipe, match_table

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


def resolve_formats(qg, layer_formats: dict, default: str,
                    others: dict | None = None) -> tuple[dict, list[str]]:
    """Per choosable layer of `qg`, the format its first matching pattern (re.match) names;
    notes for patterns that only match layers ModelOpt left unquantized. A pattern matching
    no node at all is refused. Patterns are matched in linear time (RE2) or under a time
    limit per pattern (l4opt.spec.recipes.match_table): no pattern hangs a sweep."""
    out, notes = {}, []
    others = others or {}
    names = [n.name for n in qg.model.graph.node]
    table = match_table(layer_formats, names + list(qg.choices) + [lay.name for lay in qg.order],
                        "layer_formats pattern")
    choices = set(qg.choices)
    for pat in layer_formats:
        if not table[pat] & set(names):
            close = [n for n in qg.choices if pat.strip("^$").replace("\\", "") in n][:3]
            raise BadInput(f"layer_formats pattern {pat!r} matches no ONNX node of the model"
                           + (f" (close: {', '.join(close)})" if close else "")
                           + "; patterns are re.match regexes over ONNX node names")
        if not table[pat] & choices:
            notes.append(f"layer_formats pattern {pat!r} matches only layers ModelOpt left "
                         f"unquantized; they stay in high precision")
    for lay in qg.order:
        fmt = next((v for p, v in layer_formats.items() if lay.name in table[p]), default)
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
