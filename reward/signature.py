"""Structural signature of a group: equal signatures mean the same kernel to build and time.

A real backend measures each distinct kernel once: the two identical residual blocks of a
ResNet stage, the same layer of a transformer in another graph or another episode, all
share one MeasurementStore entry. So the signature describes only what the kernel computes
and on which shapes: per member (in the group's topological order) its op, kind, attributes,
input and output shapes and dtypes and which inputs are parameters; the internal edges,
relative to that order; which external tensors are shared between members; and which
outputs leave the group (they must be written to memory). Node ids, the graph's other
nodes, weights and TVM's function names (``callee``) do not enter it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

from fusiongym.graphs import ComputeGraph, Edge

SIGNATURE_VERSION = 1
# Stored measurements are keyed by the group, not by the code that built and timed it. This
# digest of that code (first 16 hex digits of sha256 over the files, in order) is checked by
# tests/test_store.py: when the schedules or the timing protocol change, decide whether the
# measurements already in stores still hold (if not, bump SIGNATURE_VERSION, which re-keys
# every store) and record the new digest.
MEASURED_CODE = ("tvm_schedules.py", "timing.py")
MEASURED_CODE_DIGEST = "6316e7e0c5c2cf57"
_NAME_ATTRS = frozenset({"callee"})  # names TVM picked for this module, not what is computed


def group_signature(graph: ComputeGraph, nodes: Sequence[int], schedule: str | None = None) -> str:
    """Hex digest of the group's structure; with ``schedule``, of structure and schedule."""
    payload = group_structure(graph, nodes)
    if schedule is not None:
        payload["schedule"] = schedule
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def group_structure(graph: ComputeGraph, nodes: Sequence[int]) -> dict:
    """The canonical, id-free description of a group that ``group_signature`` hashes."""
    members = sorted(int(n) for n in nodes)
    if not members:
        raise ValueError("a group signature needs at least one node")
    local = {node: position for position, node in enumerate(members)}
    in_edges: dict[int, list[Edge]] = {node: [] for node in members}
    leaving: set[tuple[int, int]] = {(n, k) for n, k in graph.outputs if n in local}
    for edge in graph.edges:
        if edge.dst in local:
            in_edges[edge.dst].append(edge)
        elif edge.src in local:
            leaving.add((edge.src, edge.src_output))
    external: dict[tuple[int, int], int] = {}  # (producer, output) outside -> first-use index
    described = []
    for node_id in members:
        node = graph.nodes[node_id]
        reads = []
        for edge in in_edges[node_id]:
            if edge.src in local:
                reads.append(["internal", local[edge.src], edge.src_output])
            else:
                index = external.setdefault((edge.src, edge.src_output), len(external))
                reads.append(["external", index])
        described.append({
            "op": node.op,
            "kind": int(node.kind),
            "attrs": {k: v for k, v in node.attrs.items() if k not in _NAME_ATTRS},
            "inputs": [[list(t.shape), t.dtype, t.is_param] for t in node.inputs],
            "outputs": [[list(t.shape), t.dtype, (node_id, k) in leaving] for k, t in enumerate(node.outputs)],
            "reads": reads,
        })
    return {"format": SIGNATURE_VERSION, "nodes": described}
