"""A search's answer is what the sweep of its saved recipe measured; studies are silent with
progress=False (ModelOpt's and ONNX Runtime's output goes to a log file in the run dir); bad
sample counts and budgets are refused. Tiny user models, through the public API and the CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import l4opt
from l4opt.errors import BadInput
from l4opt.precision.api import Budget
from l4opt.spec.workloads import InputSpec, Metric, Workload


def _agree(out, ref, labels):
    return float((np.asarray(out).argmax(-1) == np.asarray(ref).argmax(-1)).mean())


def _mlp(name="truth-mlp", metric=None, eval_x=None, seed=0) -> Workload:
    """A user's small MLP (8 outputs, so cosine is per sample), no biases."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(16, 32, bias=False), nn.ReLU(), nn.Linear(32, 8, bias=False))
    rng = np.random.default_rng(seed)
    calib = rng.normal(size=(32, 16)).astype(np.float32)
    ev = rng.normal(size=(64, 16)).astype(np.float32) if eval_x is None else eval_x
    return Workload(name=name, model=m.eval(), inputs=[InputSpec("x", ("batch", 16))],
                    calib_data={"x": calib}, eval_data={"x": ev},
                    metric=metric or Metric("agree", _agree), output_names=["y"])


def _picky(out, ref, labels):
    """A user metric written for at most 32 samples (it raises on more)."""
    if len(out) > 32:
        raise ValueError(f"my metric takes at most 32 samples, got {len(out)}")
    return _agree(out, ref, labels)


def test_a_failed_final_sweep_is_not_met_and_says_so(tmp_path):
    w = _mlp(metric=Metric("agree32", _picky))
    res = l4opt.search(w, "int8-max", Budget(min_cosine=0.9), tmp_path, strategy="greedy",
                       eval_samples=32, progress=False)
    assert res.candidate_met is True  # the study (32 samples) met it ...
    assert res.final_row["status"] == "failed"  # ... the sweep of the saved recipe did not run
    assert res.met is False
    assert "NOT MET" in res.message and "failed" in res.message
    assert "at most 32 samples" in res.message  # its error, in the message
    d = res.to_dict()
    assert d["met"] is False and d["final_status"] == "failed"
    saved = json.loads(next((tmp_path / "search").glob("*.json")).read_text())
    assert saved["met"] is False and "NOT MET" in saved["message"]

    from l4opt.ui.report import build_html

    page = build_html(tmp_path)
    assert "NOT MET" in page
    assert "its row is in the table above" not in page
    assert "sweep of the saved recipe failed" in page
    assert f"logs/{__import__('pathlib').Path(res.log_path).name}" in page


def test_a_final_sweep_missing_the_budget_is_not_met(tmp_path):
    """The first 32 evaluation samples are ordinary; the last 32 are far below the INT8 step of
    the calibrated input range, so they quantize to zero: the search on 32 samples meets the
    budget, the sweep on all 64 does not."""
    rng = np.random.default_rng(1)
    ev = np.concatenate([rng.normal(size=(32, 16)), 1e-6 * rng.normal(size=(32, 16))])
    w = _mlp(eval_x=ev.astype(np.float32))
    res = l4opt.search(w, "int8-max", Budget(min_cosine=0.9), tmp_path, strategy="greedy",
                       eval_samples=32, progress=False)
    assert res.candidate_met is True
    # the sweep on all 64 samples finished (its drift is far past sense: collapsed)
    assert res.final_row["status"] in ("ok", "collapsed")
    assert not res.final_row["cos_mean"] >= 0.9  # measured by the sweep: below the budget
    assert res.met is False and "NOT MET" in res.message


def test_cli_search_exits_1_when_the_saved_recipe_fails(tmp_path, capsys, monkeypatch):
    mod = tmp_path / "userwl.py"
    mod.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})\n"
        "from test_search_truth import _mlp, _picky\n"
        "from l4opt.spec.workloads import Metric\n"
        "def make(calib_samples=None, eval_samples=None):\n"
        "    return _mlp(metric=Metric('agree32', _picky))\n")
    from l4opt.cli import main

    code = main(["search", f"{mod}:make", "--recipe", "int8-max", "--min-cosine", "0.9",
                 "--strategy", "greedy", "--eval-samples", "32", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 1
    assert "met budget: False" in out and "NOT MET" in out


def test_progress_false_is_silent_and_logs_to_the_run_dir(tmp_path, capfd):
    w = _mlp()
    capfd.readouterr()
    sens = l4opt.sensitivity(w, "int8", tmp_path, progress=False)  # ONNX PTQ (ModelOpt, ORT)
    res = l4opt.search(w, "int8-max", Budget(min_cosine=0.5), tmp_path, strategy="both",
                       progress=False)  # torch PTQ: greedy and ModelOpt's auto_quantize
    got = capfd.readouterr()
    assert got.out == "" and got.err == "", (got.out[-500:], got.err[-500:])
    for p in (sens.log_path, res.log_path):
        log = tmp_path / "logs" / __import__("pathlib").Path(p).name
        assert str(log) == p and log.exists()
    assert log.read_text()  # ModelOpt's chatter landed in the log, not the terminal
    assert res.to_dict()["log_path"] == res.log_path


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_eval_samples_are_refused(tmp_path, bad):
    w = _mlp()
    with pytest.raises(BadInput, match="eval_samples"):
        l4opt.sensitivity(w, "int8", tmp_path, eval_samples=bad, progress=False)
    with pytest.raises(BadInput, match="eval_samples"):
        l4opt.search(w, "int8", Budget(max_drop=0.01), tmp_path, eval_samples=bad,
                     progress=False)


def test_a_negative_max_drop_is_refused():
    with pytest.raises(BadInput, match="max_drop"):
        Budget(max_drop=-0.01)
    with pytest.raises(BadInput, match="max_drop"):
        Budget(max_drop=float("nan"))
    assert Budget(max_drop=0.0).met({"metric_drop": 0.0})


def test_search_uses_the_estimate_modules_overlap_rule():
    from l4opt.latency import estimate
    from l4opt.precision import result as searches

    a = {"latency_ms": 1.0, "latency_low_ms": 0.9, "latency_high_ms": 1.1}
    b = {"latency_ms": 1.15, "latency_low_ms": 1.05, "latency_high_ms": 1.3}
    c = {"latency_ms": 2.0, "latency_low_ms": 1.8, "latency_high_ms": 2.2}
    for x, y in ((a, b), (a, c), (b, c)):
        assert searches.indistinguishable(x, y) == estimate.indistinguishable(x, y)
    assert not searches.indistinguishable(a, {"latency_note": "no estimate"})
    assert not hasattr(searches, "_band")
