"""Shapes come from ONNX shape inference (with the graph's shape arithmetic folded in), never
from running a large graph in ONNX Runtime (issue 19 item 5: a 1568-token ViT at batch 8 took
> 9 GB when every tensor of a run was exposed)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from l4opt.errors import BadInput
from l4opt.latency import estimate, graph_shapes

torch = pytest.importorskip("torch")


@pytest.fixture
def no_ort_session(monkeypatch):
    """Fail the test if anything creates an ONNX Runtime session."""
    import onnxruntime

    created = []

    def spy(*a, **k):
        created.append(a)
        raise AssertionError("an ONNX Runtime session was created to resolve shapes")

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return created


def _export(model, x, path, axes):
    with torch.no_grad():
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes}, opset_version=17, dynamo=False)
    return path


def _encoder(tmp_path, seq, d=32, heads=2):
    """nn.TransformerEncoder exported with the TorchScript exporter (its attention reshapes go
    through Shape/Gather/Div/Concat chains ONNX's own data propagation does not evaluate)."""
    torch.manual_seed(0)
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        layer = torch.nn.TransformerEncoderLayer(d_model=d, nhead=heads, dim_feedforward=2 * d,
                                                 batch_first=True)
        enc = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        return _export(enc, torch.randn(1, seq, d), tmp_path / f"enc{seq}.onnx", {0: "batch"})
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def test_a_long_sequence_encoder_is_estimated_without_running_onnx_runtime(tmp_path,
                                                                          no_ort_session):
    # a ViT-like token count at batch 8: the scores alone are 8 x 2 x 1568^2 floats (157 MB);
    # a run exposing every tensor would hold several GB
    path = _encoder(tmp_path, 1568)
    m = onnx.load(str(path))
    shapes = graph_shapes.resolve_shapes(m, graph_shapes.input_dims(m, 8, None), [])
    mm = [n for n in m.graph.node if n.op_type == "MatMul"]
    assert all(shapes[n.output[0]] and None not in shapes[n.output[0]] for n in mm)
    assert [8, 2, 1568, 1568] in [shapes[n.output[0]] for n in mm]  # the attention scores
    e = estimate.estimate_onnx(path, batch=8)
    assert e.total_ms > 0 and not no_ort_session
    assert not any("could not resolve" in n for n in e.notes)
    # FP16 attention at key length 1568 fuses into one MHA kernel
    assert list(e.layers["kind"]).count("mha") == 1


class _DynAttn(torch.nn.Module):
    """Attention whose reshapes follow the input's length (b, t from x.shape)."""

    def __init__(self, d=32, h=2):
        super().__init__()
        self.h, self.qkv, self.o = h, torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        sh = lambda z: z.reshape(b, t, self.h, d // self.h).transpose(1, 2)  # noqa: E731
        a = torch.softmax(sh(q) @ sh(k).transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1) @ sh(v)
        return self.o(a.transpose(1, 2).reshape(b, t, d))


def test_dynamic_axes_resolve_by_folding_the_shape_arithmetic(tmp_path, no_ort_session):
    path = _export(_DynAttn(), torch.randn(2, 16, 32), tmp_path / "dyn.onnx",
                   {0: "batch", 1: "seq"})
    m = onnx.load(str(path))
    # ONNX's data propagation alone leaves a GEMM unknown (it does not evaluate Div)
    plain = graph_shapes._shapes_by_inference(m, {"x": [8, 1000, 32]})
    assert not graph_shapes._gemms_known(m, plain)
    folded = graph_shapes._shapes_by_folding(m, {"x": [8, 1000, 32]})
    assert graph_shapes._gemms_known(m, folded)
    scores = [folded[n.output[0]] for n in m.graph.node if n.op_type == "MatMul"]
    assert [8, 2, 1000, 1000] in scores
    e = estimate.estimate_onnx(path, batch=8, dynamic_dims={"seq": 1000})
    assert e.total_ms > estimate.estimate_onnx(path, batch=8, dynamic_dims={"seq": 100}).total_ms
    assert not no_ort_session


def _opaque(batch_shape):
    """x -> an op no shape inference knows -> MatMul: only running the graph gives its shape."""
    w = numpy_helper.from_array(np.ones((1024, 8), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["m"], domain="example.opaque", name="mystery"),
         helper.make_node("MatMul", ["m", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, batch_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid("example.opaque", 1)])


def test_running_the_graph_is_refused_when_its_tensors_would_be_large(no_ort_session):
    # batch 300: x alone is 300 x 1024 x 1024 FP32 = 1.26 GB, over the 1 GB limit of a run
    with pytest.raises(BadInput, match=r"learning them by running the graph would hold 1.3 GB "
                                       r"of tensors \(largest 'x'.*refused"):
        estimate.estimate_onnx(_opaque(["batch", 1024, 1024]), batch=300)
    assert not no_ort_session


def test_running_stays_the_last_resort_for_small_graphs(monkeypatch):
    """A small graph inference cannot resolve is still run (here ONNX Runtime cannot load the
    opaque op, so the estimate says its shapes are from static inference only)."""
    calls = []
    real = graph_shapes._shapes_by_running

    def counting(model, in_dims):
        calls.append(in_dims)
        return real(model, in_dims)

    monkeypatch.setattr(graph_shapes, "_shapes_by_running", counting)
    e = estimate.estimate_onnx(_opaque(["batch", 1024, 1024]), batch=1)
    assert calls == [{"x": [1, 1024, 1024]}]
    assert any("static inference only" in n for n in e.notes)
