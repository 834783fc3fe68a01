"""Ray benchmark, ratios measured in this one run on this machine (CPU; no L4 involved):
the same 4-trial digits-cnn sweep in this process and on a local Ray instance with two
one-CPU workers, after Ray is up; and Ray's fixed start-up cost (ray.init plus two workers
importing torch, ModelOpt and ONNX Runtime).

Usage: python benchmarks/bench_ray.py [--recipes int8-max,int8-percentile,int8-smoothquant,fp8]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="int8-max,int8-percentile,int8-smoothquant,fp8")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    recipes = a.recipes.split(",")

    import ray

    import l4opt
    from l4opt.run.cluster import warm_up

    work = Path(tempfile.mkdtemp(prefix="l4opt-bench-ray-"))
    # warm this process (imports, the cached digits model) so both timings start equal
    l4opt.sweep("digits-cnn", recipes[:1], work / "warm", progress=False)

    t = time.perf_counter()
    local = l4opt.sweep("digits-cnn", recipes, work / "local", progress=False)
    local_s = time.perf_counter() - t

    t = time.perf_counter()
    ray.init(num_cpus=a.workers, include_dashboard=False, logging_level="warning",
             log_to_driver=False)
    init_s = time.perf_counter() - t
    warm_s = warm_up(a.workers)
    t = time.perf_counter()
    remote = l4opt.sweep("digits-cnn", recipes, work / "ray", progress=False, cluster="ray")
    ray_s = time.perf_counter() - t
    ray.shutdown()

    bad = [r["recipe"] for r in local.rows + remote.rows if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"trials failed: {bad}")
    trial_s = [r["total_s"] for r in remote.rows]
    ideal = sum(trial_s) / max(max(trial_s), sum(trial_s) / a.workers)
    nodes = {r["worker"]["pid"] for r in remote.rows}
    print(f"machine: {os.cpu_count()} CPUs; workload digits-cnn; trials: {', '.join(recipes)}")
    print(f"local sweep (one process):            {local_s:7.2f} s")
    print(f"Ray sweep ({a.workers} workers, Ray already up):  {ray_s:7.2f} s  "
          f"({len(nodes)} worker processes used)")
    print(f"speed-up once Ray is up:              {local_s / ray_s:7.2f}x")
    print(f"Ray fixed start-up cost:              {init_s + warm_s:7.2f} s  "
          f"(ray.init {init_s:.2f} s + workers importing torch/ModelOpt/ORT {warm_s:.2f} s)")
    print(f"speed-up including start-up:          {local_s / (ray_s + init_s + warm_s):7.2f}x")
    print(f"trial times on the workers: {', '.join(f'{x:.2f}' for x in trial_s)} s; "
          f"ideal speed-up for these on {a.workers} workers {ideal:.2f}x")
    print("limits: two cores in all (the local run's threads use the same two); the driver "
          "prepares the FP32 reference and base export serially before dispatch and writes "
          "every row; uneven trials leave a worker idle at the end. A speed-up above the ideal "
          "means this process ran these small trials slower multi-threaded than a one-thread "
          "worker does.")


if __name__ == "__main__":
    main()
