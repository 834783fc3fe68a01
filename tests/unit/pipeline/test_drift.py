"""l4opt.pipeline.drift: tensor metrics against hand-computed values, small outputs, several
outputs, non-finite outputs, and the task metric's change."""
from __future__ import annotations

import math

import numpy as np
import pytest

from l4opt.pipeline.drift import SMALL_OUTPUT, task_delta, tensor_metrics


def test_per_sample_cosine_sqnr_and_max_error_by_hand():
    ref = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], np.float32)
    out = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    m = tensor_metrics(out, ref)
    # sample 0 identical (cos 1), sample 1: (0*1 + 1*1) / (1 * sqrt 2)
    assert m["cos_min"] == pytest.approx(1 / math.sqrt(2))
    assert m["cos_mean"] == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    # signal 1 + 2 = 3, noise 1
    assert m["sqnr_db"] == pytest.approx(10 * math.log10(3))
    assert m["max_abs_err"] == 1.0 and m["cos_over"] == "sample"


def test_scaled_output_keeps_cosine_but_not_sqnr():
    ref = np.random.default_rng(0).normal(size=(5, 3, 4))   # per-sample 12 values
    m = tensor_metrics(ref * 1.1, ref)
    assert m["cos_min"] == pytest.approx(1.0) and m["cos_over"] == "sample"
    assert m["sqnr_db"] == pytest.approx(20.0)            # noise = 0.01 * signal
    assert m["max_abs_err"] == pytest.approx(0.1 * np.abs(ref).max())


def test_identical_and_all_zero_outputs():
    ref = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert tensor_metrics(ref, ref)["sqnr_db"] == float("inf")
    z = tensor_metrics(np.zeros((2, 4)), np.zeros((2, 4)))
    assert z["cos_mean"] == z["cos_min"] == 1.0 and z["sqnr_db"] == float("inf")
    # a zero output against a non-zero reference: cosine 0, SQNR 0 dB
    assert tensor_metrics(np.zeros((2, 4)), np.ones((2, 4)))["cos_min"] == 0.0
    assert tensor_metrics(np.zeros((2, 4)), np.ones((2, 4)))["sqnr_db"] == pytest.approx(0.0)


def test_outputs_smaller_than_the_threshold_get_one_cosine_over_the_batch():
    assert SMALL_OUTPUT == 4
    ref = np.array([[1.0], [2.0], [3.0], [4.0]])
    out = np.array([[1.0], [2.0], [3.0], [-4.0]])
    m = tensor_metrics(out, ref)
    # per sample the cosines would be [1, 1, 1, -1] (mean 0.5); over the batch column:
    assert m["cos_over"] == "batch"
    assert m["cos_mean"] == m["cos_min"] == pytest.approx((1 + 4 + 9 - 16) / 30)
    assert m["max_abs_err"] == 8.0


def test_a_one_value_output_with_a_large_error_is_not_a_perfect_cosine():
    ref = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    out = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]])    # same signs, very wrong
    m = tensor_metrics(out, ref)
    assert m["cos_mean"] == pytest.approx(35 / 55) and m["cos_mean"] < 0.9


def test_fewer_than_threshold_values_in_all_give_no_cosine():
    m = tensor_metrics(np.array([[1.0], [2.0]]), np.array([[1.0], [3.0]]))
    assert m["cos_over"] == "none" and math.isnan(m["cos_mean"]) and math.isnan(m["cos_min"])
    assert m["sqnr_db"] == pytest.approx(10 * math.log10(10 / 1)) and m["max_abs_err"] == 1.0


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_outputs(bad):
    ref = np.ones((3, 4))
    out = ref.copy()
    out[1, 2] = bad
    m = tensor_metrics(out, ref)
    assert math.isnan(m["cos_mean"]) and math.isnan(m["cos_min"]) and math.isnan(m["sqnr_db"])
    assert m["max_abs_err"] == float("inf")


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differs from reference"):
        tensor_metrics(np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="differ from the reference"):
        tensor_metrics({"a": np.zeros((2, 4))}, {"b": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="differ from the reference"):
        tensor_metrics(np.zeros((2, 4)), {"a": np.zeros((2, 4))})


def test_several_outputs_aggregate_to_the_worst_output():
    rng = np.random.default_rng(1)
    ref = {"logits": rng.normal(size=(6, 8)), "score": rng.normal(size=(6, 1))}
    out = {"logits": ref["logits"] + 0.01, "score": -ref["score"]}   # the score is the bad one
    m = tensor_metrics(out, ref)
    per = m["tensor_metrics_by_output"]
    assert set(per) == {"logits", "score"}
    assert per["score"]["cos_over"] == "batch" and per["logits"]["cos_over"] == "sample"
    assert m["cos_mean"] == per["score"]["cos_mean"] == pytest.approx(-1.0)
    assert m["cos_min"] == min(per["logits"]["cos_min"], per["score"]["cos_min"])
    assert m["max_abs_err"] == max(p["max_abs_err"] for p in per.values())
    noise = 6 * 8 * 0.01 ** 2 + (4 * ref["score"] ** 2).sum()
    signal = (ref["logits"] ** 2).sum() + (ref["score"] ** 2).sum()
    assert m["sqnr_db"] == pytest.approx(10 * math.log10(signal / noise))
    assert m["cos_over"] == "batch/sample"


def test_an_output_too_small_for_a_cosine_has_no_say_in_the_aggregate():
    ref = {"emb": np.ones((3, 8)), "flag": np.array([[1.0], [2.0], [3.0]])}
    out = {"emb": np.ones((3, 8)), "flag": np.array([[-1.0], [-2.0], [-3.0]])}
    m = tensor_metrics(out, ref)
    assert m["tensor_metrics_by_output"]["flag"]["cos_over"] == "none"
    assert m["cos_mean"] == pytest.approx(1.0) and m["cos_min"] == pytest.approx(1.0)
    assert m["cos_over"] == "none/sample" and m["max_abs_err"] == 6.0


def test_a_non_finite_output_makes_the_aggregate_nan():
    ref = {"a": np.ones((2, 4)), "b": np.ones((2, 4))}
    out = {"a": np.ones((2, 4)), "b": np.full((2, 4), np.nan)}
    m = tensor_metrics(out, ref)
    assert math.isnan(m["cos_mean"]) and math.isnan(m["cos_min"]) and math.isnan(m["sqnr_db"])
    assert m["max_abs_err"] == float("inf")


def test_a_single_output_dict_is_that_outputs_metrics():
    ref = np.random.default_rng(2).normal(size=(4, 5))
    m = tensor_metrics({"y": ref + 0.1}, {"y": ref})
    plain = tensor_metrics(ref + 0.1, ref)
    assert {k: m[k] for k in plain} == plain and m["tensor_metrics_by_output"] == {"y": plain}


def test_task_delta_signs():
    up = task_delta(0.8, 0.9, higher_is_better=True)        # accuracy fell: a drop
    assert up["metric_delta"] == pytest.approx(-0.1) and up["metric_drop"] == pytest.approx(0.1)
    assert up["metric_drop_rel"] == pytest.approx(0.1 / 0.9)
    down = task_delta(0.8, 0.9, higher_is_better=False)     # a loss fell: a gain
    assert down["metric_delta"] == pytest.approx(-0.1) and down["metric_drop"] == pytest.approx(-0.1)
    worse = task_delta(1.2, 1.0, higher_is_better=False)
    assert worse["metric_drop"] == pytest.approx(0.2) and worse["metric_drop_rel"] == pytest.approx(0.2)
    assert task_delta(-1.5, -2.0, True)["metric_drop_rel"] == pytest.approx(-0.25)  # |reference|


@pytest.mark.parametrize("hib", [True, False])
def test_task_delta_no_change_is_positive_zero(hib):
    d = task_delta(0.5, 0.5, higher_is_better=hib)
    for k, v in d.items():
        assert v == 0.0 and math.copysign(1.0, v) == 1.0, k
        assert f"{v}" == "0.0"


def test_task_delta_against_a_zero_reference_has_no_relative_drop():
    d = task_delta(0.1, 0.0, True)
    assert d["metric_drop"] == pytest.approx(-0.1) and math.isnan(d["metric_drop_rel"])
