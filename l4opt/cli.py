"""Command line: parses arguments and calls the verbs; no logic of its own."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

from l4opt.errors import L4OptError

SHOW = ["recipe", "status", "format", "route", "layers", "metric_name", "metric", "metric_drop",
        "cos_mean", "cos_min", "sqnr_db", "drift_backend", "latency_ms", "speedup",
        "latency_batch", "throughput_samples_s", "latency_source", "total_s", "cached"]
NAMES = {"layers": "quantized/GEMM", "latency_ms": "L4 ms (band)", "latency_batch": "batch",
         "throughput_samples_s": "L4 samples/s", "metric_drop": "drop (lower is better)",
         "speedup": "x FP16 (band)"}


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def print_table(df, columns=SHOW) -> None:
    """Rows as text: statuses as what happened, numbers with the digits that tell them apart
    (l4opt.tables), the L4 latency with its estimate band and the batch it is for."""
    import pandas as pd

    from l4opt.ui.tables import display_frame

    rename = NAMES if "latency_source" in df.columns else {}
    shown = display_frame(df, columns, rename)
    with pd.option_context("display.max_columns", None, "display.width", 250):
        print(shown.to_string(index=False))


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (sample counts, batch sizes)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: give a number >= 1")
    return v


def dim_value(text: str) -> tuple[str, int]:
    """argparse type for --dim: NAME=VALUE, a named dynamic axis and its size (e.g. seq=128)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE, e.g. seq=128")
    return name.strip(), positive_int(value.strip())


def _dims(a) -> dict | None:
    return dict(a.dim) if getattr(a, "dim", None) else None


def _workload(a, **options):
    """The workload the user named (built-in, 'pkg.mod:fn' or 'file.py:fn'), options checked
    against its factory, with the deployment batch and named dims set on it."""
    from l4opt.spec.loader import load_workload

    w = load_workload(a.workload, options, cli=True)
    if getattr(a, "ray", None):
        from l4opt.spec.loader import ship_by_value

        ship_by_value()  # Ray workers cannot import the user's file: send its code along
    if getattr(a, "batch", None):
        w.deploy_batch = a.batch
    if _dims(a):
        w.dims = {**(w.dims or {}), **_dims(a)}
    return w


def _shape_kwargs(a) -> dict:
    """batch=/dims= of sweep, sensitivity and search (they are also set on the Workload)."""
    out = {}
    if getattr(a, "batch", None):
        out["batch"] = a.batch
    if _dims(a):
        out["dims"] = _dims(a)
    return out


def cmd_sweep(a) -> int:
    from l4opt.run.sweep import sweep
    from l4opt.spec.recipes import resolve

    resolve(a.recipes)  # an unknown recipe fails before the workload loads
    w = _workload(a, calib_samples=a.calib_samples, eval_samples=a.eval_samples)
    export = {k: v for k, v in (("exporter", a.exporter), ("opset", a.opset)) if v is not None}
    res = sweep(w, a.recipes, a.out, force=a.force, progress=not a.json,
                cluster=a.ray, export=export or None, spec=a.workload, **_shape_kwargs(a))
    if a.json:
        rows = [{k: v for k, v in r.items() if k != "traceback"} for r in res.rows]
        _emit({"run_dir": str(res.run_dir), "notes": res.notes, "rows": rows}, True, "")
    else:
        for n in res.notes:
            print(f"note: {n}", file=sys.stderr)
        print_table(res.table())
        est = {r.get("latency_source") for r in res.rows if r.get("latency_source")}
        if any(s.startswith("estimated") for s in est):
            print("\nL4 latencies are ESTIMATES from the l4opt cost model (no L4 measured "
                  "here); CPU timings are not L4 latency.")
        for r in res.rows:
            _say_not_ok(r)
        print(f"\nresults: {res.run_dir}/results.sqlite")
    return 1 if res.failed else 0


def _say_not_ok(r: dict) -> None:
    """A row that is not plainly ok says so under the table, with why."""
    from l4opt.ui.tables import row_status

    status = row_status(r)
    if status == "failed":
        print(f"\nFAILED {r['recipe']}: {r.get('error')}", file=sys.stderr)
    elif status == "no-op":
        why = sorted({str(x.get("reason")) for x in r.get("excluded_layers") or []
                      if isinstance(x, dict)})
        print(f"\nNO-OP {r['recipe']}: quantized {r.get('quantized_layers', 0)} of "
              f"{r.get('gemm_layers', '?')} GEMM/conv layers; its numbers are the unquantized "
              f"model's" + (f" (ModelOpt: {'; '.join(why)[:300]})" if why else ""),
              file=sys.stderr)
    elif status == "collapsed":
        note = r.get("collapse_note") or "drift far past a sensible threshold"
        print(f"\nCOLLAPSED {r['recipe']}: {note}", file=sys.stderr)


def _ray_arg(s) -> None:
    s.add_argument("--ray", nargs="?", const="ray", default=None, metavar="ADDRESS",
                   help="run on Ray: alone, a local Ray instance on this machine; with "
                        "ray://HOST:PORT or HOST:PORT, join that cluster (needs l4opt[ray])")


def _layer_args(s):
    """What sensitivity and search share: workload, recipe, run dir, sample count, JSON, Ray."""
    _workload_arg(s, nargs=None)
    s.add_argument("--recipe", required=True,
                   help="the quantizing recipe to study: a built-in name (l4opt recipes) or a "
                        "recipe file (.json/.yaml)")
    s.add_argument("--out", default="runs/default",
                   help="run directory to read and write (default runs/default)")
    s.add_argument("--calib-samples", type=positive_int, default=None,
                   help="calibration samples (a workload option)")
    s.add_argument("--eval-samples", type=positive_int, default=None,
                   help="evaluation samples the per-layer drift is measured on")
    _shape_args(s)
    s.add_argument("--json", action="store_true",
                   help="print the result as JSON (only JSON on stdout)")
    _ray_arg(s)
    return s


WORKLOAD_HELP = ("a built-in workload (minilm, digits-cnn), or your own: 'pkg.module:make_workload' "
                 "or 'path/to/file.py:make_workload' (a function returning an l4opt.Workload, "
                 "or a Workload object)")


def _workload_arg(s, nargs="?"):
    if nargs:
        s.add_argument("workload", nargs=nargs, default="minilm",
                       help=WORKLOAD_HELP + "; default minilm")
    else:
        s.add_argument("workload", help=WORKLOAD_HELP)


def _shape_args(s, batch_default=None):
    s.add_argument("--batch", type=positive_int, default=batch_default,
                   help="deployment batch: the batch the L4 runs, calibration/export shapes "
                        "and latencies use (default: "
                        + ("the workload's" if batch_default is None else str(batch_default))
                        + ")")
    s.add_argument("--dim", action="append", type=dim_value, metavar="NAME=VALUE",
                   help="value of a named dynamic axis, e.g. seq=128 (repeatable)")


def cmd_list(a) -> int:
    from l4opt.spec import recipes, workloads

    if a.what == "workloads":
        for n in workloads.names():
            print(n + ("  (default)" if n == workloads.DEFAULT else ""))
    else:
        print(f"{'recipe':18s} {'route':10s} {'format':6s} {'calibration':12s} what it does")
        for r in recipes.BUILTIN.values():
            print(f"{r.name:18s} {r.route:10s} {r.format:6s} {r.algorithm or '–':12s} "
                  f"{r.description}")
        print("\nrefused on L4: " + ", ".join(recipes.REFUSED))
    return 0


_JSON_OUT = None  # where --json output goes: the real stdout, while everything else is on stderr


def _emit(obj, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(_jsonable(obj), indent=1, default=str), file=_JSON_OUT or sys.stdout,
              flush=True)
    else:
        print(text)


@contextlib.contextmanager
def _stdout_for_json(on: bool):
    """With --json, the JSON is the only thing on stdout: while the verb runs, Python's
    sys.stdout and file descriptor 1 (native libraries, child processes, Ray's worker logs)
    point at stderr, and _emit writes to the stdout the caller gave."""
    global _JSON_OUT
    if not on:
        yield
        return
    out = sys.stdout
    with contextlib.suppress(Exception):
        out.flush()
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None  # not a file (a test's capture): it receives the JSON as it is
    saved = os.dup(1)
    json_out = os.fdopen(os.dup(saved), "w") if fd == 1 else out
    os.dup2(sys.stderr.fileno() if _has_fd(sys.stderr) else 2, 1)
    sys.stdout, _JSON_OUT = sys.stderr, json_out
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)
        sys.stdout, _JSON_OUT = out, None
        if json_out is not out:
            json_out.close()


def _has_fd(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _save_json(run_dir, sub: str, name: str, obj):
    """Keep a per-run JSON (sensitivity, lint) where the report finds it; `name` is a user's
    name (a file, a workload): it becomes a slug plus a short hash, never a raw path part."""
    from pathlib import Path

    from l4opt.spec.names import safe_filename

    d = Path(run_dir) / sub
    d.mkdir(parents=True, exist_ok=True)
    path = d / safe_filename(name, suffix=".json")
    path.write_text(json.dumps(_jsonable(obj), indent=1, default=str))
    return path


def cmd_sensitivity(a) -> int:
    from l4opt.precision.api import sensitivity
    from l4opt.spec.recipes import get

    get(a.recipe)
    w = _workload(a, calib_samples=a.calib_samples)
    res = sensitivity(w, a.recipe, a.out, eval_samples=a.eval_samples,
                      progress=not a.json, cluster=a.ray, **_shape_kwargs(a))
    d = res.to_dict()
    if a.json:
        _emit(d, True, "")
    else:
        print_table(res.table(), columns=list(res.table().columns))
    return 0


def cmd_search(a) -> int:
    from l4opt.errors import BadInput
    from l4opt.precision.api import Budget, search
    from l4opt.spec.recipes import get

    # refuse an unmeetable budget before any work: a negative drop asks the quantized model to
    # beat the reference, a cosine outside [-1, 1] does not exist
    if a.max_drop is not None and not (a.max_drop >= 0 and math.isfinite(a.max_drop)):
        raise BadInput(f"--max-drop {a.max_drop} is not a drop: give the largest allowed drop "
                       f"of the task metric as a number >= 0 (e.g. 0.01; with --relative a "
                       f"fraction of the unquantized metric)")
    if a.min_cosine is not None and not -1 <= a.min_cosine <= 1:
        raise BadInput(f"--min-cosine {a.min_cosine} is outside [-1, 1], where every cosine "
                       f"lies: give the smallest allowed mean cosine, e.g. 0.999")
    budget = Budget(max_drop=a.max_drop, relative=a.relative, min_cosine=a.min_cosine)
    get(a.recipe)
    w = _workload(a, calib_samples=a.calib_samples)
    res = search(w, a.recipe, budget, a.out, strategy=a.strategy,
                 eval_samples=a.eval_samples, progress=not a.json, cluster=a.ray,
                 **_shape_kwargs(a))
    d = res.to_dict()
    if a.json:
        _emit(d, True, "")
    else:
        print_table(res.table(), columns=list(res.table().columns))
        print(f"\n{d.get('message')}")
        print(f"chosen: {d.get('recipe_path')}  met budget: {d.get('met')} (the sweep of the "
              f"saved recipe: {d.get('final_status')})")
    return 0 if d.get("met") else 1


def cmd_lint(a) -> int:
    from l4opt.latency import trtexec as engine_report

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
    from l4opt.latency import estimate

    if a.calibrate_from:
        print("l4opt: --calibrate-from is now --refit-from (calibration means ModelOpt's); "
              "refitting", file=sys.stderr)
        a.refit_from = a.calibrate_from
    if a.refit_from:
        table = estimate.refit_from(a.refit_from, progress=not a.json)
        text = (f"ESTIMATE vs MEASURED L4 latency on {len(table)} rows of {a.refit_from}, "
                f"before/after refitting the cost model's constants (saved in the run):\n"
                + table.to_string(index=False, float_format=lambda x: f"{x:.4g}")
                + f"\nmedian |error| before {100 * table['error_before'].abs().median():.1f}%, "
                  f"after {100 * table['error_after'].abs().median():.1f}% (after = in-sample)")
        _emit(table.to_dict(orient="records"), a.json, text)
        return 0
    if a.onnx:
        est = estimate.estimate_onnx(a.onnx, gpu=a.gpu, batch=a.batch, dynamic_dims=_dims(a),
                                     refit=a.refit or a.calibration)
    else:
        from l4opt.latency import trtexec as engine_report

        est = estimate.estimate_engine(engine_report.read_layer_info(a.engine_graph), gpu=a.gpu,
                                       batch=a.batch)
    _emit(est.to_dict(), a.json, est.to_text())
    return 0


def cmd_bundle(a) -> int:
    from l4opt.latency import bundle

    path = bundle.bundle_run(a.run_dir, a.output)
    print(f"bundle written: {path}\ncopy it to an L4 machine, run build_and_profile.sh there, "
          f"copy it back and run: l4opt import {a.run_dir} {path}")
    return 0


def cmd_import(a) -> int:
    from l4opt.latency import bundle

    rows = bundle.import_bundle(a.run_dir, a.bundle_dir)
    _emit(rows, a.json, "\n".join(
        f"{r.get('trial_id') or r.get('key')}: {r.get('status', 'ok')} "
        f"{r.get('latency_source', '')} median {r.get('latency_ms_median', '–')} ms"
        + (f" at batch {r['latency_batch']} (trtexec {r.get('trtexec_version')})"
           if r.get("status", "ok") == "ok" and "latency_batch" in r else f" {r.get('reason', '')}")
        for r in rows))
    return 0 if all(r.get("status", "ok") == "ok" for r in rows) else 1


def cmd_report(a) -> int:
    from l4opt.errors import BadInput
    from l4opt.ui.report import write_report

    budget = None
    if a.max_drop is not None and a.min_cosine is not None:
        raise BadInput("give --max-drop or --min-cosine, not both")
    if a.max_drop is not None:
        budget = {"max_drop": _number(a.max_drop, "--max-drop", allow_zero=True)}
    elif a.min_cosine is not None:
        budget = {"min_cosine": _number(a.min_cosine, "--min-cosine")}
    fleet = None
    if a.p99_ms is not None:
        from l4opt.fleet.plan import gpu_names
        from l4opt.ui.view_model import FLEET_GPUS

        fleet = {"p99_ms": _number(a.p99_ms, "--p99-ms"), "qps": _number(a.qps, "--qps"),
                 "gpus": gpu_names(a.gpus or FLEET_GPUS), "instances": _instances(a.instances)}
    elif a.qps is not None or a.gpus is not None:
        raise BadInput("--qps and --gpus plan a fleet: give --p99-ms T with them")
    try:
        print(write_report(a.run_dir, a.output, budget=budget, fleet=fleet, batch=a.batch))
    except OSError as exc:
        where = exc.filename or a.output or a.run_dir
        raise BadInput(f"cannot write the report to {where}: {exc.strerror or exc}; choose a "
                       f"writable path with -o/--output") from exc
    return 0


def cmd_playbook_run(a) -> int:
    from l4opt.ui.playbooks import run_playbook

    if a.cmd == "recipe":
        print("l4opt: `l4opt recipe run` is now `l4opt playbook run` (a recipe is a precision "
              "recipe; a papermill study is a playbook); running it", file=sys.stderr)
    out = run_playbook(a.yaml, a.out)
    for k, v in out.items():
        print(f"{k}: {v}")
    return 0


def _instances(v) -> tuple:
    """--instances "1,2": the engine copies per GPU the plan may configure."""
    from l4opt.errors import BadInput

    out = []
    for part in str(v).split(","):
        try:
            k = int(part.strip())
        except ValueError:
            k = 0
        if k < 1:
            raise BadInput(f"--instances {v!r}: give whole numbers >= 1, comma-separated "
                           f"(e.g. 1,2)")
        out.append(k)
    return tuple(dict.fromkeys(out))


def _number(v, flag: str, allow_zero: bool = False):
    """A flag's finite number > 0 (>= 0 with allow_zero), or None when not given."""
    from l4opt.errors import BadInput

    if v is None:
        return None
    try:
        f = float(v)
    except ValueError:
        raise BadInput(f"{flag} {v!r} is not a number; give a number > 0") from None
    if not (math.isfinite(f) and (f >= 0 if allow_zero else f > 0)):
        raise BadInput(f"{flag} {v!r}: give a finite number {'>=' if allow_zero else '>'} 0")
    return f


def cmd_plan(a) -> int:
    from l4opt.errors import BadInput
    from l4opt.fleet.plan import plan, text

    if (a.run_dir is None) == (a.onnx is None):
        raise BadInput("give a RUN_DIR or --onnx FILE (exactly one)")
    gpus = a.gpus or a.gpu or ("L4,T4,A10G,L40S" if a.run_dir else "L4")
    res = plan(a.run_dir, onnx=a.onnx, qps=_number(a.qps, "--qps"),
               p99_ms=_number(a.p99_ms, "--p99-ms"), gpus=gpus, prices=a.prices,
               budget=None if a.max_drop is None else {"max_drop": a.max_drop},
               dims=_dims(a), max_batch=a.max_batch, instances=_instances(a.instances),
               workload=a.workload)
    _emit(res.to_dict(), a.json, text(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from l4opt import __version__

    p = argparse.ArgumentParser(prog="l4opt", description="Pick the precision recipe to ship "
                                "on NVIDIA L4: accuracy drift against L4 latency.")
    p.add_argument("--version", action="version", version=f"l4opt {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("sweep", help="run recipes on a workload and print one row per trial")
    _workload_arg(s)
    s.add_argument("--recipes", default=None,
                   help="comma-separated recipe names or recipe files (default: all built-ins)")
    s.add_argument("--out", default="runs/default", help="run directory (default runs/default)")
    s.add_argument("--json", action="store_true", help="print machine-readable rows")
    s.add_argument("--force", action="store_true", help="recompute cached trials")
    s.add_argument("--exporter", choices=["auto", "torchscript", "dynamo"], default=None,
                   help="how the FP32 graph is exported (default auto: TorchScript, then "
                        "torch's dynamo exporter when TorchScript fails)")
    s.add_argument("--opset", type=positive_int, default=None,
                   help="ONNX opset of the FP32 export (default 17; dynamo writes >= 18)")
    s.add_argument("--calib-samples", type=positive_int, default=None,
                   help="calibration samples (a workload option)")
    s.add_argument("--eval-samples", type=positive_int, default=None,
                   help="evaluation samples (a workload option)")
    _shape_args(s)
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
    s.add_argument("--strategy", default="both",
                   choices=["both", "bisect", "greedy", "auto_quantize"],
                   help="ONNX-PTQ recipes: both/bisect = per-layer INT8/FP8/FP16 on the Q/DQ "
                        "graph the sweep measures; greedy/auto_quantize study the torch-PTQ "
                        "form (earlier behaviour). Torch-PTQ recipes: greedy FP16 fallback "
                        "and/or ModelOpt auto_quantize")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("lint", help="why isn't my engine faster? (TensorRT layer info + profile)")
    s.add_argument("graph", help="layer information JSON (trtexec --exportLayerInfo)")
    s.add_argument("--profile", help="per-layer profile JSON (trtexec --exportProfile)")
    s.add_argument("--out", default=None, help="run directory to keep the lint in (for reports)")
    s.add_argument("--json", action="store_true", help="print the lint as JSON")
    s.set_defaults(fn=cmd_lint)

    s = sub.add_parser("estimate", help="ESTIMATED per-layer and total latency on a GPU")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--onnx", help="a (Q/DQ) ONNX model")
    g.add_argument("--engine-graph", help="an engine's layer information JSON")
    g.add_argument("--refit-from", metavar="RUN_DIR",
                   help="refit the cost model on a run's measured L4 rows; print error before/after")
    g.add_argument("--calibrate-from", metavar="RUN_DIR", help=argparse.SUPPRESS)  # old name
    s.add_argument("--refit", metavar="RUN_DIR", default=None,
                   help="estimate with the constants refitted on a run (--refit-from)")
    s.add_argument("--calibration", default=None, help=argparse.SUPPRESS)  # old name of --refit
    s.add_argument("--gpu", default="L4",
                   help="the GPU to estimate on (L4, T4, A10G, L40S, A100, H100; default L4)")
    _shape_args(s, batch_default=1)
    s.add_argument("--json", action="store_true", help="print the estimate as JSON")
    s.set_defaults(fn=cmd_estimate)

    s = sub.add_parser("bundle", help="write ONNX + a trtexec build/profile script for a remote L4")
    s.add_argument("run_dir")
    s.add_argument("-o", "--output", default=None, help="bundle directory (default RUN_DIR/bundle)")
    s.set_defaults(fn=cmd_bundle)

    s = sub.add_parser("import", help="read a bundle's trtexec results back as measured rows")
    s.add_argument("run_dir")
    s.add_argument("bundle_dir")
    s.add_argument("--json", action="store_true", help="print the imported rows as JSON")
    s.set_defaults(fn=cmd_import)

    _report_and_plan_verbs(sub)

    for verb in ("playbook", "recipe"):  # `recipe run`: the spelling before 0.2, still taken
        s = sub.add_parser(verb, help="papermill playbooks: a parameterized notebook + values"
                           if verb == "playbook" else "renamed: use `l4opt playbook run`")
        rs = s.add_subparsers(dest="playbook_cmd", required=True)
        r = rs.add_parser("run", help="execute a playbook YAML with papermill and write its "
                                      "report")
        r.add_argument("yaml", help="a playbook file (playbooks/*.yaml)")
        r.add_argument("--out", default=None, help="run directory (default runs/<name>)")
        r.set_defaults(fn=cmd_playbook_run)
    return p


def _report_and_plan_verbs(sub) -> None:
    """`l4opt report` and `l4opt plan`: the two verbs that read a run for a person (the
    report, with its optional fleet plan) or for a fleet (capacity, GPUs, cost)."""
    s = sub.add_parser("report", help="one self-contained HTML report of a run directory")
    s.add_argument("run_dir")
    s.add_argument("-o", "--output", default=None, help="the HTML file to write (default "
                   "RUN_DIR/report.html)")
    s.add_argument("--max-drop", default=None, help="accuracy budget of the recommendation: "
                   "largest allowed task-metric drop (default 0.01)")
    s.add_argument("--min-cosine", default=None, help="accuracy budget as the smallest "
                   "allowed mean cosine instead")
    s.add_argument("--batch", type=positive_int, default=None, help="show every sweep trial's "
                   "L4 latency at this batch (measured there, else estimated on its Q/DQ ONNX; "
                   "default: each trial's own batch)")
    s.add_argument("--p99-ms", default=None, help="add a fleet plan at this p99 target (ms)")
    s.add_argument("--qps", default=None, help="fleet plan: target traffic (QPS)")
    s.add_argument("--gpus", default=None, help="fleet plan: comma-separated GPUs (default "
                   "L4,T4,A10G,L40S)")
    s.add_argument("--instances", default="1", help="fleet plan: engine instances per GPU "
                   "to consider (e.g. 1,2)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("plan", help="fleet plan: max QPS per GPU at a p99 target, GPUs needed, "
                                    "USD per million and joules per inference, per recipe and GPU")
    s.add_argument("run_dir", nargs="?", default=None, help="a sweep's run directory")
    s.add_argument("--onnx", default=None, help="plan one (Q/DQ) ONNX file instead of a run")
    s.add_argument("--qps", default=None, help="target traffic (queries per second, Poisson)")
    s.add_argument("--p99-ms", required=True, help="p99 latency target in ms (queueing included)")
    s.add_argument("--gpus", default=None, help="comma-separated GPUs (default for a run "
                   "directory: L4,T4,A10G,L40S; known: L4, T4, A10G, L40S, A100, H100, ...)")
    s.add_argument("--gpu", default=None, help="one GPU (same as --gpus with one name)")
    s.add_argument("--prices", default=None, help="YAML or JSON file of USD per GPU-hour "
                   "(on_demand, custom) overriding l4opt/data/prices.json")
    s.add_argument("--max-drop", default=None, help="accuracy budget: largest allowed metric "
                   "drop (rows above it are shown, never recommended)")
    s.add_argument("--max-batch", type=positive_int, default=64,
                   help="largest batch to consider for --onnx (default 64)")
    s.add_argument("--dim", action="append", type=dim_value, metavar="NAME=VALUE",
                   help="value of a named non-batch axis of --onnx, e.g. seq=128 (repeatable)")
    s.add_argument("--instances", default="1", help="engine instances per GPU to consider, "
                   "comma-separated (default 1; e.g. 1,2: the plan keeps the better)")
    s.add_argument("--workload", default=None, help="the workload to plan when RUN_DIR holds "
                   "several")
    s.add_argument("--json", action="store_true", help="print the plan as JSON")
    s.set_defaults(fn=cmd_plan)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with _stdout_for_json(bool(getattr(args, "json", False))):
        return _run(args)


def _run(args) -> int:
    try:
        return args.fn(args)
    except L4OptError as exc:
        print(f"l4opt: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave: say which and why, no traceback
        print(f"l4opt: error: {exc.filename or ''}{': ' if exc.filename else ''}"
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l4opt: interrupted; finished trials are in the run directory and a re-run "
              "resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
