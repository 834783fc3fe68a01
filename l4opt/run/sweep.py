"""sweep: run each recipe on a workload into the store; the trial itself lives in trial.py.

`sweep()` resolves recipes and the workload, prepares the trial context (checked FP32 export,
shapes at the deployment batch), serves finished identical trials from the store and hands the
rest to an executor (l4opt.run.executors: local, or Ray).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from l4opt.errors import BadInput
from l4opt.latency import paired
from l4opt.pipeline.context import Context
from l4opt.pipeline.drift import degenerate_reference
from l4opt.results.store import Store
from l4opt.run import executors
from l4opt.spec import row as rowspec
from l4opt.spec.loader import load_workload
from l4opt.spec.recipes import Recipe, resolve
from l4opt.spec.workloads import Workload


@dataclass
class SweepResult:
    """The rows of a sweep (one per trial, as stored) and what happened on the way."""

    run_dir: Path
    rows: list[dict]
    notes: list[str] = field(default_factory=list)

    def table(self, columns: list[str] | None = None):
        """One row per trial as a pandas DataFrame, the important columns first."""
        import pandas as pd

        df = pd.DataFrame(self.rows)
        if df.empty:
            return df
        first = [c for c in (columns or rowspec.COLUMNS) if c in df.columns]
        rest = [] if columns else [c for c in df.columns if c not in first]
        return df[first + rest]

    @property
    def failed(self) -> list[dict]:
        """Trials that failed (status 'failed')."""
        return [r for r in self.rows if rowspec.status(r) == "failed"]

    @property
    def not_ok(self) -> list[dict]:
        """Trials that did not do what their recipe says: collapsed, no-op or failed."""
        return [r for r in self.rows if rowspec.status(r) != "ok"]


def sweep(workload="minilm", recipes=None, run_dir="runs/default", *, force: bool = False,
          progress: bool = True, latency: bool = True, cluster: str | None = None,
          batch: int | None = None, dims: dict | None = None, export: dict | None = None,
          spec: str | None = None, **workload_kwargs) -> SweepResult:
    """Run every recipe on the workload; finished identical trials are read from the store.

    `workload` is a built-in name, 'pkg.module:make_workload', 'path/file.py:make_workload'
    or a Workload; `workload_kwargs` (calib_samples=...) go to its factory, checked first;
    `recipes` names, files or Recipe objects
    (default: all built-in recipes); `run_dir` holds results.sqlite and the artifacts.
    `batch` (default: the workload's deploy_batch, else its optimum batch) is the deployment
    batch: ModelOpt calibrates and exports at it, and rows' latency and throughput are for it;
    `dims` gives named non-batch axes (e.g. {"seq": 128}) over the workload's; `export`
    ({"exporter": "dynamo"} or {"dynamo": True}, {"opset": 18}) how the FP32 graph is exported
    (default: TorchScript, torch's dynamo exporter when TorchScript fails); `spec` the
    workload as the user named it (the CLI passes what was typed), for commands rows suggest.
    `cluster` fans the trials out over Ray: "ray" starts a local Ray instance sized to this
    machine, "ray://HOST:PORT" or "HOST:PORT" joins a cluster (see l4opt.cluster).
    With progress=False nothing is printed: ModelOpt's and ONNX Runtime's output goes to each
    trial's log file (`log_path` in its row).
    """
    recipe_list = resolve(recipes)  # unknown or L4-refused recipes fail before any work
    if cluster:
        from l4opt.run.cluster import parse_address

        parse_address(cluster)
    if isinstance(workload, str):
        # a built-in name, 'pkg.module:fn' or 'file.py:fn'; options checked against the
        # factory's signature (BadInput naming them, never a TypeError)
        w = load_workload(workload, workload_kwargs)
    elif workload_kwargs:
        raise BadInput(f"{', '.join(sorted(workload_kwargs))}: options of a built-in workload; "
                       f"a Workload object is used as given (set its data when building it)")
    else:
        w = workload
    if not isinstance(w, Workload):
        raise BadInput(f"workload must be a name or an l4opt.Workload, got {type(w).__name__}")
    w.validate()
    store = Store(run_dir)
    done: dict[str, dict] = {}
    notes: list[str] = []
    try:
        ctx = Context(w, store, progress, batch=batch, dims=dims,
                      spec=spec or (workload if isinstance(workload, str) else None),
                      export=export)
        ctx.prepare()  # export and check the FP32 graph: a broken one stops here
        ctx.check_recipes(recipe_list)  # layer names that match nothing stop here too
        todo: list[tuple[Recipe, str]] = []
        keys = [ctx.key(r) for r in recipe_list]  # once: the identity does not move mid-sweep
        for recipe, key in zip(recipe_list, keys):
            row = None if force else store.cached(key)
            if row is not None:
                done[key] = dict(row, cached=True)
            elif key not in {k for _, k in todo}:  # a recipe listed twice runs once
                todo.append((recipe, key))
        if todo:  # flagged before any trial: a reference that makes drift meaningless
            notes.extend(degenerate_reference(ctx.reference()[0]))
            executor = executors.for_cluster(cluster)
            for key, row in executor.run(ctx, todo, latency=latency, notes=notes,
                                         total=len(recipe_list), initial=len(done)):
                done[key] = dict(row, cached=False)
        rows = [done[k] for k in keys if k in done]
        for r in rowspec.fp8_int8_notes(rows):  # notes from the figures the table shows
            store.update(r["key"], latency_notes=r["latency_notes"])
        paired.add_speedups(rows)  # speed-up over the FP16 baseline of the same shapes, banded
        notes = list(store.notes) + notes
    finally:
        store.close()
    return SweepResult(Path(run_dir), rows, notes)
