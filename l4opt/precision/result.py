"""A search's answer: the result type, the verdict from the sweep of the saved recipe, the choice
within budget and the Pareto flags."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from l4opt.precision.budget import Budget
from l4opt.results.store import Store
from l4opt.results.store import _json_default as json_default
from l4opt.spec import row as rowspec
from l4opt.spec.names import safe_filename
from l4opt.spec.recipes import Recipe
from l4opt.spec.workloads import Workload


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
    layer_map: list[dict] = field(default_factory=list)
    indistinguishable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    candidate_met: bool | None = None  # the search's own best candidate met the budget
    log_path: str = ""  # ModelOpt's / ONNX Runtime's output while searching
    # the fastest row of the run meeting the budget (the search's own or a plain recipe's)
    best_in_run: dict | None = None
    faster_plain: list[dict] = field(default_factory=list)

    def table(self):
        import pandas as pd

        cols = ["name", "strategy", "met", "pareto", "eval_samples", "metric", "metric_drop",
                "cos_mean", "sqnr_db", "fraction_quantized", "int8_layers", "fp8_layers",
                "fp16_layers", "latency_ms", "latency_low_ms", "latency_high_ms",
                "latency_batch", "latency_source"]
        df = pd.DataFrame(self.candidates)
        return df[[c for c in cols if c in df.columns]]

    def layers(self):
        """The chosen configuration per layer, in graph order (plots.precision_map's input)."""
        import pandas as pd

        return pd.DataFrame(self.layer_map)

    def to_dict(self) -> dict:
        c = self.chosen
        keep = ("recipe", "metric", "metric_drop", "cos_mean", "sqnr_db", "drift_backend",
                "latency_ms", "latency_low_ms", "latency_high_ms", "latency_batch",
                "latency_source", "onnx_path", "status", "error", "executor", "worker",
                "quantized_layers", "gemm_layers")
        return {
            "workload": self.workload, "budget": asdict(self.budget),
            "budget_text": self.budget.describe(), "met": self.met, "message": self.message,
            "recipe_path": self.recipe_path, "recipe": self.recipe.to_dict(),
            "metric_name": c.get("metric_name"), "metric": c.get("metric"),
            "metric_ref": c.get("metric_ref"), "metric_drop": c.get("metric_drop"),
            "cos_mean": c.get("cos_mean"), "cos_min": c.get("cos_min"),
            "sqnr_db": c.get("sqnr_db"), "fraction_quantized": c.get("fraction_quantized"),
            "gemm_layers": c.get("gemm_layers"), "quantized_layers": c.get("quantized_layers"),
            "int8_layers": c.get("int8_layers"), "fp8_layers": c.get("fp8_layers"),
            "fp16_layers": c.get("fp16_layers"), "layer_formats": c.get("layer_formats"),
            "fallback_layers": c.get("fallback"), "latency_ms": c.get("latency_ms"),
            "latency_low_ms": c.get("latency_low_ms"), "latency_high_ms": c.get("latency_high_ms"),
            "latency_batch": c.get("latency_batch"), "shapes": c.get("shapes"),
            "latency_source": c.get("latency_source"), "drift_backend": c.get("drift_backend"),
            "eval_samples": c.get("eval_samples"), "chosen": c.get("name"),
            "indistinguishable": self.indistinguishable, "strategies": self.strategies,
            "final_sweep_row": {k: v for k, v in (self.final_row or {}).items() if k in keep},
            "candidates": len(self.candidates), "evaluations": self.evaluations,
            "seconds": self.seconds, "notes": self.notes, "candidate_met": self.candidate_met,
            "final_status": (self.final_row or {}).get("status"), "log_path": self.log_path,
            "best_in_run": self.best_in_run, "faster_plain": self.faster_plain,
        }


def indistinguishable(a: dict, b: dict) -> bool:
    """Two candidates whose estimated latency bands overlap, by l4opt.estimate's rule (the one
    definition); a candidate without a latency estimate is never indistinguishable."""
    from l4opt.latency.estimate import indistinguishable as overlap

    if not (rowspec.valid_latency(a.get("latency_ms")) and rowspec.valid_latency(b.get("latency_ms"))):
        return False
    return bool(overlap(a, b))


def verdict(budget: Budget, chosen: dict, final_row: dict | None, candidate_met: bool,
             message: str) -> tuple[bool, str]:
    """The search's answer is what the sweep of the saved recipe measured: met only when that
    trial finished ok and meets the budget; otherwise the message says what happened."""
    row = final_row or {}
    status = rowspec.status(row) if row else "missing"
    cand = (f"the search's candidate {chosen.get('name')} "
            f"{'met' if candidate_met else 'did not meet'} it (cosine "
            f"{num(chosen.get('cos_mean'))}, drop {num(chosen.get('metric_drop'))})")
    if candidate_met and chosen.get("fraction_quantized") == 0:
        cand += (" only with every GEMM/conv layer in high precision: nothing is left to "
                 "quantize, so ship the unquantized model (recipe 'baseline') or relax the budget")
    if status != "ok":
        err = row.get("error") or row.get("collapse_note") or "no error recorded"
        return False, (f"NOT MET: the sweep of the saved recipe {row.get('recipe', '?')} "
                       f"{'failed' if status == 'failed' else 'ended ' + repr(status)} ({err}), so "
                       f"{budget.describe()} is not shown to hold; {cand}")
    if not budget.met(row):
        return False, (f"NOT MET: the sweep of the saved recipe {row.get('recipe', '?')} measured "
                       f"cosine {num(row.get('cos_mean'))}, drop {num(row.get('metric_drop'))}"
                       f", which does not meet {budget.describe()}; {cand}")
    both = (f"the sweep of the saved recipe measured cosine {num(row.get('cos_mean'))} and "
            f"{row.get('metric_name') or 'task metric'} drop {num(row.get('metric_drop'))}")
    if not candidate_met:  # the sweep met it though no candidate did (e.g. more samples)
        return True, f"met {budget.describe()}: {both}; {message}"
    return True, f"{message}; {both}"


def num(v) -> str:
    try:
        return f"{float(v):.6g}"
    except (TypeError, ValueError):
        return "n/a"


def choose(rows: list[dict], budget: Budget, w: Workload, store: Store, evaluated: int,
            describe) -> tuple[dict, str, list[str]]:
    """The lowest-latency candidate within budget (else the least drift), the message saying
    so, and the candidates whose latency bands it can't be told apart from."""
    met = [x for x in rows if x["met"]]
    if met:
        chosen = min(met, key=lambda x: (x.get("latency_ms") or math.inf, x["metric_drop"],
                                         -x["cos_mean"]))
        message = f"met {budget.describe()} with {describe(chosen)}"
    else:
        chosen = min(rows, key=lambda x: (x["metric_drop"], -x["cos_mean"]))
        message = (f"no configuration met {budget.describe()}; best found: {chosen['name']} "
                   f"(drop {chosen['metric_drop']:.4g}, cosine {chosen['cos_mean']:.4g}); all "
                   f"{evaluated} evaluated candidates are in {store.db_path}")
    chosen["metric_name"] = w.metric.name
    same = [x["name"] for x in rows if x is not chosen and indistinguishable(x, chosen)]
    return chosen, message, same


def mark_pareto(rows: list[dict], y: str = "metric_drop") -> None:
    mask = rowspec.pareto_mask([r.get(y, math.inf) for r in rows],
                               [r.get("latency_ms") if rowspec.valid_latency(r.get("latency_ms"))
                                else math.inf for r in rows])
    for r, m in zip(rows, mask):
        r["pareto"] = bool(m)


def save_search(run_dir, res: SearchResult) -> Path:
    """The search's candidates and chosen per-layer map, where the report finds them."""
    d = Path(run_dir) / "search"
    d.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in c.items() if not k.startswith("_")} for c in res.candidates]
    doc = dict(res.to_dict(), candidate_rows=clean, layer_map=res.layer_map)
    path = d / safe_filename(res.workload, res.recipe.name, suffix=".json")
    path.write_text(json.dumps(doc, default=json_default, indent=1))
    return path


def compare_with_run(res: SearchResult, run_dir) -> None:
    """Hold the search's answer against every finished sweep row already in the run directory
    for the same workload and shapes (other recipes, other calibrations): the fastest that
    meets the budget is the run's best, and a plain recipe that meets it faster is named in
    the message (a search is worth its cost only when it beats them)."""
    final = res.final_row or {}
    shapes = final.get("shapes")
    store = Store(run_dir)
    try:
        rows = store.rows(res.workload)
    finally:
        store.close()
    plain = [r for r in rows if r.get("kind") == "trial" and not r.get("strategy")
             and r.get("key") != final.get("key") and rowspec.status(r) == "ok"
             and (shapes is None or r.get("shapes") == shapes) and rowspec.has_latency(r)
             and res.budget.met(r)]
    ours = final if rowspec.status(final) == "ok" and res.met and rowspec.has_latency(final) \
        else None
    pool = plain + ([ours] if ours else [])
    keep = ("recipe", "status", "latency_ms", "latency_low_ms", "latency_high_ms",
            "latency_batch", "cos_mean", "metric", "metric_drop", "key")
    if pool:
        best = min(pool, key=lambda r: float(r["latency_ms"]))
        res.best_in_run = {k: best.get(k) for k in keep}
    if ours is None:
        res.faster_plain = [{k: r.get(k) for k in keep}
                            for r in sorted(plain, key=lambda r: float(r["latency_ms"]))]
        if plain:
            b = res.faster_plain[0]
            res.message += (f"; but the plain recipe {b['recipe']} in this run meets "
                            f"{res.budget.describe()} already (cosine {num(b['cos_mean'])}, "
                            f"drop {num(b['metric_drop'])}, est. {num(b['latency_ms'])} ms): ship "
                            f"it")
        return
    res.faster_plain = [{k: r.get(k) for k in keep} for r in
                        sorted(plain, key=lambda r: float(r["latency_ms"]))
                        if float(r["latency_ms"]) < float(ours["latency_ms"])]
    if res.faster_plain:
        b = res.faster_plain[0]
        same = indistinguishable(b, ours)
        res.message += (f"; the plain recipe {b['recipe']} in this run also meets "
                        f"{res.budget.describe()} and is faster (est. {num(b['latency_ms'])} vs "
                        f"{num(ours['latency_ms'])} ms"
                        + (", within each other's bands" if same else "") + f"): ship "
                        f"{b['recipe']} unless the search's extra accuracy matters")
