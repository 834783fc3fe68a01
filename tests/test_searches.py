"""Per-layer sensitivity and the accuracy-budget search, on real ModelOpt calibration."""
import json
import sqlite3

import onnx
import pytest

import l4opt
from l4opt.errors import BadInput
from l4opt.recipes import Recipe
from l4opt.searches import Budget, onnx_exclusions, search, sensitivity


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def sens(run_dir):
    return sensitivity("digits-cnn", "int8", run_dir, progress=False)


@pytest.fixture(scope="module")
def found(run_dir):
    return search("digits-cnn", "int8", Budget(max_drop=0.01), run_dir, strategy="both",
                  progress=False)


def test_sensitivity_ranks_the_layer_that_hurts_first(sens, run_dir):
    df = sens.table()
    assert list(df["rank"]) == list(range(1, len(df) + 1)) and len(df) >= 5
    top = df.iloc[0]
    # entropy calibration of the 1-channel input conv wrecks accuracy; nothing else matters
    assert top["layer"] == "features.0"
    assert top["only_drop"] > 0.3 and top["recovery"] > 0.3 and top["share"] > 0.9
    assert (df["only_drop"].iloc[1:] < 0.05).all()
    assert sens.all_quantized["metric_drop"] > 0.3
    saved = json.loads((run_dir / "sensitivity" / "digits-cnn-int8.json").read_text())
    assert saved["layers"][0]["layer"] == "features.0"
    assert any("torch-PTQ form" in n for n in sens.notes)


def test_search_meets_the_budget_and_reports_both_strategies(found):
    d = found.to_dict()
    assert d["met"] and d["metric_drop"] <= 0.01
    assert "features.0" in d["fallback_layers"]
    assert 0 < d["fraction_quantized"] < 1
    assert d["latency_source"] == "estimated-l4" and d["latency_opt_ms"] > 0
    assert set(d["strategies"]) == {"greedy", "auto_quantize"}
    assert d["strategies"]["auto_quantize"]["status"] in ("ok", "failed")
    df = found.table()
    assert df["pareto"].any() and len(df) >= 2
    chosen = df[df["name"] == found.chosen["name"]].iloc[0]
    assert chosen["met"]
    # no met candidate is faster than the chosen one
    assert chosen["latency_opt_ms"] <= df[df["met"]]["latency_opt_ms"].min() + 1e-12


def test_every_candidate_is_a_trial_row(found, run_dir):
    con = sqlite3.connect(run_dir / "results.sqlite")
    names = {json.loads(r)["recipe"] for (r,) in con.execute("SELECT row FROM trials")}
    assert {c["name"] for c in found.candidates} <= names


def test_saved_recipe_reruns_to_the_same_metrics(found, run_dir):
    r = Recipe.load(found.recipe_path)
    assert list(r.disabled_layers) == found.chosen["fallback"] and r.nodes_to_exclude
    again = l4opt.sweep("digits-cnn", [found.recipe_path], run_dir, force=True, progress=False)
    row, first = again.rows[0], found.final_row
    assert row["status"] == "ok" and row["drift_backend"] == "onnxruntime-cpu"
    for k in ("metric", "cos_mean", "sqnr_db", "max_abs_err"):
        assert row[k] == pytest.approx(first[k], rel=1e-6), k
    assert abs(row["metric"] - found.chosen["metric"]) <= 0.01  # torch fake-quant vs ORT


def test_onnx_exclusions_keep_those_nodes_unquantized_in_onnx_ptq(run_dir, tmp_path):
    from l4opt.searches import _base_export
    from l4opt.store import Store

    w = l4opt.workloads.load("digits-cnn")
    st = Store(tmp_path)
    base = _base_export(w, st)
    excl = onnx_exclusions(base, ["features.2"])
    assert excl and all(e.startswith("^") for e in excl)
    r = Recipe("int8-no-f2", "onnx-ptq", "int8", "entropy", nodes_to_exclude=tuple(excl))
    res = l4opt.sweep(w, [r], tmp_path, progress=False)
    g = onnx.load(str(tmp_path / res.rows[0]["onnx_path"])).graph
    dq = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: any(i in dq for i in n.input) for n in g.node if n.op_type == "Conv"}
    assert convs["/features/features.2/Conv"] is False
    assert convs["/features/features.5/Conv"] is True


def test_an_impossible_budget_says_so_and_keeps_every_trial(tmp_path):
    res = search("digits-cnn", "int8-max", Budget(max_drop=-0.5), tmp_path, strategy="greedy",
                 progress=False)
    d = res.to_dict()
    assert not d["met"] and "no configuration met" in d["message"]
    assert len(res.candidates) >= 5  # fell back every layer, one at a time
    con = sqlite3.connect(tmp_path / "results.sqlite")
    n = con.execute("SELECT count(*) FROM trials WHERE row LIKE '%\"strategy\": \"greedy\"%'").fetchone()[0]
    assert n == len(res.candidates)


def test_budget_and_recipe_errors():
    with pytest.raises(BadInput, match="exactly one"):
        Budget()
    with pytest.raises(BadInput, match="exactly one"):
        Budget(max_drop=0.1, min_cosine=0.9)
    with pytest.raises(BadInput, match="cosine"):
        Budget(min_cosine=2)
    with pytest.raises(BadInput, match="quantizes nothing"):
        sensitivity("digits-cnn", "baseline", progress=False)


def test_cli_search_json(run_dir):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "l4opt.cli", "search", "digits-cnn", "--recipe",
                          "int8", "--max-drop", "0.01", "--strategy", "greedy", "--out",
                          str(run_dir), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout)
    assert d["met"] and d["latency_source"] == "estimated-l4" and 0 < d["fraction_quantized"] < 1


def test_toggling_a_layer_equals_recalibrating_without_it():
    """The premise of calibrate-once: scales do not depend on which other layers are quantized."""
    import copy

    import numpy as np
    import torch

    from l4opt import recipes, workloads
    from l4opt.drift import tensor_metrics
    from l4opt.quantize import quantize_torch
    from l4opt.runners import TorchRunner, run_all
    from l4opt.searches import Calibrated, torch_form

    w = workloads.load("digits-cnn")
    cal = Calibrated(w, recipes.get("int8-percentile"), 128, progress=False)
    layer = cal.layers[1]
    once = cal.evaluate([x for x in cal.layers if x != layer])
    base = torch_form(recipes.get("int8-percentile"))
    model = copy.deepcopy(w.module())

    def loop(m):
        with torch.no_grad():
            for b in w.batches(w.calib_data):
                m(*[torch.from_numpy(np.ascontiguousarray(x)) for x in b])

    quantize_torch(model, Recipe(base.name, base.path, base.format, base.algorithm,
                                 disabled_layers=(layer,)), loop)
    again = tensor_metrics(run_all(TorchRunner(model), w.batches(cal.eval), progress=False),
                           cal.reference)
    assert again["cos_mean"] == pytest.approx(once["cos_mean"], abs=1e-7)
    assert again["sqnr_db"] == pytest.approx(once["sqnr_db"], abs=1e-5)
