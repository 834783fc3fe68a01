"""What a row suggests works as typed: the collapse note's search command names the workload as
the user gave it (a file spec runs from the CLI; a Workload object gets the Python call)."""
from __future__ import annotations

from types import SimpleNamespace

from l4opt.pipeline.trial import _search_hint
from l4opt.spec.recipes import Recipe, get


def _ctx(spec, run_dir="runs/x"):
    return SimpleNamespace(spec=spec, store=SimpleNamespace(run_dir=run_dir))


def test_a_file_workload_is_named_as_typed():
    hint = _search_hint(_ctx("models/vit.py:make"), get("int8"))
    assert "l4opt search models/vit.py:make --recipe int8" in hint and "runs/x" in hint


def test_a_workload_object_gets_the_python_call():
    hint = _search_hint(_ctx(None), get("fp8"))
    assert hint.startswith("`l4opt.search(workload, 'fp8'") and "l4opt search " not in hint


def test_a_recipe_file_is_not_named_as_a_builtin():
    own = Recipe("my-int8", "onnx-ptq", "int8", "max")
    assert "--recipe RECIPE_FILE" in _search_hint(_ctx("digits-cnn"), own)
