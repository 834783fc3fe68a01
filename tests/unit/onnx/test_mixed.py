"""l4opt.onnx.mixed: which formats a mixed recipe calibrates, the per-format recipes, the
per-layer formats resolved from the recipe's patterns, and the spliced graph; hand-built INT8 and
FP8 Q/DQ graphs with the same node names (tests/models.py), no calibration."""
from __future__ import annotations

import onnx
import pytest

import models
from l4opt.errors import BadInput
from l4opt.onnx.mixed import build, format_recipe, formats_needed, resolve_formats
from l4opt.onnx.qdq import QdqGraph, formats_of
from l4opt.spec.recipes import Recipe


def recipe(fmt="int8", algo="entropy", **kw):
    return Recipe("mix", "onnx-ptq", fmt, algo, **kw)


@pytest.fixture(scope="module")
def graphs():
    return {"int8": QdqGraph(models.qdq_layers("int8"), "int8"),
            "fp8": QdqGraph(models.qdq_layers("fp8"), "fp8")}


def test_formats_needed():
    assert formats_needed(recipe()) == ["int8"]
    assert formats_needed(recipe(layer_formats={"mm1": "fp16"})) == ["int8"]
    assert formats_needed(recipe(layer_formats={"mm1": "fp8", "add": "fp8", "x": "int8"})) == \
        ["int8", "fp8"]
    assert formats_needed(recipe("fp8", "max", layer_formats={"mm.*": "int8"})) == ["fp8", "int8"]


def test_format_recipe_keeps_the_recipes_algorithm_for_its_format_and_defaults_for_the_other():
    r = recipe("int8", "max", layer_formats={"mm1": "fp8"}, nodes_to_exclude=["mm2"],
               high_precision_dtype="fp32")
    same, other = format_recipe(r, "int8"), format_recipe(r, "fp8")
    assert (same.name, same.route, same.format, same.algorithm) == ("mix-int8", "onnx-ptq", "int8", "max")
    assert (other.name, other.format, other.algorithm) == ("mix-fp8", "fp8", "max")
    assert format_recipe(recipe("fp8", "max"), "int8").algorithm == "entropy"
    for x in (same, other):
        assert dict(x.layer_formats) == {}                  # plain recipes: no layer map
        assert x.nodes_to_exclude == ("mm2",) and x.high_precision_dtype == "fp32"


def test_a_pattern_matching_no_node_is_refused_with_close_names(graphs):
    with pytest.raises(BadInput, match=r"pattern 'mm9' matches no ONNX node.*re\.match"):
        resolve_formats(graphs["int8"], {"mm9": "fp8"}, "int8", graphs)
    # re.match anchors at the start: 'm1' matches no node, and mm1 is named as close
    with pytest.raises(BadInput, match=r"pattern '\^m1\$' matches no ONNX node of the model "
                                       r"\(close: mm1\)"):
        resolve_formats(graphs["int8"], {"^m1$": "fp8"}, "int8", graphs)


def test_a_pattern_matching_only_unquantized_layers_is_a_note(graphs):
    out, notes = resolve_formats(graphs["int8"], {"mm2": "fp8"}, "int8", graphs)
    assert out == {"mm1": "int8", "add": "int8"}
    assert notes == ["layer_formats pattern 'mm2' matches only layers ModelOpt left unquantized; "
                     "they stay in high precision"]
    # a Q/DQ node (not a layer) is a node of the model: also a note, not a refusal
    _, notes = resolve_formats(graphs["int8"], {"Q_h1": "fp16"}, "int8", graphs)
    assert len(notes) == 1 and "matches only layers ModelOpt left unquantized" in notes[0]


def test_an_other_layer_asked_fp8_is_kept_at_the_default_with_a_note(graphs):
    out, notes = resolve_formats(graphs["int8"], {"add": "fp8"}, "int8", graphs)
    assert out == {"mm1": "int8", "add": "int8"}
    assert notes == ["add (Add, not a GEMM) cannot take fp8: kept at int8 (FP8 is for "
                     "GEMMs/convs on the L4)"]
    out, notes = resolve_formats(graphs["int8"], {"add": "fp16"}, "int8", graphs)
    assert out["add"] == "fp16" and notes == []


def test_first_matching_pattern_wins_and_other_layers_take_the_default(graphs):
    out, notes = resolve_formats(graphs["int8"], {"mm1": "fp8", "mm.*": "fp16", "a.d": "fp16"},
                                 "int8", graphs)
    assert out == {"mm1": "fp8", "add": "fp16"} and notes == []
    # re.match: anchored at the start, not at the end
    assert resolve_formats(graphs["int8"], {"mm": "fp8"}, "int8", graphs)[0]["mm1"] == "fp8"
    with pytest.raises(BadInput, match="matches no ONNX node"):
        resolve_formats(graphs["int8"], {"m1": "fp8"}, "int8", graphs)


def test_a_gemm_the_other_format_left_unquantized_is_kept_at_the_default(graphs):
    only_x = {"int8": graphs["int8"], "fp8": QdqGraph(models.qdq_matmul("fp8"), "fp8")}
    out, notes = resolve_formats(graphs["int8"], {"mm1": "fp8"}, "int8", only_x)
    assert out["mm1"] == "int8"
    assert notes == ["mm1: ModelOpt does not quantize it in fp8; kept at int8"]
    out, notes = resolve_formats(graphs["int8"], {"mm1": "fp8"}, "int8")   # no fp8 graph at all
    assert out["mm1"] == "int8" and len(notes) == 1


def test_build_splices_the_resolved_formats_into_one_checked_graph(graphs):
    formats, _ = resolve_formats(graphs["fp8"], {"mm1": "int8", "add": "fp16"}, "fp8", graphs)
    assert formats == {"mm1": "int8", "add": "fp16"}
    m = build(graphs, "fp8", formats)
    onnx.checker.check_model(m, full_check=True)
    assert formats_of(graphs["fp8"], m) == {"mm1": "int8", "mm2": "fp16"}
    nodes = {n.name: n for n in m.graph.node}
    assert nodes["add"].input[0] == "h1" and "DQ_x__int8" in nodes
