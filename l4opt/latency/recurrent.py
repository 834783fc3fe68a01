"""Recurrent nodes (ONNX LSTM, GRU, RNN) as the kernels a TensorRT engine runs for them.

The rule (COSTMODEL_VERSION 3): a recurrent layer is sequential over time, so each time step of
each direction is one kernel, launched after the previous step's: the step's input GEMM and
recurrent GEMM for every gate (4 for LSTM, 3 for GRU, 1 for RNN), i.e. a small GEMM of
M = batch, N = gates x hidden, K = input + hidden, with the gate activations and the state
update fused into it (ASSUMPTION: TensorRT's ONNX parser turns these nodes into a loop whose
body it fuses; not observed in an engine here). A bidirectional node runs both directions in
turn (twice the kernels). Each step reads its direction's weights (W and R; from L2 when they
fit, as the replay decides), its input slice x_t and the previous state, and writes the new
state; the last step writes the node's outputs. The step runs at the Q/DQ precision when both
X and W come through DequantizeLinear of one format, else at the float precision.
Counted in facts["recurrent"]: nodes, quantized nodes, step kernels.
"""
from __future__ import annotations

from l4opt.latency.gpus import BYTES
from l4opt.latency.graph_shapes import Tensors
from l4opt.latency.kernel import Kernel
from l4opt.latency.tiles import gemm_efficiency

RECURRENT = {"LSTM": 4, "GRU": 3, "RNN": 1}  # op -> gates


def _full(s) -> bool:
    return bool(s) and all(isinstance(x, int) and x > 0 for x in s)


def recurrent_steps(t: Tensors, n, key: str, gpu, float_precision: str,
                    facts: dict) -> list[tuple[Kernel, list]] | None:
    """[(kernel, [(op, tensor, bytes, external), ...]) per time step and direction], or None
    when the node's shapes are unknown (it is then one kernel of unknown work)."""
    att = {a.name: a for a in n.attribute}
    x, w = t.shapes.get(n.input[0]), t.shapes.get(n.input[1]) if len(n.input) > 1 else None
    if not (_full(x) and _full(w)) or len(x) != 3 or len(w) != 3:
        return None
    layout = att["layout"].i if "layout" in att else 0
    seq, batch, inp = (x[1], x[0], x[2]) if layout else (x[0], x[1], x[2])
    gates = RECURRENT[n.op_type]
    dirs = w[0]
    hidden = att["hidden_size"].i if "hidden_size" in att else w[1] // gates
    qx, qw = t.q_precision(n.input[0]), t.q_precision(n.input[1])
    prec = qx if qx and qx == qw else float_precision
    d = facts.setdefault("recurrent", {"nodes": 0, "quantized": 0, "steps": 0})
    d["nodes"] += 1
    d["quantized"] += prec != float_precision
    d["steps"] += seq * dirs
    wb = BYTES[prec] if prec in BYTES else 2
    ab = BYTES[float_precision]
    n_out = gates * hidden
    flops = 2.0 * batch * n_out * (inp + hidden)
    eff = gemm_efficiency(batch, n_out, inp + hidden, 1, gpu.sms)
    base_x = n.input[0]
    external_x = base_x in t.graph_inputs
    states = ["h", "c"] if n.op_type == "LSTM" else ["h"]
    out = []
    for di in range(dirs):
        for s in range(seq):
            k = Kernel(f"{key}:d{di}:t{s}", "gemm", prec, flops=flops, shape_eff=eff,
                       ops=[n.op_type], note=f"{n.op_type} step {s + 1}/{seq}"
                       + (f", direction {di + 1}/{dirs}" if dirs > 1 else ""))
            ev = [("r", f"{n.input[1]}#d{di}", float(n_out * inp * wb), False),
                  ("r", f"{n.input[2]}#d{di}", float(n_out * hidden * wb), False),
                  ("r", base_x, float(batch * inp * ab), external_x)]
            for st in states:
                if s:
                    ev.append(("r", f"{key}#{st}{di}", float(batch * hidden * ab), False))
                ev.append(("w", f"{key}#{st}{di}", float(batch * hidden * ab), False))
            out.append((k, ev))
    return out
