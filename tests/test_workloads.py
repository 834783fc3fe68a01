import numpy as np
import pytest

from l4opt import workloads
from l4opt.errors import BadInput


@pytest.fixture(scope="module")
def digits():
    return workloads.load("digits-cnn")


def test_names_and_unknown_workload():
    assert workloads.names() == ["minilm", "digits-cnn"]
    with pytest.raises(BadInput, match="minilm, digits-cnn"):
        workloads.load("resnet-9000")


def test_minilm_is_the_real_encoder_with_disjoint_text():
    w = workloads.minilm(calib_samples=64, eval_samples=64)
    w.validate()
    cal = {tuple(r) for r in w.calib_data["input_ids"]}
    ev = {tuple(r) for r in w.eval_data["input_ids"]}
    assert len(cal) == 64 and len(ev) == 64 and not cal & ev
    m = w.module()
    assert sum(p.numel() for p in m.parameters()) > 22_000_000  # all-MiniLM-L6-v2: 22.7M
    from l4opt.runners import TorchRunner, run_all

    out = run_all(TorchRunner(m), w.batches(w.eval_data), progress=False)
    assert out.shape == (64, 384)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)
    assert w.metric(out, out, None) == 1.0  # recall@5 of the reference against itself


def test_digits_cnn_trains_deterministically_and_is_accurate(digits, tmp_path, monkeypatch):
    from l4opt.runners import TorchRunner, run_all

    out = run_all(TorchRunner(digits.module()), digits.batches(digits.eval_data), progress=False)
    acc = digits.metric(out, out, digits.eval_labels)
    assert acc > 0.95
    monkeypatch.setenv("L4OPT_CACHE", str(tmp_path))  # a fresh cache retrains from scratch
    again = workloads.load("digits-cnn")
    assert again.fingerprint() == digits.fingerprint()


def _copy(w, **data):
    import copy

    w2 = copy.copy(w)
    w2.calib_data = data.get("calib", w.calib_data)
    w2.eval_data = data.get("eval", w.eval_data)
    return w2


@pytest.mark.parametrize("case, match", [
    ("empty", "calibration data is empty"),
    ("small", "fewer than the 32 required"),
    ("nan", "NaN/Inf"),
    ("shape", "axis 2 must be 8"),
    ("rank", "rank 3 vs 4"),
    ("names", "example inputs are"),
    ("dtype", "float64"),
])
def test_bad_data_is_refused_with_a_specific_message(digits, case, match):
    x = digits.calib_data["image"]
    calib = {
        "empty": {}, "small": {"image": x[:5]},
        "nan": {"image": np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x).astype(np.float32)},
        "shape": {"image": np.zeros((64, 1, 9, 8), np.float32)},
        "rank": {"image": np.zeros((64, 8, 8), np.float32)},
        "names": {"pixels": x},
        "dtype": {"image": x.astype(np.float64)},
    }[case]
    with pytest.raises(BadInput, match=match):
        _copy(digits, calib=calib).validate()
