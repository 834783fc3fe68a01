"""Graph -> kernels: which nodes TensorRT runs in one kernel (its fusions) and at which precision
(its Q/DQ and FP8/INT8 rules), in graph order. The rules and their sources: costmodel's
docstring. Bytes are added afterwards by `memory.assign_bytes`."""
from __future__ import annotations

import numpy as np

from l4opt.latency.gpus import BYTES
from l4opt.latency.attention import mha_kernel
from l4opt.latency.graph_shapes import Tensors
from l4opt.latency.kernel import TC_KINDS, Kernel, count, node_id
from l4opt.latency.recurrent import RECURRENT, recurrent_steps
from l4opt.latency.tiles import gemm_efficiency
from l4opt.onnx.graph import GEMM_OPS, is_dq, is_qdq_op

SHAPE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Shape", "Constant", "Flatten",
             "Identity", "ConstantOfShape", "Range", "Expand", "Slice", "Gather", "Concat",
             "Split", "Size", "NonZero"}
POINTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Erf", "Gelu",
             "Sqrt", "Pow", "Where", "Cast", "Neg", "Exp", "Abs", "LeakyRelu", "HardSigmoid",
             "HardSwish", "Not", "Equal", "Less", "Greater", "And", "Or", "Min", "Max",
             "QuantizeLinear", "DequantizeLinear", "BatchNormalization", "Dropout", "Softplus",
             "Mish", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "IsNaN", "PRelu", "Elu",
             "Selu", "Log", "Sin", "Cos"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "Softmax",
          "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
          "RMSNormalization", "SimplifiedLayerNormalization"}
COMPUTE = set(GEMM_OPS)


def conv_rule(prec: str, kind: str, groups: int, taps: float, cin_g: float, cout: float,
              float_precision: str, facts: dict) -> tuple[str, str]:
    """(precision, note) of a quantized conv: no FP8 kernel on Ada for depthwise/grouped convs,
    > 32 taps, or <= 16 channels (FP16 then); INT8 has depthwise kernels."""
    note = ""
    no_fp8 = (kind == "dwconv" or groups > 1 or taps > 32
              or cin_g * groups <= 16 or cout <= 16)
    if prec in ("fp8", "int8"):
        count(facts, "fp8_int8_differ" if no_fp8 else "fp8_int8_same",
              "conv(s) with no FP8 kernel on Ada (FP8 runs them in FP16, "
              "INT8 in INT8)" if no_fp8 else
              "conv(s) with FP8 and INT8 kernels alike")
    if prec == "fp8" and no_fp8:
        note = "no FP8 kernel for this conv on Ada: runs in FP16"
        if kind == "dwconv":
            facts["fp8_dw_fp16"] += 1
        else:
            facts["fp8_conv_fp16"] += 1
        prec = float_precision
    elif prec == "int8" and kind == "dwconv":
        facts["int8_dw"] += 1
    return prec, note


def conv_work(n, b, y, prec, sms: int, float_precision: str, facts: dict):
    """(kind, flops, eff, prec, note) of a Conv/ConvTranspose."""
    groups = next((x.i for x in n.attribute if x.name == "group"), 1)
    kind, flops, eff, note = "conv", 0.0, 1.0, ""
    if b and y and all(b) and all(y):
        cin_g, cout = b[1], b[0]
        taps = float(np.prod(b[2:]))
        flops = 2.0 * float(np.prod(y)) * cin_g * taps
        m = float(np.prod(y)) / y[1]
        if groups > 1 and cin_g == 1:
            kind = "dwconv"
        else:
            eff = gemm_efficiency(m, cout / groups, cin_g * taps, groups, sms)
        prec, note = conv_rule(prec, kind, groups, taps, cin_g, cout, float_precision, facts)
    return kind, flops, eff, prec, note


def gemm_work(t: Tensors, n, a, y, prec, sms: int, facts: dict):
    """(kind, flops, eff) of a MatMul/Gemm: a weight GEMM, or a batched activation BMM."""
    kind, flops, eff = "gemm", 0.0, 1.0
    if a and y and all(a) and all(y):
        trans_a = any(x.name == "transA" and x.i for x in n.attribute)
        k_dim = a[0] if (n.op_type == "Gemm" and trans_a) else a[-1]
        flops = 2.0 * t.numel(n.output[0]) * k_dim
        weight = len(n.input) > 1 and n.input[1] in t.constant
        if weight or len(y) <= 2:
            m, cnt = float(np.prod(y[:-1])), 1.0
        else:
            m, cnt = y[-2], float(np.prod(y[:-2]))
            kind = "bmm"
        eff = gemm_efficiency(m, y[-1], k_dim, cnt, sms)
    if prec in ("fp8", "int8"):
        count(facts, "fp8_int8_same", "GEMM(s) with the same kernel rules and "
              "tensor-core peak in FP8 and INT8")
    return kind, flops, eff


class KernelList:
    """Kernels in launch order and which kernel produces (and which tensor stores) each tensor:
    what `memory` reads to count bytes."""

    def __init__(self):
        self.ks: list[Kernel] = []
        self.kernel_of: dict[str, int] = {}   # tensor -> kernel that produces it
        self.node_kernel: dict[str, int] = {}
        self.alias: dict[str, str] = {}       # tensor -> the tensor whose bytes it is (no copy)
        self.mha_kernel: dict[int, int] = {}
        self.prequant: set = set()            # tensors that arrive from the host quantized
        self.extra_read: dict[int, float] = {}   # kernel -> bytes read beyond its inputs
        self.extra_write: dict[int, float] = {}  # reformat kernel -> bytes of its FP16 copy
        self.ins_extra: list = []               # (reformat kernel, tensor it reads)
        self.own_reads: set = set()   # nodes whose reads their kernels list (extra_events)
        self.extra_events: dict[int, list] = {}  # kernel -> [(op, tensor, bytes, external)]

    def new(self, kernel: Kernel) -> int:
        self.ks.append(kernel)
        return len(self.ks) - 1

    def place(self, n, key, k: int) -> None:
        """Node `n` runs inside kernel `k`; its outputs come from that kernel."""
        self.node_kernel[key] = k
        for o in n.output:
            self.kernel_of[o] = k

    def src_kernel(self, n, kinds=None):
        best = None
        for i in n.input:
            if i in self.kernel_of and (kinds is None or self.ks[self.kernel_of[i]].kind in kinds):
                best = self.kernel_of[i] if best is None else max(best, self.kernel_of[i])
        return best


class Partition(KernelList):
    """The walk over a graph's nodes in order, placing each into a kernel."""

    def __init__(self, t: Tensors, gpu, float_precision: str, input_quantized: bool,
                 facts: dict, mha_of: dict, mha_groups: list):
        super().__init__()
        self.t, self.g, self.fp, self.input_quantized = t, gpu, float_precision, input_quantized
        self.facts, self.mha_of, self.mha_groups = facts, mha_of, mha_groups

    def run(self) -> "Partition":
        t = self.t
        for n in t.graph.node:
            op = n.op_type
            if all(i in t.constant for i in n.input if i):
                continue
            key = node_id(n)
            if key in self.mha_of:
                place_mha(self, n, key)
            elif op in SHAPE_OPS:
                self._shape_op(n, key)
            elif op in COMPUTE:
                self._compute(n, key)
            elif is_dq(n) and n.input[0] not in t.constant:
                self._activation_dq(n)
            elif op in POINTWISE or is_qdq_op(op):
                self._pointwise(n, key)
            elif op in RECURRENT and n.domain in ("", "ai.onnx"):
                place_recurrent(self, n, key)
            elif op in REDUCE:
                src = self.src_kernel(n, kinds=("norm",))
                if src is None:
                    k = self.new(Kernel(key, "norm", self.fp, ops=[op]))
                else:
                    k = src
                    self.ks[k].ops.append(op)
                self.place(n, key, k)
            else:
                kind = "pool" if "Pool" in op else "other"
                self.place(n, key, self.new(Kernel(key, kind, self.fp, ops=[op])))
        return self

    def _shape_op(self, n, key) -> None:
        op, t = n.op_type, self.t
        src = self.src_kernel(n)
        main = [i for i in n.input if i and i not in t.constant]
        for o in n.output:
            if src is not None:
                self.kernel_of[o] = src
            if main and op not in ("Gather", "Concat", "Shape", "Size"):
                self.alias[o] = self.alias.get(main[0], main[0])
        if op == "Gather" and main and n.input[0] in t.constant:
            # an embedding lookup: a gather kernel reading rows of the table
            self.place(n, key, self.new(Kernel(key, "gather", self.fp, ops=[op])))

    def _compute(self, n, key) -> None:
        t, op = self.t, n.op_type
        a, b, y = t.shapes.get(n.input[0]), t.shapes.get(n.input[1]), t.shapes.get(n.output[0])
        qa = t.q_precision(n.input[0])
        qw = t.q_precision(n.input[1]) if len(n.input) > 1 else None
        prec = qa if qa and qw and qa == qw else self.fp
        note = ""
        if op in ("Conv", "ConvTranspose"):
            kind, flops, eff, prec, note = conv_work(n, b, y, prec, self.g.sms, self.fp,
                                                    self.facts)
        else:
            kind, flops, eff = gemm_work(t, n, a, y, prec, self.g.sms, self.facts)
        if note and qa:
            # the FP8 input cannot be fused into an FP16 kernel: TensorRT runs the DQ as a
            # reformat kernel of its own (FP8 in, FP16 out), then the conv reads FP16
            x = n.input[0]
            rk = self.new(Kernel(f"{key}:dequantize", "reformat", self.fp,
                                 ops=["DequantizeLinear"], note="FP8 input of an FP16 conv"))
            nb = t.numel(x)
            self.ins_extra.append((rk, x))
            self.extra_write[rk] = nb * BYTES[self.fp]
            self.facts["standalone_q"] += 1
            self.extra_read[len(self.ks)] = nb * (BYTES[self.fp] - 1)
        k = self.new(Kernel(key, kind, prec, flops=flops, shape_eff=eff, ops=[op], note=note))
        if kind in TC_KINDS:
            self.facts["tc_kernels"][prec] = self.facts["tc_kernels"].get(prec, 0) + 1
        self.place(n, key, k)

    def _activation_dq(self, n) -> None:
        """An activation DQ fuses into its consumer (which reads the quantized bytes)."""
        src = self.src_kernel(n)
        for o in n.output:
            self.alias[o] = self.alias.get(n.input[0], n.input[0])
            if src is not None:
                self.kernel_of[o] = src
        if any(self.alias.get(i, i) in self.prequant for i in n.input):
            self.prequant.update(n.output)

    def _pointwise(self, n, key) -> None:
        op, t = n.op_type, self.t
        src = self.src_kernel(n)
        if src is None:
            if self.input_quantized and op == "Cast" and n.input[0] in t.graph_inputs:
                t.graph_inputs.add(n.output[0])  # the host sends the input already cast
                self.alias[n.output[0]] = n.input[0]
                return
            is_input_q = op == "QuantizeLinear" and any(i in t.graph_inputs for i in n.input)
            if is_input_q and self.input_quantized:  # arrives quantized: no kernel
                self.prequant.add(n.output[0])
                return
            if is_qdq_op(op) and any(self.alias.get(i, i) in self.prequant for i in n.input):
                self.alias[n.output[0]] = self.alias.get(n.input[0], n.input[0])
                self.prequant.add(n.output[0])
                return
            kind = "reformat" if is_qdq_op(op) else "pointwise"
            if op == "QuantizeLinear":
                self.facts["standalone_q"] += 1
            k = self.new(Kernel(key, kind, self.fp, ops=[op]))
        else:
            k = src
            self.ks[k].ops.append(op)
        self.place(n, key, k)


def place_mha(p: Partition, n, key) -> None:
    """A node of a fused attention block: into the block's one MHA kernel (attention.py)."""
    gi = p.mha_of[key]
    if gi not in p.mha_kernel:
        p.mha_kernel[gi] = p.new(mha_kernel(p.t, p.mha_groups[gi], p.g.sms))
    k = p.mha_kernel[gi]
    p.ks[k].ops.append(n.op_type)
    p.place(n, key, k)


def place_recurrent(p: Partition, n, key) -> None:
    """LSTM/GRU/RNN: one kernel per time step and direction (recurrent.py)."""
    steps = recurrent_steps(p.t, n, key, p.g, p.fp, p.facts)
    if steps is None:  # shapes unknown: one kernel of unknown work, as any other op
        p.place(n, key, p.new(Kernel(key, "other", p.fp, ops=[n.op_type])))
        return
    for kern, ev in steps:
        k = p.new(kern)
        p.extra_events[k] = ev
        if kern.kind in TC_KINDS:
            p.facts["tc_kernels"][kern.precision] = p.facts["tc_kernels"].get(kern.precision, 0) + 1
    p.own_reads.add(key)
    p.place(n, key, k)  # the last step writes the node's outputs
