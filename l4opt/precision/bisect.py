"""The ONNX-PTQ search: moves ranked by local drift removed per estimated L4 ms, the shortest
prefix meeting the budget found by bisection (screened on a subset, confirmed on all)."""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

from l4opt.errors import StageFailed
from l4opt.files import content_key
from l4opt.precision.budget import Budget
from l4opt.precision.candidates import candidate_row
from l4opt.precision.common import default_eval_samples, log_file
from l4opt.precision.onnx_study import OnnxStudy, layer_costs, local_errors, price
from l4opt.precision.result import (
    SearchResult,
    choose,
    compare_with_run,
    mark_pareto,
    save_search,
    verdict,
)
from l4opt.results.store import Store
from l4opt.spec.names import safe_filename
from l4opt.spec.recipes import Recipe
from l4opt.spec.workloads import Workload


def _moves(st: OnnxStudy, errs: dict, costs: dict) -> list[dict]:
    """Every single-layer change that lowers drift, ranked by local drift removed per ms of
    estimated L4 latency added (free moves first, by drift removed)."""
    moves = []
    alt = next((f for f in st.formats if f != st.format), None)
    for layer in st.layers:
        e = errs.get(layer)
        if e is None:
            continue
        base_err = e.get(st.format, 0.0)
        c = costs.get(layer, {})
        best8 = base_err
        if st.kind(layer) == "gemm" and alt and alt in e and e[alt] < base_err:
            moves.append({"layer": layer, "to": alt, "gain": base_err - e[alt],
                          "cost_ms": max(0.0, c.get(alt, 0.0) - c.get(st.format, 0.0))})
            best8 = e[alt]
        if best8 > 0:
            moves.append({"layer": layer, "to": "fp16", "gain": best8,
                          "cost_ms": max(0.0, c.get("fp16", 0.0) - c.get(st.format, 0.0))})
    eps = 1e-6  # ms: below the estimator's resolution, a move is free
    for m in moves:
        m["gain_per_ms"] = m["gain"] / max(m["cost_ms"], eps)
    moves.sort(key=lambda m: (-m["gain_per_ms"], -m["gain"]))
    return moves


def _config(moves: list[dict], k: int) -> dict:
    """The formats after the first k moves (a layer sent to FP16 stays there)."""
    out: dict[str, str] = {}
    for m in moves[:k]:
        if out.get(m["layer"]) != "fp16":
            out[m["layer"]] = m["to"]
    return out


class _Recorder:
    """Evaluates, prices and stores ONNX candidates (one trial row each)."""

    def __init__(self, st: OnnxStudy, store: Store, budget: Budget, r: Recipe):
        self.st, self.store, self.budget, self.r = st, store, budget, r
        self.rows: list[dict] = []
        self.fp = st.w.fingerprint()

    def __call__(self, formats: dict, name: str, full: bool, k: int | None = None) -> dict:
        st = self.st
        formats = {x: f for x, f in formats.items() if f != st.format}
        try:
            m = st.evaluate_formats(formats, full=full)
        except StageFailed as exc:  # e.g. ONNX Runtime crashed on this graph: not a result
            m = {"metric": float("nan"), "metric_drop": float("inf"), "cos_mean": float("nan"),
                 "eval_samples": st.screen_n if not full else len(next(iter(st.eval.values()))),
                 "error": f"{type(exc).__name__}: {exc}"}
        per = {x: formats.get(x, st.format) for x in st.layers}
        gemm = [x for x in st.layers if st.kind(x) == "gemm"]
        count = {f: sum(per[x] == f for x in gemm) for f in ("int8", "fp8", "fp16")}
        total = len(st.qg.gemm_layers)
        count["fp16"] += total - len(gemm)
        key = content_key("search-onnx", self.fp, self.r.identity(), sorted(formats.items()),
                          full, m["eval_samples"])
        seen = next((x for x in self.rows if x["key"] == key), None)
        if seen is not None:
            return seen
        lf = {"^" + re.escape(x) + "$": f for x, f in formats.items()}
        row = candidate_row(
            key=key, workload=st.w.name, name=name, strategy="bisect" if full else "bisect-screen",
            recipe=self.r, recipe_config=dict(self.r.to_dict(), layer_formats=lf),
            drift_backend=st.drift_backend, metrics=m, budget=self.budget, counts=count,
            gemm_layers=total, fallback=[x for x, f in formats.items() if f == "fp16"],
            metric_name=st.w.metric.name, layer_formats=lf, moves=k, screened=not full)
        if "error" in m:
            row.update(status="failed", met=False, collapsed=False, collapse_reasons=[])
        try:
            p = price(st, st.model(formats))
            layers = p.pop("_layers")
            row.update(p)
            row["_layer_ms"] = dict(zip(layers["layer"], layers["latency_ms"]))
        except Exception as exc:  # price unknown: keep the candidate, say why
            row["latency_note"] = f"no estimate: {type(exc).__name__}: {exc}"
        row["_formats"] = formats
        self.store.put({k2: v for k2, v in row.items() if not k2.startswith("_")})
        self.rows.append(row)
        return row


def _bisect(rec: _Recorder, moves: list[dict], progress: bool) -> dict:
    """The shortest prefix of `moves` meeting the budget: bisection on the screening subset,
    then confirmation (and, if needed, a few more moves) on the whole evaluation set."""
    from l4opt.env import progress as tqdm

    n = len(moves)
    bar = tqdm(total=max(1, math.ceil(math.log2(n + 1))) + 3, desc="bisect", unit="eval",
               disable=not progress, file=rec.st.tty)
    tried = []

    def screen(k):
        row = rec(_config(moves, k), f"bisect/{k}-moves (screen)", full=False, k=k)
        tried.append((k, row["met"]))
        bar.update(1)
        return row["met"]

    lo, hi = 0, None
    if screen(0):
        hi = 0
    elif n:  # every move applied is the most accurate candidate: confirmed below if reached
        hi = n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if screen(mid):
                hi = mid
            else:
                lo = mid
    confirmed = None
    k = hi if hi is not None else n
    step = max(1, n // 16)
    while True:
        row = rec(_config(moves, k), f"bisect/{k}-moves", full=True, k=k)
        bar.update(1)
        if row["met"] or k >= n:
            confirmed = row
            break
        k = min(n, k + step)
    bar.close()
    return {"status": "ok", "moves": n, "screened": tried, "best": confirmed["name"],
            "met": confirmed["met"], "k": k}


def _layer_map(st: OnnxStudy, errs: dict, chosen: dict) -> list[dict]:
    """Every GEMM/conv (and other Q/DQ reader) in graph order with its chosen format, its
    local drift in each 8-bit format and its estimated L4 time in the chosen graph."""
    formats = chosen.get("_formats") or {}
    ms = chosen.get("_layer_ms") or {}
    rows = []
    for lay in sorted(st.qg.layers.values(), key=lambda x: x.index):
        if lay.kind == "other" and not lay.quantized:
            continue
        fmt = formats.get(lay.name, st.format) if lay.quantized else "fp16"
        e = errs.get(lay.name, {})
        rows.append({"layer": lay.name, "op_type": lay.op_type, "kind": lay.kind,
                     "format": fmt, "quantizable": lay.quantized,
                     "sensitivity": e.get(st.format), **{f"local_{f}": v for f, v in e.items()},
                     # an op the estimator fuses into its producer has no kernel: 0 ms
                     "est_ms": ms.get(lay.name, 0.0 if lay.kind == "other" and ms else None),
                     "order": lay.index})
    return rows


def search_onnx(w: Workload, r: Recipe, budget: Budget, run_dir, eval_samples, progress,
                 cluster, batch, dims) -> SearchResult:
    import shutil
    import tempfile

    from l4opt.pipeline.capture import capture
    from l4opt.run.sweep import sweep

    t0 = time.perf_counter()
    store = Store(run_dir)
    st = None
    work = tempfile.mkdtemp(prefix="l4opt-study-")
    notes = []
    log = log_file(run_dir, "search", w.name, r.name)
    try:
        with capture(log, progress) as tty:
            st = OnnxStudy(w, r, eval_samples or default_eval_samples(w), progress, work, batch=batch,
                           dims=dims, tty=tty)
            t = time.perf_counter()
            errs = local_errors(st)
            st.timings["local_errors"] = time.perf_counter() - t
            t = time.perf_counter()
            costs, _ = layer_costs(st)
            moves = _moves(st, errs, costs)
            st.timings["price_layers"] = time.perf_counter() - t
            rec = _Recorder(st, store, budget, r)
            t = time.perf_counter()
            strategies = {"bisect": _bisect(rec, moves, progress)}
            # the calibrated graph itself on the whole evaluation set: the sweep's row
            all_q = rec({}, "bisect/0-moves", full=True, k=0)
            st.timings["bisect"] = time.perf_counter() - t
    finally:
        if st is not None:
            st.close()
        shutil.rmtree(work, ignore_errors=True)
    rows = rec.rows
    full_rows = [x for x in rows if not x["screened"]]
    y = "metric_drop" if budget.max_drop is not None else "cos_drop"
    for x in rows:
        x["cos_drop"] = 1 - x["cos_mean"]
    mark_pareto(full_rows, y)
    for x in rows:
        x.setdefault("pareto", False)
        store.update(x["key"], pareto=x["pareto"])
    chosen, message, same = choose(
        full_rows, budget, w, store, len(rows),
        lambda c: (f"{100 * c['fraction_quantized']:.0f}% of GEMM/conv layers at 8 bits "
                   f"({c['int8_layers']} INT8, {c['fp8_layers']} FP8, {c['fp16_layers']} FP16)"))
    if chosen.get("latency_low_ms") is None:
        notes.append("the latency estimate carries no error band in this l4opt version; "
                     "candidates count as indistinguishable only at equal estimates")
    formats = chosen["_formats"]
    lf = {"^" + re.escape(x) + "$": f for x, f in formats.items()}
    counts = (f"{chosen['int8_layers']} INT8, {chosen['fp8_layers']} FP8, "
              f"{chosen['fp16_layers']} FP16")
    final = Recipe(f"{w.name}-{r.name}-search", "onnx-ptq", r.format, r.algorithm,
                   f"{r.name} per layer ({counts}; {budget.describe()})",
                   high_precision_dtype=r.high_precision_dtype,
                   nodes_to_exclude=r.nodes_to_exclude, layer_formats=lf)
    rdir = Path(run_dir) / "recipes"
    rdir.mkdir(parents=True, exist_ok=True)
    path = final.save(rdir / safe_filename(w.name, r.name, "search", suffix=".json"))
    layer_map = _layer_map(st, errs, chosen)
    store.close()
    t = time.perf_counter()
    swept = sweep(w, [str(path)], run_dir, progress=progress, cluster=cluster,
                  batch=batch, dims=dims)
    st.timings["final_sweep"] = time.perf_counter() - t
    final_row = swept.rows[0]
    if final_row.get("status") == "ok" and chosen.get("eval_samples") == final_row.get(
            "eval_samples", w.num_samples(w.eval_data)) and \
            abs(final_row["cos_mean"] - chosen["cos_mean"]) > 1e-6:
        notes.append(f"the sweep of the saved recipe measured cosine {final_row['cos_mean']:.6g}"
                     f", the search {chosen['cos_mean']:.6g}: the sweep did not reproduce the "
                     f"per-layer formats")
    ok, message = verdict(budget, chosen, final_row, bool(chosen["met"]), message)
    res = SearchResult(w.name, final, str(path), budget, ok, message, chosen, rows,
                       strategies, final_row, layer_map, same, notes,
                       st.evaluations + st.screenings, time.perf_counter() - t0, bool(chosen["met"]),
                       str(log))
    res.strategies["all_quantized"] = {k: all_q.get(k) for k in (
        "name", "status", "metric", "metric_drop", "cos_mean", "cos_min", "sqnr_db",
        "latency_ms", "latency_low_ms", "latency_high_ms", "eval_samples", "quantized_layers",
        "gemm_layers")}
    res.strategies["timings_s"] = {k: round(v, 2) for k, v in st.timings.items()}
    compare_with_run(res, run_dir)
    save_search(run_dir, res)
    return res
