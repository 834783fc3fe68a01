"""The mixed-precision search, old strategy against new, measured in this one run.

old: the recipe's torch-PTQ form, per-layer sensitivity (only / all-but, torch fake-quant), then
     greedy FP16 fallback one layer at a time (what `l4opt search` did before issue 12);
new: the Q/DQ graph the sweep measures (ModelOpt ONNX PTQ, calibrated once per 8-bit format),
     per-layer INT8 / FP8 / FP16 moves ranked by local drift removed per estimated L4 ms,
     bisection on a screening subset, confirmation on the whole evaluation set.

Both print: wall time, evaluations, result cosine and task metric (measured by the sweep of
the saved recipe, in ONNX Runtime), share of GEMM/conv layers at 8 bits, estimated L4 latency.

Usage: python benchmarks/bench_search.py [--workload minilm] [--recipe int8]
       [--min-cosine 0.99] [--skip-old]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def _run(w, recipe, budget, strategy, run_dir):
    from l4opt.precision.api import search

    t, c = time.perf_counter(), _cpu()
    res = search(w, recipe, budget, run_dir, strategy=strategy, progress=False)
    return res, time.perf_counter() - t, _cpu() - c


def _cpu() -> float:
    """CPU seconds of this process and its finished children (ONNX Runtime workers)."""
    own = time.process_time()
    ch = os.times()
    return own + ch.children_user + ch.children_system


def _line(label, res, secs, cpu, gemm_total=None) -> str:
    d = res.to_dict()
    row = res.final_row or {}
    q = row.get("quantized_layers")
    g = row.get("gemm_layers") or gemm_total
    share = (f"{100 * q / g:.0f}% ({q}/{g})" if q is not None and g else
             f"{100 * (d.get('fraction_quantized') or 0):.0f}% (of the study's layers)")
    lat = d.get("latency_ms")
    lo, hi = d.get("latency_low_ms"), d.get("latency_high_ms")
    band = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return (f"{label:4s} {secs:5.0f} s wall, {cpu:5.0f} s CPU {d.get('evaluations', 0):4d} evals  "
            f"met={d['met']!s:5s}  "
            f"search cos {d['cos_mean']:.4f} / sweep cos {row.get('cos_mean', float('nan')):.4f} "
            f"{d.get('metric_name') or ''} {row.get('metric', float('nan')):.4f}  8-bit GEMMs "
            f"{share}  est. L4 {lat:.3f} ms{band} at batch {d.get('latency_batch')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="minilm")
    ap.add_argument("--recipe", default="int8")
    ap.add_argument("--min-cosine", type=float, default=0.99)
    ap.add_argument("--skip-old", action="store_true",
                    help="skip the old strategy (about 9 minutes on 2 cores for minilm)")
    a = ap.parse_args()
    from l4opt.spec import workloads
    from l4opt.precision.api import Budget

    w = workloads.load(a.workload)
    budget = Budget(min_cosine=a.min_cosine)
    print(f"{w.name} / {a.recipe}, {budget.describe()}, {os.cpu_count()} CPUs; latency is the "
          f"l4opt L4 estimate (not a measurement)")
    out = []
    load0 = os.getloadavg()
    new, t_new, c_new = _run(w, a.recipe, budget, "bisect", tempfile.mkdtemp(prefix="l4opt-new-"))
    d = new.to_dict()
    gemm_total = d.get("gemm_layers")
    out.append(_line("new", new, t_new, c_new))
    print(out[-1], flush=True)
    if not a.skip_old:
        old, t_old, c_old = _run(w, a.recipe, budget, "greedy",
                                 tempfile.mkdtemp(prefix="l4opt-old-"))
        out.append(_line("old", old, t_old, c_old, gemm_total))
    print("--- side by side ---")
    print("\n".join(out))
    aq = d["strategies"].get("all_quantized", {})
    print(f"new: all-quantized start cos {aq.get('cos_mean', float('nan')):.4f}; chosen "
          f"{d['int8_layers']} INT8 + {d['fp8_layers']} FP8 + {d['fp16_layers']} FP16 of "
          f"{gemm_total} GEMM/conv layers; {d['evaluations']} evaluations "
          f"({d['eval_samples']} samples to confirm); goal <= 120 s and >= 75% at 8 bits")
    print(f"new: stage seconds {d['strategies'].get('timings_s')}")
    if not a.skip_old:
        print(f"speed-up new vs old: {t_old / t_new:.1f}x wall, {c_old / c_new:.1f}x CPU")
    print(f"load average at start {load0}, at end {os.getloadavg()} (1/5/15 min): other work on "
          f"the machine stretches wall time; CPU seconds over 2 cores bound an idle machine's "
          f"wall time from below (CPU/2)")
    for n in d.get("notes") or []:
        print(f"note: {n}")


if __name__ == "__main__":
    main()
