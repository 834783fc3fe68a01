"""Cost of the L4 latency estimator and of the engine readers, next to the cost of a trial.

Prints, measured in this run on this CPU: the estimator's time on the minilm Q/DQ ONNX (from a
one-recipe sweep it runs first, or --onnx), the readers' time on the largest fixture, and the
estimator's validation errors against the two measured fixture engines (TITAN RTX).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def best_of(fn, n=5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--onnx", help="a Q/DQ ONNX (default: minilm int8 from a fresh sweep)")
    ap.add_argument("--fixtures", default=str(REPO / "tests" / "fixtures" / "trtexec"))
    a = ap.parse_args()
    import l4opt
    from l4opt import engine_report, estimate

    trial_s = None
    path = a.onnx
    if not path:
        run = Path(tempfile.mkdtemp(prefix="l4opt-est-"))
        res = l4opt.sweep("minilm", "int8", run, progress=False, latency=False)
        path, trial_s = str(run / res.rows[0]["onnx_path"]), res.rows[0]["total_s"]
    t_est = best_of(lambda: estimate.estimate_onnx(path, "L4", batch=1))
    print(f"estimator on {Path(path).name}: {1e3 * t_est:.0f} ms (best of 5)"
          + (f"; the trial itself took {trial_s:.1f} s ({t_est / trial_s:.3f}x)" if trial_s else ""))
    fx = Path(a.fixtures)
    timing = fx / "mobilenet.qat.onnx.engine.timing.json"
    t_read = best_of(lambda: engine_report.read_timing(timing))
    print(f"reader on {timing.name} ({timing.stat().st_size / 1e6:.1f} MB): {1e3 * t_read:.0f} ms")
    t_all = best_of(lambda: engine_report.load_engine_export(fx / "mobilenet.qat.onnx.engine.graph.json"))
    print(f"all five exports of that engine: {1e3 * t_all:.0f} ms")
    for name in ("mobilenet.qat.onnx", "mobilenet_v2_residuals.qat.onnx"):
        v = estimate.validate_on_export(engine_report.load_engine_export(fx / f"{name}.engine.graph.json"))
        print(f"validation {name} on TITAN RTX: estimated {v['estimated_ms']:.4f} ms vs measured "
              f"median {v['measured_median_ms']:.4f} ms, end-to-end error "
              f"{100 * v['end_to_end_error']:+.1f}%, per-layer median |error| "
              f"{100 * v['per_layer_median_abs_error']:.0f}% over {v['layers_compared']} layers")


if __name__ == "__main__":
    main()
