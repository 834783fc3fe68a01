"""Sweeps and sensitivity on a real two-node Ray cluster (ray.cluster_utils.Cluster)."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is the l4opt[ray] extra")
from ray import cloudpickle  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import l4opt  # noqa: E402
import l4opt.spec.recipes  # noqa: E402
from l4opt.spec import workloads  # noqa: E402
from l4opt.errors import BadInput  # noqa: E402
from l4opt.files import file_sha256  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get this file's classes

DIGITS = ["baseline", "int8-max", "fp8", "int8-smoothquant"]  # both ModelOpt paths


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _db_keys(run_dir):
    con = sqlite3.connect(run_dir / "results.sqlite")
    try:
        return [k for (k,) in con.execute("SELECT key FROM trials WHERE json_extract(row, "
                                          "'$.kind') = 'trial'")]
    finally:
        con.close()


def test_builtin_sweeps_land_once_with_the_same_metrics(cluster, tmp_path):
    for name, recipes, kw in (("digits-cnn", DIGITS, {}),
                              ("minilm", ["baseline", "int8-max"],
                               {"calib_samples": 32, "eval_samples": 64})):
        local = l4opt.sweep(name, recipes, tmp_path / f"{name}-local", progress=False, **kw)
        remote = l4opt.sweep(name, recipes, tmp_path / f"{name}-ray", progress=False,
                             cluster=cluster.address, **kw)
        assert not ray.is_initialized()  # the sweep disconnected from the cluster it joined
        # the same statuses as the local sweep (minilm's int8-max collapses in both)
        assert [r["status"] for r in remote.rows] == [r["status"] for r in local.rows], \
            remote.failed
        assert not remote.failed
        assert {r["executor"] for r in remote.rows} == {"ray"}
        keys = _db_keys(tmp_path / f"{name}-ray")
        assert sorted(keys) == sorted(r["key"] for r in remote.rows)  # every trial once
        for a, b in zip(local.rows, remote.rows):
            assert a["key"] == b["key"]
            assert (b["qdq_nodes"], b["quantized_layers"]) == (a["qdq_nodes"], a["quantized_layers"])
            # the same drift: a one-CPU Ray worker runs ONNX Runtime on one thread, this process
            # on several, so float sums (calibration amax in the last bit, a few INT8 roundings)
            # move slightly; the graphs are then not byte-identical
            assert b["metric"] == pytest.approx(a["metric"], abs=0.01), b["recipe"]
            assert b["cos_mean"] == pytest.approx(a["cos_mean"], abs=1e-4), b["recipe"]
            assert b["sqnr_db"] == pytest.approx(a["sqnr_db"], abs=0.05), b["recipe"]
            onnx = tmp_path / f"{name}-ray" / b["onnx_path"]
            assert onnx.exists() and file_sha256(onnx) == b["onnx_sha256"]
        if name == "digits-cnn":  # four trials on two one-CPU nodes use both nodes
            assert len({r["worker"]["node_id"] for r in remote.rows}) == 2
        # no L4 in this cluster: nothing was sent to an engine stage, and it says so
        assert any("no node with an L4 GPU" in n for n in remote.notes)
        assert {r["latency_source"] for r in remote.rows} == {"estimated-l4"}
        assert all("engine_worker" not in r for r in remote.rows)
        again = l4opt.sweep(name, recipes, tmp_path / f"{name}-ray", progress=False,
                            cluster=cluster.address, **kw)
        assert all(r["cached"] for r in again.rows)


def _tiny_digits(model, name):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return workloads.Workload(
        name=name, model=model, inputs=[workloads.InputSpec("x", ("batch", 64))],
        calib_data={"x": x[:96]}, eval_data={"x": x[-160:]}, eval_labels=y[-160:],
        metric=workloads.Metric("top1", lambda o, r, lab: float(np.mean(o.argmax(1) == lab))))


def _mlp():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


class KillOnce:
    """A model whose first forward in a Ray worker kills that worker process (SIGKILL)."""

    def __init__(self, marker):
        import torch

        class Net(torch.nn.Module):
            def __init__(self, marker, driver_pid):
                super().__init__()
                self.body, self.marker, self.driver_pid = _mlp(), str(marker), driver_pid

            def forward(self, x):
                if os.getpid() != self.driver_pid and not os.path.exists(self.marker):
                    with open(self.marker, "w") as f:
                        f.write(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
                return self.body(x)

        self.net = Net(marker, os.getpid())


def test_worker_killed_mid_trial_is_retried_and_the_sweep_completes(cluster, tmp_path):
    marker = tmp_path / "killed.pid"
    w = _tiny_digits(KillOnce(marker).net, "kill-once")
    res = l4opt.sweep(w, ["baseline", "int8-smoothquant"], tmp_path / "run", progress=False,
                      cluster=cluster.address)
    assert marker.exists(), "the calibration forward never ran in a worker"
    killed = int(marker.read_text())
    assert [r["status"] for r in res.rows] == ["ok", "ok"], res.failed
    assert res.rows[1]["worker"]["pid"] != killed  # finished by a fresh worker
    assert sorted(_db_keys(tmp_path / "run")) == sorted(r["key"] for r in res.rows)


def _raising_when_quantized():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _mlp()

        def forward(self, x):
            if any(hasattr(m, "input_quantizer") for m in self.modules()):
                raise RuntimeError("boom: this model refuses quantized layers")
            return self.body(x)

    return Net()


def test_a_trial_that_raises_is_recorded_failed_and_the_others_finish(cluster, tmp_path):
    w = _tiny_digits(_raising_when_quantized(), "raises")
    res = l4opt.sweep(w, ["baseline", "fp8", "fp8-torch"], tmp_path, progress=False,
                      cluster=cluster.address)
    by = {r["recipe"]: r for r in res.rows}
    assert by["baseline"]["status"] == by["fp8"]["status"] == "ok"  # ONNX PTQ: no torch forward
    assert by["fp8-torch"]["status"] == "failed"
    assert "boom: this model refuses quantized layers" in by["fp8-torch"]["error"]
    assert len(_db_keys(tmp_path)) == 3


DRIVER = textwrap.dedent("""
    import sys, l4opt
    l4opt.sweep("digits-cnn", sys.argv[1].split(","), sys.argv[2], progress=False,
                cluster=sys.argv[3])
""")


def _trial_rows(run_dir):
    out = []
    for f in (run_dir / "artifacts").glob("*/row.json"):
        try:
            row = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if row.get("kind") == "trial":
            out.append(row)
    return out


def test_driver_killed_mid_sweep_resumes_without_loss_or_duplicates(cluster, tmp_path):
    recipes = l4opt.spec.recipes.names()  # seven trials
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", DRIVER, ",".join(recipes), str(run),
                          cluster.address], stdout=subprocess.DEVNULL,
                         stderr=open(tmp_path / "driver.log", "wb"))
    deadline = time.time() + 600
    while not _trial_rows(run) and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = {r["key"]: r["created_at"] for r in _trial_rows(run)}
    assert 1 <= len(before) < len(recipes), "the driver was not killed mid-sweep"
    res = l4opt.sweep("digits-cnn", recipes, run, progress=False, cluster=cluster.address)
    assert [r["status"] for r in res.rows] == ["ok"] * len(recipes), res.failed
    keys = _db_keys(run)
    assert len(keys) == len(set(keys)) == len(recipes)
    for r in res.rows:  # what finished before the kill was kept, not recomputed
        if r["key"] in before:
            assert r["cached"] and r["created_at"] == before[r["key"]]
    assert sum(not r["cached"] for r in res.rows) == len(recipes) - len(before)


def test_sensitivity_on_ray_matches_the_local_one(cluster):
    from l4opt.precision.api import sensitivity

    local = sensitivity("digits-cnn", "int8-max", progress=False, eval_samples=128)
    remote = sensitivity("digits-cnn", "int8-max", progress=False, eval_samples=128,
                         cluster=cluster.address)
    assert [r["layer"] for r in remote.layers] == [r["layer"] for r in local.layers]
    for a, b in zip(local.layers, remote.layers):
        assert b["only_cos_mean"] == pytest.approx(a["only_cos_mean"], abs=1e-6)
        assert b["all_but_drop"] == pytest.approx(a["all_but_drop"], abs=1e-9)


def test_l4_node_gets_the_engine_stage_and_a_failure_keeps_the_estimate(cluster, tmp_path):
    node = cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:L4": 1})
    cluster.wait_for_nodes()
    try:
        res = l4opt.sweep("digits-cnn", ["baseline"], tmp_path, progress=False,
                          cluster=cluster.address)
    finally:
        cluster.remove_node(node)
    row = res.rows[0]
    assert row["status"] == "ok"
    assert not any("no node with an L4 GPU" in n for n in res.notes)
    # the engine task was placed on the L4 node; there is no TensorRT here, so it failed
    # there, said why, and the latency is still labelled an estimate
    assert row["engine_worker"]["node_id"] == node.node_id
    assert any("engine stage on L4 node" in n and "tensorrt" in n.lower() for n in row["notes"])
    assert row["latency_source"] == "estimated-l4"


def test_bad_cluster_addresses_are_refused_clearly(tmp_path):
    for bad in ("dask://x", "localhost", "host:port"):
        with pytest.raises(BadInput, match="ray://HOST:PORT"):
            l4opt.sweep("digits-cnn", ["baseline"], tmp_path, progress=False, cluster=bad)


def test_cli_search_runs_on_ray(cluster, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "l4opt.cli", "search", "digits-cnn", "--recipe", "int8-max",
         "--max-drop", "0.02", "--strategy", "greedy", "--out", str(tmp_path), "--json",
         "--ray", cluster.address], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout)
    final = d["final_sweep_row"]
    assert final["status"] == "ok" and final["executor"] == "ray" and final["worker"]["node_id"]
    assert d["met"] and d["metric_drop"] <= 0.02
