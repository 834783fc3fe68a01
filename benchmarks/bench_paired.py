"""Paired speed-ups: the published pairs, their prediction errors, the paired band, and what the
truth table covers.

Prints, in one run (seconds, no model is rebuilt):
1. the published pairs of l4opt/data/l4_pairs.csv (model, card, precisions, speed-up, source);
2. predicted vs published speed-up where something predicts it: the cost model's held-out ratio
   (l4opt/data/l4_fit.json "loo", written by benchmarks/bench_estimate.py) and the rule
   s = 1/((1-f)+f/p) (l4opt.latency.paired), with the error and the share f each pair implies;
3. the paired band (l4opt.latency.paired.paired_band) and the speed-up it takes to tell a recipe
   from its FP16 baseline, against the absolute band's;
4. per-family counts of the truth table (rows per family, per precision, per submitter, per GPU
   and how many are fitted), and the system-to-system spread of identical benchmark rows
   (same GPU, model, precision, scenario, batch) within one MLPerf round and across rounds.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _pct(x):
    return "   -   " if x is None else f"{x:+7.1%}"


def _f(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def pairs_section(paired) -> None:
    rows = paired.pairs_table()
    print(f"== published pairs ({len(rows)}; l4opt/data/l4_pairs.csv): speed-up = latency_b / latency_a")
    print(f"{'id':46s} {'gpu':13s} {'arch':6s} {'a/b':10s} {'speed-up':>8s} {'band':>4s}  scaled  source")
    for r in rows:
        src = r["source"].split(" ; ")[0]
        src = src if len(src) < 90 else "..." + src[-87:]
        print(f"{r['id']:46s} {r['gpu']:13s} {r['arch']:6s} {r['precision_a'] + '/' + r['precision_b']:10s} "
              f"{r['ratio']:8.3f} {r['in_band']:>4s}  {r['scaled'][:3]:6s}  {src}")


def errors_section(paired) -> list:
    errs = paired.pair_errors()
    print("\n== predicted vs published speed-ups (error = (predicted - published) / published)")
    print(f"{'id':46s} {'published':>9s} {'predicted':>9s} {'error':>7s} {'implied f':>9s}  "
          f"{'rule f=' + str(paired.DEFAULT_TC_SHARE):>11s}  predictor")
    for e in errs:
        rule = None
        if (e["precision_a"], e["precision_b"]) in paired.PEAK_RATIO:
            rule = paired.rule_speedup(e["precision_a"], e["precision_b"],
                                       paired.RULE_TC_SHARE.get(paired.family(e["model"]),
                                                                paired.DEFAULT_TC_SHARE))
        rule_err = None if rule is None else (rule - e["published"]) / e["published"]
        counted = "" if e["in_band"] else "  [not counted in the band]"
        print(f"{e['id']:46s} {e['published']:9.3f} {_f(e['predicted']):>9s} {_pct(e['error'])} "
              f"{_f(e['implied_tc_share'], '.2f'):>9s}  {_f(rule):>5s} {_pct(rule_err)}  "
              f"{e['predictor'] or '-'}{counted}")
    model = [e for e in errs if e["in_band"] and e["predictor"] and e["predictor"].startswith("cost")]
    rule = [e for e in errs if e["in_band"] and e["predictor"] and e["predictor"].startswith("rule")]
    for name, group in (("cost model (held out)", model), ("rule", rule)):
        if group:
            a = sorted(abs(e["error"]) for e in group)
            print(f"  {name}: {len(group)} pairs, median |error| {a[len(a) // 2]:.1%}, worst {a[-1]:.1%}")
    return errs


def band_section(paired, estimate) -> None:
    q_low, q_high, src = paired.paired_band()
    print(f"\n== paired band: speed-up truth in [s / (1{q_high:+.3f}), s / (1{q_low:+.3f})]")
    print(f"  {src}")
    fit = json.loads((REPO / "l4opt" / "data" / "l4_fit.json").read_text())
    a_lo, a_hi = fit["band"]["q_low"], fit["band"]["q_high"]
    print(f"  to tell a recipe from its FP16 baseline: paired speed-up > {1 + q_high:.2f}x "
          f"(or < {1 + q_low:.2f}x when slower)")
    print(f"  absolute band {a_lo:+.1%}..{a_hi:+.1%}: two estimates separate at "
          f"{(1 + a_hi) / (1 + a_lo):.2f}x; widened to +-38% (FP16 GEMMs, attention): "
          f"{1.38 / 0.62:.2f}x")
    base = {"workload": "w", "latency_batch": 8, "shapes": {"batch": 8}, "status": "ok",
            "route": "none", "format": "fp16", "latency_source": "estimated-l4", "latency_ms": 1.0}
    for s in (1.3, 1.6, 2.0):
        r = dict(base, route="onnx-ptq", format="int8", latency_ms=1.0 / s)
        sp = paired.speedup(r, base)
        print(f"  an estimated {s:.1f}x: band {sp['speedup_low']:.2f}x..{sp['speedup_high']:.2f}x "
              f"-> {'distinguishable' if sp['speedup_low'] > 1 else 'indistinguishable'} from FP16")


def _round(source: str) -> str:
    m = re.search(r"inference_results_(v[\d.]+)", str(source))
    return m.group(1) if m else "other"


def truth_section(paired, estimate) -> None:
    t = estimate.truth_table()
    t["family"] = [paired.family(m) for m in t["model"]]
    t["round"] = [_round(s) for s in t["source"]]
    print(f"\n== truth table: {len(t)} rows (l4opt/data/l4_truth.csv), "
          f"{t['family'].nunique()} families; fit: "
          + ", ".join(f"{k} {v}" for k, v in t["fit"].value_counts().items()))
    print(t.pivot_table(index="family", columns="gpu", values="id", aggfunc="count",
                        fill_value=0).to_string())
    one = t[t["gpu"] == "L4"]
    print(f"\n-- one-L4 rows ({len(one)}) per family and precision")
    print(one.pivot_table(index="family", columns="precision", values="id", aggfunc="count",
                          fill_value=0).to_string())
    print(f"\n-- one-L4 rows per submitter and TensorRT version")
    print(one.pivot_table(index="submitter", columns="trt_version", values="id", aggfunc="count",
                          fill_value=0).to_string())
    print("\n-- system-to-system spread of identical rows (same GPU, model, precision, scenario, "
          "batch; values in the row's metric; power-capped MaxQ systems included and marked *)")
    key = ["gpu", "family", "precision", "scenario", "batch", "metric"]
    summary = {"within a round, one TensorRT version": [], "within a round": [],
               "across rounds": []}
    print(f"{'gpu':4s} {'benchmark':30s} {'round':6s} {'n':>2s} {'min':>10s} {'max':>10s} "
          f"{'max/min':>7s}  systems")
    for k, g in t[t["fit"] != "excluded"].groupby(key):
        for rnd, gr in list(g.groupby("round")) + [("all", g)]:
            if gr["system"].nunique() < 2 or (rnd == "all" and g["round"].nunique() < 2):
                continue
            v = gr["value"].astype(float)
            full = gr[~gr["flags"].astype(str).str.contains("power_capped")]  # MaxQ left out
            if k[0] == "L4" and full["system"].nunique() >= 2:
                w = full["value"].astype(float)
                summary["across rounds" if rnd == "all" else "within a round"].append(w.max() / w.min())
            if k[0] == "L4" and rnd != "all":
                for _, gt in full.groupby("trt_version"):
                    if gt["system"].nunique() >= 2:
                        w = gt["value"].astype(float)
                        summary["within a round, one TensorRT version"].append(w.max() / w.min())
            names = ", ".join(f"{r.submitter} {r.system}{'*' if 'power_capped' in str(r.flags) else ''}"
                              + (f" {r.round}" if rnd == "all" else "") + f" {r.value:g}"
                              for r in gr.itertuples())
            bench = f"{k[1]} {k[2]} {k[3]} b{int(k[4])}"
            print(f"{k[0]:4s} {bench:30s} {rnd:6s} {len(gr):2d} {v.min():10.4g} {v.max():10.4g} "
                  f"{v.max() / v.min():7.3f}  {names[:150]}")
    print("\n-- one-L4 spread summary (max/min of identical rows; MaxQ systems left out)")
    for name, xs in summary.items():
        if xs:
            xs = sorted(xs)
            print(f"  {name:38s} {len(xs):2d} benchmarks: median {xs[len(xs) // 2]:.3f}, "
                  f"range {xs[0]:.3f}..{xs[-1]:.3f}")


def main() -> None:
    from l4opt.latency import estimate, paired

    pairs_section(paired)
    errors_section(paired)
    band_section(paired, estimate)
    truth_section(paired, estimate)


if __name__ == "__main__":
    main()
