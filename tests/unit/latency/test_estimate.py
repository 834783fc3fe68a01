"""The latency estimator: GPU table, ONNX and engine inputs, validation on measured engines."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from l4opt.latency import trtexec as engine_report
from l4opt.latency import estimate
from l4opt.errors import BadInput
from l4opt.spec import row as rowspec


def _mlp(qdq: bool, fmt=TensorProto.INT8, hidden=1024):
    """x[batch, 1024] @ W[1024, hidden] (+ Q/DQ on data and weights when qdq)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(1024, hidden)).astype(np.float32)
    nodes, inits = [], []
    x = "x"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  helper.make_tensor("zp", fmt, [], [0]),
                  helper.make_tensor("wq", fmt, [1024, hidden], np.zeros(1024 * hidden, int).tolist())]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"])]
        x, wname = "xd", "wd"
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        wname = "w"
    nodes += [helper.make_node("MatMul", [x, wname], ["y0"], name="fc"),
              helper.make_node("Relu", ["y0"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def test_gpu_table_and_lookup():
    l4 = estimate.get_gpu("nvidia l4")
    assert (l4.sms, l4.bandwidth_gbs, l4.l2_mb, l4.tdp_w) == (58, 300, 48, 72)
    assert l4.tflops["fp8"] == l4.tflops["int8"] == 2 * l4.tflops["fp16"] and l4.fp8
    assert not estimate.get_gpu("TITAN RTX").fp8 and not estimate.get_gpu("t4").fp8
    with pytest.raises(BadInput, match="unknown GPU 'B200'; known: L4, T4, A10G, L40S"):
        estimate.get_gpu("B200")
    # the data table's GPUs with their own figures (l4opt/data/gpus.csv), the L4 as fitted
    t4 = estimate.get_gpu("T4")
    assert (t4.sms, t4.tflops["fp16"], t4.tflops["fp8"]) == (40, 65, None)
    assert set(estimate.all_gpus()) >= {"L4", "T4", "A10G", "L40S", "A100", "H100", "TITAN RTX"}


def test_qdq_matmul_runs_int8_and_is_faster_than_fp16():
    q = estimate.estimate_onnx(_mlp(True), "L4", batch=512)
    f = estimate.estimate_onnx(_mlp(False), "L4", batch=512)
    fc_q = q.layers.set_index("layer").loc["fc"]
    assert fc_q["precision"] == "int8" and f.layers.set_index("layer").loc["fc", "precision"] == "fp16"
    assert fc_q["flops"] == pytest.approx(2 * 512 * 1024 * 1024)
    assert q.total_ms < f.total_ms
    # the DQ and Relu fuse into the matmul's kernel; quantizing the network input is a kernel
    # of its own, as in TensorRT (see the fixtures' standalone QuantizeLinear_2)
    assert list(q.layers[q.layers.kernel]["op_type"]) == ["QuantizeLinear", "MatMul"]
    assert q.source == "estimated-l4" and "ESTIMATE" in q.to_text() and "band" in q.to_text()
    json.dumps(q.to_dict())


def test_fp8_on_a_gpu_without_fp8_is_priced_at_fp16_and_says_so():
    e = estimate.estimate_onnx(_mlp(True, TensorProto.FLOAT8E4M3FN), "T4", batch=64)
    assert e.layers.set_index("layer").loc["fc", "precision"] == "fp8"
    assert any("no FP8" in n for n in e.notes)


def test_dynamic_axis_without_value_is_a_clear_error():
    m = _mlp(False)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "hidden_in"
    with pytest.raises(BadInput, match="hidden_in"):
        estimate.estimate_onnx(m, "L4")
    with pytest.raises(BadInput, match="batch must be a positive"):
        estimate.estimate_onnx(_mlp(False), "L4", batch=0)


def test_named_axes_take_their_values_and_the_batch_axis_takes_batch():
    m = _mlp(False)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 0
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "hidden_in"
    e = estimate.estimate_onnx(m, "L4", batch=4, dynamic_dims={"hidden_in": 1024, "batch": 99})
    assert e.layers.set_index("layer").loc["fc", "flops"] == pytest.approx(2 * 4 * 1024 * 1024)


@pytest.mark.parametrize("name", ["mobilenet.qat.onnx", "mobilenet_v2_residuals.qat.onnx"])
def test_engine_graph_path_on_measured_engines(trtexec_dir, name):
    """The engine-graph path (layer list as TensorRT built it) against the two measured TITAN
    RTX engines. Its constants are the L4 fit, not tuned on these engines, so this checks the
    path (layers matched to the profile, fusions taken from the engine, a sane total), not the
    fit; the L4 fit's own error is the leave-one-out in l4opt/data/l4_fit.json."""
    ex = engine_report.load_engine_export(trtexec_dir / f"{name}.engine.graph.json")
    v = estimate.validate_on_export(ex, "TITAN RTX")
    print(name, {k: v[k] for k in ("estimated_ms", "measured_median_ms", "end_to_end_error",
                                   "per_layer_median_abs_error")})
    assert v["layers_compared"] >= 55
    assert abs(v["end_to_end_error"]) < 0.5
    assert v["per_layer_median_abs_error"] < 0.8
    est = estimate.estimate_engine(ex.layers, "TITAN RTX")
    assert "NOT validated on TITAN RTX" in est.band_source


def test_engine_estimate_on_l4_is_labelled(trtexec_dir):
    layers = engine_report.read_layer_info(trtexec_dir / "mobilenet.qat.onnx.engine.graph.json")
    e = estimate.estimate_engine(layers, "L4", batch=8)
    assert e.source == "estimated-l4" and e.batch == 8 and e.total_ms > 0
    assert set(e.layers["precision"]) >= {"int8", "fp16"}
    assert e.low_ms <= e.total_ms <= e.high_ms


def _mlp_context(tmp_path):
    """A sweep's context for a small torch MLP (real export, no trial run)."""
    import torch

    from l4opt.results.store import Store
    from l4opt.pipeline.context import Context
    from l4opt.spec.workloads import InputSpec, Metric, Workload

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 8)).eval()
    x = np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32)
    w = Workload(name="mlp", model=model, inputs=[InputSpec("x", ("batch", 32))],
                 calib_data={"x": x}, eval_data={"x": x},
                 metric=Metric("none", lambda o, r, l: 0.0), output_names=["y"],
                 batch_range=(1, 4, 8))
    ctx = Context(w, Store(tmp_path / "run"))
    ctx.prepare()
    return ctx


def test_trial_key_covers_cost_model_and_fit_and_rows_say_their_band(tmp_path, monkeypatch):
    from l4opt.latency import costmodel
    from l4opt.spec import recipes
    from l4opt.pipeline import trial

    ctx = _mlp_context(tmp_path)
    r = recipes.get("int8")
    key = ctx.key(r)
    assert ctx.key(r) == key
    assert ctx.identity()["latency_fit"] == estimate.fit_stamp()
    assert f"v{costmodel.COSTMODEL_VERSION}" in estimate.fit_stamp()
    monkeypatch.setattr(estimate, "fit_stamp", lambda run_dir=None: "costmodel-v2/fit-refitted")
    refit = ctx.key(r)
    assert refit != key
    monkeypatch.setattr(costmodel, "COSTMODEL_VERSION", costmodel.COSTMODEL_VERSION + 1)
    assert ctx.key(r) not in (key, refit)
    monkeypatch.undo()
    # the row's latency columns carry the band's source (band widened or not, stale or not)
    row = {"onnx_path": str(ctx._base.relative_to(ctx.store.run_dir)), "notes": []}
    trial.add_latency(ctx, row, measure=False)
    assert row["latency_source"] == "estimated-l4"
    assert row["latency_band_source"] and "leave-one" in row["latency_band_source"]
    measured = rowspec.measured_update(row, {"latency_ms": 0.5, "latency_source": "measured-l4"})
    assert measured["est_latency_band_source"] == row["latency_band_source"]
    assert "measured" in measured["latency_band_source"]


def test_row_dims_use_the_recorded_axes_without_the_batch_axis():
    row = {"inputs": [{"name": "ids", "shape": ["b", "seq"]}, {"name": "m", "shape": ["b", "seq"]}],
           "shapes": {"batch": 4, "axes": {"b": 4, "seq": 128}}, "dims": {"seq": 96}}
    assert estimate._row_dims(row) == {"seq": 96}
    assert estimate._row_dims({"shapes": {"axes": {"seq": 7}}}) == {"seq": 7}
