"""l4opt.plan and `l4opt plan` on a tiny run directory and on an ONNX file."""
from __future__ import annotations

import json
import math

import pytest

import l4opt
from l4opt.cli import main
from l4opt.errors import BadInput
from l4opt.fleet import plan as planmod


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan-run")
    res = l4opt.sweep("digits-cnn", ["baseline", "int8", "fp8"], d, progress=False)
    assert not res.failed, res.failed
    return d


@pytest.fixture(scope="module")
def planned(run_dir):
    return l4opt.plan(run_dir, qps=2e6, p99_ms=5, gpus=("L4", "T4"))


def _row(res, recipe, gpu):
    t = res.table
    return t[(t.recipe == recipe) & (t.gpu == gpu)].iloc[0]


def test_plan_has_a_row_per_recipe_and_gpu_with_bands(planned):
    t = planned.table
    assert sorted(zip(t.recipe, t.gpu)) == sorted(
        (r, g) for r in ("baseline", "int8", "fp8") for g in ("L4", "T4"))
    for r in t.itertuples():
        assert r.max_qps_per_gpu > 0 and r.batch >= 1 and r.queue_delay_ms >= 0
        assert r.p99_ms <= 5 + 1e-9
        assert r.max_qps_per_gpu_low <= r.max_qps_per_gpu <= r.max_qps_per_gpu_high
        assert r.gpus_needed == math.ceil(2e6 / r.max_qps_per_gpu - 1e-9)
        assert r.gpus_needed_low <= r.gpus_needed <= r.gpus_needed_high
        assert r.usd_per_million == pytest.approx(
            r.gpus_needed * r.usd_per_gpu_hour / (2e6 * 3600) * 1e6)
        assert r.usd_per_million_low <= r.usd_per_million <= r.usd_per_million_high
        assert r.joules_per_inference == pytest.approx(r.gpus_needed * r.power_w / 2e6)
        assert r.latency_source == f"estimated-{r.gpu.lower()}"
        assert r.curve_batches[0] == 1 and r.curve_batches[-1] == 256   # digits' batch range


def test_fp8_on_a_t4_is_the_fp16_baseline_and_never_recommended(planned):
    fp8_t4, base_t4 = _row(planned, "fp8", "T4"), _row(planned, "baseline", "T4")
    assert fp8_t4.runs_as == "fp16" and "would run at FP16 on T4" in fp8_t4.note
    assert fp8_t4.curve_ms == base_t4.curve_ms
    assert not fp8_t4.recommended
    assert _row(planned, "fp8", "L4").runs_as == "fp8"
    assert set(planned.recommended) == {"L4", "T4"}
    assert planned.recommended["T4"] != "fp8"
    assert planned.table.recommended.sum() == 2


def test_a_recipe_outside_the_budget_is_shown_never_recommended(run_dir):
    res = l4opt.plan(run_dir, p99_ms=5, gpus="L4", budget={"min_cosine": 0.99999})
    t = res.table
    assert set(t.recipe) == {"baseline", "int8", "fp8"}
    bad = t[~t.meets_budget]
    assert len(bad) and not bad.recommended.any()
    assert res.recommended["L4"] in set(t[t.meets_budget].recipe)


def test_unmeetable_p99_is_a_statement_with_the_best_p99(run_dir):
    res = l4opt.plan(run_dir, p99_ms=1e-4, gpus="L4")
    assert (res.table.max_qps_per_gpu == 0).all()
    assert all("best achievable p99" in n for n in res.table.note)
    assert res.recommended == {"L4": None}


@pytest.mark.parametrize("kw,field", [
    (dict(p99_ms=0), "p99_ms"), (dict(p99_ms=-1), "p99_ms"), (dict(p99_ms="x"), "p99_ms"),
    (dict(p99_ms=float("nan")), "p99_ms"), (dict(p99_ms=5, qps=0), "qps"),
    (dict(p99_ms=5, qps=-3), "qps"), (dict(p99_ms=5, qps="many"), "qps"),
    (dict(p99_ms=5, gpus="L4,V100"), "gpus: unknown GPU 'V100'"),
    (dict(p99_ms=5, budget={"max_drop": -1}), "budget.max_drop"),
    (dict(p99_ms=5, prices={"L4": -0.5}), r"gpus\.L4\.on_demand"),
    (dict(p99_ms=5, prices={"L4": {"date": "x"}}), "the price is missing"),
])
def test_bad_input_names_the_field(run_dir, kw, field):
    with pytest.raises(BadInput, match=field):
        l4opt.plan(run_dir, **kw)


def test_cli_run_dir_json(run_dir, capsys):
    rc = main(["plan", str(run_dir), "--qps", "2000000", "--p99-ms", "5", "--gpus", "L4,T4",
               "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["qps"] == 2e6 and doc["p99_ms"] == 5 and doc["gpus"] == ["L4", "T4"]
    need = {"max_qps_per_gpu", "batch", "queue_delay_ms", "p99_ms", "gpus_needed",
            "usd_per_million", "joules_per_inference", "max_qps_per_gpu_low",
            "max_qps_per_gpu_high", "usd_per_million_low", "usd_per_million_high",
            "joules_per_inference_low", "joules_per_inference_high", "status", "meets_budget"}
    assert len(doc["rows"]) == 6 and need <= set(doc["rows"][0])
    assert doc["recommended"]["L4"] in ("baseline", "int8", "fp8")


def test_cli_run_dir_text_and_price_file(run_dir, tmp_path, capsys):
    f = tmp_path / "prices.yaml"
    f.write_text("gpus:\n  L4: {on_demand: 0.5, custom: 0.25}\n")
    assert main(["plan", str(run_dir), "--p99-ms", "5", "--gpus", "L4", "--prices", str(f)]) == 0
    out = capsys.readouterr().out
    assert "QPS/GPU (band)" in out and "USD/M inf (band)" in out and "recommended: L4:" in out
    f.write_text("gpus:\n  L4: {on_demand: -2}\n")
    assert main(["plan", str(run_dir), "--p99-ms", "5", "--gpus", "L4", "--prices", str(f)]) == 2
    assert "gpus.L4.on_demand" in capsys.readouterr().err


def test_cli_onnx_file(run_dir, capsys):
    row = next(r for r in l4opt.results.store.Store(run_dir).rows() if r.get("recipe") == "int8")
    path = run_dir / row["onnx_path"]
    assert main(["plan", "--onnx", str(path), "--p99-ms", "2", "--gpu", "A10G", "--max-batch",
                 "16", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (r,) = doc["rows"]
    assert r["recipe"] == "model.onnx" and r["gpu"] == "A10G" and r["runs_as"] == "int8"
    assert r["curve_batches"] == [1, 2, 4, 8, 16] and r["max_qps_per_gpu"] > 0


@pytest.mark.parametrize("args,words", [
    (["--p99-ms", "0"], "--p99-ms"), (["--p99-ms", "-5"], "--p99-ms"),
    (["--p99-ms", "fast"], "--p99-ms 'fast' is not a number"),
    (["--p99-ms", "5", "--qps", "0"], "--qps"), (["--p99-ms", "5", "--qps", "nan"], "--qps"),
    (["--p99-ms", "5", "--gpus", "L4,K80"], "unknown GPU 'K80'"),
])
def test_cli_bad_input_exits_2_naming_the_field(run_dir, capsys, args, words):
    assert main(["plan", str(run_dir)] + args) == 2
    assert words in capsys.readouterr().err


def test_cli_unmeetable_target_is_not_an_error(run_dir, capsys):
    assert main(["plan", str(run_dir), "--p99-ms", "0.0001", "--gpus", "L4"]) == 0
    assert "best achievable p99" in capsys.readouterr().out


def test_cost_accuracy_figure(planned):
    fig = planmod.cost_accuracy_figure(planned)
    assert {t.name for t in fig.data} == {"L4", "T4"}
    assert "USD per million" in fig.layout.xaxis.title.text


def test_a_measured_batch_sweep_is_the_curve_on_the_gpu_it_was_measured_on():
    row = {"latency_source": "measured-l4", "latency_gpu": "NVIDIA L4",
           "batch_sweep": [{"batch": 8, "latency_ms_median": 1.5, "p99": 1.7},
                           {"batch": 1, "latency_ms_median": 0.5, "p99": 0.6}]}
    item = {"row": row, "max_batch": 8, "dims": {}, "batch_axes": {"batch"}}
    c, lo, hi, src, notes = planmod.curves(item, "L4", None)
    assert c.batches == (1, 8) and c.ms == (0.5, 1.5) and src == "measured-l4"
    assert lo.ms == hi.ms == c.ms and "measured batch sweep on L4" in notes[0]
    assert planmod._measured_curve(row, "T4") is None
