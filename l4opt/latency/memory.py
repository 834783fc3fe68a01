"""Bytes each kernel moves: tensor sizes as the engine stores them, each kernel's reads and
writes, and the L2 residency replay (an LRU cache of the usable L2 over two back-to-back
inferences) that splits them into DRAM and L2 bytes."""
from __future__ import annotations

from collections import OrderedDict

from l4opt.latency.gpus import BYTES
from l4opt.latency.graph_shapes import Tensors, _np_dtype_bytes
from l4opt.latency.kernel import node_id
from l4opt.onnx.graph import is_q

L2_USABLE_FRACTION = 0.75       # share of the L2 an LRU replay may count on (ASSUMPTION:
                                # associativity, other traffic)
LRU_ENTRIES = 4096              # tensors the replay remembers (older ones count as evicted)


def tensor_bytes(t: Tensors, name, float_precision: str) -> float:
    """Bytes of a tensor as the engine stores it."""
    import onnx

    ne = t.numel(name)
    p = t.producer.get(name)
    if p is not None and is_q(p):
        return ne * 1
    if name in t.inits:
        return ne * _np_dtype_bytes(t.inits[name].data_type)
    if name in t.constant:  # a weight quantized at build time
        return ne * BYTES[t.q_precision(name) or float_precision]
    et = t.dtypes.get(name)
    if et in (onnx.TensorProto.INT64,):
        return ne * 8
    if et in (onnx.TensorProto.INT32,):
        return ne * 4
    if et in (onnx.TensorProto.BOOL, onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        return ne * 1
    return ne * BYTES["fp32" if float_precision == "fp32" else float_precision]


def kernel_io(t: Tensors, part) -> tuple[list, list]:
    """Per kernel of a partition, the set of ("a"ctivation | "w"eight, tensor) it reads and the
    set of tensors it writes (read by another kernel or a graph output)."""
    node_by_key = {node_id(n): n for n in t.graph.node}
    alias, kernel_of = part.alias, part.kernel_of
    ins: list[set] = [set() for _ in part.ks]
    outs: list[set] = [set() for _ in part.ks]
    for rk, x in part.ins_extra:
        ins[rk].add(("a", alias.get(x, x)))
    for key, k in part.node_kernel.items():
        n = node_by_key[key]
        for i in ([] if key in part.own_reads else n.input):
            if not i:
                continue
            src = kernel_of.get(i)
            base = alias.get(i, i)
            if src == k and i not in t.graph_inputs:
                continue
            if i in t.constant and not (i in alias and alias[i] in t.graph_inputs):
                if i in t.inits or t.producer.get(i) is not None:
                    ins[k].add(("w", base))
                continue
            ins[k].add(("a", base))
        for o in n.output:
            ext = o in t.graph_outputs or any(
                part.node_kernel.get(node_id(c)) != k for c in t.consumers.get(o, [])
                if not all(x in t.constant for x in c.input if x))
            if ext:
                outs[k].add(alias.get(o, o))
    return ins, outs


def events(t: Tensors, part, float_precision: str) -> list:
    """The kernels' reads and writes in launch order: (kernel, "r" | "w", tensor, bytes,
    external), external meaning it always moves through DRAM (network input or output)."""
    ins, outs = kernel_io(t, part)
    ev = []
    for k, kern in enumerate(part.ks):
        for typ, name in sorted(ins[k]):
            if kern.kind == "gather" and typ == "w":
                continue  # an embedding lookup reads the rows it returns, not the table
            ev.append((k, "r", name, tensor_bytes(t, name, float_precision),
                       name in t.graph_inputs or name in part.prequant))
        for name in sorted(outs[k]):
            nb = tensor_bytes(t, name, float_precision)
            if kern.kind == "gather":
                ev.append((k, "r", f"{name}:table-rows", nb, True))
            ev.append((k, "w", name, nb, name in t.graph_outputs))
        for op_, name, nb, external in part.extra_events.get(k, ()):
            ev.append((k, op_, name, nb, external))
        if part.extra_write.get(k):
            ev.append((k, "w", f"{k + 1}:fp16-copy", part.extra_write[k], False))
        if part.extra_read.get(k):
            ev.append((k, "r", f"{k}:fp16-copy", part.extra_read[k], False))
    return ev


def assign_bytes(t: Tensors, part, gpu, float_precision: str) -> None:
    """Fill each kernel's dram_bytes and l2_bytes.

    L2 residency: replay the kernels' reads and writes through an LRU cache of the usable L2
    for two back-to-back inferences and keep the second (steady state). A read hits for the
    part of the tensor that less than the cache's worth of other data has pushed out since it
    was last touched (LRU stack distance); a write costs DRAM only for the part its next read
    misses (write-back cache). Network inputs arrive in DRAM; outputs leave to DRAM."""
    ev = events(t, part, float_precision)
    hits = _lru_hits(ev, gpu.l2_mb * 1e6 * L2_USABLE_FRACTION)
    for (k, op_, name, nb, external), h in zip(ev, hits):
        part.ks[k].l2_bytes += nb * h
        part.ks[k].dram_bytes += nb * (1 - h)


def _lru_hits(events, capacity: float) -> list:
    """Per event, the share served by L2 in the second of two back-to-back passes."""
    n = len(events)
    hit = [0.0] * n
    lru: OrderedDict = OrderedDict()
    for pass_ in range(2):  # the second pass starts from the cache the first one left
        for i, (_, op_, t, nb, external) in enumerate(events):
            if op_ == "r":
                if external or t not in lru:
                    h = 0.0
                else:
                    dist, found = 0.0, False
                    for name in reversed(lru):
                        if name == t:
                            found = True
                            break
                        dist += lru[name]
                        if dist >= capacity:
                            break
                    h = min(1.0, max(0.0, (capacity - dist) / nb)) if found and nb else 0.0
                if pass_ == 1:
                    hit[i] = h
            lru[t] = nb
            lru.move_to_end(t)
            while len(lru) > LRU_ENTRIES:
                lru.popitem(last=False)
    # a write is absorbed by L2 for the part its next read finds there
    nxt: dict = {}
    for i in range(n - 1, -1, -1):
        _, op_, t, nb, external = events[i]
        if op_ == "w":
            hit[i] = 0.0 if external else nxt.get(t, 0.0)
        else:
            nxt[t] = hit[i]
    return hit
