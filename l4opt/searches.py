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
and confirmed on all of it.
"""
from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .drift import task_delta, tensor_metrics
from .errors import BadInput
from .names import safe_filename
from .recipes import Recipe, get
from .store import Store, _json_default, content_key
from .workloads import Workload, load

MATMUL_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d")
STRATEGIES = ("both", "bisect", "greedy", "auto_quantize")


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
        if self.max_drop is not None and not (isinstance(self.max_drop, (int, float))
                                              and math.isfinite(self.max_drop)
                                              and self.max_drop >= 0):
            raise BadInput(f"max_drop {self.max_drop!r} must be a finite number >= 0 (the "
                           f"largest allowed drop of the task metric, e.g. 0.01)")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise BadInput(f"min_cosine {self.min_cosine} is not a cosine in [-1, 1]")
        if self.relative and self.max_drop is None:
            raise BadInput("relative applies to max_drop only")

    def met(self, m: dict) -> bool:
        """Whether drift `m` (a candidate's metrics or a trial row) meets the budget; a missing
        or NaN value never does."""
        try:
            if self.min_cosine is not None:
                return float(m["cos_mean"]) >= self.min_cosine
            drop = float(m["metric_drop_rel"] if self.relative else m["metric_drop"])
        except (KeyError, TypeError, ValueError):
            return False
        return drop <= self.max_drop + 1e-12

    def describe(self) -> str:
        if self.min_cosine is not None:
            return f"mean cosine >= {self.min_cosine}"
        return f"metric drop <= {self.max_drop}{' (relative)' if self.relative else ''}"


# ------------------------------------------------------------------ outputs and metrics

def _named(out, names=None) -> dict:
    """Runner outputs as {name: array} (run_all returns a dict; older runners an array)."""
    if isinstance(out, dict):
        return out
    return {(names or ["output"])[0]: np.asarray(out)}


def _one(x: dict):
    """One output's array as is (metrics written for one array); several stay a dict."""
    return next(iter(x.values())) if len(x) == 1 else x


def _subset(d: dict, k: int) -> dict:
    return {n: a[:k] for n, a in d.items()}


def _measure(w: Workload, out: dict, ref: dict, labels, ref_metric: float) -> dict:
    metric = w.metric(_one(out), _one(ref), labels)
    m = tensor_metrics(_one(out), _one(ref))
    m.update(metric=metric, metric_ref=ref_metric,
             **task_delta(metric, ref_metric, w.metric.higher_is_better))
    return m


def _reference(w: Workload, data: dict, progress: bool, tty=None) -> dict:
    import inspect

    from .runners import TorchRunner, run_all

    kw = {"output_names": w.output_names} if "output_names" in inspect.signature(
        TorchRunner).parameters else {}
    return _named(run_all(TorchRunner(w.module(), **kw), w.batches(data),
                          desc="reference (fp32)", progress=progress, file=tty), w.output_names)


# ------------------------------------------------------------------ torch-PTQ study

def torch_form(recipe: Recipe) -> Recipe:
    """The torch-PTQ recipe with the same format and algorithm (quantizers are per module)."""
    if recipe.path == "torch-ptq":
        return recipe
    if recipe.path == "none":
        raise BadInput(f"recipe {recipe.name!r} quantizes nothing; choose a quantizing recipe")
    return Recipe(f"{recipe.name}-torch", "torch-ptq", recipe.format, recipe.algorithm,
                  f"torch-PTQ form of {recipe.name}", high_precision_dtype=recipe.high_precision_dtype)


class Calibrated:
    """A copy of the workload's model calibrated once (torch PTQ); candidates toggle quantizer
    groups. Drift is the fake-quantized torch model's."""

    drift_backend = "torch-fakequant-cpu"

    def __init__(self, workload: Workload, recipe: Recipe, eval_samples: int | None,
                 progress: bool, tty=None):
        import torch
        from tqdm.auto import tqdm

        from .quantize import quantize_torch, quantizers

        self.w, self.recipe, self.progress, self.tty = workload, torch_form(recipe), progress, tty
        n = workload.num_samples(workload.eval_data)
        k = min(n, eval_samples or n)
        self.eval = _subset(workload.eval_data, k)
        self.labels = None if workload.eval_labels is None else np.asarray(workload.eval_labels)[:k]
        self.reference = _reference(workload, self.eval, progress, tty)
        self.ref_metric = workload.metric(_one(self.reference), _one(self.reference), self.labels)
        self.model = copy.deepcopy(workload.module())
        self.evaluations = 0

        def forward_loop(m):
            with torch.no_grad():
                for b in tqdm(list(workload.batches(workload.calib_data)), desc="calibrate once",
                              leave=False, disable=not progress, file=tty):
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

    def kind(self, layer: str) -> str:
        return "gemm" if layer in self.matmul_layers else "other"

    def configure(self, enabled) -> None:
        enabled = set(enabled)
        for layer, qs in self.groups.items():
            for q in qs:
                q.enable() if layer in enabled else q.disable()

    def evaluate(self, enabled) -> dict:
        import inspect

        from .runners import TorchRunner, run_all

        self.configure(enabled)
        self.evaluations += 1
        kw = {"output_names": self.w.output_names} if "output_names" in inspect.signature(
            TorchRunner).parameters else {}
        out = _named(run_all(TorchRunner(self.model, "torch-fakequant", **kw),
                             self.w.batches(self.eval), progress=False), self.w.output_names)
        return _measure(self.w, out, self.reference, self.labels, self.ref_metric)

    def fraction_quantized(self, enabled) -> float:
        e = set(enabled)
        return sum(g in e for g in self.matmul_layers) / max(1, len(self.matmul_layers))


# ------------------------------------------------------------------ ONNX-PTQ study

def _other_format(fmt: str) -> str:
    return "fp8" if fmt == "int8" else "int8"


class OnnxStudy:
    """An ONNX-PTQ recipe as the sweep measures it: the FP32 export calibrated by ModelOpt ONNX
    PTQ (once per 8-bit format), candidates built by splicing Q/DQ pairs per layer, drift in
    ONNX Runtime on the CPU (basic graph optimizations, as the sweep runs Q/DQ graphs)."""

    drift_backend = "onnxruntime-cpu"

    def __init__(self, workload: Workload, recipe: Recipe, eval_samples: int | None,
                 progress: bool, workdir, *, mixed: bool = True, screen: int | None = None,
                 batch: int | None = None, dims: dict | None = None, tty=None):
        from .export import export_torch
        from .mixed import calibrate
        from .shapes import for_workload

        if recipe.path != "onnx-ptq":
            raise BadInput(f"recipe {recipe.name!r} is not an ONNX-PTQ recipe")
        self.w, self.progress, self.tty = workload, progress, tty
        self.recipe = Recipe(recipe.name, recipe.path, recipe.format, recipe.algorithm,
                             recipe.description, high_precision_dtype=recipe.high_precision_dtype,
                             nodes_to_exclude=recipe.nodes_to_exclude)
        self.format = recipe.format
        self.shapes = for_workload(workload, batch=batch, dims=dims)
        n = workload.num_samples(workload.eval_data)
        k = min(n, eval_samples or n)
        self.eval = _subset(workload.eval_data, k)
        self.labels = None if workload.eval_labels is None else np.asarray(workload.eval_labels)[:k]
        self.screen_n = min(k, screen or max(32, k // 4))
        self.timings: dict[str, float] = {}
        t = time.perf_counter()
        self.reference = _reference(workload, self.eval, progress, tty)
        self.timings["reference"] = time.perf_counter() - t
        self.ref_metric = workload.metric(_one(self.reference), _one(self.reference), self.labels)
        lab = None if self.labels is None else self.labels[:self.screen_n]
        ref_s = _subset(self.reference, self.screen_n)
        self._screen = (_subset(self.eval, self.screen_n), ref_s, lab,
                        workload.metric(_one(ref_s), _one(ref_s), lab))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        base = self.workdir / "model.fp32.onnx"
        t = time.perf_counter()
        import inspect

        kw = {"batch": self.shapes.batch} if "batch" in inspect.signature(
            export_torch).parameters else {}
        export_torch(workload.module(), workload, base, **kw)  # as the sweep exports it
        self.timings["export"] = time.perf_counter() - t
        formats = [self.format] + ([_other_format(self.format)] if mixed else [])
        t = time.perf_counter()
        self.graphs, self.infos = calibrate(base, self.workdir, self.recipe,
                                            workload.calib_data, formats, shapes=self.shapes)
        self.calib_s = self.timings["calibrate"] = time.perf_counter() - t
        self.qg = self.graphs[self.format]
        self.formats = list(self.graphs)
        self.evaluations = 0
        self.screenings = 0
        self._cache: dict = {}

    # the interface sensitivity shares with Calibrated: enabled = layers at the recipe format
    @property
    def layers(self) -> list[str]:
        return self.qg.choices

    @property
    def matmul_layers(self) -> list[str]:
        return [x for x in self.qg.choices if self.qg.layers[x].kind == "gemm"]

    def kind(self, layer: str) -> str:
        return self.qg.layers[layer].kind

    def evaluate(self, enabled) -> dict:
        e = set(enabled)
        return self.evaluate_formats({x: "fp16" for x in self.layers if x not in e})

    def fraction_quantized(self, enabled) -> float:
        e = set(enabled)
        return sum(g in e for g in self.matmul_layers) / max(1, len(self.qg.gemm_layers))

    # formats per layer
    def model(self, formats: dict):
        from .mixed import build

        return build(self.graphs, self.format, formats, check=False)  # ORT checks on load

    def evaluate_formats(self, formats: dict, full: bool = True) -> dict:
        """Drift of the graph with `formats` (layer -> int8|fp8|fp16; others at the recipe's
        format), on the whole evaluation set or (full=False) on the screening subset."""
        import onnxruntime as ort

        formats = {k: v for k, v in formats.items() if v != self.format}
        key = (tuple(sorted(formats.items())), full)
        if key in self._cache:
            return self._cache[key]
        if full:
            data, ref, labels, ref_metric = self.eval, self.reference, self.labels, self.ref_metric
            self.evaluations += 1
        else:
            data, ref, labels, ref_metric = self._screen
            self.screenings += 1
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        sess = ort.InferenceSession(self.model(formats).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        names = list(ref)
        outs = [sess.run(None, dict(zip(self.w.input_names, b))) for b in self.w.batches(data)]
        out = {n: np.concatenate([np.asarray(o[i], np.float32) for o in outs], 0)
               for i, n in enumerate(names)}
        m = _measure(self.w, out, ref, labels, ref_metric)
        m["eval_samples"] = self.w.num_samples(data)
        self._cache[key] = m
        return m

    def local_errors(self) -> dict:
        """Per layer and format: the relative noise power (||y_q - y||^2 / ||y||^2) of the
        layer's output when only its own operands are quantized, all from one run of a probe
        graph on the screening subset (every layer sees the same float activations)."""
        import onnxruntime as ort

        from .qdq import probe

        model, taps = probe(self.graphs, self.format)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        wanted = sorted({t for tap in taps.values() for ts in tap.values() for t in ts})
        noise = {(l, f): 0.0 for l, tap in taps.items() for f in tap if f != "ref"}
        signal = {l: 0.0 for l in taps}
        data = self._screen[0]
        for b in self.w.batches(data):
            got = dict(zip(wanted, sess.run(wanted, dict(zip(self.w.input_names, b)))))
            for layer, tap in taps.items():
                refs = [np.asarray(got[t], np.float64) for t in tap["ref"]]
                signal[layer] += sum(float((r ** 2).sum()) for r in refs)
                for f, ts in tap.items():
                    if f == "ref":
                        continue
                    noise[(layer, f)] += sum(
                        float(((np.asarray(got[t], np.float64) - r) ** 2).sum())
                        for t, r in zip(ts, refs))
        return {layer: {f: noise[(layer, f)] / signal[layer] if signal[layer] > 0 else 0.0
                        for f in tap if f != "ref"} for layer, tap in taps.items()}

    def price(self, model) -> dict:
        """Estimated L4 latency of a candidate graph at the deployment batch and shapes."""
        from .estimate import estimate_onnx

        e = estimate_onnx(model, "L4", batch=self.shapes.batch, dynamic_dims=self.shapes.axes)
        lo, hi = getattr(e, "low_ms", None), getattr(e, "high_ms", None)
        return {"latency_ms": e.total_ms, "latency_low_ms": lo, "latency_high_ms": hi,
                "latency_batch": self.shapes.batch, "shapes": self.shapes.to_dict(),
                "latency_source": e.source, "throughput_samples_s": e.throughput_samples_s,
                "_layers": e.layers}

    def layer_costs(self) -> tuple[dict, dict]:
        """Per layer and format, the estimated L4 ms of its own kernel (GEMMs; a fused op costs
        nothing), from one estimate of the graph with every layer in that format."""
        out: dict[str, dict] = {x: {} for x in self.layers}
        est = {}
        for f in self.formats + ["fp16"]:
            other = self.graphs.get(f)
            p = self.price(self.model({x: f for x in self.layers if f == "fp16" or (
                self.kind(x) == "gemm" and (f == self.format or self.qg.can_take(x, other)))}))
            est[f] = p
            ms = dict(zip(p["_layers"]["layer"], p["_layers"]["latency_ms"]))
            for x in self.layers:
                out[x][f] = float(ms.get(x, 0.0))
        return out, est


def _study(w: Workload, r: Recipe, eval_samples, progress: bool, workdir, batch=None, dims=None,
           mixed: bool = True, tty=None):
    """The study of the quantization the sweep measures for this recipe."""
    if r.path == "onnx-ptq":
        return OnnxStudy(w, r, eval_samples, progress, workdir, mixed=mixed, batch=batch,
                         dims=dims, tty=tty)
    return Calibrated(w, r, eval_samples, progress, tty)


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
    drift_backend: str = ""
    evaluations: int = 0
    log_path: str = ""  # ModelOpt's / ONNX Runtime's output while studying (see _log_file)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.layers)

    def to_dict(self) -> dict:
        return asdict(self)


def _evaluate_layers(cal, progress: bool, cluster=None):
    """(layer, only-this-layer, all-but-this-layer) in layer order, here or on Ray."""
    from tqdm.auto import tqdm

    if cluster:
        from .cluster import evaluate_layers

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


def _sensitivity(cal, progress: bool, cluster=None) -> tuple[dict, list[dict]]:
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

    from .trial import capture

    w, r = _prepare(workload, recipe, eval_samples)
    t = time.perf_counter()
    log = _log_file(run_dir, "sensitivity", w.name, r.name)
    work = tempfile.mkdtemp(prefix="l4opt-study-")
    try:
        with capture(log, progress) as tty:
            cal = _study(w, r, eval_samples or _default_eval(w), progress, work, batch, dims,
                         tty=tty)
            full, rows = _sensitivity(cal, progress, cluster)
            notes = []
            if isinstance(cal, OnnxStudy):
                local = cal.local_errors()
                for row in rows:
                    for f, v in local.get(row["layer"], {}).items():
                        row[f"local_{f}"] = v
                notes.append(f"studied on the ONNX-PTQ Q/DQ graph ({r.format}, {r.algorithm}) "
                             f"in ONNX Runtime, as the sweep measures it; a layer is one "
                             f"GEMM/conv with its input and weight quantizers, or one other op "
                             f"reading Q/DQ")
    finally:
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


def _default_eval(w: Workload) -> int:
    return 128 if w.name == "minilm" else w.num_samples(w.eval_data)


def _prepare(workload, recipe, eval_samples) -> tuple[Workload, Recipe]:
    """The checked workload and quantizing recipe a study starts from."""
    _check_eval_samples(eval_samples)
    w = load(workload) if isinstance(workload, str) else workload
    w.validate()
    r = get(recipe)
    if not r.quantized:
        raise BadInput(f"recipe {r.name!r} quantizes nothing; choose a quantizing recipe")
    return w, r


def _check_eval_samples(n) -> None:
    """None (all of the evaluation set) or a positive whole number."""
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise BadInput(f"eval_samples {n!r} must be a positive whole number (how many evaluation "
                       f"samples to use), or None for the whole evaluation set")


def _log_file(run_dir, kind: str, *names) -> Path:
    """Where ModelOpt's and ONNX Runtime's output goes while a study runs (they print to the
    process's stdout/stderr): RUN_DIR/logs/KIND-NAMES.log, or a temporary file without a run
    directory. Appended to; its path is in the result."""
    import tempfile

    if run_dir:
        d = Path(run_dir) / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d / safe_filename(kind, *names, suffix=".log")
    fd, path = tempfile.mkstemp(prefix=f"l4opt-{kind}-", suffix=".log")
    import os

    os.close(fd)
    return Path(path)


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
    layer_map: list[dict] = field(default_factory=list)
    indistinguishable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    candidate_met: bool | None = None  # the search's own best candidate met the budget
    log_path: str = ""  # ModelOpt's / ONNX Runtime's output while searching

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
        }


def indistinguishable(a: dict, b: dict) -> bool:
    """Two candidates whose estimated latency bands overlap, by l4opt.estimate's rule (the one
    definition); a candidate without a latency estimate is never indistinguishable."""
    from .estimate import indistinguishable as overlap

    if not (_priced(a) and _priced(b)):
        return False
    return bool(overlap(a, b))


def _priced(row: dict) -> bool:
    v = row.get("latency_ms")
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _verdict(budget: Budget, chosen: dict, final_row: dict | None, candidate_met: bool,
             message: str) -> tuple[bool, str]:
    """The search's answer is what the sweep of the saved recipe measured: met only when that
    trial finished ok and meets the budget; otherwise the message says what happened."""
    row = final_row or {}
    status = row.get("status") or "missing"
    cand = (f"the search's candidate {chosen.get('name')} "
            f"{'met' if candidate_met else 'did not meet'} it (cosine "
            f"{_num(chosen.get('cos_mean'))}, drop {_num(chosen.get('metric_drop'))})")
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
                       f"cosine {_num(row.get('cos_mean'))}, drop {_num(row.get('metric_drop'))}"
                       f", which does not meet {budget.describe()}; {cand}")
    if not candidate_met:  # the sweep met it though no candidate did (e.g. more samples)
        return True, (f"met {budget.describe()} in the sweep of the saved recipe (cosine "
                      f"{_num(row.get('cos_mean'))}, drop {_num(row.get('metric_drop'))}); "
                      f"{message}")
    return True, message


def _num(v) -> str:
    try:
        return f"{float(v):.6g}"
    except (TypeError, ValueError):
        return "n/a"


def _choose(rows: list[dict], budget: Budget, w: Workload, store: Store, evaluated: int,
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


def _pareto(rows: list[dict], y: str = "metric_drop") -> None:
    pts = [(r.get(y, math.inf), r.get("latency_ms") or math.inf) for r in rows]
    for r, (d, l) in zip(rows, pts):
        r["pareto"] = not any((d2 <= d and l2 <= l) and (d2 < d or l2 < l) for d2, l2 in pts)


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
    w, r = _prepare(workload, recipe, eval_samples)
    if r.path == "onnx-ptq" and strategy in ("both", "bisect"):
        return _search_onnx(w, r, budget, run_dir, eval_samples, progress, cluster, batch, dims)
    if strategy == "bisect":
        strategy = "greedy"
    if not cluster:
        return _search(w, r, budget, run_dir, strategy, eval_samples, progress, None)
    from .cluster import connect, disconnect

    conn = connect(cluster)  # one Ray session for the sensitivity and the final trial
    try:
        return _search(w, r, budget, run_dir, strategy, eval_samples, progress, cluster)
    finally:
        disconnect(conn)


# ------------------------------------------------------------------ ONNX-PTQ: bisection

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
        m = st.evaluate_formats(formats, full=full)
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
        row = {
            "key": key, "kind": "trial", "workload": st.w.name, "recipe": name, "name": name,
            "strategy": "bisect" if full else "bisect-screen", "path": "onnx-ptq",
            "format": st.format, "algorithm": self.r.algorithm, "status": "ok",
            "recipe_config": dict(self.r.to_dict(), layer_formats=lf), "layer_formats": lf,
            "metric_name": st.w.metric.name, "drift_backend": st.drift_backend,
            "fallback": [x for x, f in formats.items() if f == "fp16"],
            "gemm_layers": total, "quantized_layers": count["int8"] + count["fp8"],
            "fraction_quantized": (count["int8"] + count["fp8"]) / max(1, total),
            "int8_layers": count["int8"], "fp8_layers": count["fp8"],
            "fp16_layers": count["fp16"], "moves": k, "screened": not full,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **{k2: v for k2, v in m.items() if k2 != "tensor_metrics_by_output"},
        }
        row["met"] = self.budget.met(m)
        try:
            p = st.price(st.model(formats))
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
    from tqdm.auto import tqdm

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


def _search_onnx(w: Workload, r: Recipe, budget: Budget, run_dir, eval_samples, progress,
                 cluster, batch, dims) -> SearchResult:
    import shutil
    import tempfile

    from .sweeps import sweep
    from .trial import capture

    t0 = time.perf_counter()
    store = Store(run_dir)
    work = tempfile.mkdtemp(prefix="l4opt-study-")
    notes = []
    log = _log_file(run_dir, "search", w.name, r.name)
    try:
        with capture(log, progress) as tty:
            st = OnnxStudy(w, r, eval_samples or _default_eval(w), progress, work, batch=batch,
                           dims=dims, tty=tty)
            t = time.perf_counter()
            errs = st.local_errors()
            st.timings["local_errors"] = time.perf_counter() - t
            t = time.perf_counter()
            costs, _ = st.layer_costs()
            moves = _moves(st, errs, costs)
            st.timings["price_layers"] = time.perf_counter() - t
            rec = _Recorder(st, store, budget, r)
            t = time.perf_counter()
            strategies = {"bisect": _bisect(rec, moves, progress)}
            all_q = max((x for x in rec.rows if x["moves"] == 0),  # confirmed if met, else
                        key=lambda x: x["eval_samples"])  # screened
            st.timings["bisect"] = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = rec.rows
    full_rows = [x for x in rows if not x["screened"]]
    y = "metric_drop" if budget.max_drop is not None else "cos_drop"
    for x in rows:
        x["cos_drop"] = 1 - x["cos_mean"]
    _pareto(full_rows, y)
    for x in rows:
        x.setdefault("pareto", False)
        store.update(x["key"], pareto=x["pareto"])
    chosen, message, same = _choose(
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
    swept = sweep(w, [str(path)], run_dir, progress=progress, cluster=cluster)
    st.timings["final_sweep"] = time.perf_counter() - t
    final_row = swept.rows[0]
    if final_row.get("status") == "ok" and chosen.get("eval_samples") == final_row.get(
            "eval_samples", w.num_samples(w.eval_data)) and \
            abs(final_row["cos_mean"] - chosen["cos_mean"]) > 1e-6:
        notes.append(f"the sweep of the saved recipe measured cosine {final_row['cos_mean']:.6g}"
                     f", the search {chosen['cos_mean']:.6g}: the sweep did not reproduce the "
                     f"per-layer formats")
    ok, message = _verdict(budget, chosen, final_row, bool(chosen["met"]), message)
    res = SearchResult(w.name, final, str(path), budget, ok, message, chosen, rows,
                       strategies, final_row, layer_map, same, notes,
                       st.evaluations + st.screenings, time.perf_counter() - t0, bool(chosen["met"]),
                       str(log))
    res.strategies["all_quantized"] = {k: all_q.get(k) for k in (
        "metric", "metric_drop", "cos_mean", "sqnr_db", "latency_ms", "eval_samples")}
    res.strategies["timings_s"] = {k: round(v, 2) for k, v in st.timings.items()}
    _save_search(run_dir, res)
    return res


def _save_search(run_dir, res: SearchResult) -> Path:
    """The search's candidates and chosen per-layer map, where the report finds them."""
    d = Path(run_dir) / "search"
    d.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in c.items() if not k.startswith("_")} for c in res.candidates]
    doc = dict(res.to_dict(), candidate_rows=clean, layer_map=res.layer_map)
    path = d / safe_filename(res.workload, res.recipe.name, suffix=".json")
    path.write_text(json.dumps(doc, default=_json_default, indent=1))
    return path


# ------------------------------------------------------------------ torch-PTQ: greedy

class _Evaluator:
    """Evaluates, prices and records torch candidates (one trial row each)."""

    def __init__(self, cal: Calibrated, store: Store, budget: Budget, fp: str):
        from .shapes import for_workload

        self.cal, self.store, self.budget, self.fp = cal, store, budget, fp
        self.rows: list[dict] = []
        self._seen: dict[frozenset, dict] = {}
        self.shapes = for_workload(cal.w)

    def __call__(self, enabled, strategy: str, name: str) -> dict:
        key = frozenset(enabled)
        if key in self._seen:
            return self._seen[key]
        m = self.cal.evaluate(enabled)
        fallback = [x for x in self.cal.layers if x not in key]
        total = len(self.cal.matmul_layers)
        q = sum(g in key for g in self.cal.matmul_layers)
        row = {
            "key": content_key("search", self.fp, self.cal.recipe.identity(), sorted(fallback)),
            "kind": "trial", "workload": self.cal.w.name, "recipe": name, "name": name,
            "strategy": strategy, "path": "torch-ptq", "format": self.cal.recipe.format,
            "algorithm": self.cal.recipe.algorithm, "status": "ok",
            "recipe_config": dict(self.cal.recipe.to_dict(), disabled_layers=fallback),
            "metric_name": self.cal.w.metric.name, "drift_backend": "torch-fakequant-cpu",
            "eval_samples": self.cal.w.num_samples(self.cal.eval), "fallback": fallback,
            "gemm_layers": total, "quantized_layers": q,
            "fraction_quantized": self.cal.fraction_quantized(key),
            f"{self.cal.recipe.format}_layers": q, "fp16_layers": total - q,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **{k: v for k, v in m.items() if k != "tensor_metrics_by_output"},
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
            e = estimate_onnx(str(path), "L4", batch=self.shapes.batch,
                              dynamic_dims=self.shapes.axes)
        except Exception as exc:  # price unknown: keep the candidate, say why
            return {"latency_note": f"no estimate: {type(exc).__name__}: {exc}"}
        finally:
            path.unlink(missing_ok=True)
        return {"latency_ms": e.total_ms, "latency_low_ms": getattr(e, "low_ms", None),
                "latency_high_ms": getattr(e, "high_ms", None),
                "latency_batch": self.shapes.batch, "shapes": self.shapes.to_dict(),
                "latency_source": e.source, "throughput_samples_s": e.throughput_samples_s}


def _greedy(ev: _Evaluator, ranking: list[str], progress: bool) -> dict:
    from tqdm.auto import tqdm

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
            from .quantize import _quiet, keep_slow_path, no_fastpath

            keep_slow_path(model)
            with _quiet(), no_fastpath():
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


def _search(w: Workload, r: Recipe, budget: Budget, run_dir, strategy, eval_samples, progress,
            cluster) -> SearchResult:
    """Torch-PTQ study: greedy FP16 fallback over the sensitivity ranking, and auto_quantize."""
    from .sweeps import sweep

    from .trial import capture

    t0 = time.perf_counter()
    store = Store(run_dir)
    log = _log_file(run_dir, "search", w.name, r.name)
    strategies = {}
    notes = []
    if r.path != "torch-ptq":
        notes.append(f"{r.name} runs on the ONNX-PTQ path; strategy {strategy!r} studies its "
                     f"torch-PTQ form ({r.format}, {r.algorithm}), which the sweep does not "
                     f"measure: use strategy 'bisect' to study the Q/DQ graph itself")
    with capture(log, progress) as tty:
        cal = Calibrated(w, r, eval_samples or _default_eval(w), progress, tty)
        ev = _Evaluator(cal, store, budget, w.fingerprint())
        if strategy in ("both", "greedy"):
            _, sens = _sensitivity(cal, progress, cluster)
            strategies["greedy"] = _greedy(ev, [s["layer"] for s in sens], progress)
        if strategy in ("both", "auto_quantize"):
            strategies["auto_quantize"] = _auto_quantize(ev)
        base_onnx = _base_export(w, store) if any(x["fallback"] for x in ev.rows) else None
    rows = ev.rows
    _pareto(rows)
    for row in rows:
        store.update(row["key"], pareto=row["pareto"])
    chosen, message, same = _choose(
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
    swept = sweep(w, [str(path)], run_dir, progress=progress, cluster=cluster)
    layer_map = [{"layer": x, "op_type": "", "kind": cal.kind(x),
                  "format": "fp16" if x in fallback else base.format, "quantizable": True,
                  "order": i} for i, x in enumerate(cal.layers)]
    ok, message = _verdict(budget, chosen, swept.rows[0], bool(chosen["met"]), message)
    res = SearchResult(w.name, final, str(path), budget, ok, message, chosen, rows,
                       strategies, swept.rows[0], layer_map, same, notes, cal.evaluations,
                       time.perf_counter() - t0, bool(chosen["met"]), str(log))
    _save_search(run_dir, res)
    return res


def _base_export(w: Workload, store: Store) -> Path:
    """The FP32 export whose node names the ONNX-PTQ path sees."""
    from .export import export_torch

    path = store.artifact_dir(content_key("names", w.fingerprint())) / "model.fp32.onnx"
    if not path.exists():
        export_torch(w.module(), w, path)
    return path
