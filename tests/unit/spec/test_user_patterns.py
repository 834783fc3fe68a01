"""User regexes run with a bound (issue 18): a catastrophic pattern such as `.*/(a+)+$`
against a node name of 40 'a's is refused in well under a second with its text (it would
hang Python's re, and so ModelOpt, for hours); l4opt's own matching is linear (RE2)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from l4opt.errors import BadInput
from l4opt.onnx.mixed import resolve_formats
from l4opt.spec import recipes
from l4opt.spec.recipes import Recipe, check_layers, match_table, unmatched_layers

EVIL = ".*/(a+)+$"
NAMES = ["/encoder/" + "a" * 40 + "/MatMul", "/encoder/layer.0/MatMul", "/head/Gemm"]


def _recipe(**kw):
    return Recipe("user", "onnx-ptq", "int8", "entropy", **kw)


@pytest.mark.parametrize("field", ["nodes_to_exclude", "layer_formats"])
def test_a_catastrophic_pattern_is_refused_quickly_with_its_text(field):
    value = [EVIL] if field == "nodes_to_exclude" else {EVIL: "fp16"}
    r = _recipe(**{field: value})
    t0 = time.monotonic()
    with pytest.raises(BadInput) as e:
        check_layers(r, onnx_node_names=NAMES)
    took = time.monotonic() - t0
    assert repr(EVIL) in str(e.value) and "takes more than" in str(e.value)
    assert took < 1.0, took


def test_without_re2_matching_is_still_bounded(monkeypatch):
    monkeypatch.setattr(recipes, "_re2", lambda: None)
    t0 = time.monotonic()
    with pytest.raises(BadInput, match=r"takes more than"):
        match_table([EVIL], NAMES, "layer_formats pattern")
    assert time.monotonic() - t0 < 1.0
    assert match_table([r"/encoder/layer\.\d+/", "/head"], NAMES) == {
        r"/encoder/layer\.\d+/": {"/encoder/layer.0/MatMul"}, "/head": {"/head/Gemm"}}


def test_re2_matches_as_re_match_does():
    pats = [r"/encoder/layer\.\d+/", "/head", "MatMul", r".*MatMul$", r"(?i)/HEAD"]
    got = match_table(pats, NAMES)
    import re

    assert got == {p: {n for n in NAMES if re.match(p, n)} for p in pats}


def test_patterns_re2_cannot_take_run_under_the_time_limit():
    # lookahead and backreference: Python-only; matched by re in a child process, bounded
    got = match_table([r"/(?=head)", r"/(enc)oder/(?!x)"], NAMES)
    assert got[r"/(?=head)"] == {"/head/Gemm"}
    assert len(got[r"/(enc)oder/(?!x)"]) == 2


def test_unmatched_and_typos_still_named():
    r = _recipe(nodes_to_exclude=["/head/Gem+", "/nope"], layer_formats={"/encoder/": "fp8"})
    assert unmatched_layers(r, onnx_node_names=NAMES) == ["/nope"]
    with pytest.raises(BadInput, match="not a valid regular expression"):
        Recipe.from_dict({"name": "x", "route": "onnx-ptq", "format": "int8",
                          "algorithm": "entropy", "nodes_to_exclude": ["(unclosed"]})


def test_resolve_formats_is_linear_on_a_catastrophic_pattern():
    """resolve_formats (inside a trial, after check_layers) never hangs either: RE2."""
    pytest.importorskip("re2")
    names = NAMES + ["/encoder/" + "a" * 40]
    lays = [SimpleNamespace(name=n, kind="gemm", op_type="MatMul") for n in names]
    qg = SimpleNamespace(model=SimpleNamespace(graph=SimpleNamespace(
        node=[SimpleNamespace(name=n) for n in names])), choices=names, order=lays,
        can_take=lambda name, other: True)
    t0 = time.monotonic()
    formats, notes = resolve_formats(qg, {EVIL: "fp16", "/head": "fp8"}, "int8")
    assert time.monotonic() - t0 < 0.5
    assert formats == {names[0]: "int8", names[1]: "int8", names[2]: "fp8", names[3]: "fp16"}
