"""A user's own models through the public API get the same truth as the built-ins (issue 13):
an MLP on breast-cancer data, a ResNet-style CNN with BatchNorm, nn.TransformerEncoder and a
two-input/two-output model; real ModelOpt and ONNX Runtime, small data, progress=False."""
import math

import numpy as np
import pytest

import l4opt
from l4opt.spec import workloads
from l4opt.errors import BadInput
from l4opt.spec.workloads import InputSpec, Metric, Workload

torch = pytest.importorskip("torch")
nn = torch.nn


# ------------------------------------------------------------------ the four user models

def _top1(o, r, labels):
    return float(np.mean(np.argmax(o, 1) == np.asarray(labels)))


def _agree(o, r, labels):
    return float(np.mean(np.argmax(o, 1) == np.argmax(r, 1)))


def mlp_workload(**kw) -> Workload:
    """A small MLP trained on scikit-learn's breast-cancer data."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:400]), torch.from_numpy(y[:400])
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    args = dict(name="bc-mlp", model=model.eval(), inputs=[InputSpec("x", ("batch", 30))],
                calib_data={"x": x[:128]}, eval_data={"x": x[400:]}, eval_labels=y[400:],
                metric=Metric("top1", _top1), output_names=["logits"], batch_range=(1, 16, 64))
    args.update(kw)
    return Workload(**args)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(x + self.b2(self.c2(y)))


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.blocks = nn.Sequential(Block(32), Block(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def cnn_workload() -> Workload:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    torch.manual_seed(0)
    model = ResNetish()
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return Workload(name="resnetish", model=model.eval(),
                    inputs=[InputSpec("image", ("batch", 1, 8, 8))],
                    calib_data={"image": x[:96]}, eval_data={"image": x[-96:]},
                    metric=Metric("agree", _agree), output_names=["logits"],
                    batch_range=(1, 32, 64))


def transformer_workload() -> Workload:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(160, 10, 32)).astype(np.float32)

    def cos(o, r, labels):
        o, r = o.reshape(len(o), -1), r.reshape(len(r), -1)
        return float(np.mean((o * r).sum(1) / np.linalg.norm(o, axis=1) / np.linalg.norm(r, axis=1)))

    return Workload(name="encoder", model=model, inputs=[InputSpec("tokens", ("batch", "seq", 32))],
                    calib_data={"tokens": seq[:96]}, eval_data={"tokens": seq[96:]},
                    metric=Metric("cos", cos), output_names=["hidden"], batch_range=(1, 16, 32))


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(24, 64), nn.Linear(12, 64)
        self.cls, self.reg = nn.Linear(64, 5), nn.Linear(64, 3)

    def forward(self, a, b):
        h = torch.relu(self.a(a) + self.b(b))
        return self.cls(h), self.reg(h)


def two_io_workload(metric=None) -> Workload:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    data = lambda n: {"a": rng.normal(size=(n, 24)).astype(np.float32),  # noqa: E731
                      "b": rng.normal(size=(n, 12)).astype(np.float32)}

    def both(o, r, labels):  # several outputs: dicts by output name
        return 0.5 * _agree(o["cls"], r["cls"], None) + 0.5 * float(
            1 - np.abs(o["reg"] - r["reg"]).mean() / np.abs(r["reg"]).mean())

    return Workload(name="two-io", model=TwoInTwoOut().eval(),
                    inputs=[InputSpec("a", ("batch", 24)), InputSpec("b", ("batch", 12))],
                    calib_data=data(64), eval_data=data(64), metric=metric or Metric("both", both),
                    output_names=["cls", "reg"], batch_range=(1, 16, 64))


# ------------------------------------------------------------------ item 1: no silent no-op

def test_mlp_rows_say_what_modelopt_quantized_and_why(tmp_path):
    w = mlp_workload()
    res = l4opt.sweep(w, "baseline,int8,fp8,int8-max", tmp_path / "b16", progress=False)
    by = {r["recipe"]: r for r in res.rows}
    assert by["baseline"]["status"] == "ok" and by["baseline"]["quantized_layers"] == 0
    for name in ("int8", "fp8"):
        r = by[name]
        # at the deployment batch 16 the two hidden GEMMs are quantized; the 2-class head is a
        # small GEMM ModelOpt skips, and the row says so with its reason
        assert r["status"] == "ok" and r["modelopt_batch"] == 16
        assert (r["gemm_layers"], r["quantized_layers"]) == (3, 2)
        assert [e["node"] for e in r["excluded_layers"]] == ["/4/Gemm"]
        assert "K or N < 16" in r["excluded_layers"][0]["reason"]
        assert r["latency_batch"] == 16 and r["shapes"]["inputs"]["x"] == [16, 30]
        assert r["throughput_samples_s"] == pytest.approx(16 * 1000 / r["latency_ms"])
        assert r["latency_low_ms"] <= r["latency_ms"] <= r["latency_high_ms"]
    assert by["int8-max"]["quantized_layers"] == 3  # torch PTQ: ModelOpt has no GEMV rule there
    # deployed at batch 1 every MatMul is a GEMV: ONNX PTQ quantizes nothing and says so
    res1 = l4opt.sweep(w, "int8,fp8", tmp_path / "b1", progress=False, batch=1)
    assert [r["status"] for r in res1.rows] == ["no-op", "no-op"]
    assert res1.not_ok == res1.rows and res1.failed == []
    for r in res1.rows:
        assert r["quantized_layers"] == 0 and r["modelopt_batch"] == 1
        assert {e["node"] for e in r["excluded_layers"]} == {"/0/Gemm", "/2/Gemm", "/4/Gemm"}
        assert any("GEMV at the calibration batch 1" in e["reason"] for e in r["excluded_layers"])
        assert any("quantized none of the 3 GEMM/conv layers" in n for n in r["notes"])
        assert r["latency_batch"] == 1
    assert res1.rows[0]["key"] != by["int8"]["key"]  # the deployment batch is in the key


def test_cnn_with_batchnorm_and_residuals(tmp_path):
    res = l4opt.sweep(cnn_workload(), "baseline,int8,int8-max", tmp_path, progress=False)
    by = {r["recipe"]: r for r in res.rows}
    assert all(r["status"] == "ok" for r in res.rows), res.not_ok
    # 5 convs + 1 linear; BatchNorm folded into the convs by the export
    assert by["int8"]["gemm_layers"] == 6 and by["int8"]["quantized_layers"] >= 4
    left = {e["node"] for e in by["int8"]["excluded_layers"]}
    assert by["int8"]["quantized_layers"] + len(left) == 6
    assert all(e["reason"] for e in by["int8"]["excluded_layers"])
    assert by["int8"]["cos_mean"] > 0.95 and by["baseline"]["cos_mean"] > 0.999


def test_recipe_layer_names_are_checked_against_the_model_before_any_trial(tmp_path):
    """Recipe files naming a layer the model does not have are refused up front (BadInput,
    with the close real names), for torch module names and ONNX node names alike."""
    import yaml

    w = cnn_workload()
    bad_torch = tmp_path / "keep-head.yaml"
    bad_torch.write_text(yaml.safe_dump({"name": "keep-head", "path": "torch-ptq",
                                         "format": "int8", "algorithm": "max",
                                         "disabled_layers": ["does.not.exist", "head"]}))
    bad_onnx = tmp_path / "skip-node.yaml"
    bad_onnx.write_text(yaml.safe_dump({"name": "skip-node", "path": "onnx-ptq", "format": "int8",
                                        "algorithm": "entropy",
                                        "nodes_to_exclude": ["does.not.exist"]}))
    run = tmp_path / "run"
    with pytest.raises(BadInput, match=r"'does.not.exist' matches no torch module") as e:
        l4opt.sweep(w, ["baseline", str(bad_torch)], run, progress=False)
    assert "'head'" not in str(e.value)  # a real module: only the typo is named
    with pytest.raises(BadInput, match=r"'does.not.exist' matches no ONNX node"):
        l4opt.sweep(w, ["baseline", str(bad_onnx)], run, progress=False)
    # refused before any trial: no trial row stored
    from l4opt.results.store import Store

    store = Store(run)
    try:
        assert not [r for r in store.rows() if r.get("kind") == "trial"]
    finally:
        store.close()
    # the real names pass: the sweep runs
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"name": "keep-head-ok", "path": "torch-ptq", "format": "int8",
                                  "algorithm": "max", "disabled_layers": ["head", "blocks.1*"]}))
    row = l4opt.sweep(w, [str(ok)], run, progress=False).rows[0]
    assert row["status"] == "ok", row.get("error")


# ------------------------------------------------------------------ item 4: TransformerEncoder

def test_transformer_encoder_exports_and_its_fp16_graph_runs(tmp_path):
    res = l4opt.sweep(transformer_workload(), "baseline,int8", tmp_path, progress=False)
    by = {r["recipe"]: r for r in res.rows}
    assert by["baseline"]["status"] == "ok", by["baseline"].get("error")
    assert by["baseline"]["drift_backend"] == "onnxruntime-cpu, TensorRT numerics (fp16 graph)"
    assert by["baseline"]["cos_min"] > 0.99
    assert by["int8"]["status"] == "ok" and by["int8"]["quantized_layers"] > 0
    assert by["int8"]["shapes"]["axes"] == {"batch": 16, "seq": 10}  # seq from the data
    # sweep(batch=) overrides the deployment batch: ModelOpt and the latency use it
    other = l4opt.sweep(transformer_workload(), "int8", tmp_path, progress=False,
                        batch=4).rows[0]
    assert other["shapes"]["inputs"] == {"tokens": [4, 10, 32]} and other["latency_batch"] == 4
    assert other["modelopt_batch"] == 4 and other["key"] != by["int8"]["key"]
    assert other["latency_ms"] < by["int8"]["latency_ms"]


def test_sweep_dims_set_named_axes_for_modelopt_and_latency(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 3, padding=1))
    x = np.random.default_rng(0).normal(size=(64, 4, 50)).astype(np.float32)
    w = Workload(name="conv1d", model=model.eval(), inputs=[InputSpec("x", ("batch", 4, "len"))],
                 calib_data={"x": x}, eval_data={"x": x}, metric=Metric("agree", _agree),
                 batch_range=(1, 8, 32))
    rows = {d: l4opt.sweep(w, "int8", tmp_path, progress=False, dims=d and {"len": d}).rows[0]
            for d in (None, 400)}
    assert rows[None]["shapes"]["axes"] == {"batch": 8, "len": 50}  # from the data
    assert rows[400]["shapes"]["inputs"] == {"x": [8, 4, 400]}
    assert rows[400]["latency_ms"] > rows[None]["latency_ms"]
    assert rows[400]["throughput_samples_s"] == pytest.approx(8000 / rows[400]["latency_ms"])
    with pytest.raises(BadInput, match="name no axis"):
        l4opt.sweep(w, "int8", tmp_path, progress=False, dims={"seq": 3})


class HandAttention(nn.Module):
    """A pre-norm attention + MLP block written out by hand: its TorchScript export keeps the
    sequence axis dynamic (reshape with -1), unlike nn.MultiheadAttention's."""

    def __init__(self, d=16, h=2):
        super().__init__()
        self.h, self.d = h, d
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        b, h = x.shape[0], self.h
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, h, self.d // h).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / (self.d // h) ** 0.5, dim=-1) @ v
        x = x + self.out(a.transpose(1, 2).reshape(b, -1, self.d))
        return x + self.ff(self.ln2(x))


def _seq_workload(model, name):
    x = np.random.default_rng(0).normal(size=(64, 10, 16)).astype(np.float32)

    def cos(o, r, labels):
        o, r = o.reshape(len(o), -1), r.reshape(len(r), -1)
        return float(np.mean((o * r).sum(1) / np.linalg.norm(o, axis=1) / np.linalg.norm(r, axis=1)))

    return Workload(name=name, model=model.eval(), inputs=[InputSpec("tokens", ("batch", "seq", 16))],
                    calib_data={"tokens": x[:32]}, eval_data={"tokens": x[32:]},
                    metric=Metric("cos", cos), output_names=["hidden"], batch_range=(1, 4, 8))


def test_dims_seq_longer_than_the_data_is_estimated_at_that_length_or_refused(tmp_path):
    """dims={'seq': 40} with data at seq 10: a graph that runs at seq 40 is estimated there
    (row shapes, larger latency, the estimator's notes and TensorRT version in the row); the
    TorchScript export of nn.TransformerEncoder bakes the key length at 10, so no engine could
    run seq 40: refused up front, naming the axis, never a TypeError or a seq-10 figure."""
    torch.manual_seed(0)
    w = _seq_workload(HandAttention(), "hand-attn")
    rows = {d: {r["recipe"]: r for r in l4opt.sweep(w, "baseline,int8", tmp_path / "a",
                                                      progress=False, dims=d and {"seq": d}).rows}
            for d in (None, 40)}
    for recipe in ("baseline", "int8"):
        short, long = rows[None][recipe], rows[40][recipe]
        assert short["status"] == long["status"] == "ok", (short.get("error"), long.get("error"))
        assert short["shapes"]["inputs"] == {"tokens": [4, 10, 16]}
        assert long["shapes"]["inputs"] == {"tokens": [4, 40, 16]}
        assert long["latency_ms"] > short["latency_ms"] > 0
        assert long["latency_trt_version"] and isinstance(long["latency_notes"], list)
        assert any("fused MHA" in n for n in long["latency_notes"]), long["latency_notes"]
    assert any("key length 40" in n for n in rows[40]["int8"]["latency_notes"])

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    enc = _seq_workload(nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False),
                        "encoder-1")
    res = l4opt.sweep(enc, "baseline,int8", tmp_path / "b", progress=False)  # seq 10: fine
    assert all(r["status"] == "ok" and r["latency_ms"] > 0 for r in res.rows), res.not_ok
    with pytest.raises(BadInput, match=r"fixed seq at the traced 10 \(dims= asks 40\)"):
        l4opt.sweep(enc, "baseline,int8", tmp_path / "b", progress=False, dims={"seq": 40})


def _fp16_with_layernorm(tmp_path):
    """The graph that crashed ONNX Runtime: the encoder's FP16 export with LayerNorm in FP16."""
    import onnx
    from modelopt.onnx.autocast.convert import convert_to_f16

    from l4opt.pipeline.export import export_torch

    w = transformer_workload()
    export_torch(w.module(), w, tmp_path / "fp32.onnx", batch=16)
    m16 = convert_to_f16(onnx.load(str(tmp_path / "fp32.onnx")), low_precision_type="fp16",
                         keep_io_types=True)
    onnx.save(m16, str(tmp_path / "crash.onnx"))
    return w, tmp_path / "crash.onnx"


def test_a_native_crash_of_onnxruntime_is_a_failed_row_and_the_sweep_goes_on(tmp_path,
                                                                            monkeypatch):
    from l4opt.pipeline import export
    from l4opt.pipeline.runners import NativeCrash, OrtWorker

    w, crash = _fp16_with_layernorm(tmp_path)
    with OrtWorker(tmp_path / "ort.log") as ort:
        with pytest.raises(NativeCrash, match="SIGSEGV"):
            ort.run(crash, ["tokens"], [[w.eval_data["tokens"][:4]]], numerics="onnxruntime")
        # as TensorRT computes it (FP16 LayerNorm in FP32), the same graph runs
        assert ort.run(crash, ["tokens"], [[w.eval_data["tokens"][:4]]])["hidden"].shape == \
            (4, 10, 32)
        # the same worker object starts a fresh process for the next graph
        ok = ort.run(tmp_path / "fp32.onnx", ["tokens"], [[w.eval_data["tokens"][:4]]])
    assert ok["hidden"].shape == (4, 10, 32)
    # without l4opt's fix (LayerNorm kept in FP32), and with ONNX Runtime's own kernels (the
    # L4OPT_DRIFT_NUMERICS diagnostic; TensorRT numerics compute it in FP32 and do not crash),
    # the baseline trial crashes ORT: a failed row naming the signal, the next trial still runs
    monkeypatch.setattr(export, "FP32_OPS", ())
    monkeypatch.setenv("L4OPT_DRIFT_NUMERICS", "onnxruntime")
    res = l4opt.sweep(w, "baseline,int8", tmp_path / "run", progress=False)
    base, int8 = res.rows
    assert base["status"] == "failed" and "SIGSEGV" in base["error"], base.get("error")
    assert int8["status"] == "ok"


# ------------------------------------------------------------------ item 5: several outputs

def test_two_inputs_two_outputs_reach_metric_and_tensor_metrics_by_name(tmp_path):
    seen = []

    def both(o, r, labels):
        seen.append((sorted(o), sorted(r)))
        return float(np.mean(o["cls"].argmax(1) == r["cls"].argmax(1)))

    w = two_io_workload(Metric("cls-agree", both))
    res = l4opt.sweep(w, "baseline,int8,int8-max", tmp_path, progress=False)
    assert all(r["status"] == "ok" for r in res.rows), res.not_ok
    assert seen and all(s == (["cls", "reg"], ["cls", "reg"]) for s in seen)
    for r in res.rows:
        assert r["outputs"] == ["cls", "reg"]
        per = r["tensor_metrics_by_output"]
        assert set(per) == {"cls", "reg"}
        assert r["cos_mean"] == pytest.approx(min(p["cos_mean"] for p in per.values()))
        assert r["max_abs_err"] == pytest.approx(max(p["max_abs_err"] for p in per.values()))
    int8 = res.rows[1]  # a (K=24) is quantized; b (K=12) and both heads (N=5, 3) are small
    assert (int8["gemm_layers"], int8["quantized_layers"]) == (4, 1)
    assert all("K or N < 16" in e["reason"] for e in int8["excluded_layers"])


# ------------------------------------------------------------------ item 2: the cache key

def test_cache_key_covers_forward_metric_labels_and_is_stable(tmp_path):
    w = mlp_workload()
    first = l4opt.sweep(w, "int8", tmp_path, progress=False)
    assert l4opt.sweep(w, "int8", tmp_path, progress=False).rows[0]["cached"]

    # the same weights, a different forward (a plain attribute, not in the state dict): a
    # different FP32 graph, so recomputed
    class Scaled(nn.Module):
        def __init__(self, inner, k):
            super().__init__()
            self.inner, self.k = inner, k

        def forward(self, x):
            return self.inner(x) * self.k

    base = l4opt.sweep(mlp_workload(model=Scaled(w.module(), 1.0)), "int8", tmp_path,
                       progress=False).rows[0]
    again = l4opt.sweep(mlp_workload(model=Scaled(w.module(), -1.0)), "int8", tmp_path,
                        progress=False).rows[0]
    assert base["workload_fingerprint"] == again["workload_fingerprint"]
    assert not again["cached"] and again["graph_sha256"] != base["graph_sha256"]
    assert again["metric"] != base["metric"]  # argmax of -logits: the new forward's result

    # a different metric function (same name): recomputed with the new metric
    w3 = mlp_workload(metric=Metric("top1", lambda o, r, lab: 0.5))
    r3 = l4opt.sweep(w3, "int8", tmp_path, progress=False).rows[0]
    assert not r3["cached"] and r3["metric"] == 0.5
    # a metric Python cannot read the source of: its version decides
    src_less = eval("lambda o, r, lab: 0.25")  # noqa: S307 - no source file to read
    r4 = l4opt.sweep(mlp_workload(metric=Metric("top1", src_less, version="1")), "int8",
                     tmp_path, progress=False).rows[0]
    r5 = l4opt.sweep(mlp_workload(metric=Metric("top1", src_less, version="2")), "int8",
                     tmp_path, progress=False).rows[0]
    assert not r4["cached"] and not r5["cached"] and r4["key"] != r5["key"]

    # other labels: recomputed
    labels = np.asarray(w.eval_labels).copy()
    labels[:20] = 1 - labels[:20]
    r6 = l4opt.sweep(mlp_workload(eval_labels=labels), "int8", tmp_path, progress=False).rows[0]
    assert not r6["cached"] and r6["metric"] != first.rows[0]["metric"]


# ------------------------------------------------------------------ item 3: checked exports

class NumpyRoundTrip(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.from_numpy(np.tanh(x.numpy()))  # leaves torch: traced as a constant
        return self.fc(y)


def _tiny(model, name="tiny"):
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    return Workload(name=name, model=model, inputs=[InputSpec("x", ("batch", 8))],
                    calib_data={"x": x}, eval_data={"x": x},
                    metric=Metric("agree", _agree))


def test_an_export_that_lost_its_input_is_refused_before_any_trial(tmp_path):
    with pytest.raises(BadInput, match=r"no input \['x'\].*\.numpy\(\)"):
        l4opt.sweep(_tiny(NumpyRoundTrip()), "baseline,int8-max", tmp_path, progress=False)
    assert not any(r.get("kind") == "trial" for r in _stored(tmp_path))


class BatchDependent(nn.Module):
    """Uses the example batch's statistics as a traced constant: ORT disagrees with torch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x - float(x.mean()))


def test_an_export_that_disagrees_with_torch_is_refused(tmp_path):
    with pytest.raises(BadInput, match="does not compute what the torch model computes"):
        l4opt.sweep(_tiny(BatchDependent()), "baseline", tmp_path, progress=False)


def test_a_zero_latency_is_never_a_result(tmp_path, monkeypatch):
    from l4opt.latency import estimate

    real = estimate.estimate_onnx

    def zero(*a, **kw):
        e = real(*a, **kw)
        e.total_ms = 0.0
        return e

    monkeypatch.setattr(estimate, "estimate_onnx", zero)
    r = l4opt.sweep(_tiny(nn.Linear(8, 4)), "baseline", tmp_path, progress=False).rows[0]
    assert r["status"] == "ok" and r.get("latency_ms") is None
    assert r.get("throughput_samples_s") is None
    assert any("not a latency" in n for n in r["notes"])


def _stored(run_dir):
    import json
    import sqlite3

    db = run_dir / "results.sqlite"
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        return [json.loads(r) for (r,) in con.execute("SELECT row FROM trials")]
    finally:
        con.close()


# ------------------------------------------------------------------ item 6: user code raising

@pytest.mark.parametrize("metric, match", [
    (lambda o, r, lab: {}["missing"] if not np.array_equal(o, r) else 1.0, "KeyError: 'missing'"),
    (lambda o, r, lab: 1 / 0 if not np.array_equal(o, r) else 1.0, "ZeroDivisionError"),
    (lambda o, r, lab: float("nan") if not np.array_equal(o, r) else 1.0, "returned nan"),
    (lambda o, r, lab: "good" if not np.array_equal(o, r) else 1.0, "not a number"),
])
def test_a_metric_that_raises_or_returns_junk_fails_its_row_only(tmp_path, metric, match):
    w = _tiny(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 24)))
    w.metric = Metric("m", metric)
    res = l4opt.sweep(w, "int8-max,fp8", tmp_path, progress=False)
    assert [r["status"] for r in res.rows] == ["failed", "failed"]
    assert all(match in r["error"] for r in res.rows), [r["error"] for r in res.rows]
    assert len([r for r in _stored(tmp_path) if r.get("kind") == "trial"]) == 2


class RaisesWhenQuantized(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 32)

    def forward(self, x):
        if any(hasattr(m, "input_quantizer") for m in self.modules()):
            raise KeyError("quantized forward refused")
        return self.fc(x)


def test_a_forward_that_raises_fails_its_row_and_the_others_finish(tmp_path):
    res = l4opt.sweep(_tiny(RaisesWhenQuantized()), "int8-max,int8", tmp_path, progress=False)
    by = {r["recipe"]: r for r in res.rows}
    assert by["int8-max"]["status"] == "failed"
    assert "KeyError" in by["int8-max"]["error"] and "quantized forward refused" in \
        by["int8-max"]["error"]
    assert by["int8"]["status"] != "failed"  # ONNX PTQ: no torch forward (K=8: a no-op)


def test_labels_of_the_wrong_length_are_refused_up_front(tmp_path):
    w = mlp_workload()
    w.eval_labels = np.asarray(w.eval_labels)[:-3]
    with pytest.raises(BadInput, match="eval_labels has 166 entries but the evaluation data "
                                       "has 169 samples"):
        l4opt.sweep(w, "int8", tmp_path, progress=False)
    assert not (tmp_path / "results.sqlite").exists()


# ------------------------------------------------------------------ item 9: quiet

def test_progress_false_prints_nothing_and_logs_go_to_the_trial_log(tmp_path, capfd):
    res = l4opt.sweep(two_io_workload(), "baseline,int8,fp8-torch", tmp_path, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out[-500:], err[-500:])
    for r in res.rows:
        log = tmp_path / r["log_path"]
        assert log.is_file() and log.parent.name == r["key"]
    text = (tmp_path / res.rows[1]["log_path"]).read_text()
    assert "[modelopt][onnx]" in text and "GEMV" in text


# ------------------------------------------------------------------ item 11: collapse

class Outlier(nn.Module):
    """One hidden channel 300x larger than the rest, undone by the next layer: FP32 does not
    care, one INT8 scale per tensor does."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.l3 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 32)
        with torch.no_grad():
            self.l1.weight[:4] *= 300.0
            self.l1.bias[:4] *= 300.0
            self.l2.weight[:, :4] /= 300.0

    def forward(self, x):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def test_a_collapse_says_so_with_the_calibration_outliers(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 16)).astype(np.float32)
    w = Workload(name="outlier", model=Outlier().eval(), inputs=[InputSpec("x", ("batch", 16))],
                 calib_data={"x": x[:64]}, eval_data={"x": x[64:]},
                 metric=Metric("agree", _agree), batch_range=(1, 16, 64))
    res = l4opt.sweep(w, "baseline,int8-max", tmp_path, progress=False)
    base, q = res.rows
    assert not base["collapsed"]
    # one status vocabulary: the row says collapsed, and not_ok lists it
    assert q["status"] == "collapsed" and q["collapsed"], (q["cos_mean"], q.get("metric_drop_rel"))
    assert [r["recipe"] for r in res.not_ok] == ["int8-max"]
    note = q["collapse_note"]
    # a Workload object has no CLI name: the note gives the Python call that works for it
    assert "l4opt.search(workload, 'int8-max'" in note
    assert "amax" in note and "median" in note and "Relu" in note
    assert q["cos_mean"] < 0.9 or q["metric_drop_rel"] > 0.1
