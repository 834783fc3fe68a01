"""Cross-GPU validation of the cost model: published one-GPU T4 and A10 rows, every one held out.

The cost model's constants are fitted on L4 rows only (l4opt/data/l4_fit.json); a T4 or A10
estimate moves to the other GPU through its spec alone (l4opt/data/gpus.csv: SMs, clock,
tensor peaks per precision, bandwidth, L2) and its architecture's TensorRT rules. So every T4
and A10 row of l4opt/data/l4_truth.csv (MLPerf Inference v1.1-v3.0 closed, one GPU, each with
its source) is a held-out check of that transfer. For each row whose model
benchmarks/truth_models.py can rebuild (ResNet-50 v1.5 and BERT-large; random weights, INT8
by ModelOpt ONNX PTQ: latency does not depend on weights), the estimate at the row's batch is
compared with the published figure:
  Offline: samples/s = batch / latency; SingleStream p90 and MultiStream p99: latency.
Server rows are queueing results (benchmarks/bench_plan.py validates the serving model) and
are left out here; so are models it cannot rebuild (DLRM, 3D-UNet, RNN-T, SSD).
Prints each row's error, then the median and worst |error| per GPU and per model family, the
L4 leave-one-group-out median for comparison (from l4_fit.json), and where the model is weaker.

Run: python benchmarks/bench_gpus.py [--models resnet50_v1.5,bert_large_squad]
First run builds the INT8 graphs (a few minutes each on 2 cores; cached under $L4OPT_CACHE).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

GPU_OF = {"T4": "T4", "A10": "A10"}   # truth-table gpu -> l4opt/data/gpus.csv name
SCENARIOS = ("Offline", "SingleStream", "MultiStream")


def held_out_rows(truth, models):
    """The T4/A10 rows this benchmark can estimate (rebuildable model, non-Server scenario)."""
    t = truth[truth.gpu.isin(list(GPU_OF)) & truth.model.isin(models)
              & truth.scenario.isin(SCENARIOS) & truth.precision.isin(["int8", "fp16", "fp32"])]
    return t.sort_values(["gpu", "model", "scenario", "id"])


def predicted(row, est) -> float:
    """The published metric as the estimate gives it."""
    if row["metric"] == "throughput_samples_s":
        return int(row["batch"]) / (est.latency_ms / 1e3)
    return est.latency_ms


def peak_bound_ms(est, gpu: str, precision: str) -> float:
    """The fastest the graph's math could run at the row's stated precision: every FLOP at
    the GPU's dense peak (l4opt/data/gpus.csv). A published latency below it means the engine
    was not what the row says (e.g. an "fp32" submission running a reduced-precision engine)."""
    from l4opt.latency import hardware

    peak = hardware.get(gpu).tflops.get(precision) or 0.0
    flops = float(est.layers["flops"].sum())
    return flops / (peak * 1e12) * 1e3 if peak else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50_v1.5,bert_large_squad")
    a = ap.parse_args(argv)

    import truth_models
    from l4opt.latency import estimate

    t0 = time.time()
    truth = estimate.truth_table()
    models = [m for m in a.models.split(",") if m]
    rows = held_out_rows(truth, models)
    print(f"{len(rows)} held-out rows on {', '.join(sorted(set(rows.gpu)))} "
          f"(models {', '.join(models)}; constants fitted on L4 rows only)\n")
    print(f"{'row':58s} {'metric':22s} {'published':>10s} {'estimate':>10s} {'error':>8s}")
    out = []
    for r in rows.to_dict("records"):
        prec = r["precision"]
        path = truth_models.onnx_path(r["model"], prec if prec == "int8" else "fp32")
        flags = str(r.get("flags") or "")
        est = estimate.estimate_onnx(path, gpu=GPU_OF[r["gpu"]], batch=int(r["batch"]),
                                     float_precision="fp32" if prec == "fp32" else "fp16",
                                     trt_version=r["trt_version"],
                                     input_quantized="prequantized_input" in flags)
        p = predicted(r, est)
        pub = float(r["value"])
        # error as the latency's: a throughput too high means a latency too low
        err = (pub / p - 1) if r["metric"] == "throughput_samples_s" else (p / pub - 1)
        pub_ms = (int(r["batch"]) / pub * 1e3) if r["metric"] == "throughput_samples_s" else pub
        bound = peak_bound_ms(est, GPU_OF[r["gpu"]], prec)
        impossible = pub_ms < bound
        flag = (f"  EXCLUDED: {pub_ms:.3g} ms is below the {prec.upper()} peak bound "
                f"{bound:.3g} ms: not a {prec.upper()} engine") if impossible else ""
        if not impossible:
            out.append({"id": r["id"], "gpu": r["gpu"], "model": r["model"],
                        "scenario": r["scenario"], "precision": prec, "published": pub,
                        "estimate": p, "error": err})
        print(f"{r['id'][:58]:58s} {r['metric'][:22]:22s} {pub:10.4g} {p:10.4g} "
              f"{100 * err:+7.1f}%{flag}", flush=True)
    if not out:
        print("no rows")
        return 1
    print("\n(error: of the estimated latency; an Offline throughput over-estimate is a "
          "negative latency error)")
    for key in ("gpu", "model", "scenario"):
        for v in sorted({o[key] for o in out}):
            errs = [o["error"] for o in out if o[key] == v]
            worst = max(errs, key=abs)
            print(f"{key} {v}: {len(errs)} rows, median |error| "
                  f"{100 * statistics.median(abs(e) for e in errs):.1f}%, worst {100 * worst:+.1f}%, "
                  f"mean {100 * statistics.mean(errs):+.1f}%")
    fit = json.loads(estimate.FIT_JSON.read_text())
    print(f"\nfor comparison, L4 leave-one-group-out median |error|: "
          f"{100 * fit['summary']['median_abs_error']:.1f}% over {fit['band']['n']} rows")
    worst = max(out, key=lambda o: abs(o["error"]))
    print(f"weakest: {worst['id']} ({worst['gpu']}, {worst['scenario']}) {100 * worst['error']:+.1f}%")
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
