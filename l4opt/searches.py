"""Which layers hurt (per-layer sensitivity), and the fastest mixed precision within an
accuracy budget (greedy fallback, and ModelOpt's auto_quantize restricted to L4 formats).

Both calibrate once and then toggle quantizer groups: ModelOpt collects calibration statistics
with quantization off, so each quantizer's scale does not depend on which other layers are
quantized, and a sweep that recalibrates the saved recipe reproduces the same scales.
"""
from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .drift import task_delta, tensor_metrics
from .errors import BadInput
from .recipes import Recipe, get
from .store import Store, content_key
from .workloads import Workload, load

MATMUL_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d")


@dataclass(frozen=True)
class Budget:
    """Largest allowed drop of the task metric (absolute, or relative to the unquantized
    value), or smallest allowed mean cosine to the unquantized outputs."""

    max_drop: float | None = None
    relative: bool = False
    min_cosine: float | None = None

    def __post_init__(self):
        if (self.max_drop is None) == (self.min_cosine is None):
            raise BadInput("give exactly one budget: max_drop (task metric) or min_cosine")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise BadInput(f"min_cosine {self.min_cosine} is not a cosine in [-1, 1]")
        if self.relative and self.max_drop is None:
            raise BadInput("relative applies to max_drop only")

    def met(self, m: dict) -> bool:
        if self.min_cosine is not None:
            return m["cos_mean"] >= self.min_cosine
        drop = m["metric_drop_rel"] if self.relative else m["metric_drop"]
        return drop <= self.max_drop + 1e-12

    def describe(self) -> str:
        if self.min_cosine is not None:
            return f"mean cosine >= {self.min_cosine}"
        return f"metric drop <= {self.max_drop}{' (relative)' if self.relative else ''}"


def torch_form(recipe: Recipe) -> Recipe:
    """The torch-PTQ recipe with the same format and algorithm (quantizers are per module)."""
    if recipe.path == "torch-ptq":
        return recipe
    if recipe.path == "none":
        raise BadInput(f"recipe {recipe.name!r} quantizes nothing; choose a quantizing recipe")
    return Recipe(f"{recipe.name}-torch", "torch-ptq", recipe.format, recipe.algorithm,
                  f"torch-PTQ form of {recipe.name}", high_precision_dtype=recipe.high_precision_dtype)


class Calibrated:
    """A copy of the workload's model calibrated once; candidates toggle quantizer groups."""

    def __init__(self, workload: Workload, recipe: Recipe, eval_samples: int | None,
                 progress: bool):
        import torch
        from tqdm.auto import tqdm

        from .quantize import quantize_torch, quantizers
        from .runners import TorchRunner, run_all

        self.w, self.recipe, self.progress = workload, torch_form(recipe), progress
        n = workload.num_samples(workload.eval_data)
        k = min(n, eval_samples or n)
        self.eval = {name: a[:k] for name, a in workload.eval_data.items()}
        self.labels = None if workload.eval_labels is None else np.asarray(workload.eval_labels)[:k]
        self.reference = run_all(TorchRunner(workload.module()), workload.batches(self.eval),
                                 desc="reference (fp32)", progress=progress)
        self.ref_metric = workload.metric(self.reference, self.reference, self.labels)
        self.model = copy.deepcopy(workload.module())

        def forward_loop(m):
            with torch.no_grad():
                for b in tqdm(list(workload.batches(workload.calib_data)), desc="calibrate once",
                              leave=False, disable=not progress):
                    m(*[torch.from_numpy(np.ascontiguousarray(x)) for x in b])

        t = time.perf_counter()
        quantize_torch(self.model, self.recipe, forward_loop)
        self.calib_s = time.perf_counter() - t
        self.groups: dict[str, list] = {}
        for name, q in quantizers(self.model).items():
            self.groups.setdefault(name.rsplit(".", 1)[0], []).append(q)
        modules = dict(self.model.named_modules())
        self.matmul_layers = [g for g in self.groups
                              if type(modules.get(g)).__name__.replace("Quant", "") in MATMUL_TYPES]

    @property
    def layers(self) -> list[str]:
        return list(self.groups)

    def configure(self, enabled) -> None:
        enabled = set(enabled)
        for layer, qs in self.groups.items():
            for q in qs:
                q.enable() if layer in enabled else q.disable()

    def evaluate(self, enabled) -> dict:
        from .runners import TorchRunner, run_all

        self.configure(enabled)
        out = run_all(TorchRunner(self.model, "torch-fakequant"), self.w.batches(self.eval),
                      progress=False)
        metric = self.w.metric(out, self.reference, self.labels)
        m = tensor_metrics(out, self.reference)
        m.update(metric=metric, metric_ref=self.ref_metric,
                 **task_delta(metric, self.ref_metric, self.w.metric.higher_is_better))
        return m

    def fraction_quantized(self, enabled) -> float:
        e = set(enabled)
        return sum(g in e for g in self.matmul_layers) / max(1, len(self.matmul_layers))


# ------------------------------------------------------------------ sensitivity

@dataclass
class SensitivityResult:
    workload: str
    recipe: str
    recipe_used: dict
    metric_name: str
    metric_ref: float
    all_quantized: dict
    layers: list[dict]
    eval_samples: int
    seconds: float
    notes: list = field(default_factory=list)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.layers)

    def to_dict(self) -> dict:
        return asdict(self)


def _harm(m: dict) -> float:
    return max(0.0, 1.0 - m["cos_mean"])


def _evaluate_layers(cal: Calibrated, progress: bool, cluster=None):
    """(layer, only-this-layer, all-but-this-layer) in layer order, here or on Ray."""
    from tqdm.auto import tqdm

    if cluster:
        from .cluster import evaluate_layers

        got = evaluate_layers(cal, cal.layers, cluster, progress)
        return [(layer, *got[layer]) for layer in cal.layers]
    return [(layer, cal.evaluate([layer]), cal.evaluate([x for x in cal.layers if x != layer]))
            for layer in tqdm(cal.layers, desc="sensitivity", unit="layer", disable=not progress)]


def _sensitivity(cal: Calibrated, progress: bool, cluster=None) -> tuple[dict, list[dict]]:
    full = cal.evaluate(cal.layers)
    rows = []
    for layer, only, but in _evaluate_layers(cal, progress, cluster):
        rows.append({
            "layer": layer, "only_metric": only["metric"], "only_drop": only["metric_drop"],
            "only_cos_mean": only["cos_mean"], "only_cos_min": only["cos_min"],
            "only_sqnr_db": only["sqnr_db"], "only_max_abs_err": only["max_abs_err"],
            "all_but_metric": but["metric"], "all_but_drop": but["metric_drop"],
            "all_but_cos_mean": but["cos_mean"], "all_but_sqnr_db": but["sqnr_db"],
            "recovery": full["metric_drop"] - but["metric_drop"],
            "cos_recovery": but["cos_mean"] - full["cos_mean"],
        })
    task_total = sum(max(0.0, r["only_drop"]) for r in rows)
    harm_total = sum(max(0.0, 1 - r["only_cos_mean"]) for r in rows)
    for r in rows:
        r["share_task"] = max(0.0, r["only_drop"]) / task_total if task_total > 0 else 0.0
        r["share_cosine"] = max(0.0, 1 - r["only_cos_mean"]) / harm_total if harm_total > 0 else 0.0
        r["share"] = r["share_task"] if task_total > 0 else r["share_cosine"]
    rows.sort(key=lambda r: (-r["recovery"], -r["cos_recovery"], -r["share"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return full, rows


def sensitivity(workload, recipe, run_dir=None, *, eval_samples=None, progress: bool = True,
                cluster=None) -> SensitivityResult:
    """Per layer: drift with only that layer quantized, and with all but that layer.
    `cluster` spreads the per-layer evaluations over Ray workers (see l4opt.cluster)."""
    w = load(workload) if isinstance(workload, str) else workload
    w.validate()
    r = get(recipe)
    t = time.perf_counter()
    cal = Calibrated(w, r, eval_samples or _default_eval(w), progress)
    full, rows = _sensitivity(cal, progress, cluster)
    res = SensitivityResult(w.name, r.name, cal.recipe.to_dict(), w.metric.name, cal.ref_metric,
                            full, rows, w.num_samples(cal.eval), time.perf_counter() - t)
    if r.path != "torch-ptq":
        res.notes.append(f"{r.name} runs on the ONNX-PTQ path; per-layer toggles use its torch-PTQ "
                         f"form ({r.format}, {r.algorithm})")
    if run_dir:
        d = Path(run_dir) / "sensitivity"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{w.name}-{r.name}.json").write_text(json.dumps(res.to_dict(), default=float, indent=1))
    return res


def _default_eval(w: Workload) -> int:
    return 128 if w.name == "minilm" else w.num_samples(w.eval_data)


# ------------------------------------------------------------------ search

@dataclass
class SearchResult:
    workload: str
    recipe: Recipe
    recipe_path: str
    budget: Budget
    met: bool
    message: str
    chosen: dict
    candidates: list[dict]
    strategies: dict
    final_row: dict | None = None

    def table(self):
        import pandas as pd

        cols = ["name", "strategy", "met", "pareto", "metric", "metric_drop", "cos_mean",
                "sqnr_db", "fraction_quantized", "fallback", "latency_ms", "latency_opt_ms",
                "latency_source"]
        df = pd.DataFrame(self.candidates)
        return df[[c for c in cols if c in df.columns]]

    def to_dict(self) -> dict:
        c = self.chosen
        return {
            "workload": self.workload, "budget": asdict(self.budget),
            "budget_text": self.budget.describe(), "met": self.met, "message": self.message,
            "recipe_path": self.recipe_path, "recipe": self.recipe.to_dict(),
            "metric_name": c.get("metric_name"), "metric": c.get("metric"),
            "metric_ref": c.get("metric_ref"), "metric_drop": c.get("metric_drop"),
            "cos_mean": c.get("cos_mean"), "cos_min": c.get("cos_min"),
            "sqnr_db": c.get("sqnr_db"), "fraction_quantized": c.get("fraction_quantized"),
            "fallback_layers": c.get("fallback"), "latency_ms": c.get("latency_ms"),
            "latency_opt_ms": c.get("latency_opt_ms"), "latency_batch": c.get("latency_batch"),
            "latency_source": c.get("latency_source"), "strategies": self.strategies,
            "final_sweep_row": {k: v for k, v in (self.final_row or {}).items()
                                if k in ("recipe", "metric", "metric_drop", "cos_mean",
                                         "sqnr_db", "drift_backend", "latency_ms",
                                         "latency_source", "onnx_path", "status", "error",
                                         "executor", "worker")},
            "candidates": len(self.candidates),
        }


class _Evaluator:
    """Evaluates, prices and records candidates (one trial row each)."""

    def __init__(self, cal: Calibrated, store: Store, budget: Budget, fp: str):
        self.cal, self.store, self.budget, self.fp = cal, store, budget, fp
        self.rows: list[dict] = []
        self._seen: dict[frozenset, dict] = {}
        self.opt_batch = cal.w.batch_range[1]

    def __call__(self, enabled, strategy: str, name: str) -> dict:
        key = frozenset(enabled)
        if key in self._seen:
            return self._seen[key]
        m = self.cal.evaluate(enabled)
        fallback = [x for x in self.cal.layers if x not in key]
        row = {
            "key": content_key("search", self.fp, self.cal.recipe.identity(), sorted(fallback)),
            "kind": "trial", "workload": self.cal.w.name, "recipe": name, "name": name,
            "strategy": strategy, "path": "torch-ptq", "format": self.cal.recipe.format,
            "algorithm": self.cal.recipe.algorithm, "status": "ok",
            "recipe_config": dict(self.cal.recipe.to_dict(), disabled_layers=fallback),
            "metric_name": self.cal.w.metric.name, "drift_backend": "torch-fakequant-cpu",
            "eval_samples": self.cal.w.num_samples(self.cal.eval), "fallback": fallback,
            "fraction_quantized": self.cal.fraction_quantized(key),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **m,
        }
        row["met"] = self.budget.met(m)
        row.update(self._latency(key, row["key"]))
        self.store.put(row)
        self.rows.append(row)
        self._seen[key] = row
        return row

    def _latency(self, enabled, key) -> dict:
        from .estimate import estimate_onnx
        from .export import export_torch

        self.cal.configure(enabled)
        path = self.store.artifact_dir(key) / "model.onnx"
        try:
            export_torch(self.cal.model, self.cal.w, path)
            dims = {d for i in self.cal.w.inputs for d in i.shape if isinstance(d, str)}
            e1 = estimate_onnx(str(path), "L4", batch=1, dynamic_dims={d: 1 for d in dims})
            eb = estimate_onnx(str(path), "L4", batch=self.opt_batch,
                               dynamic_dims={d: self.opt_batch for d in dims})
        except Exception as exc:  # price unknown: keep the candidate, say why
            return {"latency_note": f"no estimate: {type(exc).__name__}: {exc}"}
        finally:
            path.unlink(missing_ok=True)
        return {"latency_ms": e1.total_ms, "latency_opt_ms": eb.total_ms,
                "latency_batch": self.opt_batch, "latency_source": e1.source,
                "throughput_samples_s": eb.throughput_samples_s}


def _greedy(ev: _Evaluator, ranking: list[str], progress: bool) -> dict:
    from tqdm.auto import tqdm

    cal = ev.cal
    enabled = list(cal.layers)
    best = ev(enabled, "greedy", "greedy/all")
    bar = tqdm(ranking, desc="greedy fallback", unit="layer", disable=not progress)
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
    import torch

    import modelopt.torch.quantization as mtq

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
            from .quantize import _quiet

            with _quiet():
                model, state = mtq.auto_quantize(
                    model, constraints={"effective_bits": eb}, quantization_formats=[preset],
                    data_loader=data, forward_step=lambda m, b: m(*b[:-1]),
                    loss_func=lambda out, b: torch.nn.functional.mse_loss(out.float(), b[-1].float()),
                    num_calib_steps=len(data), num_score_steps=min(len(data), 8))
        except Exception as exc:
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "tried": found}
        from .quantize import quantizers

        kept = {n.rsplit(".", 1)[0] for n in quantizers(model)}
        enabled = [x for x in cal.layers if x in kept]
        row = ev(enabled, "auto_quantize", f"auto_quantize/{eb:g}bits")
        found.append({"effective_bits": eb, "name": row["name"], "met": row["met"],
                      "fraction_quantized": row["fraction_quantized"]})
    return {"status": "ok", "formats": [preset], "tried": found}


def _pareto(rows: list[dict]) -> None:
    pts = [(r["metric_drop"], r.get("latency_opt_ms", float("inf"))) for r in rows]
    for r, (d, l) in zip(rows, pts):
        r["pareto"] = not any((d2 <= d and l2 <= l) and (d2 < d or l2 < l) for d2, l2 in pts)


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


def search(workload, recipe, budget: Budget, run_dir, *, strategy: str = "both",
           eval_samples=None, progress: bool = True, cluster=None) -> SearchResult:
    """The lowest-latency mixed precision that meets the budget, as a reusable recipe.
    `cluster` runs the per-layer sensitivity and the final trial on Ray."""
    if strategy not in ("both", "greedy", "auto_quantize"):
        raise BadInput(f"strategy {strategy!r}: choose both, greedy or auto_quantize")
    if not isinstance(budget, Budget):
        raise BadInput("budget must be an l4opt.searches.Budget")
    w = load(workload) if isinstance(workload, str) else workload
    w.validate()
    r = get(recipe)
    if not cluster:
        return _search(w, r, budget, run_dir, strategy, eval_samples, progress, None)
    from .cluster import connect, disconnect

    conn = connect(cluster)  # one Ray session for the sensitivity and the final trial
    try:
        return _search(w, r, budget, run_dir, strategy, eval_samples, progress, cluster)
    finally:
        disconnect(conn)


def _search(w: Workload, r: Recipe, budget: Budget, run_dir, strategy, eval_samples, progress,
            cluster) -> SearchResult:
    from .sweeps import sweep

    store = Store(run_dir)
    cal = Calibrated(w, r, eval_samples or _default_eval(w), progress)
    ev = _Evaluator(cal, store, budget, w.fingerprint())
    strategies = {}
    if strategy in ("both", "greedy"):
        _, sens = _sensitivity(cal, progress, cluster)
        strategies["greedy"] = _greedy(ev, [s["layer"] for s in sens], progress)
    if strategy in ("both", "auto_quantize"):
        strategies["auto_quantize"] = _auto_quantize(ev)
    rows = ev.rows
    _pareto(rows)
    for row in rows:
        store.update(row["key"], pareto=row["pareto"])
    met = [x for x in rows if x["met"]]
    if met:
        chosen = min(met, key=lambda x: (x.get("latency_opt_ms", float("inf")), x["metric_drop"]))
        message = (f"met {budget.describe()} with {100 * chosen['fraction_quantized']:.0f}% of "
                   f"matmul/conv layers quantized ({chosen['name']})")
    else:
        chosen = min(rows, key=lambda x: (x["metric_drop"], -x["cos_mean"]))
        message = (f"no configuration met {budget.describe()}; best found: {chosen['name']} "
                   f"(drop {chosen['metric_drop']:.4g}, cosine {chosen['cos_mean']:.4g}); all "
                   f"{len(rows)} evaluated candidates are in {store.db_path}")
    chosen["metric_name"] = w.metric.name
    base = cal.recipe
    fallback = chosen["fallback"]
    exclusions = onnx_exclusions(_base_export(w, store), fallback) if fallback else []
    final = Recipe(f"{w.name}-{r.name}-search", "torch-ptq", base.format, base.algorithm,
                   f"{r.name} with {len(fallback)} layers kept in {base.high_precision_dtype} "
                   f"({budget.describe()})", percentile=base.percentile,
                   smoothquant_alpha=base.smoothquant_alpha,
                   high_precision_dtype=base.high_precision_dtype,
                   disabled_layers=tuple(fallback), nodes_to_exclude=tuple(exclusions))
    rdir = Path(run_dir) / "recipes"
    rdir.mkdir(parents=True, exist_ok=True)
    path = final.save(rdir / f"{final.name}.json")
    store.close()
    swept = sweep(w, [str(path)], run_dir, progress=progress, cluster=cluster)
    return SearchResult(w.name, final, str(path), budget, bool(met), message, chosen, rows,
                        strategies, swept.rows[0])


def _base_export(w: Workload, store: Store) -> Path:
    """The FP32 export whose node names the ONNX-PTQ path sees."""
    from .export import export_torch

    path = store.artifact_dir(content_key("names", w.fingerprint())) / "model.fp32.onnx"
    if not path.exists():
        export_torch(w.module(), w, path)
    return path
