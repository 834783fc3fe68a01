"""How far a quantized artifact's outputs drift from the unquantized model's."""
from __future__ import annotations

import numpy as np


def tensor_metrics(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Per-sample cosine (mean and worst), SQNR in dB and max absolute error over a whole set."""
    out = np.asarray(out, np.float64).reshape(len(out), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    if out.shape != ref.shape:
        raise ValueError(f"output shape {out.shape} differs from reference {ref.shape}")
    finite = np.isfinite(out).all()
    num = (out * ref).sum(1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), np.where((out == ref).all(1), 1.0, 0.0))
    noise = ((out - ref) ** 2).sum()
    signal = (ref ** 2).sum()
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise) if signal > 0 else float("-inf")
    return {
        "cos_mean": float(np.mean(cos)) if finite else float("nan"),
        "cos_min": float(np.min(cos)) if finite else float("nan"),
        "sqnr_db": float(sqnr) if finite else float("nan"),
        "max_abs_err": float(np.max(np.abs(out - ref))) if finite else float("inf"),
    }


def task_delta(value: float, reference: float, higher_is_better: bool) -> dict[str, float]:
    """Change of the task metric; `metric_drop` is positive when the metric got worse."""
    delta = value - reference
    drop = -delta if higher_is_better else delta
    rel = drop / abs(reference) if reference else float("nan")
    return {"metric_delta": float(delta), "metric_drop": float(drop), "metric_drop_rel": float(rel)}
