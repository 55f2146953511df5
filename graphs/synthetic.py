"""Synthetic layered DAGs with realistic operator mixes, for stress and speed tests.

Each layer is a short chain in the style of a CNN or transformer block (a heavy
contraction followed by bias, normalisation and activation ops), with occasional residual
and reshape branches, so graph statistics (kind mix, fan-in, skip edges) resemble the zoo.
Graphs up to 20k nodes build in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import ComputeGraph, Edge, OpKind, OpNode, TensorSpec

MAX_NODES = 20_000


@dataclass(frozen=True)
class _OpTemplate:
    op: str
    kind: OpKind
    flops_per_element: float   # per output element (contractions: 2 × reduction length)
    has_param: bool = False


_CONTRACTIONS = (
    _OpTemplate("conv2d", OpKind.OUT_ELEMWISE_FUSABLE, 2 * 3 * 3 * 64, has_param=True),
    _OpTemplate("matmul", OpKind.OUT_ELEMWISE_FUSABLE, 2 * 512, has_param=True),
)
_EPILOGUE = (
    _OpTemplate("add", OpKind.BROADCAST, 1, has_param=True),
    _OpTemplate("multiply", OpKind.BROADCAST, 1, has_param=True),
    _OpTemplate("relu", OpKind.ELEMWISE, 1),
    _OpTemplate("gelu", OpKind.ELEMWISE, 8),
    _OpTemplate("softmax", OpKind.OUT_ELEMWISE_FUSABLE, 5),
    _OpTemplate("mean", OpKind.COMM_REDUCE, 1),
    _OpTemplate("reshape", OpKind.INJECTIVE, 0),
    _OpTemplate("permute_dims", OpKind.INJECTIVE, 0),
)
_EPILOGUE_WEIGHTS = np.array([0.25, 0.15, 0.2, 0.1, 0.08, 0.05, 0.1, 0.07])
_RESIDUAL = _OpTemplate("add", OpKind.ELEMWISE, 1)


def synthetic(n_nodes: int = 500, seed: int = 0, dtype: str = "float32") -> ComputeGraph:
    """A seeded layered DAG of exactly ``n_nodes`` operators (1 ≤ n_nodes ≤ 20,000)."""
    if not 1 <= n_nodes <= MAX_NODES:
        raise ValueError(f"synthetic graphs have 1..{MAX_NODES} nodes, asked for {n_nodes}")
    rng = np.random.default_rng(seed)
    builder = _Builder(rng, dtype)
    while len(builder.nodes) < n_nodes:
        builder.add_layer(n_nodes - len(builder.nodes))
    return ComputeGraph(builder.nodes, builder.edges, [(len(builder.nodes) - 1, 0)],
                        name=f"synthetic-{n_nodes}-{seed}",
                        source={"kind": "synthetic", "n_nodes": n_nodes, "seed": seed})


class _Builder:
    def __init__(self, rng: np.random.Generator, dtype: str) -> None:
        self.rng = rng
        self.dtype = dtype
        self.nodes: list[OpNode] = []
        self.edges: list[Edge] = []
        self.layer_outputs: list[int] = []   # last node of every layer, for residual edges

    def add_layer(self, budget: int) -> None:
        """One block of at most ``budget`` nodes: contraction, epilogue ops, maybe a residual add."""
        numel = int(2 ** self.rng.uniform(10, 20))
        previous = self.layer_outputs[-1:]
        contraction = _CONTRACTIONS[int(self.rng.integers(len(_CONTRACTIONS)))]
        last = self._add(contraction, numel, previous)
        remaining = budget - 1
        for _ in range(min(int(self.rng.integers(1, 6)), remaining)):
            template = _EPILOGUE[int(self.rng.choice(len(_EPILOGUE), p=_EPILOGUE_WEIGHTS))]
            last = self._add(template, numel, [last])
            remaining -= 1
        if remaining > 0 and len(self.layer_outputs) >= 2 and self.rng.random() < 0.3:
            skip = self.layer_outputs[-int(self.rng.integers(1, min(3, len(self.layer_outputs)) + 1))]
            last = self._add(_RESIDUAL, numel, [last, skip])
        self.layer_outputs.append(last)

    def _add(self, template: _OpTemplate, numel: int, producers: list[int]) -> int:
        node_id = len(self.nodes)
        out = TensorSpec((numel,), self.dtype)
        inputs = [self.nodes[p].outputs[0] for p in producers] or [TensorSpec((numel,), self.dtype)]
        if template.has_param:
            param_numel = max(1, int(np.sqrt(numel)))
            inputs.append(TensorSpec((param_numel,), self.dtype, is_param=True))
        self.nodes.append(OpNode(id=node_id, op=template.op, kind=template.kind, inputs=tuple(inputs),
                                 outputs=(out,), flops=float(template.flops_per_element * numel)))
        self.edges.extend(Edge(p, node_id) for p in dict.fromkeys(producers))
        return node_id
