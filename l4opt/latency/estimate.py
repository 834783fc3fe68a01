"""Estimated latency of a (Q/DQ) ONNX graph or of an engine on a GPU, with its error band.

Every number here is an ESTIMATE and says so. The kernels and the rules that make them are in
`l4opt.latency.costmodel`; the constants that price them were fitted on published L4
measurements (l4opt/data/l4_truth.csv) and are read from l4opt/data/l4_fit.json together with their
errors with a model family held out, which give every estimate its band (`low_ms`..`high_ms`); FP8 work, which
no L4 row fits, gets the band of the sm_89 evidence instead (costmodel.FP8_EVIDENCE). A user with
measured L4 rows refits them with `refit_from(run_dir)` (the cost model's refit; "calibration"
in l4opt means ModelOpt's).
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l4opt.latency import costmodel
from l4opt.latency.costmodel import BYTES, Constants, GPUSpec, Kernel, all_gpus, get_gpu  # noqa: F401 (API)
from l4opt.errors import BadInput

DATA = Path(__file__).resolve().parent.parent / "data"
TRUTH_CSV = DATA / "l4_truth.csv"
FIT_JSON = DATA / "l4_fit.json"
REFIT_NAME = "l4opt_refit.json"
OLD_REFIT_NAME = "l4opt_calibration.json"  # what l4opt 0.1 called it: still read
BAND_QUANTILES = (0.1, 0.9)
KIND_WORDS = {"fp16_gemm": "FP16 GEMMs", "attention": "attention blocks",
              "fp8_gemm": "FP8 tensor-core work"}


def refit_path(run_dir) -> Path:
    """The run's refit file (l4opt_refit.json; an older run's l4opt_calibration.json)."""
    new, old = Path(run_dir) / REFIT_NAME, Path(run_dir) / OLD_REFIT_NAME
    return old if old.exists() and not new.exists() else new


class StaleFitWarning(UserWarning):
    """The fit's constants were made for other cost-model rules than the code's."""


@dataclass(frozen=True)
class Fitted:
    """Constants and the relative-error band that goes with them."""

    constants: Constants
    q_low: float            # low end of (estimate - truth) / truth over held-out rows (l4_fit.json
    q_high: float           # says which: family held out, worst each side; a refit: 10th/90th)
    source: str             # what the band was measured on
    costmodel_version: int | None = None  # COSTMODEL_VERSION the fit was made with
    # held-out errors of the rows that validate each kind of work (costmodel.validation_kinds):
    # kind -> {"errors": [...], "rows": [...]}; a graph of that kind gets at least that band
    kind_errors: dict = field(default_factory=dict)

    def band(self, value_ms: float, q_low: float | None = None,
             q_high: float | None = None) -> tuple[float, float]:
        """Truth lies in [value / (1 + q_high), value / (1 + q_low)] as often as on LOO."""
        lo = self.q_low if q_low is None else q_low
        hi = self.q_high if q_high is None else q_high
        return value_ms / (1 + hi), value_ms / (1 + max(lo, -0.95))

    def stale_note(self) -> str | None:
        """Why the constants may not fit the code's rules, or None when they match."""
        if self.costmodel_version == costmodel.COSTMODEL_VERSION:
            return None
        made = "no cost-model version" if self.costmodel_version is None else \
            f"cost model version {self.costmodel_version}"
        return (f"STALE FIT: the constants and band were fitted with {made}, the code's rules "
                f"are version {costmodel.COSTMODEL_VERSION}; the band was not measured for these "
                f"rules (rerun benchmarks/bench_estimate.py, or `l4opt estimate "
                f"--refit-from RUN_DIR`)")

    def widened(self, kinds) -> tuple[float, float, str]:
        """(q_low, q_high, why): the band widened to at least the held-out error of the rows
        that validate each of `kinds` (costmodel.validation_kinds) the graph has."""
        lo, hi, why = self.q_low, self.q_high, []
        by_rows: dict = {}  # (rows, max |error|) -> kinds they validate
        for kind in kinds:
            ke = self.kind_errors.get(kind) or {}
            errs = [float(e) for e in ke.get("errors") or []]
            word = KIND_WORDS.get(kind, kind)
            if errs and ke.get("evidence"):  # bounds from evidence other than L4 rows
                lo, hi = min(lo, min(errs)), max(hi, max(errs))
                why.append(f"band widened to {min(errs):+.0%}..{max(errs):+.0%} for {word}: "
                           f"{ke['evidence']}")
                continue
            if not errs:
                lo, hi = min(lo, -0.5), max(hi, 1.0)
                why.append(f"band widened: {word} validated by no truth row, band is a guess "
                           f"(-50%/+100%)")
                continue
            m = max(abs(e) for e in errs)
            covered = -m >= self.q_low and m <= self.q_high  # the general band holds it
            if not covered:
                lo, hi = min(lo, -m), max(hi, m)
            by_rows.setdefault((tuple(ke.get("rows") or []), m, covered), []).append(word)
        for (rows, m, covered), words in by_rows.items():
            ratios = rows and all("/" in r for r in rows)
            what = (f"only by {len(rows)} speed-up ratio{'s' if len(rows) > 1 else ''}"
                    if ratios else f"by {len(rows)} truth row(s)")
            if covered and not ratios:
                continue  # validated by absolute rows, inside the band: nothing to say
            head = "validation thin" if covered else "band widened"
            tail = ", inside the band" if covered else ""
            why.append(f"{head}: {' and '.join(words)} validated {what} "
                       f"({'; '.join(rows[:3])}), held-out error up to {100 * m:.0f}%{tail}")
        return lo, hi, "; ".join(why)


_FITTED_CACHE: dict = {}


def fitted(run_dir: str | Path | None = None) -> Fitted:
    """The constants in use: a run's refit if it has one, else the shipped L4 fit."""
    if run_dir is not None:
        path = refit_path(run_dir)
        if path.exists():
            return _read_fitted(path)
    if "shipped" not in _FITTED_CACHE:
        _FITTED_CACHE["shipped"] = _read_fitted(FIT_JSON)
    return _FITTED_CACHE["shipped"]


def _read_fitted(path: Path) -> Fitted:
    try:
        d = json.loads(Path(path).read_text())
        ver = d.get("costmodel")
        kind_errors = d.get("kind_errors")
        if kind_errors is None:  # an older fit: its speed-up ratios are all that validate these
            ratios = [float(e) for e in (d.get("summary") or {}).get("ratio_errors") or []]
            rows = [r["row"] for r in d.get("loo") or [] if r.get("kind") == "ratio"]
            kind_errors = {k: {"errors": ratios, "rows": rows} for k in KIND_WORDS}
        fit = Fitted(Constants.from_dict(d["constants"]), float(d["band"]["q_low"]),
                     float(d["band"]["q_high"]), str(d["band"]["source"]),
                     int(ver) if isinstance(ver, int) else None, dict(kind_errors))
    except FileNotFoundError:
        return Fitted(Constants(), -0.5, 1.0, "UNFITTED defaults (no l4_fit.json): band is a guess",
                      costmodel.COSTMODEL_VERSION)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise BadInput(f"{path} is not an l4opt fit file ({exc}); rerun "
                       f"benchmarks/bench_estimate.py or `l4opt estimate --refit-from`") from exc
    note = fit.stale_note()
    if note:
        warnings.warn(f"{path}: {note}", StaleFitWarning, stacklevel=3)
    return fit


def fit_stamp(run_dir: str | Path | None = None) -> str:
    """What identifies the constants in use: the cost model version and the fit file's hash
    (part of every trial's key, so rows estimated with other rules or constants are redone)."""
    path = FIT_JSON
    if run_dir is not None and (refit_path(run_dir)).exists():
        path = refit_path(run_dir)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except FileNotFoundError:
        digest = "unfitted"
    return f"costmodel-v{costmodel.COSTMODEL_VERSION}/fit-{digest}"


@dataclass
class Estimate:
    """Per-kernel and total estimated latency of one graph on one GPU at one batch size."""

    layers: object  # DataFrame
    total_ms: float
    gpu: str
    batch: int
    source: str
    notes: list = field(default_factory=list)
    low_ms: float | None = None
    high_ms: float | None = None
    band_source: str = ""
    constants: dict = field(default_factory=dict)
    trt_version: str = ""   # the TensorRT version whose rules the estimate assumed

    # the names the trial rows use
    @property
    def latency_ms(self) -> float:
        return self.total_ms

    @property
    def latency_low_ms(self):
        return self.low_ms

    @property
    def latency_high_ms(self):
        return self.high_ms

    @property
    def throughput_qps(self) -> float:
        return 1000.0 / self.total_ms if self.total_ms > 0 else float("nan")

    @property
    def throughput_samples_s(self) -> float:
        return self.throughput_qps * self.batch

    def band_text(self) -> str:
        if self.low_ms is None:
            return "no band"
        return f"band {_fmt(self.low_ms)}-{_fmt(self.high_ms)} ms"

    def to_dict(self) -> dict:
        return {"estimate": True, "source": self.source, "gpu": self.gpu, "batch": self.batch,
                "total_ms": self.total_ms, "low_ms": self.low_ms, "high_ms": self.high_ms,
                "band_source": self.band_source, "throughput_qps": self.throughput_qps,
                "throughput_samples_s": self.throughput_samples_s, "notes": self.notes,
                "trt_version": self.trt_version, "model": dict(self.constants), "layers": self.layers.to_dict(orient="records")}

    def to_text(self, top: int = 25) -> str:
        df = self.layers.sort_values("latency_ms", ascending=False).head(top)
        lines = [f"ESTIMATE - not measured on {self.gpu}: l4opt cost model, batch {self.batch}",
                 f"{'kernel':56s} {'kind':9s} {'prec':5s} {'GFLOP':>8s} {'MB':>8s} {'est. ms':>9s}"]
        for r in df.itertuples():
            lines.append(f"{str(r.layer)[:56]:56s} {str(r.kind)[:9]:9s} {r.precision:5s} "
                         f"{r.flops / 1e9:8.3f} {r.bytes / 1e6:8.3f} {r.latency_ms:9.4f}")
        lines.append(f"... {len(self.layers)} kernels in all")
        lines.append(f"est. latency {_fmt(self.total_ms)} ms, {self.band_text()}; est. throughput "
                     f"{self.throughput_samples_s:.1f} samples/s on {self.gpu} (ESTIMATE)")
        if self.band_source:
            lines.append(f"band: {self.band_source}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:#.3g}" if x < 100 else f"{x:.0f}"


def indistinguishable(a, b) -> bool:
    """True when two estimates' bands overlap: the cost model cannot tell them apart.

    `a`/`b`: Estimates, or rows/dicts with latency_low_ms/latency_high_ms (or low_ms/high_ms).
    Without a band, only equal values are indistinguishable."""
    la, ha = _bounds(a)
    lb, hb = _bounds(b)
    return la <= hb and lb <= ha


def _bounds(x) -> tuple[float, float]:
    def get(*names):
        for n in names:
            v = x.get(n) if isinstance(x, dict) else getattr(x, n, None)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                return float(v)
        return None

    v = get("latency_ms", "total_ms")
    lo, hi = get("latency_low_ms", "low_ms"), get("latency_high_ms", "high_ms")
    if v is None and (lo is None or hi is None):
        raise BadInput("indistinguishable() needs estimates or rows with a latency and its band "
                       "(latency_ms, latency_low_ms, latency_high_ms)")
    return (lo if lo is not None else v), (hi if hi is not None else v)


# ------------------------------------------------------------------ pricing

def _finish(ks: list, g: GPUSpec, batch: int, notes: list, fit: Fitted,
            facts: dict | None = None) -> Estimate:
    import pandas as pd

    c = fit.constants
    feat = costmodel.features(ks, g)
    kl = np.asarray(feat["klass"])
    comp = np.asarray(feat["compute_s"], float)
    mem = np.asarray(feat["memory_s"], float)
    comp_ms, mem_ms = 1e3 * comp / costmodel.efficiencies(kl, c), 1e3 * mem / c.mem_eff
    lat = costmodel.kernel_ms(kl, comp, mem, c)
    df = pd.DataFrame({
        "layer": [k.name for k in ks], "kind": [k.kind for k in ks],
        "op_type": [(k.ops[0] if k.ops else k.kind) for k in ks],
        "fused_ops": [",".join(k.ops) for k in ks], "precision": [k.precision for k in ks],
        "flops": [k.flops for k in ks], "shape_eff": [k.shape_eff for k in ks],
        "bytes": [k.dram_bytes + k.l2_bytes for k in ks], "dram_bytes": [k.dram_bytes for k in ks],
        "l2_bytes": [k.l2_bytes for k in ks], "compute_ms": comp_ms, "memory_ms": mem_ms,
        "overhead_ms": [c.kernel_us / 1e3] * len(ks), "latency_ms": lat,
        "kernel": [True] * len(ks), "note": [k.note for k in ks]})
    if not g.fp8 and any(k.precision == "fp8" for k in ks):
        notes.append(f"{g.name} (sm_{g.compute_capability.replace('.', '')}) has no FP8 "
                     f"tensor cores; FP8 layers priced at FP16")
    total = float(lat.sum())
    kinds = costmodel.validation_kinds(feat, facts)
    q_lo, q_hi, widened = fit.widened(kinds)
    if "fp8_gemm" in kinds and c.tcf8_eff is not None:
        notes.append(f"FP8 tensor-core efficiency fitted ({c.tcf8_eff:.3f}; INT8 {c.tc8_eff:.3f})")
    elif "fp8_gemm" in kinds and not (fit.kind_errors.get("fp8_gemm") or {}).get("evidence"):
        notes.append(costmodel.FP8_EVIDENCE["gemm"])  # else the band's reason cites it
    q_lo, slow_note = _fp8_slow_side(ks, kl, comp, mem, c, g, total, q_lo)
    if slow_note:
        widened = f"{widened}; {slow_note}" if widened else slow_note
    low, high = fit.band(total, q_lo, q_hi)
    src = fit.source if g.name == "L4" else f"{fit.source}; NOT validated on {g.name}"
    if widened:
        src = f"{src}; {widened}"
        notes.append(widened)
    stale = fit.stale_note()
    if stale:
        src = f"{src}; {stale}"
        notes.append(stale)
    return Estimate(df, total, g.name, batch, f"estimated-{g.name.lower().replace(' ', '-')}",
                    notes, low, high, src, c.to_dict())


# kinds of FP8 kernel that Ada evidence shows running no faster than FP16 (costmodel.FP8_EVIDENCE)
FP8_SLOW_KINDS = {"conv": ("conv", "conv"), "gemm": ("GEMM", "gemm_slow"),
                  "bmm": ("GEMM", "gemm_slow")}


def _fp8_slow_side(ks, kl, comp, mem, c: Constants, g: GPUSpec, total: float,
                   q_lo: float) -> tuple[float, str]:
    """(q_low, why): the band's slow side stretched to the graph with its FP8 convs and GEMMs
    at FP16 speed, which is what the Ada evidence showed for them (FP8 convs on an RTX 4090,
    TensorRT#4081; NVIDIA's FP8-configured BERT engine on an L4), citing each."""
    idx = [i for i, k in enumerate(ks) if k.kind in FP8_SLOW_KINDS and kl[i] == costmodel.KLASS_FP8]
    if not idx or not g.fp8:
        return q_lo, ""
    comp2, kl2 = comp.copy(), kl.copy()
    comp2[idx] *= g.peak("fp8") / g.peak("fp16")
    kl2[idx] = costmodel.KLASS_FP16
    alt = float(costmodel.kernel_ms(kl2, comp2, mem, c).sum())
    if alt <= total:
        return q_lo, ""
    q = min(q_lo, (1 + q_lo) * total / alt - 1)
    counts: dict = {}
    for i in idx:
        counts[FP8_SLOW_KINDS[ks[i].kind]] = counts.get(FP8_SLOW_KINDS[ks[i].kind], 0) + 1
    what = " and ".join(f"{n} FP8 {word} kernel(s)" for (word, _), n in counts.items())
    why = "; ".join(costmodel.FP8_EVIDENCE[key] for _, key in counts)
    return q, (f"band's slow side widened to {_fmt(total / (1 + q))} ms: {what} would take the "
               f"graph to {_fmt(alt)} ms at FP16 speed; {why}")


def _precision_notes(facts: dict, gpu: GPUSpec) -> list[str]:
    """Why FP8 and INT8 do (or do not) estimate differently on this graph, in words."""
    out = [f"TensorRT rules evaluated for version {facts['trt_version']}"]
    if facts["mha_fused"]:
        precs = "/".join(sorted(facts.get("mha_fused_precision", ())))
        out.append(f"{facts['mha_fused']} attention block(s) run as one fused MHA kernel ({precs})")
    for r in facts["mha_reasons"]:
        out.append(f"{facts['mha_unfused']} attention block(s) NOT fused ({r}): scores go "
                   f"through memory in three kernels")
    if facts["fp8_conv_fp16"]:
        out.append(f"{facts['fp8_conv_fp16']} FP8 conv(s) have no FP8 kernel on {gpu.name} "
                   f"({gpu.arch}; grouped, <= 16 channels or > 32 taps): priced at FP16, where "
                   f"INT8 would run INT8")
    if facts["fp8_dw_fp16"]:
        out.append(f"{facts['fp8_dw_fp16']} depthwise conv(s) quantized FP8 have no FP8 kernel: "
                   f"priced at FP16 (INT8 has depthwise kernels)")
    if facts["int8_dw"]:
        out.append(f"{facts['int8_dw']} depthwise conv(s) run INT8 on CUDA cores")
    if facts["standalone_q"]:
        out.append(f"{facts['standalone_q']} Q/DQ with nothing to fuse into (network input, or "
                   f"an FP8 input of an FP16-only conv): a reformat kernel each")
    rec = facts.get("recurrent")
    if rec:
        q = f"{rec['quantized']} of them quantized" if rec["quantized"] else "none quantized"
        out.append(f"{rec['nodes']} recurrent node(s) (LSTM/GRU/RNN; {q}) priced as "
                   f"{rec['steps']} sequential per-time-step GEMM kernels (gates x hidden, one "
                   f"kernel per step and direction; rule in l4opt/latency/recurrent.py)")
    tc = facts["tc_kernels"]
    if tc.get("fp8") or tc.get("int8"):
        if gpu.fp8:
            out.append(f"tensor-core kernels by precision: {tc}; INT8 and FP8 share the "
                       f"{gpu.name}'s dense peak ({gpu.tflops.get('int8'):g} TOPS/TFLOPS) and, "
                       f"unless a fit had FP8 rows, one efficiency, so they differ only through "
                       f"the rules above")
        else:
            out.append(f"tensor-core kernels by precision: {tc}; the {gpu.name} ({gpu.arch}) has no "
                       f"FP8 tensor cores: FP8 layers would run in FP16 there")
    out += fp8_int8_verdict(facts)
    return out


def fp8_int8_verdict(facts: dict) -> list[str]:
    """One plain sentence: does this graph run the same kernels in FP8 and in INT8 at the
    TensorRT version the rules assume, and if not, which layers differ."""
    differ, same = facts.get("fp8_int8_differ") or {}, facts.get("fp8_int8_same") or {}
    if not differ and not same:
        return []
    ver = facts["trt_version"]
    if not differ:
        what = "; ".join(f"{n} {k}" for k, n in same.items())
        return [f"FP8 and INT8 run the SAME kernels on this graph's quantized layers at TensorRT "
                f"{ver} ({what}): "
                f"their estimates are equal by construction, not measured to be equal; only an "
                f"L4 measurement can separate them"]
    what = "; ".join(f"{n} {k}" for k, n in differ.items())
    return [f"FP8 and INT8 run DIFFERENT kernels on this graph's quantized layers at "
            f"TensorRT {ver}: {what}"]


def estimate_onnx(model_or_path, gpu="L4", batch: int = 1, float_precision: str = "fp16",
                  dynamic_dims: dict | None = None, trt_version=None,
                  input_quantized: bool = False, refit: str | Path | None = None,
                  fit: Fitted | None = None) -> Estimate:
    """Estimate a (Q/DQ) ONNX graph as TensorRT would run it strongly typed.

    Conv/MatMul/Gemm fed by DequantizeLinear on both data and weights run at the Q/DQ
    precision; other float math at `float_precision` (the baseline deploys as FP16).
    `dynamic_dims` gives every named non-batch axis ({"seq": 128}); `refit` a run
    directory whose `refit_from` constants to use. Refuses with BadInput, saying why: an
    empty file, a graph with no nodes, a cycle, a node reading a tensor nothing produces,
    shapes that contradict each other (ShapeMismatch), weights or a tensor larger than the
    GPU's memory. Shapes come from shape inference, not from running the graph
    (graph_shapes.resolve_shapes)."""
    import onnx

    g = get_gpu(gpu)
    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise BadInput(f"batch must be a positive whole number, got {batch!r}")
    if not isinstance(model_or_path, onnx.ModelProto):
        path = Path(model_or_path)
        if path.is_file() and path.stat().st_size == 0:
            raise BadInput(f"{path} is empty (0 bytes): not an ONNX model")
    try:
        model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else \
            onnx.load(str(model_or_path))
    except Exception as exc:
        raise BadInput(f"cannot read ONNX model {model_or_path}: {exc}") from exc
    graph = costmodel.kernels(model, g, batch=int(batch), float_precision=float_precision,
                              dynamic_dims=dynamic_dims, trt_version=trt_version,
                              input_quantized=input_quantized)
    notes = list(graph.notes) + _precision_notes(graph.facts, g)
    est = _finish(graph.kernels, g, int(batch), notes, fit or fitted(refit), graph.facts)
    est.trt_version = graph.facts["trt_version"]
    return est


def estimate_engine(layers, gpu="L4", batch: int = 1, fit: Fitted | None = None) -> Estimate:
    """Estimate from an engine's layer information (l4opt.engine_report.read_layer_info):
    the engine already says which layers TensorRT fused and at which precision."""
    g = get_gpu(gpu)
    ks = []
    for r in layers.to_dict("records"):
        ins = [d for d in (r.get("in_dims") or []) if d]
        outs = [d for d in (r.get("out_dims") or []) if d]
        scale = batch / max(1, (ins[0][0] if ins and ins[0] else 1))
        prec = r.get("precision", "unknown")
        in_prec = r.get("in_precision", prec)
        act = sum(np.prod(d) * BYTES.get(in_prec, 2) for d in ins) + \
            sum(np.prod(d) * BYTES.get(prec, 2) for d in outs)
        wbytes = r.get("weights_count", 0) * BYTES.get(r.get("weights_type") or prec, 2)
        flops, kind, eff = 0.0, "pointwise", 1.0
        if r.get("param_type") == "Convolution" and outs and r.get("kernel"):
            k = float(np.prod(r["kernel"]))
            cin = ins[0][1] if ins and len(ins[0]) > 1 else 1
            groups = r.get("groups") or 1
            flops = 2.0 * np.prod(outs[0]) * (cin / groups) * k
            kind = "dwconv" if groups > 1 and groups == cin else "conv"
            if kind == "conv" and len(outs[0]) == 4:
                o = outs[0]
                eff = costmodel.gemm_efficiency(o[0] * o[2] * o[3] * scale, o[1] / groups,
                                                cin / groups * k, groups, g.sms)
        elif r.get("param_type") in ("FullyConnected", "MatrixMultiply", "Gemm"):
            flops = 2.0 * r.get("weights_count", 0) * (ins[0][0] if ins else 1)
            kind = "gemm"
        if r.get("layer_type") in ("NoOp", "Shuffle") and r.get("fused_ops", 1) <= 1:
            continue  # no kernel: TensorRT elides it
        p = in_prec if flops and in_prec in ("int8", "fp8") else prec
        ks.append(Kernel(r["name"], kind, p if p in BYTES else "fp16", flops=flops * scale,
                         shape_eff=eff, dram_bytes=act * scale + wbytes,
                         ops=[str(r.get("layer_type"))]))
    return _finish(ks, g, batch, ["from the engine's own layer list (fusions as built)"],
                   fit or fitted())


# ------------------------------------------------------------------ validation

def validate_on_export(export, gpu="TITAN RTX") -> dict:
    """Estimate a measured engine (EngineExport) and compare per layer and end to end."""
    est = estimate_engine(export.layers, gpu=gpu, batch=1)
    out = {"engine": export.name, "gpu": get_gpu(gpu).name, "estimated_ms": est.total_ms}
    if export.summary:
        measured = export.summary["performance"]["GPU Compute Time"]["median"]
        out.update(measured_median_ms=measured,
                   end_to_end_error=(est.total_ms - measured) / measured)
    if export.profile is not None:
        m = export.profile.set_index("name")["average_ms"]
        per = est.layers.assign(measured_ms=est.layers["layer"].map(m)).dropna(subset=["measured_ms"])
        per = per[per["measured_ms"] > 0]
        err = (per["latency_ms"] - per["measured_ms"]) / per["measured_ms"]
        out.update(layers_compared=int(len(per)),
                   per_layer_median_abs_error=float(err.abs().median()),
                   per_layer_p90_abs_error=float(err.abs().quantile(0.9)),
                   profiled_sum_ms=float(per["measured_ms"].sum()))
        out["per_layer"] = per.assign(error=err)[["layer", "op_type", "precision", "latency_ms",
                                                  "measured_ms", "error"]]
    return out


# ------------------------------------------------------------------ truth table

TRUTH_COLUMNS = ("id", "model", "precision", "batch", "shapes", "metric", "value", "trt_version",
                 "fit", "group", "flags", "source", "note")
METRICS = {"throughput_samples_s", "p90_latency_ms", "p99_latency_ms", "mean_latency_ms"}


def truth_table(path: str | Path = TRUTH_CSV):
    """The published L4 measurements, one row each, checked; plus `latency_ms` per batch."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"trt_version": str})
    missing = [c for c in TRUTH_COLUMNS if c not in df.columns]
    if missing:
        raise BadInput(f"{path}: missing columns {missing}")
    bad = df[~df["metric"].isin(METRICS)]
    if len(bad):
        raise BadInput(f"{path}: unknown metric(s) {sorted(set(bad['metric']))}; know {sorted(METRICS)}")
    df["latency_ms"] = np.where(df["metric"] == "throughput_samples_s",
                                1000.0 * df["batch"] / df["value"], df["value"])
    return df


# ------------------------------------------------------------------ learning from measurements

def _row_dims(row: dict) -> dict:
    """Named non-batch axes of a row (from its recorded shapes), for re-estimating it."""
    from l4opt.spec.shapes import batch_axes

    shapes = row.get("shapes") or {}
    axes = dict(shapes.get("axes") or {}) if isinstance(shapes, dict) else {}
    axes.update(row.get("dims") or {})
    inputs = [i for i in (row.get("inputs") or []) if isinstance(i, dict) and i.get("shape")]
    return {k: int(v) for k, v in axes.items() if k not in batch_axes(inputs)}


def measured_rows(run_dir: Path) -> list[dict]:
    """The run's rows measured on an L4 with their ONNX (read-only: the run is not changed)."""
    from l4opt.results.store import Store

    if not (Path(run_dir) / "results.sqlite").exists():
        return []
    st = Store(run_dir, readonly=True)
    try:
        rows = st.rows()
    finally:
        st.close()
    out = []
    for r in rows:
        src = str(r.get("latency_source") or "")
        if not src.startswith("measured") or r.get("latency_ms") in (None, 0):
            continue
        if src != "measured-l4" and "L4" not in str(r.get("latency_gpu") or ""):
            continue  # measured on another GPU: says nothing about the L4 constants
        if not r.get("onnx_path"):
            continue
        out.append(r)
    return out


def _row_features(run_dir: Path, row: dict) -> dict:
    path = Path(run_dir) / row["onnx_path"]
    if not path.exists():
        raise BadInput(f"row {row.get('trial_id') or row.get('key')}: ONNX {path} is missing")
    import onnx

    batch = int(row.get("latency_batch") or 1)
    g = costmodel.kernels(onnx.load(str(path)), "L4", batch=batch,
                          dynamic_dims=_row_dims(row) or None)
    return costmodel.features(g.kernels, "L4")


def refit_from(run_dir: str | Path, progress: bool = False) -> "object":
    """Refit the constants on a run's measured L4 rows and save them in the run directory.

    Rows count when they were measured on an L4 (latency_source "measured-l4") and keep their
    ONNX; their shapes are re-estimated at the row's latency_batch and recorded axes.
    Few rows pull the refit towards the shipped constants (each row is one equation in four
    unknowns); the band comes from leave-one-out over those rows when there are at least 3.
    Returns the before/after table (`refit_table`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput(f"run directory {run_dir} does not exist")
    rows = measured_rows(run_dir)
    if not rows:
        raise BadInput(f"{run_dir} has no measured L4 rows (latency_source 'measured...' with "
                       f"an onnx_path): import measurements first (`l4opt import`)")
    shipped = fitted()
    it = rows
    if progress:
        from l4opt.env import progress as tqdm

        it = tqdm(rows, desc="re-estimating measured rows")
    data, kept, skipped = [], [], []
    for r in it:
        try:
            data.append({"features": _row_features(run_dir, r), "measured_ms": float(r["latency_ms"])})
            kept.append(r)
        except BadInput as exc:  # one lost artifact must not stop the others
            skipped.append(f"{r.get('trial_id') or r.get('key')}: {exc}")
    rows = kept
    if not data:
        raise BadInput(f"none of the {len(skipped)} measured rows of {run_dir} could be "
                       f"re-estimated: {'; '.join(skipped[:3])}")
    weight = 1.0 if len(data) < 6 else 0.3
    c = costmodel.fit(data, start=shipped.constants, prior=shipped.constants, prior_weight=weight)
    if len(data) >= 3:
        errs = []
        for i in range(len(data)):
            rest = data[:i] + data[i + 1:]
            ci = costmodel.fit(rest, start=shipped.constants, prior=shipped.constants,
                               prior_weight=weight)
            errs.append(costmodel.relative_error(costmodel.predict_ms(data[i]["features"], ci),
                                                 data[i]["measured_ms"]))
        q_lo, q_hi = costmodel.band_quantiles(errs, *BAND_QUANTILES)
        src = (f"refitted on {len(data)} measured L4 rows of {run_dir.name}; band = 10th-90th "
               f"percentile of leave-one-out error")
    else:
        errs = []
        q_lo, q_hi = shipped.q_low, shipped.q_high
        src = f"refitted on {len(data)} measured rows of {run_dir.name} (too few for LOO); " \
              f"band from the shipped fit"
    table = []
    for r, d in zip(rows, data):
        before = costmodel.predict_ms(d["features"], shipped.constants)
        after = costmodel.predict_ms(d["features"], c)
        table.append({"trial_id": r.get("trial_id") or r.get("key"), "workload": r.get("workload"),
                      "recipe": r.get("recipe"), "batch": int(r.get("latency_batch") or 1),
                      "measured_ms": d["measured_ms"], "est_before_ms": before,
                      "error_before": costmodel.relative_error(before, d["measured_ms"]),
                      "est_after_ms": after,
                      "error_after": costmodel.relative_error(after, d["measured_ms"])})
    out = {"schema_version": 1, "costmodel": costmodel.COSTMODEL_VERSION, "constants": c.to_dict(),
           "band": {"q_low": q_lo, "q_high": q_hi, "quantiles": list(BAND_QUANTILES),
                    "source": src, "loo_errors": errs},
           "kind_errors": shipped.kind_errors,  # the user's rows do not split by kind
           "shipped_constants": shipped.constants.to_dict(), "rows": table, "skipped": skipped}
    from l4opt.files import atomic_write

    atomic_write(run_dir / REFIT_NAME, json.dumps(out, indent=1).encode())
    return refit_table(run_dir)


def refit_table(run_dir: str | Path):
    """Estimate vs measured L4 latency before and after `refit_from`, one row per trial
    (a DataFrame for the report); empty when the run was never refitted."""
    import pandas as pd

    cols = ["trial_id", "workload", "recipe", "batch", "measured_ms", "est_before_ms",
            "error_before", "est_after_ms", "error_after"]
    path = refit_path(run_dir)
    if not path.exists():
        return pd.DataFrame(columns=cols)
    try:
        d = json.loads(path.read_text())
        return pd.DataFrame(d["rows"], columns=cols)
    except (ValueError, KeyError) as exc:
        raise BadInput(f"{path} is not an l4opt refit file ({exc}); rerun "
                       f"`l4opt estimate --refit-from {run_dir}`") from exc
