"""A search candidate as a trial row, built one way for the ONNX and the torch searches: its
identity, its per-layer formats, the drift it measured, the budget verdict and its estimated
L4 latency (the row rules of l4opt.spec.row)."""
from __future__ import annotations

import time

from l4opt.precision.budget import Budget
from l4opt.spec import row as rowspec
from l4opt.spec.recipes import Recipe


def candidate_row(*, key: str, workload: str, name: str, strategy: str, recipe: Recipe,
                  recipe_config: dict, drift_backend: str, metrics: dict, budget: Budget,
                  counts: dict, gemm_layers: int, fallback: list, **extra) -> dict:
    """One candidate: `counts` holds GEMM/conv layers per format (int8, fp8, fp16)."""
    quantized = counts.get("int8", 0) + counts.get("fp8", 0)
    row = {
        "key": key, "kind": "trial", "workload": workload, "recipe": name, "name": name,
        "strategy": strategy, "route": recipe.route, "format": recipe.format,
        "algorithm": recipe.algorithm, "status": "ok", "recipe_config": recipe_config,
        "drift_backend": drift_backend, "fallback": list(fallback),
        "gemm_layers": gemm_layers, "quantized_layers": quantized,
        "fraction_quantized": quantized / max(1, gemm_layers),
        "int8_layers": counts.get("int8", 0), "fp8_layers": counts.get("fp8", 0),
        "fp16_layers": counts.get("fp16", 0), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **{k: v for k, v in metrics.items() if k != "tensor_metrics_by_output"}, **extra,
    }
    mark_collapse(row)
    # a collapsed candidate is never met, as a collapsed confirming sweep is not (result.verdict)
    row["met"] = budget.met(metrics) and row["status"] == "ok"
    return row


def mark_collapse(row: dict) -> None:
    """The sweep's collapse verdict (l4opt.spec.row.collapse_reasons) on a candidate, so the
    all-quantized candidate and the sweep row of the same graph carry the same status."""
    why = rowspec.collapse_reasons(row) if row.get("status") == "ok" else []
    row.update(collapsed=bool(why), collapse_reasons=why)
    if why:
        row["status"] = "collapsed"


def failed_candidate(row: dict, exc: Exception) -> dict:
    """A candidate whose evaluation failed (e.g. ONNX Runtime crashed on its graph): kept as
    a failed row, never met."""
    row.update(status="failed", met=False, collapsed=False, collapse_reasons=[],
               error=f"{type(exc).__name__}: {exc}")
    return row


def latency(estimate, shapes) -> dict:
    """A candidate's latency fields from its estimate (as a trial row's), or why it has none."""
    try:
        return rowspec.latency_fields(estimate, shapes)
    except ValueError as exc:
        return {"latency_note": f"no estimate: {exc}"}
