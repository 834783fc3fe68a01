"""Command line: parses arguments and calls the verbs; no logic of its own."""
from __future__ import annotations

import argparse
import json
import math
import sys

from .errors import L4OptError

SHOW = ["recipe", "status", "format", "path", "metric_name", "metric", "metric_delta",
        "cos_mean", "cos_min", "sqnr_db", "max_abs_err", "drift_backend", "latency_ms",
        "throughput_samples_s", "latency_source", "total_s", "cached"]


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
        shown = shown.rename(columns={"latency_ms": "L4 ms (b=1)",
                                      "throughput_samples_s": "L4 samples/s (opt b)"})
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
    res = sweep(a.workload, a.recipes, a.out, force=a.force, progress=not a.json,
                cluster=a.ray, **kwargs)
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


def _ray_arg(s) -> None:
    s.add_argument("--ray", nargs="?", const="ray", default=None, metavar="ADDRESS",
                   help="run on Ray: alone, a local Ray instance on this machine; with "
                        "ray://HOST:PORT or HOST:PORT, join that cluster (needs l4opt[ray])")


def _layer_args(s):
    """What sensitivity and search share: workload, recipe, run dir, sample count, JSON, Ray."""
    s.add_argument("workload")
    s.add_argument("--recipe", required=True)
    s.add_argument("--out", default="runs/default")
    s.add_argument("--eval-samples", type=int, default=None)
    s.add_argument("--json", action="store_true")
    _ray_arg(s)
    return s


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


def _emit(obj, as_json: bool, text: str) -> None:
    print(json.dumps(_jsonable(obj), indent=1, default=str) if as_json else text)


def _save_json(run_dir, sub: str, name: str, obj) -> None:
    """Keep a per-run JSON (sensitivity, lint) where the report finds it."""
    from pathlib import Path

    d = Path(run_dir) / sub
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(_jsonable(obj), indent=1, default=str))


def cmd_sensitivity(a) -> int:
    from .searches import sensitivity

    res = sensitivity(a.workload, a.recipe, a.out, eval_samples=a.eval_samples,
                      progress=not a.json, cluster=a.ray)
    d = res.to_dict()
    if a.json:
        _emit(d, True, "")
    else:
        print_table(res.table(), columns=list(res.table().columns))
    return 0


def cmd_search(a) -> int:
    from .searches import Budget, search

    budget = Budget(max_drop=a.max_drop, relative=a.relative, min_cosine=a.min_cosine)
    res = search(a.workload, a.recipe, budget, a.out, strategy=a.strategy,
                 eval_samples=a.eval_samples, progress=not a.json, cluster=a.ray)
    d = res.to_dict()
    if a.json:
        _emit(d, True, "")
    else:
        print_table(res.table(), columns=list(res.table().columns))
        print(f"\nchosen: {d.get('recipe_path')}  met budget: {d.get('met')}")
    return 0 if d.get("met") else 1


def cmd_lint(a) -> int:
    from . import engine_report

    layers = engine_report.read_layer_info(a.graph)
    profile = engine_report.read_profile(a.profile) if a.profile else None
    rep = engine_report.lint(layers, profile)
    if a.out:
        from pathlib import Path

        name = Path(a.graph).name.removesuffix(".json").removesuffix(".graph")
        _save_json(a.out, "lint", name, rep.to_dict())
    _emit(rep.to_dict(), a.json, rep.to_text())
    return 0


def cmd_estimate(a) -> int:
    from . import estimate

    if a.onnx:
        dims = dict(kv.split("=", 1) for kv in a.dim) if a.dim else None
        est = estimate.estimate_onnx(a.onnx, gpu=a.gpu, batch=a.batch,
                                     dynamic_dims={k: int(v) for k, v in dims.items()} if dims else None)
    else:
        from . import engine_report

        est = estimate.estimate_engine(engine_report.read_layer_info(a.engine_graph), gpu=a.gpu,
                                       batch=a.batch)
    _emit(est.to_dict(), a.json, est.to_text())
    return 0


def cmd_bundle(a) -> int:
    from . import bundle

    path = bundle.bundle_run(a.run_dir, a.output)
    print(f"bundle written: {path}\ncopy it to an L4 machine, run build_and_profile.sh there, "
          f"copy it back and run: l4opt import {a.run_dir} {path}")
    return 0


def cmd_import(a) -> int:
    from . import bundle

    rows = bundle.import_bundle(a.run_dir, a.bundle_dir)
    _emit(rows, a.json, "\n".join(
        f"{r.get('trial_id') or r.get('key')}: {r.get('status', 'ok')} "
        f"{r.get('latency_source', '')} median {r.get('latency_ms_median', '–')} ms"
        for r in rows))
    return 0 if all(r.get("status", "ok") == "ok" for r in rows) else 1


def cmd_report(a) -> int:
    from .report import write_report

    print(write_report(a.run_dir, a.output))
    return 0


def cmd_recipe_run(a) -> int:
    from .execute import run_recipe

    out = run_recipe(a.yaml, a.out)
    for k, v in out.items():
        print(f"{k}: {v}")
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
    _ray_arg(s)
    s.set_defaults(fn=cmd_sweep)

    for what in ("workloads", "recipes"):
        s = sub.add_parser(what, help=f"list the built-in {what}")
        s.set_defaults(fn=cmd_list, what=what)

    s = _layer_args(sub.add_parser("sensitivity",
                                   help="per-layer drift: only this layer / all but this layer"))
    s.set_defaults(fn=cmd_sensitivity)

    s = _layer_args(sub.add_parser("search",
                                   help="fastest mixed precision within an accuracy budget"))
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--max-drop", type=float, help="largest allowed drop of the task metric")
    g.add_argument("--min-cosine", type=float, help="smallest allowed mean cosine")
    s.add_argument("--relative", action="store_true", help="--max-drop is a fraction of the "
                   "unquantized metric")
    s.add_argument("--strategy", default="both", choices=["both", "greedy", "auto_quantize"])
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("lint", help="why isn't my engine faster? (TensorRT layer info + profile)")
    s.add_argument("graph", help="layer information JSON (trtexec --exportLayerInfo)")
    s.add_argument("--profile", help="per-layer profile JSON (trtexec --exportProfile)")
    s.add_argument("--out", default=None, help="run directory to keep the lint in (for reports)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_lint)

    s = sub.add_parser("estimate", help="ESTIMATED per-layer and total latency on a GPU")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--onnx", help="a (Q/DQ) ONNX model")
    g.add_argument("--engine-graph", help="an engine's layer information JSON")
    s.add_argument("--gpu", default="L4")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--dim", action="append", help="value of a named dynamic axis, e.g. seq=128")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_estimate)

    s = sub.add_parser("bundle", help="write ONNX + a trtexec build/profile script for a remote L4")
    s.add_argument("run_dir")
    s.add_argument("-o", "--output", default=None, help="bundle directory (default RUN_DIR/bundle)")
    s.set_defaults(fn=cmd_bundle)

    s = sub.add_parser("import", help="read a bundle's trtexec results back as measured rows")
    s.add_argument("run_dir")
    s.add_argument("bundle_dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_import)

    s = sub.add_parser("report", help="one self-contained HTML report of a run directory")
    s.add_argument("run_dir")
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("recipe", help="papermill study recipes")
    rs = s.add_subparsers(dest="recipe_cmd", required=True)
    r = rs.add_parser("run", help="execute a recipe YAML with papermill and write its report")
    r.add_argument("yaml")
    r.add_argument("--out", default=None)
    r.set_defaults(fn=cmd_recipe_run)
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
