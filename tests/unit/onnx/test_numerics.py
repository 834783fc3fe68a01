"""trt_numerics against an exact NumPy model of what TensorRT computes for small FP16 Q/DQ graphs:
FP32 accumulation, FP16 rounding at FP16 tensor boundaries, round-half-to-even quantization.

Power-of-two scales make every product and partial sum exact in FP32, so those references are
bit-exact whatever order ONNX Runtime accumulates in."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

from l4opt.onnx.numerics import session, trt_numerics

F16, F32 = TP.FLOAT16, TP.FLOAT
LEVELS = ("DISABLE_ALL", "BASIC")


def f16(a):
    """Round to FP16 and back (what an FP16 tensor store does)."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def q_int8(x, s):
    """ONNX / TensorRT INT8 quantization: saturate(round_half_to_even(x / s)), zero point 0."""
    return np.clip(np.rint(np.float32(x) / np.float32(s)), -128, 127).astype(np.float32)


def q_fp8(x, s):
    """FP8 E4M3FN quantization with ONNX's saturate=1: RNE, clamped to +-448."""
    v = np.clip(np.asarray(x, np.float32) / np.float32(s), -448, 448)
    return v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)


def model(nodes, inputs, outputs, inits, opset=19):
    g = h.make_graph(nodes, "t", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


def run(m, feeds, level="BASIC"):
    return session(m, level).run(None, feeds)


def t16(name, a):
    return nh.from_array(np.asarray(a, np.float16), name)


def im2col_conv(x, w, b, pad):
    """NCHW conv, stride 1, FP32 (exact for the power-of-two data used here)."""
    n, c, hh, ww = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = hh + 2 * pad - kh + 1, ww + 2 * pad - kw + 1
    cols = np.stack([xp[:, :, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)], 2)
    cols = cols.reshape(n, c * kh * kw, oh * ow)  # (c, kh*kw) order matches w.reshape(o, -1)
    y = np.einsum("ok,nkp->nop", w.reshape(o, -1).astype(np.float32), cols.astype(np.float32))
    return (y + b.reshape(1, o, 1)).reshape(n, o, oh, ow).astype(np.float32)


# ----------------------------------------------------------------------------- MLP, INT8 ---
def mlp_int8(rng, k=32, n=16, pow2=True):
    s1, s2 = (2.0 ** -4, 2.0 ** -3) if pow2 else (0.0371, 0.0913)
    sw1 = 2.0 ** -rng.integers(5, 8, n) if pow2 else rng.uniform(0.004, 0.02, n)
    sw2 = 2.0 ** -rng.integers(5, 8, 8) if pow2 else rng.uniform(0.004, 0.02, 8)
    w1q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    w2q = rng.integers(-127, 128, (n, 8)).astype(np.int8)
    b1 = (rng.normal(0, 0.5, n) * 64).round() / 64
    i8 = lambda nm, a: nh.from_array(np.asarray(a, np.int8), nm)
    nodes = [
        h.make_node("Cast", ["x"], ["x16"], to=F16),
        h.make_node("QuantizeLinear", ["x16", "s1", "zp"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "s1", "zp"], ["xd"]),
        h.make_node("DequantizeLinear", ["w1q", "sw1", "zw1"], ["w1"], axis=1),
        h.make_node("MatMul", ["xd", "w1"], ["mm1"]),
        h.make_node("Add", ["mm1", "b1"], ["hb"]),
        h.make_node("Relu", ["hb"], ["hr"]),
        h.make_node("QuantizeLinear", ["hr", "s2", "zp"], ["hq"]),
        h.make_node("DequantizeLinear", ["hq", "s2", "zp"], ["hd"]),
        h.make_node("DequantizeLinear", ["w2q", "sw2", "zw2"], ["w2"], axis=1),
        h.make_node("MatMul", ["hd", "w2"], ["y16"]),
        h.make_node("Cast", ["y16"], ["y"], to=F32),
    ]
    inits = [t16("s1", s1), t16("s2", s2), t16("sw1", sw1), t16("sw2", sw2), t16("b1", b1),
             i8("zp", 0), i8("zw1", np.zeros(n)), i8("zw2", np.zeros(8)),
             i8("w1q", w1q), i8("w2q", w2q)]
    m = model(nodes, [h.make_tensor_value_info("x", F32, [None, k])],
              [h.make_tensor_value_info("y", F32, [None, 8])], inits)

    def reference(x):
        sv = lambda a: np.float32(np.float16(a))
        x16 = f16(x)
        xd = q_int8(x16, sv(s1)) * sv(s1)
        w1 = w1q.astype(np.float32) * f16(sw1)
        mm1 = f16(xd @ w1)                      # FP32 accumulation, FP16 store (feeds Add)
        hr = np.maximum(f16(mm1 + f16(b1)), 0)  # Add stored FP16; Relu exact
        hd = q_int8(hr, sv(s2)) * sv(s2)        # Q fused into Relu's epilogue: from FP16 hr
        w2 = w2q.astype(np.float32) * f16(sw2)
        return f16(hd @ w2)                     # FP16 store before the output Cast

    return m, reference


@pytest.mark.parametrize("level", LEVELS)
def test_mlp_int8_bit_exact(level):
    rng = np.random.default_rng(1)
    m, ref = mlp_int8(rng)
    x = rng.normal(0, 2, (16, 32)).astype(np.float32)
    t, stats = trt_numerics(m)
    got = run(t, {"x": x}, level)[0]
    np.testing.assert_array_equal(got, ref(x))
    assert stats["rounding_points"] == 3          # mm1, hb, y16
    assert stats["rounding_skipped_dq_fused_into_consumer"] == 4
    assert stats["rounding_skipped_exact_in_fp16"] == 1   # Relu (feeds Q only, exact anyway)
    assert stats["casts_to_fp16_kept_as_rounding"] == 1
    assert stats["initializers_upcast"] == 5


def test_mlp_int8_random_scales_close():
    """Non-power-of-two scales: FP32 sums depend on order, so allow a rare 1-step flip."""
    rng = np.random.default_rng(2)
    m, ref = mlp_int8(rng, k=64, pow2=False)
    x = rng.normal(0, 2, (32, 64)).astype(np.float32)
    got = run(trt_numerics(m)[0], {"x": x})[0]
    r = ref(x)
    assert np.mean(got != r) < 0.02
    assert np.abs(got - r).max() < 0.05 * np.abs(r).max()


def test_raw_ort_fp16_quantize_deviates():
    """The bug trt_numerics works around (microsoft/onnxruntime#22741): ORT's FP16
    QuantizeLinear truncates toward zero. Skipped on an ORT that rounds correctly."""
    x = np.linspace(-7, 7, 64).astype(np.float16)
    m = model([h.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"])],
              [h.make_tensor_value_info("x", F16, [64])],
              [h.make_tensor_value_info("y", TP.INT8, [64])],
              [t16("s", 0.05), nh.from_array(np.array(0, np.int8), "zp")])
    raw = run(m, {"x": x})[0].astype(np.float32)
    exact = np.clip(np.rint(x.astype(np.float64) / np.float64(np.float16(0.05))), -128, 127)
    if np.array_equal(raw, exact):
        pytest.skip("this onnxruntime rounds FP16 QuantizeLinear half to even")
    assert np.array_equal(raw, np.clip(np.trunc(x.astype(np.float64) / np.float64(np.float16(0.05))),
                                       -128, 127))
    fixed = run(trt_numerics(m)[0], {"x": x})[0].astype(np.float32)
    np.testing.assert_array_equal(fixed, q_int8(x.astype(np.float32), np.float16(0.05)))


# ---------------------------------------------------------------------------- conv, INT8 ---
@pytest.mark.parametrize("level", LEVELS)
def test_conv_int8_residual_bit_exact(level):
    rng = np.random.default_rng(3)
    c = 8
    s1, s2 = 2.0 ** -4, 2.0 ** -3
    sw = 2.0 ** -rng.integers(6, 9, c)
    wq = rng.integers(-127, 128, (c, c, 3, 3)).astype(np.int8)
    w2q = rng.integers(-127, 128, (c, c, 3, 3)).astype(np.int8)
    b = (rng.normal(0, 0.5, c) * 32).round() / 32
    i8 = lambda nm, a: nh.from_array(np.asarray(a, np.int8), nm)
    nodes = [
        h.make_node("Cast", ["x"], ["x16"], to=F16),
        h.make_node("QuantizeLinear", ["x16", "s1", "zp"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "s1", "zp"], ["xd"]),
        h.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=0),
        h.make_node("Conv", ["xd", "w", "b"], ["c1"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("QuantizeLinear", ["r1", "s2", "zp"], ["rq"]),
        h.make_node("DequantizeLinear", ["rq", "s2", "zp"], ["rd"]),
        h.make_node("DequantizeLinear", ["w2q", "sw", "zw"], ["w2"], axis=0),
        h.make_node("Conv", ["rd", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        h.make_node("Add", ["c2", "xd"], ["res"]),
        h.make_node("Cast", ["res"], ["y"], to=F32),
    ]
    inits = [t16("s1", s1), t16("s2", s2), t16("sw", sw), t16("b", b), i8("zp", 0),
             i8("zw", np.zeros(c)), i8("wq", wq), i8("w2q", w2q)]
    m = model(nodes, [h.make_tensor_value_info("x", F32, [1, c, 6, 6])],
              [h.make_tensor_value_info("y", F32, [1, c, 6, 6])], inits)
    x = rng.normal(0, 2, (1, c, 6, 6)).astype(np.float32)

    xd = q_int8(f16(x), s1) * np.float32(s1)
    w = wq.astype(np.float32) * f16(sw).reshape(c, 1, 1, 1)
    w2 = w2q.astype(np.float32) * f16(sw).reshape(c, 1, 1, 1)
    r1 = np.maximum(f16(im2col_conv(xd, w, f16(b), 1)), 0)
    rd = q_int8(r1, s2) * np.float32(s2)
    c2 = f16(im2col_conv(rd, w2, np.zeros(c, np.float32), 1))
    expect = f16(c2 + xd)

    t, stats = trt_numerics(m)
    np.testing.assert_array_equal(run(t, {"x": x}, level)[0], expect)
    assert stats["rounding_points"] == 3          # c1, c2, res


# ---------------------------------------------------------------------------- LayerNorm ----
def layernorm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True, dtype=np.float64)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps) * g + b).astype(np.float32)


def test_layernorm_fp32_compute_fp16_store():
    rng = np.random.default_rng(4)
    d = 64
    g, b = rng.normal(1, 0.1, d), rng.normal(0, 0.1, d)
    s = 2.0 ** -5
    nodes = [
        h.make_node("Cast", ["x"], ["x16"], to=F16),
        h.make_node("LayerNormalization", ["x16", "g", "b"], ["ln"], axis=-1, epsilon=1e-5),
        h.make_node("QuantizeLinear", ["ln", "s", "zp"], ["lq"]),      # ln feeds Q only
        h.make_node("DequantizeLinear", ["lq", "s", "zp"], ["ld"]),
        h.make_node("Cast", ["ld"], ["yq"], to=F32),
        h.make_node("LayerNormalization", ["x16", "g", "b"], ["ln2"], axis=-1, epsilon=1e-5),
        h.make_node("Cast", ["ln2"], ["y"], to=F32),                   # ln2 is stored FP16
    ]
    inits = [t16("g", g), t16("b", b), t16("s", s), nh.from_array(np.array(0, np.int8), "zp")]
    m = model(nodes, [h.make_tensor_value_info("x", F32, [8, d])],
              [h.make_tensor_value_info("yq", F32, [8, d]),
               h.make_tensor_value_info("y", F32, [8, d])], inits)
    x = (rng.normal(0, 2, (8, d)) + 5).astype(np.float32)
    t, stats = trt_numerics(m)
    yq, y = run(t, {"x": x})
    ln = layernorm(f16(x).astype(np.float64), f16(g), f16(b), 1e-5)
    # FP32 LayerNorm differs from the float64 one in the last FP32 bits only: equal after
    # the FP16 store except for rare round-boundary cases, and Q/DQ of it equal but for ties
    assert np.mean(y != f16(ln)) < 0.01 and np.abs(y - f16(ln)).max() <= 2 ** -9
    assert np.mean(yq != q_int8(ln, s) * np.float32(s)) < 0.01
    assert stats["rounding_points"] == 1          # ln2 only
    assert stats["rounding_skipped_q_fused_into_producer"] == 1


# ------------------------------------------------------------------------------ FP8 ---------
@pytest.mark.parametrize("opset", [19, 21])
def test_fp8_qdq_matmul(opset):
    rng = np.random.default_rng(5)
    k, n = 32, 16
    s, sw = 2.0 ** -5, 2.0 ** -6
    wf8 = rng.normal(0, 64, (k, n)).astype(ml_dtypes.float8_e4m3fn)
    zp8 = lambda nm, shape=(): onnx.helper.make_tensor(nm, TP.FLOAT8E4M3FN, list(shape),
                                                       np.zeros(int(np.prod(shape)), np.float32))
    w_t = onnx.helper.make_tensor("wq", TP.FLOAT8E4M3FN, [k, n], wf8.astype(np.float32).ravel())
    nodes = [
        h.make_node("Cast", ["x"], ["x16"], to=F16),
        h.make_node("QuantizeLinear", ["x16", "s", "zp"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        h.make_node("DequantizeLinear", ["wq", "sw", "zp"], ["w"]),
        h.make_node("MatMul", ["xd", "w"], ["y16"]),
        h.make_node("Cast", ["y16"], ["y"], to=F32),
    ]
    m = model(nodes, [h.make_tensor_value_info("x", F32, [None, k])],
              [h.make_tensor_value_info("y", F32, [None, n])],
              [t16("s", s), t16("sw", sw), zp8("zp"), w_t], opset=opset)
    x = rng.normal(0, 1, (8, k)).astype(np.float32)
    t, _ = trt_numerics(m)
    got = run(t, {"x": x})[0]
    xd = q_fp8(f16(x), s) * np.float32(s)
    w = wf8.astype(np.float32) * np.float32(sw)
    np.testing.assert_array_equal(got, f16(xd.astype(np.float64) @ w.astype(np.float64)))


# ------------------------------------------------------------------------ graph structure ---
def test_rounding_survives_every_ort_level_and_io_types_kept():
    rng = np.random.default_rng(6)
    w = rng.normal(0, 1, (64, 16)).astype(np.float16)
    nodes = [h.make_node("MatMul", ["x", "w"], ["mm"]),
             h.make_node("Add", ["mm", "x2"], ["y"])]
    m = model(nodes, [h.make_tensor_value_info("x", F16, [4, 64]),
                      h.make_tensor_value_info("x2", F16, [4, 16])],
              [h.make_tensor_value_info("y", F16, [4, 16])], [nh.from_array(w, "w")])
    t, stats = trt_numerics(m)
    assert [i.type.tensor_type.elem_type for i in t.graph.input] == [F16, F16]
    assert t.graph.output[0].type.tensor_type.elem_type == F16
    assert stats["io_casts"] == 3
    x = rng.normal(0, 1, (4, 64)).astype(np.float16)
    x2 = rng.normal(0, 1, (4, 16)).astype(np.float16)
    expect = f16(f16(x.astype(np.float32) @ w.astype(np.float32)) + x2)
    for level in ("DISABLE_ALL", "BASIC", "EXTENDED", "ALL"):
        got = run(t, {"x": x, "x2": x2}, level)[0]
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float32), expect, rtol=0, atol=2 ** -8)
    # the FP16 store after MatMul is really applied (not folded away) at ORT_ENABLE_ALL
    probe = onnx.ModelProto()
    probe.CopyFrom(t)
    probe.graph.output.append(h.make_tensor_value_info("mm", F32, [4, 16]))
    mm = run(probe, {"x": x, "x2": x2}, "ALL")[1]
    np.testing.assert_array_equal(mm, f16(mm))


def test_idempotent_on_fp32_graph():
    rng = np.random.default_rng(7)
    m, _ = mlp_int8(rng)
    t, _ = trt_numerics(m)
    t2, stats2 = trt_numerics(t)
    assert stats2.get("rounding_points", 0) == 0 and stats2.get("initializers_upcast", 0) == 0
    x = rng.normal(0, 2, (4, 32)).astype(np.float32)
    np.testing.assert_array_equal(run(t, {"x": x})[0], run(t2, {"x": x})[0])


@pytest.mark.parametrize("level", LEVELS)
def test_conv_bias_large_quotient(level):
    """bias / (s_x * s_w) above FP16's 65504: ORT's BiasQuantization (ORT_ENABLE_BASIC) turns
    the FP16 graph's bias into inf -> garbage INT32; the FP32 graph keeps it exact."""
    rng = np.random.default_rng(8)
    c = 4
    sx, sw, sy = 2.0 ** -7, 2.0 ** -10, 2.0 ** -4     # bias / (sx * sw) = 131072 for bias 1
    wq = rng.integers(-127, 128, (c, c, 3, 3)).astype(np.int8)
    nodes = [h.make_node("Cast", ["x"], ["x16"], to=F16),
             h.make_node("QuantizeLinear", ["x16", "sx", "zp"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "sx", "zp"], ["xd"]),
             h.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=0),
             h.make_node("Conv", ["xd", "w", "b"], ["yc"], pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["yc", "sy", "zp"], ["yq"]),
             h.make_node("DequantizeLinear", ["yq", "sy", "zp"], ["yd"]),
             h.make_node("Cast", ["yd"], ["y"], to=F32)]
    inits = [t16("sx", sx), t16("sw", np.full(c, sw)), t16("sy", sy), t16("b", np.ones(c)),
             nh.from_array(np.array(0, np.int8), "zp"), nh.from_array(np.zeros(c, np.int8), "zw"),
             nh.from_array(wq, "wq")]
    m = model(nodes, [h.make_tensor_value_info("x", F32, [1, c, 5, 5])],
              [h.make_tensor_value_info("y", F32, [1, c, 5, 5])], inits)
    x = rng.normal(0, 0.3, (1, c, 5, 5)).astype(np.float32)
    xd = q_int8(f16(x), sx) * np.float32(sx)
    yc = im2col_conv(xd, wq.astype(np.float32) * np.float32(sw), np.ones(c, np.float32), 1)
    expect = q_int8(yc, sy) * np.float32(sy)          # Q fused into the conv: no FP16 store
    np.testing.assert_array_equal(run(trt_numerics(m)[0], {"x": x}, level)[0], expect)
