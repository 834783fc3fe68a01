"""sweep: run each recipe on a workload (quantize -> export -> drift -> latency) into the store."""
from __future__ import annotations

import copy
import datetime as _dt
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import env
from .drift import task_delta, tensor_metrics
from .errors import BadInput, L4OptError, StageFailed
from .recipes import Recipe, resolve
from .store import Store, content_key
from .workloads import Workload, load

SCHEMA_VERSION = 2  # 2: histogram calibration collected with every quantizer off
KEY_VERSIONS = ("torch", "nvidia-modelopt", "onnx", "onnxruntime")

# The columns a table shows first, in order; every other row field follows.
COLUMNS = [
    "workload", "recipe", "status", "path", "format", "algorithm", "metric_name", "metric",
    "metric_ref", "metric_delta", "cos_mean", "cos_min", "sqnr_db", "max_abs_err",
    "drift_backend", "latency_ms", "throughput_samples_s", "latency_source", "quantized_layers",
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
        return [r for r in self.rows if r.get("status") != "ok"]


class _Context:
    """What every trial of one sweep shares: workload identity, FP32 reference, base ONNX."""

    def __init__(self, workload: Workload, store: Store, progress: bool):
        self.workload, self.store, self.progress = workload, store, progress
        self.versions = {k: v for k, v in env.versions().items() if k in KEY_VERSIONS}
        self.fingerprint = workload.fingerprint()
        self._reference = None
        self._base = None
        self.bar = None

    def seed(self, reference: np.ndarray | None = None, base_onnx: bytes | None = None) -> None:
        """Take the FP32 reference outputs and base export from the driver instead of
        recomputing them (a worker of a cluster sweep)."""
        if reference is not None:
            w = self.workload
            self._reference = (reference, w.metric(reference, reference, w.eval_labels))
        if base_onnx is not None:
            d = self.store.artifact_dir(content_key("base-fp32", SCHEMA_VERSION, self.fingerprint,
                                                   self.versions))
            (d / "model.fp32.onnx").write_bytes(base_onnx)
            self._base = d / "model.fp32.onnx"

    def stage(self, recipe: str, stage: str) -> None:
        """Show the running stage of the current trial on the sweep's progress bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{recipe}: {stage}")

    def key(self, recipe: Recipe) -> str:
        return content_key("trial", SCHEMA_VERSION, self.fingerprint, recipe.identity(),
                           self.versions)

    def reference(self) -> tuple[np.ndarray, float]:
        """FP32 torch outputs on the evaluation set, and the task metric on them."""
        if self._reference is None:
            from .runners import TorchRunner, run_all

            w = self.workload
            name = f"reference-{self.fingerprint}-{content_key(self.versions)}"
            ref = self.store.load_array(name)
            if ref is None:
                ref = run_all(TorchRunner(w.module()), w.batches(w.eval_data),
                              total=_nbatches(w, w.eval_data), desc="reference (fp32)",
                              progress=self.progress)
                self.store.save_array(name, ref)
            self._reference = (ref, w.metric(ref, ref, w.eval_labels))
        return self._reference

    def base_onnx(self) -> Path:
        """The FP32 ONNX export, shared by the baseline and the ONNX-PTQ recipes."""
        if self._base is None:
            from .export import export_torch

            key = content_key("base-fp32", SCHEMA_VERSION, self.fingerprint, self.versions)
            row = self.store.cached(key)
            d = self.store.artifact_dir(key)
            path = d / "model.fp32.onnx"
            if row is None:
                export_torch(self.workload.module(), self.workload, path)
                self.store.put({"key": key, "kind": "artifact", "workload": self.workload.name,
                                "recipe": "(fp32 export)", "status": "ok", "created_at": _now(),
                                "artifacts": {"onnx": self.store.register(key, "onnx", path)}})
            self._base = path
        return self._base


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _nbatches(w: Workload, data, bs=None) -> int:
    n, bs = w.num_samples(data), bs or w.batch_size
    return (n + bs - 1) // bs


def sweep(workload="minilm", recipes=None, run_dir="runs/default", *, force: bool = False,
          progress: bool = True, latency: bool = True, cluster: str | None = None,
          **workload_kwargs) -> SweepResult:
    """Run every recipe on the workload; finished identical trials are read from the store.

    `workload` is a built-in name or a Workload; `recipes` names, files or Recipe objects
    (default: all built-in recipes); `run_dir` holds results.sqlite and the artifacts.
    `cluster` fans the trials out over Ray: "ray" starts a local Ray instance sized to this
    machine, "ray://HOST:PORT" or "HOST:PORT" joins a cluster (see l4opt.cluster).
    """
    from tqdm.auto import tqdm

    recipe_list = resolve(recipes)  # unknown or L4-refused recipes fail before any work
    if cluster:
        from .cluster import parse_address

        parse_address(cluster)
    w = load(workload, **workload_kwargs) if isinstance(workload, str) else workload
    if not isinstance(w, Workload):
        raise BadInput(f"workload must be a name or an l4opt.Workload, got {type(w).__name__}")
    w.validate()
    store = Store(run_dir)
    ctx = _Context(w, store, progress)
    done: dict[str, dict] = {}
    todo: list[tuple[Recipe, str]] = []
    for recipe in recipe_list:
        key = ctx.key(recipe)
        row = None if force else store.cached(key)
        if row is not None:
            done[key] = dict(row, cached=True)
        elif key not in {k for _, k in todo}:  # a recipe listed twice runs once
            todo.append((recipe, key))
    notes: list[str] = []
    try:
        if cluster and todo:
            from .cluster import run_trials

            for key, row in run_trials(ctx, todo, cluster, latency=latency, notes=notes,
                                       total=len(recipe_list), initial=len(done)):
                done[key] = dict(row, cached=False)
        elif todo:
            bar = ctx.bar = tqdm(todo, desc=f"sweep {w.name}", unit="trial",
                                 disable=not progress, total=len(recipe_list), initial=len(done))
            for recipe, key in bar:
                ctx.stage(recipe.name, "start")
                row = run_trial(ctx, recipe, key)
                if latency and row["status"] == "ok":
                    _add_latency(ctx, row)
                store.put(row)
                done[key] = dict(row, cached=False)
        notes = list(store.notes) + notes
    finally:
        store.close()
    rows = [done[ctx.key(r)] for r in recipe_list if ctx.key(r) in done]
    return SweepResult(Path(run_dir), rows, notes)


def run_isolated(workload: Workload, recipe: Recipe, key: str, scratch_dir, *,
                 latency: bool = True, progress: bool = False, reference=None,
                 base_onnx: bytes | None = None,
                 measure: bool = True) -> tuple[dict, dict[str, bytes]]:
    """Run one trial in a scratch run directory (e.g. on a remote worker) and return its row
    and the files of its artifact directory (relative path -> bytes) for the driver to verify
    and store. `reference` and `base_onnx` come from the driver when it has them; `measure`
    False leaves the engine stage to a GPU task elsewhere."""
    store = Store(scratch_dir)
    try:
        ctx = _Context(workload, store, progress)
        ctx.seed(reference, base_onnx)
        row = run_trial(ctx, recipe, key)
        if latency and row["status"] == "ok":
            _add_latency(ctx, row, measure)
        d = store.artifacts / key
        files = {str(p.relative_to(store.run_dir)): p.read_bytes()
                 for p in sorted(d.rglob("*")) if p.is_file() and p.name != "row.json"}
    finally:
        store.close()
    return row, files


def new_row(ctx: _Context, recipe: Recipe, key: str) -> dict:
    """The identity part of a trial row: workload, recipe, data sizes, versions, machine."""
    w = ctx.workload
    return {
        "key": key, "kind": "trial", "schema_version": SCHEMA_VERSION, "workload": w.name,
        "workload_fingerprint": ctx.fingerprint, "recipe": recipe.name,
        "recipe_config": recipe.to_dict(), "path": recipe.path, "format": recipe.format,
        "algorithm": recipe.algorithm, "metric_name": w.metric.name,
        "metric_higher_is_better": w.metric.higher_is_better,
        "calib_samples": w.num_samples(w.calib_data), "eval_samples": w.num_samples(w.eval_data),
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in w.inputs],
        "batch_range": list(w.batch_range),
        "versions": env.versions(), "machine": env.machine(), "created_at": _now(),
        "notes": [], "artifacts": {}, "timings_s": {},
    }


def run_trial(ctx: _Context, recipe: Recipe, key: str) -> dict:
    """One trial; a failure becomes a row with status 'failed' and the error, never a crash."""
    w = ctx.workload
    row = new_row(ctx, recipe, key)
    t0 = time.perf_counter()
    try:
        ref, ref_metric = ctx.reference()
        out, backend = _TRIALS[recipe.path](ctx, recipe, key, row)
        row.update(tensor_metrics(out, ref))
        metric = w.metric(out, ref, w.eval_labels)
        row.update(metric=metric, metric_ref=ref_metric, drift_backend=backend,
                   **task_delta(metric, ref_metric, w.metric.higher_is_better), status="ok")
    except (L4OptError, RuntimeError, ValueError, TypeError, AssertionError) as exc:
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc(limit=6))
        if isinstance(exc, BadInput):
            raise
    row["total_s"] = round(time.perf_counter() - t0, 3)
    return row


def _timed(row: dict, stage: str, ctx: _Context | None = None):
    class _T:
        def __enter__(self):
            if ctx is not None:
                ctx.stage(row["recipe"], stage)
            self.t = time.perf_counter()

        def __exit__(self, *a):
            row["timings_s"][stage] = round(time.perf_counter() - self.t, 3)

    return _T()


def _eval_onnx(ctx: _Context, path: Path, quantized: bool) -> np.ndarray:
    from .runners import OrtRunner, run_all

    w = ctx.workload
    return run_all(OrtRunner(str(path), w.input_names, quantized=quantized),
                   w.batches(w.eval_data), total=_nbatches(w, w.eval_data),
                   desc="evaluate (onnxruntime)", progress=ctx.progress)


def _record_onnx(ctx: _Context, key: str, row: dict, art) -> None:
    row.update(onnx_path=ctx.store.register(key, "onnx", art.path)["path"],
               onnx_sha256=art.sha256, onnx_opset=art.opset, qdq_nodes=art.qdq,
               quantized_dtypes=art.quantized_dtypes, custom_ops=art.custom_ops)
    row["artifacts"]["onnx"] = ctx.store.register(key, "onnx", art.path)


def _trial_baseline(ctx: _Context, recipe: Recipe, key: str, row: dict):
    from .export import to_fp16

    with _timed(row, "export", ctx):
        art = to_fp16(ctx.base_onnx(), ctx.store.artifact_dir(key) / "model.onnx")
    _record_onnx(ctx, key, row, art)
    row["quantized_layers"] = 0
    with _timed(row, "evaluate", ctx):
        try:
            return _eval_onnx(ctx, Path(art.path), quantized=False), "onnxruntime-cpu (fp16 graph)"
        except StageFailed as exc:
            row["notes"].append(f"FP16 graph not runnable in ONNX Runtime CPU ({exc}); drift "
                                f"measured on the FP32 export")
            return _eval_onnx(ctx, ctx.base_onnx(), quantized=False), "onnxruntime-cpu (fp32 graph)"


def _trial_onnx_ptq(ctx: _Context, recipe: Recipe, key: str, row: dict):
    from .export import inspect
    from .quantize import quantize_onnx

    out = ctx.store.artifact_dir(key) / "model.onnx"
    base = ctx.base_onnx()
    with _timed(row, "quantize", ctx):
        quantize_onnx(str(base), str(out), recipe, ctx.workload.calib_data)
    art = inspect(out)
    _record_onnx(ctx, key, row, art)
    row["quantized_layers"] = _count_quantized_ops(out)
    if art.custom_ops:
        row["notes"].append(f"TensorRT-only custom ops in the graph: {', '.join(art.custom_ops)}")
    with _timed(row, "evaluate", ctx):
        return _eval_onnx(ctx, out, quantized=True), "onnxruntime-cpu"


def _trial_torch_ptq(ctx: _Context, recipe: Recipe, key: str, row: dict):
    from tqdm.auto import tqdm

    from .export import FP8_OPSET, OPSET, export_torch
    from .quantize import quantize_torch, quantized_layers
    from .runners import OrtRunner, TorchRunner, run_all

    w = ctx.workload
    model = copy.deepcopy(w.module())

    def forward_loop(m):
        import torch

        with torch.no_grad():
            for b in tqdm(list(w.batches(w.calib_data)), desc=f"calibrate {recipe.name}",
                          leave=False, disable=not ctx.progress):
                m(*[torch.from_numpy(np.ascontiguousarray(x)) for x in b])

    with _timed(row, "calibrate", ctx):
        model = quantize_torch(model, recipe, forward_loop)
    row["quantized_layers"] = len(quantized_layers(model))
    path = ctx.store.artifact_dir(key) / "model.onnx"
    with _timed(row, "export", ctx):
        art = export_torch(model, w, path, opset=FP8_OPSET if recipe.format == "fp8" else OPSET)
    _record_onnx(ctx, key, row, art)
    with _timed(row, "evaluate", ctx):
        if art.custom_ops:
            row["notes"].append(
                f"TensorRT-only custom ops in the exported graph ({', '.join(art.custom_ops)}): "
                f"ONNX Runtime cannot run it, so drift is measured on the fake-quantized torch "
                f"model")
        else:
            try:
                return _eval_onnx(ctx, path, quantized=True), "onnxruntime-cpu"
            except StageFailed as exc:
                row["notes"].append(f"ONNX Runtime could not run the export ({exc}); drift "
                                    f"measured on the fake-quantized torch model")
        out = run_all(TorchRunner(model, "torch-fakequant"), w.batches(w.eval_data),
                      total=_nbatches(w, w.eval_data), desc="evaluate (torch fake-quant)",
                      progress=ctx.progress)
        return out, "torch-fakequant-cpu"


_TRIALS = {"none": _trial_baseline, "onnx-ptq": _trial_onnx_ptq, "torch-ptq": _trial_torch_ptq}


def _count_quantized_ops(path: Path) -> int:
    """MatMul/Gemm/Conv nodes fed by a DequantizeLinear: the layers running in low precision."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    dq = {n.output[0] for n in g.node if "Dequantize" in n.op_type}
    return sum(1 for n in g.node if n.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose")
               and any(i in dq for i in n.input))


def _add_latency(ctx: _Context, row: dict, measure: bool = True) -> None:
    """L4 latency for the trial: an estimate from the Q/DQ graph (labelled as such)."""
    try:
        from .estimate import estimate_onnx
    except ImportError:
        return
    w = ctx.workload
    path = ctx.store.run_dir / row["onnx_path"]
    lo, opt, hi = w.batch_range
    dims = {d: 1 for i in w.inputs for d in i.shape if isinstance(d, str)}
    try:
        e1 = estimate_onnx(str(path), gpu="L4", batch=1, dynamic_dims=dims)
        eb = estimate_onnx(str(path), gpu="L4", batch=opt,
                           dynamic_dims={d: opt for d in dims})
    except Exception as exc:  # the estimate is an extra; never lose the trial for it
        row["notes"].append(f"L4 latency estimate failed: {type(exc).__name__}: {exc}")
        return
    row.update(latency_ms=e1.total_ms, latency_batch=1, throughput_samples_s=eb.throughput_samples_s,
               throughput_batch=opt, latency_source=e1.source, latency_gpu="NVIDIA L4")
    if measure and env.has_tensorrt() and env.gpu() is not None:
        _measure_latency(ctx, row, path)


def _measure_latency(ctx: _Context, row: dict, path: Path) -> None:
    """On a machine with TensorRT and a GPU, the engine's measured latency replaces the
    estimate (kept as est_*); a failed build keeps the estimate and says why."""
    from . import trt
    from .workloads import cache_dir

    try:
        m = trt.measure_onnx(path, row["inputs"], row["batch_range"], cache_dir() / "engines",
                             quantized_dtypes=row.get("quantized_dtypes") or ())
    except L4OptError as exc:
        row["notes"].append(f"engine stage failed ({exc}); the latency stays an ESTIMATE")
        return
    apply_measured(row, m)


def apply_measured(row: dict, measured: dict) -> None:
    """A measured engine latency takes the latency columns; the estimate moves to est_*."""
    if row.get("latency_ms") is not None:
        row.update(est_latency_ms=row["latency_ms"], est_latency_source=row.get("latency_source"),
                   est_throughput_samples_s=row.get("throughput_samples_s"))
    row.update(measured)
