"""l4opt.spec.row: the row rules (status, finished, valid latency, Pareto front) and the latency
fields an estimate or a measurement writes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from l4opt.spec import row as R
from l4opt.spec.shapes import Shapes


@pytest.mark.parametrize("r, want", [
    ({"status": "ok"}, "ok"),
    ({}, "ok"),
    ({"status": None, "collapsed": False}, "ok"),
    ({"status": "ok", "collapsed": True}, "collapsed"),      # a row stored before the status
    ({"status": "ok", "collapsed": 1}, "collapsed"),
    ({"status": "ok", "collapsed": "true"}, "collapsed"),   # as SQLite/JSON text
    ({"status": "ok", "collapsed": "false"}, "ok"),
    ({"status": "ok", "collapsed": 0}, "ok"),
    ({"status": "ok", "collapsed": float("nan")}, "ok"),
    ({"status": "failed", "collapsed": True}, "failed"),
    ({"status": "no-op"}, "no-op"),
    ({"status": "collapsed"}, "collapsed"),
])
def test_status(r, want):
    assert R.status(r) == want


def test_finished_is_every_status_but_failed():
    assert [R.finished({"status": s}) for s in R.STATUSES] == [True, True, True, False]
    assert R.finished({"status": "ok", "collapsed": True})


@pytest.mark.parametrize("v, ok", [
    (1.5, True), (np.float32(0.25), True), (3, True),
    (0, False), (0.0, False), (-1.0, False), (float("nan"), False), (float("inf"), False),
    (None, False), (True, False), (False, False), ("fast", False), ([1.0], False),
])
def test_valid_latency(v, ok):
    assert R.valid_latency(v) is ok


def test_has_latency_needs_a_valid_value_and_a_known_source():
    assert R.has_latency({"latency_ms": 2.0, "latency_source": "estimated (cost model)"})
    assert R.has_latency({"latency_ms": 2.0, "latency_source": "measured (trtexec)"})
    assert not R.has_latency({"latency_ms": 2.0, "latency_source": None})
    assert not R.has_latency({"latency_ms": 0.0, "latency_source": "measured"})


def estimate(**kw):
    base = dict(total_ms=2.0, low_ms=1.5, high_ms=3.0, source="estimated (cost model)",
                notes=["TensorRT rules evaluated: 10.8", "fused attention", "FP8 and INT8 run the "
                       "same kernels here"], trt_version="10.8", band_source="LOO residuals")
    base.update(kw)
    return SimpleNamespace(**base)


SHAPES = Shapes(8, {"batch": 8}, {"x": [8, 30]})


def test_latency_fields_from_an_estimate():
    f = R.latency_fields(estimate(), SHAPES)
    assert f["latency_ms"] == 2.0 and (f["latency_low_ms"], f["latency_high_ms"]) == (1.5, 3.0)
    assert f["latency_batch"] == f["throughput_batch"] == 8
    assert f["throughput_samples_s"] == pytest.approx(8 * 1000 / 2.0)
    assert f["shapes"] == SHAPES.to_dict() and f["latency_gpu"] == "NVIDIA L4"
    # the version line is dropped (latency_trt_version holds it), the FP8/INT8 verdict first
    assert f["latency_notes"] == ["FP8 and INT8 run the same kernels here", "fused attention"]
    assert f["latency_trt_version"] == "10.8" and f["latency_band_source"] == "LOO residuals"
    assert set(R.EST_FIELDS) <= set(f)


def test_latency_fields_without_a_band_or_version():
    f = R.latency_fields(estimate(low_ms=None, high_ms=0, trt_version="", band_source=None,
                                  notes=None), SHAPES)
    assert f["latency_low_ms"] == f["latency_high_ms"] == 2.0
    assert f["latency_trt_version"] is None and f["latency_band_source"] is None
    assert f["latency_notes"] == []


def test_latency_fields_keep_at_most_the_note_limit():
    notes = [f"rule {i}" for i in range(20)]
    assert len(R.latency_fields(estimate(notes=notes), SHAPES)["latency_notes"]) == R.LATENCY_NOTES


@pytest.mark.parametrize("ms", [0.0, float("nan"), -2.0])
def test_latency_fields_refuse_a_latency_that_is_not_a_result(ms):
    with pytest.raises(ValueError, match="not a latency"):
        R.latency_fields(estimate(total_ms=ms), SHAPES)


def test_measured_update_keeps_the_estimate_as_est_fields_and_a_second_measurement_keeps_it():
    row = {"recipe": "int8", **R.latency_fields(estimate(), SHAPES)}
    measured = {"latency_ms": 1.25, "latency_source": "measured (trtexec)",
                "engine": {"trt_version": "10.13"}}
    up = R.measured_update(row, measured)
    assert up["est_latency_ms"] == 2.0 and up["est_latency_low_ms"] == 1.5
    assert up["est_latency_high_ms"] == 3.0 and up["est_latency_source"] == "estimated (cost model)"
    assert up["est_latency_trt_version"] == "10.8" and up["est_latency_batch"] == 8
    assert up["latency_ms"] == up["latency_low_ms"] == up["latency_high_ms"] == 1.25
    assert up["latency_notes"] == [] and up["latency_band_source"] == "measured: no band"
    assert up["latency_trt_version"] == "10.13"
    R.apply_measured(row, measured)
    R.apply_measured(row, dict(measured, latency_ms=1.0))
    assert row["latency_ms"] == 1.0 and row["est_latency_ms"] == 2.0   # not the first measurement
    assert row["est_latency_source"] == "estimated (cost model)"


def test_measured_update_on_a_row_without_an_estimate_sets_no_est_fields():
    up = R.measured_update({"latency_ms": None}, {"latency_ms": 3.0, "latency_source": "measured"})
    assert not [k for k in up if k.startswith("est_")]
    assert up["latency_trt_version"] is None


def test_pareto_mask_on_hand_made_points():
    drop = [0.10, 0.20, 0.05, float("nan"), 0.10, 0.30, 0.01]
    lat = [2.0, 1.0, 3.0, 0.50, 2.0, 2.5, None]
    # 0 and 4 tie (neither dominates the other); 5 is dominated by 0; NaN/None never on the front
    assert R.pareto_mask(drop, lat).tolist() == [True, True, True, False, True, False, False]


def test_pareto_mask_edge_cases():
    assert R.pareto_mask([], []).tolist() == []
    assert R.pareto_mask([0.0], [1.0]).tolist() == [True]
    assert R.pareto_mask([0.1, 0.1], [1.0, 2.0]).tolist() == [True, False]  # same drop, slower
    assert R.pareto_mask([math.nan, math.nan], [1.0, 2.0]).tolist() == [False, False]


def test_the_tie_rule_pays_no_accuracy_for_less_than_five_percent():
    from l4opt.spec.row import SAME_COST, least_drift_among_tied

    assert SAME_COST == 0.05
    drifts = [(0.0,), (0.007,), (0.004,)]
    assert least_drift_among_tied([1.00, 0.98, 0.99], drifts) == 0   # all within 5%: least drift
    assert least_drift_among_tied([1.00, 0.90, 0.99], drifts) == 1   # 10% faster: the fastest
    assert least_drift_among_tied([1.00, 0.90, 0.93], drifts) == 2   # 0.93 within 5% of 0.90
    assert least_drift_among_tied([0.5, 0.5], [(0.0,), (0.0,)]) == 0  # equal: the first
