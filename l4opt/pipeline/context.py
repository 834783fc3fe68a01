"""What every trial of one sweep shares: workload identity, shapes at the deployment batch, the
checked FP32 export (content-cached), the torch reference outputs.

The FP32 export is keyed by what decides it: the weights and data (the workload's
fingerprint), the model's code, the torch version, the opset, the shapes and the I/O names.
An identical sweep therefore finds its export, checks and trial rows in the store without
running torch.onnx.export again, which is what lets it return at once.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
from pathlib import Path

from l4opt import env
from l4opt.errors import BadInput, StageFailed
from l4opt.files import content_key, file_sha256
from l4opt.pipeline.capture import capture
from l4opt.pipeline.checks import check_latency_shapes, check_numerics, check_recipes
from l4opt.results.store import Store
from l4opt.spec.recipes import Recipe
from l4opt.spec.shapes import Shapes, for_workload
from l4opt.spec.workloads import Workload

# 4: recipes' `path` renamed `route`, status 'collapsed', cached FP32 export, TensorRT numerics
# for drift; 3: deployment batch for ModelOpt, checked export, statuses, outputs by name
PIPELINE_VERSION = 4
KEY_VERSIONS = ("torch", "nvidia-modelopt", "onnx", "onnxruntime")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Context:
    """The shared part of a sweep's trials (see the module docstring)."""

    def __init__(self, workload: Workload, store: Store, progress: bool = False, *,
                 batch: int | None = None, dims: dict | None = None, spec: str | None = None,
                 export: dict | None = None):
        from l4opt.pipeline.export import export_options

        self.workload, self.store, self.progress = workload, store, progress
        self.export = export_options({**(workload.export or {}), **(export or {})})
        self.spec = spec  # the workload as the user named it ('file.py:fn'), for commands
        self.shapes: Shapes = for_workload(workload, batch, dims)
        self.versions = {k: v for k, v in env.versions().items() if k in KEY_VERSIONS}
        # building the model (e.g. a Hugging Face load bar) stays quiet unless progress
        with capture(store.artifacts / "workload.log") if not progress else \
                contextlib.nullcontext():
            self.fingerprint = workload.fingerprint()
        self.metric_id = workload.metric.identity()
        self.graph_sha: str | None = None
        self.export_error: Exception | None = None
        self.export_cached = False
        self._reference = None
        self._base: Path | None = None
        self.bar = None
        self.tty = None  # where inner progress bars go while a trial's output is captured

    # -- identity
    def identity(self) -> dict:
        """Everything that decides a trial's result besides its recipe (the cost model's
        rules and fit included: they decide the row's estimated latency and band)."""
        from l4opt.latency import costmodel, estimate

        return {"pipeline": PIPELINE_VERSION, "workload": self.fingerprint,
                "graph": self.graph_sha or f"no-graph:{self.export_error}",
                "metric": self.metric_id, "shapes": self.shapes.to_dict(),
                "versions": self.versions, "costmodel": costmodel.COSTMODEL_VERSION,
                "latency_fit": estimate.fit_stamp()}

    def key(self, recipe: Recipe) -> str:
        if self.graph_sha is None and self.export_error is None:
            self.prepare()
        return content_key("trial", self.identity(), recipe.identity())

    def stage(self, recipe: str, stage: str) -> None:
        """Show the running stage of the current trial on the sweep's progress bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{recipe}: {stage}")

    # -- driver side: export and check once, before any trial
    def prepare(self) -> None:
        """The checked FP32 graph: from the store when an identical export was checked before
        (its hash is part of every trial's key), else exported now and checked against the
        torch model; a broken export is refused before any trial runs. An export that raises
        is kept as the error of every trial (failed rows)."""
        key = export_key(self)
        if not _cached_export(self, key):
            _export(self, key)

    def check_recipes(self, recipes) -> None:
        check_recipes(self.workload, self._base, recipes)

    def seed(self, reference=None, base_onnx: bytes | None = None,
             graph_sha: str | None = None) -> None:
        """Take the driver's FP32 reference outputs and checked export instead of recomputing
        them (a worker of a cluster sweep)."""
        if reference is not None:
            w = self.workload
            self._reference = (reference, metric_or_error(w, reference, reference))
        if graph_sha is not None:
            self.graph_sha = graph_sha
        if base_onnx is not None:
            d = self.store.artifact_dir(content_key("base-fp32", PIPELINE_VERSION, graph_sha))
            (d / "model.fp32.onnx").write_bytes(base_onnx)
            self._base = d / "model.fp32.onnx"

    # -- shared inputs of the trials
    def base_onnx(self) -> Path:
        """The checked FP32 ONNX export, shared by the baseline and the ONNX-PTQ recipes."""
        if self._base is None:
            if self.export_error is not None:
                raise self.export_error
            self.prepare()
            if self.export_error is not None:
                raise self.export_error
        return self._base

    def reference(self) -> tuple[dict, float | None]:
        """FP32 torch outputs by name on the evaluation set, and the task metric on them."""
        if self._reference is None:
            from l4opt.pipeline.runners import TorchRunner, run_all

            w = self.workload
            name = f"reference-{self.fingerprint}-{(self.graph_sha or 'x')[:12]}-" \
                   f"{content_key(self.versions)}"
            ref = self.store.load_arrays(name)
            if ref is None:
                ref = run_all(TorchRunner(w.module(), output_names=w.output_names),
                              w.batches(w.eval_data), total=nbatches(w, w.eval_data),
                              desc="reference (fp32)", progress=self.progress, file=self.tty)
                self.store.save_arrays(name, ref)
            self._reference = (ref, metric_or_error(w, ref, ref))
        return self._reference


def nbatches(w: Workload, data, bs=None) -> int:
    n, bs = w.num_samples(data), bs or w.batch_size
    return (n + bs - 1) // bs


def metric_or_error(w: Workload, out, ref):
    """The metric on the reference itself; its failure is reported by each trial."""
    try:
        return w.metric(out, ref, w.eval_labels)
    except Exception as exc:  # noqa: BLE001 - user code: reported in the row, never raised
        return exc


def export_key(ctx: Context) -> str:
    """The FP32 export's content key: what decides the exported graph."""
    w = ctx.workload
    return content_key("fp32-export", PIPELINE_VERSION, ctx.fingerprint,
                       w.code_identity(), ctx.versions.get("torch"), ctx.export,
                       ctx.shapes.to_dict(), w.input_names, w.output_names,
                       w.dynamic_axes())

def _export(ctx: Context, key: str) -> None:
    """Export the FP32 graph, check it, and store it under `key` with its checks."""
    w = ctx.workload
    d = ctx.store.artifact_dir(key)
    tmp = d / f"model.fp32.{os.getpid()}.onnx"
    log = d / "export.log"
    from l4opt.onnx.graph import check_graph
    from l4opt.pipeline.export import export_torch

    try:
        with capture(log):
            art = export_torch(w.module(), w, tmp, batch=ctx.shapes.batch,
                               opset=ctx.export["opset"], exporter=ctx.export["exporter"])
    except StageFailed as exc:
        tmp.unlink(missing_ok=True)
        ctx.export_error = exc
        return
    path = d / "model.fp32.onnx"
    os.replace(tmp, path)
    try:
        check_graph(path, w.input_names, w.output_names)
    except StageFailed as exc:
        raise BadInput(f"workload {w.name!r}: {exc}") from None
    check_numerics(w, ctx.shapes, path, log)
    check_latency_shapes(w, ctx.shapes, path, log)
    ctx.graph_sha, ctx._base = file_sha256(path), path
    ctx.store.notes.extend(art.notes)
    ctx.store.put({"key": key, "kind": "export", "workload": w.name, "exporter": art.exporter,
                    "export_notes": art.notes, "export_options": ctx.export,
                    "recipe": "(fp32 export)", "status": "ok", "created_at": now(),
                    "graph_sha256": ctx.graph_sha, "checks": ["graph", "numerics",
                                                               "latency shapes"],
                    "artifacts": {"onnx": ctx.store.register(key, "onnx", path)}})

def _cached_export(ctx: Context, key: str) -> bool:
    """Take a stored, checked export whose file is intact (its hash is the row's)."""
    row = ctx.store.row(key)
    if not row or row.get("kind") != "export" or not row.get("graph_sha256"):
        return False
    path = ctx.store.run_dir / row["artifacts"]["onnx"]["path"]
    if not path.is_file() or file_sha256(path) != row["graph_sha256"]:
        ctx.store.notes.append("the stored FP32 export is missing or changed; exported "
                                "again")
        return False
    ctx.graph_sha, ctx._base, ctx.export_cached = row["graph_sha256"], path, True
    return True
