"""Q/DQ ONNX graphs as per-layer choices: which GEMM/conv (and which other op) reads which
QuantizeLinear -> DequantizeLinear pair, and a graph with each layer at INT8, FP8 or FP16.

A GEMM/conv runs at 8 bits on TensorRT only when both operands come through DequantizeLinear,
so a layer's choice moves all its Q/DQ inputs together. Q/DQ pairs read by ops that are not
GEMMs (residual Adds, ...) are options of their own. Turning a layer to FP16 rewires its inputs
to the tensors the Q nodes read (the pair stays for its other readers); another format takes
the same pair from a graph calibrated in that format (same base export, same node names).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from l4opt.onnx.graph import GEMM_OPS, PASS_OPS, is_dq, is_q

SHAPE_ONLY = ("Shape", "Size")
FORMATS = ("int8", "fp8", "fp16")
OUTLIER_RATIO = 8.0  # an activation amax this many times the median amax is an outlier


@dataclass
class Layer:
    """One choice: a GEMM/conv node (kind 'gemm') or another op reading Q/DQ (kind 'other');
    `edges` are (node name, input index, DQ node name) of the inputs it reads through a pair."""

    name: str
    op_type: str
    kind: str
    index: int
    edges: list = field(default_factory=list)

    @property
    def quantized(self) -> bool:
        """A GEMM is 8-bit only with every data input through Q/DQ (weights and activations)."""
        return bool(self.edges)


class QdqGraph:
    """A ModelOpt Q/DQ graph read as layers; `build(formats)` writes a variant."""

    def __init__(self, model, fmt: str):
        import onnx

        self.model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        self.format = fmt
        g = self.model.graph
        self.nodes = {n.name: n for n in g.node}
        if len(self.nodes) != len(g.node):
            raise ValueError("the Q/DQ graph has unnamed or duplicate node names")
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i, t in enumerate(n.input):
                self.consumers.setdefault(t, []).append((n, i))
        self.pairs = {}  # DQ name -> Q node
        for n in g.node:
            if is_dq(n):
                q = self.producer.get(n.input[0])
                if q is not None and is_q(q):
                    self.pairs[n.name] = q
        self.layers: dict[str, Layer] = {}
        self.shape_edges = []
        order = {n.name: i for i, n in enumerate(g.node)}
        gemms = [n for n in g.node if n.op_type in GEMM_OPS]
        for n in gemms:
            self.layers[n.name] = Layer(n.name, n.op_type, "gemm", order[n.name])
        for dq_name, q in self.pairs.items():
            dq = self.nodes[dq_name]
            for c, i in self.consumers.get(dq.output[0], []):
                if c.op_type in SHAPE_ONLY:
                    self.shape_edges.append((c.name, i, dq_name))
                    continue
                owner = c
                if c.op_type in PASS_OPS:
                    nxt = self.consumers.get(c.output[0], [])
                    if nxt and all(x.op_type in GEMM_OPS for x, _ in nxt) and len(nxt) == 1:
                        owner = nxt[0][0]
                if owner.op_type in GEMM_OPS:
                    self.layers[owner.name].edges.append((c.name, i, dq_name))
                else:
                    lay = self.layers.setdefault(
                        c.name, Layer(c.name, c.op_type, "other", order[c.name]))
                    lay.edges.append((c.name, i, dq_name))
        for lay in self.layers.values():
            if lay.kind == "gemm" and not _all_data_inputs_quantized(self, lay):
                lay.edges = []  # half-quantized GEMMs run in high precision: not a choice
        self.order = sorted((x for x in self.layers.values() if x.quantized), key=lambda x: x.index)

    @property
    def gemm_layers(self) -> list[str]:
        """Every GEMM/conv node (quantized or not), in graph order."""
        return [x.name for x in sorted(self.layers.values(), key=lambda x: x.index)
                if x.kind == "gemm"]

    @property
    def choices(self) -> list[str]:
        """Layers with a format to choose (quantized GEMMs and other Q/DQ readers), in order."""
        return [x.name for x in self.order]

    def can_take(self, layer: str, other: "QdqGraph | None") -> bool:
        """Whether `other` (the other format's graph) quantizes every pair this layer reads
        (ModelOpt may leave a layer out in one format only, e.g. small convs in FP8)."""
        lay = self.layers[layer]
        return other is not None and lay.quantized and all(
            d in other.pairs for _, _, d in lay.edges)

    def build(self, formats: dict | None = None, other: "QdqGraph | None" = None,
              check: bool = True):
        """A copy with each layer in `formats` (name -> int8|fp8|fp16; default: this graph's
        format); a layer in the other format takes its pairs from `other`."""
        import onnx

        formats = formats or {}
        m = copy.deepcopy(self.model)
        g = m.graph
        nodes = {n.name: n for n in g.node}
        inits = {i.name: i for i in g.initializer}
        added: dict[str, str] = {}  # DQ name -> output of its copy in the other format
        for dq_name, (cname, i) in [(d, (c, i)) for c, i, d in self.shape_edges]:
            nodes[cname].input[i] = self.pairs[dq_name].input[0]
        for lay in self.order:
            fmt = formats.get(lay.name, self.format)
            if fmt not in FORMATS:
                raise ValueError(f"layer {lay.name}: format {fmt!r} is not one of {FORMATS}")
            if fmt == self.format:
                continue
            for cname, i, dq_name in lay.edges:
                q = self.pairs[dq_name]
                if fmt == "fp16":
                    nodes[cname].input[i] = q.input[0]
                    continue
                if other is None or other.format != fmt:
                    raise ValueError(f"layer {lay.name} wants {fmt} but no {fmt} graph was given")
                if not self.can_take(lay.name, other):
                    raise ValueError(f"layer {lay.name}: ModelOpt left it unquantized in {fmt}")
                if dq_name not in added:
                    added[dq_name] = _copy_pair(g, inits, other, dq_name, fmt)
                nodes[cname].input[i] = added[dq_name]
        _prune(g)
        if added:
            _toposort(g)
        if other is not None:
            _max_opset(m, other.model)
        if check:
            onnx.checker.check_model(m, full_check=False)
        return m


def _all_data_inputs_quantized(qg: QdqGraph, lay: Layer) -> bool:
    """Both operands (A and B, or X and W) read through a Q/DQ pair."""
    n = qg.nodes[lay.name]
    for t in n.input[:2]:
        p, hops = qg.producer.get(t), 0
        while p is not None and p.op_type in PASS_OPS and hops < 3:
            p, hops = qg.producer.get(p.input[0]), hops + 1
        if p is None or p.name not in qg.pairs:
            return False
    return len(n.input) >= 2


def _copy_pair(g, inits, other: QdqGraph, dq_name: str, fmt: str) -> str:
    """Copy the Q and DQ of `dq_name` from `other` into `g` (names suffixed with the format);
    the Q reads the same float tensor as in `g`. Returns the copy's DQ output name."""
    import numpy as np
    from onnx import numpy_helper

    dq = copy.deepcopy(other.nodes[dq_name])
    q = copy.deepcopy(other.pairs[dq_name])
    sfx = f"__{fmt}"
    other_inits = {i.name: i for i in other.model.graph.initializer}
    src = q.input[0]
    if src in other_inits and src in inits:
        a, b = numpy_helper.to_array(other_inits[src]), numpy_helper.to_array(inits[src])
        if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
            t = copy.deepcopy(other_inits[src])
            t.name = src + sfx
            g.initializer.append(t)
            inits[t.name] = t
            src = t.name
    elif src in other_inits:
        t = copy.deepcopy(other_inits[src])
        g.initializer.append(t)
        inits[t.name] = t
    for node in (q, dq):
        for k, name in enumerate(node.input):
            if k == 0:
                continue
            if name in other_inits:
                new = name + sfx
                if new not in inits:
                    t = copy.deepcopy(other_inits[name])
                    t.name = new
                    g.initializer.append(t)
                    inits[new] = t
                node.input[k] = new
    q.input[0] = src
    q.name, dq.name = q.name + sfx, dq.name + sfx
    q.output[0] = q.output[0] + sfx
    dq.input[0] = q.output[0]
    dq.output[0] = dq.output[0] + sfx
    g.node.append(q)  # the graph is sorted again once every pair is in
    g.node.append(dq)
    return dq.output[0]


def _toposort(g) -> None:
    have = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    todo = list(g.node)
    out = []
    while todo:
        rest = []
        for n in todo:
            if all(i in have for i in n.input):
                out.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(todo):
            out.extend(rest)  # cycles or missing inputs: let the checker say so
            break
        todo = rest
    del g.node[:]
    g.node.extend(out)


def _prune(g) -> None:
    """Drop Q/DQ nodes nobody reads any more, then initializers nobody reads."""
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node
                if (is_q(n) or is_dq(n)) and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input} | outputs
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _max_opset(m, other) -> None:
    mine = {o.domain: o for o in m.opset_import}
    for o in other.opset_import:
        if o.domain in mine:
            mine[o.domain].version = max(mine[o.domain].version, o.version)
        else:
            m.opset_import.append(copy.deepcopy(o))


def formats_of(qg: QdqGraph, model) -> dict[str, str]:
    """Per GEMM/conv node of `model` (a built variant): 'int8', 'fp8' or 'fp16', from the
    element type of the Q/DQ pairs its inputs read."""
    import onnx

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    out = {}
    for n in g.node:
        if n.op_type not in GEMM_OPS:
            continue
        kinds = set()
        for t in n.input[:2]:
            p = producer.get(t)
            hops = 0
            while p is not None and p.op_type in PASS_OPS and hops < 3:
                p, hops = producer.get(p.input[0]), hops + 1
            if p is None or not is_dq(p):
                kinds.add("fp16")
                continue
            zp = inits.get(p.input[2]) if len(p.input) > 2 else None
            fp8 = zp is not None and zp.data_type in (onnx.TensorProto.FLOAT8E4M3FN,
                                                      onnx.TensorProto.FLOAT8E5M2)
            kinds.add("fp8" if fp8 or "FP8" in p.op_type else "int8")
        out[n.name] = kinds.pop() if len(kinds) == 1 else "fp16"
    return out


def probe(graphs: dict, default: str):
    """One graph that runs the model in float and, beside every GEMM/conv, a copy of it reading
    its operands through each format's Q/DQ pairs (and, for other Q/DQ readers, the pair's
    output). Returns (ModelProto, {layer: {"ref": tensor, fmt: tensor, ...}}): one run gives
    every layer's local quantization error in every format, from the same float activations."""
    import onnx

    base = graphs[default]
    m = copy.deepcopy(base.model)
    g = m.graph
    nodes = {n.name: n for n in g.node}
    inits = {i.name: i for i in g.initializer}
    for lay in base.order:
        for c, i, dq in lay.edges:
            nodes[c].input[i] = base.pairs[dq].input[0]
    for c, i, dq in base.shape_edges:
        nodes[c].input[i] = base.pairs[dq].input[0]
    taps: dict[str, dict] = {}
    added: dict[tuple, str] = {}
    clones = []
    for lay in base.order:
        if lay.kind == "other":
            taps[lay.name] = {"ref": [base.pairs[dq].input[0] for _, _, dq in lay.edges],
                              default: [base.nodes[dq].output[0] for _, _, dq in lay.edges]}
            continue
        if any(c != lay.name for c, _, _ in lay.edges):
            continue  # operands reach it through a reshape: no local probe
        n = nodes[lay.name]
        taps[lay.name] = {"ref": [n.output[0]]}
        for fmt, qg in graphs.items():
            if qg is not base and not base.can_take(lay.name, qg):
                continue
            clone = copy.deepcopy(n)
            clone.name = f"{n.name}__probe_{fmt}"
            del clone.output[:]
            clone.output.append(f"{n.output[0]}__probe_{fmt}")
            for c, i, dq in lay.edges:
                if fmt == default:
                    clone.input[i] = base.nodes[dq].output[0]
                else:
                    if (dq, fmt) not in added:
                        added[(dq, fmt)] = _copy_pair(g, inits, qg, dq, fmt)
                    clone.input[i] = added[(dq, fmt)]
            clones.append(clone)
            taps[lay.name][fmt] = [clone.output[0]]
    g.node.extend(clones)
    _toposort(g)
    for other in graphs.values():
        if other is not base:
            _max_opset(m, other.model)
    types = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(base.model)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + \
                list(inferred.graph.input):
            types[vi.name] = vi.type.tensor_type.elem_type
    except Exception:  # noqa: BLE001 - types unknown: those taps are skipped below
        pass
    have = {o.name for o in g.output}
    keep = {}
    for layer, tap in taps.items():
        ref = tap["ref"][0]
        et = types.get(ref) or types.get(ref.split("__probe_")[0])
        if not et:
            continue
        keep[layer] = tap
        for names in tap.values():
            for t in names:
                if t not in have:
                    g.output.append(onnx.helper.make_tensor_value_info(
                        t, types.get(t.split("__probe_")[0], et), None))
                    have.add(t)
    return m, keep


def calibration_outliers(onnx_path) -> str:
    """Which activation amax (from the Q/DQ graph's scales) stand far above the rest, and what
    produces them (residual adds, LayerNorm, GELU ...): the usual reason INT8/FP8 collapses."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    try:
        g = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - the note is an extra
        return f"calibration statistics unreadable ({exc})"
    consts = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            consts[n.output[0]] = n.attribute[0].t
    producer = {o: n for n in g.node for o in n.output}
    acts = []
    for n in g.node:
        if not n.op_type.endswith("QuantizeLinear") or "Dequantize" in n.op_type:
            continue
        if n.input[0] in consts or len(n.input) < 2 or n.input[1] not in consts:
            continue  # a weight, or a scale we cannot read
        scale = float(np.max(np.abs(numpy_helper.to_array(consts[n.input[1]]))))
        zp = consts.get(n.input[2]) if len(n.input) > 2 else None
        fp8 = "FP8" in n.op_type or (zp is not None and "FLOAT8" in
                                     onnx.TensorProto.DataType.Name(zp.data_type))
        p = producer.get(n.input[0])
        kind = p.op_type if p is not None else "graph input"
        acts.append((scale * (448.0 if fp8 else 127.0), n.input[0], kind))
    if len(acts) < 3:
        return (f"only {len(acts)} quantized activation(s): too few to compare; the quantized "
                f"layers themselves are sensitive")
    med = float(np.median([a for a, _, _ in acts]))
    label = {"Add": "residual add", "LayerNormalization": "LayerNorm output",
             "Gelu": "GELU output", "Mul": "Mul (e.g. GELU) output", "Softmax": "softmax output"}
    out = sorted([a for a in acts if a[0] > OUTLIER_RATIO * med], reverse=True)
    if not out:
        top = max(a for a, _, _ in acts)
        return (f"no activation's calibrated amax stands out (largest {top:.3g} = "
                f"{top / med:.1f}x the median {med:.3g}); the quantized layers themselves are "
                f"sensitive")
    items = ", ".join(f"{t} ({label.get(k, k + ' output')}) amax {a:.3g} = {a / med:.0f}x"
                      for a, t, k in out[:4])
    return (f"{len(out)} of {len(acts)} quantized activations have a calibrated amax over "
            f"{OUTLIER_RATIO:g}x the median {med:.3g}: {items}{' ...' if len(out) > 4 else ''}; "
            f"one scale for such a range leaves few levels for the typical values (residual "
            f"adds and LayerNorm inputs are the usual culprits)")
