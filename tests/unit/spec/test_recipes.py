import pytest

from l4opt.spec import recipes
from l4opt.errors import BadInput, UnsupportedOnL4
from l4opt.spec.recipes import Recipe


def test_builtin_recipes_cover_the_algorithms():
    names = recipes.names()
    for n in ("baseline", "fp8", "int8", "int8-max", "int8-percentile", "int8-smoothquant"):
        assert n in names
    by = {r.name: r for r in recipes.BUILTIN.values()}
    assert by["int8"].algorithm == "entropy" and by["fp8"].format == "fp8"
    assert {r.route for r in by.values()} == {"none", "onnx-ptq", "torch-ptq"}


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


# ------------------------------------------------------------------ recipe files checked on load

@pytest.mark.parametrize("text, expected", [
    ("name: p\npath: torch-ptq\nformat: int8\nalgorithm: percentile\npercentile: 0\n",
     "percentile must be a number in (0, 100]"),
    ("name: p\npath: torch-ptq\nformat: int8\nalgorithm: percentile\npercentile: 100.5\n",
     "percentile must be a number in (0, 100]"),
    ("name: p\npath: torch-ptq\nformat: int8\nalgorithm: percentile\npercentile: '99'\n",
     "percentile must be a number"),
    ("name: s\npath: torch-ptq\nformat: int8\nalgorithm: smoothquant\nsmoothquant_alpha: 1.5\n",
     "smoothquant_alpha must be a number in [0, 1]"),
    ("name: s\npath: torch-ptq\nformat: int8\nalgorithm: smoothquant\nsmoothquant_alpha: -0.1\n",
     "smoothquant_alpha must be a number in [0, 1]"),
    # the reported case: a bare string was read as the layers 'h', 'e', 'a', 'd'
    ("name: d\npath: torch-ptq\nformat: int8\nalgorithm: max\ndisabled_layers: head\n",
     "disabled_layers must be a list of names, got the string 'head'"),
    ("name: d\npath: torch-ptq\nformat: int8\nalgorithm: max\ndisabled_layers: [head, 3]\n",
     "disabled_layers holds 3"),
    ("name: n\npath: onnx-ptq\nformat: int8\nalgorithm: max\nnodes_to_exclude: ['/m/(conv']\n",
     "not a valid regular expression"),
])
def test_recipe_files_are_checked_on_load(tmp_path, text, expected):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(BadInput) as e:
        recipes.get(str(p))
    assert expected in str(e.value)


def test_edges_of_the_ranges_are_allowed():
    assert Recipe("p", "torch-ptq", "int8", "percentile", percentile=100).percentile == 100
    assert Recipe("s", "torch-ptq", "int8", "smoothquant", smoothquant_alpha=0).smoothquant_alpha == 0
    assert Recipe("s", "torch-ptq", "int8", "smoothquant", smoothquant_alpha=1.0)
    assert Recipe.from_dict({"name": "d", "path": "torch-ptq", "format": "int8",
                             "algorithm": "max", "disabled_layers": None}).disabled_layers == ()


def _cnn_names():
    """Module and ONNX node names of a real model (a small CNN with BatchNorm and a residual)."""
    import io

    import onnx
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)

        def forward(self, x):
            return torch.relu(x + self.bn(self.conv(x)))

    m = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), Block(), Block(),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, input_names=["x"])
    nodes = [n.name for n in onnx.load_from_string(buf.getvalue()).graph.node]
    return [n for n, _ in m.named_modules()], nodes


def test_layer_names_that_match_nothing_are_reported_with_close_matches():
    modules, nodes = _cnn_names()
    assert "1.conv" in modules and any(n.startswith("/1/conv") for n in nodes)
    r = Recipe("mixed", "torch-ptq", "int8", "max",
               disabled_layers=("1.conv", "2", "does.not.exist", "1.cnv"),
               nodes_to_exclude=("/1/conv/.*", "/9/conv/Conv"))
    assert recipes.unmatched_layers(r, modules, nodes) == ["does.not.exist", "1.cnv",
                                                          "/9/conv/Conv"]
    assert recipes.unmatched_layers(r, modules, None) == ["does.not.exist", "1.cnv"]
    assert recipes.unmatched_layers(r) == []  # nothing to check against: nothing claimed
    with pytest.raises(BadInput) as e:
        recipes.check_layers(r, modules, nodes)
    msg = str(e.value)
    assert "3 layer name(s) match nothing" in msg and "'does.not.exist' matches no torch module" in msg
    assert "'1.cnv' matches no torch module (close: 1.conv" in msg
    assert "'/9/conv/Conv' matches no ONNX node (close: " in msg
    assert "/1/conv/Conv" in msg.split("'/9/conv/Conv' matches no ONNX node")[1]
    ok = Recipe("ok", "torch-ptq", "int8", "max", disabled_layers=("1.conv", "4"),
                nodes_to_exclude=("/1/.*",))
    recipes.check_layers(ok, modules, nodes)  # all match: no error
