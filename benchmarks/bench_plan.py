"""Validate l4opt's serving model against MLPerf Inference Server results on one L4.

For each published Server result of a one-L4 system, take the Offline throughput T of the same
system and round at its Offline batch B, derive the latency curve from it by a stated rule, and
predict the Server score: the largest Poisson QPS whose p99 latency (queueing included) stays
under the benchmark's bound (l4opt.fleet.queueing.max_qps: max_batch in 1, 2, 4, ... B; queue
delay 0 or 5-50 % of the bound; one engine instance). Compare with the published Server QPS
("Scheduled samples per second", the score).

Rule (fixed before looking at the errors): a batch of B takes B / T (the Offline pipeline,
streams and copies included, runs back to back at that rate); a smaller batch b takes
L(B) * (a + (1 - a) * b / B): a = 0 (primary: the Offline throughput holds at every batch) and
a = 0.25 (a quarter of the batch time is fixed overhead; sensitivity). Each prediction is
checked by the direct simulation at the predicted QPS (its p99 must be under the bound too).

Data: /work/scratch/truth/rows.csv (one-GPU MLPerf rows; Server rows with server_qps and
latency_bound_ms) and l4opt/data/l4_truth.csv (the NVIDIA L4x1 Offline rows of v3.0/v3.1),
copied below with their sources (mlperf_log_summary.txt line 7 of each result). Spot-checked
here: mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a
closed/NVIDIA/results/L4x1_TRT/resnet50/Server/performance/run_1/mlperf_log_summary.txt
("Scheduled samples per second : 12204.35", "target_latency (ns): 15000000") and .../Offline/...
("Samples per second: 12881.7").

Run: python benchmarks/bench_plan.py [--quick]   (--quick: the primary rule only)
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

# (id, model, precision, bound ms, Server scheduled QPS (score), Server completed QPS,
#  Offline batch, Offline samples/s, Server source, Offline source)
PAIRS = [
    ('bert-large-fp16-server-v3.0-nvidia-l4x1-trt', 'bert_large_squad', 'fp16', 130.0, 529.89, 529.87, 16, 630.644,
     'github:mlcommons/inference_results_v3.0@1948f9b5b93c5b4dcafe15de0faa08cdf1439fca:closed/NVIDIA/results/L4x1_TRT/bert-99.9/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.0@dad59af09e9e62eceec4bee48794e201d6cf9170:closed/NVIDIA/results/L4x1_TRT/bert-99.9/Offline/performance/run_1/mlperf_log_summary.txt'),
    ('bert-large-int8-server-v3.0-nvidia-l4x1-trt', 'bert_large_squad', 'int8', 130.0, 898.87, 898.82, 16, 1032.08,
     'github:mlcommons/inference_results_v3.0@1948f9b5b93c5b4dcafe15de0faa08cdf1439fca:closed/NVIDIA/results/L4x1_TRT/bert-99/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.0@dad59af09e9e62eceec4bee48794e201d6cf9170:closed/NVIDIA/results/L4x1_TRT/bert-99/Offline/performance/run_1/mlperf_log_summary.txt'),
    ('dlrm-int8-server-v3.0-nvidia-l4x1-trt', 'dlrm_v1_criteo_terabyte', 'int8', 30.0, 88999.52, 88999.37, 14000, 94602.7,
     'github:mlcommons/inference_results_v3.0@1948f9b5b93c5b4dcafe15de0faa08cdf1439fca:closed/NVIDIA/results/L4x1_TRT/dlrm-99/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.0@1948f9b5b93c5b4dcafe15de0faa08cdf1439fca:closed/NVIDIA/results/L4x1_TRT/dlrm-99/Offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('r50-int8-server-v3.0-nvidia-l4x1-trt', 'resnet50_v1.5', 'int8', 15.0, 12198.48, 12198.41, 32, 13157.8,
     'github:mlcommons/inference_results_v3.0@1948f9b5b93c5b4dcafe15de0faa08cdf1439fca:closed/NVIDIA/results/L4x1_TRT/resnet50/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.0@dad59af09e9e62eceec4bee48794e201d6cf9170:closed/NVIDIA/results/L4x1_TRT/resnet50/Offline/performance/run_1/mlperf_log_summary.txt'),
    ('retinanet-int8-server-v3.0-nvidia-l4x1-trt', 'retinanet_resnext50_fpn_800', 'int8', 100.0, 154.9, 154.9, 2, 179.492,
     'github:mlcommons/inference_results_v3.0@1948f9b5b93c5b4dcafe15de0faa08cdf1439fca:closed/NVIDIA/results/L4x1_TRT/retinanet/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.0@dad59af09e9e62eceec4bee48794e201d6cf9170:closed/NVIDIA/results/L4x1_TRT/retinanet/Offline/performance/run_1/mlperf_log_summary.txt'),
    ('rnnt-fp16-server-v3.0-nvidia-l4x1-trt', 'rnnt_librispeech', 'fp16', 1000.0, 3800.6, 3799.02, 512, 3980.09,
     'github:mlcommons/inference_results_v3.0@1948f9b5b93c5b4dcafe15de0faa08cdf1439fca:closed/NVIDIA/results/L4x1_TRT/rnnt/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.0@1948f9b5b93c5b4dcafe15de0faa08cdf1439fca:closed/NVIDIA/results/L4x1_TRT/rnnt/Offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('r50-int8-server-v3.1-nvidia-l4x1-trt', 'resnet50_v1.5', 'int8', 15.0, 12204.35, 12204.3, 32, 12881.7,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/resnet50/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/resnet50/Offline/performance/run_1/mlperf_log_summary.txt'),
    ('retinanet-int8-server-v3.1-nvidia-l4x1-trt', 'retinanet_resnext50_fpn_800', 'int8', 100.0, 199.74, 199.72, 2, 225.923,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/retinanet/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/retinanet/Offline/performance/run_1/mlperf_log_summary.txt'),
    ('bert-large-int8-server-v3.1-nvidia-l4x1-trt', 'bert_large_squad', 'int8', 130.0, 898.94, 898.91, 16, 1028.95,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/bert-99/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/bert-99/Offline/performance/run_1/mlperf_log_summary.txt'),
    ('bert-large-fp8-server-v3.1-nvidia-l4x1-trt', 'bert_large_squad', 'fp8', 130.0, 539.24, 539.19, 16, 631.457,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/bert-99.9/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/bert-99.9/Offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('dlrmv2-int8-server-v3.1-nvidia-l4x1-trt', 'dlrm_v2_dcnv2_criteo', 'int8', 60.0, 3305.38, 3305.34, 1400, 3672.79,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/dlrm-v2-99/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/dlrm-v2-99.9/Offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('rnnt-fp16-server-v3.1-nvidia-l4x1-trt', 'rnnt_librispeech', 'fp16', 1000.0, 3754.56, 3752.71, 512, 3899.48,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/rnnt/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/rnnt/Offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('gptj-fp8-server-v3.1-nvidia-l4x1-trt', 'gptj_6b_cnndm', 'fp8', 20000.0, 0.89, 0.89, 7, 1.30094,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/gptj-99/Server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/NVIDIA/results/L4x1_TRT/gptj-99/Offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('r50-int8-server-v3.1-ctuning-gcp-g2-standard-4-nvidia-original-gpu-te', 'resnet50_v1.5', 'int8', 15.0, 11703.81, 11703.74, 32, 12557.8,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/resnet50/server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/resnet50/offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('retinanet-int8-server-v3.1-ctuning-gcp-g2-standard-4-nvidia-original-gpu-te', 'retinanet_resnext50_fpn_800', 'int8', 100.0, 144.9, 144.89, 2, 169.039,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/retinanet/server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/retinanet/offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('bert-large-int8-server-v3.1-ctuning-gcp-g2-standard-4-nvidia-original-gpu-te', 'bert_large_squad', 'int8', 130.0, 863.86, 863.83, 16, 893.473,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/bert-99/server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/bert-99/offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('bert-large-fp16-server-v3.1-ctuning-gcp-g2-standard-4-nvidia-original-gpu-te', 'bert_large_squad', 'fp16', 130.0, 369.71, 369.7, 16, 406.713,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/bert-99.9/server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/bert-99.9/offline/performance/run_1/mlperf_log_summary.txt#L7'),
    ('rnnt-fp16-server-v3.1-ctuning-gcp-g2-standard-4-nvidia-original-gpu-te', 'rnnt_librispeech', 'fp16', 1000.0, 3654.74, 3653.46, 512, 3818.19,
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/rnnt/server/performance/run_1/mlperf_log_summary.txt#L7',
     'github:mlcommons/inference_results_v3.1@eaf622a25c00f2b4b1d2c4f5b4f430570429d24a:closed/CTuning/results/gcp_g2.standard.4-nvidia_original-gpu-tensorrt-vdefault-default_config/rnnt/offline/performance/run_1/mlperf_log_summary.txt#L7'),
]

RULES = (0.0, 0.25)


def predict(offline_qps: float, batch: int, bound_ms: float, fixed_fraction: float):
    from l4opt.fleet import queueing as q

    curve = q.Curve.from_offline(offline_qps, batch, fixed_fraction)
    cap = q.max_qps(curve, bound_ms)
    sim_qps = math.nan
    if cap.feasible:
        # the same setting's capacity by direct simulation: bisect the QPS on the simulated p99
        cfg = q.Config(cap.max_batch, cap.queue_delay_ms / 1e3)
        limit = cap.max_batch / float(cfg.service_s(curve, [cap.max_batch])[0])

        def sim_ok(qps):
            if q.utilization(curve, qps, cfg) >= 1:
                return False
            n = int(min(q.MAX_SIM_REQUESTS, max(300_000, qps * 120)))
            return q.simulate(curve, qps, cfg, requests=n, seed=0).p99_ms <= bound_ms

        lo, hi = cap.max_qps * 0.8, min(limit, cap.max_qps * 1.2)
        if sim_ok(lo):
            for _ in range(7):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if sim_ok(mid) else (lo, mid)
            sim_qps = lo
    return cap, sim_qps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the primary rule (a = 0) only")
    a = ap.parse_args(argv)
    rules = RULES[:1] if a.quick else RULES
    print("MLPerf Server on one L4: predicted from the same system's Offline throughput vs "
          "published\n")
    hdr = (f"{'result':58s} {'bound':>6s} {'offline':>9s} {'B':>5s} {'a':>4s} "
           f"{'published':>10s} {'predicted':>10s} {'error':>7s} {'batch':>5s} {'delay ms':>8s} "
           f"{'p99 num*':>8s} {'QPS sim':>10s} {'num/sim':>7s} {'offl/pub':>8s}")
    print(hdr)
    errs = {r: [] for r in rules}
    naive, agree = [], []
    t0 = time.time()
    for (rid, model, prec, bound, score, completed, batch, offline, s_src, o_src) in PAIRS:
        naive.append(offline / score - 1)
        for r in rules:
            cap, sim_qps = predict(offline, batch, bound, r)
            err = cap.max_qps / score - 1 if cap.feasible else math.nan
            errs[r].append(err)
            agree.append(cap.max_qps / sim_qps - 1)
            if not cap.feasible:
                print(f"{rid[:58]:58s} {bound:6g} {offline:9.6g} {batch:5d} {r:4.2f} {score:10.6g} "
                      f"INFEASIBLE under this rule: {cap.note}", flush=True)
                continue
            print(f"{rid[:58]:58s} {bound:6g} {offline:9.6g} {batch:5d} {r:4.2f} {score:10.6g} "
                  f"{cap.max_qps:10.6g} {100 * err:+6.1f}% {cap.max_batch or 0:5d} "
                  f"{(cap.queue_delay_ms or 0):8.3g} {cap.p99_ms:8.4g} "
                  f"{sim_qps:10.6g} {100 * (cap.max_qps / sim_qps - 1):+6.1f}% "
                  f"{100 * (offline / score - 1):+7.1f}%",
                  flush=True)
    print()
    for r in rules:
        e = [x for x in errs[r] if x == x]
        print(f"rule a={r:.2f}: {len(e)} results; mean error {100 * statistics.mean(e):+.1f}%, "
              f"median |error| {100 * statistics.median(abs(x) for x in e):.1f}%, "
              f"max |error| {100 * max(abs(x) for x in e):.1f}% (predicted - published)")
    by = {}
    for pair, e in zip(PAIRS, errs[rules[0]]):
        by.setdefault(pair[1], []).append(e)
    print(f"by benchmark (a={rules[0]:.2f}): " + "; ".join(
        f"{m} {', '.join(f'{100 * e:+.1f}%' for e in v)}" for m, v in by.items()))
    ag = [abs(x) for x in agree if x == x]
    print(f"numeric vs simulated capacity at the chosen setting: median |diff| "
          f"{100 * statistics.median(ag):.1f}%, max {100 * max(ag):.1f}%")
    print(f"naive 'Server = Offline': median |error| "
          f"{100 * statistics.median(abs(x) for x in naive):.1f}%, mean {100 * statistics.mean(naive):+.1f}%")
    print("* p99 num: the numeric p99 at the predicted QPS on the search's coarse grid (near "
          "saturation it overstates p99: the capacity it implies is the conservative side of "
          "the simulated one, see num/sim)")
    print(f"\n({time.time() - t0:.0f} s). Positive error = the model is optimistic. The model "
          f"sees only GPU time at one batch: host, copies, per-query overheads and "
          f"multi-stream scheduling of the real harness are not in it.")
    print("sources: first listed pair: " + PAIRS[0][8] + " and " + PAIRS[0][9])
    return 0


if __name__ == "__main__":
    sys.exit(main())
