"""Fit the L4 cost model on the truth table and validate it on rows it was not fitted on.

For every row of l4opt/data/l4_truth.csv marked `abs` or `ratio`: rebuild the model from its
architecture with random weights, export ONNX, quantize with ModelOpt ONNX PTQ where the row is
INT8/FP8 (random calibration data: fine for latency, never for accuracy), and have the cost
model list its kernels. Then, in one run, it prints:
1. the fit on all rows (constants; FP8's tied to INT8's when no FP8 row exists, and why);
2. every row's held-out error two ways: leave-one-GROUP-out (a scenario's two submission rounds
   leave together; its 10th-90th percentiles are the shipped band) and leave-one-model-FAMILY-out
   (every row of resnet50, retinanet, bert-large... held out together, refit on the others);
3. the same family-held-out fits predicting the other submitters' one-L4 rows of the same
   benchmarks (Dell, Lenovo, CTuning; other TensorRT versions; MaxQ power-capped systems listed,
   not counted), and median / worst |error| per family and per precision;
4. the held-out speed-up errors of the published pairs, and the FP8 band built from the sm_89
   FP8/INT8 pairs (no FP8 row on an L4 is verified);
5. the system-to-system spread of identical rows (same GPU, model, precision, scenario, batch):
   what an estimator that does not know the system cannot beat;
6. whether each published row lies inside its band (in-fit and held out);
7. issue 19's targets (family-held-out median |error| <= 12%, worst <= 35%, held-out paired
   speed-up error <= 10% median), REACHED or MISSED with the numbers;
8. the estimator's own wall time and peak memory on the largest truth graph (in a child process);
9. the default workload's (minilm) FP16/FP8/INT8 estimates (--no-minilm to skip), and the
   engine-graph path on the two TITAN RTX fixture engines (a test of that path, not the fit).
It writes the constants, both held-out tables, the band and the per-kind errors to
l4opt/data/l4_fit.json (--no-write to leave it).

Generated ONNX and kernel lists are cached under $L4OPT_CACHE/truth-models (not the repo).
First run: a few minutes per large model on 2 cores (ModelOpt PTQ of BERT-large dominates).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

# issue 19's targets
TARGET_LOFO_MEDIAN, TARGET_LOFO_WORST, TARGET_PAIRED_MEDIAN = 0.12, 0.35, 0.10


def row_features(row, cache: Path, progress) -> dict:
    """Kernel features of one truth row (cached by ONNX file, batch, flags, model version)."""
    import onnx

    import truth_models
    from l4opt.latency import costmodel

    path = truth_models.onnx_path(row["model"], row["precision"])
    flags = str(row["flags"] or "")
    key = (f"{path.name}-{path.stat().st_size}-b{int(row['batch'])}-trt{row['trt_version']}-"
           f"{'pq' if 'prequantized_input' in flags else 'fq'}-{source_hash()}")
    f = cache / "features" / f"{key}.json"
    if f.exists():
        return json.loads(f.read_text())
    t = time.time()
    g = costmodel.kernels(onnx.load(str(path)), "L4", batch=int(row["batch"]),
                          trt_version=row["trt_version"],
                          input_quantized="prequantized_input" in flags)
    feat = costmodel.features(g.kernels, "L4")
    feat["facts"] = g.facts
    feat["n_kernels"] = len(g.kernels)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(feat))
    progress(f"  kernels of {row['id']}: {len(g.kernels)} ({time.time() - t:.1f} s)")
    return feat


# the modules whose code decides kernels(): any edit to them recomputes the cached features
RULE_MODULES = ("costmodel", "gpus", "graph_shapes", "validate", "attention", "partition",
                "recurrent", "memory", "tiles", "kernel")


def source_hash() -> str:
    """Hash of the cost model's rule modules (RULE_MODULES): keys the feature CACHE only (any
    edit recomputes the kernels); the fit is stamped with costmodel.COSTMODEL_VERSION, which
    estimate.py checks."""
    import hashlib

    from l4opt.latency import costmodel

    h = hashlib.sha256()
    for name in RULE_MODULES:
        h.update((Path(costmodel.__file__).parent / f"{name}.py").read_bytes())
    return h.hexdigest()[:8]


def kinds_of(feat: dict) -> list:
    from l4opt.latency import costmodel

    return costmodel.validation_kinds(feat, feat.get("facts"))


def build_fit_rows(truth, feats):
    """Fit rows (absolute and speed-up pairs) with, per row: its LOO group, label, the kinds of
    work it validates (costmodel.validation_kinds; a ratio row: both graphs'), model family and
    precision ('int8/fp16' for a pair)."""
    from l4opt.latency.paired import family

    rows, meta = [], []
    for r in truth.itertuples():
        if r.fit == "abs":
            rows.append({"features": feats[r.id], "measured_ms": float(r.latency_ms)})
            meta.append({"kind": "abs", "label": r.id, "group": r.group, "family": family(r.model),
                         "precision": r.precision, "kinds": kinds_of(feats[r.id]),
                         "model": r.model, "batch": int(r.batch), "flags": str(r.flags or "")})
    for gname, grp in truth[truth["fit"] == "ratio"].groupby("group"):
        base = grp[grp["precision"] == "fp16"]
        for q in grp[grp["precision"].isin(["int8", "fp8"])].itertuples():
            if len(base) != 1:
                raise SystemExit(f"ratio group {gname} needs exactly one fp16 row")
            b = base.iloc[0]
            rows.append({"ratio": (feats[q.id], feats[b["id"]]),
                         "measured": float(q.latency_ms) / float(b["latency_ms"])})
            meta.append({"kind": "ratio", "label": f"{q.id} / {b['id']}", "group": gname,
                         "family": family(q.model), "precision": f"{q.precision}/fp16",
                         "kinds": sorted(set(kinds_of(feats[q.id])) | set(kinds_of(feats[b["id"]])))})
    return rows, meta


def predicted(row: dict, c) -> tuple[float, float]:
    """(in-model value, measured) of a fit row: ms per batch, or the latency ratio a/b."""
    from l4opt.latency import costmodel

    if "ratio" in row:
        fa, fb = row["ratio"]
        return costmodel.predict_ms(fa, c) / costmodel.predict_ms(fb, c), row["measured"]
    return costmodel.row_ms(row, c), row["measured_ms"]


def rows_table(rows, meta, c_all, logo, lofo) -> list:
    """Print every fit row's in-fit, group-held-out and family-held-out error; return the table."""
    print(f"\n{'row':46s} {'family':10s} {'measured':>9s} {'in-fit':>9s} {'LOGO':>9s} "
          f"{'LOGO err':>8s} {'LOFO':>9s} {'LOFO err':>8s}")
    print("  (latency ms per batch; ratio rows: INT8/FP16 latency; LOGO: group held out, "
          "LOFO: the whole model family held out)")
    table = []
    for row, m, g, f in zip(rows, meta, logo, lofo):
        infit, meas = predicted(row, c_all)
        table.append({"row": m["label"], "kind": m["kind"], "family": m["family"],
                      "precision": m["precision"], "measured": meas, "in_fit": infit,
                      "loo": g["predicted"], "loo_error": g["error"], "lofo": f["predicted"],
                      "lofo_error": f["error"], "validates": m["kinds"]})
        print(f"{m['label'][:46]:46s} {m['family'][:10]:10s} {meas:9.4f} {infit:9.4f} "
              f"{g['predicted']:9.4f} {100 * g['error']:+7.1f}% {f['predicted']:9.4f} "
              f"{100 * f['error']:+7.1f}%")
    return table


def _abs_stats(errs) -> str:
    a = np.abs(np.asarray(errs, float))
    return (f"n {len(a):2d}  median |err| {100 * np.median(a):5.1f}%  worst {100 * a.max():5.1f}%"
            if len(a) else "n  0")


def other_system_rows(truth, meta, feats, cache, progress) -> list:
    """One-L4 rows not fitted whose benchmark (model, precision, batch, scenario kind) matches a
    fitted absolute row: other submitters, rounds and TensorRT versions. Server rows (throughput
    under a latency bound, not a per-batch latency) are left out. Features are reused from the
    fitted row when its graph has no attention block (TensorRT version then changes no rule)."""
    fitted = {(m["model"], m["precision"], m["batch"], "prequantized_input" in m["flags"]): m
              for m in meta if m["kind"] == "abs"}
    out = []
    for r in truth[(truth["fit"] == "no") & (truth["gpu"] == "L4")].to_dict("records"):
        flags = str(r["flags"] or "")
        key = (r["model"], r["precision"], int(r["batch"]), "prequantized_input" in flags)
        if key not in fitted or r["scenario"] == "Server":
            continue
        src = fitted[key]["label"]
        f = feats[src]
        facts = f.get("facts") or {}
        if facts.get("mha_fused") or facts.get("mha_unfused"):
            f = row_features(r, cache, progress)
        out.append({"row": r["id"], "family": fitted[key]["family"], "precision": r["precision"],
                    "features": f, "measured_ms": float(r["latency_ms"]),
                    "maxq": "power_capped" in flags, "submitter": r["submitter"],
                    "trt": r["trt_version"], "kinds": fitted[key]["kinds"]})
    return out


def family_sections(table, others, c_all, lofo_c) -> dict:
    """Per-family and per-precision median / worst |LOFO error|: fitted rows, and fitted rows
    plus the other systems' rows of the same benchmarks (MaxQ left out); prints both."""
    from l4opt.latency import costmodel

    for o in others:
        o["in_fit"] = costmodel.predict_ms(o["features"], c_all)
        c = lofo_c[o["family"]]
        o["lofo"] = costmodel.predict_ms(o["features"], c)
        o["lofo_error"] = costmodel.relative_error(o["lofo"], o["measured_ms"])
    print(f"\n-- the family-held-out fits on {len(others)} other one-L4 rows of the fitted "
          f"benchmarks (* = MaxQ power-capped, not counted)")
    for o in sorted(others, key=lambda o: (o["family"], o["row"])):
        print(f"  {o['row'][:58]:58s}{'*' if o['maxq'] else ' '} TRT {o['trt']:8s} measured "
              f"{o['measured_ms']:9.4f} LOFO {o['lofo']:9.4f} {100 * o['lofo_error']:+6.1f}%")
    abs_rows = [t for t in table if t["kind"] == "abs"]
    counted = [o for o in others if not o["maxq"]]
    summary = {}
    print("\n-- leave-one-family-out |error| per family and precision (absolute rows)")
    for name, key in (("family", "family"), ("precision", "precision")):
        for val in sorted({t[key] for t in abs_rows} | {o[key] for o in counted}):
            fit_e = [t["lofo_error"] for t in abs_rows if t[key] == val]
            all_e = fit_e + [o["lofo_error"] for o in counted if o[key] == val]
            summary[f"{name}:{val}"] = {"fitted": fit_e, "with_other_systems": all_e}
            print(f"  {name} {val:10s} fitted rows: {_abs_stats(fit_e)}   + other systems: "
                  f"{_abs_stats(all_e)}")
    for t in table:
        if t["kind"] == "ratio":
            print(f"  pair {t['precision']} ({t['family']}): LOFO error of the latency ratio "
                  f"{100 * t['lofo_error']:+.1f}%")
    for p in ("fp16", "fp8"):
        if not any(t["precision"] == p for t in abs_rows):
            print(f"  precision {p}: no absolute row can be rebuilt and fitted "
                  + ("(FP16 enters only through the pair above)" if p == "fp16" else
                     "(no verified FP8 row on an L4: FP8 is tied to INT8, see the FP8 band)"))
    return summary


def spread_section(truth) -> dict:
    """System-to-system spread of identical one-L4 rows (same family, precision, scenario,
    batch, metric; different submitter, system or round): max/min - 1 of their latency."""
    from l4opt.latency.paired import family

    t = truth[(truth["gpu"] == "L4") & (truth["fit"] != "excluded")].copy()
    t["family"] = [family(m) for m in t["model"]]
    t["maxq"] = t["flags"].fillna("").str.contains("power_capped")
    print("\n-- system-to-system spread of identical one-L4 rows (latency ms per batch; "
          "MaxQ power-capped systems left out)")
    print(f"  {'benchmark':40s} {'n':>2s} {'min':>9s} {'median':>9s} {'max':>9s} {'spread':>7s}"
          f"  values")
    spreads = {}
    for k, g in t[~t["maxq"]].groupby(["family", "precision", "scenario", "batch", "metric"]):
        if len(g) < 2:
            continue
        v = np.sort(g["latency_ms"].to_numpy(float))
        name = f"{k[0]} {k[1]} {k[2]} b{int(k[3])}"
        spreads[name] = float(v[-1] / v[0] - 1)
        vals = "/".join(f"{x:.3g}" for x in v)
        print(f"  {name:40s} {len(v):2d} {v[0]:9.4g} {np.median(v):9.4g} {v[-1]:9.4g} "
              f"{100 * spreads[name]:6.1f}%  {vals[:70]}")
    if spreads:
        xs = np.array(list(spreads.values()))
        print(f"  over {len(xs)} benchmarks: median spread {100 * np.median(xs):.1f}%, largest "
              f"{100 * xs.max():.1f}% ({max(spreads, key=spreads.get)}); a model blind to the "
              f"system and TensorRT version errs by about half the spread on such a row at best")
    return spreads


def coverage_section(table, others, fit) -> dict:
    """Does each published row lie inside its band: the estimator's in-fit estimate with the
    band it would print, and the family-held-out prediction with the same band."""
    out = {}
    cases = [(t["row"], t["in_fit"], t["lofo"], t["measured"], t["validates"])
             for t in table if t["kind"] == "abs"]
    cases += [(o["row"], o["in_fit"], o["lofo"], o["measured_ms"], o["kinds"])
              for o in others if not o["maxq"]]
    print(f"\n-- published rows inside their band (band {100 * fit.q_low:+.1f}%..{100 * fit.q_high:+.1f}%"
          f" of the estimate, widened per kind of work)")
    for name, idx in (("in-fit estimate", 1), ("family-held-out estimate", 2)):
        outside = []
        for c in cases:
            lo, hi, _ = fit.widened(c[4])
            low, high = fit.band(c[idx], lo, hi)
            if not low <= c[3] <= high:
                outside.append(f"{c[0]} (measured {c[3]:.4g}, band {low:.4g}-{high:.4g})")
        n_fit = sum(1 for t in table if t["kind"] == "abs")
        out[name] = {"rows": len(cases), "outside": outside}
        print(f"  {name}: {len(cases) - len(outside)} of {len(cases)} rows inside "
              f"({n_fit} fitted + {len(cases) - n_fit} other systems)"
              + ("; outside: " + "; ".join(outside[:6]) if outside else ""))
    return out


def paired_errors(table) -> list:
    """Held-out speed-up errors of the fitted pairs (family held out): (label, error)."""
    out = []
    for t in table:
        if t["kind"] == "ratio":  # speed-up = 1 / latency ratio
            out.append((t["row"], t["measured"] / t["lofo"] - 1))
    return out


def targets_section(table, others, pairs, coverage) -> dict:
    """Issue 19's targets, REACHED or MISSED, with the numbers."""
    def verdict(ok):
        return "REACHED" if ok else "MISSED"

    fit_e = np.abs([t["lofo_error"] for t in table if t["kind"] == "abs"])
    all_e = np.concatenate([fit_e, np.abs([o["lofo_error"] for o in others if not o["maxq"]])])
    res = {}
    print("\n== issue 19 targets")
    for name, e in (("fitted rows", fit_e), ("fitted + other systems' rows", all_e)):
        med, worst = float(np.median(e)), float(e.max())
        res[name] = {"median": med, "worst": worst, "n": int(len(e))}
        print(f"  leave-one-family-out median |error| over {len(e)} {name}: {100 * med:.1f}% "
              f"(target <= {100 * TARGET_LOFO_MEDIAN:.0f}%): {verdict(med <= TARGET_LOFO_MEDIAN)}")
        print(f"  leave-one-family-out worst |error| over {len(e)} {name}: {100 * worst:.1f}% "
              f"(target <= {100 * TARGET_LOFO_WORST:.0f}%): {verdict(worst <= TARGET_LOFO_WORST)}")
    if pairs:
        pe = np.abs([e for _, e in pairs])
        res["paired"] = {"median": float(np.median(pe)), "pairs": [[lab, e] for lab, e in pairs]}
        print(f"  held-out paired speed-up error, median over {len(pe)} cost-model pair(s) "
              f"({'; '.join(f'{lab}: {100 * e:+.1f}%' for lab, e in pairs)}): "
              f"{100 * np.median(pe):.1f}% (target <= {100 * TARGET_PAIRED_MEDIAN:.0f}%): "
              f"{verdict(np.median(pe) <= TARGET_PAIRED_MEDIAN)}")
    for name, c in coverage.items():
        ok = not c["outside"]
        print(f"  every published row inside its band ({name}): {c['rows'] - len(c['outside'])}"
              f"/{c['rows']}: {verdict(ok)}")
    return res


def new_family_band(table, others) -> tuple[float, float]:
    """The shipped band: the worst family-held-out error on each side over the fitted rows and
    the other systems' rows (MaxQ left out), widened to contain 0. A user's model is of a family
    the fit has not seen, so this is the error that applies to it; taking the worst (not the
    10th/90th percentile) puts every published row inside the band of its family-held-out
    estimate, as the issue asks, at the price of a wide band while two families are fitted."""
    errs = [t["lofo_error"] for t in table if t["kind"] == "abs"]
    errs += [o["lofo_error"] for o in others if not o["maxq"]]
    return min(0.0, float(min(errs))), max(0.0, float(max(errs)))


def fp8_kind_errors(q_lo: float, q_high: float) -> dict | None:
    """The FP8 band's bounds from evidence, not L4 rows: the INT8 band compounded with the
    error of pricing FP8 as INT8 on the counted sm_89 FP8/INT8 pairs (l4opt/data/l4_pairs.csv)."""
    from l4opt.latency import costmodel, paired

    prs = [p for p in paired.pairs_table() if p["precision_a"] == "fp8"
           and p["precision_b"] == "int8" and str(p.get("in_band")).lower() == "yes"]
    if not prs:
        return None
    errs = [p["ratio"] - 1 for p in prs]  # FP8 latency predicted = INT8's: (t_i8 - t_f8) / t_f8
    lo = (1 + q_lo) * (1 + min(0.0, min(errs))) - 1
    hi = (1 + q_high) * (1 + max(0.0, max(errs))) - 1
    uncounted = [p for p in paired.pairs_table() if p["precision_a"] == "fp8"
                 and p["gpu"] == "L4" and str(p.get("in_band")).lower() != "yes"]
    extra = "".join(f"; not counted: {p['id']} {p['ratio']:.2f}x (FP8 configured, not "
                    f"established: it ran at FP16 speed)" for p in uncounted)
    ev = (f"{costmodel.FP8_EVIDENCE['gemm']} ({', '.join(p['id'] for p in prs)}: pricing FP8 as "
          f"INT8 errs {100 * min(errs):+.1f}%..{100 * max(errs):+.1f}%), compounded with the INT8 "
          f"band{extra}")
    return {"errors": [lo, hi], "rows": [f"{p['id']} (FP8/INT8, {p['gpu']})" for p in prs],
            "evidence": ev}


def estimator_cost(path: Path, batch: int, trt: str, quantized: bool) -> dict:
    """Wall time and peak RSS of one estimate_onnx call, measured in a fresh child process."""
    cmd = [sys.executable, __file__, "--measure-one", str(path), "--batch", str(batch),
           "--trt", trt] + (["--input-quantized"] if quantized else [])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if res.returncode:
        return {"error": res.stderr.strip()[-400:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _vm_hwm_mb() -> float:
    """Peak resident memory of this process image (VmHWM: reset by exec, unlike ru_maxrss,
    which Linux carries over from the forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(path: str, batch: int, trt: str, quantized: bool) -> None:
    """(child process) estimate one graph; print time and peak memory as one JSON line."""
    from l4opt.latency import estimate

    base = _vm_hwm_mb()
    t = time.perf_counter()
    e = estimate.estimate_onnx(path, "L4", batch=batch, trt_version=trt, input_quantized=quantized)
    secs = time.perf_counter() - t
    print(json.dumps({"graph": Path(path).name, "bytes": Path(path).stat().st_size,
                      "batch": batch, "kernels": len(e.layers), "seconds": secs,
                      "peak_rss_mb": _vm_hwm_mb(), "rss_after_imports_mb": base,
                      "estimate_ms": e.total_ms}))


def write_fit(c_all, table, meta, q_lo, q_hi, kind_errors, extra) -> None:
    """l4opt/data/l4_fit.json: constants (and what fits each), bands, held-out tables."""
    from l4opt.latency import costmodel, estimate

    abs_err = np.array([t["loo_error"] for t in table if t["kind"] == "abs"])
    worst_i = int(np.argmax(np.abs(abs_err)))
    labels = [t["row"] for t in table if t["kind"] == "abs"]
    n_pairs = sum(1 for m in meta if m["kind"] == "ratio")
    med = float(np.median(np.abs(abs_err)))
    every = extra["targets"]["fitted + other systems' rows"]
    fam_lo, fam_hi = extra["in_family"]
    out = {"schema_version": 1, "created": dt.date.today().isoformat(),
           "costmodel": costmodel.COSTMODEL_VERSION, "constants": c_all.to_dict(),
           "constants_fitted_on": {
               "tc_eff": f"FP16: only the {n_pairs} INT8/FP16 speed-up pair(s) (ratio rows)",
               "tc8_eff": f"INT8: {len(abs_err)} absolute rows and the pair(s)",
               "tcf8_eff": "FP8: not fitted (null = tied to tc8_eff); " + costmodel.FP8_EVIDENCE["gemm"]
               if c_all.tcf8_eff is None else "FP8: fitted on FP8 rows",
               "mem_eff": "all rows", "kernel_us": "all rows"},
           "band": {"q_low": q_lo, "q_high": q_hi, "quantiles": "worst each side",
                    "source": f"leave-one-model-family-out over {every['n']} published "
                              f"one-L4 rows ({len(abs_err)} fitted, {every['n'] - len(abs_err)} "
                              f"other systems', MaxQ left out; l4opt/data/l4_truth.csv): the worst relative error each "
                              f"side, so every one lies inside its band (median |error| "
                              f"{100 * every['median']:.0f}%;"
                              f" within a fitted family, leave-one-group-out: median "
                              f"{100 * med:.0f}%, 10th-90th percentile "
                              f"{100 * fam_lo:+.0f}%..{100 * fam_hi:+.0f}%;"
                              f" benchmarks/bench_estimate.py)",
                    "n": int(every["n"]),
                    "in_family": {"q_low": fam_lo, "q_high": fam_hi,
                                  "quantiles": list(estimate.BAND_QUANTILES),
                                  "n": int(len(abs_err))}},
           "kind_errors": kind_errors, "loo": table,
           "summary": {"median_abs_error": med, "worst_row": labels[worst_i],
                       "worst_error": float(abs_err[worst_i]),
                       "ratio_errors": [t["loo_error"] for t in table if t["kind"] == "ratio"],
                       "lofo": extra["targets"], "lofo_by": extra["by"]},
           "other_systems": extra["others"], "spread": extra["spread"],
           "estimator_cost": extra["cost"]}
    estimate.FIT_JSON.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {estimate.FIT_JSON.relative_to(REPO)}")


def kind_errors_of(table) -> dict:
    """Held-out (group) errors of the rows that validate each kind of work."""
    ke: dict = {}
    for t in table:
        for k in t["validates"]:
            d = ke.setdefault(k, {"errors": [], "rows": []})
            d["errors"].append(float(t["loo_error"]))
            d["rows"].append(t["row"])
    return ke


def largest_graph(used) -> tuple:
    """(path, batch, trt, input_quantized) of the largest ONNX any fit row uses, at its batch."""
    import truth_models

    best = None
    for r in used.to_dict("records"):
        p = truth_models.onnx_path(r["model"], r["precision"])
        k = (p.stat().st_size, int(r["batch"]))
        if best is None or k > best[0]:
            best = (k, p, int(r["batch"]), r["trt_version"], "prequantized_input" in str(r["flags"]))
    return best[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-write", action="store_true", help="do not update l4opt/data/l4_fit.json")
    ap.add_argument("--no-minilm", action="store_true", help="skip the default-workload section")
    ap.add_argument("--fixtures", default=str(REPO / "tests" / "fixtures" / "trtexec"))
    ap.add_argument("--measure-one", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--trt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--input-quantized", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure_one:
        return measure_one(a.measure_one, a.batch, a.trt, a.input_quantized)

    import truth_models
    from l4opt.latency import costmodel, estimate

    t0 = time.time()

    def progress(msg):
        print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True)

    cache = truth_models.cache_root()
    truth = estimate.truth_table()
    used = truth[truth["fit"].isin(["abs", "ratio"])]
    print(f"truth table: {len(truth)} rows, {len(used)} used ({(truth['fit'] == 'abs').sum()} "
          f"absolute, {(truth['fit'] == 'ratio').sum()} in speed-up pairs), "
          f"{(truth['fit'] == 'no').sum()} listed only, {(truth['fit'] == 'excluded').sum()} excluded")
    feats = {}
    for r in used.to_dict("records"):
        progress(f"{r['id']}: {r['model']} {r['precision']} batch {r['batch']}")
        feats[r["id"]] = row_features(r, cache, progress)

    rows, meta = build_fit_rows(used, feats)
    c_all = costmodel.fit(rows, start=costmodel.Constants())
    progress(f"fitted on all {len(rows)} rows: {c_all.to_dict()}")
    if c_all.tcf8_eff is None:
        print(f"  FP8 tensor-core efficiency: NOT fitted, tied to INT8's: "
              f"{costmodel.FP8_EVIDENCE['gemm']}")
    # each held-out fit starts from the a-priori defaults, never from the fit that saw the row
    logo = costmodel.loo(rows, [m["group"] for m in meta], start=costmodel.Constants())
    lofo = costmodel.loo(rows, [m["family"] for m in meta], start=costmodel.Constants())
    lofo_c = {m["family"]: costmodel.Constants.from_dict(f["constants"]) for m, f in zip(meta, lofo)}
    table = rows_table(rows, meta, c_all, logo, lofo)
    abs_logo = [t["loo_error"] for t in table if t["kind"] == "abs"]
    print(f"\nleave-one-group-out over {len(abs_logo)} absolute rows: {_abs_stats(abs_logo)}")
    for fam, c in sorted(lofo_c.items()):
        print(f"  constants with family {fam} held out: "
              + ", ".join(f"{k} {v:.3g}" for k, v in c.to_dict().items() if v is not None))
    in_family = costmodel.band_quantiles(abs_logo, *estimate.BAND_QUANTILES)
    print(f"in-family band (LOGO errors, 10th/90th percentile): {100 * in_family[0]:+.1f}% / "
          f"{100 * in_family[1]:+.1f}%: what a model of a family the fit has seen would get")
    others = other_system_rows(truth, meta, feats, cache, progress)
    by = family_sections(table, others, c_all, lofo_c)  # sets each other row's lofo_error
    q_lo, q_hi = new_family_band(table, others)
    print(f"shipped band (family held out, worst each side over the fitted and other systems' "
          f"rows): {100 * q_lo:+.1f}% / {100 * q_hi:+.1f}% -> an estimate E means truth in "
          f"[E/{1 + q_hi:.2f}, E/{1 + q_lo:.2f}]")
    kind_errors = kind_errors_of(table)
    fp8 = fp8_kind_errors(q_lo, q_hi)
    if fp8:
        kind_errors["fp8_gemm"] = fp8
    for k, ke in sorted(kind_errors.items()):
        print(f"graphs with {k}: band bounds {[f'{100 * e:+.1f}%' for e in ke['errors']]} from "
              f"{ke['rows']}" + (f"\n    evidence: {ke['evidence']}" if ke.get("evidence") else ""))

    spread = spread_section(truth)
    fit = estimate.Fitted(c_all, q_lo, q_hi, "this run", costmodel.COSTMODEL_VERSION, kind_errors)
    coverage = coverage_section(table, others, fit)
    targets = targets_section(table, others, paired_errors(table), coverage)

    path, batch, trt, quant = largest_graph(used)
    progress(f"estimator cost: {path.name} ({path.stat().st_size / 1e9:.2f} GB) at batch {batch}")
    cost = estimator_cost(path, batch, trt, quant)
    print(f"\n== estimator cost on the largest truth graph: " + (
        f"{cost['graph']} ({cost['bytes'] / 1e9:.2f} GB ONNX), batch {cost['batch']}, "
        f"{cost['kernels']} kernels: {cost['seconds']:.1f} s wall, peak RSS "
        f"{cost['peak_rss_mb']:.0f} MB ({cost['rss_after_imports_mb']:.0f} MB before the call, "
        f"which imports onnx and loads the graph)" if "error" not in cost else f"FAILED: {cost['error']}"))

    if not a.no_write:
        others_out = [{k: o[k] for k in ("row", "family", "precision", "measured_ms", "in_fit",
                                         "lofo", "lofo_error", "maxq", "submitter", "trt")}
                      for o in others]
        write_fit(c_all, table, meta, q_lo, q_hi, kind_errors,
                  {"targets": targets, "by": by, "others": others_out, "spread": spread,
                   "cost": cost, "in_family": in_family})

    if not a.no_minilm:
        minilm_section(cache, progress)
    fixtures_section(Path(a.fixtures))
    print(f"total {time.time() - t0:.0f} s")


def minilm_section(cache: Path, progress) -> None:
    """The default workload at batch 1 and 32: FP16 vs FP8 vs INT8, with the model's reasons."""
    import l4opt
    from l4opt.latency import estimate

    run = cache / "minilm-run"
    progress("minilm: baseline, fp8, int8 ONNX via l4opt.sweep (cached in the run dir)")
    res = l4opt.sweep("minilm", ["baseline", "fp8", "int8"], run, progress=False, latency=False)
    print("\ndefault workload (minilm, seq 64), ESTIMATED on L4 with the fitted constants:")
    for b in (1, 32):
        ests = {}
        for row in res.rows:
            if not row.get("onnx_path"):
                continue
            ests[row["recipe"]] = estimate.estimate_onnx(run / row["onnx_path"], "L4", batch=b)
        for name, e in ests.items():
            print(f"  batch {b:3d} {name:9s} {e.total_ms:8.4f} ms ({e.band_text()})")
        if "fp8" in ests and "int8" in ests:
            f8, i8 = ests["fp8"], ests["int8"]
            same = estimate.indistinguishable(f8, i8)
            print(f"  batch {b}: FP8/INT8 = {f8.total_ms / i8.total_ms:.3f}"
                  f"{' (within each other band)' if same else ''}")
            for tag, e in (("fp8", f8), ("int8", i8)):
                for n in e.notes:
                    print(f"    {tag}: {n}")
    # where the rules part FP8 from INT8 on this graph: TensorRT before 10.6 has no FP8 MHA on Ada
    fp8 = next((r for r in res.rows if r["recipe"] == "fp8" and r.get("onnx_path")), None)
    int8 = next((r for r in res.rows if r["recipe"] == "int8" and r.get("onnx_path")), None)
    if fp8 and int8:
        for trt in ("10.5", "10.8"):
            f8 = estimate.estimate_onnx(run / fp8["onnx_path"], "L4", batch=32, trt_version=trt)
            i8 = estimate.estimate_onnx(run / int8["onnx_path"], "L4", batch=32, trt_version=trt)
            why = [n for n in f8.notes if "attention" in n]
            print(f"  TensorRT {trt}, batch 32: FP8 {f8.total_ms:.4f} ms vs INT8 {i8.total_ms:.4f} ms"
                  f" (FP8/INT8 {f8.total_ms / i8.total_ms:.3f}); FP8: {why[0] if why else ''}")


def fixtures_section(fx: Path) -> None:
    from l4opt.latency import trtexec as engine_report
    from l4opt.latency import estimate

    print("\nengine-graph path on the TITAN RTX fixtures (a test of that path, not the fit):")
    for name in ("mobilenet.qat.onnx", "mobilenet_v2_residuals.qat.onnx"):
        p = fx / f"{name}.engine.graph.json"
        if not p.exists():
            print(f"  {name}: fixture missing")
            continue
        v = estimate.validate_on_export(engine_report.load_engine_export(p))
        print(f"  {name}: estimated {v['estimated_ms']:.4f} ms vs measured median "
              f"{v['measured_median_ms']:.4f} ms ({100 * v['end_to_end_error']:+.1f}%), "
              f"per-layer median |error| {100 * v['per_layer_median_abs_error']:.0f}% over "
              f"{v['layers_compared']} layers")


if __name__ == "__main__":
    main()
