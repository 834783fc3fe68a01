"""cluster: fan a sweep's trials (and a search's per-layer evaluations) out over Ray.

CPU stages (calibrate, export, drift) run as Ray tasks wherever there are CPUs. The engine
stage asks for one GPU of accelerator type L4 and is dispatched only when the cluster has
one; otherwise latencies stay estimates, labelled so. Workers send back rows and artifact
bytes; the driver checks every file's hash and is the only writer of results.sqlite.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from l4opt import env
from l4opt.errors import BadInput, StageFailed
from l4opt.files import safe_write
from l4opt.onnx.graph import onnx_files, write_onnx_files
from l4opt.pipeline import trial
from l4opt.pipeline.context import KEY_VERSIONS
from l4opt.spec import row as rowspec

MAX_RETRIES = 2      # a worker process that dies mid-task is retried this many times
L4 = "L4"            # Ray's accelerator type of the NVIDIA L4 (ray.util.accelerators.NVIDIA_L4)
L4_RESOURCE = f"accelerator_type:{L4}"


def _ray():
    return env.require("ray", "running trials on a Ray cluster")


@dataclass
class Connection:
    """The Ray cluster a sweep runs on, as seen when it connected."""

    address: str
    started_here: bool
    nodes: int
    cpus: float
    l4_gpus: float
    connect_s: float

    def describe(self) -> str:
        l4 = f", {self.l4_gpus:g} L4 GPUs" if self.l4_gpus else ", no L4 GPU"
        return f"{self.nodes} node{'s' * (self.nodes != 1)}, {self.cpus:g} CPUs{l4}"


def parse_address(cluster) -> str | None:
    """None for a local Ray instance; else the address to join ("ray://HOST:PORT",
    "HOST:PORT" or "auto")."""
    if cluster is True or cluster in ("ray", "local"):
        return None
    if isinstance(cluster, str):
        c = cluster.strip()
        if c.startswith("ray://") or c == "auto":
            return c
        host, sep, port = c.rpartition(":")
        if sep and host and port.isdigit():
            return c
    raise BadInput(f"cluster={cluster!r}: use 'ray' (a local Ray instance on this machine), "
                   f"'ray://HOST:PORT' (Ray Client), 'HOST:PORT' or 'auto' (join a running "
                   f"cluster)")


def connect(cluster) -> Connection:
    """Join the cluster (or start a local Ray sized to this machine); reuse a Ray the caller
    already initialised."""
    address = parse_address(cluster)
    ray = _ray()
    t = time.perf_counter()
    started = False
    if not ray.is_initialized():
        if address is None:
            _start_local(ray)
        else:
            try:
                ray.init(address=address, logging_level="warning", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                raise BadInput(f"could not reach a Ray cluster at {address!r} ({exc}); start "
                               f"one with `ray start --head` on the head node, or run with "
                               f"--ray and no address for a local Ray instance") from exc
        started = True
    res = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    conn = Connection(address or "local", started, len(alive), res.get("CPU", 0.0),
                      _l4_gpus(alive), round(time.perf_counter() - t, 3))
    if conn.cpus < 1:
        disconnect(conn)
        raise BadInput(f"the Ray cluster at {conn.address} has no CPUs to run trials on")
    return conn


def _start_local(ray) -> None:
    """ray.init of a Ray instance on this machine. Its start-up failure is a bare Exception
    ("timed out during startup"; on a busy machine the raylet gives up on its dashboard agent
    after 15 s, ray-project/ray#65983): a StageFailed with the raylet's own reason."""
    try:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning",
                 log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises Exception itself here
        with contextlib.suppress(Exception):
            ray.shutdown()
        why = _raylet_failure() if "timed out" in str(exc).lower() else ""
        raise StageFailed("ray start", f"the local Ray instance did not start "
                          f"({type(exc).__name__}: {exc}"
                          f"{'; its raylet: ' + why if why else ''}); on a busy machine start "
                          f"Ray first with `ray start --head` and pass --ray auto (or "
                          f"cluster='auto'), or retry") from exc


def _raylet_failure() -> str:
    """The raylet's fatal check of the latest local Ray session, if it logged one."""
    tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    log = Path(tmp) / "ray" / "session_latest" / "logs" / "raylet.out"
    try:
        lines = log.read_text(errors="replace").splitlines()[-400:]
    except OSError:
        return ""
    fatal = [ln.split("Check failed:", 1)[1] for ln in lines if "Check failed:" in ln]
    # "statussetor3576.has_value() Timed out waiting for file ...": the condition is noise
    return re.sub(r"^\S+\(\)\s*", "", fatal[-1].strip())[:300] if fatal else ""


def _l4_gpus(nodes) -> float:
    """GPUs on nodes whose accelerator type is L4 (Ray detects it from the driver)."""
    return sum(n["Resources"].get("GPU", 0.0) for n in nodes
               if n["Resources"].get(L4_RESOURCE, 0.0) > 0)


def disconnect(conn: Connection) -> None:
    if conn.started_here:
        _ray().shutdown()


def warm_up(n: int | None = None) -> float:
    """Start n workers and import torch, ModelOpt and ONNX Runtime in each (Ray's fixed
    start-up cost, paid once per cluster); returns the seconds it took."""
    ray = _ray()
    n = n or int(ray.cluster_resources().get("CPU", 1))
    t = time.perf_counter()
    task = ray.remote(_warm_task).options(num_cpus=1)
    ray.get([task.remote(0.5) for _ in range(n)])
    return time.perf_counter() - t


def _warm_task(hold_s: float) -> str:
    import importlib

    for m in ("torch", "onnxruntime", "modelopt.torch.quantization", "modelopt.onnx.quantization",
              "l4opt.pipeline.trial", "l4opt.pipeline.quantize", "l4opt.pipeline.export", "l4opt.pipeline.runners", "l4opt.latency.estimate"):
        importlib.import_module(m)

    time.sleep(hold_s)  # keep this worker busy so the next task starts another one
    return socket.gethostname()


def _where() -> dict:
    ray = _ray()
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ tasks (run on workers)

def _trial_task(workload, recipe, key, driver_versions, reference, base_onnx, latency,
                graph_sha=None, shapes=None):
    mine = {k: v for k, v in env.versions().items() if k in KEY_VERSIONS}
    if mine != driver_versions:
        differ = {k: f"{mine.get(k)} here vs {driver_versions.get(k)} on the driver"
                  for k in set(mine) | set(driver_versions) if mine.get(k) != driver_versions.get(k)}
        return {"error": f"package versions on node {socket.gethostname()} differ from the "
                         f"driver's ({differ}); install the same versions on every node"}, {}
    with tempfile.TemporaryDirectory(prefix="l4opt-trial-") as scratch:
        row, files = trial.run_isolated(workload, recipe, key, scratch, latency=latency,
                                        reference=reference, base_onnx=base_onnx,
                                        graph_sha=graph_sha, shapes=shapes, measure=False)
    row["worker"] = _where()
    return row, files


def _engine_task(files: dict, kwargs: dict):
    """Build and time one trial's engine on an L4 node: `files` from onnx_files (the
    graph and its external weights), `kwargs` from spec.row.engine_kwargs (the row's shapes and
    latency batch)."""
    from l4opt.latency import trt
    from l4opt.spec.workloads import cache_dir

    try:
        with tempfile.TemporaryDirectory(prefix="l4opt-engine-") as d:
            path = write_onnx_files(files, d)
            out = trt.measure_onnx(path, cache_dir=cache_dir() / "engines", **kwargs)
    except Exception as exc:  # reported with the node it happened on; the row keeps its estimate
        return {"error": f"{type(exc).__name__}: {exc}", "worker": _where()}
    out["worker"] = _where()
    return out


def _layers_task(cal, layers):
    rows = []
    for layer in layers:
        rows.append((layer, cal.evaluate([layer]),
                     cal.evaluate([x for x in cal.layers if x != layer])))
    return rows


# ------------------------------------------------------------------ driver

class RayExecutor:
    """Trials as Ray tasks (run.executors.Executor); the driver verifies and stores every row."""

    name = "ray"

    def __init__(self, cluster):
        parse_address(cluster)
        self.cluster = cluster

    def run(self, ctx, todo, *, latency: bool, notes: list, total: int, initial: int):
        return run_trials(ctx, todo, self.cluster, latency=latency, notes=notes, total=total,
                          initial=initial)


def _error_text(exc) -> str:
    """The cause of a task failure in one line (Ray wraps it in its own traceback)."""
    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, type(exc)):
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def run_trials(ctx, todo, cluster, *, latency: bool, notes: list, total: int, initial: int):
    """Run the (recipe, key) trials on Ray; yield (key, row) as the driver stores each one."""
    from l4opt.env import progress as tqdm

    ray = _ray()
    conn = connect(cluster)
    try:
        w = ctx.workload
        measure = latency and conn.l4_gpus >= 1
        if latency and not measure:
            notes.append(f"the Ray cluster ({conn.describe()}) has no node with an L4 GPU; the "
                         f"engine stage was not dispatched and L4 latencies are ESTIMATES")
        reference, _ = ctx.reference()
        need_base = any(r.route in ("none", "onnx-ptq") for r, _ in todo)
        # an FP32 export that raised is every trial's error: the workers export again and
        # record it in failed rows
        base = ctx.base_onnx().read_bytes() if need_base and ctx.export_error is None else None
        shared = [ray.put(w), ray.put(reference), ray.put(base)]
        task, engine = ray.remote(_trial_task), ray.remote(_engine_task)
        retry = {"max_retries": MAX_RETRIES, "retry_exceptions": False}
        pending = {task.options(name=f"l4opt {w.name} {recipe.name}", num_cpus=1, **retry).remote(
            shared[0], recipe, key, ctx.versions, shared[1], shared[2], latency, ctx.graph_sha,
            ctx.shapes.to_dict()): (recipe, key) for recipe, key in todo}
        engines: dict = {}
        bar = tqdm(total=total, initial=initial, unit="trial", disable=not ctx.progress,
                   desc=f"sweep {w.name} on Ray ({conn.describe()})")
        while pending or engines:
            ready, _ = ray.wait(list(pending) + list(engines), num_returns=1)
            ref = ready[0]
            if ref in pending:
                recipe, key = pending.pop(ref)
                row = _collect(ray, ref, ctx, recipe, key)
                if measure and row["status"] != "failed" and row.get("onnx_path"):
                    files = onnx_files(ctx.store.run_dir / row["onnx_path"])
                    engines[engine.options(name=f"l4opt engine {recipe.name}", num_cpus=1,
                                           num_gpus=1, accelerator_type=L4, **retry).remote(
                        files, rowspec.engine_kwargs(row))] = row
                    continue
            else:
                row = engines.pop(ref)
                _apply_engine(ray, ref, row)
            ctx.store.put(row)
            bar.update(1)
            bar.set_postfix_str(f"{row['recipe']} on {row.get('worker', {}).get('host', '?')}")
            yield row["key"], row
        bar.close()
    finally:
        disconnect(conn)


def _collect(ray, ref, ctx, recipe, key) -> dict:
    """The worker's row with its artifacts written under the run dir after a hash check; a
    task that raised or whose worker kept dying becomes a failed row."""
    try:
        row, files = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        return _failed(ctx, recipe, key, _error_text(exc))
    except ray.exceptions.RayError as exc:
        return _failed(ctx, recipe, key,
                       f"the Ray worker running this trial died {MAX_RETRIES + 1} times "
                       f"({type(exc).__name__}); last: {str(exc).strip().splitlines()[0]}")
    if "key" not in row:
        return _failed(ctx, recipe, key, row["error"])
    for name, art in row.get("artifacts", {}).items():
        data = files.get(art["path"])
        if data is None or _sha256(data) != art["sha256"]:
            return _failed(ctx, recipe, key,
                           f"artifact {name} ({art['path']}) arrived "
                           f"{'missing' if data is None else 'corrupted (hash mismatch)'} "
                           f"from {row.get('worker', {}).get('host')}")
    root = ctx.store.run_dir
    for rel, data in files.items():
        try:  # refuses a name outside the run directory or through a symlink in it
            safe_write(root / rel, data, root, what=f"{rel} from a Ray worker")
        except BadInput as exc:
            return _failed(ctx, recipe, key, f"worker sent a file the run cannot take: {exc}")
    row["executor"] = "ray"
    return row


def _failed(ctx, recipe, key, error: str) -> dict:
    return trial.failed_row(ctx, recipe, key, error, executor="ray")


def _apply_engine(ray, ref, row: dict) -> None:
    """Measured L4 latency replaces the estimate; a failed engine stage keeps the estimate
    and says why."""
    try:
        m = ray.get(ref)
    except ray.exceptions.RayError as exc:
        m = {"error": _error_text(exc), "worker": {}}
    if "error" in m:
        where = m["worker"].get("host", "?"), m["worker"].get("node_id", "?")
        row["notes"].append(f"engine stage on L4 node {where[0]} ({where[1]}) failed "
                            f"({m['error']}); the latency stays an ESTIMATE")
        row["engine_worker"] = m["worker"]
        return
    row["engine_worker"] = m.pop("worker")
    rowspec.apply_measured(row, m)


def evaluate_layers(cal, layers, cluster, progress: bool = True) -> dict:
    """Per layer, the drift with only it quantized and with all but it, evaluated in chunks
    on the cluster's workers from one calibrated model."""
    from l4opt.env import progress as tqdm

    ray = _ray()
    conn = connect(cluster)
    try:
        n = max(1, min(len(layers), int(conn.cpus) * 2))
        chunks = [layers[i::n] for i in range(n)]
        shared = ray.put(cal)
        task = ray.remote(_layers_task).options(num_cpus=1, max_retries=MAX_RETRIES,
                                                retry_exceptions=False)
        pending = [task.remote(shared, c) for c in chunks if c]
        out = {}
        with tqdm(total=len(layers), desc=f"sensitivity on Ray ({conn.describe()})",
                  unit="layer", disable=not progress) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    got = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    raise StageFailed("sensitivity", f"per-layer evaluation on the Ray cluster: "
                                      f"{_error_text(exc)}") from None
                for layer, only, but in got:
                    out[layer] = (only, but)
                bar.update(len(got))
        return out
    finally:
        disconnect(conn)
