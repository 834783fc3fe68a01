"""l4opt.pipeline.runners: ONNX Runtime in a child process, TensorRT numerics against ONNX
Runtime's own FP16 QuantizeLinear, torch outputs named, batches concatenated. Real ONNX Runtime
and torch; the graphs are tiny."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import models
from l4opt.errors import BadInput, StageFailed
from l4opt.pipeline.runners import (NativeCrash, OrtRunner, OrtWorker, TorchRunner,
                                    TRT_NUMERICS_LABEL, concat, name_outputs, run_all)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """The tiny MLP's ONNX export and its torch module."""
    path = models.mlp_onnx(tmp_path_factory.mktemp("mlp") / "mlp.onnx")
    return path, models.mlp_workload(real_data=False).module()


@pytest.fixture(scope="module")
def worker():
    with OrtWorker() as w:
        yield w


def torch_out(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_ort_worker_runs_in_a_child_and_returns_outputs_by_name(mlp, worker):
    path, module = mlp
    x = np.random.default_rng(0).normal(size=(10, 30)).astype(np.float32)
    out = worker.run(path, ["x"], [[x[:4]], [x[4:8]], [x[8:]]], numerics="onnxruntime")
    assert list(out) == ["logits"] and out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], torch_out(module, x), rtol=1e-4, atol=1e-5)
    child = worker.proc.pid
    again = worker.run(path, ["x"], [[x]])           # the same child, TensorRT numerics
    assert worker.proc.pid == child
    np.testing.assert_allclose(again["logits"], out["logits"], rtol=1e-5, atol=1e-6)


def test_ort_worker_a_missing_input_name_is_a_stage_failure_and_the_child_lives_on(mlp, worker):
    path, _ = mlp
    x = np.zeros((2, 30), np.float32)
    with pytest.raises(StageFailed, match=r"onnxruntime failed.*the graph's inputs are \['x'\], "
                                          r"the workload feeds \['features'\]") as e:
        worker.run(path, ["features"], [[x]])
    assert e.value.stage == "onnxruntime" and e.value.artifact == str(path)
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.run(path, ["x"], [[x]])["logits"].shape == (2, 2)


def test_ort_worker_reports_a_stage_failure_as_the_in_process_runner_does(mlp, worker):
    path, _ = mlp
    with pytest.raises(StageFailed) as here:
        OrtRunner(str(path), ["features"]).activate()
    with pytest.raises(StageFailed) as child:
        worker.run(path, ["features"], [[np.zeros((2, 30), np.float32)]])
    assert str(child.value) == str(here.value)


class Abort:
    """Unpickles as os.abort(): the child dies of SIGABRT on reading the request, as a native
    crash in a kernel would kill it."""

    def __reduce__(self):
        import os

        return os.abort, ()


class Exit:
    """Unpickles as os._exit(3): the child exits on reading the request."""

    def __reduce__(self):
        import os

        return os._exit, (3,)


def test_ort_worker_a_dead_child_is_a_native_crash_and_the_next_run_restarts_it(mlp):
    path, _ = mlp
    x = np.zeros((2, 30), np.float32)
    with OrtWorker() as w:
        w.run(path, ["x"], [[x]])
        first = w.proc.pid
        with pytest.raises(NativeCrash, match=r"crashed in native code with SIGABRT .*the sweep "
                                              r"goes on") as e:
            w.run(path, ["x"], [[Abort()]])
        assert e.value.stage == "onnxruntime" and w.proc is None
        with pytest.raises(NativeCrash, match=r"exited unexpectedly \(exit code 3\)"):
            w.run(path, ["x"], [[Exit()]])
        assert w.run(path, ["x"], [[x]])["logits"].shape == (2, 2) and w.proc.pid != first


def test_ort_runner_refuses_unknown_numerics_and_unreadable_graphs(tmp_path):
    with pytest.raises(BadInput, match="numerics 'exact'"):
        OrtRunner("m.onnx", ["x"], numerics="exact")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    for numerics in ("onnxruntime", "tensorrt"):
        with pytest.raises(StageFailed, match="ONNX Runtime cannot load the graph"):
            OrtRunner(str(bad), ["x"], numerics=numerics).activate()


SCALE = np.float16(0.05)


@pytest.fixture(scope="module")
def fp16_quantize(tmp_path_factory):
    """An FP16-typed QuantizeLinear (scale 0.05 FP16, INT8) on every FP16 value in -7..7."""
    x = np.unique(np.arange(-7, 7.0001, 0.005).astype(np.float16))
    m = models.make_model(
        [h.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="Q")],
        [h.make_tensor_value_info("x", TP.FLOAT16, ["n"])],
        [h.make_tensor_value_info("q", TP.INT8, ["n"])],
        [nh.from_array(np.array(SCALE), "s"), models.zero_point("zp")], opset=19)
    return models.save(m, tmp_path_factory.mktemp("q16") / "q16.onnx"), x


def spec_quantize(x):
    """ONNX QuantizeLinear: saturate(round_half_to_even(x / scale)), here in FP32 as TensorRT."""
    return np.clip(np.rint(x.astype(np.float32) / np.float32(SCALE)), -128, 127)


def quantize_with(path, x, numerics):
    r = OrtRunner(str(path), ["x"], quantized=True, numerics=numerics)
    r.activate()
    try:
        return r.infer([x])["q"], r
    finally:
        r.deactivate()


def test_tensorrt_numerics_round_half_to_even_on_every_value(fp16_quantize):
    path, x = fp16_quantize
    q, r = quantize_with(path, x, "tensorrt")
    assert r.name == TRT_NUMERICS_LABEL and r.numerics_stats
    np.testing.assert_array_equal(q, spec_quantize(x))
    assert q.min() == -128 and q.max() == 127   # +-7 / 0.05 = +-140 saturates


def test_onnxruntime_cpu_fp16_quantizelinear_differs_from_the_spec(fp16_quantize):
    path, x = fp16_quantize
    q, r = quantize_with(path, x, "onnxruntime")
    assert r.name == "onnxruntime-cpu"
    wrong = q != spec_quantize(x)
    if not wrong.any():
        import onnxruntime

        pytest.skip(f"onnxruntime {onnxruntime.__version__} rounds FP16 QuantizeLinear half to "
                    f"even (microsoft/onnxruntime#22741 fixed): numerics='tensorrt' is no longer "
                    f"needed for this")
    # truncation toward zero: every wrong value is one step closer to zero than the spec's
    ref = spec_quantize(x)
    assert (np.abs(q[wrong]) == np.abs(ref[wrong]) - 1).all()
    assert wrong.sum() > len(x) // 4


class Pair(torch.nn.Module):
    """Returns (x * 2, x.sum(1)) as a tuple, a list or a dict."""

    def __init__(self, kind="tuple"):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        a, b = x * 2, x.sum(1)
        return {"double": a, "total": b} if self.kind == "dict" else \
            [a, b] if self.kind == "list" else (a, b)


@pytest.mark.parametrize("kind", ["tuple", "list"])
def test_torch_runner_names_sequence_outputs_in_order(kind):
    r = TorchRunner(Pair(kind), output_names=["double", "total"])
    r.activate()
    out = r.infer([np.ones((3, 2), np.float32)])
    assert list(out) == ["double", "total"] and out["double"].dtype == np.float32
    np.testing.assert_array_equal(out["total"], [2, 2, 2])
    assert r.last_inference_time > 0


def test_torch_runner_takes_a_dicts_keys_as_names():
    out = TorchRunner(Pair("dict"), output_names=["ignored"]).infer([np.ones((2, 2), np.float32)])
    assert list(out) == ["double", "total"]


def test_name_outputs_refuses_a_wrong_count_and_non_tensors():
    t = torch.ones(2)
    assert list(name_outputs(t, ["output"])) == ["output"]
    with pytest.raises(BadInput, match=r"returns 2 output\(s\) but the workload names 1 \(\['y'\]\)"):
        name_outputs((t, t), ["y"])
    with pytest.raises(BadInput, match=r"returns 1 output\(s\) but the workload names 2"):
        name_outputs(t, ["a", "b"])
    with pytest.raises(BadInput, match="model output 'b' is a int, not a tensor"):
        name_outputs({"a": t, "b": 3}, ["a", "b"])
    assert name_outputs(torch.ones(2, dtype=torch.float16), ["o"])["o"].dtype == np.float32


def test_run_all_concatenates_each_output_over_batches():
    w = models.two_io_workload()
    r = TorchRunner(w.module(), output_names=w.output_names)
    out = run_all(r, w.batches(w.eval_data, 5), progress=False)
    assert {k: v.shape for k, v in out.items()} == {"logits": (16, 4), "score": (16, 1)}
    whole = TorchRunner(w.module(), output_names=w.output_names).infer(
        [w.eval_data["x"], w.eval_data["y"]])
    for k in out:
        np.testing.assert_allclose(out[k], whole[k], rtol=1e-5, atol=1e-6)
    assert concat([]) == {}


def test_run_all_turns_a_model_error_into_a_stage_failure_naming_the_runner():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch in the user's forward\nsecond line")

    with pytest.raises(StageFailed, match=r"^torch-cpu failed: inference failed: RuntimeError: "
                                          r"shape mismatch in the user's forward$"):
        run_all(TorchRunner(Broken()), [[np.zeros((1, 2), np.float32)]], progress=False)
