"""Facts a row states come from the graph and the data: degenerate references, one sample's
weight in the metric, what a left-out conv is, recurrent layers, and which exporter ran."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from l4opt.onnx.graph import recurrent_nodes
from l4opt.pipeline.drift import degenerate_reference, one_sample_step
from l4opt.pipeline.export import export_options, export_torch
from l4opt.pipeline.quantize import explain_unquantized
from l4opt.spec.recipes import get
from l4opt.spec.workloads import InputSpec, Metric, Workload
from l4opt.errors import BadInput, StageFailed


def _workload(model, shape, name="m"):
    x = np.random.default_rng(0).standard_normal((40, *shape)).astype(np.float32)
    return Workload(name, model, [InputSpec("x", ("batch", *shape))], {"x": x[:32]},
                    {"x": x[32:]}, Metric("m", lambda o, r, l: 0.0), batch_range=(1, 4, 8))


def test_a_near_zero_or_constant_reference_is_flagged():
    assert degenerate_reference({"y": np.full((4, 3), 1e-9)})[0].startswith(
        "the FP32 reference output 'y' is near zero")
    assert "same for every evaluation sample" in degenerate_reference(
        {"y": np.tile(np.arange(5.0), (6, 1))})[0]
    assert degenerate_reference({"y": np.random.default_rng(0).standard_normal((6, 5))}) == []
    assert one_sample_step(32) == pytest.approx(1 / 32)


def test_a_depthwise_conv_is_named_with_its_real_channel_count(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(576, 576, 3, groups=576, padding=1),
                            torch.nn.Conv2d(576, 64, 1)).eval()
    w = _workload(m, (576, 4, 4))
    path = tmp_path / "dw.onnx"
    export_torch(m, w, path, batch=2)
    import onnx

    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    out = explain_unquantized(convs, [convs[1]], {
        convs[0]: "conv with fewer than 16 input/output channels (ModelOpt)"}, get("fp8"),
        graph=path)
    assert len(out) == 1 and "depthwise conv (576 channels" in out[0]["reason"]


def test_recurrent_layers_are_found_with_their_quantization(tmp_path):
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(8, 16, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    m = M().eval()
    w = _workload(m, (5, 8))
    path = tmp_path / "lstm.onnx"
    export_torch(m, w, path, batch=2)
    assert recurrent_nodes(path) == [{"node": recurrent_nodes(path)[0]["node"],
                                      "op_type": "LSTM", "quantized": False}]


def test_export_options_are_checked():
    assert export_options({"dynamo": True})["exporter"] == "dynamo"
    assert export_options(None) == {"exporter": "auto", "opset": 17}
    with pytest.raises(BadInput, match="unknown"):
        export_options({"dynamic": True})
    with pytest.raises(BadInput, match="opset"):
        export_options({"opset": 99})


class _Diff(torch.nn.Module):
    def forward(self, x):
        return torch.diff(x, dim=1)  # aten::diff: no TorchScript ONNX symbolic


@pytest.mark.slow
def test_a_torchscript_failure_falls_back_to_dynamo_and_says_so(tmp_path):
    m = _Diff().eval()
    w = _workload(m, (6,))
    with pytest.raises(StageFailed, match="diff"):
        export_torch(m, w, tmp_path / "ts.onnx", exporter="torchscript")
    art = export_torch(m, w, tmp_path / "auto.onnx", exporter="auto")
    assert art.exporter == "dynamo" and "TorchScript exporter failed" in art.notes[0]
