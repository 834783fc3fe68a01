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

COLLAPSE_COS = rowspec.COLLAPSE_COS            # the thresholds live with the row rules
COLLAPSE_DROP_REL = rowspec.COLLAPSE_DROP_REL
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
        "collapse_reasons": [],
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
                if recipe.quantized and row.get("onnx_path"):
                    _route_gap(ctx, row)
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
            if recipe.quantized and rowspec.status(row) in ("failed", "collapsed"):
                _explain_out_of_range(ctx, row, recipe, ort, d)
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
    why = rowspec.collapse_reasons(row)
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
    row.update(status="collapsed", collapsed=True, collapse_reasons=why, collapse_note=(
        f"collapsed: {' and '.join(why)}. Likely cause: {cause}.{few} Find the layers to keep "
        f"in higher precision with {_search_hint(ctx, recipe)}"))


def _route_gap(ctx: Context, row: dict) -> None:
    """Record what the trial's Q/DQ graph quantizes (`qdq_facts`) and, when the run already
    holds the same format through ModelOpt's other route (ONNX PTQ vs torch PTQ) for this
    workload, graph and shapes, a note from both rows' facts on why their drift differs."""
    try:
        row["qdq_facts"] = qdq_facts(ctx.store.run_dir / row["onnx_path"])
        others = [r for r in ctx.store.rows(row["workload"])
                  if r.get("kind") == "trial" and r.get("key") != row["key"]
                  and not r.get("strategy") and r.get("route") != row.get("route")]
    except Exception as exc:  # noqa: BLE001 - facts for a note: the trial stands without them
        row["notes"].append(f"could not read what the Q/DQ graph quantizes: "
                            f"{type(exc).__name__}: {exc}")
        return
    for other in reversed(others):  # the latest first
        note = rowspec.route_gap_note(row, other)
        if note:
            row["notes"].append(note)
            row["route_gap"] = {"other": other["recipe"], "other_key": other["key"]}
            return


_RANGES: dict = {}  # (FP32 graph, data, batch) -> its out-of-range tensors, in this process


def _explain_out_of_range(ctx: Context, row: dict, recipe: Recipe, ort, workdir) -> None:
    """A failed or collapsed quantized row whose FP32 graph holds values beyond FP16's range on
    the calibration data (e.g. an attention mask filled with float32's lowest value) says
    where, and which nodes to keep in high precision: in the FP16 graph ModelOpt quantizes,
    such a tensor is ±inf, calibrated to an infinite amax (FP8: every value of it lost) or
    failing ModelOpt's histogram (INT8 entropy: "Too many bins")."""
    collapsed = rowspec.status(row) == "collapsed"
    calibration = "ModelOpt ONNX quantization" in str(row.get("error"))  # ModelOpt failed
    if ctx.export_error is not None or not (collapsed or calibration):
        return
    from l4opt.pipeline.drift import FP16_MAX, out_of_range_tensors

    w = ctx.workload
    memo = (ctx.graph_sha, ctx.fingerprint, ctx.shapes.batch)  # one probe per FP32 graph
    try:
        if memo not in _RANGES:
            feed = next(iter(w.batches(w.calib_data, ctx.shapes.batch)))
            _RANGES[memo] = out_of_range_tensors(ctx.base_onnx(), feed, w.input_names, ort,
                                                 workdir)
            while len(_RANGES) > 8:
                _RANGES.pop(next(iter(_RANGES)))
        found = _RANGES[memo]
    except Exception as exc:  # noqa: BLE001 - a diagnosis only: the row stands as it is
        row["notes"].append(f"could not check the FP32 graph's value ranges: "
                            f"{type(exc).__name__}: {exc}")
        return
    n_found = len(found)
    if collapsed:  # only tensors the trial's graph quantizes
        q = quantized_tensors(ctx.store.run_dir / row["onnx_path"]) if row.get("onnx_path") \
            else set()
        found = [f for f in found if f["tensor"] in q]
    else:  # calibration itself failed: where the out-of-range values start
        found = [f for f in found if f["first"]]
    if not found:
        return
    readers = sorted({r for f in found for r in f["readers"]})
    where = "; ".join(f"{f['tensor']} (from {f['producer']}, |x| up to {f['max_abs']:.3g}, read "
                      f"by {', '.join(f['readers']) or 'nothing'})" for f in found[:4])
    label = "quantized" if collapsed else "first"
    note = (f"the FP32 graph holds values beyond FP16's range (|x| > {FP16_MAX:g}, or inf/NaN) "
            f"on the calibration data ({n_found} tensor(s); {label}: {where}): one 8-bit scale "
            f"cannot cover them and the typical values (in an FP16 graph they are ±inf), so a "
            f"quantized reader's amax is infinite or huge and the tensor is lost, or ModelOpt's "
            f"histogram fails (INT8 entropy). Keep those readers in high precision with the "
            f"recipe's nodes_to_exclude {readers}; an attention mask filled with the lowest "
            f"float does this"
            + ("" if any("mask" in n for n in w.input_names) else
               " (a Hugging Face model given an attention_mask input exports another graph)"))
    row["notes"].append(note)
    row["out_of_range"] = [{k: f[k] for k in ("tensor", "producer", "max_abs", "readers")}
                           for f in found]
    row["out_of_range_readers"] = readers
    if rowspec.status(row) == "failed":
        row["error"] = f"{str(row.get('error')).rstrip('.')}. Likely cause: {note}"
    else:
        row["collapse_note"] = f"{row.get('collapse_note', '')} Also: {note}"


def qdq_facts(path) -> dict:
    """What a Q/DQ graph quantizes, counted the same way for every route, so two rows of one
    format can be compared: activation and weight quantizers, weight scales per channel or per
    tensor, the op types reading quantized activations, the GEMM/conv nodes quantized."""
    import onnx

    from l4opt.onnx.graph import is_dq, is_q, quantized_gemm_nodes
    from l4opt.onnx.qdq import SHAPE_ONLY

    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def from_weight(t, hops=0):  # an initializer, through casts/transposes/constants
        p = producer.get(t)
        if t in inits or (p is not None and p.op_type == "Constant"):
            return True
        return p is not None and p.op_type in ("Cast", "Transpose", "Reshape") and hops < 3 \
            and from_weight(p.input[0], hops + 1)

    acts, weights, scales, readers = 0, 0, set(), {}
    for n in g.node:
        if not is_q(n) or not n.input:
            continue
        if from_weight(n.input[0]):
            weights += 1
            sc = _constant(n.input[1], inits, producer) if len(n.input) > 1 else None
            if sc is not None:
                scales.add("per-channel" if sc.size > 1 else "per-tensor")
            continue
        acts += 1
        for dq in consumers.get(n.output[0], []):
            if is_dq(dq):
                for c in consumers.get(dq.output[0], []):
                    if c.op_type not in SHAPE_ONLY:  # reads the shape, not the values
                        readers[c.op_type] = readers.get(c.op_type, 0) + 1
    return {"activation_quantizers": acts, "weight_quantizers": weights,
            "weight_scales": "/".join(sorted(scales)) or "none",
            "activation_readers": dict(sorted(readers.items())),
            "quantized_gemms": quantized_gemm_nodes(path)}


def _constant(name, inits, producer):
    """The value of an initializer or of a Constant node's output, else None."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    p = producer.get(name)
    if p is not None and p.op_type == "Constant":
        for a in p.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def quantized_tensors(path) -> set[str]:
    """Tensors a QuantizeLinear of the graph at `path` reads, directly or through a Cast (the
    FP16 cast ModelOpt puts before a quantizer)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in g.node for o in n.output}
    out = set()
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input:
            t = n.input[0]
            out.add(t)
            p = producer.get(t)
            if p is not None and p.op_type == "Cast":
                out.add(p.input[0])
    return out


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
