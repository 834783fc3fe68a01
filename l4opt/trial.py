"""One trial, top to bottom: context -> quantize -> export -> drift -> status -> latency -> row.

A sweep builds one `Context` per workload (FP32 export checked, torch reference, cache key
parts) and runs `run(ctx, recipe, key)` per recipe through an executor: `LocalExecutor`
(sweeps.py) in this process, `RayExecutor` (cluster.py) on a Ray cluster. Executors import
only this module. A row never lies: it says what ran, at which shapes and batch, how many
GEMM/conv layers were quantized (and why others were not), which backend measured the drift,
whether the latency is measured or estimated (with its band), and where the trial's log is.

Status: "ok" (the recipe did what its name says), "no-op" (a quantizing recipe that quantized
no GEMM/conv layer: its figures are the unquantized graph's), "failed" (with the error).
A row is `collapsed` when cos_mean < COLLAPSE_COS or the task metric dropped by more than
COLLAPSE_DROP_REL of its reference: the note names the likely cause from the calibration
statistics and points to `l4opt search`.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from . import env
from .drift import task_delta, tensor_metrics
from .errors import BadInput, L4OptError, StageFailed
from .recipes import Recipe
from .shapes import Shapes, for_workload
from .store import Store, content_key
from .workloads import Workload

PIPELINE_VERSION = 3  # 3: deployment batch for ModelOpt, checked export, statuses, outputs by name
SCHEMA_VERSION = PIPELINE_VERSION
KEY_VERSIONS = ("torch", "nvidia-modelopt", "onnx", "onnxruntime")
COLLAPSE_COS = 0.9        # cos_mean below this: the outputs no longer point the same way
COLLAPSE_DROP_REL = 0.10  # task metric worse by more than 10% of its reference value
CHECK_SAMPLES = 4         # evaluation samples the FP32 export is checked on against torch
CHECK_RTOL = 1e-3         # allowed max |ORT - torch| relative to the output's max |value|
OUTLIER_RATIO = 8.0       # an activation amax this many times the median amax is an outlier


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ context

class Context:
    """What every trial of one sweep shares: workload identity, shapes at the deployment
    batch, the checked FP32 export, the torch reference outputs."""

    def __init__(self, workload: Workload, store: Store, progress: bool = False, *,
                 batch: int | None = None, dims: dict | None = None):
        self.workload, self.store, self.progress = workload, store, progress
        self.shapes: Shapes = for_workload(workload, batch, dims)
        self.versions = {k: v for k, v in env.versions().items() if k in KEY_VERSIONS}
        # building the model (e.g. a Hugging Face load bar) stays quiet unless progress
        with capture(store.artifacts / "workload.log") if not progress else \
                contextlib.nullcontext():
            self.fingerprint = workload.fingerprint()
        self.metric_id = workload.metric.identity()
        self.graph_sha: str | None = None
        self.export_error: Exception | None = None
        self._reference = None
        self._base: Path | None = None
        self.bar = None
        self.tty = None  # where inner progress bars go while a trial's output is captured

    # -- identity
    def identity(self) -> dict:
        """Everything that decides a trial's result besides its recipe (the cost model's
        rules and fit included: they decide the row's estimated latency and band)."""
        from . import costmodel, estimate

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
        """Export the FP32 graph, hash it (part of every trial's key) and check it against
        the torch model; a broken export is refused before any trial runs. An export that
        raises is kept as the error of every trial (failed rows)."""
        w = self.workload
        tmp = self.store.artifacts / "exports" / f"model.fp32.{os.getpid()}.onnx"
        tmp.parent.mkdir(exist_ok=True)
        log = tmp.with_suffix(".log")
        from .export import check_graph, export_torch, file_sha256

        try:
            with capture(log):
                export_torch(w.module(), w, tmp, batch=self.shapes.batch)
        except StageFailed as exc:
            self.export_error = exc
            return
        self.graph_sha = file_sha256(tmp)
        key = content_key("base-fp32", PIPELINE_VERSION, self.graph_sha)
        d = self.store.artifact_dir(key)
        path = d / "model.fp32.onnx"
        os.replace(tmp, path)
        os.replace(log, d / "export.log")
        try:
            check_graph(path, w.input_names, w.output_names)
        except StageFailed as exc:
            raise BadInput(f"workload {w.name!r}: {exc}") from None
        self._base = path
        self._check_numerics(path, d / "export.log")
        self._check_latency_shapes(path, d / "export.log")
        if self.store.row(key) is None:
            self.store.put({"key": key, "kind": "artifact", "workload": w.name,
                            "recipe": "(fp32 export)", "status": "ok", "created_at": _now(),
                            "artifacts": {"onnx": self.store.register(key, "onnx", path)}})

    def _check_numerics(self, path: Path, log: Path) -> None:
        """ONNX Runtime on the FP32 export agrees with torch on a few evaluation samples."""
        from .runners import OrtWorker, TorchRunner, run_all

        w = self.workload
        k = min(CHECK_SAMPLES, w.num_samples(w.eval_data))
        feed = [w.eval_data[n][:k] for n in w.input_names]
        try:
            want = run_all(TorchRunner(w.module(), output_names=w.output_names), [feed],
                           progress=False)
        except Exception as exc:
            raise BadInput(f"workload {w.name!r}: the model's forward raised on {k} evaluation "
                           f"samples: {_user_error(exc)}") from None
        try:
            with OrtWorker(log) as ort:
                got = ort.run(path, w.input_names, [feed])
        except StageFailed as exc:
            raise BadInput(f"workload {w.name!r}: ONNX Runtime cannot run the FP32 export "
                           f"({exc}); see {log}") from None
        if set(got) != set(want):
            raise BadInput(f"workload {w.name!r}: the FP32 export's outputs {sorted(got)} are "
                           f"not the model's {sorted(want)}")
        for name, ref in want.items():
            out = got[name]
            if out.shape != ref.shape:
                raise BadInput(f"workload {w.name!r}: output {name!r} of the FP32 export has "
                               f"shape {out.shape}, torch gives {ref.shape}")
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            err = float(np.max(np.abs(out - ref))) if ref.size else 0.0
            if not np.isfinite(err) or err > CHECK_RTOL * max(scale, 1e-6) + 1e-6:
                raise BadInput(
                    f"workload {w.name!r}: the FP32 ONNX export does not compute what the torch "
                    f"model computes: output {name!r} differs by up to {err:.3g} (largest "
                    f"|value| {scale:.3g}, allowed {CHECK_RTOL:g} of it) on {k} evaluation "
                    f"samples. Usual causes: a forward that leaves torch (.numpy(), .item(), "
                    f"Python branches on tensor values) or that depends on the batch size "
                    f"(the export is traced at batch {self.shapes.batch})")

    def _check_latency_shapes(self, path: Path, log: Path) -> None:
        """When the latency shapes differ from the data's on a named axis (dims=), the FP32
        export must run at them: an exporter that baked the traced value into the graph
        (torch.onnx's TorchScript exporter does so for nn.MultiheadAttention's key length)
        gives a graph no engine can run at those shapes, so its latency would be fiction."""
        from .runners import OrtWorker

        w, s = self.workload, self.shapes
        data = {n: np.asarray(w.eval_data[n]) for n in w.input_names}
        if all(list(data[n].shape[1:]) == list(s.inputs[n][1:]) for n in w.input_names):
            return
        feed = [np.resize(data[n][:s.batch], s.inputs[n]).astype(data[n].dtype)
                for n in w.input_names]
        try:
            with OrtWorker(log) as ort:
                ort.run(path, w.input_names, [feed])
        except StageFailed as exc:
            import re

            from .shapes import batch_axes

            traced = _data_axes(w, data)
            moved = {k: (traced.get(k), v) for k, v in s.axes.items()
                     if k not in batch_axes(w.inputs) and traced.get(k) != v}
            node = re.search(r"running (\w+) node\. Name:'([^']+)'", str(exc))
            where = f" ({node.group(1)} node {node.group(2)!r} fails)" if node else \
                f" ({str(exc)[:200]})"
            raise BadInput(
                f"workload {w.name!r}: the FP32 ONNX export runs at the data's shapes but not at "
                f"the latency shapes {s.describe()}{where}: the exporter fixed "
                + ", ".join(f"{k} at the traced {a} (dims= asks {b})" for k, (a, b) in moved.items())
                + " inside the graph (torch.onnx's TorchScript exporter does this for "
                f"nn.MultiheadAttention's key length), so no L4 engine could run these shapes "
                f"and their latency would be fiction. Give calibration/evaluation data at those "
                f"shapes instead of dims=, or export with an exporter that keeps the axis "
                f"dynamic") from None

    def check_recipes(self, recipes) -> None:
        """Refuse (BadInput), before any trial, a recipe whose disabled_layers name no torch
        module of the model, or whose nodes_to_exclude / layer_formats match no node of the
        checked FP32 export: a typo must never silently quantize the layer it meant to keep."""
        from .recipes import check_layers

        named = [r for r in recipes if r.disabled_layers or r.nodes_to_exclude
                 or getattr(r, "layer_formats", None)]
        if not named:
            return
        modules = [n for n, _ in self.workload.module().named_modules() if n]
        nodes = None
        if self._base is not None:
            import onnx

            g = onnx.load(str(self._base), load_external_data=False).graph
            nodes = [n.name for n in g.node if n.name]
        for r in named:
            check_layers(r, modules, nodes)

    def seed(self, reference=None, base_onnx: bytes | None = None,
             graph_sha: str | None = None) -> None:
        """Take the driver's FP32 reference outputs and checked export instead of recomputing
        them (a worker of a cluster sweep)."""
        if reference is not None:
            w = self.workload
            self._reference = (reference, _metric_or_none(w, reference, reference))
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
            from .runners import TorchRunner, run_all

            w = self.workload
            name = f"reference-{self.fingerprint}-{(self.graph_sha or 'x')[:12]}-" \
                   f"{content_key(self.versions)}"
            ref = self.store.load_arrays(name)
            if ref is None:
                ref = run_all(TorchRunner(w.module(), output_names=w.output_names),
                              w.batches(w.eval_data), total=_nbatches(w, w.eval_data),
                              desc="reference (fp32)", progress=self.progress, file=self.tty)
                self.store.save_arrays(name, ref)
            self._reference = (ref, _metric_or_none(w, ref, ref))
        return self._reference


def _data_axes(w: Workload, data: dict) -> dict:
    """Named non-batch axes with their size in the data (what the export was traced at)."""
    out = {}
    for i in w.inputs:
        for ax, d in enumerate(i.shape):
            if isinstance(d, str) and 0 < ax < data[i.name].ndim:
                out.setdefault(d, int(data[i.name].shape[ax]))
    return out


def _nbatches(w: Workload, data, bs=None) -> int:
    n, bs = w.num_samples(data), bs or w.batch_size
    return (n + bs - 1) // bs


def _metric_or_none(w: Workload, out, ref):
    """The metric on the reference itself; its failure is reported by each trial."""
    try:
        return w.metric(out, ref, w.eval_labels)
    except Exception as exc:  # noqa: BLE001 - user code: reported in the row, never raised
        return exc


def _user_error(exc: BaseException) -> str:
    """'KeyError: 'x'' with the innermost frame of user code, when there is one."""
    tb = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in tb if "/l4opt/" not in f.filename.replace("\\", "/")
            and "site-packages" not in f.filename]
    where = f" (at {Path(mine[-1].filename).name}:{mine[-1].lineno} in {mine[-1].name})" \
        if mine else ""
    return f"{type(exc).__name__}: {exc}{where}"


# ------------------------------------------------------------------ quiet: logs to a file

@contextlib.contextmanager
def capture(log_path, progress: bool = False):
    """Send everything written to stdout/stderr (Python and native: ModelOpt's tqdm bars and
    logging, ONNX Runtime's and TorchScript's C++ output) to `log_path`. Yields a stream for
    our own progress bars (the real terminal) when `progress`, else None."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = [os.dup(1), os.dup(2)]
    old = sys.stdout, sys.stderr
    tty = None
    if progress:
        real = old[1]
        try:
            is_fd = real.fileno() == 2
        except (AttributeError, OSError, ValueError):
            is_fd = False  # a notebook's stream: not a file descriptor, keeps working
        tty = os.fdopen(os.dup(saved[1]), "w", buffering=1) if is_fd else real
    with open(log_path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    text = open(log_path, "a", buffering=1, errors="replace")
    sys.stdout = sys.stderr = text
    try:
        yield tty
    finally:
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        sys.stdout, sys.stderr = old
        text.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if tty is not None and tty is not old[1]:
            tty.close()


# ------------------------------------------------------------------ the trial

def new_row(ctx: Context, recipe: Recipe, key: str) -> dict:
    """The identity part of a trial row: workload, recipe, shapes, data sizes, versions."""
    w = ctx.workload
    return {
        "key": key, "kind": "trial", "schema_version": SCHEMA_VERSION,
        "pipeline_version": PIPELINE_VERSION, "workload": w.name,
        "workload_fingerprint": ctx.fingerprint, "graph_sha256": ctx.graph_sha,
        "metric_identity": ctx.metric_id, "recipe": recipe.name,
        "recipe_config": recipe.to_dict(), "path": recipe.path, "format": recipe.format,
        "algorithm": recipe.algorithm, "metric_name": w.metric.name,
        "metric_higher_is_better": w.metric.higher_is_better,
        "calib_samples": w.num_samples(w.calib_data), "eval_samples": w.num_samples(w.eval_data),
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in w.inputs],
        "outputs": list(w.output_names), "batch_range": list(w.batch_range),
        "shapes": ctx.shapes.to_dict(), "deploy_batch": ctx.shapes.batch,
        "versions": env.versions(), "machine": env.machine(), "created_at": _now(),
        "notes": [], "artifacts": {}, "timings_s": {}, "collapsed": False, "collapse_note": "",
    }


def run(ctx: Context, recipe: Recipe, key: str, *, latency: bool = True,
        measure: bool = True) -> dict:
    """One trial. Anything that goes wrong (ModelOpt, ONNX Runtime crashing in native code,
    the user's model or metric raising) becomes a row with status 'failed' and the error."""
    from .runners import OrtWorker

    w = ctx.workload
    row = new_row(ctx, recipe, key)
    d = ctx.store.artifact_dir(key)
    log = d / "trial.log"
    log.unlink(missing_ok=True)
    row["log_path"] = str(log.relative_to(ctx.store.run_dir))
    t0 = time.perf_counter()
    ort = OrtWorker(log)
    try:
        with capture(log, ctx.progress) as tty:
            ctx.tty = tty
            try:
                if ctx.export_error is not None:
                    raise ctx.export_error
                ref, ref_metric = ctx.reference()
                out, backend = _STAGES[recipe.path](ctx, recipe, key, row, ort, log)
                row.update(drift_backend=backend, outputs=list(out))
                row.update(tensor_metrics(out, ref))
                _status(row, recipe)
                _task_metric(ctx, row, out, ref, ref_metric)
                _collapse(ctx, row, recipe)
                if latency and row["status"] != "failed":
                    with _timed(row, "latency", ctx):
                        add_latency(ctx, row, measure)
                if measure and row["status"] != "failed" and _has_gpu():
                    with _timed(row, "engine drift", ctx):
                        _engine_drift(ctx, row, ref)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                row.update(status="failed", error=_user_error(exc) if not isinstance(
                    exc, L4OptError) else f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(limit=8))
            finally:
                ctx.tty = None
    finally:
        ort.close()
    row["total_s"] = round(time.perf_counter() - t0, 3)
    return row


def _timed(row: dict, stage: str, ctx: Context | None = None):
    class _T:
        def __enter__(self):
            if ctx is not None:
                ctx.stage(row["recipe"], stage)
            self.t = time.perf_counter()

        def __exit__(self, *a):
            row["timings_s"][stage] = round(time.perf_counter() - self.t, 3)

    return _T()


def _eval_onnx(ctx: Context, ort, path: Path, quantized: bool) -> dict:
    w = ctx.workload
    return ort.run(path, w.input_names, w.batches(w.eval_data), quantized,
                   total=_nbatches(w, w.eval_data), progress=ctx.progress, file=ctx.tty)


def _record_onnx(ctx: Context, key: str, row: dict, art) -> None:
    entry = ctx.store.register(key, "onnx", art.path)
    row.update(onnx_path=entry["path"], onnx_sha256=art.sha256, onnx_opset=art.opset,
               qdq_nodes=art.qdq, quantized_dtypes=art.quantized_dtypes, custom_ops=art.custom_ops)
    row["artifacts"]["onnx"] = entry


def _stage_baseline(ctx: Context, recipe: Recipe, key: str, row: dict, ort, log):
    """The FP16 deployment graph (ModelOpt AutoCast), drift measured by ONNX Runtime."""
    from .export import gemm_nodes, to_fp16
    from .runners import NativeCrash

    with _timed(row, "export", ctx):
        art = to_fp16(ctx.base_onnx(), ctx.store.artifact_dir(key) / "model.onnx")
    _record_onnx(ctx, key, row, art)
    row.update(gemm_layers=len(gemm_nodes(art.path)), quantized_layers=0, excluded_layers=[],
               modelopt_batch=None)
    with _timed(row, "evaluate", ctx):
        try:
            return _eval_onnx(ctx, ort, Path(art.path), False), "onnxruntime-cpu (fp16 graph)"
        except NativeCrash:
            raise
        except StageFailed as exc:
            row["notes"].append(f"FP16 graph not runnable in ONNX Runtime CPU ({exc}); drift "
                                f"measured on the FP32 export")
            return _eval_onnx(ctx, ort, ctx.base_onnx(), False), "onnxruntime-cpu (fp32 graph)"


def _stage_onnx_ptq(ctx: Context, recipe: Recipe, key: str, row: dict, ort, log):
    """ModelOpt ONNX PTQ on the checked FP32 export at the deployment batch (or the mixed
    INT8/FP8/FP16 placement when the recipe has layer_formats)."""
    from .export import gemm_nodes, inspect, quantized_gemm_nodes
    from .quantize import explain_unquantized, quantize_onnx

    w = ctx.workload
    out = ctx.store.artifact_dir(key) / "model.onnx"
    base = ctx.base_onnx()
    with _timed(row, "quantize", ctx):
        if getattr(recipe, "layer_formats", None):
            import inspect as _inspect

            from .mixed import quantize_mixed_onnx

            kw = {"log": log}
            if "shapes" in _inspect.signature(quantize_mixed_onnx).parameters:
                kw["shapes"] = ctx.shapes
            info = quantize_mixed_onnx(str(base), str(out), recipe, w.calib_data, **kw)
        else:
            info = quantize_onnx(str(base), str(out), recipe, w.calib_data, shapes=ctx.shapes,
                                 log=log)
    info = info if isinstance(info, dict) else {}
    art = inspect(out)
    _record_onnx(ctx, key, row, art)
    gemms, q = gemm_nodes(base), quantized_gemm_nodes(out)
    row.update(gemm_layers=len(gemms), quantized_layers=len(q),
               modelopt_batch=info.get("calib_batch", ctx.shapes.batch),
               excluded_layers=explain_unquantized(gemms, q, info.get("reasons", {}), recipe))
    if art.custom_ops:
        row["notes"].append(f"TensorRT-only custom ops in the graph: {', '.join(art.custom_ops)}")
    with _timed(row, "evaluate", ctx):
        return _eval_onnx(ctx, ort, out, True), "onnxruntime-cpu"


def _stage_torch_ptq(ctx: Context, recipe: Recipe, key: str, row: dict, ort, log):
    """ModelOpt torch PTQ calibrated at the deployment batch, exported with explicit Q/DQ;
    drift on ONNX Runtime, or on the fake-quantized torch model when ORT cannot run it."""
    from tqdm.auto import tqdm

    from .export import FP8_OPSET, OPSET, export_torch, gemm_nodes, quantized_gemm_nodes
    from .quantize import quantize_torch, uncalibrated_quantizers
    from .runners import NativeCrash, TorchRunner, run_all

    w = ctx.workload
    model = copy.deepcopy(w.module())
    b = ctx.shapes.batch

    def forward_loop(m):
        import torch

        with torch.no_grad():
            for x in tqdm(list(w.batches(w.calib_data, b)), desc=f"calibrate {recipe.name}",
                          leave=False, disable=not ctx.progress, file=ctx.tty):
                m(*[torch.from_numpy(np.ascontiguousarray(a)) for a in x])

    with _timed(row, "calibrate", ctx):
        model = quantize_torch(model, recipe, forward_loop)
    unreached = uncalibrated_quantizers(model)
    row["uncalibrated_quantizers"] = unreached
    if unreached:
        row["notes"].append(
            f"{len(unreached)} quantizer(s) left in high precision, calibration never reached "
            f"them: " + "; ".join(f"{u['quantizer']}: {u['reason']}" for u in unreached[:6]))
    path = ctx.store.artifact_dir(key) / "model.onnx"
    with _timed(row, "export", ctx):
        art = export_torch(model, w, path, opset=FP8_OPSET if recipe.format == "fp8" else OPSET,
                           batch=b)
    _record_onnx(ctx, key, row, art)
    gemms, q = gemm_nodes(path), quantized_gemm_nodes(path)
    why = (f"its module has no enabled quantizer in ModelOpt's {recipe.torch_preset()} config"
           + (f" or the recipe's disabled_layers {list(recipe.disabled_layers)}"
              if recipe.disabled_layers else "")
           + ", or ModelOpt's quantizers for it were never called (e.g. "
             "nn.MultiheadAttention's in_proj/out_proj, applied functionally)")
    row.update(gemm_layers=len(gemms), quantized_layers=len(q), modelopt_batch=b,
               excluded_layers=[{"node": n, "reason": why} for n in gemms if n not in set(q)])
    with _timed(row, "evaluate", ctx):
        if art.custom_ops:
            row["notes"].append(
                f"TensorRT-only custom ops in the exported graph ({', '.join(art.custom_ops)}): "
                f"ONNX Runtime cannot run it, so drift is measured on the fake-quantized torch "
                f"model")
        else:
            try:
                return _eval_onnx(ctx, ort, path, True), "onnxruntime-cpu"
            except NativeCrash:
                raise
            except StageFailed as exc:
                row["notes"].append(f"ONNX Runtime could not run the export ({exc}); drift "
                                    f"measured on the fake-quantized torch model")
        out = run_all(TorchRunner(model, "torch-fakequant", w.output_names),
                      w.batches(w.eval_data), total=_nbatches(w, w.eval_data),
                      desc="evaluate (torch fake-quant)", progress=ctx.progress, file=ctx.tty)
        return out, "torch-fakequant-cpu"


_STAGES = {"none": _stage_baseline, "onnx-ptq": _stage_onnx_ptq, "torch-ptq": _stage_torch_ptq}


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
                          f"itself: {_user_error(ref_metric)}")
    try:
        metric = w.metric(out, ref, w.eval_labels)
    except Exception as exc:  # noqa: BLE001 - user code
        raise StageFailed("metric", f"metric {w.metric.name!r} raised "
                          f"{_user_error(exc)}") from exc
    row.update(metric=metric, metric_ref=ref_metric,
               **task_delta(metric, ref_metric, w.metric.higher_is_better))
    if not (math.isfinite(metric) and math.isfinite(ref_metric)):
        row.update(status="failed", error=f"metric {w.metric.name!r} returned "
                   f"{metric if not math.isfinite(metric) else ref_metric!r} "
                   f"({'trial' if not math.isfinite(metric) else 'reference'}): not a "
                   f"usable number, so this trial's accuracy is unknown")


def _collapse(ctx: Context, row: dict, recipe: Recipe) -> None:
    """Mark drift far past COLLAPSE_COS / COLLAPSE_DROP_REL, with the likely cause."""
    if row["status"] == "failed":
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
    cause = (calibration_outliers(ctx.store.run_dir / row["onnx_path"])
             if recipe.quantized and row.get("onnx_path") else
             "no calibration statistics (an unquantized graph): FP16 overflow or underflow")
    row.update(collapsed=True, collapse_note=(
        f"collapsed: {' and '.join(why)}. Likely cause: {cause}. Find the layers to keep in "
        f"higher precision with `l4opt search {ctx.workload.name} --recipe {recipe.name}`"))


def calibration_outliers(onnx_path) -> str:
    """Which activation amax (from the Q/DQ graph's scales) stand far above the rest, and what
    produces them (residual adds, LayerNorm, GELU ...): the usual reason INT8/FP8 collapses."""
    import onnx
    from onnx import numpy_helper

    try:
        g = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - the note is an extra
        return f"calibration statistics unreadable ({exc})"
    consts = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            consts[n.output[0]] = n.attribute[0].t
    producer = {o: n for n in g.node for o in n.output}
    acts = []
    for n in g.node:
        if not n.op_type.endswith("QuantizeLinear") or "Dequantize" in n.op_type:
            continue
        if n.input[0] in consts or len(n.input) < 2 or n.input[1] not in consts:
            continue  # a weight, or a scale we cannot read
        scale = float(np.max(np.abs(numpy_helper.to_array(consts[n.input[1]]))))
        zp = consts.get(n.input[2]) if len(n.input) > 2 else None
        fp8 = "FP8" in n.op_type or (zp is not None and "FLOAT8" in
                                     onnx.TensorProto.DataType.Name(zp.data_type))
        p = producer.get(n.input[0])
        kind = p.op_type if p is not None else "graph input"
        acts.append((scale * (448.0 if fp8 else 127.0), n.input[0], kind))
    if len(acts) < 3:
        return (f"only {len(acts)} quantized activation(s): too few to compare; the quantized "
                f"layers themselves are sensitive")
    med = float(np.median([a for a, _, _ in acts]))
    label = {"Add": "residual add", "LayerNormalization": "LayerNorm output",
             "Gelu": "GELU output", "Mul": "Mul (e.g. GELU) output", "Softmax": "softmax output"}
    out = sorted([a for a in acts if a[0] > OUTLIER_RATIO * med], reverse=True)
    if not out:
        top = max(a for a, _, _ in acts)
        return (f"no activation's calibrated amax stands out (largest {top:.3g} = "
                f"{top / med:.1f}x the median {med:.3g}); the quantized layers themselves are "
                f"sensitive")
    items = ", ".join(f"{t} ({label.get(k, k + ' output')}) amax {a:.3g} = {a / med:.0f}x"
                      for a, t, k in out[:4])
    return (f"{len(out)} of {len(acts)} quantized activations have a calibrated amax over "
            f"{OUTLIER_RATIO:g}x the median {med:.3g}: {items}{' ...' if len(out) > 4 else ''}; "
            f"one scale for such a range leaves few levels for the typical values (residual "
            f"adds and LayerNorm inputs are the usual culprits)")


# ------------------------------------------------------------------ latency

def add_latency(ctx: Context, row: dict, measure: bool = True) -> None:
    """L4 latency at the deployment batch with every named axis from shapes: the cost
    model's estimate (with its band), replaced by a measurement on a GPU with TensorRT. A
    latency that is 0, NaN or missing is never stored as a result."""
    try:
        from .estimate import estimate_onnx
    except ImportError:
        return
    s = ctx.shapes
    path = ctx.store.run_dir / row["onnx_path"]
    try:
        e = estimate_onnx(str(path), gpu="L4", batch=s.batch, dynamic_dims=dict(s.axes))
    except Exception as exc:  # noqa: BLE001 - the estimate is an extra; never lose the trial
        row["notes"].append(f"L4 latency estimate failed: {type(exc).__name__}: {exc}")
        return
    ms = float(e.total_ms)
    if not (math.isfinite(ms) and ms > 0):
        row["notes"].append(f"the L4 estimate gave {ms} ms for this graph: not a latency, so "
                            f"none is shown")
        return
    lo, hi = getattr(e, "low_ms", None), getattr(e, "high_ms", None)
    row.update(latency_ms=ms, latency_low_ms=float(lo) if lo else ms,
               latency_high_ms=float(hi) if hi else ms, latency_batch=s.batch,
               throughput_samples_s=s.batch * 1000.0 / ms, throughput_batch=s.batch,
               latency_source=e.source, latency_gpu="NVIDIA L4", shapes=s.to_dict(),
               latency_notes=latency_notes(e.notes),
               latency_trt_version=getattr(e, "trt_version", None) or None,
               latency_band_source=getattr(e, "band_source", None) or None)
    if measure and env.has_tensorrt() and env.gpu() is not None:
        _measure_latency(ctx, row, path)


LATENCY_NOTES = 6  # the estimator's notes kept in a row (the FP8/INT8 verdict always)


def latency_notes(notes) -> list[str]:
    """The estimator's explanation, short: its verdict on FP8 vs INT8 first, then the rules
    that fired (fused attention, FP8 conv fall-backs, reformats), without the version line
    (latency_trt_version holds it)."""
    notes = [str(n) for n in notes or [] if not str(n).startswith("TensorRT rules evaluated")]
    verdict = [n for n in notes if n.startswith("FP8 and INT8 run")]
    return (verdict + [n for n in notes if n not in verdict])[:LATENCY_NOTES]


def _measure_latency(ctx: Context, row: dict, path: Path) -> None:
    """On a machine with TensorRT and a GPU, the engine's measured latency replaces the
    estimate (kept as est_*); a failed build keeps the estimate and says why."""
    from . import trt
    from .workloads import cache_dir

    try:
        m = trt.measure_onnx(path, cache_dir=cache_dir() / "engines", **engine_kwargs(row))
    except L4OptError as exc:
        row["notes"].append(f"engine stage failed ({exc}); the latency stays an ESTIMATE")
        return
    apply_measured(row, m)


def engine_kwargs(row: dict) -> dict:
    """trt.measure_onnx's arguments for a trial row (local and Ray engine stages alike): the
    row's input specs and batch range, its recorded shapes (every named axis) and the batch
    its latency is for, so the measurement is at the shapes and batch the row names."""
    shapes = row.get("shapes") or {}
    return {"inputs": row["inputs"], "batch_range": row["batch_range"],
            "quantized_dtypes": tuple(row.get("quantized_dtypes") or ()),
            "shapes": shapes, "latency_batch": row.get("latency_batch") or shapes.get("batch")}


def onnx_files(path) -> dict[str, bytes]:
    """A graph and the external-weight files it names, by file name, to ship to another node
    (TensorRT's parser opens the weights by their `location` beside the graph)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    files = {"model.onnx": path.read_bytes()}
    for t in _external_tensors(model.graph):
        for e in t.external_data:
            if e.key == "location" and e.value not in files:
                f = path.parent / e.value
                if not f.is_file():
                    raise StageFailed("engine", f"external weights {e.value!r} of {path} are "
                                      f"missing", str(path))
                files[e.value] = f.read_bytes()
    return files


def write_onnx_files(files: dict[str, bytes], folder) -> Path:
    """Write what onnx_files gave into `folder`; returns the graph's path. A file name that
    would leave the folder is refused."""
    folder = Path(folder).resolve()
    for name, data in files.items():
        dest = (folder / name).resolve()
        if folder not in dest.parents:
            raise BadInput(f"refusing to write {name!r} outside {folder}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return folder / "model.onnx"


def _external_tensors(graph):
    import onnx

    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t") and a.t.data_location == onnx.TensorProto.EXTERNAL:
                yield a.t
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _external_tensors(g)


def _has_gpu() -> bool:
    return env.has_tensorrt() and env.gpu() is not None


def _engine_drift(ctx: Context, row: dict, ref) -> None:
    """On a GPU with TensorRT, the drift measured on the built engine itself (the ORT figures
    stay; `engine_drift` says which backend measured what)."""
    from . import trt
    from .runners import concat
    from .workloads import cache_dir

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


EST_FIELDS = ("latency_ms", "latency_low_ms", "latency_high_ms", "latency_source",
              "latency_batch", "throughput_samples_s", "latency_notes", "latency_trt_version",
              "latency_band_source")


def measured_update(row: dict, measured: dict) -> dict:
    """The fields a measured latency sets on a row: the measurement takes the latency columns
    (its band is itself) and an estimate standing there moves beside it, as est_latency_ms,
    est_latency_low_ms, est_latency_high_ms, est_latency_source (and est_ of the batch,
    throughput, notes and TensorRT version). One rule for local, Ray and bundle imports; a
    second measurement keeps the estimate already set aside."""
    out = {}
    if str(row.get("latency_source") or "").startswith("estimated") and \
            row.get("latency_ms") is not None:
        out.update({f"est_{k}": row.get(k) for k in EST_FIELDS})
    out.update(measured)
    ms = out.get("latency_ms")
    if ms is not None:
        out.update(latency_low_ms=ms, latency_high_ms=ms)
    out.setdefault("latency_notes", [])
    out.setdefault("latency_band_source", "measured: no band")
    out.setdefault("latency_trt_version", (measured.get("engine") or {}).get("trt_version"))
    return out


def apply_measured(row: dict, measured: dict) -> None:
    """Put a measured engine latency into the row (see measured_update)."""
    row.update(measured_update(row, measured))


# ------------------------------------------------------------------ executors

class Executor(Protocol):
    """Runs a sweep's (recipe, key) trials and stores each row; yields (key, row) as it goes.
    LocalExecutor (sweeps.py) and RayExecutor (cluster.py) implement it."""

    name: str

    def run(self, ctx: Context, todo: list[tuple[Recipe, str]], *, latency: bool,
            notes: list, total: int, initial: int) -> Iterator[tuple[str, dict]]: ...


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
        from .shapes import batch_axes

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
