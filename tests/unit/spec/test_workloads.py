import numpy as np
import pytest

from l4opt.spec import workloads
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
    from l4opt.pipeline.runners import TorchRunner, run_all

    out = run_all(TorchRunner(m, output_names=w.output_names), w.batches(w.eval_data),
                  progress=False)["embedding"]
    assert out.shape == (64, 384)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)
    assert w.metric(out, out, None) == 1.0  # recall@5 of the reference against itself


def test_digits_cnn_trains_deterministically_and_is_accurate(digits, tmp_path, monkeypatch):
    from l4opt.pipeline.runners import TorchRunner, run_all

    out = run_all(TorchRunner(digits.module()), digits.batches(digits.eval_data), progress=False)
    assert list(out) == ["output"]  # outputs by name; a metric on one output gets its array
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


def test_metric_gets_arrays_for_one_output_and_dicts_for_several():
    got = []
    m = workloads.Metric("m", lambda o, r, lab: got.append((type(o), type(r))) or 1.0)
    assert m({"y": np.ones(3)}, {"y": np.ones(3)}, None) == 1.0
    assert m({"a": np.ones(3), "b": np.ones(2)}, {"a": np.ones(3), "b": np.ones(2)}, None) == 1.0
    assert got == [(np.ndarray, np.ndarray), (dict, dict)]
    with pytest.raises(TypeError, match="returned 'x' \\(str\\), not a number"):
        workloads.Metric("m", lambda o, r, lab: "x")(np.ones(1), np.ones(1), None)


def test_metric_identity_follows_its_code_closure_and_version():
    ids = {workloads.recall_at_k(5).identity(), workloads.recall_at_k(10).identity(),
           workloads.top1_accuracy().identity(),
           workloads.Metric("top1", lambda o, r, lab: 1.0).identity(),
           workloads.Metric("top1", lambda o, r, lab: 1.0, version="2").identity()}
    assert len(ids) == 5
    assert workloads.recall_at_k(5).identity() == workloads.recall_at_k(5).identity()


def test_example_args_repeat_samples_up_to_the_batch(digits):
    (x,) = digits.example_args(1000)
    n = len(digits.eval_data["image"])
    assert x.shape[0] == 1000 and np.array_equal(x[n:n + 5].numpy(), digits.eval_data["image"][:5])


# ------------------------------------------------------------------ options, like the CLI

@pytest.mark.parametrize("kw,match", [
    ({"eval_samples": 10}, r"'digits-cnn' does not take eval_samples \(it takes: calib_samples\)"),
    ({"calib_samples": -3}, "calib_samples must be a positive whole number of samples, got -3"),
    ({"calib_samples": 0}, "got 0"),
    ({"calib_samples": 2.5}, "got 2.5"),
])
def test_python_api_options_are_checked_like_the_cli(tmp_path, kw, match):
    import l4opt

    with pytest.raises(BadInput, match=match):
        l4opt.sweep("digits-cnn", "baseline", tmp_path, progress=False, **kw)
    with pytest.raises(BadInput, match=match):
        workloads.load("digits-cnn", **kw)
    assert not (tmp_path / "results.sqlite").exists()  # refused before any work


def test_options_for_a_workload_object_are_refused(tmp_path, digits):
    import l4opt

    with pytest.raises(BadInput, match="calib_samples: options of a built-in workload"):
        l4opt.sweep(digits, "baseline", tmp_path, progress=False, calib_samples=64)


# ------------------------------------------------------------------ missing dependencies

def test_a_missing_base_dependency_says_reinstall_l4opt_not_an_extra(monkeypatch):
    import sys

    from l4opt import env
    from l4opt.errors import MissingDependency

    for mod in ("plotly.graph_objects", "ipywidgets", "papermill"):
        monkeypatch.setitem(sys.modules, mod, None)  # None in sys.modules: import fails
        with pytest.raises(MissingDependency) as e:
            env.require(mod, "the dashboard")
        msg = str(e.value)
        assert "pip install -e ." in msg and "reinstall" in msg.lower(), msg
        assert "l4opt[" not in msg, msg  # no extra holds it any more
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependency, match=r"pip install 'l4opt\[ray\]'"):
        env.require("ray", "Ray sweeps")
