"""Paired speed-ups (l4opt.latency.paired): arithmetic and band, baseline choice in add_speedups,
the published pairs and the extended truth table they rest on."""
import math

import pytest

from l4opt.errors import BadInput
from l4opt.latency import estimate, paired

SHAPES = {"batch": 8, "axes": {"seq": 64}, "inputs": {"input_ids": [8, 64]}}


def _row(ms, route="onnx-ptq", fmt="int8", workload="w", shapes=SHAPES, status="ok",
         source="estimated-l4", key=None, band=(0.8, 1.3)):
    return {"key": key or f"{workload}-{route}-{fmt}-{ms}", "workload": workload,
            "recipe": f"{route}-{fmt}", "route": route, "format": fmt, "status": status,
            "latency_ms": ms, "latency_low_ms": ms * band[0], "latency_high_ms": ms * band[1],
            "latency_source": source, "latency_batch": shapes["batch"] if shapes else None,
            "shapes": shapes}


def test_speedup_arithmetic_and_paired_band():
    q_low, q_high, src = paired.paired_band()
    assert q_low <= 0 <= q_high and "pairs" in src
    base = _row(2.0, "none", "fp16")
    s = paired.speedup(_row(1.25), base)
    assert s["speedup"] == pytest.approx(1.6)
    assert s["speedup_low"] == pytest.approx(1.6 / (1 + q_high))
    assert s["speedup_high"] == pytest.approx(1.6 / (1 + q_low))
    assert s["speedup_low"] <= s["speedup"] <= s["speedup_high"]
    assert "paired band" in s["speedup_source"]
    # monotone: a slower row has a smaller speed-up and a lower band, never crossing
    prev = None
    for ms in (0.5, 0.8, 1.0, 1.5, 2.0, 3.0):
        cur = paired.speedup(_row(ms), base)
        assert cur["speedup_low"] <= cur["speedup"] <= cur["speedup_high"]
        if prev:
            assert cur["speedup"] < prev["speedup"]
            assert cur["speedup_low"] < prev["speedup_low"]
            assert cur["speedup_high"] < prev["speedup_high"]
        prev = cur
    # the baseline against itself is exactly 1
    assert paired.speedup(base, base) == {"speedup": 1.0, "speedup_low": 1.0, "speedup_high": 1.0,
                                          "speedup_source": "the baseline itself"}


def test_speedup_measured_and_mixed_pairs():
    base_m = _row(2.0, "none", "fp16", source="measured-l4", band=(1, 1))  # a measurement's band
    m = paired.speedup(_row(1.0, source="measured-l4", band=(1, 1)), base_m)
    assert m["speedup"] == m["speedup_low"] == m["speedup_high"] == pytest.approx(2.0)
    mixed = paired.speedup(_row(1.0, band=(0.8, 1.3)), base_m)  # estimated over measured
    assert mixed["speedup_low"] == pytest.approx(2.0 / 1.3)
    assert mixed["speedup_high"] == pytest.approx(2.0 / 0.8)
    assert "mixed" in mixed["speedup_source"]


def test_speedup_refuses_other_shapes_or_workload_or_no_latency():
    base = _row(2.0, "none", "fp16")
    other = dict(SHAPES, batch=16, inputs={"input_ids": [16, 64]})
    with pytest.raises(BadInput):
        paired.speedup(_row(1.0, shapes=other), base)
    with pytest.raises(BadInput):
        paired.speedup(_row(1.0, workload="x"), base)
    with pytest.raises(BadInput):
        paired.speedup(_row(float("nan")), base)


def test_indistinguishable_paired():
    q_low, q_high, _ = paired.paired_band()
    base = _row(1.0, "none", "fp16")
    fast = _row(1.0 / (2.0 * (1 + q_high)))       # its band's low end is 2x: far from FP16
    near = _row(1.0 / 1.05)
    assert not paired.indistinguishable_paired(fast, base, base)
    assert paired.indistinguishable_paired(near, base, base)
    assert paired.indistinguishable_paired(near, _row(1.0 / 1.06), base)
    assert not paired.indistinguishable_paired(fast, near, base)


def test_add_speedups_picks_same_shapes_baseline():
    other_shapes = dict(SHAPES, batch=32, inputs={"input_ids": [32, 64]})
    base8 = _row(2.0, "none", "fp16", key="b8")
    base32 = _row(6.0, "none", "fp16", shapes=other_shapes, key="b32")
    int8_8 = _row(1.0, key="i8")
    int8_32 = _row(2.0, shapes=other_shapes, key="i32")
    lonely = _row(1.0, workload="other", key="lonely")         # no baseline of its workload
    collapsed = _row(1.6, status="collapsed", key="c")
    noop = _row(2.0, status="no-op", key="n")
    failed = {"key": "f", "workload": "w", "status": "failed", "route": "onnx-ptq",
              "format": "fp8", "latency_ms": None, "shapes": SHAPES, "latency_batch": 8}
    rows = [int8_8, base8, lonely, int8_32, base32, collapsed, noop, failed]
    out = paired.add_speedups(rows)
    assert out is rows
    assert int8_8["speedup"] == pytest.approx(2.0)
    assert int8_32["speedup"] == pytest.approx(3.0)          # against the batch-32 baseline
    assert base8["speedup"] == base8["speedup_low"] == base8["speedup_high"] == 1.0
    assert collapsed["speedup"] == pytest.approx(1.25) and noop["speedup"] == pytest.approx(1.0)
    for r in (int8_8, int8_32, collapsed):
        assert r["speedup_low"] <= r["speedup"] <= r["speedup_high"] and r["speedup_source"]
    for r in (lonely, failed):
        assert all(r[k] is None for k in paired.SPEEDUP_FIELDS)


def test_add_speedups_prefers_baseline_of_the_same_kind():
    base_est = _row(2.0, "none", "fp16", key="be")
    base_meas = _row(1.8, "none", "fp16", source="measured-l4", key="bm")
    est = _row(1.0, key="e")
    meas = _row(0.9, source="measured-l4", key="m")
    paired.add_speedups([base_meas, base_est, est, meas])
    assert est["speedup"] == pytest.approx(2.0) and "paired" in est["speedup_source"]
    assert meas["speedup"] == pytest.approx(2.0) and meas["speedup_low"] == meas["speedup_high"]


def test_truth_table_extended():
    t = estimate.truth_table()
    assert len(t) >= 40 and t["id"].is_unique
    for col in ("gpu", "scenario", "submitter", "system", "latency_bound_ms", "server_qps"):
        assert col in t.columns
    assert list(t.columns[:13]) == list(estimate.TRUTH_COLUMNS)
    assert t["source"].map(lambda s: isinstance(s, str) and s.startswith("github:") and "#L" in s).all()
    assert set(t["fit"]) <= {"abs", "ratio", "no", "excluded"}
    l4 = t[t["gpu"] == "L4"]
    assert l4["model"].map(paired.family).nunique() >= 6
    assert l4["submitter"].nunique() >= 3 and l4["trt_version"].nunique() >= 3
    assert {"T4", "A10"} <= set(t["gpu"])
    assert (t["latency_ms"] > 0).all()
    # new rows are listed, not fitted: the fitted rows are the ones bench_estimate rebuilds
    assert len(t[t["fit"].isin(["abs", "ratio"])]) == 14


def test_pairs_table_loads_with_sources():
    pairs = paired.pairs_table()
    assert len(pairs) >= 10
    for p in pairs:
        assert p["ratio"] > 0 and math.isfinite(p["ratio"])
        assert p["source"].startswith("github:") and "#L" in p["source"]
        assert p["arch"].startswith("sm_")
        assert p["scaled"].startswith("yes") == (p["gpu"] != "L4")
    ids = {p["id"] for p in pairs}
    assert "bert-large-int8-fp16-offline-v3.0-nvidia-l4" in ids
    bert = next(p for p in pairs if p["id"] == "bert-large-int8-fp16-offline-v3.0-nvidia-l4")
    assert bert["ratio"] == pytest.approx(1032.08 / 630.644, rel=1e-4)
    errs = {e["id"]: e for e in paired.pair_errors()}
    assert errs[bert["id"]]["predictor"].startswith("cost model")
    assert all(e["predicted"] for e in errs.values() if e["in_band"])


def test_band_contains_every_counted_pair():
    q_low, q_high, src = paired.paired_band()
    counted = [e for e in paired.pair_errors() if e["in_band"]]
    assert f"{len(counted)} published pairs" in src
    for e in counted:
        lo, hi = e["predicted"] / (1 + q_high), e["predicted"] / (1 + q_low)
        assert lo * (1 - 1e-9) <= e["published"] <= hi * (1 + 1e-9)


def test_rule_speedup():
    assert paired.rule_speedup("int8", "fp16", 1.0) == pytest.approx(2.0)
    assert paired.rule_speedup("fp8", "fp16", 0.0) == pytest.approx(1.0)
    assert paired.rule_speedup("fp8", "int8", 0.7) == pytest.approx(1.0)
    with pytest.raises(BadInput):
        paired.rule_speedup("fp32", "fp16", 0.5)
