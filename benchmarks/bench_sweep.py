"""Spine benchmark, all ratios measured in this one run on this machine (CPU; no L4 involved):

1. workbench overhead: l4opt.sweep for one recipe vs a plain script calling ModelOpt and ONNX
   Runtime directly for the same work (export, ONNX PTQ, evaluation, reference, metric);
2. cold vs warm: the default minilm sweep, then the identical sweep again (every trial and the
   FP32 export served from the store), with where the cold sweep's time goes per stage;
3. peak memory (max RSS) of the process over the default minilm sweep.

Usage: python benchmarks/bench_sweep.py [--recipe int8] [--out DIR]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def plain_script(recipe_name: str, work: Path) -> float:
    """What a user would write by hand for one ONNX-PTQ recipe, timed end to end."""
    import modelopt.onnx.quantization as moq
    import onnxruntime as ort
    import torch

    from l4opt.spec import recipes
    from l4opt.spec import workloads

    t = time.perf_counter()
    r = recipes.get(recipe_name)
    w = workloads.load("minilm")
    model = w.module()
    with torch.no_grad():
        ref = np.concatenate([model(*[torch.from_numpy(x) for x in b]).numpy()
                              for b in w.batches(w.eval_data)])
    fp32 = work / "plain.fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(model, w.example_args(2), str(fp32), input_names=w.input_names,
                          output_names=w.output_names, dynamic_axes=w.dynamic_axes(),
                          opset_version=17, dynamo=False)
    out_path = work / "plain.q.onnx"
    moq.quantize(str(fp32), quantize_mode=r.format, calibration_method=r.algorithm,
                 calibration_data=w.calib_data, calibration_eps=["cpu"],
                 output_path=str(out_path), log_level="ERROR")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    s = ort.InferenceSession(str(out_path), so, providers=["CPUExecutionProvider"])
    out = np.concatenate([s.run(None, dict(zip(w.input_names, b)))[0] for b in w.batches(w.eval_data)])
    cos = float(np.mean(np.sum(out * ref, axis=1)))
    w.metric(out, ref, None)
    took = time.perf_counter() - t
    print(f"  plain script cosine {cos:.4f}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="int8")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import l4opt
    from l4opt import env

    # import the heavy stack once so neither side pays for it
    import modelopt.onnx.quantization  # noqa: F401
    import modelopt.torch.quantization  # noqa: F401
    import onnxruntime  # noqa: F401

    root = Path(a.out or tempfile.mkdtemp(prefix="l4opt-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {env.machine()['cpu']} x{env.machine()['cores']} (CPU timings; not L4 latency)")

    print(f"1. overhead, minilm, recipe {a.recipe}")
    t_plain = plain_script(a.recipe, root)
    t = time.perf_counter()
    res = l4opt.sweep("minilm", a.recipe, root / "overhead", progress=False)
    t_bench = time.perf_counter() - t
    print(f"  workbench cosine {res.rows[0]['cos_mean']:.4f}")
    print(f"  plain {t_plain:.1f} s, workbench {t_bench:.1f} s, "
          f"overhead ratio {t_bench / t_plain:.3f}x (goal <= 1.10x)")

    print("2. default minilm sweep, cold then warm")
    run = root / "default"
    shutil.rmtree(run, ignore_errors=True)
    t = time.perf_counter()
    cold = l4opt.sweep("minilm", None, run, progress=False)
    t_cold = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    warm = l4opt.sweep("minilm", None, run, progress=False)
    t_warm = time.perf_counter() - t
    assert all(r["cached"] for r in warm.rows) and not any(r["cached"] for r in cold.rows)
    print(f"  cold {t_cold:.1f} s, warm {t_warm:.2f} s (goal <= 2 s), speed-up "
          f"{t_cold / t_warm:.0f}x (goal >= 50x)")
    stages: dict[str, float] = {}
    for r in cold.rows:
        for k, v in (r.get("timings_s") or {}).items():
            stages[k] = stages.get(k, 0.0) + v
    trials = sum(r.get("total_s") or 0 for r in cold.rows)
    print(f"  where the cold sweep's time goes: {t_cold - trials:.1f} s before the trials "
          f"(workload, FP32 export and its checks, reference outputs), {trials:.1f} s in "
          f"{len(cold.rows)} trials: " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                                    sorted(stages.items(), key=lambda x: -x[1])))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "l4opt.cli", "sweep", "minilm", "--out", str(run),
                    "--json"], check=True, capture_output=True)
    print(f"  the same warm sweep as a command (`l4opt sweep minilm`, a new process: Python, "
          f"torch and the model load included): {time.perf_counter() - t:.2f} s")
    print("3. peak memory")
    print(f"  peak RSS of this process through the default sweep: {peak_mb:.0f} MB "
          f"(goal < 4096 MB)")


if __name__ == "__main__":
    main()
