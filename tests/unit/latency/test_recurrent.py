"""LSTM/GRU/RNN priced by the documented rule (l4opt/latency/recurrent.py): one GEMM kernel
per time step and direction, gates x hidden wide, counted in facts["recurrent"]."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from l4opt.latency import costmodel, estimate

torch = pytest.importorskip("torch")


class _Net(torch.nn.Module):
    def __init__(self, cell, hidden=64, bidirectional=False):
        super().__init__()
        self.rnn = cell(32, hidden, batch_first=True, bidirectional=bidirectional)
        self.fc = torch.nn.Linear(hidden * (2 if bidirectional else 1), 5)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


def _export(tmp_path, cell, seq=20, **kw):
    torch.manual_seed(0)
    path = tmp_path / f"{cell.__name__}.onnx"
    with torch.no_grad():
        torch.onnx.export(_Net(cell, **kw).eval(), (torch.randn(1, seq, 32),), str(path),
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return onnx.load(str(path))


def _steps(g):
    return [k for k in g.kernels if k.ops and k.ops[0] in ("LSTM", "GRU", "RNN")]


def test_an_lstm_is_one_gemm_per_time_step(tmp_path):
    m = _export(tmp_path, torch.nn.LSTM, seq=20)
    g = costmodel.kernels(m, "L4", batch=16)
    steps = _steps(g)
    assert len(steps) == 20 and all(k.kind == "gemm" and k.precision == "fp16" for k in steps)
    # 4 gates x hidden 64, K = input 32 + hidden 64, M = batch 16
    assert steps[0].flops == 2.0 * 16 * 4 * 64 * (32 + 64)
    assert g.facts["recurrent"] == {"nodes": 1, "quantized": 0, "steps": 20}
    e = estimate.estimate_onnx(m, batch=16)
    assert any("1 recurrent node(s) (LSTM/GRU/RNN; none quantized) priced as 20 sequential"
               in n for n in e.notes)
    # the work is no longer free: sequential steps cost at least one kernel each
    lstm_ms = e.layers[e.layers["op_type"] == "LSTM"]["latency_ms"].sum()
    assert lstm_ms > 20 * e.constants["kernel_us"] * 1e-3
    # twice the steps, about twice the recurrent time
    e40 = estimate.estimate_onnx(_export(tmp_path, torch.nn.LSTM, seq=40), batch=16)
    lstm40 = e40.layers[e40.layers["op_type"] == "LSTM"]["latency_ms"].sum()
    assert lstm40 == pytest.approx(2 * lstm_ms, rel=0.1)


def test_gru_has_three_gates_and_a_bidirectional_node_doubles_the_steps(tmp_path):
    g = costmodel.kernels(_export(tmp_path, torch.nn.GRU, seq=10, hidden=48,
                                  bidirectional=True), "L4", batch=4)
    steps = _steps(g)
    assert len(steps) == 20
    assert steps[0].flops == 2.0 * 4 * 3 * 48 * (32 + 48)
    assert g.facts["recurrent"]["steps"] == 20


def _rnn(op, gates, fmt=None, seq=6, batch=3, inp=8, hidden=16):
    """An ONNX recurrent node by hand; with `fmt`, X and W arrive through Q/DQ of that format."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(1, gates * hidden, n)).astype(np.float32), t)
             for t, n in (("W", inp), ("R", hidden))]
    nodes, x, w = [], "X", "W"
    if fmt:
        for t in ("X", "W"):
            inits += [numpy_helper.from_array(np.array(0.05, np.float32), f"s_{t}"),
                      helper.make_tensor(f"z_{t}", fmt, [], [0])]
            nodes += [helper.make_node("QuantizeLinear", [t, f"s_{t}", f"z_{t}"], [f"{t}_q"]),
                      helper.make_node("DequantizeLinear", [f"{t}_q", f"s_{t}", f"z_{t}"],
                                       [f"{t}_dq"])]
        x, w = "X_dq", "W_dq"
    nodes.append(helper.make_node(op, [x, w, "R"], ["Y"], hidden_size=hidden, name="rec"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                    [seq, "n", inp])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_a_plain_rnn_and_a_quantized_one_are_counted():
    g = costmodel.kernels(_rnn("RNN", 1), "L4", dynamic_dims={"n": 3})
    assert len(_steps(g)) == 6 and _steps(g)[0].flops == 2.0 * 3 * 16 * (8 + 16)
    q = costmodel.kernels(_rnn("LSTM", 4, fmt=TensorProto.INT8), "L4", dynamic_dims={"n": 3})
    assert q.facts["recurrent"] == {"nodes": 1, "quantized": 1, "steps": 6}
    assert {k.precision for k in _steps(q)} == {"int8"}


def test_graphs_without_recurrent_nodes_have_no_recurrent_facts():
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    g = costmodel.kernels(helper.make_model(g), "L4", batch=2)
    assert "recurrent" not in g.facts
