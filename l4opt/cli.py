"""Command line: parses arguments and calls the verbs; no logic of its own."""
from __future__ import annotations

import argparse
import json
import math
import sys

from .errors import L4OptError

SHOW = ["recipe", "status", "format", "path", "metric_name", "metric", "metric_delta",
        "cos_mean", "cos_min", "sqnr_db", "max_abs_err", "drift_backend", "latency_ms",
        "latency_source", "total_s", "cached"]


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def print_table(df, columns=SHOW) -> None:
    import pandas as pd

    cols = [c for c in columns if c in df.columns]
    shown = df[cols].copy()
    if "latency_ms" in shown and "latency_source" in shown:
        # every estimated number says so where it is shown
        shown = shown.rename(columns={"latency_ms": "L4 latency ms (b=1)"})
    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        print(shown.to_string(index=False))


def cmd_sweep(a) -> int:
    from .sweeps import sweep

    kwargs = {}
    if a.calib_samples:
        kwargs["calib_samples"] = a.calib_samples
    if a.eval_samples:
        kwargs["eval_samples"] = a.eval_samples
    res = sweep(a.workload, a.recipes, a.out, force=a.force, progress=not a.json, **kwargs)
    if a.json:
        rows = [{k: v for k, v in r.items() if k != "traceback"} for r in res.rows]
        print(json.dumps(_jsonable({"run_dir": str(res.run_dir), "notes": res.notes,
                                    "rows": rows}), indent=1, default=str))
    else:
        for n in res.notes:
            print(f"note: {n}", file=sys.stderr)
        print_table(res.table())
        est = {r.get("latency_source") for r in res.rows if r.get("latency_source")}
        if any(s.startswith("estimated") for s in est):
            print("\nL4 latencies are ESTIMATES from the l4opt cost model (no L4 measured "
                  "here); CPU timings are not L4 latency.")
        for r in res.failed:
            print(f"\nFAILED {r['recipe']}: {r.get('error')}", file=sys.stderr)
        print(f"\nresults: {res.run_dir}/results.sqlite")
    return 1 if res.failed else 0


def cmd_list(a) -> int:
    from . import recipes, workloads

    if a.what == "workloads":
        for n in workloads.names():
            print(n + ("  (default)" if n == workloads.DEFAULT else ""))
    else:
        for r in recipes.BUILTIN.values():
            print(f"{r.name:18s} {r.path:10s} {r.format:5s} {str(r.algorithm):12s} "
                  f"{r.description}")
        print("\nrefused on L4: " + ", ".join(recipes.REFUSED))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="l4opt", description="Pick the precision recipe to ship "
                                "on NVIDIA L4: accuracy drift against L4 latency.")
    p.add_argument("--version", action="version", version=f"l4opt {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("sweep", help="run recipes on a workload and print one row per trial")
    s.add_argument("workload", nargs="?", default="minilm",
                   help="built-in workload (minilm, digits-cnn); default minilm")
    s.add_argument("--recipes", default=None,
                   help="comma-separated recipe names or recipe files (default: all built-ins)")
    s.add_argument("--out", default="runs/default", help="run directory (default runs/default)")
    s.add_argument("--json", action="store_true", help="print machine-readable rows")
    s.add_argument("--force", action="store_true", help="recompute cached trials")
    s.add_argument("--calib-samples", type=int, default=None)
    s.add_argument("--eval-samples", type=int, default=None)
    s.set_defaults(fn=cmd_sweep)

    for what in ("workloads", "recipes"):
        s = sub.add_parser(what, help=f"list the built-in {what}")
        s.set_defaults(fn=cmd_list, what=what)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except L4OptError as exc:
        print(f"l4opt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l4opt: interrupted; finished trials are in the run directory and a re-run "
              "resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
