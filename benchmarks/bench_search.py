"""Sensitivity and search wall time on a workload, and the speed-up of calibrating once and
toggling quantizers over recalibrating for every candidate, all measured in this one run.

Usage: python benchmarks/bench_search.py [--workload minilm] [--recipe int8] [--candidates 6]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workload", default="minilm")
    ap.add_argument("--recipe", default="int8")
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--min-cosine", type=float, default=0.99)
    a = ap.parse_args()
    import torch

    from l4opt import recipes, workloads
    from l4opt.drift import tensor_metrics
    from l4opt.quantize import quantize_torch
    from l4opt.runners import TorchRunner, run_all
    from l4opt.searches import Budget, Calibrated, _default_eval, search, sensitivity, torch_form

    w = workloads.load(a.workload)
    n_eval = _default_eval(w)

    # calibrate once, toggle per candidate
    t = time.perf_counter()
    cal = Calibrated(w, recipes.get(a.recipe), n_eval, progress=False)
    layers = cal.layers[:a.candidates]
    once = [cal.evaluate([x for x in cal.layers if x != layer]) for layer in layers]
    t_once = time.perf_counter() - t

    # recalibrate per candidate (what a naive search does)
    base = torch_form(recipes.get(a.recipe))
    t = time.perf_counter()
    recal = []
    for layer in layers:
        r = recipes.Recipe(base.name, base.path, base.format, base.algorithm,
                           disabled_layers=(layer,))
        model = copy.deepcopy(w.module())

        def loop(m):
            with torch.no_grad():
                for b in w.batches(w.calib_data):
                    m(*[torch.from_numpy(np.ascontiguousarray(x)) for x in b])

        quantize_torch(model, r, loop)
        out = run_all(TorchRunner(model), w.batches(cal.eval), progress=False)
        recal.append(tensor_metrics(out, cal.reference)["cos_mean"])
    t_recal = time.perf_counter() - t
    same = max(abs(o["cos_mean"] - c) for o, c in zip(once, recal))
    print(f"{w.name} / {a.recipe}, {len(layers)} candidates, {n_eval} evaluation samples (CPU)")
    print(f"  calibrate once + toggle: {t_once:.1f} s; recalibrate each: {t_recal:.1f} s; "
          f"speed-up {t_recal / t_once:.1f}x (goal >= 5x)"
          + f"; same results: max |cosine difference| {same:.2e}")

    run = tempfile.mkdtemp(prefix="l4opt-search-")
    t = time.perf_counter()
    s = sensitivity(w, a.recipe, run, progress=False)
    t_sens = time.perf_counter() - t
    top = s.table().head(5)
    print(f"  sensitivity: {t_sens:.0f} s for {len(s.layers)} layers; top: "
          + ", ".join(f"{r.layer} (share {r.share:.2f})" for r in top.itertuples()))
    t = time.perf_counter()
    res = search(w, a.recipe, Budget(min_cosine=a.min_cosine), run, strategy="greedy",
                 progress=False)
    t_search = time.perf_counter() - t
    d = res.to_dict()
    print(f"  search (greedy, {Budget(min_cosine=a.min_cosine).describe()}): {t_search:.0f} s, "
          f"met={d['met']}, {len(d['fallback_layers'] or [])} layers fall back: "
          f"{d['fallback_layers']}")
    print(f"    before: cosine {s.all_quantized['cos_mean']:.4f}, {w.metric.name} "
          f"{s.all_quantized['metric']:.4f}; after: cosine {d['cos_mean']:.4f}, "
          f"{w.metric.name} {d['metric']:.4f}; {100 * d['fraction_quantized']:.0f}% of "
          f"matmul/conv layers quantized; est. L4 latency at batch {d['latency_batch']}: "
          f"{d['latency_opt_ms']:.3f} ms ({d['latency_source']})")


if __name__ == "__main__":
    main()
