"""The dynamic-batching server model: the numeric solution against a direct simulation."""
from __future__ import annotations

import math

import pytest

from l4opt.errors import BadInput
from l4opt.fleet import queueing as q

CURVE = q.Curve((1, 2, 4, 8, 16, 32), (1.0, 1.1, 1.3, 1.8, 2.8, 5.0))

# (max_batch, queue_delay_s, instances, qps): light load to near saturation, batch 1 to 32
SETTINGS = [
    (1, 0.0, 1, 500),          # M/D/1 at 50 %
    (8, 0.002, 1, 3000),       # partial batches, 75 %
    (8, 0.002, 1, 4000),       # 94 %
    (32, 0.004, 1, 5500),      # large batches, 90 %
    (32, 0.01, 1, 6000),       # batches always full, 94 %
    (4, 0.0005, 2, 1500),      # two instances sharing the GPU
    (16, 0.001, 2, 2500),
]
P99_TOL, P50_TOL = 0.06, 0.08


@pytest.mark.parametrize("b,d,k,qps", SETTINGS)
def test_numeric_agrees_with_simulation(b, d, k, qps):
    cfg = q.Config(b, d, k)
    num = q.solve(CURVE, qps, cfg, grid=1024)
    # near saturation the p99 of a finite run is noisy (long busy periods): more requests there
    n = 1_000_000 if num.utilization > 0.85 else 300_000
    sim = q.simulate(CURVE, qps, cfg, requests=n, seed=1)
    assert num.stable and 0 < num.utilization < 1
    assert num.mean_batch == pytest.approx(sim.mean_batch, rel=0.02)
    assert num.p99_ms == pytest.approx(sim.p99_ms, rel=P99_TOL), (num, sim)
    assert num.p50_ms == pytest.approx(sim.p50_ms, rel=P50_TOL), (num, sim)


def test_md1_median_is_the_service_time_at_light_load():
    # M/D/1: a request finds the server idle with probability 1 - rho; at rho = 0.3 more than
    # half wait nothing, so the median latency is the service time exactly
    one = q.Curve((1,), (1.0,))
    num = q.solve(one, 300, q.Config(1, 0.0))
    sim = q.simulate(one, 300, q.Config(1, 0.0), requests=100_000, seed=2)
    assert num.utilization == pytest.approx(0.3)
    assert num.p50_ms == pytest.approx(1.0, rel=0.01)
    assert sim.p50_ms == pytest.approx(1.0, rel=1e-6)


def test_unstable_load_is_infinite_p99():
    r = q.solve(CURVE, 10_000, q.Config(4, 0.0005))
    assert not r.stable and math.isinf(r.p99_ms)


def test_simulation_is_seeded_and_bounded():
    cfg = q.Config(8, 0.002)
    a = q.simulate(CURVE, 3000, cfg, requests=20_000, seed=7)
    b = q.simulate(CURVE, 3000, cfg, requests=20_000, seed=7)
    assert a.p99_ms == b.p99_ms
    with pytest.raises(BadInput, match="requests"):
        q.simulate(CURVE, 3000, cfg, requests=q.MAX_SIM_REQUESTS + 1)


def test_max_qps_meets_the_target_and_the_simulation_confirms_it():
    cap = q.max_qps(CURVE, 10.0)
    assert cap.feasible and cap.p99_ms <= 10.0 + 1e-9
    assert cap.max_batch in q.default_batches(CURVE)
    sim = q.simulate(CURVE, cap.max_qps, q.Config(cap.max_batch, cap.queue_delay_ms / 1e3),
                     requests=1_000_000, seed=3)
    assert sim.p99_ms == pytest.approx(cap.p99_ms, rel=P99_TOL)
    # a looser target never allows less
    assert q.max_qps(CURVE, 20.0).max_qps >= cap.max_qps


def test_unmeetable_target_is_a_statement_not_an_error():
    cap = q.max_qps(CURVE, 0.5)
    assert not cap.feasible and cap.max_qps == 0
    assert cap.best_p99_ms == pytest.approx(1.0)
    assert "best achievable p99 is 1 ms" in cap.note


def test_curve_is_monotone_and_bounded():
    c = q.Curve((1, 4, 2), (1.0, 0.9, 1.2))
    assert list(c.ms) == sorted(c.ms)
    with pytest.raises(BadInput, match="beyond"):
        q.solve(c, 10, q.Config(8, 0.001))
    with pytest.raises(BadInput):
        q.Curve((1,), (0.0,))
    off = q.Curve.from_offline(1000.0, 32, fixed_fraction=0.25)
    assert off.seconds([32])[0] == pytest.approx(0.032)
    assert off.seconds([1])[0] == pytest.approx(0.032 * (0.25 + 0.75 / 32))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "x", None])
def test_bad_qps_and_target(bad):
    with pytest.raises(BadInput, match="qps"):
        q.solve(CURVE, bad, q.Config(1, 0.0))
    with pytest.raises(BadInput, match="p99 target"):
        q.max_qps(CURVE, bad)
