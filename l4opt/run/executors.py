"""Executors run a sweep's (recipe, key) trials and store each row, yielding (key, row) as
they go: `local` (this process, ONNX Runtime in a child process) and `ray` (l4opt.run.cluster),
in a registry that `for_cluster` picks from, as papermill picks an engine by name."""
from __future__ import annotations

import importlib
from typing import Iterator, Protocol

from l4opt.pipeline import trial
from l4opt.pipeline.context import Context
from l4opt.spec.recipes import Recipe


class Executor(Protocol):
    """What the sweep needs of an executor."""

    name: str

    def run(self, ctx: Context, todo: list[tuple[Recipe, str]], *, latency: bool,
            notes: list, total: int, initial: int) -> Iterator[tuple[str, dict]]: ...


class LocalExecutor:
    """Trials one after another in this process (ONNX Runtime in a child process per trial)."""

    name = "local"

    def run(self, ctx: Context, todo, *, latency: bool, notes: list, total: int,
            initial: int):
        from l4opt.env import progress as tqdm

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


# name -> "module:class" (imported on use, so Ray loads only when a sweep asks for it)
EXECUTORS = {"local": f"{__name__}:LocalExecutor", "ray": "l4opt.run.cluster:RayExecutor"}


def for_cluster(cluster) -> Executor:
    """The executor of a sweep: Ray when `cluster` names one, else local."""
    name = "ray" if cluster else "local"
    mod, _, cls = EXECUTORS[name].partition(":")
    factory = getattr(importlib.import_module(mod), cls)
    return factory(cluster) if cluster else factory()
