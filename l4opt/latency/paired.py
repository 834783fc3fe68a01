"""Paired speed-ups: how much faster one artifact is than the FP16 baseline of the same
workload and shapes, with a band validated on published *pairs* (same model, same GPU or same
sm_89 card, same scenario and batch, two precisions).

Why a paired band
-----------------
The absolute band (l4opt/data/l4_fit.json "band": -39%..+106%, the worst leave-one-model-family-out
error, since a user's model is of a family the fit has not seen; -23%..+36% within a fitted family)
has to carry everything that moves one published figure:
the system and the TensorRT version (identical one-L4 MLPerf rows in l4_truth.csv, MaxQ systems
left out, spread max/min by a median 1.028 (1.003-1.164) between systems of one round on one
TensorRT version, 1.041 (up to 1.378) within a round, 1.164 (up to 2.65) across rounds;
RetinaNet SingleStream 4.69-6.48 ms over 11 one-L4 systems, 4.69-4.90 ms within v4.0; RetinaNet
Offline +26% from TRT 8.6 to 9.0 on one system: benchmarks/bench_paired.py prints them), host
harness and copies, the per-kernel fixed cost, and shapes the model prices imperfectly. Two
recipes of one model at the same shapes on the same machine share all of these, so they cancel
in the ratio: the published BERT-large
INT8/FP16 pair on NVIDIA's L4 is 1.637x Offline and 1.696x Server (3.6% apart) while each
absolute figure moves 13-16% between the scenarios (Server/Offline 0.871 INT8, 0.840 FP16).
What is left in a ratio is what differs between the precisions: the tensor-core efficiency of
each precision and which kernels quantize. With the absolute band two estimates separate only
when they differ by (1+q_high)/(1+q_low) = 3.37x (1.77x within a fitted family); with the paired band below an
estimated speed-up separates from its baseline once it exceeds 1+q_high (1.62x), or is below
1+q_low when slower.

It is not yet *narrower* on the side that matters: the held-out BERT pair is the model's
worst paired error (+61.5% on the speed-up = -38.1% on the latency ratio in l4_fit.json), larger
than any absolute error, because the FP16 tensor-core efficiency is fitted on that one pair
alone; held out, FP16 falls back to its prior and the model over-predicts INT8's gain. The
cancellation argument covers the shared errors, not a precision-specific efficiency that no other
row constrains. The band says so by being lopsided: speed-ups may be over-predicted by up to
61.5% and under-predicted by at most 7.3%.

How the band is derived (`paired_band`, `pair_errors`)
------------------------------------------------------
Error convention as estimate.Fitted.band: e = (predicted - published) / published of the
speed-up s = latency_b / latency_a, so the truth lies in [s / (1 + q_high), s / (1 + q_low)].
Pairs come from l4opt/data/l4_pairs.csv; only rows with in_band=yes count:

(a) pairs the cost model predicts (predictor "costmodel-loo"): the held-out ("loo") ratio of
    l4_fit.json, written by benchmarks/bench_estimate.py from a fit that never saw the pair. Today
    one: BERT-large INT8/FP16, NVIDIA L4 MLPerf v3.0 Offline, published 1.637x, held out 2.64x.
(b) pairs it cannot rebuild (predictor "rule": SDXL on three sm_89 cards other than L4, ModelOpt
    examples/benchmark.md): the published ratio against the rule of thumb
        s_rule = 1 / ((1 - f) + f / p)
    p = the peak tensor-core ratio of the two precisions on Ada (FP8 or INT8 vs FP16: 2; FP8 vs
    INT8: 1, the same dense peak), f = the share of the baseline's time in tensor-core work the
    recipe quantizes (RULE_TC_SHARE; the rest runs at FP16 speed). f is NOT measured here: the
    SDXL pipeline was not rebuilt (too heavy for this machine) and no kernel profile was
    published, so f = 0.75 for a diffusion pipeline is an assumption (ModelOpt quantizes the
    UNet's conv and linear layers; GroupNorm, SiLU, softmax, the VAE and text encoders stay FP16).
    `pair_errors` also reports the f each published pair implies, f = p (1 - 1/s) / (p - 1):
    0.25-0.62 for SDXL INT8/FP8 vs FP16 (0.78 for the BERT pair), so f = 0.75 over-predicts
    every SDXL speed-up (by 10-40%); a per-card f would fit them, but nothing here measures it.
Combined: the worst error on each side over the counted pairs, widened to contain 0 (so the
estimate lies inside its own band). With ten pairs, 10th-90th percentiles would interpolate away
the only pair the cost model itself predicts (the worst), so the worst errors are used and every
counted published pair lies inside the band. It rests on few pairs: one model-predicted, nine from
one published table (three cards x three precision pairs, not independent), none FP8 on an L4.
The uncounted pairs of l4_pairs.csv (in_band=no) are listed for what they show: the same BERT pair
in the Server scenario (dependent), CTuning's g2 pair (FP16 precision not verified) and NVIDIA's
v3.1 BERT-99.9 (configured use_fp8=True in NVIDIA's code, measured at its v3.0 FP16 engine's
speed, 0.61x INT8; whether FP8 kernels ran is not established; the slow side of FP8 GEMM
estimates cites it: costmodel.FP8_EVIDENCE["gemm_slow"]).

Validation: the band contains every counted published pair by construction (the benchmark,
benchmarks/bench_paired.py, prints each pair's error and the band); a leave-one-pair-out check of
the band itself needs more model-predicted pairs than exist here (one).

Rows (`add_speedups`)
---------------------
Every finished row gets speedup / speedup_low / speedup_high / speedup_source over the FP16
baseline row (recipe route 'none' or format 'fp16') of the same workload, shapes and batch in the
same list, None when there is none. Both estimated: the paired band. Both measured with one
source: the measurement is its own band. One measured and one estimated: the absolute bands
combined (nothing cancels between a measurement and an estimate).
"""
from __future__ import annotations

import csv
import json
import math
from functools import lru_cache
from pathlib import Path

from l4opt.errors import BadInput
from l4opt.spec import row as rowspec

DATA = Path(__file__).resolve().parent.parent / "data"
PAIRS_CSV = DATA / "l4_pairs.csv"
FIT_JSON = DATA / "l4_fit.json"

PAIR_COLUMNS = ("id", "model", "gpu", "arch", "precision_a", "precision_b", "ratio", "source",
                "note", "scaled")
SPEEDUP_FIELDS = ("speedup", "speedup_low", "speedup_high", "speedup_source")

# The rule of thumb for pairs the cost model cannot rebuild (see the module docstring).
PEAK_RATIO = {("int8", "fp16"): 2.0, ("fp8", "fp16"): 2.0, ("fp8", "int8"): 1.0,
              ("int8", "fp8"): 1.0}
RULE_TC_SHARE = {"sdxl": 0.75}  # assumed share of FP16 time in quantized tensor-core work
DEFAULT_TC_SHARE = 0.75


def family(model: str) -> str:
    """The model family of a truth/pair row's model name (resnet50_v1.5 -> resnet50)."""
    m = str(model).lower()
    for prefix, fam in (("resnet50", "resnet50"), ("retinanet", "retinanet"),
                        ("bert_large", "bert-large"), ("bert_base", "bert-base"),
                        ("3d_unet", "3d-unet"), ("rnnt", "rnnt"), ("dlrm", "dlrm"),
                        ("gptj", "gptj"), ("sdxl", "sdxl"), ("ssd_mobilenet", "ssd-mobilenet"),
                        ("ssd_resnet34", "ssd-resnet34")):
        if m.startswith(prefix):
            return fam
    return m.split("_")[0]


def pairs_table(path: str | Path = PAIRS_CSV) -> list[dict]:
    """The published pairs (l4opt/data/l4_pairs.csv), checked: ratio > 0, a source each."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise BadInput(f"{path}: no pairs")
    missing = [c for c in PAIR_COLUMNS if c not in rows[0]]
    if missing:
        raise BadInput(f"{path}: missing columns {missing}")
    for r in rows:
        r["ratio"] = float(r["ratio"])
        if not (math.isfinite(r["ratio"]) and r["ratio"] > 0):
            raise BadInput(f"{path}: pair {r['id']}: ratio {r['ratio']} is not positive")
        if not str(r.get("source") or "").strip():
            raise BadInput(f"{path}: pair {r['id']}: no source")
    return rows


def rule_speedup(precision_a: str, precision_b: str, tc_share: float) -> float:
    """s = 1 / ((1 - f) + f / p): peak ratio p of the precisions on Ada, share f quantized."""
    p = PEAK_RATIO.get((precision_a, precision_b))
    if p is None:
        raise BadInput(f"no rule for {precision_a} vs {precision_b}")
    return 1.0 / ((1.0 - tc_share) + tc_share / p)


def _loo_ratios(fit_json: Path) -> dict:
    """{'row_a / row_b': held-out predicted latency ratio a/b} from l4_fit.json."""
    d = json.loads(Path(fit_json).read_text())
    return {e["row"]: float(e["loo"]) for e in d.get("loo", []) if e.get("kind") == "ratio"}


def pair_errors(pairs_path: str | Path = PAIRS_CSV, fit_json: str | Path = FIT_JSON) -> list[dict]:
    """Every pair with what predicts it and the error of that prediction.

    Each: id, model, gpu, arch, precisions, published (speed-up of a over b), predicted, predictor
    ('cost model, held out' / 'rule p=.., f=..' / None), error ((predicted - published) /
    published), implied_tc_share (the f that would make the rule exact), in_band, scaled."""
    loo = _loo_ratios(Path(fit_json))
    out = []
    for r in pairs_table(pairs_path):
        pub = r["ratio"]
        pred, how = None, None
        kind = str(r.get("predictor") or "")
        if kind.startswith("costmodel"):
            lat_ratio = loo.get(f"{r.get('row_a')} / {r.get('row_b')}")
            if lat_ratio:
                pred, how = 1.0 / lat_ratio, "cost model, held out (l4_fit.json loo)"
            elif "same as" in kind:  # the same engines in another scenario: the same prediction
                twin = next((e for e in out if e["model"] == r["model"] and e["gpu"] == r["gpu"]
                             and e["precision_a"] == r["precision_a"]
                             and e["precision_b"] == r["precision_b"] and e["predicted"]), None)
                if twin:
                    pred, how = twin["predicted"], f"cost model, held out (as {twin['id']})"
        elif kind == "rule":
            f = RULE_TC_SHARE.get(family(r["model"]), DEFAULT_TC_SHARE)
            p = PEAK_RATIO[(r["precision_a"], r["precision_b"])]
            pred, how = rule_speedup(r["precision_a"], r["precision_b"], f), f"rule p={p:g}, f={f:g}"
        p = PEAK_RATIO.get((r["precision_a"], r["precision_b"]))
        implied = p * (1 - 1 / pub) / (p - 1) if p and p != 1 else None
        out.append({"id": r["id"], "model": r["model"], "gpu": r["gpu"], "arch": r["arch"],
                    "precision_a": r["precision_a"], "precision_b": r["precision_b"],
                    "published": pub, "predicted": pred, "predictor": how,
                    "error": (pred - pub) / pub if pred else None,
                    "implied_tc_share": implied,
                    "in_band": str(r.get("in_band") or "").lower() == "yes",
                    "scaled": r["scaled"], "source": r["source"]})
    return out


@lru_cache(maxsize=4)
def _band(pairs_path: str, fit_json: str) -> tuple[float, float, str]:
    errs = [e for e in pair_errors(pairs_path, fit_json) if e["in_band"] and e["error"] is not None]
    if not errs:
        raise BadInput(f"{pairs_path}: no pair with a prediction to derive the paired band from")
    model = [e for e in errs if e["predictor"].startswith("cost model")]
    rule = [e for e in errs if e["predictor"].startswith("rule")]
    scaled = sum(1 for e in errs if str(e["scaled"]).startswith("yes"))
    q_low = min(0.0, min(e["error"] for e in errs))
    q_high = max(0.0, max(e["error"] for e in errs))
    lo_e = min(errs, key=lambda e: e["error"])
    hi_e = max(errs, key=lambda e: e["error"])
    model_txt = ", ".join(f"{e['id']} {e['error']:+.1%}" for e in model)
    src = (f"paired band {q_low:+.1%}..{q_high:+.1%} of the speed-up: worst error on each side over "
           f"{len(errs)} published pairs (l4opt/data/l4_pairs.csv): {len(model)} predicted by the "
           f"cost model held out ({model_txt}), "
           f"{len(rule)} against the rule s = 1/((1-f)+f/p) with an assumed f "
           f"({scaled} on sm_89 cards other than L4); worst {hi_e['id']} {hi_e['error']:+.1%}, "
           f"{lo_e['id']} {lo_e['error']:+.1%}. Few pairs; no FP8 pair on an L4")
    return q_low, q_high, src


def paired_band(pairs_path: str | Path = PAIRS_CSV,
                fit_json: str | Path = FIT_JSON) -> tuple[float, float, str]:
    """(q_low, q_high, source) of the relative error of a predicted speed-up (see module doc):
    the true speed-up lies in [s / (1 + q_high), s / (1 + q_low)]."""
    return _band(str(pairs_path), str(fit_json))


# ------------------------------------------------------------------ rows

def _get(row, *names):
    for n in names:
        v = row.get(n) if isinstance(row, dict) else getattr(row, n, None)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return v
    return None


def _shapes_key(row) -> str:
    s = _get(row, "shapes")
    if isinstance(s, str):
        try:
            s = json.loads(s)
        except ValueError:
            pass
    return json.dumps(s, sort_keys=True, default=str)


def _same_setting(row, base) -> str | None:
    """Why two rows are not comparable, or None."""
    for name in ("workload", "latency_batch"):
        a, b = _get(row, name), _get(base, name)
        if a is not None and b is not None and a != b:
            return f"{name} differs ({a!r} vs {b!r})"
    if _shapes_key(row) != _shapes_key(base):
        return "shapes differ"
    return None


def _ident(row):
    return _get(row, "key", "trial_id")


def _is_same(row, base) -> bool:
    return row is base or (_ident(row) is not None and _ident(row) == _ident(base))


def speedup(row, baseline_row) -> dict:
    """Speed-up of `row` over `baseline_row` (same workload and shapes): baseline latency / row
    latency, with speedup_low/speedup_high and speedup_source (see the module docstring for
    which band applies). Raises BadInput for rows that are not comparable or have no latency."""
    why = _same_setting(row, baseline_row)
    if why:
        raise BadInput(f"speedup(): {why}: a speed-up needs the same workload and shapes")
    ms, base_ms = _get(row, "latency_ms", "total_ms"), _get(baseline_row, "latency_ms", "total_ms")
    if not (rowspec.valid_latency(ms) and rowspec.valid_latency(base_ms)):
        raise BadInput(f"speedup(): needs two latencies, got {ms!r} and {base_ms!r}")
    ms, base_ms = float(ms), float(base_ms)
    s = base_ms / ms
    if _is_same(row, baseline_row):
        return {"speedup": 1.0, "speedup_low": 1.0, "speedup_high": 1.0,
                "speedup_source": "the baseline itself"}
    src_a = str(_get(row, "latency_source", "source") or "")
    src_b = str(_get(baseline_row, "latency_source", "source") or "")
    if src_a.startswith("measured") and src_a == src_b:
        return {"speedup": s, "speedup_low": s, "speedup_high": s,
                "speedup_source": f"{src_a} pair: both measured, no band"}
    if src_a.startswith("estimated") and src_b.startswith("estimated"):
        q_low, q_high, band_src = paired_band()
        return {"speedup": s, "speedup_low": s / (1.0 + q_high), "speedup_high": s / (1.0 + q_low),
                "speedup_source": f"{src_a} pair; {band_src}"}
    # one measured, one estimated (or measured on different GPUs): absolute bands combined
    lo = _get(row, "latency_low_ms", "low_ms") or ms
    hi = _get(row, "latency_high_ms", "high_ms") or ms
    blo = _get(baseline_row, "latency_low_ms", "low_ms") or base_ms
    bhi = _get(baseline_row, "latency_high_ms", "high_ms") or base_ms
    return {"speedup": s, "speedup_low": min(s, float(blo) / float(hi)),
            "speedup_high": max(s, float(bhi) / float(lo)),
            "speedup_source": f"mixed pair ({src_a or '?'} over {src_b or '?'}): absolute bands "
                              f"combined, nothing cancels"}


def indistinguishable_paired(a, b, baseline) -> bool:
    """True when the speed-ups of `a` and `b` over the same `baseline` have overlapping bands:
    their latencies differ only if these paired bands do not overlap."""
    sa, sb = speedup(a, baseline), speedup(b, baseline)
    return sa["speedup_low"] <= sb["speedup_high"] and sb["speedup_low"] <= sa["speedup_high"]


def is_baseline(row) -> bool:
    """An FP16 baseline row: recipe route 'none' or format 'fp16'."""
    cfg = _get(row, "recipe_config") or {}
    route = _get(row, "route") or (cfg.get("route") if isinstance(cfg, dict) else None)
    fmt = _get(row, "format") or (cfg.get("format") if isinstance(cfg, dict) else None)
    return route == "none" or fmt == "fp16"


def _setting_key(row) -> tuple:
    return (_get(row, "workload"), _get(row, "latency_batch"), _shapes_key(row))


def _kind(row) -> str:
    return "measured" if str(_get(row, "latency_source") or "").startswith("measured") else "estimated"


def add_speedups(rows: list) -> list:
    """Set speedup, speedup_low, speedup_high, speedup_source on every row (in place; returns
    `rows`): finished rows (ok, collapsed, no-op) with a latency get their speed-up over the FP16
    baseline of the same workload, batch and shapes in `rows`, preferring a baseline of the same
    latency kind (both estimated or both measured, so the band applies) and route 'none'; rows
    without one (or failed, or without a latency) get None."""
    bases: dict = {}
    for r in rows:
        if rowspec.finished(r) and is_baseline(r) and rowspec.valid_latency(_get(r, "latency_ms")):
            bases.setdefault(_setting_key(r), []).append(r)
    for r in rows:
        out = dict.fromkeys(SPEEDUP_FIELDS)
        cands = bases.get(_setting_key(r)) if rowspec.finished(r) else None
        if cands and rowspec.valid_latency(_get(r, "latency_ms")):
            if is_baseline(r) and any(c is r for c in cands):
                base = r
            else:
                base = sorted(cands, key=lambda c: (_kind(c) != _kind(r),
                                                    _get(c, "route") != "none"))[0]
            try:
                out = speedup(r, base)
            except BadInput:
                pass
        r.update(out)
    return rows
