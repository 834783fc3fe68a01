"""l4opt.ui.view_model: the dashboard's computations without a widget, on a real small run
(digits-cnn, baseline and int8) and on hand-built rows for the statuses a sweep rarely gives."""
import math
import subprocess
import sys

import pytest

import l4opt
from l4opt.spec import row as rowspec
from l4opt.ui import view_model as vm


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("vm-run")
    res = l4opt.sweep("digits-cnn", ["baseline", "int8"], d, progress=False)
    assert [r["status"] for r in res.rows] == ["ok", "ok"], [r.get("error") for r in res.rows]
    return d, res.rows


@pytest.fixture
def model(run):
    d, _ = run
    m = vm.DashboardModel(d, "digits-cnn", recipes=["int8", "baseline"], batch=1)
    assert len(m.load_store()) == 2 and m.load_store() == []  # read once, not twice
    return m


def _by(rows, recipe):
    return next(r for r in rows if r["recipe"] == recipe)


def test_the_model_needs_no_widgets(run):
    d, _ = run
    code = ("import sys; sys.modules['ipywidgets'] = None\n"
            "from l4opt.ui.view_model import DashboardModel\n"
            f"m = DashboardModel({str(d)!r}, 'digits-cnn', recipes=['int8'])\n"
            "m.load_store(); df = m.frame()\n"
            "assert list(df['name']) == ['int8'] and df['dash_latency_ms'].iloc[0] > 0\n"
            "assert 'ipywidgets' not in {k for k, v in sys.modules.items() if v}\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_latency_at_is_a_named_tuple_with_its_band(model, run):
    """The defect: _latency_at was annotated as a 2-tuple and returned 4-tuples."""
    _, rows = run
    row = _by(rows, "int8")
    own = model.latency_at(row, row["latency_batch"])  # the row's own number at its batch
    assert isinstance(own, vm.Latency) and own._fields == ("ms", "source", "low", "high")
    assert own == (row["latency_ms"], row["latency_source"], row["latency_low_ms"],
                   row["latency_high_ms"])
    at1 = model.latency_at(row, 1)  # another batch: an estimate on its ONNX, with its band
    assert at1.source == "estimated-l4" and at1.low < at1.ms < at1.high
    assert at1.ms < own.ms
    assert model.estimate(row, 1) is model.estimate(row, 1)  # estimated once, then cached
    swept = dict(row, batch_sweep=[{"batch": 8, "latency_ms_median": 0.5}],
                 latency_source="measured-l4")
    assert model.latency_at(swept, 8) == vm.Latency(0.5, "measured-l4", None, None)
    gone = dict(row, key="no-onnx", onnx_path="artifacts/none/model.onnx")
    assert model.latency_at(gone, 2) == vm.NO_LATENCY and model.estimate(gone, 2) is None


def test_view_rows_and_the_frame(model):
    selected, others = model.view_rows()
    assert [r["recipe"] for r in selected] == ["int8", "baseline"] and others == []
    model.recipes = ("baseline",)
    selected, others = model.view_rows()
    assert [r["recipe"] for r in selected] == ["baseline"] and [r["recipe"] for r in others] == ["int8"]
    model.recipes = ("int8", "baseline")
    df = model.frame()
    assert list(df["name"]) == ["int8", "baseline"] and set(df["dash_latency_batch"]) == {1}
    assert (df["dash_latency_low_ms"] < df["dash_latency_ms"]).all()
    assert (df["dash_latency_ms"] < df["dash_latency_high_ms"]).all()
    base = df.set_index("name").loc["baseline"]
    assert base["speedup"] == 1.0 and base["speedup_low"] == base["speedup_high"] == 1.0
    q = df.set_index("name").loc["int8"]
    assert q["speedup"] == pytest.approx(base["dash_latency_ms"] / q["dash_latency_ms"])
    # both estimated: the paired band of l4opt.latency.paired, not the two absolute bands
    from l4opt.latency import paired

    q_low, q_high, _ = paired.paired_band()
    assert q["speedup_low"] == pytest.approx(q["speedup"] / (1 + q_high))
    assert q["speedup_high"] == pytest.approx(q["speedup"] / (1 + q_low))
    assert list(df["pareto_here"]) == list(rowspec.pareto_mask(df["metric_drop"],
                                                               df["dash_latency_ms"]))
    assert list(df["within_budget"]) == [bool(v <= 0.01) for v in df["metric_drop"]]


def test_budget_kind_switch_resets_to_the_kinds_default(model):
    assert (model.budget_kind, model.budget, model.y) == ("max_drop", 0.01, "metric_drop")
    model.budget = 0.001
    assert model.set_budget_kind("min_cosine") == 0.99 and model.y == "cos_drop"
    assert model.budget_line == pytest.approx(0.01)
    df = model.frame()
    assert list(df["within_budget"]) == list(df["cos_mean"] >= 0.99)
    model.budget = 0.9999
    assert model.set_budget_kind("max_drop") == 0.01


def test_each_workload_keeps_its_choices(model):
    assert model.recall("digits-cnn") == {"recipes": None, "calib": 512}
    model.remember("digits-cnn", ["int8"], 100)
    assert model.recall("digits-cnn") == {"recipes": ("int8",), "calib": 100}
    w, notes = model.load_workload("digits-cnn", 64, eval_samples=32)
    assert w.num_samples(w.calib_data) == 64
    assert notes == ["digits-cnn takes no eval_samples: evaluated on its own evaluation set"]


def test_the_recommendation_on_the_real_run(model, run):
    _, rows = run
    rec = vm.recommend(rows)
    ok = [r for r in rows if r["metric_drop"] <= 0.01]
    fastest = min(ok, key=lambda r: r["latency_ms"])
    assert rec["met"] and rec["recipe"] == fastest["recipe"] and rec["status"] == "ok"
    assert rec["budget"] == {"max_drop": 0.01} and rec["latency_batch"] == 64
    s = rec["sentence"]
    assert f"ship {fastest['recipe']}" in s and ("a drop of" in s or "costs nothing in top1" in s) and "mean cosine" in s
    if fastest["recipe"] != "baseline":
        base = _by(rows, "baseline")
        assert rec["speedup"] == pytest.approx(base["latency_ms"] / fastest["latency_ms"])
        assert f"{rec['speedup']:.2f}×" in s and "band" in s  # estimated: the band is said
    at1 = model.recommendation()  # the dashboard's: at the chosen batch
    assert at1["latency_batch"] == 1 and at1["latency_ms"] < rec["latency_ms"]
    strict = vm.recommend(rows, {"min_cosine": 0.9999999})
    assert strict["recipe"] == "baseline" or strict["cos_mean"] >= 0.9999999


def _hand(recipe, status="ok", drop=0.0, ms=1.0, band=0.1, cos=0.999, **kw):
    return dict({"key": recipe, "kind": "trial", "workload": "w", "recipe": recipe,
                 "status": status, "metric_name": "acc", "metric_drop": drop, "cos_mean": cos,
                 "latency_ms": ms, "latency_low_ms": ms - band, "latency_high_ms": ms + band,
                 "latency_source": "estimated-l4", "latency_batch": 8,
                 "shapes": {"batch": 8, "axes": {"batch": 8}}, "format": "int8",
                 "route": "onnx-ptq"}, **kw)


def test_the_recommendation_never_picks_a_result_that_is_not_ok():
    rows = [_hand("baseline", ms=2.0, format="fp16", route="none", cos=1.0),
            _hand("int8", status="collapsed", ms=0.5, cos=0.4),
            _hand("fp8-noop", status="no-op", ms=0.6),
            _hand("int8-broken", status="failed", ms=0.1),
            _hand("fp8", drop=0.004, ms=1.0)]
    rec = vm.recommend(rows, {"max_drop": 0.01})
    assert rec["recipe"] == "fp8" and rec["speedup"] == pytest.approx(2.0)
    from l4opt.latency import paired

    q_low, q_high, _ = paired.paired_band()  # both estimated: the paired band
    assert (rec["speedup_low"], rec["speedup_high"]) == pytest.approx((2 / (1 + q_high),
                                                                       2 / (1 + q_low)))
    assert (f"2.00× the FP16 baseline's speed (band {2 / (1 + q_high):.2f}–"
            f"{2 / (1 + q_low):.2f}×)") in rec["sentence"]
    assert "a drop of 0.004000 in acc" in rec["sentence"]
    assert any("int8 collapsed" in b and "calibration" in b for b in rec["better"])
    # nothing within the budget: no recipe named, the search suggested
    none = vm.recommend([_hand("baseline", drop=0.0, ms=2.0, cos=1.0, format="fp16", route="none"),
                         _hand("int8", drop=0.2, ms=0.5)], {"max_drop": 0.01, "relative": False})
    assert none["recipe"] == "baseline" and "l4opt search w --recipe int8 --max-drop 0.01" in \
        none["sentence"]
    empty = vm.recommend([_hand("int8", drop=0.2, ms=0.5)], {"max_drop": 0.01})
    assert not empty["met"] and empty["recipe"] is None
    assert "No recipe whose status is ok meets the budget" in empty["sentence"]
    assert "l4opt search w --recipe int8" in empty["sentence"]
    assert vm.recommend([])["sentence"].startswith("No trials yet")
    # a latency at another batch is never ranked against the baseline's batch
    at1 = _hand("int8-b1", ms=0.1, latency_batch=1, drop=0.001)
    rec = vm.recommend(rows + [at1], {"max_drop": 0.01})
    assert rec["recipe"] == "fp8" and rec["not_compared"] == 1
    assert "1 trial(s) at other shapes or batches were not compared" in rec["sentence"]


def test_speedups_need_a_baseline_of_the_same_shapes():
    base = _hand("baseline", ms=2.0, format="fp16", route="none")
    same = _hand("int8", ms=1.0)
    other = _hand("int8-seq", ms=1.0, shapes={"batch": 8, "axes": {"batch": 8, "seq": 256}},
                  inputs=[{"name": "x", "shape": ["batch", "seq"]}])
    other_batch = _hand("int8-b1", ms=1.0, latency_batch=1)
    s = vm.speedups([base, same, other, other_batch])
    assert s[0] == (1.0, 1.0, 1.0) and s[1][0] == 2.0 and s[2] is None and s[3] is None
    assert vm.speedups([same]) == [None]  # no baseline row: no speed-up, shown as '–'
    from l4opt.ui.tables import speedup_cells

    assert speedup_cells([2.0, None, math.nan], [1.5, None, None], [2.5, None, None]) == \
        ["2.00× (1.50–2.50)", "–", "–"]


def test_budget_forms():
    from l4opt.precision.api import Budget

    assert vm.budget_of(None) == ("max_drop", 0.01, False)
    assert vm.budget_of({"min_cosine": 0.99}) == ("min_cosine", 0.99, False)
    assert vm.budget_of(("max_drop", 0.02)) == ("max_drop", 0.02, False)
    assert vm.budget_of(Budget(max_drop=0.05, relative=True)) == ("max_drop", 0.05, True)
    assert vm.within({"metric_drop": 0.01}, None) is True
    assert vm.within({"metric_delta": -0.02, "metric_higher_is_better": True}, None) is False
    assert vm.within({"cos_mean": None}, {"min_cosine": 0.9}) is None


def test_detail_sections_are_formatted_for_people(run):
    _, rows = run
    row = dict(_by(rows, "int8"), collapse_note="", notes=[])
    sections = dict(vm.detail_sections(row))
    assert list(sections) == ["What happened", "Accuracy", "Precision", "L4 latency", "Files"]
    fields = {k: v for fs in sections.values() for k, v in fs}
    assert "why" not in fields and "notes" not in fields  # empty fields left out
    drop = fields["metric drop (lower is better)"]
    assert float(drop) == pytest.approx(row["metric_drop"], abs=5e-7) and drop != "-0"
    assert fields["SQNR"].endswith(" dB") and fields["latency (band)"].endswith(" ms")
    assert fields["at batch"] == "64" and fields["shapes"] == "image 64x1x8x8"
    assert fields["throughput"].endswith(" samples/s") and "," in fields["throughput"]
    assert fields["8-bit layers (GEMM/conv)"] == f"{row['quantized_layers']}/{row['gemm_layers']}"
    assert not any('"' in v or "{" in v for v in fields.values())


def test_no_accuracy_is_paid_for_a_speed_up_within_the_tie():
    """A recipe estimated 1-2% faster than FP16 (the tiny MLP of the JupyterLab test: int8-max
    0.004852 vs baseline 0.004935 ms) is no reason to ship its drop: within SAME_SPEED the least
    drifting row is shipped and the faster one named; past it, the fastest is."""
    base = _hand("baseline", ms=0.004935, band=0.001, cos=1.0, format="fp16", route="none")
    near = [base, _hand("int8-max", drop=0.0074, ms=0.004852, band=0.001),
            _hand("int8", drop=0.0037, ms=0.004857, band=0.001)]
    rec = vm.recommend(near, {"max_drop": 0.01})
    assert rec["recipe"] == "baseline" and rec["is_baseline"]
    assert rec["tied_faster"] == ["int8-max (1.7% faster)", "int8 (1.6% faster)"]
    s = rec["sentence"]
    assert "faster than FP16 by more than 5%" in s and "Passed over as no faster" in s
    # among the tied 8-bit rows, the one that drifts less wins over the marginally faster one
    no_base = vm.recommend(near[1:], {"max_drop": 0.01})
    assert no_base["recipe"] == "int8" and no_base["tied_faster"] == ["int8-max (0.1% faster)"]
    far = [base, _hand("int8-max", drop=0.0074, ms=0.004935 / 1.2, band=0.001)]
    assert vm.recommend(far, {"max_drop": 0.01})["recipe"] == "int8-max"
    assert vm.recommend(far, {"max_drop": 0.01})["tied_faster"] == []
