"""Backend-agnostic latency statistics, computed the way trtexec reports them."""
from __future__ import annotations

import numpy as np

CV_UNSTABLE = 0.025          # trtexec warns above 2.5% coefficient of variation of GPU time
ENQUEUE_BOUND = 0.8          # ... and when median enqueue > 0.8 x median GPU compute time
PERCENTILES = (90, 95, 99)


def trtexec_percentile(sorted_ms: np.ndarray, p: float) -> float:
    """trtexec's percentile: drop the top (1 - p/100) share of samples and take the largest left."""
    n = len(sorted_ms)
    exclude = int((1 - p / 100) * n)
    return float(sorted_ms[max(n - 1 - exclude, 0)])


def trtexec_median(sorted_ms: np.ndarray) -> float:
    n = len(sorted_ms)
    return float(sorted_ms[n // 2] if n % 2 else (sorted_ms[n // 2 - 1] + sorted_ms[n // 2]) / 2)


def latency_stats(times_ms) -> dict:
    """count, min, max, mean, median, p90, p95, p99, std and cv of a series of times in ms."""
    v = np.sort(np.asarray(times_ms, dtype=np.float64).ravel())
    if v.size == 0:
        raise ValueError("no timings to summarise")
    mean = float(v.mean())
    std = float(v.std())
    out = {"count": int(v.size), "min": float(v[0]), "max": float(v[-1]), "mean": mean,
           "median": trtexec_median(v)}
    out.update({f"p{p}": trtexec_percentile(v, p) for p in PERCENTILES})
    out.update(std=std, cv=std / mean if mean else float("nan"))
    return out


def stability_warnings(gpu_compute_ms, enqueue_ms=None) -> list[str]:
    """trtexec's two warnings: unstable GPU time, and an enqueue-bound (host-bound) run."""
    warns = []
    g = latency_stats(gpu_compute_ms)
    if g["cv"] > CV_UNSTABLE:
        warns.append(f"unstable: coefficient of variation of GPU compute time is "
                     f"{100 * g['cv']:.2f}% (> {100 * CV_UNSTABLE:.1f}%); lock clocks, check "
                     f"power/thermal throttling, or run longer")
    if enqueue_ms is not None and len(enqueue_ms):
        e = latency_stats(enqueue_ms)
        if e["median"] > ENQUEUE_BOUND * g["median"]:
            warns.append(f"enqueue-bound: median enqueue {e['median']:.4f} ms > "
                         f"{ENQUEUE_BOUND} x median GPU compute {g['median']:.4f} ms; use CUDA "
                         f"graphs or more streams")
    return warns
