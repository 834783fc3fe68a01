"""Papermill playbooks (called "recipes" before l4opt 0.2, a word that now means only a
precision Recipe): a YAML file names a parameterized notebook (a cell tagged
`parameters`) and the values for a concrete study; running it writes the executed notebook
and the HTML report into the run directory.

    # playbooks/mixed-precision-digits.yaml
    name: mixed-precision-digits          # default run directory: runs/<name>
    notebook: study.ipynb                  # relative to this file
    parameters: {workload: digits-cnn, recipes: "baseline,int8", search_recipe: int8}

`l4opt playbook run playbooks/X.yaml [--out RUN_DIR]`, or `l4opt.ui.playbooks.run_playbook(...)`. The
notebook runs with its own directory as the working directory, and receives `run_dir`.
Plain `papermill playbooks/study.ipynb out.ipynb -p workload minilm` runs the same notebook.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from l4opt import env
from l4opt.errors import BadInput, StageFailed


def load_playbook(yaml_path) -> dict:
    """The recipe file's notebook (resolved), parameters and name, checked."""
    import yaml

    p = Path(yaml_path)
    try:
        spec = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise BadInput(f"cannot read playbook {p}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"playbook {p} is not valid YAML: {exc}") from exc
    if not isinstance(spec, dict) or not spec.get("notebook"):
        raise BadInput(f"playbook {p} needs a 'notebook' key (the parameterized notebook to run, "
                       f"relative to the recipe file) and optional 'parameters' and 'name'")
    nb = (p.parent / str(spec["notebook"])).resolve()
    if not nb.is_file():
        raise BadInput(f"playbook {p}: notebook {nb} not found")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadInput(f"playbook {p}: 'parameters' must be a mapping of name: value")
    unknown = set(spec) - {"name", "notebook", "parameters", "description"}
    if unknown:
        raise BadInput(f"playbook {p}: unknown keys {sorted(unknown)}; a recipe has name, "
                       f"notebook, parameters and description")
    return {"path": p, "notebook": nb, "parameters": params,
            "name": str(spec.get("name") or p.stem), "description": spec.get("description", "")}


def notebook_parameters(notebook) -> dict:
    """The parameters a notebook declares in its `parameters` cell (papermill's inspect)."""
    pm = env.require("papermill", "running playbooks")
    return dict(pm.inspect_notebook(str(notebook)))


def run_playbook(yaml_path, out=None, *, parameters: dict | None = None, progress: bool = True,
               kernel_name: str | None = None) -> dict:
    """Execute a recipe's notebook with papermill into the run directory (default
    runs/<name>), then write the run's HTML report there. `parameters` override the file's.
    Returns the paths: {'run_dir', 'executed_notebook', 'report'}."""
    pm = env.require("papermill", "running playbooks")
    from l4opt.ui.report import write_report

    spec = load_playbook(yaml_path)
    declared = notebook_parameters(spec["notebook"])
    params = dict(spec["parameters"], **(parameters or {}))
    unknown = set(params) - set(declared)
    if unknown:
        raise BadInput(f"playbook {yaml_path}: parameters {sorted(unknown)} are not declared in "
                       f"{spec['notebook'].name}'s parameters cell (it declares "
                       f"{sorted(declared)})")
    if "run_dir" not in declared:
        raise BadInput(f"{spec['notebook'].name} declares no run_dir parameter: a recipe "
                       f"notebook must write its results where the report is made")
    run_dir = Path(out) if out else Path("runs") / spec["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    params["run_dir"] = str(run_dir.resolve())
    executed = run_dir / f"{spec['name']}.executed.ipynb"
    shutil.copyfile(spec["path"], run_dir / f"{spec['name']}.playbook.yaml")
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(spec["notebook"]), str(executed), parameters=params,
                            progress_bar=progress, cwd=str(spec["notebook"].parent),
                            kernel_name=kernel_name)
    except pm.PapermillExecutionError as exc:
        src = "\n    ".join((exc.source or "").splitlines()[:8])
        raise StageFailed(
            "recipe", f"{spec['notebook'].name} cell {exc.cell_index} (execution count "
                      f"{exc.exec_count}) raised {exc.ename}: {exc.evalue}\n  cell source:\n    "
                      f"{src}\n  the executed notebook with the traceback: {executed}",
            artifact=str(executed)) from exc
    except Exception as exc:  # kernel died, kernel missing, timeout: name the notebook
        raise StageFailed("recipe", f"{spec['notebook'].name} could not run: "
                                    f"{type(exc).__name__}: {exc}", artifact=str(executed)) from exc
    seconds = time.perf_counter() - t0
    report = write_report(run_dir)
    return {"run_dir": str(run_dir), "executed_notebook": str(executed), "report": str(report),
            "seconds": round(seconds, 1)}
