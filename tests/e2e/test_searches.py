"""Per-layer sensitivity and the accuracy-budget search, on real ModelOpt calibration, studied
on the quantization the sweep measures (ONNX-PTQ recipes: the Q/DQ graph in ONNX Runtime)."""
import json
import sqlite3

import numpy as np
import onnx
import pytest

import l4opt
import l4opt.spec.recipes
import l4opt.spec.shapes
import l4opt.spec.workloads
from l4opt.errors import BadInput
from l4opt.spec.names import safe_filename
from l4opt.spec.recipes import Recipe
from l4opt.precision.api import Budget, search, sensitivity
from l4opt.precision.greedy import onnx_exclusions
from l4opt.precision.sensitivity import rank_layers


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def swept(run_dir):
    return l4opt.sweep("digits-cnn", "int8", run_dir, progress=False).rows[0]


@pytest.fixture(scope="module")
def sens(run_dir):
    return sensitivity("digits-cnn", "int8", run_dir, progress=False)


@pytest.fixture(scope="module")
def found(run_dir):
    return search("digits-cnn", "int8", Budget(max_drop=0.01), run_dir, progress=False)


def test_sensitivity_of_an_onnx_recipe_is_the_sweeps_quantization(sens, swept, run_dir):
    """The contradiction of issue 12: the sweep measured int8 (ONNX PTQ) as harmless while the
    torch-PTQ form blamed features.0. The study now starts from the sweep's very graph."""
    assert swept["status"] == "ok" and sens.drift_backend == swept["drift_backend"]
    for k in ("metric", "cos_mean", "sqnr_db"):
        assert sens.all_quantized[k] == pytest.approx(swept[k], rel=1e-6, abs=1e-9), k
    df = sens.table()
    assert list(df["rank"]) == list(range(1, len(df) + 1)) and len(df) >= 4
    assert (df["only_drop"] <= 0.02).all()  # no single layer wrecks it, as the sweep says
    assert {"share_task", "share_drift", "only_sqnr_db", "local_int8", "local_fp8"} <= set(df)
    saved = run_dir / "sensitivity" / safe_filename("digits-cnn", "int8", suffix=".json")
    assert json.loads(saved.read_text())["layers"][0]["layer"] == df.iloc[0]["layer"]


def test_search_needs_no_fallback_when_the_sweep_meets_the_budget(found, swept):
    d = found.to_dict()
    assert d["met"] and d["layer_formats"] == {} and d["fallback_layers"] == []
    assert d["metric_drop"] == pytest.approx(swept["metric_drop"], abs=1e-12)
    assert d["latency_source"] == "estimated-l4" and d["latency_ms"] > 0
    w = l4opt.spec.workloads.load("digits-cnn")
    assert d["latency_batch"] == l4opt.spec.shapes.deploy_batch(w)
    assert d["shapes"]["batch"] == d["latency_batch"]
    assert d["quantized_layers"] == swept["quantized_layers"] if "quantized_layers" in swept \
        else True
    # the saved recipe, swept, reproduces the candidate on the whole evaluation set
    row = found.final_row
    assert row["status"] == "ok" and row["cos_mean"] == pytest.approx(d["cos_mean"], abs=1e-9)
    assert not found.notes or all("did not reproduce" not in n for n in found.notes)


def test_every_candidate_is_a_trial_row_with_the_row_facts(found, run_dir):
    con = sqlite3.connect(run_dir / "results.sqlite")
    rows = {json.loads(r)["name"]: json.loads(r) for (r,) in con.execute("SELECT row FROM trials")
            if json.loads(r).get("strategy", "").startswith("bisect")}
    assert {c["name"] for c in found.candidates} <= set(rows)
    r = rows[found.chosen["name"]]
    for k in ("gemm_layers", "quantized_layers", "latency_batch", "shapes", "drift_backend",
              "latency_low_ms", "latency_high_ms", "status"):
        assert k in r, k
    assert r["status"] == "ok" and r["drift_backend"] == "onnxruntime-cpu, TensorRT numerics"
    saved = json.loads((run_dir / "search" / safe_filename(
        "digits-cnn", found.recipe.name, suffix=".json")).read_text())
    assert saved["layer_map"] and saved["candidate_rows"] and saved["chosen"]


def test_a_mixed_recipe_exports_int8_fp8_fp16_in_one_graph_and_reproduces(tmp_path):
    """layer_formats: ModelOpt ONNX PTQ once per format, spliced per layer; the graph holds
    INT8 and FP8 Q/DQ and an FP16 layer, and its drift is the study's for the same formats."""
    import onnxruntime as ort

    from l4opt.pipeline.export import export_torch
    from l4opt.pipeline.quantize import quantize_mixed_onnx
    from l4opt.onnx.qdq import QdqGraph, formats_of
    from l4opt.precision.onnx_study import OnnxStudy

    w = l4opt.spec.workloads.load("digits-cnn")
    want = {"/features/features.2/Conv": "fp8", "/head/head.1/Gemm": "fp16"}
    r = Recipe("mixed", "onnx-ptq", "int8", "entropy",
               layer_formats={"^" + k.replace(".", r"\.") + "$": v for k, v in want.items()})
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    shapes = l4opt.spec.shapes.for_workload(w)
    base = tmp_path / "fp32.onnx"
    export_torch(w.module(), w, base, batch=shapes.batch)  # as the sweep calls both
    info = quantize_mixed_onnx(str(base), str(tmp_path / "mixed.onnx"), r, w.calib_data,
                               shapes=shapes)
    m = onnx.load(str(tmp_path / "mixed.onnx"))
    got = formats_of(QdqGraph(m, "int8"), m)
    assert got["/features/features.2/Conv"] == "fp8" and got["/head/head.1/Gemm"] == "fp16"
    assert got["/features/features.5/Conv"] == "int8"
    assert info["formats_calibrated"] == ["int8", "fp8"]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 19
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    from l4opt.onnx.numerics import trt_numerics  # as the sweep and the study run it

    sess = ort.InferenceSession(trt_numerics(m)[0].SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, dict(zip(w.input_names, b)))[0]
                          for b in w.batches(w.eval_data)])
    st = OnnxStudy(w, l4opt.spec.recipes.get("int8"), None, False, tmp_path / "study")
    ref = np.concatenate(list(st.reference.values()))
    from l4opt.pipeline.drift import tensor_metrics

    assert tensor_metrics(out, ref)["cos_mean"] == pytest.approx(
        st.evaluate_formats(want)["cos_mean"], abs=1e-9)
    with pytest.raises(BadInput, match="matches no ONNX node"):
        quantize_mixed_onnx(str(base), str(tmp_path / "x.onnx"),
                            Recipe("typo", "onnx-ptq", "int8", "entropy",
                                   layer_formats={"^/nope$": "fp8"}), w.calib_data)


def test_a_mixed_recipe_sweeps_to_its_formats(tmp_path):
    from l4opt.onnx.qdq import QdqGraph, formats_of

    r = Recipe("mixed", "onnx-ptq", "int8", "entropy",
               layer_formats={r"^/features/features\.2/Conv$": "fp8"})
    row = l4opt.sweep("digits-cnn", [r], tmp_path, progress=False).rows[0]
    assert row["status"] == "ok"
    m = onnx.load(str(tmp_path / row["onnx_path"]))
    assert formats_of(QdqGraph(m, "int8"), m)["/features/features.2/Conv"] == "fp8"


def test_layer_formats_are_checked():
    with pytest.raises(BadInput, match="int4"):
        Recipe("x", "onnx-ptq", "int8", "entropy", layer_formats={"a": "int4"})
    with pytest.raises(BadInput, match="onnx-ptq path only"):
        Recipe("x", "torch-ptq", "int8", "max", layer_formats={"a": "fp8"})
    with pytest.raises(BadInput, match="regular expression"):
        Recipe("x", "onnx-ptq", "int8", "entropy", layer_formats={"(": "fp8"})
    assert "layer_formats" not in l4opt.spec.recipes.get("int8").identity()  # old keys unchanged


def _outlier_cnn_workload():
    """A user's CNN (BatchNorm, residual) whose residual sum carries one channel 40x larger
    than the rest, folded back out by the next conv: the function is unchanged, but that conv's
    per-tensor INT8 input crushes every other channel. Labels: the model's own predictions."""
    import torch
    from torch import nn

    from l4opt.spec.workloads import InputSpec, Workload, top1_accuracy

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = y + torch.relu(self.bn2(self.conv2(y)))
            y = torch.relu(self.conv3(y))
            return self.fc(y.mean((2, 3)))

    net = Net().eval()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        net.bn2.weight[0] *= 40
        net.bn2.bias[0] = net.bn2.bias[0].abs() * 40
        net.bn1.weight[0] *= 40
        net.bn1.bias[0] = net.bn1.bias[0].abs() * 40
        net.conv2.weight[:, 0] /= 40
        net.conv3.weight[:, 0] /= 40
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        labels = net(torch.from_numpy(x[192:])).argmax(1).numpy()
    return Workload("outlier-cnn", net, [InputSpec("x", ("batch", 3, 12, 12))],
                    {"x": x[:192]}, {"x": x[192:]}, top1_accuracy(), eval_labels=labels,
                    output_names=["logits"], batch_size=64, batch_range=(1, 16, 64))


def test_the_layer_that_explains_most_of_the_drift_never_ranks_last():
    w = _outlier_cnn_workload()
    res = sensitivity(w, "int8-max", progress=False)
    df = res.table().sort_values("rank")
    top_drift = df.loc[df["share_drift"].idxmax()]
    assert top_drift["share_drift"] > 0.5  # it does explain most of the output noise
    assert top_drift["rank"] <= 2 and top_drift["rank"] < len(df)
    assert {"share_task", "share_drift", "share_cosine", "only_sqnr_db"} <= set(df)


def test_rank_layers_lets_the_continuous_drift_outrank_a_flipped_label():
    """Ranking logic alone: a layer flips one label out of many, another explains 90% of the
    output noise and flips none; both are near the top, the noisy one is not last."""
    rows = [dict(layer=n, only_drop=d, only_sqnr_db=s, only_cos_mean=c, recovery=rec,
                 cos_recovery=cr) for n, d, s, c, rec, cr in (
        ("flips", 1 / 450, 30.0, 0.999, 1 / 450, 0.0001),
        ("noisy", 0.0, 10.0, 0.95, 0.0, 0.04),
        ("quiet", 0.0, 40.0, 0.9999, 0.0, 0.0))]
    ranked = rank_layers(rows)
    assert [r["layer"] for r in ranked][:2] in (["flips", "noisy"], ["noisy", "flips"])
    assert ranked[-1]["layer"] == "quiet"


def test_onnx_exclusions_keep_those_nodes_unquantized_in_onnx_ptq(run_dir, tmp_path):
    from l4opt.precision.greedy import _base_export
    from l4opt.results.store import Store

    w = l4opt.spec.workloads.load("digits-cnn")
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


def test_torch_recipe_impossible_budget_says_so_and_keeps_every_trial(tmp_path):
    """A cosine of 1 needs every layer in high precision (a negative max_drop, which earlier
    made this budget, is refused now): the saved recipe then quantizes nothing, so its sweep is
    no result and the search says the budget is not met."""
    res = search("digits-cnn", "int8-max", Budget(min_cosine=1.0), tmp_path, strategy="greedy",
                 eval_samples=96, progress=False)
    d = res.to_dict()
    assert not d["met"] and "NOT MET" in d["message"], d["message"]
    assert d["final_status"] != "ok"
    assert "nothing is left to quantize" in d["message"]
    assert len(res.candidates) >= 5  # fell back every layer, one at a time
    con = sqlite3.connect(tmp_path / "results.sqlite")
    n = con.execute("SELECT count(*) FROM trials WHERE row LIKE '%\"strategy\": \"greedy\"%'").fetchone()[0]
    assert n == len(res.candidates)
    assert d["latency_batch"] == l4opt.spec.shapes.deploy_batch(l4opt.spec.workloads.load("digits-cnn"))


def test_budget_and_recipe_errors():
    with pytest.raises(BadInput, match="exactly one"):
        Budget()
    with pytest.raises(BadInput, match="exactly one"):
        Budget(max_drop=0.1, min_cosine=0.9)
    with pytest.raises(BadInput, match="cosine"):
        Budget(min_cosine=2)
    with pytest.raises(BadInput, match="quantizes nothing"):
        sensitivity("digits-cnn", "baseline", progress=False)
    with pytest.raises(BadInput, match="strategy"):
        search("digits-cnn", "int8", Budget(max_drop=0.1), "unused", strategy="random")


def test_cli_search_json(run_dir):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "l4opt.cli", "search", "digits-cnn", "--recipe",
                          "int8", "--max-drop", "0.01", "--out", str(run_dir), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout)
    assert d["met"] and d["latency_source"] == "estimated-l4" and d["fraction_quantized"] > 0
    assert d["drift_backend"] == "onnxruntime-cpu, TensorRT numerics" and "bisect" in d["strategies"]


def test_toggling_a_layer_equals_recalibrating_without_it():
    """The premise of calibrate-once: scales do not depend on which other layers are quantized."""
    import copy

    import torch

    from l4opt.spec import recipes
    from l4opt.spec import workloads
    from l4opt.pipeline.drift import tensor_metrics
    from l4opt.pipeline.quantize import quantize_torch
    from l4opt.pipeline.runners import TorchRunner, run_all
    from l4opt.precision.common import one_output as _one
    from l4opt.precision.torch_study import Calibrated, torch_form

    w = workloads.load("digits-cnn")
    cal = Calibrated(w, recipes.get("int8-percentile"), 128, progress=False)
    layer = cal.layers[1]
    once = cal.evaluate([x for x in cal.layers if x != layer])
    base = torch_form(recipes.get("int8-percentile"))
    model = copy.deepcopy(w.module())

    def loop(m):
        with torch.no_grad():
            # at the deployment batch, as Calibrated calibrates
            for b in w.batches(w.calib_data, cal.shapes.batch):
                m(*[torch.from_numpy(np.ascontiguousarray(x)) for x in b])

    quantize_torch(model, Recipe(base.name, base.route, base.format, base.algorithm,
                                 disabled_layers=(layer,)), loop)
    out = run_all(TorchRunner(model), w.batches(cal.eval), progress=False)
    again = tensor_metrics(_one(out) if isinstance(out, dict) else out, _one(cal.reference))
    assert again["cos_mean"] == pytest.approx(once["cos_mean"], abs=1e-7)
    assert again["sqnr_db"] == pytest.approx(once["sqnr_db"], abs=1e-5)


def test_precision_map_of_a_real_search(found):
    pytest.importorskip("plotly")
    from l4opt.ui import plots

    lm = found.layers()
    assert list(lm["order"]) == sorted(lm["order"]) and set(lm["format"]) <= {"int8", "fp8", "fp16"}
    assert lm.loc[lm["kind"] == "gemm", "est_ms"].notna().all()
    fig = plots.precision_map(found.layer_map, batch=found.chosen["latency_batch"])
    bars = [t for t in fig.data if t.type == "bar"]
    assert sum(len(t.x) for t in bars) == len(lm)
    assert sum(sum(t.y) for t in bars) == pytest.approx(lm["est_ms"].fillna(0).sum())


def test_a_user_cnn_all_quantized_point_is_its_sweep_row(tmp_path):
    """Item 1 on a user's model: the study of an ONNX-PTQ recipe starts from the sweep's own
    Q/DQ graph, so its all-quantized point is the sweep's row."""
    row = l4opt.sweep(_outlier_cnn_workload(), "int8", tmp_path, progress=False).rows[0]
    assert row["status"] == "ok", row.get("error")
    res = sensitivity(_outlier_cnn_workload(), "int8", progress=False)
    assert res.drift_backend == "onnxruntime-cpu, TensorRT numerics"
    for k in ("metric", "cos_mean", "sqnr_db"):
        assert res.all_quantized[k] == pytest.approx(row[k], rel=1e-6, abs=1e-9), k
    kinds = set(res.table()["kind"])
    assert "gemm" in kinds  # GEMM/conv layers, each with its input and weight quantizers


def test_report_shows_the_chosen_map_and_the_front_with_bands(found, run_dir):
    pytest.importorskip("plotly")
    from l4opt.ui.report import build_html

    text = build_html(run_dir)
    i = text.index("id=mixed")
    section = text[i:text.index("id=sensitivity")]
    assert "Per-layer precision" in section and "Search candidates" in section
    assert "estimate band" in section and f"at batch {found.chosen['latency_batch']}" in section
    assert "cannot be told apart" in section
