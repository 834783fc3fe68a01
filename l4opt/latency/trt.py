"""TensorRT 10/11 on a GPU: build strongly typed engines from Q/DQ ONNX, cache them, export
layer information and per-layer profiles in trtexec's JSON shapes, and benchmark like trtexec.

The only module that imports tensorrt, always inside a function: importing it on a machine
without TensorRT or a GPU works and initialises nothing. Device memory, streams, events and
CUDA graphs go through cuda-python (`cuda.bindings.runtime`), telemetry through NVML (the
device CUDA runs on, found by UUID, so CUDA_VISIBLE_DEVICES is respected).

Every TensorRT call that reports failure by its return (a bool, None, -1) is checked, as
Polygraphy's runner and loader do; a failure raises StageFailed naming the call. The
decisions (flags per version, cache names, shapes, device matching, dtype handling,
throughput arithmetic) are plain functions at the top, tested on a CPU.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from l4opt import env
from l4opt.errors import BadInput, StageFailed, UnsupportedOnL4
from l4opt.spec.shapes import batch_axes
from l4opt.files import atomic_write

BUILD_SCHEMA = 1
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
    schema_version: int = BUILD_SCHEMA

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batch"] = list(self.batch)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BuildSettings":
        d = dict(d)
        if d.get("schema_version", BUILD_SCHEMA) > BUILD_SCHEMA:
            raise BadInput(f"build settings schema {d['schema_version']} is newer than this "
                           f"l4opt ({BUILD_SCHEMA}); upgrade l4opt")
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


# ------------------------------------------------------------------ pure decisions (CPU-tested)

def trt_major(version: str) -> int:
    """Major version of a TensorRT version string ('10.13.0.35' -> 10)."""
    m = re.match(r"\s*(\d+)", str(version))
    if not m:
        raise BadInput(f"cannot read a TensorRT version from {version!r}")
    return int(m.group(1))


def network_flag_names(trt_version: str, strongly_typed: bool = True) -> list[str]:
    """NetworkDefinitionCreationFlag names to set. TensorRT 11 builds strongly typed networks
    only and its STRONGLY_TYPED flag is a deprecated no-op, so it is left out there."""
    return ["STRONGLY_TYPED"] if strongly_typed and trt_major(trt_version) < 11 else []


def timing_cache_name(trt_version: str, gpu_name: str, compute_capability: str) -> str:
    """One timing cache file per TensorRT version and GPU model: tactic timings do not
    carry across either."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(gpu_name).lower()).strip("-") or "gpu"
    ver = re.sub(r"[^0-9.]+", "", str(trt_version)) or "unknown"
    cc = str(compute_capability).replace(".", "")
    return f"timing-trt{ver}-{slug}-sm{cc}.cache"


def dims_from_shapes(inputs: list[dict], shapes: dict | None) -> dict:
    """Values of the named non-batch axes, read from the concrete shapes a trial ran at:
    {input name: [dims]}, or a row's {"inputs": {name: dims}, "axes": {axis: value}}; the
    batch axes (shapes.batch_axes) are left to the batch range."""
    out, bnames = {}, batch_axes(inputs)
    if isinstance(shapes, dict) and isinstance(shapes.get("inputs"), dict):
        named = {d for i in inputs for d in i["shape"] if isinstance(d, str)} - bnames
        out = {a: int(v) for a, v in (shapes.get("axes") or {}).items() if a in named}
        shapes = shapes["inputs"]
    for inp in inputs:
        got = (shapes or {}).get(inp["name"])
        if got is None:
            continue
        if len(got) != len(inp["shape"]):
            raise BadInput(f"input {inp['name']!r}: recorded shape {list(got)} has "
                           f"{len(got)} axes but the input has {len(inp['shape'])}")
        for i, d in enumerate(inp["shape"]):
            if isinstance(d, str) and d not in bnames:
                v = int(got[i])
                if out.get(d, v) != v:
                    raise BadInput(f"axis {d!r} has two recorded values: {out[d]} and {v}")
                out[d] = v
    return out


def clip_batch(batch, lo: int, hi: int) -> int:
    """The batch to run at: the requested one if the profile allows it, else the nearest end."""
    b = lo if batch is None else int(batch)
    return min(max(b, int(lo)), int(hi))


def shapes_arg(shapes: dict) -> str:
    """trtexec's shape spec 'name:1x3x8x8,other:4'; names with ':' are quoted as trtexec
    allows; names with ',' or quotes cannot be written in a spec."""
    parts = []
    for name, dims in shapes.items():
        if re.search(r"[,'\"\s]", name):
            raise BadInput(f"input name {name!r} cannot be written in a trtexec shape spec "
                           f"(contains a comma, quote or space); rename the ONNX input")
        n = f"'{name}'" if ":" in name else name
        parts.append(f"{n}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


def wall_throughput(iterations: int, wall_s: float, batch: int = 1) -> dict:
    """trtexec's throughput: queries over the wall time of the timed phase (not 1/latency)."""
    qps = iterations / wall_s if wall_s > 0 else float("nan")
    return {"throughput_qps": qps, "throughput_samples_s": qps * batch}


def uuid_string(raw: bytes) -> str:
    """CUDA's 16-byte device UUID as NVML spells it: 'GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx'."""
    h = bytes(raw)[:16].hex()
    if len(h) != 32:
        raise BadInput(f"a device UUID has 16 bytes, got {len(bytes(raw))}")
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def normalize_pci_bus_id(bus_id: str) -> str:
    """'00000000:01:00.0' (NVML) and '0000:01:00.0' (CUDA) -> '0000:01:00.0'."""
    m = re.fullmatch(r"\s*([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-7])\s*", str(bus_id))
    if not m:
        raise BadInput(f"not a PCI bus id: {bus_id!r}")
    dom, bus, dev, fn = m.groups()
    return f"{int(dom, 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{fn}"


def match_nvml_device(devices: list[dict], uuid: str | None = None,
                      pci_bus_id: str | None = None) -> int:
    """Position in NVML's device list of the device CUDA runs on, by UUID, else by PCI bus id.

    NVML numbers every GPU of the machine; CUDA numbers only those CUDA_VISIBLE_DEVICES shows
    (as Ray sets per task), so NVML index 0 may be another card.
    """
    if uuid:
        for i, d in enumerate(devices):
            if str(d.get("uuid", "")).lower() == uuid.lower():
                return i
    if pci_bus_id:
        want = normalize_pci_bus_id(pci_bus_id)
        for i, d in enumerate(devices):
            if d.get("pci_bus_id") and normalize_pci_bus_id(d["pci_bus_id"]) == want:
                return i
    raise StageFailed("telemetry", f"no NVML device has UUID {uuid} or PCI bus id {pci_bus_id} "
                      f"(NVML lists {[d.get('uuid') for d in devices]})")


# NVML's clocks-event (formerly throttle) reason bits, nvml.h nvmlClocksEventReason*
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
THROTTLING = ("sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
              "hw_power_brake_slowdown")


def clock_event_names(mask: int) -> list[str]:
    """Names of the reasons set in an NVML clocks-event mask (unknown bits as hex)."""
    mask = int(mask)
    out = [n for bit, n in CLOCK_EVENT_REASONS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_EVENT_REASONS)
    return out + ([f"0x{rest:x}"] if rest else [])


def telemetry_summary(samples: list[dict], power_limit_w: float | None) -> dict:
    """min/mean/max of each numeric field, and the share of samples per clock-event reason."""
    out = {"power_limit_w": power_limit_w, "samples": len(samples)}
    for k in ("sm_clock_mhz", "mem_clock_mhz", "power_w", "power_instant_w", "temperature_c"):
        v = [s[k] for s in samples if s.get(k) is not None]
        if v:
            out[k] = {"min": float(min(v)), "mean": float(np.mean(v)), "max": float(max(v))}
    reasons: dict[str, float] = {}
    for s in samples:
        for r in s.get("clock_events", ()):
            reasons[r] = reasons.get(r, 0) + 1
    out["clock_events"] = {r: c / len(samples) for r, c in sorted(reasons.items())} if samples else {}
    return out


def telemetry_warnings(summary: dict) -> list[str]:
    """A throttled run says so: the clocks were held back while it was timed."""
    ev = summary.get("clock_events") or {}
    hit = {r: f for r, f in ev.items() if r in THROTTLING}
    if not hit:
        return []
    what = ", ".join(f"{r} in {100 * f:.0f}% of samples" for r, f in hit.items())
    return [f"throttled: {what} (power limit {summary.get('power_limit_w')} W); the latency is "
            f"that of a throttled GPU"]


# numpy types of TensorRT data types by name; BF16 and FP8 have none (tensorrt.nptype raises)
_NP_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
             "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}


def host_dtype(dtype_name: str, itemsize) -> np.dtype:
    """numpy storage for a TensorRT I/O type: its numpy type, else raw unsigned integers of
    the type's item size (BF16 -> uint16 bits, FP8 -> uint8 bits; decode with to_float32)."""
    name = str(dtype_name).split(".")[-1].upper()
    if name in _NP_TYPES:
        return np.dtype(_NP_TYPES[name])
    if itemsize is None or float(itemsize) < 1 or float(itemsize) != int(itemsize):
        raise BadInput(f"I/O tensors of type {name} (item size {itemsize} bytes) cannot be "
                       f"read on the host; keep sub-byte types inside the graph")
    return np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[int(itemsize)])


def _fp8_e4m3fn_table() -> np.ndarray:
    v = np.arange(256, dtype=np.uint32)
    sign = np.where(v & 0x80, -1.0, 1.0)
    exp = (v >> 3) & 0xF
    man = (v & 0x7).astype(np.float64)
    val = np.where(exp == 0, man / 8 * 2.0 ** -6, (1 + man / 8) * 2.0 ** (exp.astype(np.float64) - 7))
    val = sign * val
    val[(v & 0x7F) == 0x7F] = np.nan  # E4M3FN: no infinities, S.1111.111 is NaN
    return val.astype(np.float32)


def to_float32(raw: np.ndarray, dtype_name: str) -> np.ndarray:
    """Host values of a TensorRT output as float32 (BF16 and FP8 E4M3 decoded from their bits)."""
    name = str(dtype_name).split(".")[-1].upper()
    if name == "BF16":
        return (np.asarray(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    if name == "FP8":
        return _fp8_e4m3fn_table()[np.asarray(raw, np.uint8)]
    return np.asarray(raw).astype(np.float32)


def host_input(arr: np.ndarray, dtype_name: str, itemsize=None) -> np.ndarray:
    """A feed array in a TensorRT input's storage type (float to BF16 bits rounded to nearest
    even; FP8 inputs refused rather than cast to meaningless bytes)."""
    name = str(dtype_name).split(".")[-1].upper()
    if name == "BF16":
        u = np.ascontiguousarray(arr, np.float32).view(np.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    if name == "FP8":
        raise BadInput("FP8 graph inputs cannot be fed from the host; quantize inside the graph")
    return np.ascontiguousarray(arr, dtype=host_dtype(name, itemsize))


def drift_backend_label(gpu_name: str) -> str:
    """The drift_backend of outputs computed by a TensorRT engine on this GPU."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower().replace("nvidia", "")).strip("-")
    return f"tensorrt-{slug}"


def source_label(gpu_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower().replace("nvidia", "")).strip("-")
    return f"measured-{slug}"


def split_batches(feed: list[np.ndarray], max_batch: int) -> list[list[np.ndarray]]:
    """A feed larger than the engine's maximum batch, cut into pieces it accepts."""
    n = len(feed[0]) if feed else 0
    if n <= max_batch:
        return [feed]
    return [[x[i:i + max_batch] for x in feed] for i in range(0, n, max_batch)]


# ------------------------------------------------------------------ TensorRT and CUDA

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


def _check(result, what: str = "CUDA call"):
    """cuda-python returns (err, *values); raise on an error, return the values."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise StageFailed("cuda", f"{what} failed with {err}")
    return vals[0] if len(vals) == 1 else (vals or None)


def _ok(result, what: str, hint: str = ""):
    """TensorRT reports many failures by returning False or None: make them errors."""
    if result is None or result is False:
        raise StageFailed("tensorrt", f"{what} returned {result}{hint}; TensorRT's log above "
                          f"says why")
    return result


def cuda_device() -> dict:
    """The CUDA device this process runs on: index, name, compute capability, UUID, PCI bus id."""
    cudart = _cudart()
    dev = _check(cudart.cudaGetDevice(), "cudaGetDevice")
    p = _check(cudart.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
    name = p.name.decode(errors="replace") if isinstance(p.name, bytes) else str(p.name)
    return {"cuda_device": int(dev), "name": name.split("\x00")[0].strip(),
            "compute_capability": f"{p.major}.{p.minor}", "uuid": uuid_string(p.uuid.bytes),
            "pci_bus_id": f"{p.pciDomainID:04x}:{p.pciBusID:02x}:{p.pciDeviceID:02x}.0"}


def gpu_identity() -> dict:
    """The GPU engines are built and timed on: CUDA's current device when cuda-python is
    installed (respects CUDA_VISIBLE_DEVICES), else NVML's first GPU."""
    try:
        return cuda_device()
    except env.MissingDependency:
        pass
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


class FileLock:
    """An exclusive fcntl lock on '<path>.lock': Ray engine tasks on one node share a cache."""

    def __init__(self, path):
        self.path = Path(str(path) + ".lock")

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
        self.f.close()


def _load_timing_cache(config, path: Path, notes: list):
    """The timing cache of this TensorRT version and GPU, attached to the builder config."""
    with FileLock(path):
        data = path.read_bytes() if path.exists() else b""
    cache = config.create_timing_cache(data)
    if cache is None and data:
        notes.append(f"timing cache {path.name} could not be read; started an empty one")
        cache = config.create_timing_cache(b"")
    _ok(cache, "IBuilderConfig.create_timing_cache")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        notes.append(f"timing cache {path.name} does not match this TensorRT/GPU; started an "
                     f"empty one")
        cache = _ok(config.create_timing_cache(b""), "IBuilderConfig.create_timing_cache")
        _ok(config.set_timing_cache(cache, ignore_mismatch=False),
            "IBuilderConfig.set_timing_cache")


def _save_timing_cache(config, path: Path) -> None:
    """Merge what other builds wrote meanwhile (ITimingCache.combine), then replace the file
    atomically, all under the lock (Polygraphy's loader does the same)."""
    cache = _ok(config.get_timing_cache(), "IBuilderConfig.get_timing_cache")
    with FileLock(path):
        if path.exists():
            prev = config.create_timing_cache(path.read_bytes())
            if prev is not None:
                _ok(cache.combine(prev, ignore_mismatch=True) or None, "ITimingCache.combine")
        atomic_write(path, bytes(cache.serialize()))


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
    network_flags: list = field(default_factory=list)
    timing_cache: str | None = None
    notes: list = field(default_factory=list)


def build_engine(onnx_path, settings: BuildSettings, cache_dir, inputs: list[dict],
                 quantized_dtypes=()) -> EngineRecord:
    """Build (or reuse) a strongly typed engine; the timing cache of this TensorRT version and
    GPU lives in cache_dir and is shared safely between processes."""
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
    notes: list[str] = []
    logger = trt.Logger(trt.Logger.WARNING)
    try:  # a NULL from TensorRT's factory raises TypeError (pybind11), never returns None
        builder = trt.Builder(logger)
    except TypeError as exc:
        raise StageFailed("tensorrt", f"tensorrt.Builder could not be created ({exc}); "
                          f"TensorRT's log above says why") from exc
    flag_names = network_flag_names(trt.__version__, settings.strongly_typed)
    flags = 0
    for n in flag_names:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, n))
    network = _ok(builder.create_network(flags), "IBuilder.create_network")
    try:  # as Builder: a NULL from the factory raises TypeError
        parser = trt.OnnxParser(network, logger)
    except TypeError as exc:
        raise StageFailed("tensorrt", f"tensorrt.OnnxParser could not be created ({exc}); "
                          f"TensorRT's log above says why") from exc
    if not parser.parse_from_file(str(onnx_path)):
        errs = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() if hasattr(e, "node_name") else e.node()
            errs.append(f"node {node}: {e.desc()}")
        raise StageFailed("engine build", "TensorRT's ONNX parser rejected the graph: "
                          + "; ".join(errs[:5]), str(onnx_path))
    config = _ok(builder.create_builder_config(), "IBuilder.create_builder_config")
    config.builder_optimization_level = settings.opt_level
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, settings.profiling_verbosity.upper())
    tc_path = cache_dir / timing_cache_name(trt.__version__, g["name"], g["compute_capability"])
    _load_timing_cache(config, tc_path, notes)
    profile = _ok(builder.create_optimization_profile(), "IBuilder.create_optimization_profile")
    for name, (lo, opt, hi) in settings.shapes(inputs).items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise StageFailed("engine build", f"the optimization profile {settings.shapes(inputs)} "
                          f"was refused (IBuilderConfig.add_optimization_profile returned -1)",
                          str(onnx_path))
    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t
    if serialized is None:
        raise StageFailed("engine build", "TensorRT returned no engine (see the log above)",
                          str(onnx_path))
    atomic_write(engine_path, bytes(serialized))
    _save_timing_cache(config, tc_path)
    rec = EngineRecord(str(engine_path), key, trt.__version__, g["name"], g["compute_capability"],
                       settings.to_dict(), round(build_s, 3), network_flags=flag_names,
                       timing_cache=str(tc_path), notes=notes)
    atomic_write(sidecar, json.dumps(asdict(rec), indent=1).encode())
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
    try:  # as Builder: a NULL from the factory raises TypeError
        runtime = trt.Runtime(logger)
    except TypeError as exc:
        raise StageFailed("tensorrt", f"tensorrt.Runtime could not be created ({exc}); "
                          f"TensorRT's log above says why") from exc
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
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
    inspector = _ok(engine.create_engine_inspector(), "ICudaEngine.create_engine_inspector")
    info = _ok(inspector.get_engine_information(trt.LayerInformationFormat.JSON),
               "EngineInspector.get_engine_information")
    Path(path).write_text(info)
    return Path(path)


def nptype(trt_dtype) -> np.dtype:
    """numpy storage of a TensorRT data type, by its item size where numpy has no such type
    (tensorrt.nptype raises for BF16 and FP8)."""
    return host_dtype(str(trt_dtype), getattr(trt_dtype, "itemsize", None))


def _output_allocator(trt, cudart):
    """An IOutputAllocator: TensorRT asks it for memory once it knows a data-dependent output's
    size, and reports the shape (Polygraphy's runner does the same)."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.ptrs, self.sizes, self.shapes = {}, {}, {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            size = max(int(size), 1)
            if self.sizes.get(tensor_name, 0) < size:
                if tensor_name in self.ptrs:
                    cudart.cudaFree(self.ptrs.pop(tensor_name))
                err, ptr = cudart.cudaMalloc(size)
                if int(err) != 0:
                    return 0  # TensorRT turns a null pointer into an enqueue error
                self.ptrs[tensor_name], self.sizes[tensor_name] = ptr, size
            return int(self.ptrs[tensor_name])

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

        def free(self):
            for p in self.ptrs.values():
                cudart.cudaFree(p)
            self.ptrs.clear()
            self.sizes.clear()

    return OutputAllocator()


class _Buffers:
    """Device buffers for every I/O tensor at one input shape, allocated once; pinned host
    mirrors when transfers are timed; an output allocator for data-dependent shapes."""

    def __init__(self, engine, context, shapes: dict[str, list], cudart, host: bool = False):
        trt = _trt("allocating buffers")
        self.cudart, self.dev, self.host, self.nbytes = cudart, {}, {}, {}
        self.inputs, self.outputs, self.allocator = [], [], None
        for name, shape in shapes.items():
            _ok(context.set_input_shape(name, shape), f"set_input_shape({name!r}, {shape})",
                " (outside the engine's optimization profile?)")
        try:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                dtype = engine.get_tensor_dtype(name)
                shape = tuple(context.get_tensor_shape(name))
                (self.inputs if is_input else self.outputs).append(name)
                if not is_input and any(d < 0 for d in shape):  # known only after enqueue
                    if self.allocator is None:
                        self.allocator = _output_allocator(trt, cudart)
                    _ok(context.set_output_allocator(name, self.allocator) or None,
                        f"set_output_allocator({name!r})")
                    continue
                if any(d < 0 for d in shape):
                    raise BadInput(f"input {name!r} still has a dynamic shape {shape}; give "
                                   f"every input's shape")
                nbytes = max(int(math.ceil(math.prod(shape) * dtype.itemsize)), 1)
                ptr = _check(cudart.cudaMalloc(nbytes), "cudaMalloc")
                self.dev[name], self.nbytes[name] = ptr, nbytes
                _check(cudart.cudaMemset(ptr, 0, nbytes), "cudaMemset")
                _ok(context.set_tensor_address(name, int(ptr)) or None,
                    f"set_tensor_address({name!r})")
                if host:
                    self.host[name] = _check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        except BaseException:
            self.free()
            raise

    @property
    def data_dependent(self) -> bool:
        return self.allocator is not None

    def h2d(self, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for n in self.inputs:
            _check(self.cudart.cudaMemcpyAsync(self.dev[n], self.host[n], self.nbytes[n], kind,
                                               stream), "cudaMemcpyAsync H2D")

    def d2h(self, stream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self.outputs:
            if n in self.dev:
                _check(self.cudart.cudaMemcpyAsync(self.host[n], self.dev[n], self.nbytes[n],
                                                   kind, stream), "cudaMemcpyAsync D2H")

    def free(self):
        for p in self.dev.values():
            self.cudart.cudaFree(p)
        for p in self.host.values():
            self.cudart.cudaFreeHost(p)
        self.dev, self.host = {}, {}
        if self.allocator is not None:
            self.allocator.free()


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


def _context(engine):
    return _ok(engine.create_execution_context(), "ICudaEngine.create_execution_context",
               " (out of device memory?)")


def profile_layers(engine, path, batch: int = 1, iterations: int = 200) -> Path:
    """Per-layer times over `iterations` runs, written as trtexec --exportProfile does (layers
    by position in the iteration, as trtexec's Profiler keeps them, so repeated names stay
    apart)."""
    trt = _trt("profiling engines")
    cudart = _cudart()

    class Profiler(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.layers: list[tuple[str, list]] = []
            self.pos, self.count = 0, 0

        def report_layer_time(self, layer_name, ms):  # sampleReporting.cpp reportLayerTime
            if self.pos >= len(self.layers) or not self.layers:
                first = bool(self.layers) and self.layers[0][0] == layer_name
                self.count += (not self.layers) or first
                if first:
                    self.pos = 0
                else:
                    self.layers.append((layer_name, []))
                    self.pos = len(self.layers) - 1
            self.layers[self.pos][1].append(ms)
            self.pos += 1

    context = _context(engine)
    prof = Profiler()
    context.profiler = prof
    bufs = _Buffers(engine, context, _input_shapes(engine, batch), cudart)
    stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
    try:
        for _ in range(iterations):
            _ok(context.execute_async_v3(int(stream)), "execute_async_v3")
            _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
    finally:
        bufs.free()
        cudart.cudaStreamDestroy(stream)
    total = sum(sum(v) for _, v in prof.layers) or 1.0
    recs = [{"count": prof.count}]
    for name, v in prof.layers:
        recs.append({"name": name, "timeMs": float(sum(v)), "averageMs": float(np.mean(v)),
                     "medianMs": float(np.median(v)), "percentage": 100.0 * sum(v) / total})
    Path(path).write_text(json.dumps(recs, indent=1))
    return Path(path)


def nvml_devices(nvml) -> list[dict]:
    """UUID and PCI bus id of every GPU NVML sees (all of the machine's, whatever
    CUDA_VISIBLE_DEVICES says)."""
    out = []
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        uuid = nvml.nvmlDeviceGetUUID(h)
        pci = nvml.nvmlDeviceGetPciInfo(h).busId
        out.append({"index": i, "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                    "pci_bus_id": pci.decode() if isinstance(pci, bytes) else pci})
    return out


class _Telemetry:
    """NVML samples of the GPU CUDA runs on (SM/memory clock, averaged and instantaneous
    power, temperature, clock-event reasons) taken while a benchmark runs."""

    def __init__(self, device: dict, period_s: float = 0.05):
        self.device, self.period = device, period_s
        self.samples: list[dict] = []
        self._stop = threading.Event()

    def __enter__(self):
        self.nvml = n = env.require("pynvml", "recording GPU clocks and power")
        n.nvmlInit()
        try:
            devices = nvml_devices(n)
            idx = match_nvml_device(devices, self.device.get("uuid"), self.device.get("pci_bus_id"))
            self.h = n.nvmlDeviceGetHandleByIndex(devices[idx]["index"])
            self.power_limit_w = n.nvmlDeviceGetEnforcedPowerLimit(self.h) / 1000.0
            self._events = None  # the newer name first; older drivers know only the old one
            for fn in ("nvmlDeviceGetCurrentClocksEventReasons",
                       "nvmlDeviceGetCurrentClocksThrottleReasons"):
                try:
                    getattr(n, fn)(self.h)
                except (AttributeError, n.NVMLError):
                    continue
                self._events = getattr(n, fn)
                break
        except BaseException:
            n.nvmlShutdown()
            raise
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _instant_power_w(self):
        n = self.nvml
        fid = getattr(n, "NVML_FI_DEV_POWER_INSTANT", None)
        if fid is None:
            return None
        try:
            fv = n.nvmlDeviceGetFieldValues(self.h, [fid])[0]
            return fv.value.uiVal / 1000.0 if fv.nvmlReturn == 0 else None
        except n.NVMLError:
            return None

    def _run(self):
        n = self.nvml
        while not self._stop.is_set():
            try:
                self.samples.append({
                    "t": time.perf_counter(),
                    "sm_clock_mhz": n.nvmlDeviceGetClockInfo(self.h, n.NVML_CLOCK_SM),
                    "mem_clock_mhz": n.nvmlDeviceGetClockInfo(self.h, n.NVML_CLOCK_MEM),
                    "power_w": n.nvmlDeviceGetPowerUsage(self.h) / 1000.0,
                    "power_instant_w": self._instant_power_w(),
                    "temperature_c": n.nvmlDeviceGetTemperature(self.h, n.NVML_TEMPERATURE_GPU),
                    "clock_events": clock_event_names(self._events(self.h)) if self._events
                    else []})
            except n.NVMLError as exc:
                self.error = str(exc)
                return
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.nvml.nvmlShutdown()

    def summary(self) -> dict:
        out = telemetry_summary(self.samples, self.power_limit_w)
        out["nvml_uuid"] = self.device.get("uuid")
        out["clock_events_read"] = self._events is not None
        if getattr(self, "error", None):
            out["error"] = self.error
        return out


def _capture_graph(context, stream, cudart):
    """(graph, exec, None), or (None, None, why) when capture fails: the caller falls back to
    plain enqueues and records why."""
    mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    _check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
    try:
        ok = context.execute_async_v3(int(stream))
    finally:
        err, graph = cudart.cudaStreamEndCapture(stream)
    if not ok or int(err) != 0:
        if int(err) == 0 and graph is not None:
            cudart.cudaGraphDestroy(graph)
        cudart.cudaGetLastError()  # clear the capture error so plain enqueues can run
        return None, None, (f"CUDA graph capture failed (execute_async_v3 returned {ok}, "
                            f"cudaStreamEndCapture {err}); timed with plain enqueues")
    err, gexec = cudart.cudaGraphInstantiate(graph, 0)
    if int(err) != 0:
        cudart.cudaGraphDestroy(graph)
        return None, None, f"cudaGraphInstantiate failed ({err}); timed with plain enqueues"
    return graph, gexec, None


def benchmark(engine_path, batch: int = 1, warmup_ms: float = WARMUP_MS,
              duration_s: float = DURATION_S, cuda_graph: bool = True,
              transfers: bool = False, min_iterations: int = 10, depth: int = 32) -> dict:
    """Time an engine like trtexec: time-based warm-up, then back-to-back launches for
    `duration_s` (no host sync per launch: up to `depth` iterations in flight), each
    bracketed by CUDA events; throughput is iterations over the GPU wall time of the timed
    phase. transfers=True copies the inputs in and the outputs out (pinned memory) in every
    iteration and times them."""
    from l4opt.latency.stats import latency_stats, stability_warnings

    trt = _trt("timing engines")
    cudart = _cudart()
    g = gpu_identity()
    engine = load_engine(engine_path)
    context = _context(engine)
    bufs = _Buffers(engine, context, _input_shapes(engine, batch), cudart, host=transfers)
    stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
    n_ev = 4 if transfers else 2
    events, graph, graph_exec, graph_note = [], None, None, None
    try:
        ring = [[_check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(n_ev)]
                for _ in range(depth)]
        events = [e for r in ring for e in r]
        wall = [_check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(2)]
        events += wall
        _ok(context.execute_async_v3(int(stream)), "execute_async_v3 (first run)")
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        if cuda_graph and bufs.data_dependent:
            graph_note = "data-dependent output shapes: timed with plain enqueues"
        elif cuda_graph:
            graph, graph_exec, graph_note = _capture_graph(context, stream, cudart)

        def launch():
            if graph_exec is not None:
                _check(cudart.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")
            else:
                _ok(context.execute_async_v3(int(stream)), "execute_async_v3")

        def record(e):
            _check(cudart.cudaEventRecord(e, stream), "cudaEventRecord")

        def elapsed(a, b) -> float:
            return float(_check(cudart.cudaEventElapsedTime(a, b), "cudaEventElapsedTime"))

        t0 = time.perf_counter()
        while (time.perf_counter() - t0) * 1e3 < warmup_ms:  # back to back, one sync at the end
            for _ in range(8):
                launch()
            _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        gpu_ms, lat_ms, h2d_ms, d2h_ms, enq_ms = [], [], [], [], []

        def collect(ev):
            _check(cudart.cudaEventSynchronize(ev[-1]), "cudaEventSynchronize")
            if transfers:
                h2d_ms.append(elapsed(ev[0], ev[1]))
                gpu_ms.append(elapsed(ev[1], ev[2]))
                d2h_ms.append(elapsed(ev[2], ev[3]))
                lat_ms.append(elapsed(ev[0], ev[3]))
            else:
                gpu_ms.append(elapsed(ev[0], ev[1]))
                lat_ms.append(gpu_ms[-1])

        pending: deque = deque()
        with _Telemetry(g) as tel:
            record(wall[0])
            i, t0 = 0, time.perf_counter()
            while i < min_iterations or time.perf_counter() - t0 < duration_s:
                if len(pending) == depth:
                    collect(pending.popleft())  # frees the slot this iteration reuses
                ev = ring[i % depth]
                record(ev[0])
                if transfers:
                    bufs.h2d(stream)
                    record(ev[1])
                h0 = time.perf_counter()
                launch()
                enq_ms.append((time.perf_counter() - h0) * 1e3)
                record(ev[-2] if transfers else ev[1])
                if transfers:
                    bufs.d2h(stream)
                    record(ev[3])
                pending.append(ev)
                i += 1
            record(wall[1])
            while pending:
                collect(pending.popleft())
            _check(cudart.cudaEventSynchronize(wall[1]), "cudaEventSynchronize")
            wall_ms = elapsed(wall[0], wall[1])
    finally:
        if graph_exec is not None:
            cudart.cudaGraphExecDestroy(graph_exec)
        if graph is not None:
            cudart.cudaGraphDestroy(graph)
        for e in events:
            cudart.cudaEventDestroy(e)
        cudart.cudaStreamDestroy(stream)
        bufs.free()
    gpu = latency_stats(gpu_ms)
    telemetry = tel.summary()
    out = {
        "source": source_label(g["name"]), "gpu": g["name"], "gpu_uuid": g.get("uuid"),
        "compute_capability": g["compute_capability"], "trt_version": trt.__version__,
        "batch": batch, "cuda_graph": graph_exec is not None, "cuda_graph_requested": cuda_graph,
        "cuda_graph_fallback": graph_note, "transfers": transfers,
        "gpu_compute_ms": gpu, "enqueue_ms": latency_stats(enq_ms),
        "latency_ms": latency_stats(lat_ms), "walltime_ms": wall_ms,
        **wall_throughput(len(gpu_ms), wall_ms / 1e3, batch),
        "warnings": stability_warnings(gpu_ms, enq_ms) + telemetry_warnings(telemetry)
        + ([graph_note] if graph_note else []),
        "telemetry": telemetry, "iterations": len(gpu_ms), "duration_s": duration_s,
        "warmup_ms": warmup_ms, "in_flight": depth,
    }
    if transfers:
        out.update(h2d_ms=latency_stats(h2d_ms), d2h_ms=latency_stats(d2h_ms))
    return out


def batch_sweep(engine_path, batches=(1, 2, 4, 8, 16, 32, 64), **kw) -> list[dict]:
    """Latency and throughput per batch size: the latency-throughput curve of one engine."""
    return [benchmark(engine_path, batch=b, **kw) for b in batches]


def measure_onnx(onnx_path, inputs: list[dict], batch_range, cache_dir, *, quantized_dtypes=(),
                 dims: dict | None = None, shapes: dict | None = None, latency_batch=None,
                 duration_s: float = DURATION_S) -> dict:
    """Build (or reuse) the engine of a trial's ONNX and time it at the latency batch (the
    trial's, else the smallest) and at the profile's optimum: the latency fields of a trial row,
    measured on this GPU, with the telemetry of each measurement."""
    lo, opt, hi = (int(b) for b in batch_range)
    dims = {**(dims or {}), **dims_from_shapes(inputs, shapes)}
    rec = build_engine(onnx_path, BuildSettings(batch=(lo, opt, hi), dims=dims),
                       cache_dir, inputs, quantized_dtypes)
    lb = clip_batch(latency_batch or lo, lo, hi)
    small = benchmark(rec.path, batch=lb, duration_s=duration_s)
    best = small if opt == lb else benchmark(rec.path, batch=opt, duration_s=duration_s)
    return {  # latency and throughput at the batch the row names; the optimum's beside them
        "latency_ms": small["gpu_compute_ms"]["median"],
        "latency_p99_ms": small["gpu_compute_ms"]["p99"], "latency_batch": lb,
        "throughput_samples_s": small["throughput_samples_s"], "throughput_batch": lb,
        "throughput_opt_samples_s": best["throughput_samples_s"], "throughput_opt_batch": opt,
        "latency_source": small["source"], "latency_gpu": small["gpu"],
        "engine": {**asdict(rec), "warnings": small["warnings"] + best["warnings"],
                   "cuda_graph": small["cuda_graph"] and best["cuda_graph"],
                   "telemetry": {"latency": small["telemetry"], "throughput": best["telemetry"]}},
    }


# ------------------------------------------------------------------ accuracy on the engine

class TrtRunner:
    """A TensorRT engine on this GPU, on l4opt's runner protocol (activate / infer /
    deactivate). infer(feed) takes the inputs in `input_names` order and returns
    {output name: float32 array} for every output (BF16/FP8 outputs decoded)."""

    def __init__(self, engine_path, input_names: list[str] | None = None):
        self.path = str(engine_path)
        self.input_names = list(input_names) if input_names else None
        self.name = "tensorrt"
        self.last_inference_time = 0.0
        self.context = None

    def activate(self) -> None:
        trt = _trt("running TensorRT engines")
        self.trt, self.cudart = trt, _cudart()
        self.name = drift_backend_label(gpu_identity()["name"])
        self.engine = load_engine(self.path)
        self.context = _context(self.engine)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in ins]
        if self.input_names is None:
            self.input_names = ins
        elif sorted(self.input_names) != sorted(ins):
            raise BadInput(f"engine inputs are {ins}, the runner was given {self.input_names}")
        self.stream = _check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.dev: dict[str, tuple[int, int]] = {}
        # every output through the allocator, as Polygraphy's runner does: TensorRT sizes it
        # once the shape is known, data-dependent or not, and reports the shape
        self.allocator = _output_allocator(trt, self.cudart)
        for n in self.output_names:
            _ok(self.context.set_output_allocator(n, self.allocator) or None,
                f"set_output_allocator({n!r})")

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self.dev.get(name, (None, 0))
        if size < nbytes:
            if ptr is not None:
                self.cudart.cudaFree(ptr)
            ptr = _check(self.cudart.cudaMalloc(nbytes), "cudaMalloc")
            self.dev[name] = (ptr, nbytes)
        return int(ptr)

    def infer(self, feed: list[np.ndarray]) -> dict[str, np.ndarray]:
        if len(feed) != len(self.input_names):
            raise BadInput(f"{len(feed)} arrays fed, the engine takes {self.input_names}")
        cudart, ctx = self.cudart, self.context
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        t = time.perf_counter()
        keep = []
        for name, arr in zip(self.input_names, feed):
            dt = self.engine.get_tensor_dtype(name)
            a = host_input(arr, str(dt), dt.itemsize)
            keep.append(a)
            _ok(ctx.set_input_shape(name, a.shape) or None, f"set_input_shape({name!r}, "
                f"{a.shape})", " (outside the engine's optimization profile?)")
            ptr = self._device(name, max(a.nbytes, 1))
            _check(cudart.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes, h2d, self.stream),
                   "cudaMemcpyAsync H2D")
            _ok(ctx.set_tensor_address(name, ptr) or None, f"set_tensor_address({name!r})")
        self.allocator.shapes.clear()  # this enqueue reports every output's shape afresh
        _ok(ctx.execute_async_v3(int(self.stream)), "execute_async_v3")
        _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        out = {}
        for name in self.output_names:
            dt = self.engine.get_tensor_dtype(name)
            if name not in self.allocator.shapes or name not in self.allocator.ptrs:
                raise StageFailed("tensorrt", f"TensorRT reported no shape or memory for "
                                  f"output {name!r}", self.path)
            shape, ptr = self.allocator.shapes[name], self.allocator.ptrs[name]
            host = np.empty(shape, dtype=nptype(dt))
            if host.nbytes:
                _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h,
                                              self.stream), "cudaMemcpyAsync D2H")
            out[name] = host
        _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        self.last_inference_time = time.perf_counter() - t
        return {n: to_float32(a, str(self.engine.get_tensor_dtype(n))) for n, a in out.items()}

    def deactivate(self) -> None:
        if self.context is None:
            return
        for ptr, _ in self.dev.values():
            self.cudart.cudaFree(ptr)
        self.dev = {}
        self.allocator.free()
        self.cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = None


def engine_drift_outputs(onnx_path, inputs: list[dict], batches, *, cache_dir,
                         batch_range=None, shapes: dict | None = None, quantized_dtypes=(),
                         progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Every output of the trial's engine on each batch (a list of arrays in `inputs` order),
    for drift measured on the built engine (drift_backend: drift_backend_label(gpu)).

    The engine is the one measure_onnx builds and times when batch_range is the trial's (same
    settings, same cache key); feeds larger than its maximum batch are cut and rejoined.
    """
    from l4opt.env import progress as tqdm

    batches = list(batches)
    sizes = [len(b[0]) for b in batches if b]
    if batch_range is None:
        batch_range = (min(sizes), max(sizes), max(sizes))
    lo, opt, hi = (int(b) for b in batch_range)
    rec = build_engine(onnx_path, BuildSettings(batch=(lo, opt, hi),
                                                dims=dims_from_shapes(inputs, shapes)),
                       cache_dir, inputs, quantized_dtypes)
    runner = TrtRunner(rec.path, [i["name"] for i in inputs])
    runner.activate()
    try:
        outs = []
        for feed in tqdm(batches, desc="engine outputs", leave=False, disable=not progress):
            if len(feed[0]) < lo:
                raise BadInput(f"a batch of {len(feed[0])} is below the engine's minimum {lo}")
            parts = [runner.infer(p) for p in split_batches(feed, hi)]
            outs.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        return outs
    finally:
        runner.deactivate()
