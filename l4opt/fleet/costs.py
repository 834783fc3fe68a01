"""Dollars and joules per inference, and GPUs for a target QPS.

Prices: l4opt/data/prices.json (schema 1): USD per GPU-hour on demand, with the date and the
source of each default, and a second column, ``custom``, that the user sets (reserved, spot,
negotiated, amortized own hardware). A YAML or JSON file overrides any of it, in the same shape
(``{"gpus": {"L4": {"on_demand": 0.7, "custom": 0.45}}}``) or flat (``{"L4": 0.7}`` or
``{"L4": {"custom": 0.45}}``); every price must be a number >= 0.

Power: the GPU's board power at TDP (an upper bound: a GPU below full load draws less), or the
mean NVML power a measurement recorded (``telemetry.power_w.mean`` of a row's engine, when the
row was measured on that GPU).

At an operating point of ``qps`` spread over ``n`` GPUs: USD per million inferences =
``n * usd_per_gpu_hour / (qps * 3600) * 1e6``, joules per inference = ``n * power_w / qps``.
Without a target QPS the operating point is one GPU at its max sustained QPS.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from l4opt.errors import BadInput

SCHEMA = 1
COLUMNS = ("on_demand", "custom")


@dataclass(frozen=True)
class Price:
    gpu: str
    on_demand: float | None
    custom: float | None = None
    date: str = ""
    source: str = ""
    instance: str = ""

    def get(self, column: str = "on_demand") -> float | None:
        return getattr(self, column)


def _check_price(v, where: str):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(str(v).strip().lstrip("$"))
        except ValueError:
            raise BadInput(f"{where}: {v!r} is not a price; give USD per GPU-hour as a number "
                           f">= 0") from None
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise BadInput(f"{where}: {v:g} is not a price; give USD per GPU-hour as a number >= 0")
    return v


def _entries(doc: dict, where: str) -> dict:
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: expected a mapping of GPU names to prices, got "
                       f"{type(doc).__name__}")
    if "schema" in doc and doc["schema"] != SCHEMA:
        raise BadInput(f"{where}: schema {doc['schema']!r}; this l4opt reads schema {SCHEMA}")
    g = doc.get("gpus", None if "gpus" in doc else {k: v for k, v in doc.items()
                                                      if k not in ("schema", "currency", "unit",
                                                                   "note")})
    if not isinstance(g, dict) or not g:
        raise BadInput(f"{where}: no prices found; give e.g. {{gpus: {{L4: {{on_demand: 0.80}}}}}}")
    return g


def _parse(doc: dict, where: str, base: dict | None = None) -> dict[str, Price]:
    from l4opt.latency import hardware

    out = dict(base or {})
    for name, e in _entries(doc, where).items():
        field = f"{where}: gpus.{name}"
        try:
            gname = hardware.get(name).name
        except BadInput:
            raise BadInput(f"{field}: unknown GPU {name!r}; known: "
                           f"{', '.join(hardware.gpus())}") from None
        if not isinstance(e, dict):
            e = {"on_demand": e}
        unknown = set(e) - set(COLUMNS) - {"date", "source", "instance", "region", "note"}
        if unknown:
            raise BadInput(f"{field}: unknown field(s) {', '.join(sorted(unknown))}; a price has "
                           f"on_demand, custom, date, source, instance")
        if not any(c in e for c in COLUMNS):
            raise BadInput(f"{field}: the price is missing; give on_demand (and/or custom) in "
                           f"USD per GPU-hour")
        vals = {c: _check_price(e.get(c), f"{field}.{c}") for c in COLUMNS if c in e}
        if all(v is None for v in vals.values()) and gname not in out:
            raise BadInput(f"{field}: the price is missing (null); give on_demand or custom in "
                           f"USD per GPU-hour")
        old = out.get(gname)
        out[gname] = Price(
            gname,
            vals["on_demand"] if "on_demand" in vals else (old.on_demand if old else None),
            vals["custom"] if "custom" in vals else (old.custom if old else None),
            str(e.get("date") or (old.date if old and "on_demand" not in vals else "user file")),
            str(e.get("source") or (old.source if old and "on_demand" not in vals else where)),
            str(e.get("instance") or (old.instance if old else "")))
    return out


def default_prices() -> dict[str, Price]:
    doc = json.loads(resources.files("l4opt").joinpath("data", "prices.json").read_text())
    return _parse(doc, "l4opt/data/prices.json")


def load_prices(path=None) -> dict[str, Price]:
    """The default prices, overridden by a YAML or JSON file (or a dict) when given."""
    base = default_prices()
    if path is None:
        return base
    if isinstance(path, dict):
        return _parse(path, "prices", base)
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"--prices {p}: no such file")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as exc:
        raise BadInput(f"--prices {p}: cannot parse it as {'JSON' if p.suffix == '.json' else 'YAML'}: "
                       f"{exc}") from None
    return _parse(doc, f"prices file {p}", base)


# ------------------------------------------------------------------ power

def measured_power_w(row: dict | None, gpu: str) -> float | None:
    """Mean NVML board power a measurement of this row recorded on `gpu`, if any."""
    if not row:
        return None
    src = str(row.get("latency_source") or "")
    if not src.startswith("measured"):
        return None
    gpu_of_row = str(row.get("latency_gpu") or src.removeprefix("measured-"))
    if gpu.lower() not in gpu_of_row.lower():
        return None

    def find(d, depth=0):
        if depth > 4 or not isinstance(d, dict):
            return None
        pw = d.get("power_w")
        if isinstance(pw, dict) and isinstance(pw.get("mean"), (int, float)) and pw["mean"] > 0:
            return float(pw["mean"])
        if isinstance(pw, (int, float)) and not isinstance(pw, bool) and pw > 0:
            return float(pw)
        for v in d.values():
            r = find(v, depth + 1)
            if r:
                return r
        return None

    for k in ("telemetry", "engine", "measured", "latency_telemetry"):
        r = find(row.get(k) if isinstance(row.get(k), dict) else None)
        if r:
            return r
    return None


def power_w(gpu, row: dict | None = None) -> tuple[float, str]:
    """(watts, where from): measured NVML power of the row on this GPU, else the TDP."""
    from l4opt.latency import hardware

    g = hardware.get(gpu)
    m = measured_power_w(row, g.name)
    if m:
        return m, "measured (NVML mean)"
    return g.tdp_w, "TDP (upper bound)"


# ------------------------------------------------------------------ arithmetic

def gpus_needed(qps: float, max_qps_per_gpu: float) -> float:
    """ceil(qps / max_qps_per_gpu); inf when one GPU sustains nothing."""
    if not (max_qps_per_gpu and max_qps_per_gpu > 0 and math.isfinite(max_qps_per_gpu)):
        return math.inf
    return float(math.ceil(qps / max_qps_per_gpu - 1e-9))


def usd_per_million(usd_per_gpu_hour, qps: float, n_gpus: float = 1.0) -> float:
    if usd_per_gpu_hour is None or not (qps > 0) or not math.isfinite(n_gpus):
        return math.nan
    return n_gpus * usd_per_gpu_hour / (qps * 3600.0) * 1e6


def joules_per_inference(watts: float, qps: float, n_gpus: float = 1.0) -> float:
    if not (qps > 0) or not math.isfinite(n_gpus):
        return math.nan
    return n_gpus * watts / qps
