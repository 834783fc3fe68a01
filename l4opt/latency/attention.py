"""Attention blocks (MatMul -> scale/mask -> Softmax -> MatMul) and whether TensorRT fuses each
into one MHA kernel (the rules and their sources: costmodel's docstring)."""
from __future__ import annotations

import numpy as np

from l4opt.latency.graph_shapes import Tensors, _known
from l4opt.latency.kernel import Kernel, count, node_id
from l4opt.latency.tiles import gemm_efficiency

# ops allowed between BMM1 and the softmax (scale, mask, layout, Q/DQ)
PASSTHROUGH = {"Add", "Div", "Mul", "Where", "Cast", "Sub", "Reshape", "Transpose",
               "QuantizeLinear", "DequantizeLinear", "Squeeze", "Unsqueeze"}
# ops allowed between the softmax and BMM2
AFTER_SOFTMAX = ("Cast", "QuantizeLinear", "DequantizeLinear", "Reshape")


def _bmm1(t: Tensors, sm):
    """The MatMul producing a softmax's scores through PASSTHROUGH ops, and the ops between."""
    between, cur = [], t.producer.get(sm.input[0])
    for _ in range(8):
        if cur is None:
            break
        if cur.op_type == "MatMul" and not any(i in t.constant for i in cur.input):
            return cur, between
        if cur.op_type not in PASSTHROUGH:
            break
        between.append(cur)
        main = [i for i in cur.input if i and i not in t.constant]
        main.sort(key=lambda i: -t.numel(i))  # the scores, not a broadcast mask
        cur = t.producer.get(main[0]) if main else None
    return None, between


def _bmm2(t: Tensors, sm):
    """The MatMul consuming a softmax's probabilities, and the ops between."""
    name, after = sm.output[0], []
    for _ in range(6):
        cs = t.consumers.get(name, [])
        if len(cs) == 2 and {c.op_type for c in cs} == {"IsNaN", "Where"}:
            # exporters guard fully masked rows: Where(IsNaN(p), 0, p), fused with softmax
            after.extend(cs)
            name = next(c for c in cs if c.op_type == "Where").output[0]
            continue
        if len(cs) != 1:
            break
        c = cs[0]
        if c.op_type == "MatMul" and c.input[0] == name and c.input[1] not in t.constant:
            return c, after
        if c.op_type not in AFTER_SOFTMAX:
            break
        after.append(c)
        name = c.output[0]
    return None, after


def fusion_rule(p1: set, p2: set, g, trt: tuple, seq_kv: int, head: int,
                float_precision: str, facts: dict) -> tuple[bool, str, str]:
    """(fused, reason when not, precision) of one attention block whose BMMs' inputs have the
    Q/DQ precisions `p1` and `p2` (None: unquantized)."""
    reason, fused, prec = "", True, float_precision
    if len(p1) > 1 or len(p2) > 1 or p1 != p2:
        return False, ("Q/DQ placement: the two attention BMMs are not quantized "
                       "alike, so TensorRT cannot fuse them into one MHA kernel"), prec
    q = next(iter(p1))
    prec = q or float_precision
    if q == "fp8" and not g.fp8:
        fused, reason = False, f"{g.name} has no FP8 tensor cores"
    elif q == "fp8" and g.arch == "Ada" and (trt < (10, 6) or seq_kv > 3072 or head > 64):
        fused, reason = False, (f"FP8 MHA fusion on Ada needs TensorRT >= 10.6, sequence "
                                f"<= 3072, head size <= 64 (here TRT {'.'.join(map(str, trt))},"
                                f" seq {seq_kv}, head {head})")
    elif q == "int8" and seq_kv > 512:
        fused, reason = False, f"INT8 fused MHA needs sequence <= 512 (here {seq_kv})"
    if q in ("fp8", "int8"):  # would the other format fuse this block?
        f8 = g.fp8 and not (g.arch == "Ada" and (trt < (10, 6) or seq_kv > 3072
                                                   or head > 64))
        i8 = seq_kv <= 512
        count(facts, "fp8_int8_differ" if f8 != i8 else "fp8_int8_same",
              f"attention block(s) (key length {seq_kv}, head size {head}) fused into "
              f"one MHA kernel " + ("in FP8 and in INT8" if f8 and i8 else
                                    "in neither FP8 nor INT8" if not (f8 or i8) else
                                    "in FP8 only" if f8 else "in INT8 only"))
    return fused, reason, prec


def attention_blocks(t: Tensors, g, trt: tuple, float_precision: str,
                     facts: dict) -> tuple[dict, list]:
    """({node id: block index} of the fused blocks' nodes, [block dicts]) with facts counted:
    mha_fused, mha_unfused, mha_reasons, mha_fused_precision."""
    mha_of: dict[str, int] = {}
    groups: list[dict] = []
    for sm in (n for n in t.graph.node if n.op_type == "Softmax"):
        bmm1, between = _bmm1(t, sm)
        bmm2, after = _bmm2(t, sm)
        if bmm1 is None or bmm2 is None:
            continue
        p1 = {t.q_precision(bmm1.input[0]), t.q_precision(bmm1.input[1])}
        p2 = {t.q_precision(bmm2.input[0]), t.q_precision(bmm2.input[1])}
        qs, ks = t.shapes.get(bmm1.input[0]) or [], t.shapes.get(bmm1.input[1]) or []
        sc, o2 = t.shapes.get(bmm1.output[0]) or [], t.shapes.get(bmm2.output[0]) or []
        # head size: Q's last axis, else the output's; key length: K's last axis, else the
        # scores' (static inference can leave any of them unknown)
        head = _known(qs[-1:]) or _known(o2[-1:]) or _known(ks[-2:-1])
        seq_kv = _known(ks[-1:]) or _known(sc[-1:])
        fused, reason, prec = fusion_rule(p1, p2, g, trt, seq_kv, head, float_precision, facts)
        idx = len(groups)
        groups.append({"bmm1": bmm1, "bmm2": bmm2, "softmax": sm, "fused": fused,
                       "precision": prec, "reason": reason, "head": head, "seq": seq_kv,
                       "nodes": [bmm1, *between, sm, *after, bmm2]})
        if fused:
            for n in groups[-1]["nodes"]:
                mha_of[node_id(n)] = idx
            facts["mha_fused"] += 1
            if prec not in facts.setdefault("mha_fused_precision", []):
                facts["mha_fused_precision"].append(prec)
        else:
            facts["mha_unfused"] += 1
            if reason not in facts["mha_reasons"]:
                facts["mha_reasons"].append(reason)
    return mha_of, groups


def mha_kernel(t: Tensors, grp: dict, sms: int) -> Kernel:
    """The one kernel of a fused attention block: both BMMs' FLOPs, no scores in memory."""
    b1, b2 = grp["bmm1"], grp["bmm2"]
    s_shape = t.shapes.get(b1.output[0]) or []
    sq = _known(s_shape[-2:-1]) or 1
    cnt = float(np.prod([d or 1 for d in s_shape[:-2]])) if len(s_shape) > 2 else 1.0
    head, seq = grp["head"] or 1, grp["seq"] or 1
    flops = 2.0 * t.numel(b1.output[0]) * head + 2.0 * t.numel(b2.output[0]) * seq
    eff = gemm_efficiency(sq, seq, head, cnt, sms)
    return Kernel(f"mha:{b1.name or b1.output[0]}", "mha", grp["precision"], flops=flops,
                  shape_eff=eff, ops=[])
