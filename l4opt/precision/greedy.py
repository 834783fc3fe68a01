"""The torch-PTQ search: greedy FP16 fallback over the sensitivity ranking, and ModelOpt's
auto_quantize restricted to the L4's formats."""
from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import numpy as np

from l4opt.files import content_key
from l4opt.precision.budget import Budget
from l4opt.precision.candidates import candidate_row, latency
from l4opt.precision.common import default_eval_samples, log_file
from l4opt.precision.result import (
    SearchResult,
    choose,
    compare_with_run,
    mark_pareto,
    save_search,
    verdict,
)
from l4opt.precision.sensitivity import layer_sensitivity
from l4opt.precision.torch_study import Calibrated
from l4opt.results.store import Store
from l4opt.spec.names import safe_filename
from l4opt.spec.recipes import Recipe
from l4opt.spec.workloads import Workload


class _Evaluator:
    """Evaluates, prices and records torch candidates (one trial row each)."""

    def __init__(self, cal: Calibrated, store: Store, budget: Budget, fp: str):
        self.cal, self.store, self.budget, self.fp = cal, store, budget, fp
        self.rows: list[dict] = []
        self._seen: dict[frozenset, dict] = {}
        self.shapes = cal.shapes  # the deployment batch and dims the search was asked for

    def __call__(self, enabled, strategy: str, name: str) -> dict:
        key = frozenset(enabled)
        if key in self._seen:
            return self._seen[key]
        m = self.cal.evaluate(enabled)
        fallback = [x for x in self.cal.layers if x not in key]
        total = len(self.cal.matmul_layers)
        q = sum(g in key for g in self.cal.matmul_layers)
        row = candidate_row(
            key=content_key("search", self.fp, self.cal.recipe.identity(), sorted(fallback)),
            workload=self.cal.w.name, name=name, strategy=strategy, recipe=self.cal.recipe,
            recipe_config=dict(self.cal.recipe.to_dict(), disabled_layers=fallback),
            drift_backend=self.cal.drift_backend, metrics=m, budget=self.budget,
            counts={self.cal.recipe.format: q, "fp16": total - q}, gemm_layers=total,
            fallback=fallback, metric_name=self.cal.w.metric.name,
            eval_samples=self.cal.w.num_samples(self.cal.eval))
        row.update(self._latency(key, row["key"]))
        self.store.put(row)
        self.rows.append(row)
        self._seen[key] = row
        return row

    def _latency(self, enabled, key) -> dict:
        """The candidate's estimated L4 latency and its GEMM/conv counts, both from its ONNX
        export at the opset the sweep's torch-PTQ stage uses, counted as that stage counts
        them (so the all-quantized candidate states the sweep row's layer counts)."""
        from l4opt.latency.estimate import estimate_onnx
        from l4opt.onnx.graph import gemm_nodes, quantized_gemm_nodes
        from l4opt.pipeline.export import FP8_OPSET, OPSET, export_torch

        self.cal.configure(enabled)
        path = self.store.artifact_dir(key) / "model.onnx"
        fmt = self.cal.recipe.format
        try:
            export_torch(self.cal.model, self.cal.w, path, batch=self.shapes.batch,
                         opset=FP8_OPSET if fmt == "fp8" else OPSET)
            gemms, q = len(gemm_nodes(path)), len(quantized_gemm_nodes(path))
            e = estimate_onnx(str(path), "L4", batch=self.shapes.batch,
                              dynamic_dims=self.shapes.axes)
        except Exception as exc:  # price unknown: keep the candidate, say why
            return {"latency_note": f"no estimate: {type(exc).__name__}: {exc}"}
        finally:
            path.unlink(missing_ok=True)
        counts = {"gemm_layers": gemms, "quantized_layers": q, "int8_layers": 0,
                  "fp8_layers": 0, "fp16_layers": gemms - q,
                  "fraction_quantized": q / max(1, gemms)}
        counts[f"{fmt}_layers"] = q
        return dict(latency(e, self.shapes), **counts)


def _greedy(ev: _Evaluator, ranking: list[str], progress: bool) -> dict:
    from l4opt.env import progress as tqdm

    cal = ev.cal
    enabled = list(cal.layers)
    best = ev(enabled, "greedy", "greedy/all")
    bar = tqdm(ranking, desc="greedy fallback", unit="layer", disable=not progress, file=cal.tty)
    fallen = []
    for layer in bar:
        if best["met"]:
            break
        fallen.append(layer)
        enabled = [x for x in cal.layers if x not in fallen]
        best = ev(enabled, "greedy", f"greedy/fallback-{len(fallen)}")
    if best["met"]:  # try re-quantizing fallen layers that turn out harmless
        for layer in reversed(fallen[:-1]):
            trial = [x for x in cal.layers if x not in fallen or x == layer]
            row = ev(trial, "greedy", f"greedy/requant-{layer}")
            if row["met"]:
                fallen.remove(layer)
                best = row
    return {"status": "ok", "best": best["name"], "met": best["met"], "fallback": best["fallback"]}


def _auto_quantize(ev: _Evaluator, bits=(8.0, 9.0, 10.0, 12.0)) -> dict:
    """ModelOpt's auto_quantize over the recipe's L4 format (never NVFP4): which layers it
    keeps quantized at each effective-bits target, evaluated with the shared calibration."""
    import modelopt.torch.quantization as mtq
    import torch

    cal = ev.cal
    w = cal.w
    preset = cal.recipe.torch_preset()
    batches = [[torch.from_numpy(np.ascontiguousarray(x)) for x in b]
               for b in w.batches(w.calib_data)]
    with torch.no_grad():
        ref = [w.module()(*b) for b in batches]
    data = [b + [r] for b, r in zip(batches, ref)]
    found = []
    for eb in bits:
        model = copy.deepcopy(w.module())
        try:
            from l4opt.pipeline.quantize import _quiet, keep_slow_path, no_fastpath

            keep_slow_path(model)
            with _quiet(), no_fastpath():
                model, state = mtq.auto_quantize(
                    model, constraints={"effective_bits": eb}, quantization_formats=[preset],
                    data_loader=data, forward_step=lambda m, b: m(*b[:-1]),
                    loss_func=lambda out, b: torch.nn.functional.mse_loss(out.float(), b[-1].float()),
                    num_calib_steps=len(data), num_score_steps=min(len(data), 8))
        except Exception as exc:
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "tried": found}
        from l4opt.pipeline.quantize import quantizers

        kept = {n.rsplit(".", 1)[0] for n in quantizers(model)}
        enabled = [x for x in cal.layers if x in kept]
        row = ev(enabled, "auto_quantize", f"auto_quantize/{eb:g}bits")
        found.append({"effective_bits": eb, "name": row["name"], "met": row["met"],
                      "fraction_quantized": row["fraction_quantized"]})
    return {"status": "ok", "formats": [preset], "tried": found}



def onnx_exclusions(onnx_path, modules: list[str]) -> list[str]:
    """Regexes over ONNX node names for the nodes torch.onnx.export made from these modules."""
    import onnx

    names = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    out = []
    for mod in modules:
        flexible = "/" + "[./]".join(re.escape(p) for p in mod.split(".")) + "/"
        hits = {n[:m.end()] for n in names if (m := re.search(flexible, n))}
        for prefix in sorted(hits):
            out.append("^" + re.escape(prefix) + ".*")
    return out


def search_torch(w: Workload, r: Recipe, budget: Budget, run_dir, strategy, eval_samples, progress,
            cluster, batch=None, dims=None) -> SearchResult:
    """Torch-PTQ study: greedy FP16 fallback over the sensitivity ranking, and auto_quantize."""
    from l4opt.pipeline.capture import capture
    from l4opt.run.sweep import sweep

    t0 = time.perf_counter()
    store = Store(run_dir)
    log = log_file(run_dir, "search", w.name, r.name)
    strategies = {}
    notes = []
    if r.route != "torch-ptq":
        notes.append(f"{r.name} runs on the ONNX-PTQ path; strategy {strategy!r} studies its "
                     f"torch-PTQ form ({r.format}, {r.algorithm}), which the sweep does not "
                     f"measure: use strategy 'bisect' to study the Q/DQ graph itself")
    with capture(log, progress) as tty:
        cal = Calibrated(w, r, eval_samples or default_eval_samples(w), progress, tty, batch=batch,
                         dims=dims)
        ev = _Evaluator(cal, store, budget, w.fingerprint())
        if strategy in ("both", "greedy"):
            _, sens = layer_sensitivity(cal, progress, cluster)
            strategies["greedy"] = _greedy(ev, [s["layer"] for s in sens], progress)
        if strategy in ("both", "auto_quantize"):
            strategies["auto_quantize"] = _auto_quantize(ev)
        base_onnx = _base_export(w, store) if any(x["fallback"] for x in ev.rows) else None
    rows = ev.rows
    mark_pareto(rows)
    for row in rows:
        store.update(row["key"], pareto=row["pareto"])
    chosen, message, same = choose(
        rows, budget, w, store, len(rows),
        lambda c: f"{100 * c['fraction_quantized']:.0f}% of matmul/conv layers quantized "
                  f"({c['name']})")
    base = cal.recipe
    fallback = chosen["fallback"]
    exclusions = onnx_exclusions(base_onnx, fallback) if fallback else []
    final = Recipe(f"{w.name}-{r.name}-search", "torch-ptq", base.format, base.algorithm,
                   f"{r.name} with {len(fallback)} layers kept in {base.high_precision_dtype} "
                   f"({budget.describe()})", percentile=base.percentile,
                   smoothquant_alpha=base.smoothquant_alpha,
                   high_precision_dtype=base.high_precision_dtype,
                   disabled_layers=tuple(fallback), nodes_to_exclude=tuple(exclusions))
    rdir = Path(run_dir) / "recipes"
    rdir.mkdir(parents=True, exist_ok=True)
    path = final.save(rdir / safe_filename(w.name, r.name, "search", suffix=".json"))
    store.close()
    swept = sweep(w, [str(path)], run_dir, progress=progress, cluster=cluster,
                  batch=batch, dims=dims)
    layer_map = [{"layer": x, "op_type": "", "kind": cal.kind(x),
                  "format": "fp16" if x in fallback else base.format, "quantizable": True,
                  "order": i} for i, x in enumerate(cal.layers)]
    ok, message = verdict(budget, chosen, swept.rows[0], bool(chosen["met"]), message)
    res = SearchResult(w.name, final, str(path), budget, ok, message, chosen, rows,
                       strategies, swept.rows[0], layer_map, same, notes, cal.evaluations,
                       time.perf_counter() - t0, bool(chosen["met"]), str(log))
    compare_with_run(res, run_dir)
    save_search(run_dir, res)
    return res


def _base_export(w: Workload, store: Store) -> Path:
    """The FP32 export whose node names the ONNX-PTQ path sees."""
    from l4opt.pipeline.export import export_torch

    path = store.artifact_dir(content_key("names", w.fingerprint())) / "model.fp32.onnx"
    if not path.exists():
        export_torch(w.module(), w, path)
    return path
