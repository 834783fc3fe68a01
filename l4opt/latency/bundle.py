"""A build bundle for a remote L4: every trial's ONNX plus a trtexec script that builds and
profiles them with the same settings, and the reader that brings the results back as
measured rows."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
from pathlib import Path

from l4opt import __version__
from l4opt.errors import BadInput
from l4opt.spec import row as rowspec
from l4opt.latency.trt import BuildSettings, source_label

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
    from l4opt.latency.trt import clip_batch, dims_from_shapes, shapes_arg

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
                    _copy(f, dst.parent / new)
                    renamed[e.value] = new
                e.value = renamed[e.value]
    if renamed:
        _replace_with(dst, lambda tmp: onnx.save(model, str(tmp)))
    else:
        _copy(src, dst)
    return sorted(renamed.values())


def _replace_with(dst: Path, write) -> None:
    """write(tmp) into a new temporary file beside dst, then rename it over dst: a symlink at
    dst is replaced, never written through."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _copy(src: Path, dst: Path) -> None:
    def write(tmp):
        with open(src, "rb") as f, open(tmp, "xb") as g:
            shutil.copyfileobj(f, g, 1 << 20)
    _replace_with(dst, write)


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
        if not SAFE_ID.fullmatch(tid):
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
    _replace_with(script, lambda tmp: (tmp.write_text("\n".join(lines) + "\n"), tmp.chmod(0o755)))
    # the settings every trial shares; each trial's own batch range and shapes are in its entry
    # (a batch range that differs per trial is not written once at the top, where it would
    # contradict them)
    shared = settings.to_dict()
    ranges = {tuple(e["batch_range"]) for e in entries}
    shared["batch"] = list(next(iter(ranges))) if len(ranges) == 1 else "per trial (see trials)"
    manifest = json.dumps({"l4opt_version": __version__, "settings": shared,
                           "trials": entries}, indent=1)
    _replace_with(out / MANIFEST, lambda tmp: tmp.write_text(manifest))
    return out


def _version_string(v: int) -> str:
    """NV_TENSORRT_VERSION (major*10000 + minor*100 + patch) -> '10.16.0'."""
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v else "unknown"


# ------------------------------------------------------------------ reading a bundle back
#
# A bundle comes back from another machine: import trusts nothing in it. It opens only regular
# files inside the bundle directory (no symlink anywhere below it, no '..' or absolute name,
# trial ids safe file names), none larger than the limits below, and checks every field it
# uses by type and range; the first bad one is a BadInput naming the file and the field.

MAX_MANIFEST_BYTES = 16 << 20
MAX_TIMING_BYTES = 64 << 20  # per timing export (a 3 s run is ~3 MB)
MAX_TEXT_BYTES = 1 << 20  # *.args, gpu.csv, trtexec_version.txt; the head of trtexec.log
SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


class _Bundle:
    """Files of a bundle directory, opened without following links."""

    def __init__(self, bundle_dir):
        self.dir = Path(bundle_dir)
        self.root = Path(os.path.realpath(self.dir))
        if not self.root.is_dir():
            raise BadInput(f"{self.dir} is not an l4opt bundle: no such directory")

    def path(self, *names: str) -> Path:
        """root/names..., refused when a name is unsafe or any part of it is a symlink."""
        p = self.root
        for n in names:
            if not isinstance(n, str) or not n or n in (".", "..") or "/" in n or "\0" in n:
                raise BadInput(f"{self.dir}: refusing the bundle path {'/'.join(map(str, names))!r}")
            p = p / n
            if p.is_symlink():
                raise BadInput(f"{self.dir / p.relative_to(self.root)} is a symlink: import "
                               f"reads only regular files inside the bundle")
        return p

    def show(self, p: Path) -> Path:
        return self.dir / p.relative_to(self.root)

    def exists(self, *names) -> bool:
        return self.path(*names).exists()

    def read(self, names, limit: int, what: str, head: bool = False) -> bytes | None:
        """The bytes of a regular file (None when absent); over `limit` refused (or, with
        head, cut to it)."""
        p = self.path(*names)
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BadInput(f"{what} {self.show(p)} is unreadable: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadInput(f"{what} {self.show(p)} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit and not head:
            raise BadInput(f"{what} {self.show(p)} is larger than {limit >> 20} MB, the most "
                           f"import reads from one such file")
        return data[:limit]

    def text(self, names, what: str, head: bool = False) -> str | None:
        data = self.read(names, MAX_TEXT_BYTES, what, head=head)
        return None if data is None else data.decode("utf-8", errors="replace")

    def json(self, names, limit: int, what: str):
        from l4opt.latency.trtexec import parse_json

        data = self.read(names, limit, what)
        return None if data is None else parse_json(data, self.show(self.path(*names)), what)


def _positive_int(v, where: str) -> int:
    if type(v) is not int or v < 1:
        raise BadInput(f"{where} = {v!r}: must be a whole number >= 1")
    return v


def check_manifest(manifest, source) -> list[dict]:
    """The manifest's trials, every field import uses checked: trials a list of objects, each
    trial_id a safe file name (unique), latency_batch and batches whole numbers >= 1."""
    if not isinstance(manifest, dict):
        raise BadInput(f"{source}: expected a JSON object with 'trials', got "
                       f"{type(manifest).__name__}")
    trials = manifest.get("trials")
    if not isinstance(trials, list):
        raise BadInput(f"{source}: 'trials' must be a list of trials, got "
                       + ("nothing" if trials is None else type(trials).__name__))
    default_batches = manifest.get("batches", [])
    seen, out = set(), []
    for i, t in enumerate(trials):
        where = f"{source}: trials[{i}]"
        if not isinstance(t, dict):
            raise BadInput(f"{where} must be an object, got {type(t).__name__}")
        tid = t.get("trial_id")
        if not isinstance(tid, str) or not SAFE_ID.fullmatch(tid) or tid in seen:
            raise BadInput(f"{where}.trial_id = {tid!r}: must be a unique file-name-safe string "
                           f"(letters, digits, _ . -)")
        seen.add(tid)
        lb = t.get("latency_batch")
        lb = 1 if lb is None else _positive_int(lb, f"{where}.latency_batch")
        batches = t.get("batches")
        field = f"{where}.batches"
        if batches is None:
            batches, field = default_batches, f"{source}: batches"
        if not isinstance(batches, list):
            raise BadInput(f"{field} = {batches!r}: must be a list of whole numbers >= 1")
        batches = [_positive_int(b, f"{field}[{j}]") for j, b in enumerate(batches)]
        out.append({**t, "latency_batch": lb, "batches": batches})
    return out


def _args(bundle: _Bundle, *names) -> list[str] | None:
    text = bundle.text(names, "trtexec arguments")
    return None if text is None else text.splitlines()


def _gpu_name(bundle: _Bundle, tid: str) -> str | None:
    log = bundle.text(("results", tid, "trtexec.log"), "trtexec log", head=True)
    if log:
        m = re.search(r"Selected Device:\s*(.+)", log)
        if m:
            return m.group(1).strip()[:200]
    csv = bundle.text(("results", "gpu.csv"), "GPU description")
    if csv:
        lines = [ln for ln in csv.splitlines() if ln.strip()]
        if len(lines) >= 2 and "," in lines[1]:
            return lines[1].split(",")[0].strip()[:200]
    return None


def _version(bundle: _Bundle) -> str | None:
    text = bundle.text(("results", "trtexec_version.txt"), "trtexec version")
    try:
        v = int(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None
    return _version_string(v) if v is not None and 0 <= v < 10**7 else None


def _timing(bundle: _Bundle, names):
    """The timed iterations of a timing export (None when absent), every record checked."""
    from l4opt.latency.trtexec import timed_iterations, timing_frame

    data = bundle.json(names, MAX_TIMING_BYTES, "timing export")
    return None if data is None else timed_iterations(
        timing_frame(data, bundle.show(bundle.path(*names))))


def read_bundle(bundle_dir) -> list[dict]:
    """One row per manifest trial: measured latency from trtexec's per-iteration times, or
    status 'missing' with the reason; each row says which trtexec ran with which flags. A
    bundle that is not what write_bundle and its script make is refused whole (BadInput
    naming the file and the field); nothing outside the bundle directory is read."""
    from l4opt.latency.stats import latency_stats, stability_warnings
    from l4opt.latency.trtexec import walltime_throughput

    b = _Bundle(bundle_dir)
    manifest = b.json((MANIFEST,), MAX_MANIFEST_BYTES, "bundle manifest")
    if manifest is None:
        raise BadInput(f"{bundle_dir} is not an l4opt bundle (no {MANIFEST})")
    trials = check_manifest(manifest, b.dir / MANIFEST)
    ids = {t["trial_id"] for t in trials}
    if b.exists("results"):
        res = b.path("results")
        if not res.is_dir():
            raise BadInput(f"{b.show(res)} is not a directory")
        strays = sorted(d.name for d in res.iterdir()
                        if (d.is_dir() or d.is_symlink()) and d.name not in ids)
        if strays:
            raise BadInput(f"results for trials not in the manifest: {strays}; was the bundle "
                           f"mixed with another one?")
    version = _version(b)
    rows = []
    for entry in trials:
        tid = entry["trial_id"]
        eng = f"{tid}.engine"
        t = _timing(b, ("results", tid, eng + ".timing.json")) if b.exists("results") else None
        if t is None:
            why = "no results (script not run here yet)" if not b.exists("results", tid) else \
                "trtexec wrote no timing export; see " + str(b.dir / "results" / tid / "trtexec.log")
            rows.append({"trial_id": tid, "status": "missing", "reason": why})
            continue
        if not len(t):
            rows.append({"trial_id": tid, "status": "missing", "reason":
                         f"{b.dir / 'results' / tid / (eng + '.timing.json')} holds no timed "
                         f"iterations after the warm-up"})
            continue
        lb = entry["latency_batch"]
        gpu = _gpu_name(b, tid) or "unknown GPU"
        g = latency_stats(t["computeMs"])
        lat = latency_stats(t["latencyMs"]) if "latencyMs" in t else g
        enq = (t["endEnqMs"] - t["startEnqMs"]) if {"endEnqMs", "startEnqMs"} <= set(t) else None
        thr = walltime_throughput(t, lb)
        curve = []
        for bt in entry["batches"]:
            tb = _timing(b, ("results", tid, f"{eng}.b{bt}.timing.json"))
            if tb is None or not len(tb):
                continue
            s = latency_stats(tb["computeMs"])
            w = walltime_throughput(tb, bt)
            curve.append({"batch": bt, "latency_ms_median": s["median"], "p99": s["p99"],
                          "throughput_qps": w["throughput_qps"],
                          "throughput_samples_s": w["throughput_samples_s"],
                          "trtexec_args": _args(b, "results", tid, f"b{bt}.args")})
        exports = {}
        for k, suffix in (("graph", ".graph.json"), ("profile", ".profile.json"),
                          ("timing", ".timing.json")):
            p = b.path("results", tid, eng + suffix)
            if p.is_file():
                exports[k] = str(b.dir / "results" / tid / (eng + suffix))
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
            "trtexec_build_args": _args(b, "results", tid, "build.args"),
            "exports": exports,
        })
    return rows


# ------------------------------------------------------------------ run-directory glue

def bundle_run(run_dir, out=None, settings: BuildSettings | None = None) -> Path:
    """A bundle of every finished trial of a run directory (read-only: with `out` elsewhere
    a read-only run directory is bundled; a run directory that does not exist is refused)."""
    from l4opt.files import check_inside, safe_mkdir
    from l4opt.results.rundir import existing_run_dir
    from l4opt.results.store import Store

    run_dir = existing_run_dir(run_dir, "bundle")
    store = Store(run_dir, readonly=True) if (run_dir / "results.sqlite").exists() else None
    # the sweep's finished trials (ok or collapsed: both have an engine to measure); a
    # search's candidates are not artifacts (their graphs are not kept): its saved recipe's
    # own sweep row is what a bundle builds
    rows = [r for r in store.rows() if r.get("kind") == "trial" and not r.get("strategy")
            and rowspec.status(r) in ("ok", "collapsed") and r.get("onnx_path")] \
        if store else []
    if store:
        store.close()
    if not rows:
        raise BadInput(f"{run_dir} holds no finished trials; run `l4opt sweep` first")
    old = [r["recipe"] for r in rows if "inputs" not in r]
    if old:
        raise BadInput(f"trials {old} in {run_dir} were stored by an older l4opt without input "
                       f"shapes; re-run them with `l4opt sweep ... --force`")
    per_row = settings is None  # each trial's own batch range, unless settings say otherwise
    trials = [{"trial_id": r["key"], "onnx_path": str(check_inside(run_dir / r["onnx_path"],
                                                                   run_dir)),
               "inputs": r["inputs"], "workload": r["workload"], "recipe": r["recipe"],
               "onnx_sha256": r.get("onnx_sha256"), "shapes": r.get("shapes"),
               "latency_batch": r.get("latency_batch"),
               "batch_range": r.get("batch_range") if per_row else None} for r in rows]
    out = Path(out) if out else run_dir / "bundle"
    if _inside(out, run_dir):  # the default: nothing through a link inside the run
        safe_mkdir(out / "onnx", run_dir)
    return write_bundle(trials, out, settings)


def _inside(p: Path, root: Path) -> bool:
    a, r = os.path.abspath(p), os.path.abspath(root)
    return a == r or a.startswith(r.rstrip(os.sep) + os.sep)


def import_bundle(run_dir, bundle_dir) -> list[dict]:
    """Put a bundle's measurements into the run's rows; the estimate stays beside them as
    est_latency_ms / est_latency_low_ms / est_latency_high_ms / est_latency_source.

    The whole bundle is read and checked first (read_bundle) and every row's update computed
    before the first is written: a bad bundle changes nothing in the run."""
    from l4opt.results.rundir import existing_run_dir
    from l4opt.results.store import Store
    from l4opt.spec.row import measured_update

    run_dir = existing_run_dir(run_dir, "import")
    rows = read_bundle(bundle_dir)
    if not (run_dir / "results.sqlite").exists():
        raise BadInput(f"{run_dir} holds no results.sqlite: import measures the trials of a "
                       f"sweep; run `l4opt sweep WORKLOAD --out {run_dir}` first")
    store = Store(run_dir)
    try:
        updates = []
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
            updates.append((r["trial_id"], measured_update(row, measured)))
        for key, fields in updates:
            store.update(key, **fields)
    finally:
        store.close()
    return rows
