"""Every notebook in notebooks/ and recipes/ executes headless with papermill, small settings."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMALL = {
    "quickstart.ipynb": {"recipes": "baseline,int8-max", "calib_samples": 32, "eval_samples": 32},
    "dashboard.ipynb": {"headless": True, "recipes": "baseline,int8-max"},
    "per_layer.ipynb": {"strategy": "greedy"},
    "bring_your_own_model.ipynb": {"n_calib": 64},
    "study.ipynb": {"recipes": "baseline,int8-max"},
}


def test_every_notebook_is_covered():
    found = {p.name for p in [*REPO.glob("notebooks/*.ipynb"), *REPO.glob("recipes/*.ipynb")]}
    assert found == set(SMALL)


@pytest.mark.parametrize("path", sorted([*REPO.glob("notebooks/*.ipynb"), *REPO.glob("recipes/*.ipynb")]),
                         ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, trtexec_dir):
    import papermill as pm

    params = dict(SMALL[path.name], run_dir=str(tmp_path / "run"))
    if path.name == "per_layer.ipynb":
        params["trtexec_dir"] = str(trtexec_dir)
    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                        progress_bar=False, kernel_name="python3")
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert (tmp_path / "run" / "results.sqlite").exists()


def test_recipe_run_writes_executed_notebook_and_report(tmp_path):
    from l4opt.execute import run_recipe

    out = run_recipe(REPO / "recipes" / "mixed-precision-digits.yaml", tmp_path / "r",
                     progress=False)
    assert Path(out["executed_notebook"]).exists() and Path(out["report"]).exists()
    assert "digits-cnn-int8-search" in Path(out["report"]).read_text()


def test_bad_recipe_files_are_named(tmp_path):
    from l4opt.errors import BadInput
    from l4opt.execute import run_recipe

    bad = tmp_path / "bad.yaml"
    bad.write_text("notebook: study.ipynb\nparameters: {wrkload: minilm}\n")
    (tmp_path / "study.ipynb").write_text((REPO / "recipes" / "study.ipynb").read_text())
    with pytest.raises(BadInput, match="wrkload"):
        run_recipe(bad, tmp_path / "r")
    bad.write_text("parameters: {}\n")
    with pytest.raises(BadInput, match="needs a 'notebook'"):
        run_recipe(bad, tmp_path / "r")
