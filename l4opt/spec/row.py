"""The trial row: one dict per trial (and per search candidate), the one place its rules live.

Every producer (the trial, search candidates, bundle imports, Ray engine tasks) writes its
latency fields through `latency_fields` / `measured_update`, and every reader (tables, plots,
report, dashboard, CLI, search) asks `status`, `valid_latency` and `pareto_mask` here, and
shows the columns listed here. A row is a plain JSON-able dict so that results.sqlite,
row.json and DataFrames hold the same thing.

Statuses: "ok" (the recipe did what its name says and its drift is within sense),
"collapsed" (it ran, but drifted far past a sensible threshold: `collapse_note` says why),
"no-op" (a quantizing recipe that quantized no GEMM/conv layer: its figures are the
unquantized graph's), "failed" (with `error`).
"""
from __future__ import annotations

import math

ROW_SCHEMA = 1
STATUSES = ("ok", "collapsed", "no-op", "failed")
RESULT_STATUSES = ("ok", "collapsed", "no-op")  # a trial that finished: served from the store

# The latency fields an estimate (or a measurement) sets; a measurement moves the estimate's
# beside it as est_<field>.
EST_FIELDS = ("latency_ms", "latency_low_ms", "latency_high_ms", "latency_source",
              "latency_batch", "throughput_samples_s", "latency_notes", "latency_trt_version",
              "latency_band_source")
LATENCY_NOTES = 6  # the estimator's notes kept in a row (the FP8/INT8 verdict always)

# The columns a table shows first, in order (a sweep's DataFrame); every other field follows.
COLUMNS = [
    "workload", "recipe", "status", "route", "format", "algorithm", "metric_name", "metric",
    "metric_ref", "metric_drop", "cos_mean", "cos_min", "sqnr_db", "max_abs_err",
    "drift_backend", "latency_ms", "latency_low_ms", "latency_high_ms", "speedup",
    "speedup_low", "speedup_high", "latency_batch",
    "throughput_samples_s", "latency_source", "gemm_layers", "quantized_layers", "collapsed",
    "custom_ops", "total_s", "cached", "error",
]


COLLAPSE_COS = 0.9        # cos_mean below this: the outputs no longer point the same way
COLLAPSE_DROP_REL = 0.10  # task metric worse by more than 10% of its reference value


def collapse_reasons(row) -> list[str]:
    """Why drift `row` (a trial row or a search candidate) is far past sense, one reason per
    tripped threshold (COLLAPSE_COS, COLLAPSE_DROP_REL); empty when it is not collapsed. The
    one rule: a sweep row and the search candidate of the same graph get the same verdict."""
    cos, rel = row.get("cos_mean"), row.get("metric_drop_rel")
    why = []
    if cos is not None and (not math.isfinite(cos) or cos < COLLAPSE_COS):
        why.append(f"cos_mean {cos:.3f} < {COLLAPSE_COS}")
    if rel is not None and math.isfinite(rel) and rel > COLLAPSE_DROP_REL:
        why.append(f"{row.get('metric_name') or 'task metric'} dropped {rel:.0%} of its "
                   f"reference (> {COLLAPSE_DROP_REL:.0%})")
    return why


def status(row) -> str:
    """What happened, in one word (one of STATUSES). Rows stored before 'collapsed' became a
    status of its own say status 'ok' with collapsed true: read as 'collapsed'."""
    s = str(row.get("status") or "ok")
    if s == "ok" and _truthy(row.get("collapsed")):
        return "collapsed"
    return s


def finished(row) -> bool:
    """A trial that ran to its end (ok, collapsed or no-op): a result, served from the store."""
    return status(row) in RESULT_STATUSES


def _truthy(v) -> bool:
    return v is True or (isinstance(v, (int, float)) and not isinstance(v, bool) and
                         math.isfinite(v) and v != 0) or v == "true"


def valid_latency(v) -> bool:
    """A latency that is a result: a finite number above 0 (0, NaN, None never are)."""
    if isinstance(v, bool):
        return False
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and f > 0


def has_latency(row) -> bool:
    """The row carries an L4 latency (measured or estimated) that can be shown and ranked."""
    src = str(row.get("latency_source") or "")
    return valid_latency(row.get("latency_ms")) and src.startswith(("measured", "estimated"))


def latency_notes(notes) -> list[str]:
    """The estimator's explanation, short: its verdict on FP8 vs INT8 first, then the rules
    that fired (fused attention, FP8 conv fall-backs, reformats), without the version line
    (latency_trt_version holds it)."""
    notes = [str(n) for n in notes or [] if not str(n).startswith("TensorRT rules evaluated")]
    verdict = [n for n in notes if n.startswith("FP8 and INT8 run")]
    return (verdict + [n for n in notes if n not in verdict])[:LATENCY_NOTES]


def latency_fields(estimate, shapes, gpu_name: str = "NVIDIA L4") -> dict:
    """The latency fields of a row from an Estimate at `shapes` (a spec.shapes.Shapes): the
    latency and throughput at the deployment batch, the band, source and notes. Raises
    ValueError for a latency that is not a result (0, NaN)."""
    ms = float(estimate.total_ms)
    if not valid_latency(ms):
        raise ValueError(f"the estimate gave {ms} ms: not a latency")
    lo, hi = estimate.low_ms, estimate.high_ms
    return {"latency_ms": ms, "latency_low_ms": float(lo) if lo else ms,
            "latency_high_ms": float(hi) if hi else ms, "latency_batch": shapes.batch,
            "throughput_samples_s": shapes.batch * 1000.0 / ms, "throughput_batch": shapes.batch,
            "latency_source": estimate.source, "latency_gpu": gpu_name,
            "shapes": shapes.to_dict(), "latency_notes": latency_notes(estimate.notes),
            "latency_trt_version": estimate.trt_version or None,
            "latency_band_source": estimate.band_source or None}


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


def engine_kwargs(row: dict) -> dict:
    """latency.trt.measure_onnx's arguments for a trial row (local and Ray engine stages
    alike): its input specs and batch range, its recorded shapes (every named axis) and the
    batch its latency is for, so the measurement is at the shapes and batch the row names."""
    shapes = row.get("shapes") or {}
    return {"inputs": row["inputs"], "batch_range": row["batch_range"],
            "quantized_dtypes": tuple(row.get("quantized_dtypes") or ()),
            "shapes": shapes, "latency_batch": row.get("latency_batch") or shapes.get("batch")}


# Costs (latency, USD per million) this close, relative, count as the same: no accuracy is
# paid for less. The one tie rule: the recommendation and the fleet plan use it.
SAME_COST = 0.05


def least_drift_among_tied(costs, drifts, tie: float = SAME_COST) -> int:
    """Index of the row to choose: the cheapest by `costs`, unless rows within `tie` of it
    drift less; then the least drifting of those (`drifts`: tuples, compared in order; ties
    keep the cheaper). Costs must be finite for at least one row."""
    best = min(range(len(costs)), key=lambda i: costs[i])
    near = [i for i in range(len(costs)) if costs[i] <= costs[best] * (1 + tie)]
    return min(near, key=lambda i: (drifts[i], costs[i]))


def pareto_mask(drop, latency):
    """True where no other point has both lower-or-equal drop and latency (one strictly).
    Points with a missing coordinate are never on the front. The one Pareto rule: the search,
    tables, plots, report and dashboard all use it."""
    import numpy as np

    d, lat = np.asarray(drop, float), np.asarray(latency, float)
    ok = np.isfinite(d) & np.isfinite(lat)
    mask = np.zeros(len(d), bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (d <= d[i]) & (lat <= lat[i]) & ((d < d[i]) | (lat < lat[i]))
        mask[i] = not dominated.any()
    return mask


def fp8_int8_notes(rows: list[dict]) -> list[dict]:
    """Notes from the figures themselves: where a run holds an FP8 and an INT8 row of the same
    workload, shapes and route whose latencies differ, the estimator's per-graph verdict that
    they run "the SAME kernels" is replaced by the two latencies and layer counts, so a note
    never says "equal" beside numbers that are not. Returns the rows it changed."""
    changed = []
    groups: dict = {}
    for r in rows:
        if r.get("format") in ("fp8", "int8") and has_latency(r) and finished(r):
            k = (r.get("workload"), repr(r.get("shapes")), r.get("route"))
            groups.setdefault(k, {}).setdefault(r["format"], r)
    for g in groups.values():
        if len(g) < 2:
            continue
        f8, i8 = g["fp8"], g["int8"]
        a, b = float(f8["latency_ms"]), float(i8["latency_ms"])
        diff = (b - a) / a
        if abs(diff) < 0.005:
            continue  # equal to the estimator's resolution: its own verdict stands
        slower = "INT8" if diff > 0 else "FP8"
        text = (f"FP8 and INT8 differ here: {f8['recipe']} {a:.4g} ms vs {i8['recipe']} {b:.4g} ms "
                f"({slower} {abs(diff):.1%} slower), with {f8.get('quantized_layers')} vs "
                f"{i8.get('quantized_layers')} of {f8.get('gemm_layers')} GEMM/conv layers "
                f"quantized; the layers each leaves in FP16, and the kernels each format has "
                f"for them, make the difference (see excluded_layers)")
        for r in (f8, i8):
            notes = r.get("latency_notes") or []
            if not any(str(n).startswith("FP8 and INT8 run the SAME") for n in notes):
                continue
            r["latency_notes"] = [text] + [n for n in notes
                                           if not str(n).startswith("FP8 and INT8 run")]
            changed.append(r)
    return changed


def route_gap_note(row: dict, other: dict) -> str | None:
    """A note, from the two rows' facts, on why one format measured through ModelOpt's two
    routes (ONNX PTQ and torch PTQ) drifts differently in the same run: calibration, which
    GEMM/conv layers and which other ops' inputs each quantizes, weight scales, and whether
    the same numerics measured both. None unless the rows are that pair (same workload,
    graph and shapes, both finished, both with `qdq_facts`)."""
    if not (row.get("format") == other.get("format") and row.get("format") in ("int8", "fp8")
            and {row.get("route"), other.get("route")} == {"onnx-ptq", "torch-ptq"}
            and all(finished(r) and r.get("qdq_facts")
                    and not (r.get("recipe_config") or {}).get("layer_formats")  # one format
                    for r in (row, other))
            and all(row.get(k) == other.get(k) for k in ("workload_fingerprint", "graph_sha256",
                                                           "shapes"))):
        return None
    a, b = sorted((row, other), key=lambda r: r["route"])  # onnx-ptq first
    fa, fb = a["qdq_facts"], b["qdq_facts"]

    def num(v):
        try:
            return f"{float(v):.4g}"
        except (TypeError, ValueError):
            return "n/a"

    def who(r):
        return (f"{r['recipe']} ({r['route']}, {r.get('algorithm')} calibration): cosine "
                f"{num(r.get('cos_mean'))}, {r.get('metric_name') or 'metric'} "
                f"{num(r.get('metric'))}")

    def readers(f):
        return ", ".join(f"{k} {v}" for k, v in f["activation_readers"].items()) or "none"

    ga, gb = set(fa["quantized_gemms"]), set(fb["quantized_gemms"])
    only = [f"only {r['recipe']} quantizes {len(s)} ({', '.join(sorted(s)[:3])}"
            f"{', ...' if len(s) > 3 else ''})" for r, s in ((a, ga - gb), (b, gb - ga)) if s]
    same_numerics = a.get("drift_backend") == b.get("drift_backend")
    diffs = []
    if a.get("algorithm") != b.get("algorithm"):
        diffs.append(f"calibration {a.get('algorithm')} vs {b.get('algorithm')}")
    diffs.append(f"GEMM/conv layers quantized {len(ga)} vs {len(gb)} of "
                 f"{a.get('gemm_layers')}" + (f" ({'; '.join(only)})" if only else ""))
    diffs.append(f"activation quantizers {fa['activation_quantizers']} vs "
                 f"{fb['activation_quantizers']}, their dequantized values read by "
                 f"[{readers(fa)}] vs [{readers(fb)}]")
    gemm_ops = ("MatMul", "Gemm", "Conv", "ConvTranspose")
    for r, f, g in ((a, fa, fb), (b, fb, fa)):
        ops = [f"{k} ({v})" for k, v in f["activation_readers"].items()
               if k not in g["activation_readers"] and k not in gemm_ops]
        if ops:
            diffs.append(f"only {r['recipe']} quantizes the inputs of {', '.join(ops)}")
    diffs.append(f"weight scales {fa['weight_scales']} vs {fb['weight_scales']}")
    return (f"{a['format'].upper()} by ModelOpt's two routes in this run: {who(a)}; {who(b)}. "
            + ("Both measured with the same numerics (" + str(a.get("drift_backend")) + "), so "
               "the gap comes from the artifacts, what each quantizes and how it calibrates: "
               if same_numerics else
               f"Measured with different numerics ({a.get('drift_backend')} vs "
               f"{b.get('drift_backend')}), part of the gap is the measurement; they also "
               f"differ in: ")
            + "; ".join(diffs))
