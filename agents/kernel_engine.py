"""``KernelEngine``: the exported network evaluated by one C kernel over the file's weights.

It reads the weights out of the ONNX file and computes what onnxruntime computes from the
same file (up to float rounding: sums in a different order), specialised to the inputs
``decide`` has, graphs in the start state:

- the encoder's float input is mostly constant there (group size 1, no schedule, one-hot
  kind, the graph's globals), so its matrix product folds into one table row per (op,
  kind) pair, a [M, 5] @ [5, H] product and one row per graph;
- no edge lies inside a group, so the edges' group flag drops out of every layer;
- the rest, convolutions and heads, is three sweeps over the nodes and three over the edges
  in C (``agents/gnn_kernels.c``), a node's rows in vector registers at the shipped widths.

onnxruntime needs the CSR inputs and Gather + CumSum chains that stand in for scatter in
ONNX; on a 10k-edge graph that is most of its time. ``OnnxEngine`` stays the reference:
the tests check that both give the same outputs and the same plans.

Shapes: M nodes, K edges, B graphs, H hidden units, S schedules, V op vocabulary.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import _gnn_kernels
from .fusion_policy import NUM_KINDS, EncodedBatch, FloatColumns

if TYPE_CHECKING:
    import onnx

# Parameters the engine reads besides the convolutions (gnn.convs.<i>.update.*).
REQUIRED_WEIGHTS = (
    "gnn.encoder.op.weight", "gnn.encoder.floats.weight", "gnn.encoder.floats.bias", "gnn.encoder.context.weight",
    "gnn.encoder.context.bias", "gnn.edge_head.ends.weight", "gnn.edge_head.ends.bias", "gnn.edge_head.out.weight",
    "gnn.edge_head.out.bias", "gnn.schedule_head.weight", "gnn.schedule_head.bias",
    *(f"gnn.{head}.net.{layer}.{part}" for head in ("stop_head", "value_head") for layer in (0, 2)
      for part in ("weight", "bias")),
    "gnn.convs.0.update.weight", "gnn.convs.0.update.bias",
)


@dataclass(frozen=True)
class HeadWeights:
    """A GraphHead: relu([pooled ; context] W1^T + b1) w2 + b2."""

    first: np.ndarray        # [2H, H]
    first_bias: np.ndarray   # [H]
    second: np.ndarray       # [H]
    second_bias: float

    def __call__(self, pooled: np.ndarray, context: np.ndarray) -> np.ndarray:
        """pooled [B, H], context [B, H] -> [B]."""
        hidden = np.maximum(np.concatenate([pooled, context], axis=1) @ self.first + self.first_bias, 0.0)
        return hidden @ self.second + self.second_bias


class KernelEngine:
    """``FusionPolicy`` engine: the start-state forward pass in C (see module doc).

    Args:
        weights: the ONNX initializers by name (``onnx_weights``).
        num_schedules: S, the policy's schedule menu size.
    """

    def __init__(self, weights: dict[str, np.ndarray], num_schedules: int) -> None:
        columns = FloatColumns(num_schedules)
        w = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in weights.items()}
        floats, hidden = w["gnn.encoder.floats.weight"], w["gnn.encoder.op.weight"].shape[1]    # [H, F]
        # Start-state encoder: op row + constant columns (no schedule) + bias, plus the kind's column.
        op_rows = w["gnn.encoder.op.weight"] + floats[:, columns.schedule] + w["gnn.encoder.floats.bias"]  # [V, H]
        kind_rows = floats[:, columns.kind:columns.kind + NUM_KINDS].T                                        # [NK, H]
        op_kind_table = (op_rows[:, None, :] + kind_rows[None, :, :]).reshape(-1, hidden)               # [V*NK, H]
        self.layers = sum(1 for name in w if name.startswith("gnn.convs.") and name.endswith(".update.weight"))
        self.packed = np.concatenate([part.ravel() for part in (                     # gnn_kernels.c's layout
            op_kind_table, floats[:, :5].T,                                           # [V*NK, H], [5, H]
            *(part for index in range(self.layers) for part in self._conv(w, f"gnn.convs.{index}.update", hidden)),
            w["gnn.edge_head.ends.weight"].T, w["gnn.edge_head.ends.bias"],          # [H, 2H], [2H]
            w["gnn.edge_head.out.weight"][0], w["gnn.edge_head.edge.weight"][0, :1],  # [H], w_bytes
            w["gnn.edge_head.out.bias"][:1],                                          # b_edge
            *self._schedule_head(w))])
        self.glob_weight = np.ascontiguousarray(floats[:, columns.glob:].T)                               # [G, H]
        self.context_weight = np.ascontiguousarray(w["gnn.encoder.context.weight"].T)                      # [G, H]
        self.context_bias = w["gnn.encoder.context.bias"]
        self.stop, self.value = (HeadWeights(
            np.ascontiguousarray(w[f"gnn.{head}.net.0.weight"].T), w[f"gnn.{head}.net.0.bias"],
            np.ascontiguousarray(w[f"gnn.{head}.net.2.weight"][0]), float(w[f"gnn.{head}.net.2.bias"][0]))
            for head in ("stop_head", "value_head"))
        self.hidden = hidden
        self.num_schedules = num_schedules
        self._per_thread = threading.local()   # each thread its own scratch: the kernel releases the GIL

    @staticmethod
    def _conv(w: dict[str, np.ndarray], prefix: str, hidden: int) -> tuple[np.ndarray, ...]:
        """One EdgeAwareConv as the kernel reads it: [H, 3H] (self | producers | consumers
        weights as columns of one matmul), then the in- and out-edge bytes weights [H] and the bias [H]."""
        update = w[f"{prefix}.weight"]   # [H, 3H + 4] columns: h, producers, consumers, in (bytes, flag), out (...)
        blocks = np.concatenate([update[:, part * hidden:(part + 1) * hidden].T for part in range(3)], axis=1)
        return blocks, update[:, 3 * hidden], update[:, 3 * hidden + 2], w[f"{prefix}.bias"]

    @staticmethod
    def _schedule_head(w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """[H, S8] and [S8]: the schedule head with zero columns up to a multiple of 8 (S8),
        so that the kernel computes it as whole vectors."""
        weight, bias = w["gnn.schedule_head.weight"].T, w["gnn.schedule_head.bias"]   # [H, S], [S]
        padding = -weight.shape[1] % 8
        return np.pad(weight, ((0, 0), (0, padding))), np.pad(bias, (0, padding))

    def run(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(edge logits [K], schedule logits [M, S], stop logit [B], value [B])."""
        m, k, b = batch.num_nodes, batch.src.shape[0], batch.glob.shape[0]
        edge_logits = np.empty(k, dtype=np.float32)                                   # [K]
        schedule_logits = np.empty((m, self.num_schedules), dtype=np.float32)         # [M, S]
        pooled = np.empty((b, self.hidden), dtype=np.float32)                         # [B, H]
        _gnn_kernels.forward(self.hidden, self.num_schedules, self.layers, self.packed,
                             batch.op * NUM_KINDS + batch.kind, batch.node_feat, batch.glob @ self.glob_weight,
                             batch.graph_ptr, batch.src, batch.dst, batch.edge_bytes, self._scratch(m),
                             edge_logits, schedule_logits, pooled)
        context = batch.glob @ self.context_weight + self.context_bias                # [B, H]
        return edge_logits, schedule_logits, self.stop(pooled, context), self.value(pooled, context)

    def _scratch(self, m: int) -> np.ndarray:
        """[M (4H + 4)] float32 kept per thread and grown as needed: a fresh multi-megabyte
        array is mapped anew by the allocator and costs page faults worth more than the
        arithmetic done in it."""
        scratch = getattr(self._per_thread, "scratch", None)
        size = m * (4 * self.hidden + 4)
        if scratch is None or scratch.shape[0] < size:
            scratch = self._per_thread.scratch = np.empty(max(size, 2 * (0 if scratch is None else scratch.shape[0])),
                                                          dtype=np.float32)
        return scratch[:size]


def onnx_weights(model: "onnx.ModelProto") -> dict[str, np.ndarray]:
    """The initializers of an exported policy by parameter name.

    The edge head's bias-free ``edge`` Linear is exported as the model's only MatMul, its
    weight transposed under a generated name; it is returned as
    ``gnn.edge_head.edge.weight`` [1, C] like the other parameters. The exporter stores equal
    initializers once (two zero biases of a fresh network), the others as Identity nodes
    of it: those are returned under their own names too.
    """
    from onnx import numpy_helper

    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    if len(matmuls) != 1 or matmuls[0].input[1] not in weights:
        raise ValueError(f"the policy graph has {len(matmuls)} MatMul nodes, expected one over a weight (the edge "
                         f"head's edge-feature weight): it was not exported by this fusiongym; re-export it with "
                         f"`fusiongym export runs/NAME --out policy.onnx`")
    weights["gnn.edge_head.edge.weight"] = weights.pop(matmuls[0].input[1]).T
    for alias in (node for node in graph.node if node.op_type == "Identity" and node.input[0] in weights):
        weights.setdefault(alias.output[0], weights[alias.input[0]])
    missing = sorted(name for name in REQUIRED_WEIGHTS if name not in weights)
    if missing:
        raise ValueError(f"the policy file lacks the weights {missing}: it was not exported by this fusiongym's "
                         f"exporter; load it with engine='onnxruntime', or re-export it with `fusiongym export`")
    return weights
