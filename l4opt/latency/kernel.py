"""The kernel record the two halves share: what `partition` lists and `costmodel` prices."""
from __future__ import annotations

from dataclasses import dataclass, field

TC_KINDS = ("gemm", "conv", "mha", "bmm")  # kinds that run on tensor cores


@dataclass
class Kernel:
    """One kernel of the engine as the model sees it."""

    name: str
    kind: str               # gemm conv bmm mha dwconv norm pointwise gather reformat pool other
    precision: str
    flops: float = 0.0
    shape_eff: float = 1.0  # share of tensor-core peak the shape allows (tiles, waves, K)
    dram_bytes: float = 0.0
    l2_bytes: float = 0.0
    ops: list = field(default_factory=list)
    note: str = ""


@dataclass
class Graph:
    """A graph's kernels plus what the rules decided (for notes)."""

    kernels: list
    notes: list
    facts: dict


def count(facts: dict, key: str, what: str) -> None:
    """One more `what` under facts[key] (a {description: count} dict)."""
    d = facts.setdefault(key, {})
    d[what] = d.get(what, 0) + 1


def node_id(n) -> str:
    """A node's key: its name, else op type and first output."""
    return n.name or f"{n.op_type}:{n.output[0]}"
