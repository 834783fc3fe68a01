"""One trial, top to bottom: quantize + export (a stage per route) -> drift -> status ->
task metric -> collapse -> latency -> row.

A sweep builds one `Context` per workload (checked FP32 export, torch reference, cache key
parts; l4opt.pipeline.context) and runs `run(ctx, recipe, key)` per recipe through an executor
(l4opt.run.executors). A row never lies: it says what ran, at which shapes and batch, how many
GEMM/conv layers were quantized (and why others were not), which backend measured the drift,
whether the latency is measured or estimated (with its band), and where the trial's log is.
Statuses and latency fields follow l4opt.spec.row. A row is `collapsed` when cos_mean <
COLLAPSE_COS or the task metric dropped by more than COLLAPSE_DROP_REL of its reference: the
note names the likely cause from the calibration statistics and points to `l4opt search`.
"""
from __future__ import annotations

import math
import time
import traceback
from pathlib import Path

from l4opt import env
from l4opt.errors import L4OptError, StageFailed
from l4opt.files import check_inside
from l4opt.onnx import qdq
from l4opt.pipeline import stages
from l4opt.pipeline.capture import capture, user_error
from l4opt.pipeline.context import PIPELINE_VERSION, Context, now
from l4opt.pipeline.drift import degenerate_reference, one_sample_step, task_delta, tensor_metrics
from l4opt.results.store import Store
from l4opt.spec import row as rowspec
from l4opt.spec.recipes import BUILTIN, Recipe
from l4opt.spec.workloads import Workload

COLLAPSE_COS = 0.9        # cos_mean below this: the outputs no longer point the same way
COLLAPSE_DROP_REL = 0.10  # task metric worse by more than 10% of its reference value
FEW_SAMPLES = 5           # a verdict resting on fewer samples than this says so


def new_row(ctx: Context, recipe: Recipe, key: str) -> dict:
    """The identity part of a trial row: workload, recipe, shapes, data sizes, versions."""
    w = ctx.workload
    return {
        "key": key, "kind": "trial", "schema_version": rowspec.ROW_SCHEMA,
        "pipeline_version": PIPELINE_VERSION, "workload": w.name,
        "workload_fingerprint": ctx.fingerprint, "graph_sha256": ctx.graph_sha,
        "metric_identity": ctx.metric_id, "recipe": recipe.name,
        "recipe_config": recipe.to_dict(), "route": recipe.route, "format": recipe.format,
        "algorithm": recipe.algorithm, "metric_name": w.metric.name,
        "metric_higher_is_better": w.metric.higher_is_better,
        "calib_samples": w.num_samples(w.calib_data), "eval_samples": w.num_samples(w.eval_data),
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in w.inputs],
        "outputs": list(w.output_names), "batch_range": list(w.batch_range),
        "shapes": ctx.shapes.to_dict(), "deploy_batch": ctx.shapes.batch,
        "versions": env.versions(), "machine": env.machine(), "created_at": now(),
        "notes": [], "artifacts": {}, "timings_s": {}, "collapsed": False, "collapse_note": "",
    }


def run(ctx: Context, recipe: Recipe, key: str, *, latency: bool = True,
        measure: bool = True) -> dict:
    """One trial. Anything that goes wrong (ModelOpt, ONNX Runtime crashing in native code,
    the user's model or metric raising) becomes a row with status 'failed' and the error."""
    from l4opt.pipeline.runners import OrtWorker

    row = new_row(ctx, recipe, key)
    d = ctx.store.artifact_dir(key)
    log = d / "trial.log"
    log.unlink(missing_ok=True)
    row["log_path"] = str(log.relative_to(ctx.store.run_dir))
    t0 = time.perf_counter()
    ort = OrtWorker(log)
    try:
        with capture(log, ctx.progress, root=ctx.store.run_dir) as tty:
            ctx.tty = tty
            try:
                if ctx.export_error is not None:
                    raise ctx.export_error
                for name in ("model.onnx", "row.json"):  # never written through a link
                    check_inside(d / name, ctx.store.run_dir)
                ref, ref_metric = ctx.reference()
                out, backend = stages.for_route(recipe.route)(ctx, recipe, key, row, ort, log)
                row.update(drift_backend=backend, outputs=list(out))
                row.update(tensor_metrics(out, ref))
                _status(row, recipe)
                _task_metric(ctx, row, out, ref, ref_metric)
                _collapse(ctx, row, recipe)
                if latency and row["status"] != "failed":
                    with stages.timed(row, "latency", ctx):
                        add_latency(ctx, row, measure)
                if measure and row["status"] != "failed" and _has_gpu():
                    with stages.timed(row, "engine drift", ctx):
                        _engine_drift(ctx, row, ref)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                row.update(status="failed", error=user_error(exc) if not isinstance(
                    exc, L4OptError) else f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(limit=8))
            finally:
                ctx.tty = None
    finally:
        ort.close()
    row["total_s"] = round(time.perf_counter() - t0, 3)
    return row


def _status(row: dict, recipe: Recipe) -> None:
    """ok, or no-op: a quantizing recipe that left every GEMM/conv layer in high precision."""
    row["status"] = "ok"
    if recipe.quantized and not row.get("quantized_layers"):
        row["status"] = "no-op"
        why = sorted({e["reason"] for e in row.get("excluded_layers", [])})
        row["notes"].append(
            f"{recipe.name} quantized none of the {row.get('gemm_layers', 0)} GEMM/conv layers"
            + (f" ({'; '.join(why)})" if why else "")
            + ": its drift and latency are those of the unquantized graph, not of "
              f"{recipe.format.upper()}")


def _task_metric(ctx: Context, row: dict, out, ref, ref_metric) -> None:
    """The user's metric on the trial's outputs; raising, NaN or a non-number fails the row."""
    w = ctx.workload
    if isinstance(ref_metric, Exception):
        raise StageFailed("metric", f"metric {w.metric.name!r} raised on the FP32 reference "
                          f"itself: {user_error(ref_metric)}")
    try:
        metric = w.metric(out, ref, w.eval_labels)
    except Exception as exc:  # noqa: BLE001 - user code
        raise StageFailed("metric", f"metric {w.metric.name!r} raised "
                          f"{user_error(exc)}") from exc
    n = w.num_samples(w.eval_data)
    row.update(metric=metric, metric_ref=ref_metric, metric_samples=n,
               metric_one_sample=one_sample_step(n),
               **task_delta(metric, ref_metric, w.metric.higher_is_better))
    if not (math.isfinite(metric) and math.isfinite(ref_metric)):
        row.update(status="failed", error=f"metric {w.metric.name!r} returned "
                   f"{metric if not math.isfinite(metric) else ref_metric!r} "
                   f"({'trial' if not math.isfinite(metric) else 'reference'}): not a "
                   f"usable number, so this trial's accuracy is unknown")


def _collapse(ctx: Context, row: dict, recipe: Recipe) -> None:
    """Mark drift far past COLLAPSE_COS / COLLAPSE_DROP_REL, with the likely cause."""
    if row["status"] != "ok":
        return
    cos, rel = row.get("cos_mean"), row.get("metric_drop_rel")
    why = []
    if cos is not None and (not math.isfinite(cos) or cos < COLLAPSE_COS):
        why.append(f"cos_mean {cos:.3f} < {COLLAPSE_COS}")
    if rel is not None and math.isfinite(rel) and rel > COLLAPSE_DROP_REL:
        why.append(f"{row['metric_name']} dropped {rel:.0%} of its reference (> "
                   f"{COLLAPSE_DROP_REL:.0%})")
    if not why:
        return
    degenerate = degenerate_reference(ctx.reference()[0])
    if degenerate:
        cause = "; ".join(degenerate)
    elif recipe.quantized and row.get("onnx_path"):
        cause = qdq.calibration_outliers(ctx.store.run_dir / row["onnx_path"])
    else:
        cause = "no calibration statistics (an unquantized graph): FP16 overflow or underflow"
    few = ""
    step, drop = row.get("metric_one_sample"), row.get("metric_drop")
    if step and drop is not None and math.isfinite(drop) and 0 < drop < FEW_SAMPLES * step:
        flips = round(drop / step)
        few = (f" The task-metric verdict rests on about {flips} of {row['metric_samples']} "
               f"evaluation samples (one sample moves {row['metric_name']} by "
               f"{step:.3g}): give more evaluation samples before trusting it.")
    row.update(status="collapsed", collapsed=True, collapse_note=(
        f"collapsed: {' and '.join(why)}. Likely cause: {cause}.{few} Find the layers to keep "
        f"in higher precision with {_search_hint(ctx, recipe)}"))


def _search_hint(ctx: Context, recipe: Recipe) -> str:
    """The search command for this workload as the user gave it (a built-in name or
    'file.py:fn' runs from the CLI; a Workload object only from Python)."""
    recipe_arg = recipe.name if recipe.name in BUILTIN else "RECIPE_FILE"
    if ctx.spec:
        return (f"`l4opt search {ctx.spec} --recipe {recipe_arg} --min-cosine 0.99 --out "
                f"{ctx.store.run_dir}`")
    return (f"`l4opt.search(workload, {recipe.name!r}, l4opt.precision.api.Budget("
            f"min_cosine=0.99), {str(ctx.store.run_dir)!r})` (your Workload object)")


# ------------------------------------------------------------------ latency

def add_latency(ctx: Context, row: dict, measure: bool = True) -> None:
    """L4 latency at the deployment batch with every named axis from shapes: the cost
    model's estimate (with its band), replaced by a measurement on a GPU with TensorRT. A
    latency that is 0, NaN or missing is never stored as a result."""
    try:
        from l4opt.latency.estimate import estimate_onnx
    except ImportError:
        return
    s = ctx.shapes
    path = ctx.store.run_dir / row["onnx_path"]
    try:
        e = estimate_onnx(str(path), gpu="L4", batch=s.batch, dynamic_dims=dict(s.axes))
    except Exception as exc:  # noqa: BLE001 - the estimate is an extra; never lose the trial
        row["notes"].append(f"L4 latency estimate failed: {type(exc).__name__}: {exc}")
        return
    try:
        row.update(rowspec.latency_fields(e, s))
    except ValueError as exc:
        row["notes"].append(f"the L4 {exc} for this graph, so none is shown")
        return
    if measure and env.has_tensorrt() and env.gpu() is not None:
        _measure_latency(ctx, row, path)


def _measure_latency(ctx: Context, row: dict, path: Path) -> None:
    """On a machine with TensorRT and a GPU, the engine's measured latency replaces the
    estimate (kept as est_*); a failed build keeps the estimate and says why."""
    from l4opt.latency import trt
    from l4opt.spec.workloads import cache_dir

    try:
        m = trt.measure_onnx(path, cache_dir=cache_dir() / "engines", **rowspec.engine_kwargs(row))
    except L4OptError as exc:
        row["notes"].append(f"engine stage failed ({exc}); the latency stays an ESTIMATE")
        return
    rowspec.apply_measured(row, m)


def _has_gpu() -> bool:
    return env.has_tensorrt() and env.gpu() is not None


def _engine_drift(ctx: Context, row: dict, ref) -> None:
    """On a GPU with TensorRT, the drift measured on the built engine itself (the ORT figures
    stay; `engine_drift` says which backend measured what)."""
    from l4opt.latency import trt
    from l4opt.pipeline.runners import concat
    from l4opt.spec.workloads import cache_dir

    w = ctx.workload
    try:
        outs = trt.engine_drift_outputs(
            ctx.store.run_dir / row["onnx_path"], row["inputs"], w.batches(w.eval_data),
            cache_dir=cache_dir() / "engines", batch_range=row["batch_range"],
            shapes=ctx.shapes.to_dict(), quantized_dtypes=row.get("quantized_dtypes") or ())
        out = concat(outs)
        m = tensor_metrics(out, ref)
        m["metric"] = w.metric(out, ref, w.eval_labels)
    except Exception as exc:  # noqa: BLE001 - an extra measurement; the row keeps ORT's
        row["notes"].append(f"drift on the TensorRT engine failed: {type(exc).__name__}: {exc}")
        return
    m["drift_backend"] = trt.drift_backend_label((env.gpu() or {}).get("name", "gpu"))
    row["engine_drift"] = m


# ------------------------------------------------------------------ elsewhere

def run_isolated(workload: Workload, recipe: Recipe, key: str, scratch_dir, *,
                 latency: bool = True, progress: bool = False, reference=None,
                 base_onnx: bytes | None = None, graph_sha: str | None = None,
                 shapes: dict | None = None, measure: bool = True) -> tuple[dict, dict[str, bytes]]:
    """Run one trial in a scratch run directory (e.g. on a remote worker) and return its row
    and the files of its artifact directory (relative path -> bytes) for the driver to verify
    and store. `reference`, `base_onnx`, `graph_sha` and `shapes` come from the driver;
    `measure` False leaves the engine stage to a GPU task elsewhere."""
    store = Store(scratch_dir)
    try:
        from l4opt.spec.shapes import batch_axes

        s = shapes or {}
        dims = {k: v for k, v in (s.get("axes") or {}).items()
                if k not in batch_axes(workload.inputs)}
        ctx = Context(workload, store, progress, batch=s.get("batch"), dims=dims or None)
        ctx.seed(reference, base_onnx, graph_sha)
        row = run(ctx, recipe, key, latency=latency, measure=measure)
        d = store.artifacts / key
        files = {str(p.relative_to(store.run_dir)): p.read_bytes()
                 for p in sorted(d.rglob("*")) if p.is_file() and p.name != "row.json"}
    finally:
        store.close()
    return row, files


def failed_row(ctx: Context, recipe: Recipe, key: str, error: str, **extra) -> dict:
    """A row for a trial that could not run at all (e.g. its worker kept dying)."""
    row = new_row(ctx, recipe, key)
    row.update(status="failed", error=error, **extra)
    return row
