"""Readers for TensorRT engine exports (trtexec --exportLayerInfo/--exportProfile/--exportTimes
and the profile metadata), and the engine lint: "why isn't it faster?".

The same JSON shapes are written by l4opt.trt on a GPU, so one reader serves both.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from l4opt.errors import BadInput

COMPUTE_PARAMS = {"Convolution", "Deconvolution", "FullyConnected", "MatrixMultiply", "Gemm"}
COMPUTE_TYPE_HINTS = ("Convolution", "Gemm", "MatrixMultiply", "MatMul", "Myelin")
_PRECISIONS = (("FP8", "fp8"), ("Int8", "int8"), ("INT8", "int8"), ("FP16", "fp16"),
               ("Half", "fp16"), ("BF16", "bf16"), ("FP32", "fp32"), ("Float", "fp32"),
               ("Int32", "int32"), ("Int64", "int64"), ("Bool", "bool"))


# the largest export read: a 3 s trtexec timing run is ~10^4 records, ~3 MB; a 10-minute
# --duration run of a tiny engine stays under this
MAX_EXPORT_BYTES = 64 << 20
# every per-iteration field trtexec --exportTimes writes (ms); the first three are required
TIMING_REQUIRED = ("startComputeMs", "endComputeMs", "computeMs")
TIMING_FIELDS = TIMING_REQUIRED + ("startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs",
                                   "startD2hMs", "endD2hMs", "h2dMs", "d2hMs", "latencyMs",
                                   "enqueueMs")
MAX_MS = 1e9  # ~11 days: a time beyond it is not a measurement


def parse_json(data: bytes, source, what: str):
    """JSON text of an export, refused with its file name when it is not JSON (or nests too
    deep for the parser)."""
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise BadInput(f"{what} file {source} nests JSON too deep to be an export") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{what} file {source} is not JSON ({exc}); export it with trtexec or "
                       f"l4opt.latency.trt") from exc


def read_limited(path, what: str, limit: int = MAX_EXPORT_BYTES) -> bytes:
    """A file's bytes, refused (BadInput naming it) when missing, unreadable or over limit."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError as exc:
        raise BadInput(f"{what} file not found: {p}") from exc
    except OSError as exc:
        raise BadInput(f"{what} file {p} is unreadable: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise BadInput(f"{what} file {p} is larger than {limit >> 20} MB, the most l4opt reads "
                       f"from an export")
    return data


def _load_json(path, what: str):
    return parse_json(read_limited(path, what), path, what)


def check_timing(data, source) -> None:
    """Refuse (BadInput naming the file, record and field) a timing export that is not a
    non-empty list of records, each with the fields of the first, every time a finite number
    of milliseconds >= 0, and no iteration ending before it started."""
    hint = "(trtexec --exportTimes)"
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise BadInput(f"{source} is not a per-iteration timing export: expected a non-empty "
                       f"JSON list of records with computeMs {hint}")
    missing = [k for k in TIMING_REQUIRED if k not in data[0]]
    if missing:
        raise BadInput(f"{source}: record 0 has no {', '.join(missing)}: not a per-iteration "
                       f"timing export {hint}")
    keys = [k for k in TIMING_FIELDS if k in data[0]]
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise BadInput(f"{source}: record {i} is {type(r).__name__}, not a JSON object")
        for k in keys:
            if k not in r:
                raise BadInput(f"{source}: record {i} has no {k} (record 0 has it)")
            v = r[k]
            if type(v) not in (int, float) or not (0 <= v <= MAX_MS):
                raise BadInput(f"{source}: record {i} field {k} = {v!r}: a time must be a "
                               f"finite number of milliseconds >= 0")
        if r["endComputeMs"] < r["startComputeMs"]:
            raise BadInput(f"{source}: record {i} ends (endComputeMs {r['endComputeMs']}) "
                           f"before it starts (startComputeMs {r['startComputeMs']})")


def timing_frame(data, source) -> "pandas.DataFrame":  # noqa: F821
    """A checked timing export (check_timing) as a DataFrame of its known fields."""
    import pandas as pd

    check_timing(data, source)
    keys = [k for k in TIMING_FIELDS if k in data[0]]
    return pd.DataFrame({k: [float(r[k]) for r in data] for k in keys})


def precision_of(fmt: str | None) -> str:
    """Datatype of a TensorRT 'Format/Datatype' string, e.g. '... row major Int8 format' -> int8."""
    if not fmt:
        return "unknown"
    for token, name in _PRECISIONS:
        if re.search(rf"\b{token}\b", fmt):
            return name
    return "unknown"


def unique_names(names) -> list[str]:
    """Make repeated layer names unique as TREx does (trt-engine-explorer parser.py,
    disambiguate_layer_names): the second 'x' becomes 'x_2', the third 'x_3', in order."""
    seen, out = {}, []
    for n in names:
        if n in seen:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        else:
            seen[n] = 1
        out.append(n)
    return out


def read_layer_info(path) -> "pandas.DataFrame":  # noqa: F821
    """One row per engine layer from layer information JSON (detailed or names-only)."""
    import pandas as pd

    data = _load_json(path, "layer information")
    layers = data.get("Layers") if isinstance(data, dict) else None
    if layers is None:
        raise BadInput(f"{path} is not TensorRT layer information: expected a JSON object with "
                       f"'Layers' (trtexec --exportLayerInfo --profilingVerbosity=detailed)")
    rows = []
    for i, layer in enumerate(layers):
        if isinstance(layer, str):  # profilingVerbosity=layer_names_only
            rows.append({"index": i, "name": layer, "layer_type": "unknown",
                         "precision": "unknown", "fused_ops": layer.count(" + ") + 1})
            continue
        ins, outs = layer.get("Inputs") or [], layer.get("Outputs") or []
        w = layer.get("Weights") or {}
        name = layer.get("Name", f"layer_{i}")
        rows.append({
            "index": i, "name": name, "layer_type": layer.get("LayerType", "unknown"),
            "param_type": layer.get("ParameterType"), "origin": layer.get("Origin"),
            "precision": precision_of(outs[0].get("Format/Datatype") if outs else None),
            "in_precision": precision_of(ins[0].get("Format/Datatype") if ins else None),
            "in_format": ins[0].get("Format/Datatype") if ins else None,
            "out_format": outs[0].get("Format/Datatype") if outs else None,
            "in_dims": [x.get("Dimensions") for x in ins],
            "out_dims": [x.get("Dimensions") for x in outs],
            "weights_type": precision_of(w.get("Type")) if w else None,
            "weights_count": int(w.get("Count", 0)) if w else 0,
            "kernel": layer.get("Kernel"), "groups": layer.get("Groups"),
            "out_maps": layer.get("OutMaps"), "stride": layer.get("Stride"),
            "tactic": layer.get("TacticName") or layer.get("TacticValue"),
            "fused_ops": name.count(" + ") + 1,
        })
    df = pd.DataFrame(rows)
    df["raw_name"] = df["name"]
    df["name"] = unique_names(df["name"])  # profile rows are joined on it
    return df


def read_profile(path) -> "pandas.DataFrame":  # noqa: F821
    """Per-layer times from a profile JSON ([{"count": N}, {name, timeMs, averageMs, ...}, ...])."""
    import pandas as pd

    data = _load_json(path, "profile")
    if not isinstance(data, list) or not data or not all(isinstance(x, dict) for x in data):
        raise BadInput(f"{path} is not a TensorRT per-layer profile: expected a JSON list "
                       f"(trtexec --exportProfile)")
    count = data[0].get("count") if "count" in data[0] else None
    recs = [r for r in data if "name" in r]
    if not recs:
        raise BadInput(f"{path} holds no per-layer records")
    df = pd.DataFrame([{"name": r["name"], "time_ms": float(r.get("timeMs", np.nan)),
                        "average_ms": float(r.get("averageMs", np.nan)),
                        "median_ms": float(r.get("medianMs", np.nan)),
                        "percentage": float(r.get("percentage", np.nan))} for r in recs])
    df["raw_name"] = df["name"]
    df["name"] = unique_names(df["name"])  # same rule and order as read_layer_info
    df.attrs["count"] = count
    return df


def read_timing(path) -> "pandas.DataFrame":  # noqa: F821
    """Per-iteration records from a times JSON (trtexec --exportTimes), checked: every time
    finite and >= 0 (check_timing)."""
    return timing_frame(_load_json(path, "timing"), path)


def read_summary(path) -> dict:
    """Performance summary, inference options and device of a profile metadata JSON."""
    data = _load_json(path, "profile metadata")
    perf = data.get("performance_summary") if isinstance(data, dict) else None
    if perf is None:
        raise BadInput(f"{path} has no 'performance_summary' (expected trtexec's "
                       f"*.profile.metadata.json)")
    names = ("min", "max", "mean", "median", "p90", "p95", "p99")
    summary = {k: dict(zip(names, v)) if isinstance(v, list) else v for k, v in perf.items()}
    return {"performance": summary, "inference_options": data.get("inference_options", {}),
            "device": data.get("device_information", {})}


def warmup_ms(summary: dict | None, default: float = 200.0) -> float:
    """The warm-up trtexec ran before timing ('3s (+ 200ms warm up)')."""
    opt = (summary or {}).get("inference_options", {}).get("Duration", "")
    m = re.search(r"([\d.]+)\s*ms warm", str(opt))
    return float(m.group(1)) if m else default


def timed_iterations(timing, summary: dict | None = None):
    """The iterations trtexec's summary covers: those that started after the warm-up.

    trtexec's rule is absolute (sampleReporting.cpp: computeStart >= warmUp ms, times counted
    from the start of the warm-up). Since TensorRT 8.5 --exportTimes already leaves the warm-up
    records out, so on a TRT 10/11 export this keeps every record; on an older export (which
    starts near 0 ms) it drops the warm-up ones.
    """
    start = timing["startComputeMs"] if "startComputeMs" in timing else timing["startEnqMs"]
    return timing[start >= warmup_ms(summary)]


def walltime_throughput(timed, batch: int = 1) -> dict:
    """trtexec's Throughput: queries over the host wall time of the timed phase (from the
    first query's start to the last one's end, sampleReporting.cpp printPerformanceReport);
    the arithmetic is l4opt.trt.wall_throughput's, which l4opt's own benchmark uses."""
    from l4opt.latency.trt import wall_throughput

    t = timed
    first = t["startH2dMs"].iloc[0] if "startH2dMs" in t else t["startComputeMs"].iloc[0]
    last = t["endD2hMs"].iloc[-1] if "endD2hMs" in t else t["endComputeMs"].iloc[-1]
    wall_ms = float(last - first)
    return {"iterations": int(len(t)), "walltime_ms": wall_ms,
            **wall_throughput(int(len(t)), wall_ms / 1e3, batch)}


@dataclass
class EngineExport:
    """What lies next to one engine: layer info, profile, timing, summary, build metadata."""

    name: str
    layers: object = None
    profile: object = None
    timing: object = None
    summary: dict | None = None
    build: dict | None = None
    paths: dict = field(default_factory=dict)


def load_engine_export(prefix_or_graph_path) -> EngineExport:
    """Every export found next to '<x>.engine.graph.json' (or given the '<x>.engine' prefix)."""
    p = str(prefix_or_graph_path)
    prefix = p[:-len(".graph.json")] if p.endswith(".graph.json") else p
    files = {"layers": ".graph.json", "profile": ".profile.json", "timing": ".timing.json",
             "summary": ".profile.metadata.json", "build": ".build.metadata.json"}
    found = {k: Path(prefix + s) for k, s in files.items() if Path(prefix + s).exists()}
    if not found:
        raise BadInput(f"no TensorRT exports found for {prefix} (looked for "
                       f"{', '.join(prefix + s for s in files.values())})")
    ex = EngineExport(name=Path(prefix).name, paths={k: str(v) for k, v in found.items()})
    readers = {"layers": read_layer_info, "profile": read_profile, "timing": read_timing,
               "summary": read_summary, "build": lambda q: _load_json(q, "build metadata")}
    for k, path in found.items():
        setattr(ex, k, readers[k](path))
    return ex


# ------------------------------------------------------------------ lint

@dataclass
class Finding:
    kind: str
    layer: str
    time_ms: float | None
    share: float | None
    message: str


@dataclass
class LintReport:
    """Where an engine's time goes, and what keeps it from being faster."""

    total_ms: float | None
    by_precision: list[dict]
    by_layer_type: list[dict]
    findings: list[Finding]
    quantized_engine: bool
    has_profile: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary()
        return d

    def summary(self) -> dict:
        out = {}
        for f in self.findings:
            s = out.setdefault(f.kind, {"count": 0, "time_ms": 0.0})
            s["count"] += 1
            s["time_ms"] += f.time_ms or 0.0
        return out

    def to_text(self) -> str:
        lines = []
        tot = f"{self.total_ms:.4f} ms per inference (sum of profiled layers)" \
            if self.total_ms is not None else "no profile: times unknown"
        lines.append(f"engine: {tot}; {'quantized' if self.quantized_engine else 'not quantized'}")
        for title, table, key in (("time by precision", self.by_precision, "precision"),
                                  ("time by layer type", self.by_layer_type, "layer_type")):
            lines.append(f"\n{title}:")
            for r in table:
                t = f"{r['time_ms']:.4f} ms {100 * r['share']:5.1f}%" if r["time_ms"] is not None \
                    else "time n/a"
                lines.append(f"  {str(r[key]):28s} {r['layers']:4d} layers  {t}")
        lines.append("\nfindings:")
        for kind, s in self.summary().items():
            lines.append(f"  {kind}: {s['count']} layers, {s['time_ms']:.4f} ms - {ADVICE[kind]}")
        for f in self.findings:
            t = f"{f.time_ms:.4f} ms ({100 * f.share:.1f}%)" if f.time_ms is not None else "n/a"
            lines.append(f"  [{f.kind}] {f.layer[:80]}: {t}")
        return "\n".join(lines)


ADVICE = {
    "unfused-qdq": "standalone Quantize/Dequantize kernels: place Q/DQ where TensorRT can fuse "
                   "them into the consuming conv/matmul (or quantize the producer's output)",
    "reformat": "layout or precision copies between layers that disagree on format",
    "high-precision": "conv/matmul left in FP16/FP32 inside a quantized engine: add Q/DQ on its "
                      "input and weights if the accuracy budget allows",
}


def _is_qdq(row) -> bool:
    return row.get("origin") == "QDQ" or bool(re.match(r"^(Quantize|Dequantize)Linear[_\w]*$",
                                                       str(row["name"])))


def _is_reformat(row) -> bool:
    return (row.get("origin") == "REFORMAT" or "Reformatting CopyNode" in str(row["name"])
            or (row.get("layer_type") == "Reformat" and not _is_qdq(row)))


def _is_compute(row) -> bool:
    return (row.get("param_type") in COMPUTE_PARAMS
            or any(h in str(row.get("layer_type")) for h in COMPUTE_TYPE_HINTS))


def lint(layers, profile=None) -> LintReport:
    """Share of time per precision and layer type; unfused Q/DQ, reformats, high-precision math."""
    df = layers.copy()
    if profile is not None and len(profile):
        t = profile.set_index("name")["average_ms"]
        df["time_ms"] = df["name"].map(t)
        total = float(df["time_ms"].sum())
    else:
        df["time_ms"] = np.nan
        total = None
    has_t = total is not None and total > 0

    def share_table(col):
        out = []
        for key, g in df.groupby(col, dropna=False, sort=False):
            tm = float(g["time_ms"].sum()) if has_t else None
            out.append({col: key, "layers": int(len(g)), "time_ms": tm,
                        "share": tm / total if has_t else None})
        return sorted(out, key=lambda r: -(r["time_ms"] or 0))

    quantized = bool(df["precision"].isin(["int8", "fp8"]).any())
    findings = []
    for _, r in df.iterrows():
        row = r.to_dict()
        tm = float(row["time_ms"]) if has_t and not np.isnan(row["time_ms"]) else None
        share = tm / total if tm is not None else None
        if _is_qdq(row) and row["fused_ops"] == 1:
            findings.append(Finding(
                "unfused-qdq", row["name"], tm, share,
                f"standalone {row['layer_type']} {row.get('in_precision')}->{row['precision']}: "
                f"the Q/DQ was not fused into a neighbouring layer (move it next to the "
                f"conv/matmul that consumes it, or quantize the producer's output)"))
        elif _is_reformat(row):
            findings.append(Finding(
                "reformat", row["name"], tm, share,
                f"layout/precision copy {row.get('in_format')} -> {row.get('out_format')}: "
                f"neighbouring layers disagree on format"))
        elif quantized and _is_compute(row) and row["precision"] in ("fp32", "fp16") \
                and row.get("in_precision") in ("fp32", "fp16"):
            findings.append(Finding(
                "high-precision", row["name"], tm, share,
                f"{row['layer_type']} runs in {row['precision']} inside a quantized engine: "
                f"add Q/DQ on its input and weights if accuracy allows"))
    findings.sort(key=lambda f: -(f.time_ms or 0))
    return LintReport(total_ms=total, by_precision=share_table("precision"),
                      by_layer_type=share_table("layer_type"), findings=findings,
                      quantized_engine=quantized, has_profile=has_t)
