"""Tensor-core shape efficiency: TensorRT times tactics and keeps the fastest, so a GEMM/conv
gets the best of a CUTLASS-style tile menu (tile and wave quantization, split-K, operand reuse,
pipeline fill for small K)."""
from __future__ import annotations

import math

K_FILL = 64                     # K elements of pipeline fill/drain per GEMM tile loop (ASSUMPTION)
REUSE_FULL = 64.0               # tm*tn/(tm+tn) of a 128x128 tile: full operand reuse (ASSUMPTION)
TILES = ((256, 128, 1), (128, 256, 1), (128, 128, 1), (128, 64, 2), (64, 128, 2), (64, 64, 4),
         (64, 32, 4), (32, 32, 8))   # (tile M, tile N, CTAs per SM): a CUTLASS-style menu


def gemm_efficiency(m: float, n: float, k: float, count: float, sms: int) -> float:
    """Best share of tensor-core peak over the tile menu for `count` GEMMs of M x N x K."""
    m, n, k, count = max(1.0, m), max(1.0, n), max(1.0, k), max(1.0, count)
    best = 0.0
    for tm, tn, occ in TILES:
        tiles_m, tiles_n = math.ceil(m / tm), math.ceil(n / tn)
        ctas = count * tiles_m * tiles_n
        slots = sms * occ
        split = 1
        if ctas < slots and k >= 512:  # split-K: more CTAs when there are too few tiles
            split = int(min(slots // ctas, k // 256)) or 1
        kk = k / split
        util_tile = (m * n) / (tiles_m * tm * tiles_n * tn)
        waves = math.ceil(ctas * split / slots)
        util_wave = ctas * split / (waves * slots)
        reuse = min(1.0, (tm * tn / (tm + tn)) / REUSE_FULL)
        eff = util_tile * util_wave * reuse * kk / (kk + K_FILL)
        best = max(best, eff)
    return best
