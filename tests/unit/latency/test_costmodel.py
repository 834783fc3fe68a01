"""The L4 cost model's rules, its truth table, its fit and leave-one-out, bands, calibration."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from l4opt.latency import costmodel
from l4opt.latency import estimate
from l4opt.latency import graph_shapes
from l4opt.errors import BadInput

FP8 = TensorProto.FLOAT8E4M3FN
I8 = TensorProto.INT8


# ------------------------------------------------------------------ hand-built Q/DQ graphs

def _qdq(x, fmt, tag, nodes, inits):
    """x -> QuantizeLinear -> DequantizeLinear (per-tensor), as ModelOpt writes them."""
    inits += [numpy_helper.from_array(np.array(0.05, np.float32), f"s_{tag}"),
              helper.make_tensor(f"z_{tag}", fmt, [], [0])]
    nodes += [helper.make_node("QuantizeLinear", [x, f"s_{tag}", f"z_{tag}"], [f"{tag}_q"]),
              helper.make_node("DequantizeLinear", [f"{tag}_q", f"s_{tag}", f"z_{tag}"], [f"{tag}_dq"])]
    return f"{tag}_dq"


def attention(bmm1=None, bmm2=None, heads=4, head=32, seq=128):
    """q, k, v [batch, heads, seq, head] -> softmax(q k^T / sqrt(d)) v, with Q/DQ of format
    `bmm1` on both inputs of the first BMM and `bmm2` on both inputs of the second."""
    nodes, inits = [], [numpy_helper.from_array(np.array(head ** 0.5, np.float32), "scale")]
    q, k, v = "q", "k", "v"
    nodes.append(helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]))
    k = "kt"
    if bmm1:
        q, k = _qdq(q, bmm1, "q1", nodes, inits), _qdq(k, bmm1, "k1", nodes, inits)
    nodes += [helper.make_node("MatMul", [q, k], ["s"], name="bmm1"),
              helper.make_node("Div", ["s", "scale"], ["s2"]),
              helper.make_node("Softmax", ["s2"], ["p"], axis=-1, name="softmax")]
    p = "p"
    if bmm2:
        p, v = _qdq(p, bmm2, "p2", nodes, inits), _qdq(v, bmm2, "v2", nodes, inits)
    nodes.append(helper.make_node("MatMul", [p, v], ["o"], name="bmm2"))
    shape = ["batch", heads, seq, head]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
                                          for n in ("q", "k", "v")],
                          [helper.make_tensor_value_info("o", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_attention_fused_only_when_the_qdq_placement_allows_it():
    both = estimate.estimate_onnx(attention(I8, I8), "L4", batch=8)
    kinds = list(both.layers["kind"])
    assert kinds.count("mha") == 1 and "norm" not in kinds
    assert both.layers.set_index("kind").loc["mha", "precision"] == "int8"
    assert any("fused MHA" in n for n in both.notes)
    # softmax output not quantized: the two BMMs differ, TensorRT cannot fuse them
    half = estimate.estimate_onnx(attention(I8, None), "L4", batch=8)
    assert "mha" not in list(half.layers["kind"])
    assert list(half.layers["kind"]).count("bmm") == 2 and "norm" in list(half.layers["kind"])
    assert any("Q/DQ placement" in n for n in half.notes)
    assert half.total_ms > both.total_ms  # the scores go through memory twice
    plain = estimate.estimate_onnx(attention(), "L4", batch=8)
    assert list(plain.layers["kind"]).count("mha") == 1  # FP16 attention fuses


def test_fp8_and_int8_attention_differ_where_tensorrt_rules_differ():
    # long sequence: INT8 fMHA stops at 512, FP8 on Ada (TRT >= 10.6) goes to 3072
    i8 = estimate.estimate_onnx(attention(I8, I8, seq=1024), "L4", batch=1)
    f8 = estimate.estimate_onnx(attention(FP8, FP8, seq=1024), "L4", batch=1)
    assert "mha" in list(f8.layers["kind"]) and "mha" not in list(i8.layers["kind"])
    assert any("INT8 fused MHA needs sequence <= 512" in n for n in i8.notes)
    assert f8.total_ms < i8.total_ms
    # before TensorRT 10.6 there is no FP8 MHA fusion on Ada
    old = estimate.estimate_onnx(attention(FP8, FP8, seq=1024), "L4", batch=1, trt_version="10.5")
    assert "mha" not in list(old.layers["kind"]) and old.total_ms > f8.total_ms
    assert any("TensorRT >= 10.6" in n for n in old.notes)
    # head size 128 > 64: FP8 MHA not fused on Ada even on new TensorRT
    big = estimate.estimate_onnx(attention(FP8, FP8, heads=2, head=128), "L4", batch=1)
    assert "mha" not in list(big.layers["kind"])


def _conv_net(fmt, depthwise=True):
    """x -> conv 3x3 32->64 -> BN-folded ReLU -> depthwise 3x3 -> pointwise 1x1, Q/DQ on every
    conv input and weight of format `fmt` (None: unquantized)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"

    def conv(x, cin, cout, k, groups, tag):
        w = rng.normal(size=(cout, cin // groups, k, k)).astype(np.float32)
        wn = f"w_{tag}"
        if not fmt:
            inits.append(numpy_helper.from_array(w, wn))
        else:  # the weight stored quantized, dequantized at build time
            x = _qdq(x, fmt, f"a_{tag}", nodes, inits)
            inits.append(numpy_helper.from_array(np.array(0.01, np.float32), f"ws_{tag}"))
            inits.append(helper.make_tensor(f"wz_{tag}", fmt, [], [0]))
            inits.append(helper.make_tensor(f"wq_{tag}", fmt, list(w.shape),
                                            np.zeros(w.size, int).tolist()))
            nodes.append(helper.make_node("DequantizeLinear", [f"wq_{tag}", f"ws_{tag}", f"wz_{tag}"],
                                          [f"wd_{tag}"]))
            wn = f"wd_{tag}"
        nodes.append(helper.make_node("Conv", [x, wn], [f"c_{tag}"], name=f"conv_{tag}",
                                      kernel_shape=[k, k], pads=[k // 2] * 4, group=groups))
        nodes.append(helper.make_node("Relu", [f"c_{tag}"], [f"r_{tag}"]))
        return f"r_{tag}"

    x = conv(x, 32, 64, 3, 1, "a")
    x = conv(x, 64, 64, 3, 64 if depthwise else 1, "dw")
    x = conv(x, 64, 128, 1, 1, "pw")
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      ["batch", 32, 56, 56])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_fp8_and_int8_differ_on_a_depthwise_conv_net():
    i8 = estimate.estimate_onnx(_conv_net(I8), "L4", batch=32)
    f8 = estimate.estimate_onnx(_conv_net(FP8), "L4", batch=32)
    dw_i8 = i8.layers.set_index("layer").loc["conv_dw"]
    dw_f8 = f8.layers.set_index("layer").loc["conv_dw"]
    assert dw_i8["kind"] == dw_f8["kind"] == "dwconv"
    assert dw_i8["precision"] == "int8" and dw_f8["precision"] == "fp16"
    assert dw_f8["latency_ms"] > dw_i8["latency_ms"]
    assert f8.total_ms > i8.total_ms
    assert any("depthwise" in n and "FP16" in n for n in f8.notes)
    assert any("depthwise" in n and "INT8" in n for n in i8.notes)
    # regular convs: same dense peak, same price
    for name in ("conv_a", "conv_pw"):
        assert i8.layers.set_index("layer").loc[name, "latency_ms"] == pytest.approx(
            f8.layers.set_index("layer").loc[name, "latency_ms"])


def test_modelopt_fp8_and_int8_place_depthwise_convs_differently(tmp_path):
    """Real ModelOpt ONNX PTQ: FP8 leaves the depthwise conv in FP16, INT8 quantizes it, and the
    estimates say so."""
    torch = pytest.importorskip("torch")
    from l4opt.pipeline.quantize import quantize_onnx
    from l4opt.spec.recipes import Recipe

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(32, 64, 3, padding=1)
            self.dw = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64)
            self.pw = torch.nn.Conv2d(64, 64, 1)

        def forward(self, x):
            return self.pw(torch.relu(self.dw(torch.relu(self.c1(x)))))

    src = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 32, 28, 28),), str(src), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    calib = {"x": np.random.default_rng(0).standard_normal((8, 32, 28, 28)).astype(np.float32)}
    est = {}
    for fmt in ("int8", "fp8"):
        out = tmp_path / f"net.{fmt}.onnx"
        quantize_onnx(str(src), str(out), Recipe(fmt, "onnx-ptq", fmt, "max"), calib)
        est[fmt] = estimate.estimate_onnx(out, "L4", batch=64)
    dw = {f: e.layers[e.layers["kind"] == "dwconv"].iloc[0] for f, e in est.items()}
    assert dw["int8"]["precision"] == "int8" and dw["fp8"]["precision"] == "fp16"
    assert est["fp8"].total_ms != est["int8"].total_ms


# ------------------------------------------------------------------ truth table

def test_truth_table_is_well_formed():
    t = estimate.truth_table()
    assert len(t) >= 12 and t["id"].is_unique
    for r in t.itertuples():
        assert r.value > 0 and r.batch >= 1 and isinstance(r.shapes, str) and r.shapes
        assert isinstance(r.source, str) and (r.source.startswith("github:") or "://" in r.source)
        assert "#L" in r.source or "://" in r.source  # a line, or a URL
        assert r.fit in ("abs", "ratio", "no", "excluded") and r.trt_version
    used = t[t["fit"].isin(["abs", "ratio"])]
    assert len(used) >= 12
    assert {"cnn", "transformer"} <= {("transformer" if "bert" in m else "cnn") for m in used["model"]}
    pairs = t[t["fit"] == "ratio"].groupby("group")["precision"].apply(set)
    assert any({"fp16"} < p for p in pairs)  # at least one precision pair of the same model
    assert (t["latency_ms"] > 0).all()
    # rows taken from a mislabelled table are kept, marked, and never fitted
    assert set(t[t["flags"].fillna("").str.contains("mislabelled")]["fit"]) <= {"excluded"}


def test_shipped_fit_file_carries_constants_and_loo_band():
    d = json.loads(estimate.FIT_JSON.read_text())
    c = costmodel.Constants.from_dict(d["constants"])
    for name, (lo, hi) in zip(costmodel.Constants.NAMES, costmodel.Constants.BOUNDS):
        assert lo <= getattr(c, name) <= hi
    assert d["band"]["q_low"] < d["band"]["q_high"]
    assert len(d["loo"]) >= 12 and all("loo_error" in r for r in d["loo"])
    assert "leave-one" in d["band"]["source"]
    # stamped with the rules it was fitted for: the shipped fit matches the code
    assert d["costmodel"] == costmodel.COSTMODEL_VERSION
    assert estimate.fitted().stale_note() is None
    e = estimate.estimate_onnx(_conv_net(I8), "L4", batch=8)
    assert not any("STALE" in n for n in e.notes) and "STALE" not in e.band_source


def _fit_file(tmp_path, version):
    d = json.loads(estimate.FIT_JSON.read_text())
    d["costmodel"] = version
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(d))
    return path


def test_a_fit_made_for_other_rules_says_so_on_every_estimate(tmp_path, capsys):
    with pytest.warns(estimate.StaleFitWarning, match="version 2|fitted with"):
        stale = estimate._read_fitted(_fit_file(tmp_path, costmodel.COSTMODEL_VERSION - 1))
    e = estimate.estimate_onnx(_conv_net(I8), "L4", batch=8, fit=stale)
    assert any(n.startswith("STALE FIT") and f"version {costmodel.COSTMODEL_VERSION - 1}" in n
               for n in e.notes)
    assert "STALE FIT" in e.band_source and "STALE FIT" in e.to_text()
    with pytest.warns(estimate.StaleFitWarning):  # an old source-hash stamp is stale too
        old = estimate._read_fitted(_fit_file(tmp_path, "c305af1b"))
    assert old.costmodel_version is None and "no cost-model version" in old.stale_note()
    # `l4opt estimate` warns (on stderr) with a stale run calibration
    from l4opt import cli

    run = tmp_path / "run"
    run.mkdir()
    _fit_file(tmp_path, 1).rename(run / estimate.REFIT_NAME)
    onnx.save(_conv_net(I8), str(tmp_path / "cnn.onnx"))
    with pytest.warns(estimate.StaleFitWarning):
        assert cli.main(["estimate", "--onnx", str(tmp_path / "cnn.onnx"), "--batch", "4",
                         "--refit", str(run)]) == 0
    assert "STALE FIT" in capsys.readouterr().out


def _encoder_block(int8: bool):
    """One transformer block as ONNX: QKV/out/FFN GEMMs around a fused-able attention."""
    nodes, inits = [], []
    rng = np.random.default_rng(0)
    d, heads, seq = 256, 4, 128

    def gemm(x, cin, cout, tag):
        w = numpy_helper.from_array(rng.normal(size=(cin, cout)).astype(np.float32), f"w_{tag}")
        inits.append(w)
        wn = f"w_{tag}"
        if int8:
            x = _qdq(x, I8, f"a_{tag}", nodes, inits)
            wn = _qdq(wn, I8, f"w_{tag}", nodes, inits)
        nodes.append(helper.make_node("MatMul", [x, wn], [f"y_{tag}"], name=f"fc_{tag}"))
        return f"y_{tag}"

    shape = np.array([0, seq, heads, d // heads], np.int64)
    inits.append(numpy_helper.from_array(shape, "hshape"))
    inits.append(numpy_helper.from_array(np.array([0, seq, d], np.int64), "oshape"))
    inits.append(numpy_helper.from_array(np.array((d // heads) ** 0.5, np.float32), "scale"))
    qkv = []
    for t in ("q", "k", "v"):
        y = gemm("x", d, d, t)
        nodes.append(helper.make_node("Reshape", [y, "hshape"], [f"{t}_h"]))
        perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
        nodes.append(helper.make_node("Transpose", [f"{t}_h"], [f"{t}_t"], perm=perm))
        qkv.append(f"{t}_t")
    q, k, v = qkv
    if int8:
        q, k = _qdq(q, I8, "q1", nodes, inits), _qdq(k, I8, "k1", nodes, inits)
    nodes += [helper.make_node("MatMul", [q, k], ["s"], name="bmm1"),
              helper.make_node("Div", ["s", "scale"], ["s2"]),
              helper.make_node("Softmax", ["s2"], ["p"], axis=-1)]
    p = "p"
    if int8:
        p, v = _qdq(p, I8, "p2", nodes, inits), _qdq(v, I8, "v2", nodes, inits)
    nodes += [helper.make_node("MatMul", [p, v], ["o"], name="bmm2"),
              helper.make_node("Transpose", ["o"], ["o_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["o_t", "oshape"], ["o_r"])]
    y = gemm("o_r", d, d, "out")
    y = gemm(gemm(y, d, 4 * d, "ff1"), 4 * d, d, "ff2")
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", seq, d])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_fp16_transformer_band_holds_the_ratios_held_out_error_and_says_so():
    """The absolute truth rows are INT8 CNNs; FP16 GEMMs and attention are validated only
    through the BERT INT8/FP16 ratio, so their band is at least that row's held-out error."""
    cnn = estimate.estimate_onnx(_conv_net(I8), "L4", batch=8)
    fp16 = estimate.estimate_onnx(_encoder_block(False), "L4", batch=8)
    int8 = estimate.estimate_onnx(_encoder_block(True), "L4", batch=8)

    def rel(e):
        return (e.high_ms - e.low_ms) / e.total_ms

    assert rel(fp16) >= rel(cnn) * (1 - 1e-9), (rel(fp16), rel(cnn))
    m = max(abs(e) for e in estimate.fitted().kind_errors["fp16_gemm"]["errors"])
    assert fp16.high_ms >= fp16.total_ms / (1 - m) * 0.999  # holds the ratio's held-out error
    # the family-held-out band already holds it: the band says how thinly FP16 is validated
    word = "band widened" if estimate.fitted().q_low > -m else "validation thin"
    assert word in fp16.band_source and "FP16 GEMMs" in fp16.band_source
    assert "ratio" in fp16.band_source and any(word in n for n in fp16.notes)
    assert "widened" not in cnn.band_source and "validation thin" not in cnn.band_source
    assert not any("widened" in n or "validation thin" in n for n in cnn.notes)
    # the INT8 block has no FP16 GEMMs, but its attention is still validated by the ratio only
    assert "attention" in int8.band_source and "FP16 GEMMs" not in int8.band_source
    assert rel(int8) >= rel(cnn) * (1 - 1e-9)  # the family-held-out band already holds it
    # the truth lies outside the CNN band by as much as the ratio's held-out error: covered
    fit = estimate.fitted()
    worst = max(abs(e) for e in fit.kind_errors["fp16_gemm"]["errors"])
    assert fp16.high_ms >= fp16.total_ms / (1 - worst) * 0.999


# ------------------------------------------------------------------ fitting

def _synthetic_rows(truth: costmodel.Constants, n=14, seed=1):
    """Rows of random kernel mixes whose 'measured' latency is the model at `truth`."""
    rng = np.random.default_rng(seed)
    rows, groups = [], []
    for i in range(n):
        k = int(rng.integers(20, 60))
        feat = {"klass": rng.integers(0, 3, size=k).tolist(),
                "compute_s": (10 ** rng.uniform(-6.5, -4, size=k)).tolist(),
                "memory_s": (10 ** rng.uniform(-6.5, -4, size=k)).tolist()}
        rows.append({"features": feat, "measured_ms": costmodel.predict_ms(feat, truth)})
        groups.append(f"g{i // 2}")
    return rows, groups


def test_fit_recovers_known_constants_and_loo_reports_errors():
    truth = costmodel.Constants(tc_eff=0.42, tc8_eff=0.31, mem_eff=0.66, kernel_us=2.5)
    rows, groups = _synthetic_rows(truth)
    got = costmodel.fit(rows, start=costmodel.Constants())
    np.testing.assert_allclose(got.vector(), truth.vector(), rtol=0.03)
    res = costmodel.loo(rows, groups, start=costmodel.Constants())
    assert len(res) == len(rows)
    assert max(abs(r["error"]) for r in res) < 0.03  # noiseless: held-out rows predicted
    # with noise, held-out error is larger than in-sample error and is what gets reported
    rng = np.random.default_rng(3)
    noisy = [dict(r, measured_ms=r["measured_ms"] * float(np.exp(rng.normal(0, 0.15))))
             for r in rows]
    res = costmodel.loo(noisy, groups)
    c = costmodel.fit(noisy)
    insample = [abs(costmodel.predict_ms(r["features"], c) / r["measured_ms"] - 1) for r in noisy]
    assert np.median([abs(r["error"]) for r in res]) > 0.8 * np.median(insample)
    lo, hi = costmodel.band_quantiles([r["error"] for r in res])
    assert lo < 0 < hi


def test_ratio_rows_constrain_the_precision_efficiencies():
    truth = costmodel.Constants(tc_eff=0.6, tc8_eff=0.3, mem_eff=0.7, kernel_us=3)
    comp = [1e-4] * 10
    f16 = {"klass": [0] * 10, "compute_s": comp, "memory_s": [1e-6] * 10}
    f8 = {"klass": [1] * 10, "compute_s": [c / 2 for c in comp], "memory_s": [1e-6] * 10}
    rows = [{"ratio": (f8, f16), "measured": costmodel.predict_ms(f8, truth) / costmodel.predict_ms(f16, truth)},
            {"features": f16, "measured_ms": costmodel.predict_ms(f16, truth)}]
    got = costmodel.fit(rows, start=costmodel.Constants(tc_eff=0.5, tc8_eff=0.5))
    assert got.tc8_eff / got.tc_eff == pytest.approx(0.5, rel=0.03)


def test_gemm_efficiency_knows_tiles_and_waves():
    l4 = estimate.get_gpu("L4")
    big = costmodel.gemm_efficiency(4096, 4096, 4096, 1, l4.sms)
    assert big > 0.9
    assert costmodel.gemm_efficiency(1, 4096, 4096, 1, l4.sms) < 0.3  # a GEMV wastes the tile
    assert costmodel.gemm_efficiency(4096, 4096, 32, 1, l4.sms) < 0.4 * big  # small K
    # one CTA too many for a full wave costs a second, nearly empty wave
    assert costmodel.gemm_efficiency(128 * 59, 256, 4096, 1, l4.sms) < \
        costmodel.gemm_efficiency(128 * 58, 256, 4096, 1, l4.sms)


# ------------------------------------------------------------------ bands

def test_every_estimate_has_an_ordered_band_and_says_so():
    e = estimate.estimate_onnx(_conv_net(I8), "L4", batch=8)
    assert e.low_ms is not None and e.low_ms <= e.total_ms <= e.high_ms
    assert (e.latency_ms, e.latency_low_ms, e.latency_high_ms) == (e.total_ms, e.low_ms, e.high_ms)
    assert "band" in e.to_text() and e.band_source
    d = e.to_dict()
    assert d["low_ms"] <= d["total_ms"] <= d["high_ms"] and d["band_source"]
    json.dumps(d)
    t4 = estimate.estimate_onnx(_conv_net(I8), "T4", batch=8)
    assert "NOT validated on T4" in t4.band_source


def test_indistinguishable_is_band_overlap():
    a = {"latency_ms": 1.0, "latency_low_ms": 0.8, "latency_high_ms": 1.3}
    b = {"latency_ms": 1.2, "latency_low_ms": 1.0, "latency_high_ms": 1.5}
    c = {"latency_ms": 2.0, "latency_low_ms": 1.6, "latency_high_ms": 2.6}
    assert estimate.indistinguishable(a, b) and estimate.indistinguishable(b, a)
    assert not estimate.indistinguishable(a, c)
    e1 = estimate.estimate_onnx(_conv_net(I8), "L4", batch=8)
    e2 = estimate.estimate_onnx(_conv_net(I8), "L4", batch=8)
    assert estimate.indistinguishable(e1, e2)
    with pytest.raises(BadInput, match="latency"):
        estimate.indistinguishable({}, a)


# ------------------------------------------------------------------ calibration

def test_calibrate_from_measured_rows_reduces_error(tmp_path):
    from l4opt.results.store import Store

    run = tmp_path / "run"
    st = Store(run)
    true = costmodel.Constants(tc_eff=0.25, tc8_eff=0.2, mem_eff=0.45, kernel_us=9.0)
    models = {"cnn-int8": _conv_net(I8), "cnn-fp8": _conv_net(FP8), "cnn-fp16": _conv_net(None),
              "attn-int8": attention(I8, I8), "attn-half": attention(I8, None)}
    n = 0
    for name, m in models.items():
        path = st.artifacts / f"{name}.onnx"
        onnx.save(m, str(path))
        for b in (1, 8, 32):
            g = costmodel.kernels(m, "L4", batch=b)
            measured = costmodel.predict_ms(costmodel.features(g.kernels, "L4"), true)
            st.put({"key": f"{name}-{b}", "trial_id": f"{name}-{b}", "workload": "synthetic",
                    "recipe": name, "status": "ok", "onnx_path": str(path.relative_to(run)),
                    "latency_source": "measured-l4", "latency_ms": measured, "latency_batch": b,
                    "est_latency_ms": None})
            n += 1
    st.put({"key": "titan", "trial_id": "titan", "workload": "synthetic", "recipe": "x",
            "status": "ok", "onnx_path": "artifacts/cnn-int8.onnx",
            "latency_source": "measured-titan-rtx", "latency_gpu": "NVIDIA TITAN RTX",
            "latency_ms": 5.0, "latency_batch": 1})
    st.put({"key": "est-only", "trial_id": "est-only", "workload": "synthetic", "recipe": "x",
            "status": "ok", "onnx_path": "artifacts/cnn-int8.onnx", "latency_source": "estimated-l4",
            "latency_ms": 1.0})
    st.close()
    table = estimate.refit_from(run)
    assert len(table) == n  # estimated rows and other GPUs' measurements are not used
    before = table["error_before"].abs().median()
    after = table["error_after"].abs().median()
    assert after < before / 3, (before, after)
    assert (run / estimate.REFIT_NAME).exists()
    again = estimate.refit_table(run)
    assert list(again["trial_id"]) == list(table["trial_id"])
    # estimates can use the run's constants and band
    e = estimate.estimate_onnx(run / "artifacts" / "cnn-int8.onnx", "L4", batch=8, refit=run)
    assert "refitted on" in e.band_source and e.low_ms <= e.total_ms <= e.high_ms


def test_cli_calibrate_from_prints_error_before_and_after(tmp_path, capsys):
    from l4opt import cli
    from l4opt.results.store import Store

    run = tmp_path / "run"
    st = Store(run)
    true = costmodel.Constants(tc_eff=0.3, tc8_eff=0.25, mem_eff=0.5, kernel_us=8.0)
    for i, (name, m) in enumerate({"a": _conv_net(I8), "b": attention(I8, I8),
                                   "c": _conv_net(None)}.items()):
        path = st.artifacts / f"{name}.onnx"
        onnx.save(m, str(path))
        g = costmodel.kernels(m, "L4", batch=4)
        st.put({"key": name, "trial_id": name, "workload": "w", "recipe": name, "status": "ok",
                "onnx_path": str(path.relative_to(run)), "latency_source": "measured-l4",
                "latency_ms": costmodel.predict_ms(costmodel.features(g.kernels, "L4"), true),
                "latency_batch": 4})
    st.close()
    assert cli.main(["estimate", "--refit-from", str(run)]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "after" in out and "error_before" in out
    assert cli.main(["estimate", "--onnx", str(run / "artifacts" / "a.onnx"), "--batch", "4",
                     "--refit", str(run)]) == 0
    assert "refitted on 3 measured L4 rows" in capsys.readouterr().out
    assert cli.main(["estimate", "--calibrate-from", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_calibrate_from_refuses_a_run_without_measurements(tmp_path):
    from l4opt.results.store import Store

    Store(tmp_path / "r").close()
    with pytest.raises(BadInput, match="no measured L4 rows"):
        estimate.refit_from(tmp_path / "r")
    with pytest.raises(BadInput, match="does not exist"):
        estimate.refit_from(tmp_path / "nope")
    assert estimate.refit_table(tmp_path / "r").empty


def test_l2_replay_keeps_small_working_sets_and_spills_large_ones():
    cap = 48e6 * costmodel.L2_USABLE_FRACTION
    # kernel 0 reads a weight and writes x; kernel 1 reads x: everything fits, so in steady
    # state the weight and x are L2 hits, and x's write never reaches DRAM
    small = [(0, "r", "w0", 4e6, False), (0, "w", "x", 8e6, False), (1, "r", "x", 8e6, False),
             (1, "w", "y", 1e6, True)]
    h = costmodel._lru_hits(small, cap)
    assert h[0] == 1.0 and h[1] == 1.0 and h[2] == 1.0 and h[3] == 0.0
    # a tensor larger than the cache is mostly a miss; the network input always is
    big = [(0, "r", "in", 1e6, True), (0, "w", "x", 3 * cap, False), (1, "r", "x", 3 * cap, False)]
    h = costmodel._lru_hits(big, cap)
    assert h[0] == 0.0 and h[2] <= 1 / 3 + 1e-9 and h[1] == h[2]
    # through the estimator: batch 64 moves more of its bytes through DRAM than batch 1
    e1 = estimate.estimate_onnx(_conv_net(I8), "L4", batch=1).layers
    e64 = estimate.estimate_onnx(_conv_net(I8), "L4", batch=64).layers
    share = lambda L: L["dram_bytes"].sum() / (L["dram_bytes"].sum() + L["l2_bytes"].sum())  # noqa: E731
    assert share(e64) > share(e1)


# ------------------------------------------------------------------ FP8 vs INT8, said plainly

def _verdict(e):
    return [n for n in e.notes if n.startswith("FP8 and INT8 run")]


def test_the_estimate_says_plainly_whether_fp8_and_int8_run_the_same_kernels():
    # short attention at TensorRT 10.8: both fuse, same peak -> SAME, estimates equal
    i8 = estimate.estimate_onnx(attention(I8, I8, seq=128), "L4", batch=4)
    f8 = estimate.estimate_onnx(attention(FP8, FP8, seq=128), "L4", batch=4)
    for e in (i8, f8):
        (v,) = _verdict(e)
        assert "SAME kernels" in v and "TensorRT 10.8" in v and "in FP8 and in INT8" in v
        assert e.trt_version == "10.8"
    assert i8.total_ms == pytest.approx(f8.total_ms)
    # at TensorRT 10.5 FP8 attention does not fuse on Ada: DIFFERENT, and the estimates differ
    old = estimate.estimate_onnx(attention(I8, I8, seq=128), "L4", batch=4, trt_version="10.5")
    (v,) = _verdict(old)
    assert "DIFFERENT kernels" in v and "TensorRT 10.5" in v and "in INT8 only" in v
    assert old.trt_version == "10.5"
    # a depthwise conv net: FP8 has no depthwise kernel -> DIFFERENT, on both graphs
    for fmt in (I8, FP8):
        (v,) = _verdict(estimate.estimate_onnx(_conv_net(fmt), "L4", batch=8))
        assert "DIFFERENT kernels" in v and "no FP8 kernel on Ada" in v
    # an unquantized graph has nothing to say about FP8 vs INT8
    assert not _verdict(estimate.estimate_onnx(attention(), "L4", batch=4))


# ------------------------------------------------------------------ shapes the graph can't run

def _baked_encoder(tmp_path):
    """nn.TransformerEncoder exported by torch.onnx's TorchScript exporter at seq 10: the
    input says 'seq' is dynamic, but the key length is baked into a Reshape."""
    torch = pytest.importorskip("torch")
    from l4opt.pipeline.export import export_torch
    from l4opt.spec.workloads import InputSpec, Metric, Workload

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32,
                                             batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False).eval()
    x = np.random.default_rng(0).normal(size=(8, 10, 16)).astype(np.float32)
    w = Workload(name="enc", model=model, inputs=[InputSpec("tokens", ("batch", "seq", 16))],
                 calib_data={"tokens": x}, eval_data={"tokens": x},
                 metric=Metric("none", lambda o, r, l: 0.0), output_names=["hidden"])
    return export_torch(model, w, tmp_path / "enc.onnx", batch=4).path


def test_unknown_dims_never_reach_the_arithmetic(tmp_path, monkeypatch):
    """When only static shape inference is available (running the graph is impossible, e.g.
    ops ONNX Runtime lacks), unknown sizes inside attention are derived or defaulted, with a
    note, never a TypeError from multiplying by None."""
    path = _baked_encoder(tmp_path)

    def cannot_run(model, in_dims):
        raise RuntimeError("a graph ONNX Runtime cannot load")

    # shapes left as static inference gives them (no folding, no symbolic inference), and the
    # last resort, running the graph, fails
    monkeypatch.setattr(graph_shapes, "_shapes_by_folding", graph_shapes._shapes_by_inference)
    monkeypatch.setattr(graph_shapes, "_shapes_by_symbolic", lambda model, in_dims: None)
    monkeypatch.setattr(graph_shapes, "_shapes_by_running", cannot_run)
    e = estimate.estimate_onnx(path, "L4", batch=4, dynamic_dims={"seq": 10})
    assert e.total_ms > 0 and np.isfinite(e.total_ms)
    assert any("static inference only" in n for n in e.notes)
    assert list(e.layers["kind"]).count("mha") == 1


def test_a_graph_that_cannot_run_at_the_asked_shapes_is_refused_not_estimated(tmp_path):
    path = _baked_encoder(tmp_path)
    ok = estimate.estimate_onnx(path, "L4", batch=4, dynamic_dims={"seq": 10})
    assert ok.total_ms > 0
    with pytest.raises(costmodel.ShapeMismatch, match=r"cannot run at input shapes .*40"):
        estimate.estimate_onnx(path, "L4", batch=4, dynamic_dims={"seq": 40})
