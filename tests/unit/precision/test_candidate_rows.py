"""A search candidate is a trial row by the same rules as a sweep row: the one collapse rule
(l4opt.spec.row.collapse_reasons) gives it the sweep's status, a collapsed candidate is never
met, and it carries the sample count. The note on one format through ModelOpt's two routes is
built from the two rows' facts only."""
from __future__ import annotations

import numpy as np
import pytest

from l4opt.precision.budget import Budget
from l4opt.precision.candidates import candidate_row, failed_candidate
from l4opt.spec import row as rowspec
from l4opt.spec.recipes import Recipe

INT8 = Recipe("int8", "onnx-ptq", "int8", "entropy")


def _candidate(metrics, budget=Budget(min_cosine=0.99)):
    return candidate_row(key="k", workload="w", name="c", strategy="bisect", recipe=INT8,
                         recipe_config={}, drift_backend="x", metrics=metrics, budget=budget,
                         counts={"int8": 2}, gemm_layers=2, fallback=[], metric_name="agree")


def test_a_collapsed_candidate_has_the_sweep_rows_status_and_is_never_met():
    m = {"cos_mean": 0.995, "metric": 0.6, "metric_ref": 1.0, "metric_drop": 0.4,
         "metric_drop_rel": 0.4}
    row = _candidate(m)  # the cosine budget alone says met; the task metric collapsed
    assert row["status"] == "collapsed" and row["collapsed"] and row["met"] is False
    assert row["collapse_reasons"] == rowspec.collapse_reasons(row) == [
        "agree dropped 40% of its reference (> 10%)"]
    ok = _candidate(dict(m, metric_drop_rel=0.05))
    assert ok["status"] == "ok" and ok["met"] is True and ok["collapse_reasons"] == []
    low = _candidate(dict(m, cos_mean=0.5, metric_drop_rel=0.0), Budget(max_drop=1.0))
    assert low["status"] == "collapsed" and low["collapse_reasons"] == ["cos_mean 0.500 < 0.9"]
    assert low["met"] is False


def test_a_failed_candidate_is_failed_not_collapsed():
    row = failed_candidate(_candidate({"cos_mean": float("nan"), "metric_drop": float("inf")}),
                           RuntimeError("ORT died"))
    assert row["status"] == "failed" and row["collapsed"] is False and row["met"] is False
    assert rowspec.status(row) == "failed"


def test_study_measures_carry_the_sample_count_as_trial_rows_do():
    from l4opt.precision.common import measure
    from l4opt.spec.workloads import InputSpec, Metric, Workload

    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    w = Workload(name="m", model=None, inputs=[InputSpec("x", ("batch", 4))],
                 calib_data={"x": x}, eval_data={"x": x},
                 metric=Metric("agree", lambda o, r, l: float(np.mean(
                     o.argmax(1) == r.argmax(1)))))
    m = measure(w, {"y": x + 0.01}, {"y": x}, None, 1.0)
    assert m["metric_samples"] == 20 and m["metric_one_sample"] == pytest.approx(1 / 20)


def _route_row(route, recipe, algorithm, cos, facts, **kw):
    r = {"key": recipe, "kind": "trial", "workload": "w", "workload_fingerprint": "f",
         "graph_sha256": "g", "shapes": {"batch": 8}, "recipe": recipe, "route": route,
         "format": "int8", "algorithm": algorithm, "status": "ok", "cos_mean": cos,
         "metric": cos, "metric_name": "agree", "gemm_layers": 4,
         "drift_backend": "onnxruntime-cpu, TensorRT numerics", "qdq_facts": facts}
    r.update(kw)
    return r


ONNX_FACTS = {"activation_quantizers": 6, "weight_quantizers": 2, "weight_scales": "per-channel",
              "activation_readers": {"Add": 2, "MatMul": 4}, "quantized_gemms": ["a", "b", "q"]}
TORCH_FACTS = {"activation_quantizers": 3, "weight_quantizers": 2,
               "weight_scales": "per-channel",
               "activation_readers": {"LayerNormalization": 1, "MatMul": 2},
               "quantized_gemms": ["a", "b"]}


def test_the_route_gap_note_is_built_from_both_rows_facts():
    o = _route_row("onnx-ptq", "int8", "entropy", 0.8553, ONNX_FACTS)
    t = _route_row("torch-ptq", "int8-max", "max", 0.7263, TORCH_FACTS)
    note = rowspec.route_gap_note(t, o)
    assert note == rowspec.route_gap_note(o, t)  # the same note whichever row asks
    assert note.startswith("INT8 by ModelOpt's two routes in this run: int8 (onnx-ptq, entropy "
                           "calibration): cosine 0.8553")
    assert "int8-max (torch-ptq, max calibration): cosine 0.7263" in note
    assert "Both measured with the same numerics" in note
    assert "calibration entropy vs max" in note
    assert "GEMM/conv layers quantized 3 vs 2 of 4 (only int8 quantizes 1 (q))" in note
    assert "activation quantizers 6 vs 3" in note
    assert "only int8 quantizes the inputs of Add (2)" in note
    assert "only int8-max quantizes the inputs of LayerNormalization (1)" in note
    # other numerics: the note says part of the gap is the measurement
    t2 = dict(t, drift_backend="torch-fakequant-cpu")
    assert "part of the gap is the measurement" in rowspec.route_gap_note(o, t2)


@pytest.mark.parametrize("change", [
    {"shapes": {"batch": 16}}, {"graph_sha256": "other"}, {"format": "fp8"},
    {"route": "onnx-ptq"}, {"status": "failed"}, {"qdq_facts": None},
    {"recipe_config": {"layer_formats": {"^q$": "fp16"}}},
])
def test_no_route_gap_note_for_rows_that_are_not_that_pair(change):
    o = _route_row("onnx-ptq", "int8", "entropy", 0.85, ONNX_FACTS)
    t = dict(_route_row("torch-ptq", "int8-max", "max", 0.72, TORCH_FACTS), **change)
    assert rowspec.route_gap_note(o, t) is None
