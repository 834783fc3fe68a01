"""Tiny shared models for the tests: l4opt.Workload factories (random seeded weights, numpy data,
a few hundred parameters, no training) and tiny ONNX graphs (a torch-exported MLP and hand-built
Q/DQ graphs with onnx.helper). Import as `import models` (tests/ is on sys.path through
tests/conftest.py). Everything is deterministic: the same call gives the same weights and data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

from l4opt.spec.workloads import InputSpec, Metric, Workload

FP8 = TP.FLOAT8E4M3FN
INT8 = TP.INT8


def _agree(o, r, labels):
    """Top-1 agreement with the reference outputs (labels unused)."""
    return float(np.mean(np.argmax(o, -1) == np.argmax(r, -1)))


AGREE = Metric("agree", _agree)


def _torch():
    import torch

    return torch, torch.nn


def _split(x: np.ndarray, n_calib: int):
    return {"calib": x[:n_calib], "eval": x[n_calib:]}


def mlp_workload(samples: int = 96, real_data: bool = True, **kw) -> Workload:
    """A 30-16-2 MLP on sklearn's breast-cancer features (standardized) or random features."""
    torch, nn = _torch()
    if real_data:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x, y = x[:samples], y[:samples]
        x = ((x - x.mean(0)) / (x.std(0) + 1e-9)).astype(np.float32)
    else:
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(samples, 30)).astype(np.float32), rng.integers(0, 2, samples)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    d = _split(x, samples // 2)
    args = dict(name="tiny-mlp", model=model, inputs=[InputSpec("x", ("batch", 30))],
                calib_data={"x": d["calib"]}, eval_data={"x": d["eval"]},
                eval_labels=y[samples // 2:], metric=AGREE, output_names=["logits"],
                batch_size=16, batch_range=(1, 8, 32), min_calib_samples=8)
    args.update(kw)
    return Workload(**args)


def _cnn():
    torch, nn = _torch()

    class TinyResNet(nn.Module):
        """Conv-BN-ReLU stem, one residual block (two conv-BN), pooled linear head."""

        def __init__(self, c: int = 4):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(c), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(c), nn.ReLU(),
                                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            self.head = nn.Linear(c, 3)

        def forward(self, x):
            y = self.stem(x)
            y = torch.relu(y + self.block(y))
            return self.head(y.mean((2, 3)))

    return TinyResNet


def cnn_workload(samples: int = 32, **kw) -> Workload:
    """A CNN with BatchNorm and a residual block on random 3x8x8 images."""
    torch, _ = _torch()
    torch.manual_seed(0)
    model = _cnn()().eval()
    x = np.random.default_rng(1).normal(size=(samples, 3, 8, 8)).astype(np.float32)
    args = dict(name="tiny-cnn", model=model, inputs=[InputSpec("image", ("batch", 3, 8, 8))],
                calib_data={"image": x[:samples // 2]}, eval_data={"image": x[samples // 2:]},
                metric=AGREE, output_names=["logits"], batch_size=8, batch_range=(1, 4, 16),
                min_calib_samples=8)
    args.update(kw)
    return Workload(**args)


def transformer_workload(samples: int = 16, seq: int = 6, d_model: int = 8, **kw) -> Workload:
    """One nn.TransformerEncoder layer (batch_first) on random tokens; axes 'batch' and 'seq'."""
    torch, nn = _torch()
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model, nhead=2, dim_feedforward=16, dropout=0.0,
                                       batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False).eval()
    x = np.random.default_rng(2).normal(size=(samples, seq, d_model)).astype(np.float32)
    args = dict(name="tiny-transformer", model=model,
                inputs=[InputSpec("tokens", ("batch", "seq", d_model))],
                calib_data={"tokens": x[:samples // 2]}, eval_data={"tokens": x[samples // 2:]},
                metric=AGREE, output_names=["hidden"], batch_size=4, batch_range=(1, 4, 8),
                min_calib_samples=4)
    args.update(kw)
    return Workload(**args)


def _two_io():
    torch, nn = _torch()

    class TwoInTwoOut(nn.Module):
        """logits from both inputs, and a per-sample score from the second one."""

        def __init__(self):
            super().__init__()
            self.a, self.b, self.s = nn.Linear(6, 4), nn.Linear(3, 4), nn.Linear(3, 1)

        def forward(self, x, y):
            return self.a(x) + self.b(y), self.s(y)

    return TwoInTwoOut


def two_io_workload(samples: int = 32, **kw) -> Workload:
    """Two inputs (x: 6 features, y: 3) and two outputs ('logits' 4 values, 'score' 1 value)."""
    torch, _ = _torch()
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(samples, 6)).astype(np.float32)
    y = rng.normal(size=(samples, 3)).astype(np.float32)
    half = samples // 2
    args = dict(name="tiny-two-io", model=_two_io()().eval(),
                inputs=[InputSpec("x", ("batch", 6)), InputSpec("y", ("batch", 3))],
                calib_data={"x": x[:half], "y": y[:half]}, eval_data={"x": x[half:], "y": y[half:]},
                metric=Metric("agree", lambda o, r, lab: _agree(o["logits"], r["logits"], lab)),
                output_names=["logits", "score"], batch_size=8, batch_range=(1, 4, 16),
                min_calib_samples=8)
    args.update(kw)
    return Workload(**args)


def _lstm():
    torch, nn = _torch()

    class LstmClassifier(nn.Module):
        """One-layer LSTM over the sequence, linear head on the last hidden state."""

        def __init__(self, features: int = 4, hidden: int = 8, classes: int = 3):
            super().__init__()
            self.lstm = nn.LSTM(features, hidden, batch_first=True)
            self.head = nn.Linear(hidden, classes)

        def forward(self, x):
            _, (hn, _) = self.lstm(x)
            return self.head(hn[-1])

    return LstmClassifier


def lstm_workload(samples: int = 16, seq: int = 5, **kw) -> Workload:
    """An LSTM classifier on random sequences (axes 'batch' and 'seq', 4 features)."""
    torch, _ = _torch()
    torch.manual_seed(0)
    x = np.random.default_rng(4).normal(size=(samples, seq, 4)).astype(np.float32)
    args = dict(name="tiny-lstm", model=_lstm()().eval(), inputs=[InputSpec("x", ("batch", "seq", 4))],
                calib_data={"x": x[:samples // 2]}, eval_data={"x": x[samples // 2:]},
                metric=AGREE, output_names=["logits"], batch_size=4, batch_range=(1, 4, 8),
                min_calib_samples=4)
    args.update(kw)
    return Workload(**args)


FACTORIES = {"mlp": mlp_workload, "cnn": cnn_workload, "transformer": transformer_workload,
             "two-io": two_io_workload, "lstm": lstm_workload}


# ------------------------------------------------------------------ tiny ONNX graphs

def mlp_onnx(path, batch: int = 2) -> Path:
    """mlp_workload's model exported by torch.onnx.export (dynamo=False, opset 17, dynamic batch)."""
    torch, _ = _torch()
    w = mlp_workload(real_data=False)
    torch.onnx.export(w.module(), w.example_args(batch), str(path), input_names=["x"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return Path(path)


def make_model(nodes, inputs, outputs, inits=(), opset: int = 19, check: bool = True):
    """A ModelProto from onnx.helper pieces (IR 10), checked by onnx.checker."""
    m = h.make_model(h.make_graph(nodes, "tiny", inputs, outputs, list(inits)),
                     opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10
    if check:
        onnx.checker.check_model(m)
    return m


def zero_point(name: str, fmt: str = "int8"):
    """A scalar zero point: INT8 0, or FLOAT8E4M3FN 0 (opset 19+)."""
    return h.make_tensor(name, FP8 if fmt == "fp8" else INT8, [], [0])


def qdq(x: str, scale: str, zp: str, prefix: str):
    """A QuantizeLinear -> DequantizeLinear pair named Q_<prefix>/DQ_<prefix>; output <prefix>_dq."""
    return [h.make_node("QuantizeLinear", [x, scale, zp], [f"{prefix}_q"], name=f"Q_{prefix}"),
            h.make_node("DequantizeLinear", [f"{prefix}_q", scale, zp], [f"{prefix}_dq"],
                        name=f"DQ_{prefix}")]


def qdq_matmul(fmt: str = "int8", opset: int = 19, k: int = 4, n: int = 3, seed: int = 0):
    """y = DQ(Q(x)) @ DQ(Q(W)): one MatMul with both operands through Q/DQ (INT8 or FP8 zero
    point, opset 19 or 21); x is [batch, k] float32."""
    w = np.random.default_rng(seed).normal(size=(k, n)).astype(np.float32)
    inits = [nh.from_array(w, "W"), nh.from_array(np.float32(0.05), "sx"),
             nh.from_array(np.float32(0.02), "sw"), zero_point("zp", fmt)]
    nodes = qdq("x", "sx", "zp", "x") + qdq("W", "sw", "zp", "w") + [
        h.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="mm")]
    return make_model(nodes, [h.make_tensor_value_info("x", TP.FLOAT, ["batch", k])],
                      [h.make_tensor_value_info("y", TP.FLOAT, ["batch", n])], inits, opset)


def qdq_layers(fmt: str = "int8", opset: int = 19, k: int = 4, seed: int = 0):
    """A graph with one layer of each kind, all node names fixed (so an INT8 and an FP8 build
    splice): mm1 = DQ(Q(x)) @ Transpose(DQ(Q(W1))) (quantized GEMM); mm2 = h1_dq @ W2 (only one
    operand through Q/DQ: half-quantized, not a layer); add = h1_dq + mm2 (an 'other' layer)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(k, k)).astype(np.float32)   # stored [out, in] as torch does
    w2 = rng.normal(size=(k, k)).astype(np.float32)
    sc = 0.05 if fmt == "int8" else 0.01
    inits = [nh.from_array(w1, "W1"), nh.from_array(w2, "W2"), zero_point("zp", fmt),
             nh.from_array(np.float32(sc), "sx"), nh.from_array(np.float32(sc / 2), "sw1"),
             nh.from_array(np.float32(sc * 2), "sh1")]
    nodes = (qdq("x", "sx", "zp", "x") + qdq("W1", "sw1", "zp", "w1") + [
        h.make_node("Transpose", ["w1_dq"], ["w1_t"], name="w1_T", perm=[1, 0]),
        h.make_node("MatMul", ["x_dq", "w1_t"], ["h1"], name="mm1")]
        + qdq("h1", "sh1", "zp", "h1") + [
        h.make_node("MatMul", ["h1_dq", "W2"], ["h2"], name="mm2"),
        h.make_node("Add", ["h1_dq", "h2"], ["y"], name="add")])
    return make_model(nodes, [h.make_tensor_value_info("x", TP.FLOAT, ["batch", k])],
                      [h.make_tensor_value_info("y", TP.FLOAT, ["batch", k])], inits, opset)


def save(model, path) -> Path:
    """Write a ModelProto to `path` and return the path."""
    onnx.save(model, str(path))
    return Path(path)
