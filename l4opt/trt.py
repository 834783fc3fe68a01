"""TensorRT 10/11 on a GPU: build strongly typed engines from Q/DQ ONNX, cache them, export
layer information and per-layer profiles in trtexec's JSON shapes, and benchmark like trtexec.

The only module that imports tensorrt, always inside a function: importing it on a machine
without TensorRT or a GPU works and initialises nothing. Device memory, streams, events and
CUDA graphs go through cuda-python (`cuda.bindings.runtime`), telemetry through NVML.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import env
from .errors import BadInput, StageFailed, UnsupportedOnL4

SCHEMA_VERSION = 1
WARMUP_MS = 200.0       # trtexec defaults
DURATION_S = 3.0


@dataclass
class BuildSettings:
    """How an engine is built; part of the engine's cache key."""

    opt_level: int = 3                         # builder optimization level (0-5)
    workspace_mib: int = 4096
    batch: tuple = (1, 8, 64)                  # min / opt / max of the dynamic batch axis
    dims: dict = field(default_factory=dict)   # other named dynamic axes -> value
    strongly_typed: bool = True                # precision from Q/DQ, never builder flags
    profiling_verbosity: str = "detailed"
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batch"] = list(self.batch)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BuildSettings":
        d = dict(d)
        if d.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise BadInput(f"build settings schema {d['schema_version']} is newer than this "
                           f"l4opt ({SCHEMA_VERSION}); upgrade l4opt")
        d["batch"] = tuple(d.get("batch", (1, 8, 64)))
        return cls(**d)

    def shapes(self, inputs: list[dict]) -> dict[str, tuple[list, list, list]]:
        """(min, opt, max) shapes per input from shapes with named dynamic axes."""
        out = {}
        for inp in inputs:
            per = []
            for b in self.batch:
                s = []
                for i, d in enumerate(inp["shape"]):
                    if isinstance(d, int) and d > 0:
                        s.append(d)
                    elif isinstance(d, str) and d in self.dims:
                        s.append(int(self.dims[d]))
                    elif i == 0:
                        s.append(int(b))
                    else:
                        raise BadInput(f"input {inp['name']!r} axis {i} ({d}) is dynamic; "
                                       f"give its value in BuildSettings.dims")
                per.append(s)
            out[inp["name"]] = tuple(per)
        return out


def _trt(why: str):
    trt = env.require("tensorrt", why)
    if not hasattr(trt, "Builder"):
        raise env.MissingDependency("tensorrt", "gpu", f"{why} (the installed 'tensorrt' is a "
                                    f"stub without TensorRT's libraries)")
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise env.MissingDependency("cuda-python", "gpu", "timing engines") from exc
    return cudart


def _check(result):
    """cuda-python returns (err, *values); raise on an error, return the values."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise StageFailed("cuda", f"CUDA call failed with error {err}")
    return vals[0] if len(vals) == 1 else vals


def gpu_identity() -> dict:
    g = env.gpu()
    if g is None:
        raise StageFailed("engine", "no NVIDIA GPU visible (NVML found none)")
    return g


def check_format(quantized_dtypes, compute_capability: str) -> None:
    """Refuse formats this GPU cannot run: FP8 below sm_89, FP4/MX below sm_100."""
    cc = tuple(int(x) for x in str(compute_capability).split("."))
    for dt in quantized_dtypes or ():
        d = str(dt).lower()
        if ("float4" in d or "fp4" in d or d.startswith("mx")) and cc < (10, 0):
            raise UnsupportedOnL4(f"{dt} needs Blackwell (sm_100+); this GPU is sm_"
                                  f"{''.join(map(str, cc))}")
        if ("float8" in d or "fp8" in d) and cc < (8, 9):
            raise UnsupportedOnL4(f"{dt} needs FP8 tensor cores (sm_89+, e.g. L4, H100); this "
                                  f"GPU is sm_{''.join(map(str, cc))}: use int8")


def cache_key(onnx_path, settings: BuildSettings, trt_version: str, gpu_name: str,
              compute_capability: str) -> str:
    h = hashlib.sha256()
    with open(onnx_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps([settings.to_dict(), trt_version, gpu_name, compute_capability],
                        sort_keys=True).encode())
    return h.hexdigest()[:20]


@dataclass
class EngineRecord:
    path: str
    key: str
    trt_version: str
    gpu: str
    compute_capability: str
    settings: dict
    build_s: float | None = None
    cached: bool = False


def build_engine(onnx_path, settings: BuildSettings, cache_dir, inputs: list[dict],
                 quantized_dtypes=()) -> EngineRecord:
    """Build (or reuse) a strongly typed engine; the timing cache lives in cache_dir."""
    trt = _trt("building TensorRT engines")
    g = gpu_identity()
    check_format(quantized_dtypes, g["compute_capability"])
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(onnx_path, settings, trt.__version__, g["name"], g["compute_capability"])
    engine_path = cache_dir / f"{key}.engine"
    sidecar = engine_path.with_suffix(".engine.json")
    if engine_path.exists() and sidecar.exists():
        return EngineRecord(**{**json.loads(sidecar.read_text()), "cached": True})
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() if hasattr(e, "node_name") else e.node()
            errs.append(f"node {node}: {e.desc()}")
        raise StageFailed("engine build", "TensorRT's ONNX parser rejected the graph: "
                          + "; ".join(errs[:5]), str(onnx_path))
    config = builder.create_builder_config()
    config.builder_optimization_level = settings.opt_level
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, settings.profiling_verbosity.upper())
    tc_path = cache_dir / "timing.cache"
    timing_cache = config.create_timing_cache(tc_path.read_bytes() if tc_path.exists() else b"")
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in settings.shapes(inputs).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t
    if serialized is None:
        raise StageFailed("engine build", "TensorRT returned no engine (see the log above)",
                          str(onnx_path))
    tmp = engine_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    tc_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    rec = EngineRecord(str(engine_path), key, trt.__version__, g["name"], g["compute_capability"],
                       settings.to_dict(), round(build_s, 3))
    sidecar.write_text(json.dumps(asdict(rec), indent=1))
    return rec


def load_engine(path):
    """Deserialize an engine, refusing one built for another GPU or TensorRT version."""
    trt = _trt("loading TensorRT engines")
    path = Path(path)
    sidecar = path.with_suffix(path.suffix + ".json")
    if sidecar.exists():
        meta = json.loads(sidecar.read_text())
        check_sidecar(meta, trt.__version__, gpu_identity())
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise StageFailed("engine load", "TensorRT could not deserialize the engine", str(path))
    return engine


def check_sidecar(meta: dict, trt_version: str, gpu: dict) -> None:
    """An engine runs only on the GPU model and TensorRT version that built it."""
    if meta.get("compute_capability") != gpu["compute_capability"] or meta.get("gpu") != gpu["name"]:
        raise BadInput(f"engine was built for {meta.get('gpu')} (sm_{meta.get('compute_capability')}) "
                       f"but this GPU is {gpu['name']} (sm_{gpu['compute_capability']}); rebuild it "
                       f"here (engines are not portable across GPU models)")
    if meta.get("trt_version") != trt_version:
        raise BadInput(f"engine was built with TensorRT {meta.get('trt_version')} but "
                       f"{trt_version} is installed; rebuild it with this version")


def export_layer_info(engine, path) -> Path:
    """Engine inspector JSON, the shape trtexec --exportLayerInfo writes."""
    trt = _trt("inspecting engines")
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    Path(path).write_text(info)
    return Path(path)


class _Buffers:
    """Device buffers for every I/O tensor at one input shape, allocated once."""

    def __init__(self, engine, context, shapes: dict[str, list], cudart):
        trt = _trt("allocating buffers")
        self.cudart, self.ptrs = cudart, []
        for name, shape in shapes.items():
            context.set_input_shape(name, shape)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = context.get_tensor_shape(name)
            nbytes = int(np.prod(shape)) * np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
            ptr = _check(cudart.cudaMalloc(max(nbytes, 1)))
            _check(cudart.cudaMemset(ptr, 0, max(nbytes, 1)))
            context.set_tensor_address(name, int(ptr))
            self.ptrs.append(ptr)

    def free(self):
        for p in self.ptrs:
            self.cudart.cudaFree(p)


def _input_shapes(engine, batch: int, dims: dict | None = None) -> dict[str, list]:
    trt = _trt("timing engines")
    out = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            continue
        lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
        shape = list(opt)
        shape[0] = batch
        if not lo[0] <= batch <= hi[0]:
            raise BadInput(f"batch {batch} is outside the engine's profile [{lo[0]}, {hi[0]}]")
        out[name] = shape
    return out


def profile_layers(engine, path, batch: int = 1, iterations: int = 200) -> Path:
    """Per-layer times over `iterations` runs, written as trtexec --exportProfile does."""
    trt = _trt("profiling engines")
    cudart = _cudart()

    class Profiler(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.times: dict[str, list] = {}

        def report_layer_time(self, layer_name, ms):
            self.times.setdefault(layer_name, []).append(ms)

    context = engine.create_execution_context()
    prof = Profiler()
    context.profiler = prof
    bufs = _Buffers(engine, context, _input_shapes(engine, batch), cudart)
    stream = _check(cudart.cudaStreamCreate())
    try:
        for _ in range(iterations):
            context.execute_async_v3(int(stream))
            _check(cudart.cudaStreamSynchronize(stream))
    finally:
        bufs.free()
        cudart.cudaStreamDestroy(stream)
    total = sum(sum(v) for v in prof.times.values()) or 1.0
    recs = [{"count": iterations}]
    for name, v in prof.times.items():
        recs.append({"name": name, "timeMs": float(sum(v)), "averageMs": float(np.mean(v)),
                     "medianMs": float(np.median(v)), "percentage": 100.0 * sum(v) / total})
    Path(path).write_text(json.dumps(recs, indent=1))
    return Path(path)


class _Telemetry:
    """NVML samples (SM/memory clock, power, temperature) taken while a benchmark runs."""

    def __init__(self, period_s: float = 0.05):
        self.period, self.samples, self._stop = period_s, [], threading.Event()

    def __enter__(self):
        self.nvml = env.require("pynvml", "recording GPU clocks and power")
        self.nvml.nvmlInit()
        self.h = self.nvml.nvmlDeviceGetHandleByIndex(0)
        self.power_limit_w = self.nvml.nvmlDeviceGetEnforcedPowerLimit(self.h) / 1000.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        n = self.nvml
        while not self._stop.is_set():
            self.samples.append({
                "sm_clock_mhz": n.nvmlDeviceGetClockInfo(self.h, n.NVML_CLOCK_SM),
                "mem_clock_mhz": n.nvmlDeviceGetClockInfo(self.h, n.NVML_CLOCK_MEM),
                "power_w": n.nvmlDeviceGetPowerUsage(self.h) / 1000.0,
                "temperature_c": n.nvmlDeviceGetTemperature(self.h, n.NVML_TEMPERATURE_GPU)})
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.nvml.nvmlShutdown()

    def summary(self) -> dict:
        out = {"power_limit_w": self.power_limit_w, "samples": len(self.samples)}
        for k in ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temperature_c"):
            v = [s[k] for s in self.samples]
            if v:
                out[k] = {"min": float(min(v)), "mean": float(np.mean(v)), "max": float(max(v))}
        return out


def source_label(gpu_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower().replace("nvidia", "")).strip("-")
    return f"measured-{slug}"


def benchmark(engine_path, batch: int = 1, warmup_ms: float = WARMUP_MS,
              duration_s: float = DURATION_S, cuda_graph: bool = True,
              transfers: bool = False) -> dict:
    """Time an engine like trtexec: time-based warm-up, then back-to-back launches for
    `duration_s`, each bracketed by CUDA events; no host transfers unless asked."""
    from .bench import latency_stats, stability_warnings, throughput

    trt = _trt("timing engines")
    cudart = _cudart()
    g = gpu_identity()
    engine = load_engine(engine_path)
    context = engine.create_execution_context()
    bufs = _Buffers(engine, context, _input_shapes(engine, batch), cudart)
    stream = _check(cudart.cudaStreamCreate())
    start, end = _check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate())
    host = None
    if transfers:
        host = [np.zeros(1 << 20, np.uint8) for _ in bufs.ptrs]
    graph_exec = None
    try:
        context.execute_async_v3(int(stream))  # first run outside capture (lazy init)
        _check(cudart.cudaStreamSynchronize(stream))
        if cuda_graph:
            _check(cudart.cudaStreamBeginCapture(
                stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            context.execute_async_v3(int(stream))
            graph = _check(cudart.cudaStreamEndCapture(stream))
            graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0))

        def launch():
            if graph_exec is not None:
                _check(cudart.cudaGraphLaunch(graph_exec, stream))
            else:
                context.execute_async_v3(int(stream))

        t0 = time.perf_counter()
        while (time.perf_counter() - t0) * 1e3 < warmup_ms:
            launch()
            _check(cudart.cudaStreamSynchronize(stream))
        gpu_ms, enq_ms, lat_ms = [], [], []
        with _Telemetry() as tel:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < duration_s:
                h0 = time.perf_counter()
                _check(cudart.cudaEventRecord(start, stream))
                launch()
                _check(cudart.cudaEventRecord(end, stream))
                enq_ms.append((time.perf_counter() - h0) * 1e3)
                _check(cudart.cudaEventSynchronize(end))
                lat_ms.append((time.perf_counter() - h0) * 1e3)
                gpu_ms.append(float(_check(cudart.cudaEventElapsedTime(start, end))))
    finally:
        bufs.free()
        cudart.cudaEventDestroy(start)
        cudart.cudaEventDestroy(end)
        cudart.cudaStreamDestroy(stream)
    gpu = latency_stats(gpu_ms)
    return {
        "source": source_label(g["name"]), "gpu": g["name"],
        "compute_capability": g["compute_capability"], "trt_version": trt.__version__,
        "batch": batch, "cuda_graph": cuda_graph, "transfers": transfers,
        "gpu_compute_ms": gpu, "enqueue_ms": latency_stats(enq_ms),
        "host_latency_ms": latency_stats(lat_ms),
        **throughput(gpu["median"], batch),
        "warnings": stability_warnings(gpu_ms, enq_ms), "telemetry": tel.summary(),
        "iterations": len(gpu_ms), "duration_s": duration_s, "warmup_ms": warmup_ms,
    }


def batch_sweep(engine_path, batches=(1, 2, 4, 8, 16, 32, 64), **kw) -> list[dict]:
    """Latency and throughput per batch size: the latency-throughput curve of one engine."""
    return [benchmark(engine_path, batch=b, **kw) for b in batches]


def measure_onnx(onnx_path, inputs: list[dict], batch_range, cache_dir, *, quantized_dtypes=(),
                 dims: dict | None = None, duration_s: float = DURATION_S) -> dict:
    """Build (or reuse) the engine of a trial's ONNX and time it at the smallest and at the
    optimum batch: the latency fields of a trial row, measured on this GPU."""
    lo, opt, hi = (int(b) for b in batch_range)
    rec = build_engine(onnx_path, BuildSettings(batch=(lo, opt, hi), dims=dict(dims or {})),
                       cache_dir, inputs, quantized_dtypes)
    small = benchmark(rec.path, batch=lo, duration_s=duration_s)
    best = benchmark(rec.path, batch=opt, duration_s=duration_s)
    return {
        "latency_ms": small["gpu_compute_ms"]["median"],
        "latency_p99_ms": small["gpu_compute_ms"]["p99"], "latency_batch": lo,
        "throughput_samples_s": best["throughput_samples_s"], "throughput_batch": opt,
        "latency_source": small["source"], "latency_gpu": small["gpu"],
        "engine": {**asdict(rec), "warnings": small["warnings"] + best["warnings"],
                   "telemetry": small["telemetry"]},
    }
