"""Calibration reaches every quantizer it claims to (or says which it could not), drift figures
mean something for tiny outputs, ModelOpt's calibration errors reach the row explained, and
failed rows read '–' like every other missing cell. Tiny models, real ModelOpt."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from l4opt import InputSpec, Metric, Workload
from l4opt.pipeline.drift import tensor_metrics
from l4opt.errors import StageFailed
from l4opt.onnx.graph import quantized_gemm_nodes
from l4opt.pipeline.export import export_torch
from l4opt.pipeline.quantize import (missing_amax, no_fastpath, quantize_torch, quantizers,
                            uncalibrated_quantizers)
from l4opt.spec.recipes import get


class TinyTx(nn.Module):
    """A standard nn.TransformerEncoder, the way a user writes one (batch_first, eval)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 16)
        self.enc = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 1,
            enable_nested_tensor=False)
        self.head = nn.Linear(16, 2)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(1))


def _ids(n=16, seq=8, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 20, (n, seq)))


def _calibrated(recipe):
    model = TinyTx().eval()
    x = _ids()

    def loop(m):
        with torch.no_grad():  # as users and l4opt's trial write it: fast path eligible
            for i in range(0, len(x), 8):
                m(x[i:i + 8])

    return quantize_torch(model, recipe, loop), x


@pytest.mark.parametrize("name", ["int8-max", "int8-smoothquant", "int8-percentile", "fp8-torch"])
def test_transformer_encoder_quantizers_are_really_calibrated(name):
    model, x = _calibrated(get(name))
    q = quantizers(model)
    for layer in ("linear1", "linear2", "norm1", "norm2"):
        iq = q.get(f"enc.layers.0.{layer}.input_quantizer")
        assert iq is not None and iq.amax is not None, (layer, sorted(q))
    assert missing_amax(model) == []
    # MHA applies out_proj functionally: its quantizers never ran, so they are off and said so
    bad = {b["quantizer"]: b["reason"] for b in uncalibrated_quantizers(model)}
    assert set(bad) == {"enc.layers.0.self_attn.out_proj.input_quantizer",
                        "enc.layers.0.self_attn.out_proj.weight_quantizer"}
    assert all("never called during calibration" in r and "MultiheadAttention" in r
               for r in bad.values())
    assert not any("out_proj" in n for n in q)


def test_the_quantized_model_runs_its_quantizers_whoever_evaluates_it():
    model, x = _calibrated(get("int8-max"))
    ref = TinyTx().eval()
    assert torch.backends.mha.get_fastpath_enabled()  # the global default is left alone
    with torch.no_grad():
        plain = model(x)  # a caller that knows nothing of the fast path
        with no_fastpath():
            slow = model(x)
        fp32 = ref(x)
    assert torch.backends.mha.get_fastpath_enabled()
    assert torch.equal(plain, slow)
    assert (plain - fp32).abs().max() > 1e-4  # the quantizers did act
    copied = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(copied(x), plain)
    # the encoder layer's own quantizers act (not only the head's): turning them off changes it
    for name, q in quantizers(copied).items():
        if name.startswith("enc."):
            q.disable()
    with torch.no_grad():
        assert (copied(x) - plain).abs().max() > 1e-5


def _tx_workload(model=None):
    ids = _ids(16).numpy()
    return Workload(name="tiny-tx", model=model or TinyTx(), inputs=[InputSpec("ids", ("batch", 8),
                                                                               "int64")],
                    calib_data={"ids": ids}, eval_data={"ids": ids},
                    metric=Metric("none", lambda o, r, lab: 0.0), output_names=["logits"])


def test_a_calibrated_transformer_encoder_exports_with_qdq(tmp_path):
    model, _ = _calibrated(get("int8-max"))
    art = export_torch(model, _tx_workload(model), tmp_path / "m.onnx", batch=8)
    assert art is not None
    assert len(quantized_gemm_nodes(tmp_path / "m.onnx")) >= 3  # linear1, linear2, head


def test_export_of_an_uncalibrated_quantizer_names_it_and_gives_no_symbolic_advice(tmp_path):
    import modelopt.torch.quantization as mtq

    model = TinyTx().eval()
    x = _ids()

    def loop(m):
        with torch.no_grad():
            m(x)

    mtq.quantize(model, copy.deepcopy(mtq.INT8_DEFAULT_CFG), loop)  # fast path: no calibration
    with pytest.raises(StageFailed) as exc:
        export_torch(model, _tx_workload(model), tmp_path / "m.onnx", batch=8)
    msg = str(exc.value)
    assert "custom symbolic" not in msg
    assert "calibration never reached" in msg and "input_quantizer" in msg


# ------------------------------------------------------------------ drift on tiny outputs

def test_cosine_of_a_one_value_per_sample_output_sees_the_error():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(64, 1))
    close = ref + rng.normal(scale=1e-4, size=ref.shape)
    far = ref + rng.normal(scale=0.03, size=ref.shape)
    m_close, m_far = tensor_metrics(close, ref), tensor_metrics(far, ref)
    assert m_far["cos_over"] == "batch" and m_far["cos_mean"] == m_far["cos_min"]
    assert m_far["sqnr_db"] < m_close["sqnr_db"] - 40
    assert m_far["cos_mean"] < m_close["cos_mean"] < 1.0
    # wide outputs keep the per-sample cosine
    wide = rng.normal(size=(8, 16))
    assert tensor_metrics(wide * 1.01, wide)["cos_over"] == "sample"


def test_aggregate_ignores_an_output_too_small_for_a_cosine():
    rng = np.random.default_rng(1)
    cls = rng.normal(size=(2, 8))
    reg = rng.normal(size=(2, 1))  # 2 values in all: no cosine means anything
    m = tensor_metrics({"cls": cls * 1.001, "reg": -reg}, {"cls": cls, "reg": reg})
    assert m["tensor_metrics_by_output"]["reg"]["cos_over"] == "none"
    assert np.isnan(m["tensor_metrics_by_output"]["reg"]["cos_mean"])
    assert m["cos_mean"] == pytest.approx(m["tensor_metrics_by_output"]["cls"]["cos_mean"])
    # a non-finite output still poisons the aggregate: that is a real failure
    bad = tensor_metrics({"cls": cls * np.nan, "reg": reg}, {"cls": cls, "reg": reg})
    assert np.isnan(bad["cos_mean"])


# ------------------------------------------------------------------ calibration errors

def _collapse_mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                      nn.Linear(16, 2)).eval()
    with torch.no_grad():
        m[0].bias[0] = 5000.0
        m[2].weight[:, 0] = 0.0  # an all-zero input column
    return m


def _mlp_loop(x, bs=8):
    def loop(m):
        with torch.no_grad():
            for i in range(0, len(x), bs):
                m(x[i:i + bs])
    return loop


def test_a_modelopt_smoothquant_error_becomes_an_explained_calibration_failure():
    x = torch.randn(20, 12)  # 8 + 8 + a last partial batch of 4
    with pytest.raises(StageFailed) as exc:
        quantize_torch(_collapse_mlp(), get("int8-smoothquant"), _mlp_loop(x))
    assert exc.value.stage == "calibration"
    msg = str(exc.value)
    assert "IndexError" in msg and "all-zero weight column" in msg and "'2'" in msg
    assert "smoothquant_alpha 1.0" in msg


def test_the_smoothquant_failure_is_alpha_not_batching():
    """Root cause: alpha < 1 with an all-zero weight column (ModelOpt's preset uses alpha 1),
    whatever the batch: one batch of 8 fails at alpha 0.5 and batches of 1 pass at alpha 1."""
    x = torch.randn(8, 12)
    with pytest.raises(StageFailed):
        quantize_torch(_collapse_mlp(), get("int8-smoothquant"), _mlp_loop(x, 8))
    alpha1 = dataclasses.replace(get("int8-smoothquant"), smoothquant_alpha=1.0)
    model = quantize_torch(_collapse_mlp(), alpha1, _mlp_loop(x, 1))
    assert missing_amax(model) == [] and uncalibrated_quantizers(model) == []


def test_a_forward_pass_error_during_calibration_says_so():
    def loop(m):
        m(torch.randn(4, 7))  # wrong width: the user's data, not ModelOpt

    with pytest.raises(StageFailed) as exc:
        quantize_torch(_collapse_mlp(), get("int8-max"), loop)
    assert exc.value.stage == "calibration" and "forward pass raised" in str(exc.value)


# ------------------------------------------------------------------ tables

def test_failed_rows_show_a_dash_in_text_columns_too():
    import pandas as pd

    from l4opt.ui.tables import display_frame

    df = pd.DataFrame([
        {"recipe": "int8", "status": "ok", "drift_backend": "onnxruntime-cpu",
         "latency_source": "estimated-l4", "cos_mean": 0.99},
        {"recipe": "int8-max", "status": "failed", "drift_backend": np.nan,
         "latency_source": None, "cos_mean": np.nan}])
    shown = display_frame(df, ["recipe", "drift_backend", "latency_source", "cos_mean"])
    assert list(shown.iloc[1]) == ["int8-max", "–", "–", "–"]
    assert "nan" not in shown.to_string().lower()
