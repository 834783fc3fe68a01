"""Every notebook in notebooks/ and playbooks/ executes headless (papermill, a real Jupyter kernel)
on the CPU with small settings; every playbook YAML runs through `l4opt playbook run`."""
import json
import os
import time
from pathlib import Path

import pytest

pm = pytest.importorskip("papermill", reason="the notebook extra is not installed "
                         "(pip install -e .)")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted([*REPO.glob("notebooks/*.ipynb"), *REPO.glob("playbooks/*.ipynb")])
RECIPES = sorted(REPO.glob("playbooks/*.yaml"))
# small settings: every notebook runs in seconds to a minute on a 2-core CPU
SMALL = {
    "quickstart.ipynb": {"workload": "digits-cnn", "recipes": "baseline,int8-max"},
    "dashboard.ipynb": {"workload": "digits-cnn", "recipes": "baseline,int8-max",
                        "headless": True},
    # int8-max: max calibration (entropy histograms cost ~20 s on this CNN)
    "per_layer.ipynb": {"recipe": "int8-max", "strategy": "greedy", "search_eval_samples": 128},
    "bring_your_own_model.ipynb": {"recipes": "baseline,int8-max", "train_steps": 100},
    "study.ipynb": {"recipes": "baseline,int8-max"},
}
SMALL_RECIPES = {
    "fp8-vs-int8-minilm.yaml": {"recipes": "baseline,fp8", "calib_samples": 32,
                                "eval_samples": 64},
    "mixed-precision-digits.yaml": {"recipes": "baseline,int8-max", "search_recipe": "int8-max",
                                    "strategy": "greedy", "search_eval_samples": 128},
}
TIMES = {}


def _errors(path: Path) -> list:
    nb = json.loads(path.read_text())
    return [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_every_notebook_and_recipe_has_small_settings():
    assert {p.name for p in NOTEBOOKS} == set(SMALL)
    assert {p.name for p in RECIPES} == set(SMALL_RECIPES)


def test_notebooks_are_committed_without_outputs():
    for p in NOTEBOOKS:
        nb = json.loads(p.read_text())
        assert [c for c in nb["cells"] if c.get("outputs")] == [], p.name
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{p.name}: one cell tagged 'parameters' for papermill"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, trtexec_dir):
    params = dict(SMALL[path.name], run_dir=str(tmp_path / "run"))
    if "trtexec_dir" in pm.inspect_notebook(str(path)):
        params["trtexec_dir"] = str(trtexec_dir)
    out = tmp_path / path.name
    t = time.perf_counter()
    pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                        progress_bar=False, kernel_name="python3")
    TIMES[path.name] = time.perf_counter() - t
    assert _errors(out) == []
    assert (tmp_path / "run" / "results.sqlite").exists()
    if path.name == "per_layer.ipynb":  # the lint is kept where the report finds it
        assert list((tmp_path / "run" / "lint").glob("*.json"))
        assert list((tmp_path / "run" / "sensitivity").glob("*.json"))


def test_recipes_declare_only_known_parameters():
    from l4opt.ui.playbooks import load_playbook, notebook_parameters

    for y in RECIPES:
        spec = load_playbook(y)
        declared = notebook_parameters(spec["notebook"])
        assert set(spec["parameters"]) <= set(declared), y.name
        assert set(SMALL_RECIPES[y.name]) <= set(declared), y.name


@pytest.mark.slow
@pytest.mark.parametrize("yaml_path", RECIPES, ids=lambda p: p.name)
def test_recipe_run_writes_executed_notebook_and_report(yaml_path, tmp_path):
    from l4opt.ui.playbooks import run_playbook

    t = time.perf_counter()
    out = run_playbook(yaml_path, tmp_path / "r", parameters=SMALL_RECIPES[yaml_path.name],
                     progress=False)
    TIMES[yaml_path.name] = time.perf_counter() - t
    executed, report = Path(out["executed_notebook"]), Path(out["report"])
    assert executed.parent == report.parent == tmp_path / "r"
    assert _errors(executed) == []
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and str((tmp_path / "r").resolve()) in "".join(injected[0]["source"])
    text = report.read_text()
    assert "Accuracy drift vs L4 latency" in text and text.count("plotly.js v") == 1
    if "mixed-precision" in yaml_path.name:
        assert "Mixed-precision search candidates" in text


def test_recipe_errors_name_the_problem(tmp_path, capsys):
    from l4opt.cli import main
    from l4opt.errors import BadInput, StageFailed
    from l4opt.ui.playbooks import run_playbook

    (tmp_path / "study.ipynb").write_text((REPO / "playbooks" / "study.ipynb").read_text())
    bad = tmp_path / "bad.yaml"
    for text, says in (("notebook: study.ipynb\nparameters: {wrkload: minilm}\n", "wrkload"),
                       ("parameters: {}\n", "needs a 'notebook'"),
                       ("notebook: nowhere.ipynb\n", "not found"),
                       ("notebook: study.ipynb\nparameters: [1, 2]\n", "mapping")):
        bad.write_text(text)
        with pytest.raises(BadInput, match=says):
            run_playbook(bad, tmp_path / "r")
    # a failing cell is named like papermill names it: index, error name and value, source
    bad.write_text("notebook: study.ipynb\nparameters: {workload: no-such-workload}\n")
    with pytest.raises(StageFailed, match=r"cell \d+ .*BadInput.*no-such-workload") as info:
        run_playbook(bad, tmp_path / "r", progress=False)
    assert "l4opt.sweep(" in str(info.value) and Path(info.value.artifact).exists()
    # the CLI verb says the same and exits 2
    assert main(["recipe", "run", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "no-such-workload" in capsys.readouterr().err


def teardown_module(module):
    if TIMES:
        lines = [f"{k}: {v:.1f} s" for k, v in sorted(TIMES.items())]
        lines.append(f"total: {sum(TIMES.values()):.1f} s")
        d = Path(os.environ.get("L4OPT_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
        d.mkdir(parents=True, exist_ok=True)
        (d / "notebook-times.txt").write_text("\n".join(lines) + "\n")
