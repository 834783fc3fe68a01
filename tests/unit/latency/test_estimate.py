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


# ------------------------------------------------------------------ FP8 / INT8 / FP16 constants

def _feat(klass, comp, mem):
    return {"klass": klass, "compute_s": comp, "memory_s": mem}


def test_fp8_efficiency_is_tied_to_int8_without_fp8_rows_and_fitted_with_them():
    from l4opt.latency import costmodel

    old = costmodel.Constants.from_dict({"tc_eff": 0.6, "tc8_eff": 0.5, "mem_eff": 0.8,
                                          "kernel_us": 2.0})  # a fit file from before FP8
    assert old.tcf8_eff is None and old.fp8_eff == 0.5
    truth = costmodel.Constants(tc_eff=0.6, tc8_eff=0.5, mem_eff=0.8, kernel_us=2.0, tcf8_eff=0.3)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        kl = rng.choice([0, 1, 2], size=30).tolist()
        f = _feat(kl, (10 ** rng.uniform(-6, -4, 30)).tolist(), (10 ** rng.uniform(-6.5, -5, 30)).tolist())
        rows.append({"features": f, "measured_ms": costmodel.predict_ms(f, truth)})
    tied = costmodel.fit(rows)
    assert tied.tcf8_eff is None and tied.fp8_eff == tied.tc8_eff
    assert tied.tc8_eff == pytest.approx(0.5, rel=0.03)
    for i in range(6):  # rows with FP8 tensor-core work make the FP8 efficiency identifiable
        kl = rng.choice([1, 2, 3], size=30).tolist()
        f = _feat(kl, (10 ** rng.uniform(-6, -4, 30)).tolist(), (10 ** rng.uniform(-6.5, -5, 30)).tolist())
        rows.append({"features": f, "measured_ms": costmodel.predict_ms(f, truth)})
    got = costmodel.fit(rows)
    assert got.tcf8_eff == pytest.approx(0.3, rel=0.03) and got.tc8_eff == pytest.approx(0.5, rel=0.03)
    assert costmodel.Constants.from_dict(got.to_dict()) == got


def test_fp8_on_l4_is_its_own_kernel_class_and_fp16_where_fp8_does_not_run():
    from l4opt.latency import costmodel

    k = costmodel.Kernel("fc", "gemm", "fp8", flops=1e9)
    assert costmodel.klass(k, estimate.get_gpu("L4")) == costmodel.KLASS_FP8
    assert costmodel.klass(k, estimate.get_gpu("T4")) == costmodel.KLASS_FP16
    assert costmodel.klass(costmodel.Kernel("fc", "gemm", "int8", flops=1e9)) == costmodel.KLASS_INT8


def _conv_net(fmt, chans=64):
    """x -> Q/DQ -> conv 3x3 (chans -> chans, Q/DQ weights) -> relu, at fmt."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(chans, chans, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             helper.make_tensor("zp", fmt, [], [0]),
             helper.make_tensor("wq", fmt, list(w.shape), np.zeros(w.size, int).tolist())]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", chans, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def test_fp8_estimates_carry_the_evidence_band_and_say_where_it_comes_from():
    from l4opt.latency import costmodel

    base = estimate.fitted()
    ev = {"errors": [-0.3, 0.5], "rows": ["sdxl-fp8-int8-x (FP8/INT8, RTX 4090)"],
          "evidence": "the sm_89 pairs"}
    fit = estimate.Fitted(base.constants, base.q_low, base.q_high, base.source,
                          costmodel.COSTMODEL_VERSION, dict(base.kind_errors, fp8_gemm=ev))
    f8 = estimate.estimate_onnx(_mlp(True, TensorProto.FLOAT8E4M3FN), "L4", batch=512, fit=fit)
    i8 = estimate.estimate_onnx(_mlp(True), "L4", batch=512, fit=fit)
    assert f8.total_ms == pytest.approx(i8.total_ms)  # tied efficiency, same rules on a GEMM
    assert f8.low_ms == pytest.approx(f8.total_ms / (1 + max(0.5, base.q_high)))
    assert "the sm_89 pairs" in f8.band_source and "FP8 tensor-core work" in f8.band_source
    # FP8 GEMMs: the slow side reaches the graph with them at FP16 speed, citing NVIDIA's L4
    # BERT engine configured use_fp8 that ran at its FP16 engine's speed
    assert "use_fp8=True" in f8.band_source and "FP8 GEMM kernel(s)" in f8.band_source
    assert "use_fp8" not in i8.band_source
    f16 = estimate.estimate_onnx(_mlp(False), "L4", batch=512, fit=fit)
    assert f8.high_ms >= max(f8.total_ms / 0.7, f16.total_ms / 0.7) * 0.99
    assert any("the sm_89 pairs" in n for n in f8.notes) and "sm_89" not in i8.band_source
    shipped = estimate.estimate_onnx(_mlp(True, TensorProto.FLOAT8E4M3FN), "L4", batch=512)
    assert "NOT fitted" in shipped.band_source and shipped.high_ms > shipped.total_ms / (1 + base.q_low)
    # FP8 convs: the slow side reaches the graph with those convs at FP16 speed (#4081)
    c8 = estimate.estimate_onnx(_conv_net(TensorProto.FLOAT8E4M3FN), "L4", batch=16, fit=fit)
    c16 = estimate.estimate_onnx(_conv_net(TensorProto.INT8), "L4", batch=16, fit=fit)
    assert "issues/4081" in c8.band_source and "issues/4081" not in c16.band_source
    lay = c8.layers.set_index("layer").loc["conv"]
    fp16_speed = c8.total_ms + lay["compute_ms"] * (fit.constants.tc8_eff / fit.constants.tc_eff * 2 - 1)
    assert c8.high_ms >= fp16_speed / (1 + min(base.q_low, -0.3)) * 0.99
