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
# Q/DQ nodes), profiles it and times it at each batch size; results land in results/<trial>/.
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
STRONG=""
if "$TRTEXEC" --help 2>&1 | grep -q -- "--stronglyTyped"; then
  STRONG="--stronglyTyped"   # TensorRT 10; TensorRT 11 builds strongly typed only
fi
: > results/failed.txt

run_trial() {{
  # shapes_min is a template: @B@ stands for the batch axis
  local id="$1" shapes_min="$2" shapes_opt="$3" shapes_max="$4"; shift 4
  local dir="results/$id" eng="results/$id/$id.engine"
  mkdir -p "$dir"
  if ! "$TRTEXEC" --onnx="onnx/$id.onnx" --saveEngine="$eng" $STRONG \\
      --builderOptimizationLevel={opt_level} --memPoolSize=workspace:{workspace}M \\
      --timingCacheFile=results/timing.cache \\
      --minShapes="${{shapes_min//@B@/{min_batch}}}" --optShapes="$shapes_opt" \\
      --maxShapes="$shapes_max" --shapes="${{shapes_min//@B@/1}}" \\
      --noDataTransfers --useCudaGraph --separateProfileRun --useSpinWait \\
      --profilingVerbosity=detailed --warmUp=200 --duration=3 \\
      --exportTimes="$eng.timing.json" --exportProfile="$eng.profile.json" \\
      --exportLayerInfo="$eng.graph.json" > "$dir/trtexec.log" 2>&1; then
    echo "$id build" >> results/failed.txt
    return
  fi
  local b shapes
  for b in "$@"; do
    shapes="${{shapes_min//@B@/$b}}"
    "$TRTEXEC" --loadEngine="$eng" --shapes="$shapes" --noDataTransfers --useCudaGraph \\
      --useSpinWait --warmUp=200 --duration=3 --exportTimes="$eng.b$b.timing.json" \\
      > "$dir/trtexec.b$b.log" 2>&1 || echo "$id batch $b" >> results/failed.txt
  done
}}
"""


def _shape_arg(shapes: dict[str, list]) -> str:
    return ",".join(f"{n}:{'x'.join(str(d) for d in s)}" for n, s in shapes.items())


def write_bundle(trials, out_dir, settings: BuildSettings | None = None) -> Path:
    """Copy each trial's ONNX into out_dir/onnx, write the manifest and the trtexec script.

    trials: dicts with trial_id, onnx_path and inputs ([{name, shape, dtype}], dynamic axes
    named); settings.batch gives min/opt/max of the batch axis.
    """
    settings = settings or BuildSettings()
    out = Path(out_dir)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    lines, entries = [_HEADER.format(version=__version__, opt_level=settings.opt_level,
                                     workspace=settings.workspace_mib,
                                     min_batch=settings.batch[0])], []
    batches = sorted({1, *settings.batch})
    for t in trials:
        tid = str(t["trial_id"])
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", tid):
            raise BadInput(f"trial id {tid!r} is not a safe file name")
        src = Path(t["onnx_path"])
        if not src.exists():
            raise BadInput(f"trial {tid}: ONNX file {src} not found; re-run the sweep")
        shutil.copyfile(src, out / "onnx" / f"{tid}.onnx")
        if Path(str(src) + ".data").exists():  # external weights travel with the graph
            shutil.copyfile(str(src) + ".data", out / "onnx" / f"{tid}.onnx.data")
        mins, opts, maxs = zip(*[settings.shapes([i])[i["name"]] for i in t["inputs"]])
        names = [i["name"] for i in t["inputs"]]
        template = {n: ["@B@"] + list(m[1:]) for n, m in zip(names, mins)}
        lines.append("run_trial " + " ".join(shlex.quote(x) for x in [
            tid, _shape_arg(template), _shape_arg(dict(zip(names, opts))),
            _shape_arg(dict(zip(names, maxs)))]) + " " + " ".join(str(b) for b in batches))
        entries.append({k: t.get(k) for k in ("trial_id", "workload", "recipe", "inputs")}
                       | {"onnx_sha256": t.get("onnx_sha256")})
    lines.append('if [ -s results/failed.txt ]; then echo "some steps failed:"; '
                 'cat results/failed.txt; exit 1; fi')
    lines.append('echo "done: copy this folder back and run: l4opt import RUN_DIR BUNDLE_DIR"')
    script = out / SCRIPT
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    (out / MANIFEST).write_text(json.dumps({
        "l4opt_version": __version__, "settings": settings.to_dict(), "batches": batches,
        "trials": entries}, indent=1))
    return out


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
    status 'missing' with the reason."""
    from .bench import latency_stats, stability_warnings, throughput
    from .engine_report import read_timing, timed_iterations

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
    rows = []
    for tid in ids:
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
        except BadInput as exc:
            rows.append({"trial_id": tid, "status": "missing", "reason": str(exc)})
            continue
        gpu = _gpu_name(res, d) or "unknown GPU"
        g = latency_stats(t["computeMs"])
        lat = latency_stats(t["latencyMs"]) if "latencyMs" in t else g
        enq = (t["endEnqMs"] - t["startEnqMs"]) if {"endEnqMs", "startEnqMs"} <= set(t) else None
        curve = []
        for bt in manifest.get("batches", []):
            f = Path(f"{eng}.b{bt}.timing.json")
            if f.exists():
                s = latency_stats(timed_iterations(read_timing(f))["computeMs"])
                curve.append({"batch": bt, "latency_ms_median": s["median"], "p99": s["p99"],
                              **throughput(s["median"], bt)})
        rows.append({
            "trial_id": tid, "status": "ok", "gpu": gpu, "latency_source": source_label(gpu),
            "latency_ms_median": g["median"], "latency_ms_mean": g["mean"],
            "latency_ms_min": g["min"], "latency_ms_max": g["max"], "latency_ms_p90": g["p90"],
            "latency_ms_p95": g["p95"], "latency_ms_p99": g["p99"], "cv": g["cv"],
            "host_latency_ms_median": lat["median"], "iterations": g["count"],
            **throughput(g["median"], 1),
            "warnings": stability_warnings(t["computeMs"], enq),
            "batch_sweep": curve,
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
    if settings is None:
        br = rows[0].get("batch_range") or [1, 8, 64]
        settings = BuildSettings(batch=tuple(br))
    trials = [{"trial_id": r["key"], "onnx_path": str(Path(run_dir) / r["onnx_path"]),
               "inputs": r["inputs"], "workload": r["workload"], "recipe": r["recipe"],
               "onnx_sha256": r.get("onnx_sha256")} for r in rows]
    return write_bundle(trials, out or Path(run_dir) / "bundle", settings)


def import_bundle(run_dir, bundle_dir) -> list[dict]:
    """Put a bundle's measurements into the run's rows; the estimate stays beside them."""
    from .store import Store

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
            store.update(r["trial_id"], latency_estimate_ms=row.get("latency_estimate_ms",
                                                                     row.get("latency_ms")),
                         latency_estimate_source=row.get("latency_estimate_source",
                                                         row.get("latency_source")),
                         latency_ms=r["latency_ms_median"], latency_batch=1,
                         latency_p99_ms=r["latency_ms_p99"], latency_cv=r["cv"],
                         latency_source=r["latency_source"], latency_gpu=r["gpu"],
                         latency_warnings=r["warnings"], batch_sweep=r["batch_sweep"],
                         engine_exports=r["exports"])
    finally:
        store.close()
    return rows
