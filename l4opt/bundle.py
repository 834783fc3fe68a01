"""A build bundle for a remote L4: every trial's ONNX plus a trtexec script that builds and
profiles them with the same settings, and the reader that brings the results back as
measured rows."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

from . import __version__
from .errors import BadInput
from .trt import BuildSettings, source_label

SCRIPT = "build_and_profile.sh"
MANIFEST = "manifest.json"

_HEADER = """#!/usr/bin/env bash
# Built by l4opt {version}. Run on the target GPU (an NVIDIA L4) with TensorRT's trtexec on PATH
# or TRTEXEC=/path/to/trtexec. Builds one strongly typed engine per trial (precision from the
# Q/DQ nodes), profiles it and times it at each batch size; results land in results/<trial>/,
# with the exact trtexec arguments of every run (*.args) and trtexec's version.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
TRTEXEC="${{TRTEXEC:-trtexec}}"
if ! command -v "$TRTEXEC" >/dev/null 2>&1; then
  echo "trtexec not found; set TRTEXEC=/path/to/trtexec" >&2
  exit 2
fi
mkdir -p results
nvidia-smi --query-gpu=name,compute_cap,driver_version,clocks.max.sm,power.limit \\
  --format=csv > results/gpu.csv 2>/dev/null || echo "nvidia-smi unavailable" > results/gpu.csv

# trtexec's help, captured once: piping it into `grep -q` under pipefail can kill trtexec with
# SIGPIPE and silently drop a flag. Its first line names the version: [TensorRT v101300].
HELP="$("$TRTEXEC" --help 2>&1)" || true
TRT_VERSION=0
if [[ $HELP =~ \\[TensorRT\\ v([0-9]+)\\] ]]; then
  TRT_VERSION="${{BASH_REMATCH[1]}}"
fi
TRT_MAJOR=$((TRT_VERSION / 10000))
printf '%s\\n' "$TRT_VERSION" > results/trtexec_version.txt

has_flag() {{  # listed by this trtexec's --help and not marked [Deprecated] there
  local line
  while IFS= read -r line; do
    case "$line" in
      "  $1 "* | "  $1="* | "  $1")
        [[ $line != *"[Deprecated]"* ]]
        return
        ;;
    esac
  done <<< "$HELP"
  return 1
}}

BUILD_FLAGS=()
TIME_FLAGS=()
if ((TRT_MAJOR < 11)); then
  # TensorRT 10 needs --stronglyTyped for precision from Q/DQ; TensorRT 11 builds strongly
  # typed only and made these flags deprecated no-ops (their behaviour is its default).
  if has_flag --stronglyTyped; then
    BUILD_FLAGS+=(--stronglyTyped)
  else
    echo "warning: this trtexec has no --stronglyTyped; engines are weakly typed" >&2
  fi
  for f in --noDataTransfers --useCudaGraph --useSpinWait; do
    if has_flag "$f"; then TIME_FLAGS+=("$f"); fi
  done
  if has_flag --separateProfileRun; then BUILD_FLAGS+=(--separateProfileRun); fi
fi
CACHE="results/timing-trt$TRT_VERSION.cache"  # tactic timings are per TensorRT version
: > results/failed.txt

run_trial() {{
  # args: id opt_level workspace_MiB min opt max run latency_batch batches...
  # (run is a shape spec template: @B@ stands for the batch; empty specs = static shapes)
  local id="$1" opt_level="$2" ws="$3" smin="$4" sopt="$5" smax="$6" srun="$7" lb="$8"
  shift 8
  local dir="results/$id" eng="results/$id/$id.engine"
  mkdir -p "$dir"
  local cmd=("$TRTEXEC" --onnx="onnx/$id.onnx" --saveEngine="$eng"
    ${{BUILD_FLAGS[@]+"${{BUILD_FLAGS[@]}}"}} ${{TIME_FLAGS[@]+"${{TIME_FLAGS[@]}}"}}
    --builderOptimizationLevel="$opt_level" --memPoolSize=workspace:"$ws"M
    --timingCacheFile="$CACHE" --profilingVerbosity=detailed --warmUp=200 --duration=3
    --exportTimes="$eng.timing.json" --exportProfile="$eng.profile.json"
    --exportLayerInfo="$eng.graph.json")
  if [[ -n $smin ]]; then
    cmd+=(--minShapes="$smin" --optShapes="$sopt" --maxShapes="$smax" --shapes="${{srun//@B@/$lb}}")
  fi
  printf '%s\\n' "${{cmd[@]:1}}" > "$dir/build.args"
  if ! "${{cmd[@]}}" > "$dir/trtexec.log" 2>&1; then
    echo "$id build" >> results/failed.txt
    return
  fi
  [[ -n $srun ]] || return 0  # static shapes: the build run timed the only batch
  local b
  for b in "$@"; do
    cmd=("$TRTEXEC" --loadEngine="$eng" --shapes="${{srun//@B@/$b}}"
      ${{TIME_FLAGS[@]+"${{TIME_FLAGS[@]}}"}} --warmUp=200 --duration=3
      --exportTimes="$eng.b$b.timing.json")
    printf '%s\\n' "${{cmd[@]:1}}" > "$dir/b$b.args"
    "${{cmd[@]}}" > "$dir/trtexec.b$b.log" 2>&1 || echo "$id batch $b" >> results/failed.txt
  done
}}
"""


def trial_plan(t: dict, settings: BuildSettings) -> dict:
    """Profile shapes, run-shape template, latency batch and batch list of one trial.

    The batch range comes from the trial (else settings.batch); named non-batch axes take
    the values the trial recorded in `shapes` (else settings.dims); the latency run uses the
    trial's `latency_batch`, kept inside the profile.
    """
    from .trt import clip_batch, dims_from_shapes, shapes_arg

    lo, opt, hi = (int(b) for b in (t.get("batch_range") or settings.batch))
    dims = {**settings.dims, **dims_from_shapes(t["inputs"], t.get("shapes"))}
    s = BuildSettings(**{**settings.to_dict(), "batch": (lo, opt, hi), "dims": dims})
    dyn = [i for i in t["inputs"] if any(not (isinstance(d, int) and d > 0) for d in i["shape"])]
    prof = s.shapes(dyn)
    lb = clip_batch(t.get("latency_batch") or lo, lo, hi)
    template = {}
    for i in dyn:
        mn = prof[i["name"]][0]
        batched = not (isinstance(i["shape"][0], int) and i["shape"][0] > 0)
        template[i["name"]] = (["@B@"] if batched else [mn[0]]) + list(mn[1:])
    return {"min": shapes_arg({n: p[0] for n, p in prof.items()}),
            "opt": shapes_arg({n: p[1] for n, p in prof.items()}),
            "max": shapes_arg({n: p[2] for n, p in prof.items()}),
            "run": shapes_arg(template), "latency_batch": lb, "batch_range": [lo, opt, hi],
            "batches": sorted({lb, lo, opt, hi}) if dyn else [lb], "dims": dims,
            "opt_level": s.opt_level, "workspace_mib": s.workspace_mib}


def _tensors(graph):
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g)


def copy_onnx(src: Path, dst: Path) -> list[str]:
    """Copy a graph and its external-weight files under dst's name, rewriting each tensor's
    `location` to the new file names (TensorRT's parser opens them by that name)."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    renamed: dict[str, str] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for e in tensor.external_data:
            if e.key == "location":
                if e.value not in renamed:
                    f = src.parent / e.value
                    if not f.exists():
                        raise BadInput(f"{src}: external weights {e.value!r} not found beside it")
                    new = f"{dst.name}.data" if not renamed else f"{dst.name}.{len(renamed)}.data"
                    shutil.copyfile(f, dst.parent / new)
                    renamed[e.value] = new
                e.value = renamed[e.value]
    if renamed:
        onnx.save(model, str(dst))
    else:
        shutil.copyfile(src, dst)
    return sorted(renamed.values())


def write_bundle(trials, out_dir, settings: BuildSettings | None = None) -> Path:
    """Copy each trial's ONNX into out_dir/onnx, write the manifest and the trtexec script.

    trials: dicts with trial_id, onnx_path and inputs ([{name, shape, dtype}], dynamic axes
    named), and optionally batch_range, shapes ({input: dims} the trial ran at) and
    latency_batch; settings gives the builder options and the defaults.
    """
    settings = settings or BuildSettings()
    out = Path(out_dir)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    lines, entries = [_HEADER.format(version=__version__)], []
    for t in trials:
        tid = str(t["trial_id"])
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", tid):
            raise BadInput(f"trial id {tid!r} is not a safe file name")
        src = Path(t["onnx_path"])
        if not src.exists():
            raise BadInput(f"trial {tid}: ONNX file {src} not found; re-run the sweep")
        try:
            plan = trial_plan(t, settings)
        except BadInput as exc:
            raise BadInput(f"trial {tid}: {exc}") from exc
        weights = copy_onnx(src, out / "onnx" / f"{tid}.onnx")
        lines.append("run_trial " + " ".join(shlex.quote(str(x)) for x in [
            tid, plan["opt_level"], plan["workspace_mib"], plan["min"], plan["opt"],
            plan["max"], plan["run"], plan["latency_batch"], *plan["batches"]]))
        entries.append({k: t.get(k) for k in ("trial_id", "workload", "recipe", "inputs")}
                       | {"onnx_sha256": t.get("onnx_sha256"), "external_weights": weights,
                          **{k: plan[k] for k in ("batch_range", "latency_batch", "batches",
                                                  "dims", "min", "opt", "max")}})
    lines.append('if [ -s results/failed.txt ]; then echo "some steps failed:"; '
                 'cat results/failed.txt; exit 1; fi')
    lines.append('echo "done: copy this folder back and run: l4opt import RUN_DIR BUNDLE_DIR"')
    script = out / SCRIPT
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    (out / MANIFEST).write_text(json.dumps({
        "l4opt_version": __version__, "settings": settings.to_dict(), "trials": entries},
        indent=1))
    return out


def _version_string(v: int) -> str:
    """NV_TENSORRT_VERSION (major*10000 + minor*100 + patch) -> '10.16.0'."""
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v else "unknown"


def _args(path: Path) -> list[str] | None:
    return path.read_text().splitlines() if path.exists() else None


def _gpu_name(res_dir: Path, trial_dir: Path) -> str | None:
    log = trial_dir / "trtexec.log"
    if log.exists():
        m = re.search(r"Selected Device:\s*(.+)", log.read_text(errors="replace"))
        if m:
            return m.group(1).strip()
    csv = res_dir / "gpu.csv"
    if csv.exists():
        lines = [ln for ln in csv.read_text().splitlines() if ln.strip()]
        if len(lines) >= 2 and "," in lines[1]:
            return lines[1].split(",")[0].strip()
    return None


def read_bundle(bundle_dir) -> list[dict]:
    """One row per manifest trial: measured latency from trtexec's per-iteration times, or
    status 'missing' with the reason; each row says which trtexec ran with which flags."""
    from .bench import latency_stats, stability_warnings
    from .engine_report import read_timing, timed_iterations, walltime_throughput

    b = Path(bundle_dir)
    try:
        manifest = json.loads((b / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"{b} is not an l4opt bundle (no readable {MANIFEST}): {exc}") from exc
    ids = [t["trial_id"] for t in manifest["trials"]]
    res = b / "results"
    if res.exists():
        strays = [d.name for d in res.iterdir() if d.is_dir() and d.name not in ids]
        if strays:
            raise BadInput(f"results for trials not in the manifest: {strays}; was the bundle "
                           f"mixed with another one?")
    vfile = res / "trtexec_version.txt"
    try:
        version = _version_string(int(vfile.read_text().split()[0])) if vfile.exists() else None
    except (ValueError, IndexError):
        version = None
    rows = []
    for entry in manifest["trials"]:
        tid = entry["trial_id"]
        d = res / tid
        eng = d / f"{tid}.engine"
        timing = Path(str(eng) + ".timing.json")
        if not timing.exists():
            why = "no results (script not run here yet)" if not d.exists() else \
                "trtexec wrote no timing export; see " + str(d / "trtexec.log")
            rows.append({"trial_id": tid, "status": "missing", "reason": why})
            continue
        try:
            t = timed_iterations(read_timing(timing))
            if not len(t):
                raise BadInput(f"{timing} holds no timed iterations after the warm-up")
        except BadInput as exc:
            rows.append({"trial_id": tid, "status": "missing", "reason": str(exc)})
            continue
        lb = int(entry.get("latency_batch") or 1)
        gpu = _gpu_name(res, d) or "unknown GPU"
        g = latency_stats(t["computeMs"])
        lat = latency_stats(t["latencyMs"]) if "latencyMs" in t else g
        enq = (t["endEnqMs"] - t["startEnqMs"]) if {"endEnqMs", "startEnqMs"} <= set(t) else None
        thr = walltime_throughput(t, lb)
        curve = []
        for bt in entry.get("batches") or manifest.get("batches", []):
            f = Path(f"{eng}.b{bt}.timing.json")
            if f.exists():
                tb = timed_iterations(read_timing(f))
                if not len(tb):
                    continue
                s = latency_stats(tb["computeMs"])
                w = walltime_throughput(tb, bt)
                curve.append({"batch": bt, "latency_ms_median": s["median"], "p99": s["p99"],
                              "throughput_qps": w["throughput_qps"],
                              "throughput_samples_s": w["throughput_samples_s"],
                              "trtexec_args": _args(d / f"b{bt}.args")})
        rows.append({
            "trial_id": tid, "status": "ok", "gpu": gpu, "latency_source": source_label(gpu),
            "latency_batch": lb,
            "latency_ms_median": g["median"], "latency_ms_mean": g["mean"],
            "latency_ms_min": g["min"], "latency_ms_max": g["max"], "latency_ms_p90": g["p90"],
            "latency_ms_p95": g["p95"], "latency_ms_p99": g["p99"], "cv": g["cv"],
            "host_latency_ms_median": lat["median"], "iterations": g["count"],
            "walltime_ms": thr["walltime_ms"], "throughput_qps": thr["throughput_qps"],
            "throughput_samples_s": thr["throughput_samples_s"],
            "warnings": stability_warnings(t["computeMs"], enq),
            "batch_sweep": curve, "trtexec_version": version,
            "trtexec_build_args": _args(d / "build.args"),
            "exports": {k: str(Path(f"{eng}{s}")) for k, s in (
                ("graph", ".graph.json"), ("profile", ".profile.json"), ("timing", ".timing.json"))
                if Path(f"{eng}{s}").exists()},
        })
    return rows


# ------------------------------------------------------------------ run-directory glue

def bundle_run(run_dir, out=None, settings: BuildSettings | None = None) -> Path:
    """A bundle of every finished trial of a run directory."""
    from .store import Store

    store = Store(run_dir)
    rows = [r for r in store.rows() if r.get("kind") == "trial" and r.get("status") == "ok"]
    store.close()
    if not rows:
        raise BadInput(f"{run_dir} holds no finished trials; run `l4opt sweep` first")
    old = [r["recipe"] for r in rows if "inputs" not in r]
    if old:
        raise BadInput(f"trials {old} in {run_dir} were stored by an older l4opt without input "
                       f"shapes; re-run them with `l4opt sweep ... --force`")
    per_row = settings is None  # each trial's own batch range, unless settings say otherwise
    trials = [{"trial_id": r["key"], "onnx_path": str(Path(run_dir) / r["onnx_path"]),
               "inputs": r["inputs"], "workload": r["workload"], "recipe": r["recipe"],
               "onnx_sha256": r.get("onnx_sha256"), "shapes": r.get("shapes"),
               "latency_batch": r.get("latency_batch"),
               "batch_range": r.get("batch_range") if per_row else None} for r in rows]
    return write_bundle(trials, out or Path(run_dir) / "bundle", settings)


def import_bundle(run_dir, bundle_dir) -> list[dict]:
    """Put a bundle's measurements into the run's rows; the estimate stays beside them as
    est_latency_ms / est_latency_low_ms / est_latency_high_ms / est_latency_source."""
    from .store import Store
    from .trial import measured_update

    rows = read_bundle(bundle_dir)
    store = Store(run_dir)
    try:
        for r in rows:
            if r["status"] != "ok":
                continue
            row = store.row(r["trial_id"])
            if row is None:
                r.update(status="unknown-trial", reason=f"not in {run_dir}")
                continue
            # latency AND throughput at the row's latency batch (every batch is in batch_sweep)
            measured = {
                "latency_ms": r["latency_ms_median"], "latency_batch": r["latency_batch"],
                "throughput_samples_s": r["throughput_samples_s"],
                "throughput_batch": r["latency_batch"], "latency_p99_ms": r["latency_ms_p99"],
                "latency_cv": r["cv"], "latency_source": r["latency_source"],
                "latency_gpu": r["gpu"], "latency_warnings": r["warnings"],
                "batch_sweep": r["batch_sweep"], "engine_exports": r["exports"],
                "trtexec_version": r["trtexec_version"],
                "trtexec_build_args": r["trtexec_build_args"],
                "latency_trt_version": r["trtexec_version"]}
            store.update(r["trial_id"], **measured_update(row, measured))
    finally:
        store.close()
    return rows
