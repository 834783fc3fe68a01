"""How far a quantized artifact's outputs drift from the unquantized model's."""
from __future__ import annotations

import numpy as np

SMALL_OUTPUT = 4  # per-sample sizes below this get one cosine over the whole batch


def tensor_metrics(out, ref) -> dict:
    """Per-sample cosine (mean and worst), SQNR in dB and max absolute error over a whole set.

    An output with fewer than SMALL_OUTPUT values per sample (a score, a regression value)
    gets ONE cosine over the whole batch (the output column as one vector; cos_mean == cos_min,
    `cos_over` "batch"): a per-sample cosine of one value is only its sign agreement, 1 however
    large the error. With fewer than SMALL_OUTPUT values in all, no cosine means anything:
    cos_mean/cos_min are NaN and `cos_over` is "none".

    With dicts {output name: array} (a model with several outputs) the result also holds
    `tensor_metrics_by_output`; the top-level figures are the aggregate: the worst output's
    cos_mean and cos_min (outputs with `cos_over` "none" are left out; a non-finite output
    keeps NaN), SQNR over all outputs concatenated, the largest abs error."""
    if isinstance(out, dict) or isinstance(ref, dict):
        return _by_output(out, ref)
    out = np.asarray(out, np.float64).reshape(len(out), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    if out.shape != ref.shape:
        raise ValueError(f"output shape {out.shape} differs from reference {ref.shape}")
    finite = np.isfinite(out).all()
    over = "sample"
    if out.shape[1] < SMALL_OUTPUT:
        over = "batch" if out.size >= SMALL_OUTPUT else "none"
        cos = _cosine(out.reshape(1, -1), ref.reshape(1, -1))
        if over == "none":
            cos = np.array([np.nan])
    else:
        cos = _cosine(out, ref)
    noise = ((out - ref) ** 2).sum()
    signal = (ref ** 2).sum()
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise) if signal > 0 else float("-inf")
    return {
        "cos_mean": float(np.mean(cos)) if finite else float("nan"),
        "cos_min": float(np.min(cos)) if finite else float("nan"),
        "sqnr_db": float(sqnr) if finite else float("nan"),
        "max_abs_err": float(np.max(np.abs(out - ref))) if finite else float("inf"),
        "cos_over": over,
    }


def _cosine(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine of each row of `out` with the same row of `ref` (1 where both are zero)."""
    num = (out * ref).sum(1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300),
                    np.where((out == ref).all(1), 1.0, 0.0))


def task_delta(value: float, reference: float, higher_is_better: bool) -> dict[str, float]:
    """Change of the task metric; `metric_drop` is positive when the metric got worse."""
    delta = value - reference
    drop = -delta if higher_is_better else delta
    rel = drop / abs(reference) if reference else float("nan")
    # + 0.0 turns a negative zero (no change) into 0.0, so tables never show "-0"
    return {"metric_delta": float(delta) + 0.0, "metric_drop": float(drop) + 0.0,
            "metric_drop_rel": float(rel) + 0.0}


def _by_output(out: dict, ref: dict) -> dict:
    if not isinstance(out, dict) or not isinstance(ref, dict) or set(out) != set(ref):
        raise ValueError(f"outputs {sorted(out) if isinstance(out, dict) else type(out).__name__} "
                         f"differ from the reference's "
                         f"{sorted(ref) if isinstance(ref, dict) else type(ref).__name__}")
    names = list(ref)
    per = {k: tensor_metrics(np.asarray(out[k]), np.asarray(ref[k])) for k in names}
    if len(names) == 1:
        return dict(per[names[0]], tensor_metrics_by_output=per)
    n = len(ref[names[0]])
    cat = tensor_metrics(
        np.concatenate([np.asarray(out[k], np.float64).reshape(n, -1) for k in names], 1),
        np.concatenate([np.asarray(ref[k], np.float64).reshape(n, -1) for k in names], 1))
    # an output too small for any cosine ("none") has no say; a non-finite one's NaN propagates
    cosable = [p for p in per.values() if p["cos_over"] != "none"]
    worst = lambda k, f, ps: float(f([p[k] for p in ps])) if ps else float("nan")  # noqa: E731
    return {"cos_mean": worst("cos_mean", np.min, cosable),
            "cos_min": worst("cos_min", np.min, cosable),
            "sqnr_db": cat["sqnr_db"], "max_abs_err": worst("max_abs_err", np.max, per.values()),
            "cos_over": "/".join(sorted({p["cos_over"] for p in per.values()})),
            "tensor_metrics_by_output": per}


DEGENERATE_SCALE = 1e-6  # a reference output whose largest |value| is below this is ~zero


def degenerate_reference(ref: dict) -> list[str]:
    """Why the FP32 reference outputs make drift figures meaningless, output by output: all
    values near zero (e.g. random weights through BatchNorm), or the same for every sample."""
    out = []
    for name, a in (ref or {}).items():
        a = np.asarray(a, np.float64)
        if not a.size:
            continue
        scale = float(np.max(np.abs(a)))
        if scale < DEGENERATE_SCALE:
            out.append(f"the FP32 reference output {name!r} is near zero everywhere (largest "
                       f"|value| {scale:.2g}): cosine and SQNR against it measure rounding noise, "
                       f"not the recipe; check the model's weights (random weights through "
                       f"BatchNorm do this) or its inputs")
        elif len(a) > 1 and float(np.max(np.ptp(a.reshape(len(a), -1), axis=0))) <= \
                DEGENERATE_SCALE * scale:
            out.append(f"the FP32 reference output {name!r} is the same for every evaluation "
                       f"sample: the model ignores its inputs, so its drift says nothing about "
                       f"them")
    return out


def one_sample_step(n: int) -> float:
    """The largest change one of n samples can make to a metric that is a per-sample mean in
    [0, 1] (top-1 agreement, recall@k): 1 / n."""
    return 1.0 / n if n else float("nan")


FP16_MAX = 65504.0  # the largest finite FP16 value


def out_of_range_tensors(path, feed: list, input_names: list[str], ort, workdir,
                         limit: float = FP16_MAX) -> list[dict]:
    """Which tensors of a float graph hold ±inf, NaN or values beyond `limit` (FP16's range) on
    one batch (`feed`, in input order): each such node output with its producer, its largest
    |value|, the nodes reading it and whether it is `first` (no computed tensor it reads has
    such values), in graph order. An attention mask filled with float32's lowest value does
    this: in the FP16 graph it is -inf, which no 8-bit scale represents, so ModelOpt calibrates
    an infinite amax (or its histogram fails). Runs the graph with every node output exposed
    in `ort` (an OrtWorker)."""
    from pathlib import Path

    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    nodes = list(g.node)  # the graph's own, before the probe's Reshapes
    have = {o.name for o in g.output}
    floats = _float_tensors(model)  # integer tensors (shapes, INT64_MAX slice ends) are no data
    names = [t for n in nodes for t in n.output if t in floats and t not in have]
    flat = {t: f"{t}__l4opt_flat" for t in names}  # rank 1, whatever the rank (scalars too)
    g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "l4opt_flat_shape"))
    g.node.extend(helper.make_node("Reshape", [t, "l4opt_flat_shape"], [f],
                                   name=f"{t}__l4opt_flat_node") for t, f in flat.items())
    g.output.extend([onnx.ValueInfoProto(name=f) for f in flat.values()])
    probe = Path(workdir) / "range-probe.onnx"
    try:  # saved inside: a full disk leaves no partial probe behind
        onnx.save(model, str(probe))
        got = ort.run(probe, input_names, [feed], False, numerics="onnxruntime")
    finally:
        probe.unlink(missing_ok=True)
    peak = {}
    for t, f in flat.items():
        a = np.asarray(got.get(f, ()), np.float64)
        if a.size and not (np.isfinite(a).all() and np.abs(a).max() <= limit):
            peak[t] = float(np.nanmax(np.abs(a))) if not np.isnan(a).all() else float("nan")
    readers: dict[str, list[str]] = {}
    for n in nodes:
        for t in n.input:
            readers.setdefault(t, []).append(n.name)
    return [{"tensor": t, "producer": f"{n.op_type} {n.name}", "max_abs": peak[t],
             "readers": readers.get(t, []), "first": not any(i in peak for i in n.input)}
            for n in nodes for t in n.output if t in peak]


FLOAT_TYPES = (1, 10, 11, 16)  # ONNX FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _float_tensors(model) -> set[str]:
    """Names of the tensors ONNX shape inference types as floating point (none when it fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no types: nothing is probed
        return set()
    g = inferred.graph
    return {v.name for v in list(g.value_info) + list(g.output) + list(g.input)
            if v.type.tensor_type.elem_type in FLOAT_TYPES}
