"""`l4opt.plan`: what the fleet costs at a p99 target, per recipe (or ONNX file) and GPU.

For every row of a run directory (or one ONNX file) and every GPU asked for:

1. what the graph runs as on that GPU (`hardware.runs_as`: an FP8 graph on a T4/A10G/A100
   runs at FP16, so it is estimated as the FP16 baseline and never recommended there);
2. its batch-latency curve on that GPU: the cost model at batches 1, 2, 4, ... up to the row's
   batch range maximum (estimates cached in memory by file, GPU, batch and dims), with the
   estimate's band as a low and a high curve; a row measured on that GPU with a batch sweep
   (bundle import) uses the measured medians instead (no band);
3. the serving capacity (`queueing.max_qps`): the highest Poisson QPS one GPU sustains with
   p99 <= the target, with the max batch and queue delay to configure; the bands re-run the
   same configuration on the low and high curves;
4. cost and energy (`costs`): GPUs needed for `qps`, USD per million inferences and joules per
   inference at that operating point (or at one GPU's max QPS without `qps`).

A row that is not ok, fails the accuracy `budget`, runs as something else on that GPU, or has
no configuration that meets the p99 target is shown but never recommended. `recommended` maps
each GPU to its cheapest recommendable row (USD per million at the custom price when set, else
on demand; without a price, the highest QPS per GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from l4opt.errors import BadInput
from l4opt.fleet import costs, queueing
from l4opt.latency import hardware
from l4opt.spec import row as rowspec

COLUMNS = [
    "workload", "recipe", "gpu", "status", "meets_budget", "recommended", "runs_as",
    "metric", "metric_drop", "cos_mean", "latency_source", "batch", "queue_delay_ms",
    "instances", "max_qps_per_gpu", "max_qps_per_gpu_low", "max_qps_per_gpu_high", "p50_ms",
    "p99_ms", "p99_ms_low", "p99_ms_high", "p99_target_ms", "qps", "gpus_needed",
    "gpus_needed_low", "gpus_needed_high", "usd_per_gpu_hour", "usd_per_million",
    "usd_per_million_low", "usd_per_million_high", "usd_per_gpu_hour_custom",
    "usd_per_million_custom", "power_w", "power_source", "joules_per_inference",
    "joules_per_inference_low", "joules_per_inference_high", "curve_batches", "curve_ms",
    "curve_ms_low", "curve_ms_high", "note",
]

_EST_CACHE: dict = {}
_CAP_CACHE: dict = {}


@dataclass
class PlanResult:
    table: object                      # pandas DataFrame, one row per (recipe or file, GPU)
    recommended: dict                  # gpu -> recipe (or file) name, or None
    qps: float | None
    p99_ms: float
    gpus: tuple
    budget: dict | None
    notes: list = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        return self.table.to_dict(orient="records")

    def to_dict(self) -> dict:
        return {"qps": self.qps, "p99_ms": self.p99_ms, "gpus": list(self.gpus),
                "budget": self.budget, "recommended": self.recommended, "notes": self.notes,
                "rows": self.rows}

    def summary(self):
        """The columns a table shows: recipe, GPU, capacity, GPUs needed, USD and J with bands."""
        cols = ["recipe", "gpu", "status", "meets_budget", "recommended", "runs_as", "batch",
                "queue_delay_ms", "max_qps_per_gpu", "p99_ms", "gpus_needed", "usd_per_million",
                "joules_per_inference"]
        return self.table[[c for c in cols if c in self.table.columns]]


# ------------------------------------------------------------------ input checks

def _positive(v, field: str, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool):
        raise BadInput(f"{field} must be a number > 0, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise BadInput(f"{field} must be a number > 0, got {v!r}") from None
    if not math.isfinite(f) or f <= 0:
        raise BadInput(f"{field} must be a finite number > 0, got {v!r}")
    return f


def gpu_names(gpus) -> tuple:
    """The canonical names of a list (or comma-separated string) of GPUs; unknown ones refused."""
    if isinstance(gpus, str):
        gpus = [g for g in gpus.split(",")]
    names = [str(g).strip() for g in (gpus or ())]
    if not names or any(not n for n in names):
        raise BadInput(f"gpus: give one or more GPU names (e.g. L4,T4,A10G,L40S); known: "
                       f"{', '.join(hardware.gpus())}")
    out = []
    for n in names:
        try:
            g = hardware.get(n).name
        except BadInput:
            raise BadInput(f"gpus: unknown GPU {n!r}; known: {', '.join(hardware.gpus())}") from None
        if g not in out:
            out.append(g)
    return tuple(out)


def _budget(budget) -> dict | None:
    if budget is None:
        return None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        budget = {"max_drop": budget}
    if not isinstance(budget, dict) and hasattr(budget, "max_drop"):
        budget = {k: getattr(budget, k, None) for k in ("max_drop", "min_cosine")}
    if not isinstance(budget, dict):
        raise BadInput(f"budget: give a largest allowed metric drop (a number) or "
                       f"{{'max_drop': ..., 'min_cosine': ...}}, got {budget!r}")
    out = {}
    for k, v in budget.items():
        if k not in ("max_drop", "min_cosine"):
            raise BadInput(f"budget.{k}: unknown; a budget has max_drop and/or min_cosine")
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise BadInput(f"budget.{k} must be a number, got {v!r}") from None
        if not math.isfinite(f) or (k == "max_drop" and f < 0) or (k == "min_cosine" and not -1 <= f <= 1):
            raise BadInput(f"budget.{k} = {v!r} is out of range (max_drop >= 0, min_cosine in [-1, 1])")
        out[k] = f
    return out or None


def _meets(item: dict, budget: dict | None) -> bool:
    if item["status"] != "ok":
        return False
    if not budget:
        return True
    drop, cos = item.get("metric_drop"), item.get("cos_mean")
    if "max_drop" in budget:
        if not isinstance(drop, (int, float)) or not math.isfinite(drop) or drop > budget["max_drop"]:
            return False
    if "min_cosine" in budget:
        if not isinstance(cos, (int, float)) or not math.isfinite(cos) or cos < budget["min_cosine"]:
            return False
    return True


# ------------------------------------------------------------------ items

def _onnx_dtypes(path: Path) -> list[str]:
    """The quantized dtypes of a Q/DQ graph (from its Q/DQ zero points and quantized weights)."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadInput(f"onnx: cannot read {path}: {exc}") from exc
    inits = {i.name: i.data_type for i in m.graph.initializer}
    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "int8",
             onnx.TensorProto.FLOAT8E4M3FN: "float8e4m3fn", onnx.TensorProto.FLOAT8E5M2: "float8e5m2"}
    out = set()
    for n in m.graph.node:
        if "FP8" in n.op_type:
            out.add("float8e4m3fn")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for inp in n.input:
                if inits.get(inp) in names:
                    out.add(names[inits[inp]])
    return sorted(out)


def _batches_up_to(hi: int) -> list[int]:
    bs = [1 << i for i in range(0, 20) if (1 << i) <= hi]
    if hi not in bs:
        bs.append(int(hi))
    return bs


def _run_items(run_dir: Path) -> list[dict]:
    from l4opt.results.store import Store
    from l4opt.spec import row as rowmod
    from l4opt.spec.shapes import batch_axes

    if not (run_dir / "results.sqlite").exists() and not (run_dir / "artifacts").is_dir():
        raise BadInput(f"run_dir: {run_dir} holds no l4opt results (no results.sqlite); run "
                       f"`l4opt sweep ... --out {run_dir}` first")
    items = []
    for r in Store(run_dir).rows():
        if not r.get("recipe") or str(r["recipe"]).startswith("("):
            continue  # the FP32 export check row
        st = rowmod.status(r)
        path = (run_dir / r["onnx_path"]) if r.get("onnx_path") else None
        shapes = r.get("shapes") or {}
        inputs = [i for i in (r.get("inputs") or []) if isinstance(i, dict) and i.get("shape")]
        baxes = batch_axes(inputs) if inputs else {"batch"}
        axes = {k: int(v) for k, v in (shapes.get("axes") or {}).items() if k not in baxes}
        br = r.get("batch_range") or [1, r.get("latency_batch") or 1, r.get("latency_batch") or 1]
        items.append({
            "workload": r.get("workload"), "recipe": r["recipe"], "status": st,
            "format": r.get("format"), "quantized_dtypes": r.get("quantized_dtypes"),
            "metric": r.get("metric"), "metric_drop": r.get("metric_drop"),
            "cos_mean": r.get("cos_mean"), "onnx": path, "dims": axes, "batch_axes": baxes,
            "max_batch": int(max(br)), "row": r, "error": r.get("error")})
    if not items:
        raise BadInput(f"run_dir: {run_dir} has no trial rows")
    return items


def _one_workload(items: list[dict], workload, run_dir: Path) -> list[dict]:
    """The items of one workload: recipes of different models are never compared or
    recommended against each other."""
    found = list(dict.fromkeys(str(it["workload"]) for it in items))
    if workload is None:
        if len(found) > 1:
            raise BadInput(f"workload: {run_dir} holds {len(found)} workloads ({', '.join(found)})"
                           f"; choose one (--workload NAME, or workload= in Python)")
        return items
    keep = [it for it in items if str(it["workload"]) == str(workload)]
    if not keep:
        raise BadInput(f"workload: {run_dir} has no trials of {workload!r}; it holds "
                       f"{', '.join(found)}")
    return keep


def _file_item(path, dims, max_batch) -> dict:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"onnx: no such file {p}")
    dt = _onnx_dtypes(p)
    return {"workload": None, "recipe": p.name, "status": "ok",
            "format": "fp8" if any("float8" in d for d in dt) else "int8" if dt else "fp16",
            "quantized_dtypes": dt, "metric": None, "metric_drop": None, "cos_mean": None,
            "onnx": p, "dims": dict(dims or {}), "batch_axes": {"batch"},
            "max_batch": int(max_batch), "row": None, "error": None}


def _baseline(items: list[dict], item: dict) -> dict | None:
    for it in items:
        if (it["workload"] == item["workload"] and it["status"] in ("ok", "no-op")
                and it["onnx"] is not None and not hardware.requested(
                    it["quantized_dtypes"] or it["format"]) - {"fp16", "fp32"}):
            if it["recipe"] == "baseline":
                return it
    for it in items:
        if (it["workload"] == item["workload"] and it["onnx"] is not None
                and it["status"] in ("ok", "no-op") and not it["quantized_dtypes"]):
            return it
    return None


# ------------------------------------------------------------------ curves

def _file_key(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}:{st.st_mtime_ns}:{st.st_size}"


def _estimate(path: Path, gpu: str, batch: int, dims: dict, baxes) -> tuple:
    from l4opt.latency.estimate import estimate_onnx

    dd = dict(dims)
    dd.update({a: int(batch) for a in baxes if a})
    key = (_file_key(path), gpu, int(batch), tuple(sorted(dd.items())))
    if key not in _EST_CACHE:
        e = estimate_onnx(str(path), gpu=hardware.estimator_gpu(gpu), batch=int(batch),
                          dynamic_dims=dd)
        _EST_CACHE[key] = (e.total_ms, e.low_ms if e.low_ms is not None else e.total_ms,
                           e.high_ms if e.high_ms is not None else e.total_ms, e.source,
                           hardware.speak_of(e.notes, gpu))
    return _EST_CACHE[key]


def _measured_curve(row: dict | None, gpu: str):
    if not row:
        return None
    src = str(row.get("latency_source") or "")
    sweep = row.get("batch_sweep")
    if not (src.startswith("measured") and sweep):
        return None
    where = str(row.get("latency_gpu") or src.removeprefix("measured-"))
    if gpu.lower() not in where.lower():
        return None
    pts = [(int(p["batch"]), float(p["latency_ms_median"])) for p in sweep
           if isinstance(p, dict) and p.get("batch") and p.get("latency_ms_median")]
    if not pts:
        return None
    bs, ms = zip(*sorted(pts))
    return bs, ms, src


def curves(item: dict, gpu: str, graph: Path) -> tuple:
    """(nominal, low, high Curves, latency source, notes) of a graph on a GPU."""
    m = _measured_curve(item["row"], gpu)
    if m:
        c = queueing.Curve(m[0], m[1], m[2])
        return c, c, c, m[2], [f"measured batch sweep on {gpu} (bundle import); no band"]
    bs = _batches_up_to(item["max_batch"])
    pts = [_estimate(graph, gpu, b, item["dims"], item["batch_axes"]) for b in bs]
    src, notes = pts[-1][3], pts[-1][4]
    mk = lambda j: queueing.Curve(tuple(bs), tuple(p[j] for p in pts), src)  # noqa: E731
    return mk(0), mk(1), mk(2), src, notes


def _capacity(curve, target, instances):
    key = (curve.batches, curve.ms, target, tuple(instances))
    if key not in _CAP_CACHE:
        _CAP_CACHE[key] = queueing.max_qps(curve, target, instances=instances)
    return _CAP_CACHE[key]


def _qps_at(curve, cfg, target):
    """Band: the same configuration's max QPS on another curve (bisection only)."""
    key = (curve.batches, curve.ms, target, cfg.max_batch, cfg.queue_delay_s, cfg.instances)
    if key not in _CAP_CACHE:
        r = queueing.qps_at_target(curve, cfg, target)
        _CAP_CACHE[key] = r.qps if r is not None else 0.0
    return _CAP_CACHE[key]


# ------------------------------------------------------------------ the plan

def plan(run_dir=None, *, onnx=None, qps=None, p99_ms, gpus=("L4",), prices=None,
         budget=None, dims=None, max_batch: int = 64, instances=(1,), workload=None,
         progress: bool = False) -> PlanResult:
    """Per (recipe or file, GPU): max QPS per GPU at p99 <= `p99_ms`, the batch and queue delay
    to configure, GPUs needed for `qps`, USD per million and joules per inference, with the
    bands of the latency estimate. `budget`: the largest allowed metric drop, or
    {'max_drop': ..., 'min_cosine': ...}; `prices`: a YAML/JSON file or dict overriding
    l4opt/data/prices.json; `dims`/`max_batch`: named axes and the largest batch for an ONNX
    file (a run directory's rows carry their own); `instances`: engine copies per GPU to try;
    `workload`: the workload of a run directory holding several."""
    import pandas as pd

    target = _positive(p99_ms, "p99_ms")
    qps = _positive(qps, "qps", allow_none=True)
    names = gpu_names(gpus)
    budget = _budget(budget)
    price_table = costs.load_prices(prices)
    inst = tuple(int(_positive(k, "instances")) for k in (instances or (1,)))
    if (run_dir is None) == (onnx is None):
        raise BadInput("give a run directory or onnx=FILE (exactly one)")
    if onnx is not None:
        mb = _positive(max_batch, "max_batch")
        if mb != int(mb):
            raise BadInput(f"max_batch must be a whole number >= 1, got {max_batch!r}")
        items = [_file_item(onnx, dims, int(mb))]
    else:
        items = _one_workload(_run_items(Path(run_dir)), workload, Path(run_dir))

    rows, notes = [], []
    for it in items:
        for g in names:
            row = _plan_row(it, g, items, target, qps, price_table, budget, inst)
            rows.append(row)
            if progress:
                print(f"  {it['recipe']} on {g}: {row['max_qps_per_gpu']:.4g} QPS/GPU", flush=True)
    df = pd.DataFrame(rows)
    if "band_note" not in df:
        df["band_note"] = None
    df = df[[c for c in COLUMNS if c in df.columns] + ["recommendable", "band_note"]]
    recommended = {}
    for g in names:
        cand = df[(df.gpu == g) & (df.recommendable == True)]  # noqa: E712
        recommended[g] = None
        if len(cand):
            key = cand["usd_per_million_custom"].where(cand["usd_per_million_custom"].notna(),
                                                       cand["usd_per_million"])
            order = cand.assign(_k=key.astype(float).fillna(math.inf),
                                _q=-cand["max_qps_per_gpu"].astype(float))
            order = order.sort_values(["_k", "_q"], kind="stable")
            # USD per million (one GPU's price: all known or none), else inverse capacity
            spend = list(order["_k"]) if math.isfinite(order["_k"].iloc[0]) else \
                [1.0 / q if q > 0 else math.inf for q in -order["_q"]]
            drifts = [(_finite(d, math.inf), -_finite(c, -math.inf))
                      for d, c in zip(order["metric_drop"], order["cos_mean"])]
            best = order.iloc[rowspec.least_drift_among_tied(spend, drifts)
                              if math.isfinite(spend[0]) else 0]
            recommended[g] = best["recipe"]
    df["recommended"] = [recommended.get(r.gpu) == r.recipe and bool(r.recommendable)
                         for r in df.itertuples()]
    for r in df.itertuples():
        if r.p99_ms != r.p99_ms and r.status not in ("unsupported",) and "best achievable" in str(r.note):
            notes.append(f"{r.recipe} on {r.gpu}: {r.note}")
    for g in names:
        if recommended[g] is None:
            notes.append(f"{g}: no row is recommended (none is ok, within the accuracy budget, "
                         f"runs as quantized on {g} and meets p99 <= {target:g} ms)")
    notes += band_notes(df)
    df = df.drop(columns=["recommendable", "band_note"])
    return PlanResult(df, recommended, qps, target, names, budget, notes)


def _plan_row(it, g, items, target, qps, price_table, budget, inst) -> dict:
    out = {c: None for c in COLUMNS}
    out.update(workload=it["workload"], recipe=it["recipe"], gpu=g, status=it["status"],
               metric=it["metric"], metric_drop=it["metric_drop"], cos_mean=it["cos_mean"],
               p99_target_ms=target, qps=qps, instances=None)
    meets = _meets(it, budget)
    out["meets_budget"] = meets
    notes = []
    recommendable = meets
    if it["status"] == "failed" or it["onnx"] is None or not Path(it["onnx"]).is_file():
        out["note"] = f"no ONNX to plan ({it['status']}: {it.get('error') or 'no artifact'})"
        out["recommendable"] = False
        return out
    runs, why = hardware.runs_as(g, it["quantized_dtypes"] or it["format"])
    out["runs_as"] = runs
    graph = Path(it["onnx"])
    if runs == "unsupported":
        out.update(status="unsupported", note=why, recommendable=False)
        return out
    if why:
        notes.append(why)
        recommendable = False
        if runs == "fp16":
            base = _baseline(items, it)
            if base is not None and base is not it:
                graph = Path(base["onnx"])
                notes.append(f"estimated on the {base['recipe']} graph; choose that recipe "
                             f"on {g}")
            else:
                notes.append("no baseline row: estimated on this graph with its FP8 layers "
                              "at FP16")
    try:
        c, c_lo, c_hi, src, enotes = curves(it, g, graph)
    except BadInput as exc:
        out.update(note=f"cannot estimate on {g}: {exc}", recommendable=False)
        return out
    out["latency_source"] = src
    out["curve_batches"] = list(c.batches)
    out["curve_ms"], out["curve_ms_low"], out["curve_ms_high"] = \
        list(c.ms), list(c_lo.ms), list(c_hi.ms)
    cap = _capacity(c, target, inst)
    if not cap.feasible:
        out.update(max_qps_per_gpu=0.0, max_qps_per_gpu_low=0.0, max_qps_per_gpu_high=0.0,
                   p99_ms=math.nan, recommendable=False,
                   note="; ".join([cap.note] + notes))
        return out
    cfg = queueing.Config(cap.max_batch, cap.queue_delay_ms / 1e3, cap.instances)
    q_lo = _qps_at(c_hi, cfg, target) if c_hi.ms != c.ms else cap.max_qps
    q_hi = _qps_at(c_lo, cfg, target) if c_lo.ms != c.ms else cap.max_qps
    q_lo, q_hi = min(q_lo, cap.max_qps), max(q_hi, cap.max_qps)
    out.update(batch=cap.max_batch, queue_delay_ms=cap.queue_delay_ms, instances=cap.instances,
               max_qps_per_gpu=cap.max_qps, max_qps_per_gpu_low=q_lo, max_qps_per_gpu_high=q_hi)
    # the operating point: qps over n GPUs, or one GPU at its max
    if qps is not None:
        n = costs.gpus_needed(qps, cap.max_qps)
        n_lo = costs.gpus_needed(qps, q_hi)
        n_hi = costs.gpus_needed(qps, q_lo)
        load, total = qps / n, qps
        out.update(gpus_needed=n, gpus_needed_low=n_lo, gpus_needed_high=n_hi)
    else:
        n = n_lo = n_hi = 1.0
        load = total = cap.max_qps
    op = queueing.solve(c, load, cfg)
    out["p50_ms"], out["p99_ms"] = op.p50_ms, op.p99_ms
    for curve, col in ((c_lo, "p99_ms_low"), (c_hi, "p99_ms_high")):
        out[col] = queueing.solve(curve, load, cfg).p99_ms if curve.ms != c.ms else op.p99_ms
    price = price_table.get(g)
    watts, wsrc = costs.power_w(g, it["row"])
    out["power_w"], out["power_source"] = watts, wsrc
    tot_lo = total if qps is not None else q_lo
    tot_hi = total if qps is not None else q_hi
    for col, p in (("", price.on_demand if price else None),
                   ("_custom", price.custom if price else None)):
        out[f"usd_per_gpu_hour{col}"] = p
        out[f"usd_per_million{col}"] = costs.usd_per_million(p, total, n)
    p = price.on_demand if price else None
    # the band: the optimistic end has more QPS per GPU (fewer GPUs), the pessimistic fewer
    out["usd_per_million_low"] = costs.usd_per_million(p, tot_hi, n_lo)
    out["usd_per_million_high"] = costs.usd_per_million(p, tot_lo, n_hi)
    out["joules_per_inference"] = costs.joules_per_inference(watts, total, n)
    out["joules_per_inference_low"] = costs.joules_per_inference(watts, tot_hi, n_lo)
    out["joules_per_inference_high"] = costs.joules_per_inference(watts, tot_lo, n_hi)
    if price is None:
        notes.append(f"no price for {g}: give one with --prices")
    if it["status"] != "ok":
        notes.append(f"status {it['status']}: shown, not recommended")
    elif not meets:
        notes.append("fails the accuracy budget: shown, not recommended")
    out["note"] = "; ".join(notes)
    out["band_note"] = "; ".join(n for n in enotes if n.startswith("band"))
    out["recommendable"] = recommendable
    return out


def display_table(res: PlanResult):
    """The plan as a DataFrame to show: one row per (recipe, GPU), figures with their bands as
    text ("value (low-high)"), the recommended row per GPU marked "<-"."""
    import pandas as pd

    df = res.table.copy()

    def band(v, lo, hi, fmt="{:.3g}"):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        s = fmt.format(v)
        if lo is not None and hi is not None and not (lo == v == hi) and \
                all(isinstance(x, (int, float)) and not math.isnan(x) for x in (lo, hi)):
            s += f" ({fmt.format(lo)}-{fmt.format(hi)})"
        return s

    show = pd.DataFrame({
        "recipe": df.recipe, "gpu": df.gpu, "status": df.status,
        "budget": df.meets_budget.map({True: "meets", False: "FAILS"}),
        "runs as": df.runs_as.fillna("-"),
        "batch/delay": [f"{int(b)}/{d:.3g} ms" if b == b and b is not None else "-"
                        for b, d in zip(df.batch, df.queue_delay_ms)],
        "QPS/GPU (band)": [band(*x) for x in zip(df.max_qps_per_gpu, df.max_qps_per_gpu_low,
                                                 df.max_qps_per_gpu_high)],
        "p99 ms": [band(*x) for x in zip(df.p99_ms, df.p99_ms_low, df.p99_ms_high)],
    })
    if res.qps is not None:
        show["GPUs (band)"] = [band(*x, fmt="{:.0f}") for x in
                               zip(df.gpus_needed, df.gpus_needed_low, df.gpus_needed_high)]
    show["USD/M inf (band)"] = [band(*x) for x in zip(df.usd_per_million,
                                                       df.usd_per_million_low,
                                                       df.usd_per_million_high)]
    show["J/inf (band)"] = [band(*x) for x in zip(df.joules_per_inference,
                                                   df.joules_per_inference_low,
                                                   df.joules_per_inference_high)]
    show["rec"] = df.recommended.map({True: "<-", False: ""})
    return show


def _with_band(v, lo, hi, fmt: str) -> str:
    s = fmt.format(v)
    ok = all(isinstance(x, (int, float)) and x == x for x in (lo, hi))
    return s + (f" ({fmt.format(lo)}-{fmt.format(hi)})" if ok and not lo == v == hi else "")


def recommendation(res: PlanResult) -> list[str]:
    """The plan's answer in sentences: per GPU, the recipe to ship with its GPUs, USD per
    million and joules (bands from the latency estimate), then the cheapest GPU overall."""
    t, out, best = res.table, [], None
    at = f"{res.qps:g} QPS" if res.qps else "one GPU's max QPS"
    for g in res.gpus:
        name = res.recommended.get(g)
        if name is None:
            out.append(f"{g}: no recipe to recommend at p99 <= {res.p99_ms:g} ms (none is ok, "
                       f"within the accuracy budget, quantized as on {g} and meets the target)")
            continue
        r = t[(t.gpu == g) & (t.recipe == name)].iloc[0]
        usd = r.usd_per_million
        parts = [f"{g}: ship {name} at batch {int(r.batch)} with a {r.queue_delay_ms:.3g} ms "
                 f"queue delay: {_with_band(r.max_qps_per_gpu, r.max_qps_per_gpu_low, r.max_qps_per_gpu_high, '{:,.0f}')} "
                 f"QPS per GPU at p99 <= {res.p99_ms:g} ms"]
        if res.qps:
            plural = "" if r.gpus_needed == r.gpus_needed_high == 1 else "s"
            parts.append(f"{_with_band(r.gpus_needed, r.gpus_needed_low, r.gpus_needed_high, '{:.0f}')}"
                         f" GPU{plural} for {res.qps:g} QPS")
        if isinstance(usd, (int, float)) and usd == usd:
            parts.append(f"USD {_with_band(usd, r.usd_per_million_low, r.usd_per_million_high, '{:.3g}')}"
                         f" per million inferences")
            if best is None or usd < best[1]:
                best = (g, usd, name)
        if isinstance(r.joules_per_inference, (int, float)) and r.joules_per_inference == r.joules_per_inference:
            parts.append(f"{r.joules_per_inference:.3g} J per inference (power: {r.power_source})")
        out.append(", ".join(parts))
    if best is not None and len(res.gpus) > 1:
        out.append(f"cheapest at {at}: {best[2]} on {best[0]} (USD {best[1]:.3g} per million, "
                   f"on-demand prices; latencies ESTIMATED unless measured)")
    return out


def band_notes(table) -> list[str]:
    """The rows' latency-band notes folded: each part said once ('; '-separated parts of the
    estimate's band source), with the recipes and GPUs it concerns when not all of them."""
    rows = [(r.recipe, r.gpu, str(r.band_note).split("; ")) for r in table.itertuples()
            if isinstance(getattr(r, "band_note", None), str) and r.band_note]
    by_part: dict = {}
    for rc, g, parts in rows:
        for part in parts:
            by_part.setdefault(part, {}).setdefault(rc, []).append(g)
    everyone = {(rc, g) for rc, g, _ in rows}
    out: dict = {}
    for part, who in by_part.items():
        pairs = {(rc, g) for rc, gs in who.items() for g in gs}
        key = "" if pairs == everyone else "; ".join(
            f"{rc} on {', '.join(gs)}" for rc, gs in who.items())
        out.setdefault(key, []).append(part)
    return [f"latency band{', ' + k if k else ''}: {'; '.join(v)}" for k, v in out.items()]


def folded_notes(table) -> list[str]:
    """Each row note once, with the recipes and GPUs it concerns ("int8, int8-max on L4, T4:
    status collapsed ..."), not once per (recipe, GPU)."""
    by_note: dict = {}
    for r in table.itertuples():
        if r.note:
            by_note.setdefault(r.note, {}).setdefault(r.recipe, []).append(r.gpu)
    out = []
    for note, recipes in by_note.items():
        gsets = {tuple(g) for g in recipes.values()}
        if len(gsets) == 1:
            out.append(f"{', '.join(recipes)} on {', '.join(next(iter(gsets)))}: {note}")
        else:
            out.append("; ".join(f"{r} on {', '.join(g)}" for r, g in recipes.items())
                       + f": {note}")
    return out


def text(res: PlanResult) -> str:
    """The plan as a plain-text table, with the notes under it."""
    import pandas as pd

    df = res.table
    show = display_table(res)
    lines = [f"p99 <= {res.p99_ms:g} ms" + (f" at {res.qps:g} QPS" if res.qps else
                                            " (one GPU at its max QPS)")
             + f"; GPUs {', '.join(res.gpus)}; latencies: {', '.join(sorted(set(df.latency_source.dropna())))}"]
    with pd.option_context("display.max_columns", None, "display.width", 250):
        lines.append(show.to_string(index=False))
    lines += [f"note: {n}" for n in folded_notes(df)]
    lines += [f"note: {n}" for n in res.notes]
    lines.append("recommended: " + ", ".join(f"{g}: {v or 'none'}" for g, v in
                                              res.recommended.items()))
    lines += recommendation(res)
    lines.append("Latencies are the cost model's ESTIMATES unless the source says measured; "
                 "power at TDP is an upper bound; queueing model: l4opt/fleet/queueing.py.")
    return "\n".join(lines)


def cost_accuracy_figure(res: PlanResult, *, y: str = "metric_drop", x: str = "usd_per_million",
                         title: str | None = None):
    """Plotly figure: cost per million inferences (x, with the estimate's band as error bars)
    against accuracy drop (y), one trace per GPU; rows outside the budget or not recommendable
    are hollow, the recommended one per GPU starred."""
    import plotly.graph_objects as go

    df = res.table
    fig = go.Figure()
    for g in res.gpus:
        part = df[(df.gpu == g) & df[x].notna()]
        if not len(part):
            continue
        xv = part[x].astype(float)
        lo = part.get(f"{x}_low", xv).astype(float)
        hi = part.get(f"{x}_high", xv).astype(float)
        yv = part[y].astype(float).fillna(0.0) if y in part else [0.0] * len(part)
        sym = ["star" if r else ("circle" if m else "circle-open")
               for r, m in zip(part.recommended, part.meets_budget)]
        fig.add_trace(go.Scatter(
            x=xv, y=yv, mode="markers+text", name=g, text=part.recipe, textposition="top center",
            marker=dict(symbol=sym, size=[16 if r else 10 for r in part.recommended]),
            error_x=dict(type="data", symmetric=False, array=(hi - xv).clip(lower=0),
                         arrayminus=(xv - lo).clip(lower=0)),
            customdata=list(zip(part.max_qps_per_gpu, part.batch, part.queue_delay_ms,
                                part.gpus_needed, part.joules_per_inference)),
            hovertemplate=("%{text} on " + g + "<br>USD/M %{x:.3g}<br>drop %{y:.4g}"
                           "<br>QPS/GPU %{customdata[0]:.4g} (batch %{customdata[1]}, delay "
                           "%{customdata[2]:.3g} ms)<br>GPUs %{customdata[3]}<br>J/inf "
                           "%{customdata[4]:.3g}<extra></extra>")))
    fig.update_layout(
        title=title or (f"Cost vs accuracy at p99 <= {res.p99_ms:g} ms"
                        + (f", {res.qps:g} QPS" if res.qps else "")
                        + " (ESTIMATED latency unless measured)"),
        xaxis_title="USD per million inferences (on demand; bars: latency-estimate band)",
        yaxis_title="metric drop vs unquantized (lower is better)", legend_title="GPU")
    return fig


def _finite(v, default: float) -> float:
    """v as a float, `default` when it is missing or NaN."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if f == f else default
