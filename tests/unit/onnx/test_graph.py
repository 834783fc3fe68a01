"""l4opt.onnx.graph: the artifact record, GEMM and Q/DQ recognition, the FP32 export check and
the files shipped beside a graph; hand-built graphs (onnx.helper) and one torch export."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import models
from l4opt.errors import BadInput, StageFailed
from l4opt.onnx.graph import (check_graph, describe, gemm_nodes, is_dq, is_q, is_qdq_op,
                              onnx_files, quantized_gemm_nodes, write_onnx_files)
from l4opt.files import file_sha256

F = TP.FLOAT


def vi(name, shape=("n", 4), t=F):
    return h.make_tensor_value_info(name, t, list(shape))


def test_q_dq_recognition():
    q = h.make_node("QuantizeLinear", ["a", "s"], ["b"])
    dq = h.make_node("DequantizeLinear", ["b", "s"], ["c"])
    trt_q = h.make_node("TRT_FP8QuantizeLinear", ["a", "s"], ["b"], domain="trt")
    assert is_q(q) and is_q(trt_q) and not is_q(dq)
    assert is_dq(dq) and not is_dq(q)
    assert is_qdq_op("DynamicQuantizeLinear") and not is_qdq_op("MatMul")


@pytest.mark.parametrize("fmt, opset, dtype", [("int8", 19, "int8"), ("int8", 21, "int8"),
                                               ("fp8", 19, "float8e4m3fn"),
                                               ("fp8", 21, "float8e4m3fn")])
def test_describe_counts_qdq_and_names_the_dtype(tmp_path, fmt, opset, dtype):
    p = models.save(models.qdq_matmul(fmt, opset), tmp_path / "m.onnx")
    a = describe(p)
    assert a.opset == opset and a.inputs == ["x"] and a.outputs == ["y"]   # initializers left out
    assert a.qdq == {"QuantizeLinear": 2, "DequantizeLinear": 2}
    assert a.quantized_dtypes == [dtype] and a.custom_ops == [] and a.num_nodes == 5
    assert a.sha256 == file_sha256(p) and a.to_dict()["path"] == str(p)


def test_describe_reads_constant_zero_points_custom_ops_and_the_uint8_default(tmp_path):
    nodes = [h.make_node("Constant", [], ["zp"], name="c", value=models.zero_point("v", "int8")),
             h.make_node("QuantizeLinear", ["x", "s", "zp"], ["q1"], name="q1"),
             h.make_node("QuantizeLinear", ["x", "s"], ["q2"], name="q2"),      # no zero point
             h.make_node("TRT_FP8QuantizeLinear", ["x", "s"], ["q3"], name="q3", domain="trt")]
    m = models.make_model(nodes, [vi("x")], [vi("q1", t=TP.INT8), vi("q2", t=TP.UINT8),
                                             vi("q3", t=TP.FLOAT8E4M3FN)],
                          [nh.from_array(np.float32(0.1), "s")], check=False)
    m.opset_import.append(h.make_opsetid("trt", 1))
    a = describe(models.save(m, tmp_path / "m.onnx"))
    assert a.qdq == {"QuantizeLinear": 2, "trt::TRT_FP8QuantizeLinear": 1}
    assert a.quantized_dtypes == ["float8e4m3fn", "int8", "uint8"]
    assert a.custom_ops == ["trt::TRT_FP8QuantizeLinear"] and a.opset == 19


def test_describe_refuses_an_unreadable_file(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x00 not a model")
    with pytest.raises(StageFailed, match="export failed.*not a readable ONNX file"):
        describe(p)


def test_gemm_nodes_of_a_torch_export(tmp_path):
    p = models.mlp_onnx(tmp_path / "mlp.onnx")
    g = gemm_nodes(p)
    assert len(g) == 2 and gemm_nodes(onnx.load(str(p))) == g
    assert quantized_gemm_nodes(p) == []


def test_gemm_nodes_and_quantized_gemm_nodes_of_a_qdq_graph():
    m = models.qdq_layers()
    assert gemm_nodes(m) == ["mm1", "mm2"]
    assert "mm1" in quantized_gemm_nodes(m)
    assert quantized_gemm_nodes(models.qdq_matmul("fp8")) == ["mm"]


def test_unnamed_gemm_nodes_get_a_positional_name():
    m = models.make_model([h.make_node("MatMul", ["x", "W"], ["y"])], [vi("x")], [vi("y")],
                          [nh.from_array(np.eye(4, dtype=np.float32), "W")])
    assert gemm_nodes(m) == ["MatMul_0"]


def test_a_half_quantized_gemm_is_not_a_quantized_gemm():
    assert quantized_gemm_nodes(models.qdq_layers()) == ["mm1"]


def test_check_graph_accepts_a_torch_export(tmp_path):
    check_graph(models.mlp_onnx(tmp_path / "mlp.onnx"), ["x"], ["logits"])


def test_check_graph_refuses_a_lost_input(tmp_path):
    m = models.make_model([h.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")])
    with pytest.raises(StageFailed, match=r"has no input \['mask'\] \(graph inputs: \['x'\]\)"):
        check_graph(models.save(m, tmp_path / "m.onnx"), ["x", "mask"], ["y"])


def test_check_graph_refuses_an_unused_input(tmp_path):
    m = models.make_model([h.make_node("Relu", ["x"], ["y"])], [vi("x"), vi("mask")], [vi("y")])
    with pytest.raises(StageFailed, match=r"export check failed.*never reads input\(s\) \['mask'\]"
                                          r".*\.numpy\(\)"):
        check_graph(models.save(m, tmp_path / "m.onnx"), ["x", "mask"], ["y"])


def test_check_graph_refuses_a_constant_output(tmp_path):
    c = nh.from_array(np.ones((2, 4), np.float32), "c")
    m = models.make_model([h.make_node("Relu", ["x"], ["y"]),
                           h.make_node("Constant", [], ["k"], value=c),
                           h.make_node("Identity", ["k"], ["z"])],
                          [vi("x")], [vi("y"), vi("z", (2, 4))])
    with pytest.raises(StageFailed, match=r"output 'z' .* does not depend on any input"):
        check_graph(models.save(m, tmp_path / "m.onnx"), ["x"], ["y", "z"])


def test_check_graph_sees_inputs_read_inside_a_subgraph(tmp_path):
    then = h.make_graph([h.make_node("Relu", ["x"], ["t"])], "then", [], [vi("t")])
    other = h.make_graph([h.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e")])
    m = models.make_model([h.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)],
                          [vi("flag", (), TP.BOOL), vi("x")], [vi("y")])
    check_graph(models.save(m, tmp_path / "m.onnx"), ["flag", "x"], ["y"])


def test_onnx_files_and_write_onnx_files_round_trip_external_weights(tmp_path):
    m = models.qdq_matmul()
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(m, str(src / "g.onnx"), save_as_external_data=True, location="g.weights",
              size_threshold=0)
    files = onnx_files(src / "g.onnx")
    assert set(files) == {"model.onnx", "g.weights"}
    dest = write_onnx_files(files, tmp_path / "dest")
    assert dest == (tmp_path / "dest" / "model.onnx").resolve()
    back = onnx.load(str(dest))
    assert nh.to_array(next(i for i in back.graph.initializer if i.name == "W")).shape == (4, 3)
    (src / "g.weights").unlink()
    with pytest.raises(StageFailed, match="external weights 'g.weights'.*missing"):
        onnx_files(src / "g.onnx")


@pytest.mark.parametrize("name", ["../evil.bin", "sub/../../evil.bin", "/tmp/evil.bin"])
def test_write_onnx_files_refuses_names_leaving_the_folder(tmp_path, name):
    folder = tmp_path / "dest"
    with pytest.raises(BadInput, match="refusing to write"):
        write_onnx_files({"model.onnx": b"x", name: b"y"}, folder)
    assert not (tmp_path / "evil.bin").exists()


def test_write_onnx_files_allows_subfolders(tmp_path):
    write_onnx_files({"model.onnx": b"x", "w/a.bin": b"y"}, tmp_path)
    assert (tmp_path / "w" / "a.bin").read_bytes() == b"y"


def graph_naming(tmp_path, location):
    """A graph whose external weights are said to be at `location` (which exists)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 64)
    m = models.qdq_matmul()
    w = next(i for i in m.graph.initializer if i.name == "W")
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = TP.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "48")):
        e = w.external_data.add()
        e.key, e.value = k, v
    onnx.save(m, str(src / "g.onnx"))
    return src / "g.onnx"


@pytest.mark.parametrize("where", ["../secret.bin", "ABS"])
def test_onnx_files_refuses_external_data_outside_the_graphs_folder(tmp_path, where):
    loc = str(tmp_path / "secret.bin") if where == "ABS" else where
    path = graph_naming(tmp_path, loc)
    with pytest.raises((BadInput, StageFailed)):
        onnx_files(path)
