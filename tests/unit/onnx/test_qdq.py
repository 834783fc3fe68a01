"""l4opt.onnx.qdq: Q/DQ graphs read as layers, variants built per layer (checked by
onnx.checker and run in ONNX Runtime against NumPy), formats read back, the per-layer probe and
the calibration outlier note. Graphs are hand-built with onnx.helper (tests/models.py)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import models
from l4opt.onnx.qdq import QdqGraph, calibration_outliers, formats_of, probe


def run(model, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"x": x})))


def inits(model):
    return {i.name: nh.to_array(i) for i in model.graph.initializer}


def qi8(a, s):
    return np.clip(np.rint(a / np.float32(s)), -128, 127) * np.float32(s)


def qf8(a, s):
    v = np.clip(a / np.float32(s), -448, 448).astype(ml_dtypes.float8_e4m3fn)
    return v.astype(np.float32) * np.float32(s)


X = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)


@pytest.fixture
def int8():
    return QdqGraph(models.qdq_layers("int8"), "int8")


@pytest.fixture
def fp8():
    return QdqGraph(models.qdq_layers("fp8"), "fp8")


def test_layers_of_a_hand_built_graph(int8):
    assert set(int8.pairs) == {"DQ_x", "DQ_w1", "DQ_h1"}
    mm1, mm2, add = int8.layers["mm1"], int8.layers["mm2"], int8.layers["add"]
    # both operands through Q/DQ (the weight through a Transpose): a quantized GEMM layer
    assert (mm1.kind, mm1.quantized) == ("gemm", True)
    assert sorted(mm1.edges) == [("mm1", 0, "DQ_x"), ("w1_T", 0, "DQ_w1")]
    # one operand through Q/DQ, the other a plain initializer: runs in high precision
    assert (mm2.kind, mm2.quantized, mm2.edges) == ("gemm", False, [])
    # an Add reading a DQ: a layer of its own, kind 'other'
    assert (add.kind, add.op_type, add.edges) == ("other", "Add", [("add", 0, "DQ_h1")])
    assert int8.choices == ["mm1", "add"] and int8.gemm_layers == ["mm1", "mm2"]


def test_unnamed_or_duplicate_node_names_are_refused():
    m = models.qdq_matmul()
    m.graph.node[-1].name = ""
    m.graph.node[0].name = ""
    with pytest.raises(ValueError, match="unnamed or duplicate node names"):
        QdqGraph(m, "int8")


def test_build_without_formats_is_the_same_graph(int8):
    m = int8.build()
    assert [n.name for n in m.graph.node] == [n.name for n in int8.model.graph.node]
    assert formats_of(int8, m) == {"mm1": "int8", "mm2": "fp16"}


def test_build_fp16_removes_the_layers_pairs_and_passes_the_checker(int8):
    m = int8.build({"mm1": "fp16"})
    names = {n.name for n in m.graph.node}
    assert not names & {"Q_x", "DQ_x", "Q_w1", "DQ_w1"}
    assert {"Q_h1", "DQ_h1"} <= names                      # the add and mm2 still read it
    nodes = {n.name: n for n in m.graph.node}
    assert nodes["mm1"].input[0] == "x" and nodes["w1_T"].input[0] == "W1"
    assert {"sx", "sw1"}.isdisjoint(inits(m)) and "sh1" in inits(m)   # unread scales pruned
    onnx.checker.check_model(m, full_check=True)
    assert formats_of(int8, m) == {"mm1": "fp16", "mm2": "fp16"}
    w = inits(m)
    h1 = qi8(X @ w["W1"].T, 0.1)
    np.testing.assert_allclose(run(m, X)["y"], h1 + h1 @ w["W2"], rtol=1e-5, atol=1e-5)
    assert len(int8.model.graph.node) == 10                # the source graph is untouched


def test_build_fp16_of_an_other_layer_keeps_the_pair_for_its_other_readers(int8):
    m = int8.build({"add": "fp16"})
    nodes = {n.name: n for n in m.graph.node}
    assert nodes["add"].input[0] == "h1" and nodes["mm2"].input[0] == "h1_dq"
    assert "DQ_h1" in nodes


def test_build_a_layer_in_the_other_format_splices_its_pairs(int8, fp8):
    m = int8.build({"mm1": "fp8"}, fp8)
    onnx.checker.check_model(m, full_check=True)
    assert formats_of(int8, m) == {"mm1": "fp8", "mm2": "fp16"}
    names = {n.name for n in m.graph.node}
    assert {"Q_x__fp8", "DQ_x__fp8", "Q_w1__fp8", "DQ_w1__fp8"} <= names
    assert not names & {"Q_x", "DQ_x", "Q_w1", "DQ_w1"}
    w = inits(m)
    assert w["zp__fp8"].dtype == ml_dtypes.float8_e4m3fn and float(w["sx__fp8"]) == pytest.approx(0.01)
    h1 = qi8(qf8(X, 0.01) @ qf8(w["W1"], 0.005).T, 0.1)
    np.testing.assert_allclose(run(m, X)["y"], h1 + h1 @ w["W2"], rtol=1e-5, atol=1e-5)


def test_build_refuses_unknown_formats_and_a_missing_other_graph(int8, fp8):
    with pytest.raises(ValueError, match="format 'fp4' is not one of"):
        int8.build({"mm1": "fp4"})
    with pytest.raises(ValueError, match="wants fp8 but no fp8 graph was given"):
        int8.build({"mm1": "fp8"})
    only_x = QdqGraph(models.qdq_matmul("fp8"), "fp8")       # has no pair for W1
    assert int8.can_take("mm1", fp8) and not int8.can_take("mm1", only_x)
    assert not int8.can_take("mm1", None) and not int8.can_take("mm2", fp8)
    with pytest.raises(ValueError, match="ModelOpt left it unquantized in fp8"):
        int8.build({"mm1": "fp8"}, only_x)


def test_a_shape_read_of_a_dq_output_is_rewired_to_the_float_tensor():
    m = models.qdq_matmul()
    m.graph.node.append(h.make_node("Shape", ["x_dq"], ["s"], name="shape"))
    m.graph.output.append(h.make_tensor_value_info("s", TP.INT64, [2]))
    qg = QdqGraph(m, "int8")
    assert qg.shape_edges == [("shape", 0, "DQ_x")] and qg.choices == ["mm"]
    built = qg.build({"mm": "fp16"})
    assert {n.name: n for n in built.graph.node}["shape"].input[0] == "x"
    assert not {"Q_x", "DQ_x"} & {n.name for n in built.graph.node}


def test_formats_of_reads_int8_and_fp8_zero_points(fp8):
    assert formats_of(fp8, fp8.model) == {"mm1": "fp8", "mm2": "fp16"}
    m = models.qdq_matmul("fp8", 21)
    assert formats_of(QdqGraph(m, "fp8"), m) == {"mm": "fp8"}


def test_probe_taps_each_layer_in_each_format_from_the_same_float_activations():
    graphs = {"int8": QdqGraph(models.qdq_matmul("int8"), "int8"),
              "fp8": QdqGraph(models.qdq_matmul("fp8"), "fp8")}
    m, taps = probe(graphs, "int8")
    assert taps == {"mm": {"ref": ["y"], "int8": ["y__probe_int8"], "fp8": ["y__probe_fp8"]}}
    out = run(m, X)
    w = inits(graphs["int8"].model)["W"]
    np.testing.assert_allclose(out["y"], X @ w, rtol=1e-5, atol=1e-6)   # the float model
    np.testing.assert_allclose(out["y__probe_int8"], qi8(X, 0.05) @ qi8(w, 0.02), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["y__probe_fp8"], qf8(X, 0.05) @ qf8(w, 0.02), rtol=1e-5, atol=1e-5)


def activations(scales, fmt="int8", producers=None):
    """x -> Relu -> [producer_i -> Q/DQ(scale_i)]...: one quantized activation per scale."""
    producers = producers or ["Relu"] * len(scales)
    nodes, ins, prev = [], [], "x"
    vals = [models.zero_point("zp", fmt)]
    for i, (s, op) in enumerate(zip(scales, producers)):
        vals.append(nh.from_array(np.float32(s), f"s{i}"))
        args = [prev, prev] if op == "Add" else [prev]
        nodes.append(h.make_node(op, args, [f"a{i}"], name=f"{op.lower()}{i}"))
        nodes += models.qdq(f"a{i}", f"s{i}", "zp", f"a{i}")
        prev = f"a{i}_dq"
    return models.make_model(nodes, [h.make_tensor_value_info("x", TP.FLOAT, [2, 4])],
                             [h.make_tensor_value_info(prev, TP.FLOAT, [2, 4])], vals)


def test_calibration_outliers_names_an_outlier_scale_and_its_producer(tmp_path):
    p = models.save(activations([0.01, 0.012, 0.011, 0.5], producers=["Relu", "Relu", "Relu", "Add"]),
                    tmp_path / "a.onnx")
    note = calibration_outliers(p)
    med = np.median([0.01 * 127, 0.012 * 127, 0.011 * 127, 0.5 * 127])
    assert note.startswith("1 of 4 quantized activations have a calibrated amax over 8x the median")
    assert f"a3 (residual add) amax {0.5 * 127:.3g} = {0.5 * 127 / med:.0f}x" in note
    assert "a0" not in note and "a1" not in note


def test_calibration_outliers_uses_the_fp8_range(tmp_path):
    note = calibration_outliers(models.save(activations([0.01, 0.01, 0.2], "fp8"), tmp_path / "f.onnx"))
    assert f"amax {0.2 * 448:.3g}" in note and "a2 (Relu output)" in note


def test_calibration_outliers_without_an_outlier_or_with_too_few(tmp_path):
    even = calibration_outliers(models.save(activations([0.01, 0.012, 0.011]), tmp_path / "e.onnx"))
    assert even.startswith("no activation's calibrated amax stands out")
    # the weight's Q reads an initializer: one activation only
    few = calibration_outliers(models.save(models.qdq_matmul(), tmp_path / "m.onnx"))
    assert few.startswith("only 1 quantized activation(s): too few to compare")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    assert calibration_outliers(bad).startswith("calibration statistics unreadable")
