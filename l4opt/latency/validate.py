"""Graphs the cost model refuses, with the reason: empty, no nodes, a cycle, a node reading a
tensor nothing produces, sizes beyond the GPU's memory. (Inconsistent shapes are refused where
shapes are resolved: graph_shapes.resolve_shapes.)"""
from __future__ import annotations

import numpy as np

from l4opt.errors import BadInput
from l4opt.latency.graph_shapes import _np_dtype_bytes


def check_structure(model) -> None:
    """Refuse a graph with no nodes, a cycle, or a node input that nothing produces."""
    graph = model.graph
    if not len(graph.node):
        raise BadInput("the ONNX graph has no nodes (an empty or truncated model): nothing to "
                       "estimate")
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    producer = {}
    for n in graph.node:
        for o in n.output:
            if o:
                producer[o] = n
    missing = [(n, i) for n in graph.node for i in n.input
               if i and i not in known and i not in producer]
    if missing:
        n, i = missing[0]
        raise BadInput(f"node {n.name or n.op_type!r} ({n.op_type}) reads tensor {i!r}, which no "
                       f"node, graph input or initializer produces"
                       + (f" ({len(missing)} such inputs)" if len(missing) > 1 else ""))
    # Kahn's algorithm: nodes that never become ready sit on (or behind) a cycle
    deps = {id(n): {i for i in n.input if i and i in producer} for n in graph.node}
    waiting = {t: [] for t in producer}
    for n in graph.node:
        for i in deps[id(n)]:
            waiting[i].append(n)
    ready = [n for n in graph.node if not deps[id(n)]]
    done = 0
    while ready:
        n = ready.pop()
        done += 1
        for o in n.output:
            for c in waiting.get(o, []):
                d = deps[id(c)]
                d.discard(o)
                if not d:
                    ready.append(c)
    if done < len(graph.node):
        stuck = [n for n in graph.node if deps[id(n)]]
        names = ", ".join(repr(n.name or n.op_type) for n in stuck[:5])
        raise BadInput(f"the ONNX graph has a cycle: {len(stuck)} node(s) wait on one another's "
                       f"outputs or on such a loop ({names}{', ...' if len(stuck) > 5 else ''});"
                       f" an ONNX graph must be acyclic")


def _gb(x: float) -> str:
    return f"{x / 1e9:,.1f} GB"


def check_weights(model, gpu) -> None:
    """Refuse initializers that cannot fit in the GPU's memory (from their declared dims: no
    weight is read)."""
    cap = gpu.memory_gb * 1e9
    total, largest = 0.0, (None, 0.0)
    for t in model.graph.initializer:
        nb = float(np.prod([float(d) for d in t.dims])) * _np_dtype_bytes(t.data_type) \
            if t.dims else float(_np_dtype_bytes(t.data_type))
        total += nb
        if nb > largest[1]:
            largest = (t, nb)
    if largest[1] > cap:
        t = largest[0]
        raise BadInput(f"weight {t.name!r} of shape {list(t.dims)} is {_gb(largest[1])}, more "
                       f"than the {gpu.name}'s {gpu.memory_gb:g} GB of memory: no engine could "
                       f"hold it")
    if total > cap:
        raise BadInput(f"the graph's weights total {_gb(total)}, more than the {gpu.name}'s "
                       f"{gpu.memory_gb:g} GB of memory: no engine could hold them")


def check_tensor_sizes(t, gpu, tensor_bytes) -> None:
    """Refuse a graph one of whose tensors, at the requested shapes, exceeds the GPU's memory."""
    cap = gpu.memory_gb * 1e9
    for name, s in t.shapes.items():
        if not s or None in s:
            continue
        nb = tensor_bytes(name)
        if nb > cap:
            raise BadInput(f"tensor {name!r} of shape {s} would take {_gb(nb)} at these input "
                           f"shapes, more than the {gpu.name}'s {gpu.memory_gb:g} GB of memory: "
                           f"lower the batch or the dynamic axes")
