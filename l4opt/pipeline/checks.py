"""Checks of the FP32 export and of the recipes, before any trial: a broken export or a layer
name that matches nothing stops the sweep with a BadInput saying what to do."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from l4opt.errors import BadInput, StageFailed
from l4opt.pipeline.capture import user_error
from l4opt.spec.shapes import Shapes, batch_axes
from l4opt.spec.workloads import Workload

CHECK_SAMPLES = 4         # evaluation samples the FP32 export is checked on against torch
CHECK_RTOL = 1e-3         # allowed max |ORT - torch| relative to the output's max |value|


def check_numerics(w: Workload, shapes: Shapes, path: Path, log: Path) -> None:
    """ONNX Runtime on the FP32 export agrees with torch on a few evaluation samples."""
    from l4opt.pipeline.runners import OrtWorker, TorchRunner, run_all

    k = min(CHECK_SAMPLES, w.num_samples(w.eval_data))
    feed = [w.eval_data[n][:k] for n in w.input_names]
    try:
        want = run_all(TorchRunner(w.module(), output_names=w.output_names), [feed],
                       progress=False)
    except Exception as exc:
        raise BadInput(f"workload {w.name!r}: the model's forward raised on {k} evaluation "
                       f"samples: {user_error(exc)}") from None
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
                f"(the export is traced at batch {shapes.batch})")


def check_latency_shapes(w: Workload, s: Shapes, path: Path, log: Path) -> None:
    """When the latency shapes differ from the data's on a named axis (dims=), the FP32
    export must run at them: an exporter that baked the traced value into the graph
    (torch.onnx's TorchScript exporter does so for nn.MultiheadAttention's key length)
    gives a graph no engine can run at those shapes, so its latency would be fiction."""
    from l4opt.pipeline.runners import OrtWorker

    data = {n: np.asarray(w.eval_data[n]) for n in w.input_names}
    if all(list(data[n].shape[1:]) == list(s.inputs[n][1:]) for n in w.input_names):
        return
    feed = [np.resize(data[n][:s.batch], s.inputs[n]).astype(data[n].dtype)
            for n in w.input_names]
    try:
        with OrtWorker(log) as ort:
            ort.run(path, w.input_names, [feed])
    except StageFailed as exc:
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


def check_recipes(w: Workload, base: Path | None, recipes) -> None:
    """Refuse (BadInput), before any trial, a recipe whose disabled_layers name no torch
    module of the model, or whose nodes_to_exclude / layer_formats match no node of the
    checked FP32 export: a typo must never silently quantize the layer it meant to keep."""
    from l4opt.spec.recipes import check_layers

    named = [r for r in recipes if r.disabled_layers or r.nodes_to_exclude
             or getattr(r, "layer_formats", None)]
    if not named:
        return
    modules = [n for n, _ in w.module().named_modules() if n]
    nodes = None
    if base is not None:
        import onnx

        g = onnx.load(str(base), load_external_data=False).graph
        nodes = [n.name for n in g.node if n.name]
    for r in named:
        check_layers(r, modules, nodes)


def _data_axes(w: Workload, data: dict) -> dict:
    """Named non-batch axes with their size in the data (what the export was traced at)."""
    out = {}
    for i in w.inputs:
        for ax, d in enumerate(i.shape):
            if isinstance(d, str) and 0 < ax < data[i.name].ndim:
                out.setdefault(d, int(data[i.name].shape[ax]))
    return out
