"""sweep: run each recipe on a workload into the store; the trial itself lives in trial.py.

`sweep()` resolves recipes and the workload, prepares the trial context (checked FP32 export,
shapes at the deployment batch), serves finished identical trials from the store and hands the
rest to an executor: `LocalExecutor` here, `RayExecutor` (cluster.py) on a Ray cluster.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import trial
from .errors import BadInput
from .recipes import Recipe, resolve
from .store import Store
from .userload import load_workload
from .workloads import Workload

# The columns a table shows first, in order; every other row field follows.
COLUMNS = [
    "workload", "recipe", "status", "path", "format", "algorithm", "metric_name", "metric",
    "metric_ref", "metric_delta", "cos_mean", "cos_min", "sqnr_db", "max_abs_err",
    "drift_backend", "latency_ms", "latency_low_ms", "latency_high_ms", "latency_batch",
    "throughput_samples_s", "latency_source", "gemm_layers", "quantized_layers", "collapsed",
    "custom_ops", "total_s", "cached", "error",
]


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
        first = [c for c in (columns or COLUMNS) if c in df.columns]
        rest = [] if columns else [c for c in df.columns if c not in first]
        return df[first + rest]

    @property
    def failed(self) -> list[dict]:
        """Trials that failed (status 'failed')."""
        return [r for r in self.rows if r.get("status") == "failed"]

    @property
    def not_ok(self) -> list[dict]:
        """Trials that did not do what their recipe says: failed or no-op."""
        return [r for r in self.rows if r.get("status") != "ok"]


class LocalExecutor:
    """Trials one after another in this process (ONNX Runtime in a child process per trial)."""

    name = "local"

    def run(self, ctx: trial.Context, todo, *, latency: bool, notes: list, total: int,
            initial: int):
        from tqdm.auto import tqdm

        bar = ctx.bar = tqdm(todo, desc=f"sweep {ctx.workload.name}", unit="trial",
                             disable=not ctx.progress, total=total, initial=initial)
        try:
            for recipe, key in bar:
                ctx.stage(recipe.name, "start")
                row = trial.run(ctx, recipe, key, latency=latency)
                row["executor"] = self.name
                ctx.store.put(row)
                yield key, row
        finally:
            bar.close()
            ctx.bar = None


def sweep(workload="minilm", recipes=None, run_dir="runs/default", *, force: bool = False,
          progress: bool = True, latency: bool = True, cluster: str | None = None,
          batch: int | None = None, dims: dict | None = None,
          **workload_kwargs) -> SweepResult:
    """Run every recipe on the workload; finished identical trials are read from the store.

    `workload` is a built-in name, 'pkg.module:make_workload', 'path/file.py:make_workload'
    or a Workload; `workload_kwargs` (calib_samples=...) go to its factory, checked first;
    `recipes` names, files or Recipe objects
    (default: all built-in recipes); `run_dir` holds results.sqlite and the artifacts.
    `batch` (default: the workload's deploy_batch, else its optimum batch) is the deployment
    batch: ModelOpt calibrates and exports at it, and rows' latency and throughput are for it;
    `dims` gives named non-batch axes (e.g. {"seq": 128}) over the workload's.
    `cluster` fans the trials out over Ray: "ray" starts a local Ray instance sized to this
    machine, "ray://HOST:PORT" or "HOST:PORT" joins a cluster (see l4opt.cluster).
    With progress=False nothing is printed: ModelOpt's and ONNX Runtime's output goes to each
    trial's log file (`log_path` in its row).
    """
    recipe_list = resolve(recipes)  # unknown or L4-refused recipes fail before any work
    if cluster:
        from .cluster import parse_address

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
        ctx = trial.Context(w, store, progress, batch=batch, dims=dims)
        ctx.prepare()  # export and check the FP32 graph: a broken one stops here
        ctx.check_recipes(recipe_list)  # layer names that match nothing stop here too
        todo: list[tuple[Recipe, str]] = []
        for recipe in recipe_list:
            key = ctx.key(recipe)
            row = None if force else store.cached(key)
            if row is not None:
                done[key] = dict(row, cached=True)
            elif key not in {k for _, k in todo}:  # a recipe listed twice runs once
                todo.append((recipe, key))
        if todo:
            executor = _executor(cluster)
            for key, row in executor.run(ctx, todo, latency=latency, notes=notes,
                                         total=len(recipe_list), initial=len(done)):
                done[key] = dict(row, cached=False)
        notes = list(store.notes) + notes
    finally:
        store.close()
    rows = [done[ctx.key(r)] for r in recipe_list if ctx.key(r) in done]
    return SweepResult(Path(run_dir), rows, notes)


def _executor(cluster) -> trial.Executor:
    if cluster:
        from .cluster import RayExecutor

        return RayExecutor(cluster)
    return LocalExecutor()
