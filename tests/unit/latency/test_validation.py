"""Graphs the estimator refuses with the reason (issue 18 item 8, issue 19 item 5): empty,
no nodes, a cycle, a tensor nothing produces, inconsistent shapes, sizes beyond the GPU."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from l4opt.errors import BadInput
from l4opt.latency import estimate
from l4opt.latency.graph_shapes import ShapeMismatch


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _matmul(k=4, n=5, batch_shape=("batch", 4)):
    w = numpy_helper.from_array(np.ones((k, n), np.float32), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                  [_vi("x", list(batch_shape))], [_vi("y", None)], [w])


def test_a_good_graph_is_estimated():
    assert estimate.estimate_onnx(_matmul(), batch=2).total_ms > 0


def test_an_empty_file_is_refused_and_the_cli_exits_2(tmp_path, capsys):
    from l4opt import cli

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(BadInput, match="empty"):
        estimate.estimate_onnx(empty)
    assert cli.main(["estimate", "--onnx", str(empty)]) == 2
    assert "empty (0 bytes)" in capsys.readouterr().err


def test_a_graph_with_no_nodes_is_refused(tmp_path):
    m = _model([], [_vi("x", [1, 4])], [_vi("x", [1, 4])])
    with pytest.raises(BadInput, match="no nodes"):
        estimate.estimate_onnx(m)
    p = tmp_path / "blank.onnx"
    onnx.save(onnx.ModelProto(ir_version=8), str(p))  # a model with no graph at all
    with pytest.raises(BadInput, match="no nodes"):
        estimate.estimate_onnx(p)


def test_a_cycle_is_refused():
    # a = x + b; b = a * x: each node waits for the other
    m = _model([helper.make_node("Add", ["x", "b"], ["a"], name="add"),
                helper.make_node("Mul", ["a", "x"], ["b"], name="mul"),
                helper.make_node("Relu", ["b"], ["y"], name="relu")],
               [_vi("x", [2, 4])], [_vi("y", [2, 4])])
    with pytest.raises(BadInput, match=r"cycle: 3 node\(s\).*'add'"):
        estimate.estimate_onnx(m)


def test_a_node_reading_a_tensor_nothing_produces_is_refused():
    m = _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")],
               [_vi("x", [2, 4])], [_vi("y", [2, 4])])
    with pytest.raises(BadInput, match="reads tensor 'ghost', which no node"):
        estimate.estimate_onnx(m)


def test_inconsistent_shapes_are_refused():
    # MatMul [batch, 3] x [4, 5]: ONNX's strict shape inference says the dims are incompatible
    with pytest.raises(ShapeMismatch, match="shape inference.*Incompatible dimensions"):
        estimate.estimate_onnx(_matmul(k=4, batch_shape=("batch", 3)), batch=2)
    # a Reshape to a fixed shape of another element count (ONNX's inference does not check it)
    shape = numpy_helper.from_array(np.array([3, 3], np.int64), "shape")
    m = _model([helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
                helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")],
               [_vi("x", ["batch", 4])], [_vi("y", None)],
               [shape, numpy_helper.from_array(np.ones((3, 2), np.float32), "w")])
    with pytest.raises(ShapeMismatch, match=r"Reshape 'reshape' turns \[2, 4\] \(8 elements\) "
                                            r"into \[3, 3\] \(9\)"):
        estimate.estimate_onnx(m, batch=2)
    # a conv whose weight does not match its input's channels
    w = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
               [_vi("x", ["batch", 3, 8, 8])], [_vi("y", None)], [w])
    with pytest.raises(ShapeMismatch, match=r"Conv 'conv': input \[2, 3, 8, 8\] has 3 channels, "
                                            r"weight \[8, 4, 3, 3\] x group 1 expects 4"):
        estimate.estimate_onnx(m, batch=2)


def _huge_weight_model():
    """x [batch, 2^31] @ w [2^31, 2^31], the weight declared by its dims (no data)."""
    w = TensorProto()
    w.name, w.data_type = "w", TensorProto.FLOAT16
    w.dims.extend([2 ** 31, 2 ** 31])
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                  [_vi("x", ["batch", 2 ** 31], TensorProto.FLOAT16)], [_vi("y", None)], [w])


def test_a_weight_beyond_the_gpu_memory_is_refused(tmp_path):
    with pytest.raises(BadInput, match=r"weight 'w' of shape \[2147483648, 2147483648\] is "
                                       r"9,223,372,036.9 GB, more than the L4's 24 GB"):
        estimate.estimate_onnx(_huge_weight_model())
    p = tmp_path / "huge.onnx"
    onnx.save(_huge_weight_model(), str(p))
    with pytest.raises(BadInput, match="more than the T4's 16 GB"):
        estimate.estimate_onnx(p, gpu="T4")


def test_weights_that_sum_beyond_the_gpu_memory_are_refused():
    ws = []
    for i in range(4):  # 4 x 8 GB (FP32, declared dims)
        w = TensorProto()
        w.name, w.data_type = f"w{i}", TensorProto.FLOAT
        w.dims.extend([2 ** 16, 2 ** 15])
        ws.append(w)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["y0"])] + [
        helper.make_node("Add", [f"y{i - 1}", f"w{i}"], [f"y{i}"]) for i in range(1, 4)]
    m = _model(nodes, [_vi("x", ["batch", 2 ** 16])], [_vi("y3", None)], ws)
    with pytest.raises(BadInput, match=r"weights total 34.4 GB, more than the L4's 24 GB"):
        estimate.estimate_onnx(m)


def test_an_activation_beyond_the_gpu_memory_is_refused():
    m = _matmul(k=4096, n=4096, batch_shape=("batch", 4096))
    assert estimate.estimate_onnx(m, batch=8).total_ms > 0
    # batch 2^21: x is 2^21 x 4096 FP16 = 17 GB; y too; each fits, the L4's 24 GB is not
    # exceeded by one tensor; at 2^22 each is 34 GB
    with pytest.raises(BadInput, match=r"tensor '(x|y)' of shape \[4194304, 4096\] would take "
                                       r"34.4 GB"):
        estimate.estimate_onnx(m, batch=2 ** 22)
