"""Papermill study recipes: a YAML names a parameterized notebook and its parameters;
running it writes the executed notebook and the HTML report into the run directory."""
from __future__ import annotations

from pathlib import Path

from . import env
from .errors import BadInput, StageFailed


def load_recipe(yaml_path) -> dict:
    import yaml

    p = Path(yaml_path)
    try:
        spec = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise BadInput(f"cannot read recipe {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"recipe {p} is not valid YAML: {exc}") from exc
    if not isinstance(spec, dict) or "notebook" not in spec:
        raise BadInput(f"recipe {p} needs a 'notebook' key (the parameterized notebook to run) "
                       f"and optional 'parameters'")
    nb = (p.parent / spec["notebook"]).resolve()
    if not nb.exists():
        raise BadInput(f"recipe {p}: notebook {nb} not found")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadInput(f"recipe {p}: 'parameters' must be a mapping")
    return {"notebook": nb, "parameters": params, "name": spec.get("name", p.stem)}


def run_recipe(yaml_path, out=None, *, progress: bool = True) -> dict:
    """Execute the recipe's notebook with papermill, then write the run's report."""
    pm = env.require("papermill", "running recipes")
    from .report import write_report

    spec = load_recipe(yaml_path)
    run_dir = Path(out) if out else Path("runs") / spec["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    declared = {p for p in pm.inspect_notebook(str(spec["notebook"]))}
    unknown = set(spec["parameters"]) - declared
    if unknown:
        raise BadInput(f"recipe {yaml_path}: parameters {sorted(unknown)} are not declared in "
                       f"{spec['notebook'].name}'s parameters cell ({sorted(declared)})")
    params = dict(spec["parameters"], run_dir=str(run_dir.resolve()))
    executed = run_dir / f"{spec['name']}.executed.ipynb"
    try:
        pm.execute_notebook(str(spec["notebook"]), str(executed), parameters=params,
                            progress_bar=progress, cwd=str(spec["notebook"].parent))
    except pm.PapermillExecutionError as exc:
        raise StageFailed("recipe", f"cell {exc.exec_count} ({exc.cell_index}) failed: "
                          f"{exc.ename}: {exc.evalue}; see {executed}") from exc
    return {"executed_notebook": str(executed), "report": str(write_report(run_dir)),
            "run_dir": str(run_dir)}
