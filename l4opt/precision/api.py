"""Which layers hurt (per-layer sensitivity), and the fastest mixed precision within an
accuracy budget, studied on the quantization the sweep measures.

An ONNX-PTQ recipe is studied on its Q/DQ ONNX graph (OnnxStudy): ModelOpt ONNX PTQ calibrates
once per 8-bit format, as the sweep does, and candidates splice each layer's Q/DQ pairs from
the INT8 or the FP8 graph or drop them (FP16), evaluated in ONNX Runtime (l4opt.qdq,
l4opt.mixed). A torch-PTQ recipe is studied in torch (Calibrated): quantizer groups toggled on
one calibrated model. Both calibrate with quantization off, so a layer's scales do not depend
on the other layers' formats, and the saved recipe reproduces the candidate when swept.

The ONNX search is latency-first: moves (INT8 -> FP8, layer -> FP16, other Q/DQ -> FP16) are
ranked by local drift removed per ms of estimated L4 latency added, and the shortest prefix of
that list meeting the budget is found by bisection, screened on a subset of the evaluation set
and confirmed on all of it."""
from __future__ import annotations

from l4opt.errors import BadInput
from l4opt.precision.bisect import search_onnx
from l4opt.precision.budget import Budget
from l4opt.precision.common import prepare
from l4opt.precision.greedy import search_torch
from l4opt.precision.result import SearchResult
from l4opt.precision.sensitivity import sensitivity

__all__ = ["Budget", "STRATEGIES", "SearchResult", "search", "sensitivity"]
STRATEGIES = ("both", "bisect", "greedy", "auto_quantize")


def search(workload, recipe, budget: Budget, run_dir, *, strategy: str = "both",
           eval_samples=None, progress: bool = True, cluster=None, batch: int | None = None,
           dims: dict | None = None) -> SearchResult:
    """The lowest estimated L4 latency mixed precision that meets the budget, as a reusable
    recipe, studied on what the sweep measures. ONNX-PTQ recipes: per-layer INT8/FP8/FP16 by
    bisection over a latency-ranked move list ("both"/"bisect"; "greedy"/"auto_quantize" study
    the torch-PTQ form as earlier versions did). Torch-PTQ recipes: greedy FP16 fallback and
    ModelOpt's auto_quantize. `cluster` runs torch per-layer evaluations and the final trial
    on Ray."""
    if strategy not in STRATEGIES:
        raise BadInput(f"strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if not isinstance(budget, Budget):
        raise BadInput("budget must be an l4opt.searches.Budget")
    w, r = prepare(workload, recipe, eval_samples)
    if r.route == "onnx-ptq" and strategy in ("both", "bisect"):
        return search_onnx(w, r, budget, run_dir, eval_samples, progress, cluster, batch, dims)
    if strategy == "bisect":
        strategy = "greedy"
    if not cluster:
        return search_torch(w, r, budget, run_dir, strategy, eval_samples, progress, None, batch,
                       dims)
    from l4opt.run.cluster import connect, disconnect

    conn = connect(cluster)  # one Ray session for the sensitivity and the final trial
    try:
        return search_torch(w, r, budget, run_dir, strategy, eval_samples, progress, cluster, batch,
                       dims)
    finally:
        disconnect(conn)
