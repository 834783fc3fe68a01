"""What the dashboard computes, without a widget: the trials it knows, each workload's choices,
the rows of the selected recipes, the L4 latency at a chosen batch, budget verdicts, the
Pareto front, the speed-up over the FP16 baseline, the stated recommendation, a trial's
detail sections and the saved searches. l4opt.ui.widgets wires this to ipywidgets; tests and
the report use it directly.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import threading
from pathlib import Path
from typing import NamedTuple

from l4opt.latency import paired
from l4opt.spec import row as rowspec

BUDGET_KINDS = {"max_drop": "task metric drop <=", "min_cosine": "mean cosine >="}
BUDGET_DEFAULTS = {"max_drop": 0.01, "min_cosine": 0.99}
# the dashboard's first table: the summary's columns and the budget verdict
TABLE_COLUMNS = ["name", "status", "metric_drop", "dash_latency_ms", "speedup", "layers",
                 "within_budget"]
MORE_COLUMNS = ["name", "format", "route", "algorithm", "calib_samples", "metric_name", "metric",
                "metric_drop", "cos_mean", "cos_min", "sqnr_db", "dash_latency_ms",
                "dash_latency_source", "dash_latency_batch", "pareto_here", "drift_backend",
                "cached"]


class Latency(NamedTuple):
    """An L4 latency at one batch: the milliseconds, where it comes from ('estimated-l4',
    'measured-l4'), and its band (None for a measurement or when unknown)."""

    ms: float | None
    source: str | None
    low: float | None = None
    high: float | None = None


NO_LATENCY = Latency(None, None, None, None)


# ------------------------------------------------------------------ budgets

def budget_of(budget=None) -> tuple[str, float, bool]:
    """(kind, value, relative) of a budget given as None (max_drop 0.01 of the task metric), a
    dict {"max_drop": D} / {"min_cosine": C}, a (kind, value) pair or an
    l4opt.precision Budget."""
    if budget is None:
        return "max_drop", BUDGET_DEFAULTS["max_drop"], False
    if isinstance(budget, (tuple, list)) and len(budget) == 2 and budget[0] in BUDGET_KINDS:
        return str(budget[0]), float(budget[1]), False
    get = budget.get if isinstance(budget, dict) else lambda k: getattr(budget, k, None)
    relative = bool(get("relative"))
    if get("min_cosine") is not None:
        return "min_cosine", float(get("min_cosine")), False
    if get("max_drop") is not None:
        return "max_drop", float(get("max_drop")), relative
    raise ValueError(f"not a budget: {budget!r} (give max_drop or min_cosine)")


def budget_text(budget) -> str:
    kind, value, relative = budget_of(budget)
    if kind == "min_cosine":
        return f"mean cosine >= {value:g}"
    return f"task metric drop <= {value:g}" + (" (relative)" if relative else "")


FLEET_GPUS = ("L4", "T4", "A10G", "L40S")


def plan_budget(budget) -> tuple[dict, str | None]:
    """The dashboard/report budget as l4opt.plan takes it, and a note when it cannot carry it
    (a relative drop is planned as absolute)."""
    kind, value, relative = budget_of(budget)
    note = (f"the fleet plan takes the relative drop budget {value:g} as an absolute drop"
            if relative else None)
    return {kind: value}, note


def fleet_plan(run_dir, workload, budget, *, p99_ms, qps=None, gpus=FLEET_GPUS,
               instances=(1,), progress: bool = False):
    """l4opt.plan of one workload of a run directory under the dashboard's budget: the
    GPU-by-recipe table, the cost-vs-accuracy chart and the stated answer all come from it."""
    from l4opt.fleet.plan import plan

    b, note = plan_budget(budget)
    res = plan(run_dir, qps=qps, p99_ms=p99_ms, gpus=gpus, budget=b, instances=instances,
               workload=workload, progress=progress)
    if note:
        res.notes.append(note)
    return res


def within(row, budget) -> bool | None:
    """Whether a row meets the budget; None when it has no drift figures to judge."""
    kind, value, relative = budget_of(budget)
    key = "cos_mean" if kind == "min_cosine" else "metric_drop"
    v = _num(row.get(key))
    if v is None and key == "metric_drop":
        v = _drop(row)
    if v is None:
        return None
    if kind == "min_cosine":
        return v >= value
    if relative:
        ref = _num(row.get("metric_ref"))
        if not ref:
            return None
        v = v / abs(ref)
    return v <= value + 1e-12


def _drop(row) -> float | None:
    d = _num(row.get("metric_delta"))
    if d is None:
        return None
    return (-d if row.get("metric_higher_is_better") is not False else d) + 0.0


def _num(v) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ------------------------------------------------------------------ speed-up over FP16

is_baseline = paired.is_baseline  # the one rule for the FP16 baseline (l4opt.latency.paired)


def _stem(latency: str) -> str:
    return latency[:-3] if latency.endswith("_ms") else latency


def _shape_key(row, latency: str) -> tuple:
    """What must match for two latencies to compare: workload, the non-batch axes, the batch."""
    from l4opt.spec.shapes import batch_axes

    shapes = row.get("shapes") if isinstance(row.get("shapes"), dict) else {}
    try:
        skip = batch_axes(row.get("inputs") or []) or {"batch"}
    except Exception:  # an odd stored row: compare the whole axes
        skip = {"batch"}
    axes = {k: v for k, v in (shapes.get("axes") or {}).items() if k not in skip}
    batch = row.get(f"{_stem(latency)}_batch", row.get("latency_batch"))
    return (row.get("workload"), json.dumps(axes, sort_keys=True, default=str), _num(batch))


def _band(row, latency: str) -> tuple[float | None, float | None, float | None]:
    stem = _stem(latency)
    ms = _num(row.get(latency))
    if ms is None or ms <= 0:
        return None, None, None
    lo, hi = _num(row.get(f"{stem}_low_ms")), _num(row.get(f"{stem}_high_ms"))
    return ms, lo if lo and lo > 0 else ms, hi if hi and hi > 0 else ms


def speedups(rows, latency: str = "latency_ms") -> list[tuple | None]:
    """Per row, (speed-up, low, high) over the FP16 baseline of the same workload, shapes and
    batch, by l4opt.latency.paired (the paired band); `latency` names the latency column shown
    (e.g. the dashboard's latency at its chosen batch). None without such a baseline."""
    stem = _stem(latency)
    recs = [dict(r, latency_ms=r.get(latency), latency_low_ms=r.get(f"{stem}_low_ms"),
                 latency_high_ms=r.get(f"{stem}_high_ms"),
                 latency_source=r.get(f"{stem}_source") or r.get("latency_source"),
                 latency_batch=r.get(f"{stem}_batch", r.get("latency_batch")))
            for r in rows]
    paired.add_speedups(recs)
    return [(r["speedup"], r["speedup_low"], r["speedup_high"]) if r.get("speedup") else None
            for r in recs]


def with_speedups(df, latency: str = "latency_ms"):
    """The frame with speedup, speedup_low and speedup_high columns (NaN without a baseline)."""
    import numpy as np

    s = speedups(df.to_dict("records"), latency)
    for i, name in enumerate(("speedup", "speedup_low", "speedup_high")):
        df[name] = [np.nan if v is None else v[i] for v in s]
    return df


# ------------------------------------------------------------------ the recommendation

def recommend(rows, budget=None, *, latency: str = "latency_ms", run_dir=None) -> dict:
    """The recipe to ship within `budget` (default: a task-metric drop of at most 0.01): the
    fastest trial whose status is ok (never collapsed, no-op or failed) that meets the budget
    (of those within rowspec.SAME_COST of the fastest, the one that drifts least),
    what it costs in accuracy (metric drop, mean cosine), what it buys in L4 latency over the
    FP16 baseline of the same shapes (speed-up and its band), which trials cannot be told apart
    from it (latency bands overlap), and what would do better. `rows`: trial rows of one
    workload (dicts or a DataFrame); `latency` names the latency column (its band and source
    are <stem>_low_ms, <stem>_high_ms, <stem>_source). Returns a dict with 'sentence'."""
    import pandas as pd

    recs = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
    recs = [r for r in recs if r.get("kind", "trial") in ("trial", None) and not
            isinstance(r.get("strategy"), str)]
    kind, value, _ = budget_of(budget)
    src = f"{_stem(latency)}_source"
    sp = speedups(recs, latency)
    timed = [(r, s) for r, s in zip(recs, sp) if _band(r, latency)[0] is not None and
             str(r.get(src) or r.get("latency_source") or "").startswith(("measured", "estimated"))]
    timed, apart = _comparable(timed, latency)
    ok = [(r, s) for r, s in timed if rowspec.status(r) == "ok" and within(r, budget)]
    ok.sort(key=lambda rs: _band(rs[0], latency)[0])
    wl = next((r.get("workload") for r in recs if r.get("workload")), None)
    out = {"workload": wl, "budget": {kind: value}, "budget_text": budget_text(budget),
           "met": bool(ok), "recipe": None, "better": [], "not_compared": apart}
    if not ok:
        out["better"] = _better(recs, None, kind, value, wl, run_dir, latency)
        out["sentence"] = _no_answer(recs, timed, budget, out["better"])
        return out
    (row, s), tied = _tie_break(ok, latency)
    ms, lo, hi = _band(row, latency)
    same = [str(r.get("name") or r.get("recipe")) for r, _ in ok if r is not row
            and _band(r, latency)[1] <= hi and _band(r, latency)[2] >= lo]
    out.update(recipe=str(row.get("name") or row.get("recipe")), key=row.get("key"),
               status="ok", metric_name=row.get("metric_name"), metric_drop=_num(
                   row.get("metric_drop")) if _num(row.get("metric_drop")) is not None
               else _drop(row), cos_mean=_num(row.get("cos_mean")), latency_ms=ms,
               latency_low_ms=lo, latency_high_ms=hi, latency_source=row.get(src) or
               row.get("latency_source"), latency_batch=row.get(f"{_stem(latency)}_batch",
                                                                 row.get("latency_batch")),
               speedup=s[0] if s else None, speedup_low=s[1] if s else None,
               speedup_high=s[2] if s else None, is_baseline=is_baseline(row),
               indistinguishable=same, tied_faster=tied)
    out["better"] = _better(recs, row, kind, value, wl, run_dir, latency)
    out["sentence"] = _sentence(out)
    return out


def _tie_break(ok, latency: str):
    """The row to ship among `ok`: the fastest, unless rows within rowspec.SAME_COST of it
    drift less; then the least drifting of those (task-metric drop, then cosine). Returns
    ((row, speedup), [faster rows passed over, with how much faster])."""
    def drift(r):
        d = _num(r.get("metric_drop"))
        d = _drop(r) if d is None else d
        cos = _num(r.get("cos_mean"))
        return (d if d is not None else math.inf, -(cos if cos is not None else -math.inf))

    costs = [_band(r, latency)[0] for r, _ in ok]
    best = ok[rowspec.least_drift_among_tied(costs, [drift(r) for r, _ in ok])]
    ms = _band(best[0], latency)[0]
    tied = [f"{r.get('name') or r.get('recipe')} ({100 * (ms / c - 1):.1f}% faster)"
            for (r, _), c in zip(ok, costs) if c < ms]
    return best, tied


def _comparable(timed, latency: str):
    """The timed rows whose latencies compare (same workload, shapes and batch): the group
    holding the FP16 baseline, else the largest; and how many rows were left apart."""
    groups: dict = {}
    for r, s in timed:
        groups.setdefault(_shape_key(r, latency), []).append((r, s))
    if not groups:
        return timed, 0
    with_base = [k for k, v in groups.items() if any(is_baseline(r) for r, _ in v)]
    key = max(with_base or groups, key=lambda k: len(groups[k]))
    return groups[key], len(timed) - len(groups[key])


def _sentence(r: dict) -> str:
    from l4opt.ui.tables import _times, format_column

    est = str(r.get("latency_source") or "").startswith("estimated")
    drop = format_column([r.get("metric_drop")], "metric_drop")[0]
    cos = f"{r['cos_mean']:.6f}" if r.get("cos_mean") is not None else "–"
    band = (f" (band {r['latency_low_ms']:.3g}–{r['latency_high_ms']:.3g} ms)"
            if est and r["latency_high_ms"] > r["latency_low_ms"] else "")
    lat = (f"{'estimated' if est else 'measured'} L4 latency {r['latency_ms']:.3g} ms at batch "
           f"{r.get('latency_batch')}{band}")
    if r.get("is_baseline"):
        by = f" by more than {100 * rowspec.SAME_COST:.0f}%" if r.get("tied_faster") else ""
        buys = f"no 8-bit recipe within the budget is faster than FP16{by}; {lat}"
    elif r.get("speedup"):
        sband = (f" (band {_times(r['speedup_low'])}–{_times(r['speedup_high'])}×"
                 f"{', so not shown to be faster' if r['speedup_low'] <= 1 else ''})"
                 if est else "")
        buys = f"{_times(r['speedup'])}× the FP16 baseline's speed{sband}; {lat}"
    else:
        buys = f"{lat}; no FP16 baseline of the same shapes in this run to compare with"
    metric = r.get("metric_name") or "the task metric"
    cost = (f"it costs a drop of {drop} in {metric}" if not (r.get("metric_drop") or 0) < 0
            else f"it costs nothing in {metric} ({drop.lstrip('-')} better)")
    text = (f"Within the budget ({r['budget_text']}), ship {r['recipe']}: {cost} (mean cosine "
            f"{cos}) and buys {buys}.")
    if r.get("tied_faster"):
        text += (f" Passed over as no faster (within {100 * rowspec.SAME_COST:.0f}%) but drifting "
                 f"more: {', '.join(r['tied_faster'])}.")
    if r.get("not_compared"):
        text += (f" {r['not_compared']} trial(s) at other shapes or batches were not compared "
                 f"with it.")
    if r.get("indistinguishable"):
        text += (f" Not told apart from it in latency (bands overlap): "
                 f"{', '.join(r['indistinguishable'])}.")
    if r.get("better"):
        text += " To do better: " + "; ".join(r["better"]) + "."
    return text


def _no_answer(recs, timed, budget, better) -> str:
    if not recs:
        return "No trials yet: run a sweep to get a recommendation."
    if not timed:
        return "No trial has an L4 latency yet, so none can be recommended."
    return (f"No recipe whose status is ok meets the budget ({budget_text(budget)}). "
            + ("To do better: " + "; ".join(better) + "." if better else ""))


def _better(recs, chosen, kind, value, wl, run_dir, latency) -> list[str]:
    """What would do better than the chosen row (or than nothing within the budget)."""
    chosen_ms = _band(chosen, latency)[0] if chosen is not None else math.inf
    faster = [r for r in recs if not is_baseline(r) and rowspec.status(r) in ("ok", "collapsed")
              and (_band(r, latency)[0] or math.inf) < chosen_ms and not within(r, (kind, value))]
    out = []
    flag = "--min-cosine" if kind == "min_cosine" else "--max-drop"
    where = f" --out {run_dir}" if run_dir else ""
    if faster:
        r = min(faster, key=lambda x: _band(x, latency)[0])
        out.append(f"{r.get('recipe')} is faster but misses the budget: "
                   f"`l4opt search {wl} --recipe {r.get('recipe')} {flag} {value:g}{where}` "
                   f"keeps its most sensitive layers in higher precision")
    collapsed = sorted({str(r.get("recipe")) for r in recs if rowspec.status(r) == "collapsed"})
    if collapsed:
        out.append(f"{', '.join(collapsed)} collapsed: more or more representative calibration "
                   f"data, or another calibration (int8-percentile, int8-smoothquant), may "
                   f"rescue it")
    if chosen is not None and str(chosen.get(f"{_stem(latency)}_source") or
                                  chosen.get("latency_source") or "").startswith("estimated"):
        out.append("the latency is an estimate: `l4opt bundle` and a run on an L4 measure it")
    if chosen is None and not faster and not collapsed:
        out.append(f"`l4opt search {wl} --recipe int8-max {flag} {value:g}{where}` looks for "
                   f"a mixed-precision recipe within the budget")
    return out


# ------------------------------------------------------------------ the view model

def workload_defaults(name: str) -> dict:
    """A built-in workload's keyword defaults (calib_samples, eval_samples, ...)."""
    from l4opt.spec import workloads

    fn = workloads.BUILTIN.get(name)
    if fn is None:
        return {}
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


class WorkloadChoices:
    """Each workload's choices (recipes, calibration count) kept across switches, its
    defaults, and the workload to sweep with the calibration count chosen."""

    def __init__(self, custom: dict | None = None):
        self.custom = dict(custom or {})  # user workloads by name
        self.state: dict[str, dict] = {}

    def default_calib(self, name: str) -> int:
        if name in self.custom:
            return max(1, self.custom[name].num_samples(self.custom[name].calib_data))
        return workload_defaults(name).get("calib_samples") or 128

    def remember(self, workload: str, recipes, calib: int) -> None:
        self.state[workload] = {"recipes": tuple(recipes), "calib": calib}

    def recall(self, workload: str) -> dict:
        """The workload's choices as left, else its defaults (calibration count)."""
        return self.state.get(workload) or {"recipes": None, "calib": self.default_calib(workload)}

    def load(self, name: str, calib: int, eval_samples: int | None = None):
        """The workload to sweep with `calib` calibration samples; returns (workload, notes)."""
        from l4opt.spec.workloads import load

        notes = []
        if name in self.custom:
            w = self.custom[name]
            have = w.num_samples(w.calib_data)
            if calib < have:  # the control decides, for a user's workload too
                w = dataclasses.replace(w, calib_data={k: v[:calib]
                                                       for k, v in w.calib_data.items()})
            elif calib > have:
                notes.append(f"{name} has {have} calibration samples, fewer than the {calib} "
                             f"asked: calibrating on all {have}")
            return w, notes
        accepted = workload_defaults(name)
        kw = {"calib_samples": calib}
        if eval_samples and "eval_samples" in accepted:
            kw["eval_samples"] = eval_samples
        elif eval_samples:
            notes.append(f"{name} takes no eval_samples: evaluated on its own evaluation set")
        return load(name, **{k: v for k, v in kw.items() if k in accepted}), notes



class BatchLatency:
    """The L4 latency of a trial at any batch (measured, the row's own, or an estimate on its
    ONNX), each estimate made once."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self._cache: dict = {}

    def at(self, row: dict, b: int) -> Latency:
        """L4 latency of a trial at batch b: measured when the row's batch sweep has it, the
        row's own number at its batch, else an estimate on its Q/DQ ONNX. Never invented."""
        from l4opt.ui.plots import curve_points

        for p in curve_points(row.get("batch_sweep")):
            if p["batch"] == b:
                return Latency(p["latency_ms"], row.get("latency_source"))
        if b == (row.get("latency_batch") or 1) and row.get("latency_ms") is not None:
            return Latency(row["latency_ms"], row.get("latency_source"),
                           row.get("latency_low_ms"), row.get("latency_high_ms"))
        if b == row.get("latency_batch") and row.get("latency_opt_ms") is not None:
            return Latency(row["latency_opt_ms"], row.get("latency_source"))
        est = self.estimate(row, b)
        if est is None:
            return NO_LATENCY
        return Latency(est.total_ms, est.source, est.low_ms, est.high_ms)

    def estimate(self, row: dict, b: int):
        """The cost model's Estimate of the row's Q/DQ ONNX at batch b (cached; None without an
        artifact or when the estimate fails)."""
        onnx = row.get("onnx_path")
        if not onnx or not (self.run_dir / onnx).exists():
            return None
        key = (row["key"], b)
        if key not in self._cache:
            from l4opt.latency.estimate import estimate_onnx
            from l4opt.spec.shapes import batch_axes

            inputs = row.get("inputs") or []
            # the row's named axes (seq, ...) as it ran them; the batch axes at b
            axes = dict((row.get("shapes") or {}).get("axes") or {})
            named = {d for i in inputs for d in i.get("shape", []) if isinstance(d, str)}
            for d in (batch_axes(inputs) or named) or {"batch"}:
                axes[d] = b
            try:
                self._cache[key] = estimate_onnx(
                    str(self.run_dir / onnx), "L4", batch=b, dynamic_dims=axes)
            except Exception:  # no estimate: the point is left out and named under the chart
                self._cache[key] = None
        return self._cache[key]


def rows_at_batch(rows, b: int, latency: BatchLatency) -> tuple[list[dict], list[str]]:
    """The trial rows with their L4 latency at batch `b` (as the dashboard's batch control shows
    it: measured at b, the row's own, or an estimate on its Q/DQ ONNX), the trial's own figure
    kept as trial_latency_ms/trial_latency_batch; and a note per row that has none at b.
    Rows that did not finish (failed, no-op) keep what they have."""
    out, missing = [], []
    for r in rows:
        if rowspec.status(r) not in ("ok", "collapsed") or r.get("latency_batch") == b:
            out.append(r)
            continue
        lat = latency.at(r, b)
        new = dict(r, trial_latency_ms=r.get("latency_ms"),
                   trial_latency_batch=r.get("latency_batch"), latency_ms=lat.ms,
                   latency_low_ms=lat.low if lat.low is not None else lat.ms,
                   latency_high_ms=lat.high if lat.high is not None else lat.ms,
                   latency_source=lat.source, latency_batch=b if lat.ms is not None else None)
        if lat.ms is None:
            missing.append(str(r.get("recipe")))
        elif str(lat.source or "").startswith("measured"):
            new["latency_band_source"] = "measured: no band"
        out.append(new)
    notes = [f"no L4 latency at batch {b} for {', '.join(missing)} (no measurement at that "
             f"batch and no Q/DQ ONNX to estimate it on)"] if missing else []
    return out, notes


class KnownTrials:
    """The trials a dashboard knows (the run directory's store and this session's), oldest
    first, and the names their recipes carry."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.rows: list[dict] = []
        self.lock = threading.RLock()
        self._names: dict[str, str] = {}

    def load_store(self) -> list[dict]:
        """Read the run directory's trials into the model; returns the rows not known before
        (raises what reading raises: L4OptError, OSError, ValueError)."""
        from l4opt.results.rundir import load_run

        if not (self.run_dir / "results.sqlite").exists():
            return []
        stored = load_run(self.run_dir)["rows"]
        with self.lock:
            known = {r.get("key") for r in self.rows}
            new = [r for r in stored if r.get("key") not in known]
            self.rows = new + self.rows  # the store's older trials first, this session's last
        return new

    def add_rows(self, rows) -> None:
        """This session's new trials: each replaces a row of the same key."""
        with self.lock:
            for row in rows:
                self.rows = [r for r in self.rows if r.get("key") != row.get("key")] + [row]

    def row(self, key: str) -> dict | None:
        with self.lock:
            return next((r for r in self.rows if r.get("key") == key), None) or \
                next((r for r in self.rows if r.get("recipe") == key), None)

    def recipes_of(self, workload: str) -> list[str]:
        """The recipes of the sweep trials known for `workload`, first met first."""
        with self.lock:
            return list(dict.fromkeys(r.get("recipe") for r in self.rows
                                      if r.get("workload") == workload and r.get("recipe")
                                      and not isinstance(r.get("strategy"), str)))

    def stored_workload(self) -> str | None:
        """The workload of the most recent sweep trial known (what a restarted kernel's
        dashboard opens on when none is named)."""
        with self.lock:
            return next((r.get("workload") for r in reversed(self.rows)
                         if not isinstance(r.get("strategy"), str) and r.get("workload")), None)

    def recipe_name(self, choice: str) -> str:
        """The name a chosen recipe's rows carry (a recipe file's rows carry its 'name')."""
        if choice not in self._names:
            from l4opt.errors import L4OptError
            from l4opt.spec import recipes as rlib

            try:
                self._names[choice] = rlib.get(choice).name
            except L4OptError:
                self._names[choice] = choice
        return self._names[choice]


class DashboardModel(KnownTrials):
    """The dashboard's state and computations, widget-free. The controls' values live in plain
    attributes (workload, recipes, batch, budget_kind, budget, others) that the widgets set."""

    def __init__(self, run_dir, workload: str | None = None, recipes=(), batch: int = 1,
                 budget_kind: str = "max_drop", budget: float | None = None,
                 others: str = "hide", custom: dict | None = None):
        super().__init__(run_dir)
        self.workload, self.recipes, self.batch = workload, tuple(recipes), batch
        self.budget_kind = budget_kind
        self.budget = BUDGET_DEFAULTS[budget_kind] if budget is None else budget
        self.others = others
        self.choices = WorkloadChoices(custom)  # per workload: recipes, calibration count
        self.latency = BatchLatency(self.run_dir)
        # the parts' verbs, as the model's own
        self.default_calib, self.remember, self.recall, self.load_workload = (
            self.choices.default_calib, self.choices.remember, self.choices.recall,
            self.choices.load)
        self.latency_at, self.estimate = self.latency.at, self.latency.estimate

    # -------------------------------------------------------------- views
    def view_rows(self) -> tuple[list[dict], list[dict]]:
        """The latest trial of each recipe of this workload: those selected, in the order
        selected, and the others."""
        chosen = [self.recipe_name(r) for r in self.recipes]
        latest: dict = {}
        with self.lock:
            for r in self.rows:
                if r.get("workload") == self.workload and r.get("kind", "trial") in ("trial", None):
                    latest[r.get("recipe")] = r
        return [latest[n] for n in chosen if n in latest], \
            [r for n, r in latest.items() if n not in chosen]

    def set_budget_kind(self, kind: str) -> float:
        """Switch the budget kind; its value becomes that kind's default (a drop of 0.01 is
        no cosine). Returns the new value."""
        self.budget_kind, self.budget = kind, BUDGET_DEFAULTS[kind]
        return self.budget

    @property
    def y(self) -> str:
        return "metric_drop" if self.budget_kind == "max_drop" else "cos_drop"

    @property
    def budget_line(self) -> float:
        """The budget on the chart's drift axis."""
        return self.budget if self.budget_kind == "max_drop" else 1.0 - self.budget

    def frame(self, rows: list[dict] | None = None):
        """The trials shown (the selected recipes unless `rows` is given), every status kept,
        with the latency at the chosen batch and its band (dash_latency_*), the speed-up over
        the FP16 baseline at that batch, the budget verdict and the Pareto flag."""
        import numpy as np

        from l4opt.ui.plots import source_kind
        from l4opt.ui.tables import trial_frame

        if rows is None:
            rows = self.view_rows()[0]
        df = trial_frame(rows)
        if not len(df):
            return df
        b = self.batch
        recs = df.to_dict("records")
        ok = np.array([rowspec.status(r) in ("ok", "collapsed") for r in recs], bool)
        lat = [self.latency_at(r, b) if good else NO_LATENCY for r, good in zip(recs, ok)]
        for name, i in (("dash_latency_ms", 0), ("dash_latency_low_ms", 2),
                        ("dash_latency_high_ms", 3)):
            df[name] = [np.nan if v[i] is None else float(v[i]) for v in lat]
        df["dash_latency_source"] = [v.source for v in lat]
        df["dash_latency_batch"] = b
        has = df["dash_latency_source"].map(lambda s: source_kind(s) is not None)
        has &= df["dash_latency_ms"].gt(0) & ok
        df.loc[~has, ["dash_latency_ms", "dash_latency_low_ms", "dash_latency_high_ms"]] = np.nan
        budget = (self.budget_kind, self.budget)
        df["within_budget"] = [within(r, budget) if good else None for r, good in zip(recs, ok)]
        front = rowspec.pareto_mask(df[self.y].where(ok), df["dash_latency_ms"].where(has))
        df["pareto_here"] = [bool(f) if good else None for f, good in zip(front, ok)]
        return with_speedups(df, "dash_latency_ms")

    def recommendation(self, df=None) -> dict:
        """recommend() over the shown trials at the chosen batch and budget."""
        df = self.frame() if df is None else df
        return recommend(df, (self.budget_kind, self.budget), latency="dash_latency_ms",
                         run_dir=self.run_dir)

    def searches(self) -> list[tuple[str, dict]]:
        """The run directory's saved searches of this workload (unreadable ones kept)."""
        from l4opt.results.rundir import load_searches

        return [(n, d) for n, d in load_searches(self.run_dir)
                if d.get("error") or d.get("workload") == self.workload]

    def sensitivities(self, workload: str) -> list[tuple[str, list]]:
        """The run's per-layer sensitivities of `workload`: (name, its 8 most harmful layers)."""
        return sensitivities(self.run_dir, workload)

    def detail(self, row: dict) -> list[tuple[str, list[tuple[str, str]]]]:
        """A trial's facts for people: (section, [(field, formatted value)]) in reading order."""
        return detail_sections(row)


def sensitivities(run_dir, workload: str) -> list[tuple[str, list]]:
    """The run's per-layer sensitivities of `workload`: (name, its 8 most harmful layers)."""
    from l4opt.results.rundir import _load_json_dir

    return [(name, sorted(d.get("layers") or [], key=lambda x: x.get("rank", 0))[:8])
            for name, d in _load_json_dir(Path(run_dir) / "sensitivity")
            if d.get("workload") == workload]


# ------------------------------------------------------------------ a trial's detail panel

def _fmt(v, name=None, unit: str = "") -> str | None:
    from l4opt.ui.tables import format_column

    if v is None or v == "" or v == [] or v == {}:
        return None
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        text = format_column([v], name)[0]
        return None if text == "–" else f"{text} {unit}".strip()
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) or None
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in v.items()) or None
    return str(v)


def detail_sections(row: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """A trial row as grouped, formatted fields (no JSON, units named, empty fields left out):
    what happened, accuracy, precision, L4 latency, files."""
    from l4opt.ui.tables import latency_cells, layers_cells, rate_text, shapes_text

    drop = row.get("metric_drop") if _num(row.get("metric_drop")) is not None else _drop(row)
    lat = latency_cells([row.get("latency_ms")], [row.get("latency_low_ms")],
                        [row.get("latency_high_ms")])[0]
    metric = row.get("metric_name") or "metric"
    sections = [
        ("What happened", [("status", rowspec.status(row)), ("why", row.get("collapse_note")),
                           ("error", row.get("error")), ("notes", row.get("notes"))]),
        ("Accuracy", [(f"{metric}", _fmt(row.get("metric"), "metric")),
                      (f"{metric} unquantized", _fmt(row.get("metric_ref"), "metric")),
                      ("metric drop (lower is better)", _fmt(drop, "metric_drop")),
                      ("mean cosine", _fmt(row.get("cos_mean"), "cos_mean")),
                      ("worst cosine", _fmt(row.get("cos_min"), "cos_min")),
                      ("SQNR", _fmt(row.get("sqnr_db"), None, "dB")),
                      ("max abs error", _fmt(row.get("max_abs_err"))),
                      ("measured with", row.get("drift_backend")),
                      ("evaluation samples", _fmt(row.get("eval_samples")))]),
        ("Precision", [("format", row.get("format")), ("route", row.get("route")),
                       ("calibration", row.get("algorithm")),
                       ("calibration samples", _fmt(row.get("calib_samples"))),
                       ("8-bit layers (GEMM/conv)", layers_cells(
                           [row.get("quantized_layers")], [row.get("gemm_layers")])[0]),
                       ("Q/DQ nodes", _fmt(row.get("qdq_nodes"))),
                       ("TensorRT-only ops", _fmt(row.get("custom_ops")))]),
        ("L4 latency", [("latency (band)", None if lat == "–" else f"{lat} ms"),
                        ("at batch", _fmt(row.get("latency_batch"))),
                        ("shapes", shapes_text(row["shapes"]) if row.get("shapes") else None),
                        ("throughput", rate_text(row.get("throughput_samples_s"), "samples/s")
                         if _num(row.get("throughput_samples_s")) else None),
                        ("source", row.get("latency_source")),
                        ("TensorRT rules", row.get("latency_trt_version"))]),
        ("Files", [("ONNX", row.get("onnx_path")), ("log", row.get("log_path"))]),
    ]
    out = []
    for title, fields in sections:
        kept = [(k, str(v)) for k, v in fields if v not in (None, "", [], {}, "–")]
        if kept:
            out.append((title, kept))
    return out


def outputs_table(row) -> list[dict]:
    """Drift per output (models with several outputs): output, cos_mean, cos_min, sqnr_db."""
    tm = row.get("tensor_metrics_by_output")
    if not isinstance(tm, dict) or len(tm) < 2:
        return []
    return [{"output": str(name), **{k: (m or {}).get(k) for k in
                                     ("cos_mean", "cos_min", "sqnr_db", "max_abs_err")}}
            for name, m in tm.items() if isinstance(m, dict) or m is None]


def exclusions_table(row) -> list[dict]:
    """The layers left in high precision, with ModelOpt's reason."""
    ex = row.get("excluded_layers")
    if not isinstance(ex, (list, tuple)):
        return []
    return [{"node": str(x.get("node", "")), "reason": str(x.get("reason", ""))}
            if isinstance(x, dict) else {"node": str(x), "reason": "(no reason recorded)"}
            for x in ex]


# ------------------------------------------------------------------ the first table

def summary_frame(rows, latency: str = "latency_ms"):
    """The laptop-sized first table of trial rows, as strings ready to show: recipe, status,
    metric drop (lower is better), L4 latency with its band, speed-up vs the FP16 baseline of
    the same shapes (with its band; '–' without a baseline), 8-bit layers."""
    from l4opt.ui.tables import SUMMARY_COLUMNS, SUMMARY_NAMES, display_frame, trial_frame

    df = trial_frame(rows)
    if not len(df):
        return df
    df = with_speedups(df, latency)
    cols = [latency if c == "latency_ms" else c for c in SUMMARY_COLUMNS]
    return display_frame(df, cols, dict(SUMMARY_NAMES, **{latency: SUMMARY_NAMES["latency_ms"]}))


def summary_html(rows, latency: str = "latency_ms") -> str:
    """summary_frame as HTML, with every other column behind a toggle (<details>)."""
    from l4opt.spec.row import COLUMNS
    from l4opt.ui.tables import html_table, trial_frame

    df = trial_frame(rows)
    if not len(df):
        return "<i>no trials</i>"
    shown = summary_frame(rows, latency)
    first = shown.to_html(index=False, escape=True, classes="l4opt-table")
    more = [c for c in COLUMNS if c in df and c not in ("recipe", "status", "metric_delta")]
    return (f"<div class='l4opt-table'>{first}</div><details><summary>all columns</summary>"
            + html_table(df, ["recipe", "metric_drop"] + more, {"metric_drop": SUMMARY_DROP},
                         css_class="l4opt-table-more") + "</details>")


SUMMARY_DROP = "metric drop (lower is better)"


# ------------------------------------------------------------------ opening a written report

def report_href(path) -> str:
    """Where a link to a written file points from a notebook: the Jupyter server's /files/ URL
    (served with its scripts on, in a new browser tab) when the server that started this kernel
    (its parent process) holds the file under its root; else the path relative to the working
    directory, the notebook's own."""
    import os
    from urllib.parse import quote

    p = Path(path).resolve()
    try:
        from jupyter_server.serverapp import list_running_servers

        for srv in list_running_servers():
            if srv.get("pid") == os.getppid():
                rel = p.relative_to(Path(srv.get("root_dir") or "/").resolve())
                return f"{srv.get('base_url') or '/'}files/{quote(rel.as_posix())}"
    except Exception:  # no server, another layout, outside its root: the plain relative path
        pass
    return quote(Path(os.path.relpath(p, Path.cwd())).as_posix())


def report_link(path) -> str:
    """'report written: <a>path</a>' as HTML, the link opening the report in a new browser tab
    (report_href), where its charts run."""
    import html

    href = html.escape(report_href(path), quote=True)
    return (f"report written: <a href='{href}' target='_blank' rel='noopener'>"
            f"<code>{html.escape(str(path))}</code></a> (opens in a new browser tab)")
