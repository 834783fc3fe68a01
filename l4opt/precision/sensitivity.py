"""Which layers hurt: per layer, the drift with only it quantized and with all but it."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from l4opt.precision.common import default_eval_samples, log_file, prepare
from l4opt.precision.onnx_study import OnnxStudy, local_errors
from l4opt.precision.study import study_for
from l4opt.spec.names import safe_filename


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
    drift_backend: str = ""
    evaluations: int = 0
    log_path: str = ""  # ModelOpt's / ONNX Runtime's output while studying (see log_file)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.layers)

    def to_dict(self) -> dict:
        return asdict(self)


def _evaluate_layers(cal, progress: bool, cluster=None):
    """(layer, only-this-layer, all-but-this-layer) in layer order, here or on Ray."""
    from l4opt.env import progress as tqdm

    if cluster:
        from l4opt.run.cluster import evaluate_layers

        got = evaluate_layers(cal, cal.layers, cluster, progress)
        return [(layer, *got[layer]) for layer in cal.layers]
    return [(layer, cal.evaluate([layer]), cal.evaluate([x for x in cal.layers if x != layer]))
            for layer in tqdm(cal.layers, desc="sensitivity", unit="layer", disable=not progress,
                              file=getattr(cal, "tty", None))]


def _noise(sqnr_db) -> float:
    """Relative noise power of an output from its SQNR (0 for an exact output)."""
    s = float(sqnr_db)
    if math.isnan(s):
        return math.inf
    return 0.0 if s == math.inf else 10 ** (-s / 10)


def _shares(values) -> list[float]:
    vals = [max(0.0, v) for v in values]
    if any(math.isinf(v) for v in vals):
        n = sum(math.isinf(v) for v in vals)
        return [1.0 / n if math.isinf(v) else 0.0 for v in vals]
    total = sum(vals)
    return [v / total if total > 0 else 0.0 for v in vals]


def rank_layers(rows: list[dict]) -> list[dict]:
    """Rank layers by the larger of two shares (only this layer quantized): of the task-metric
    drop and of the output noise power (from SQNR, continuous). A layer that explains most of
    the drift therefore ranks near the top even when it flips few task labels."""
    for r, st, sd, sc in zip(rows, _shares([r["only_drop"] for r in rows]),
                             _shares([_noise(r["only_sqnr_db"]) for r in rows]),
                             _shares([1 - r["only_cos_mean"] for r in rows])):
        r.update(share_task=st, share_drift=sd, share_cosine=sc, share=max(st, sd))
    rows.sort(key=lambda r: (-r["share"], -r["recovery"], -r["cos_recovery"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def layer_sensitivity(cal, progress: bool, cluster=None) -> tuple[dict, list[dict]]:
    full = cal.evaluate(cal.layers)
    rows = []
    for layer, only, but in _evaluate_layers(cal, progress, cluster):
        rows.append({
            "layer": layer, "kind": cal.kind(layer),
            "only_metric": only["metric"], "only_drop": only["metric_drop"],
            "only_cos_mean": only["cos_mean"], "only_cos_min": only["cos_min"],
            "only_sqnr_db": only["sqnr_db"], "only_max_abs_err": only["max_abs_err"],
            "all_but_metric": but["metric"], "all_but_drop": but["metric_drop"],
            "all_but_cos_mean": but["cos_mean"], "all_but_sqnr_db": but["sqnr_db"],
            "recovery": full["metric_drop"] - but["metric_drop"],
            "cos_recovery": but["cos_mean"] - full["cos_mean"],
        })
    return full, rank_layers(rows)


def sensitivity(workload, recipe, run_dir=None, *, eval_samples=None, progress: bool = True,
                cluster=None, batch: int | None = None, dims: dict | None = None
                ) -> SensitivityResult:
    """Per layer: drift with only that layer quantized, and with all but that layer, on the
    quantization the sweep measures (ONNX-PTQ recipes: the Q/DQ graph in ONNX Runtime, with
    each layer's local error in INT8 and FP8 beside; torch-PTQ: torch fake-quant). `cluster`
    spreads the per-layer evaluations over Ray workers (see l4opt.cluster)."""
    import shutil
    import tempfile

    from l4opt.pipeline.capture import capture

    w, r = prepare(workload, recipe, eval_samples)
    t = time.perf_counter()
    log = log_file(run_dir, "sensitivity", w.name, r.name)
    cal = None
    work = tempfile.mkdtemp(prefix="l4opt-study-")
    try:
        with capture(log, progress) as tty:
            cal = study_for(w, r, eval_samples or default_eval_samples(w), progress, work, batch, dims,
                         tty=tty)
            full, rows = layer_sensitivity(cal, progress, cluster)
            notes = []
            if isinstance(cal, OnnxStudy):
                local = local_errors(cal)
                for row in rows:
                    for f, v in local.get(row["layer"], {}).items():
                        row[f"local_{f}"] = v
                notes.append(f"studied on the ONNX-PTQ Q/DQ graph ({r.format}, {r.algorithm}) "
                             f"in ONNX Runtime, as the sweep measures it; a layer is one "
                             f"GEMM/conv with its input and weight quantizers, or one other op "
                             f"reading Q/DQ")
    finally:
        if cal is not None:
            cal.close()
        shutil.rmtree(work, ignore_errors=True)
    res = SensitivityResult(w.name, r.name, cal.recipe.to_dict(), w.metric.name, cal.ref_metric,
                            full, rows, w.num_samples(cal.eval), time.perf_counter() - t, notes,
                            cal.drift_backend, cal.evaluations, str(log))
    if run_dir:
        d = Path(run_dir) / "sensitivity"
        d.mkdir(parents=True, exist_ok=True)
        (d / safe_filename(w.name, r.name, suffix=".json")).write_text(
            json.dumps(res.to_dict(), default=float, indent=1))
    return res
