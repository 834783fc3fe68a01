import pytest

from l4opt import recipes
from l4opt.errors import BadInput, UnsupportedOnL4
from l4opt.recipes import Recipe


def test_builtin_recipes_cover_the_algorithms():
    names = recipes.names()
    for n in ("baseline", "fp8", "int8", "int8-max", "int8-percentile", "int8-smoothquant"):
        assert n in names
    by = {r.name: r for r in recipes.BUILTIN.values()}
    assert by["int8"].algorithm == "entropy" and by["fp8"].format == "fp8"
    assert {r.path for r in by.values()} == {"none", "onnx-ptq", "torch-ptq"}


@pytest.mark.parametrize("fmt", ["nvfp4", "NVFP4_DEFAULT_CFG", "mxfp8", "mxfp4", "w4a8-nvfp4-fp8"])
def test_blackwell_formats_are_refused_with_reason_and_alternative(fmt):
    with pytest.raises(UnsupportedOnL4) as e:
        recipes.get(fmt)
    msg = str(e.value)
    assert "L4" in msg and "Blackwell" in msg and "fp8" in msg


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(BadInput) as e:
        recipes.resolve("fp8,int9")
    assert "int9" in str(e.value) and "int8-smoothquant" in str(e.value)


def test_recipe_round_trips_json_and_yaml(tmp_path):
    r = Recipe("mixed", "torch-ptq", "int8", "max", disabled_layers=("encoder.layer.0",),
               nodes_to_exclude=("/m/encoder/layer.0/.*",))
    for name in ("r.json", "r.yaml"):
        p = r.save(tmp_path / name)
        assert Recipe.load(p) == r
        assert recipes.get(str(p)) == r


def test_bad_recipe_files_and_fields(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInput, match="not valid"):
        recipes.get(str(tmp_path / "bad.json"))
    with pytest.raises(BadInput, match="unknown keys"):
        Recipe.from_dict({"name": "x", "bits": 3})
    with pytest.raises(BadInput, match="algorithm"):
        Recipe("x", "onnx-ptq", "int8", "percentile")
    with pytest.raises(UnsupportedOnL4):
        Recipe("x", "torch-ptq", "nvfp4", "max")
