"""The quantize-and-export stage of a trial, one per ModelOpt route, in a registry
(`@stage("onnx-ptq")`): each writes the trial's ONNX artifact into the row (layers quantized,
and why others were not) and returns the outputs on the evaluation set with the backend that
measured them."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import numpy as np

from l4opt.errors import BadInput, StageFailed
from l4opt.files import safe_output
from l4opt.pipeline.context import Context, nbatches
from l4opt.pipeline.runners import numerics_label
from l4opt.spec.recipes import Recipe

STAGES: dict[str, Callable] = {}


def stage(route: str):
    """Register the stage function of one ModelOpt route (a Recipe's `route`)."""
    def register(fn):
        STAGES[route] = fn
        return fn
    return register


def for_route(route: str) -> Callable:
    if route not in STAGES:
        raise BadInput(f"no trial stage for route {route!r}; known: {', '.join(STAGES)}")
    return STAGES[route]


def timed(row: dict, stage: str, ctx: Context | None = None):
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
                   total=nbatches(w, w.eval_data), progress=ctx.progress, file=ctx.tty)


def _record_recurrent(ctx: Context, row: dict, path) -> None:
    """Rows say whether the model's recurrent layers (LSTM/GRU/RNN) were quantized: ModelOpt's
    ONNX PTQ leaves them alone, and its torch PTQ unrolls them into per-step GEMMs."""
    from l4opt.onnx.graph import gemm_nodes, recurrent_nodes

    base = recurrent_nodes(ctx.base_onnx())
    if not base:
        return
    here = recurrent_nodes(path)
    kinds = "/".join(sorted({r["op_type"] for r in base}))
    row.update(recurrent_layers=len(base),
               recurrent_quantized=sum(r["quantized"] for r in here))
    if here and not any(r["quantized"] for r in here):
        row["notes"].append(f"{len(base)} recurrent layer(s) ({kinds}) stay in high precision "
                            f"(no Q/DQ on their weights): the model's time-step work is not "
                            f"quantized, whatever the GEMM count says")
    elif not here:
        row["notes"].append(f"the {len(base)} recurrent layer(s) ({kinds}) of the FP32 graph "
                            f"were unrolled into per-step GEMMs by this export "
                            f"({len(gemm_nodes(path))} GEMM/conv nodes): its latency is that of "
                            f"the unrolled graph")


def _record_onnx(ctx: Context, key: str, row: dict, art) -> None:
    entry = ctx.store.register(key, "onnx", art.path)
    _record_recurrent(ctx, row, art.path)
    row.update(onnx_path=entry["path"], onnx_sha256=art.sha256, onnx_opset=art.opset,
               qdq_nodes=art.qdq, quantized_dtypes=art.quantized_dtypes, custom_ops=art.custom_ops)
    row["artifacts"]["onnx"] = entry


@stage("none")
def baseline(ctx: Context, recipe: Recipe, key: str, row: dict, ort, log):
    """The FP16 deployment graph (ModelOpt AutoCast), drift measured by ONNX Runtime."""
    from l4opt.onnx.graph import gemm_nodes
    from l4opt.pipeline.export import to_fp16
    from l4opt.pipeline.runners import NativeCrash

    with timed(row, "export", ctx):
        art = to_fp16(ctx.base_onnx(), ctx.store.artifact_dir(key) / "model.onnx")
    _record_onnx(ctx, key, row, art)
    row.update(gemm_layers=len(gemm_nodes(art.path)), quantized_layers=0, excluded_layers=[],
               modelopt_batch=None)
    with timed(row, "evaluate", ctx):
        try:
            return _eval_onnx(ctx, ort, Path(art.path), False), f"{numerics_label()} (fp16 graph)"
        except NativeCrash:
            raise
        except StageFailed as exc:
            row["notes"].append(f"FP16 graph not runnable in ONNX Runtime CPU ({exc}); drift "
                                f"measured on the FP32 export")
            return _eval_onnx(ctx, ort, ctx.base_onnx(), False), f"{numerics_label()} (fp32 graph)"


@stage("onnx-ptq")
def onnx_ptq(ctx: Context, recipe: Recipe, key: str, row: dict, ort, log):
    """ModelOpt ONNX PTQ on the checked FP32 export at the deployment batch (or the mixed
    INT8/FP8/FP16 placement when the recipe has layer_formats)."""
    from l4opt.onnx.graph import describe, gemm_nodes, quantized_gemm_nodes
    from l4opt.pipeline.quantize import explain_unquantized, quantize_mixed_onnx, quantize_onnx

    w = ctx.workload
    out = ctx.store.artifact_dir(key) / "model.onnx"
    base = ctx.base_onnx()
    ptq = quantize_mixed_onnx if recipe.layer_formats else quantize_onnx
    with timed(row, "quantize", ctx), safe_output(out, ctx.store.run_dir,
                                                  f"the {recipe.name} Q/DQ graph") as tmp:
        # ModelOpt writes the file it is given by name: a temporary file beside the artifact,
        # renamed over it, so a link standing there is never written through
        info = ptq(str(base), str(tmp), recipe, w.calib_data, shapes=ctx.shapes, log=log)
    art = describe(out)
    _record_onnx(ctx, key, row, art)
    gemms, q = gemm_nodes(base), quantized_gemm_nodes(out)
    row.update(gemm_layers=len(gemms), quantized_layers=len(q),
               modelopt_batch=info.get("calib_batch", ctx.shapes.batch),
               excluded_layers=explain_unquantized(gemms, q, info.get("reasons", {}), recipe,
                                                  graph=base))
    if art.custom_ops:
        row["notes"].append(f"TensorRT-only custom ops in the graph: {', '.join(art.custom_ops)}")
    with timed(row, "evaluate", ctx):
        return _eval_onnx(ctx, ort, out, True), numerics_label()


@stage("torch-ptq")
def torch_ptq(ctx: Context, recipe: Recipe, key: str, row: dict, ort, log):
    """ModelOpt torch PTQ calibrated at the deployment batch, exported with explicit Q/DQ;
    drift on ONNX Runtime, or on the fake-quantized torch model when ORT cannot run it."""
    from l4opt.env import progress as tqdm

    from l4opt.onnx.graph import gemm_nodes, quantized_gemm_nodes
    from l4opt.pipeline.export import FP8_OPSET, OPSET, export_torch
    from l4opt.pipeline.quantize import quantize_torch, uncalibrated_quantizers
    from l4opt.pipeline.runners import NativeCrash, TorchRunner, run_all

    w = ctx.workload
    model = copy.deepcopy(w.module())
    b = ctx.shapes.batch

    def forward_loop(m):
        import torch

        with torch.no_grad():
            for x in tqdm(list(w.batches(w.calib_data, b)), desc=f"calibrate {recipe.name}",
                          leave=False, disable=not ctx.progress, file=ctx.tty):
                m(*[torch.from_numpy(np.ascontiguousarray(a)) for a in x])

    with timed(row, "calibrate", ctx):
        model = quantize_torch(model, recipe, forward_loop)
    unreached = uncalibrated_quantizers(model)
    row["uncalibrated_quantizers"] = unreached
    if unreached:
        row["notes"].append(
            f"{len(unreached)} quantizer(s) left in high precision, calibration never reached "
            f"them: " + "; ".join(f"{u['quantizer']}: {u['reason']}" for u in unreached[:6]))
    path = ctx.store.artifact_dir(key) / "model.onnx"
    with timed(row, "export", ctx):
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
    with timed(row, "evaluate", ctx):
        if art.custom_ops:
            row["notes"].append(
                f"TensorRT-only custom ops in the exported graph ({', '.join(art.custom_ops)}): "
                f"ONNX Runtime cannot run it, so drift is measured on the fake-quantized torch "
                f"model")
        else:
            try:
                return _eval_onnx(ctx, ort, path, True), numerics_label()
            except NativeCrash:
                raise
            except StageFailed as exc:
                row["notes"].append(f"ONNX Runtime could not run the export ({exc}); drift "
                                    f"measured on the fake-quantized torch model")
        out = run_all(TorchRunner(model, "torch-fakequant", w.output_names),
                      w.batches(w.eval_data), total=nbatches(w, w.eval_data),
                      desc="evaluate (torch fake-quant)", progress=ctx.progress, file=ctx.tty)
        return out, "torch-fakequant-cpu"
