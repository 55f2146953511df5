"""``KernelEngine``: the exported network evaluated with numpy matmuls and two C kernels.

It reads the weights out of the ONNX file and computes what onnxruntime computes from the
same file (up to float rounding: sums in a different order), specialised to the inputs
``decide`` has, graphs in the start state:

- the encoder's float input is mostly constant there (group size 1, no schedule, one-hot
  kind, the graph's globals), so its matrix product folds into one table row per (op,
  kind) pair, a [M, 5] @ [5, H] product and one row per graph;
- no edge lies inside a group, so the edges' group flag drops out of every layer;
- a convolution is one [M, H] @ [H, 3H] matmul (self, producer and consumer weights), then
  one pass over the edges in C (``agents/gnn_kernels.c``): summing the neighbours' rows
  costs what it costs, with no prefix sums or gathers of [K, H] copies;
- the edge head scores every edge in one C pass over the edge list.

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
class ConvWeights:
    """One EdgeAwareConv, split by what its inputs are."""

    neighbours: np.ndarray   # [H, 3H]: self | mean of producers | mean of consumers, as columns of one matmul
    edge_in: np.ndarray      # [H] weight of the mean scaled log2 bytes over in-edges
    edge_out: np.ndarray     # [H] ... over out-edges
    bias: np.ndarray         # [H]


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
    """``FusionPolicy`` engine: the start-state forward pass in numpy and C (see module doc).

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
        self.op_kind_table = (op_rows[:, None, :] + kind_rows[None, :, :]).reshape(-1, hidden)          # [V*NK, H]
        self.node_feat_weight = np.ascontiguousarray(floats[:, :5].T)                                      # [5, H]
        self.glob_weight = np.ascontiguousarray(floats[:, columns.glob:].T)                               # [G, H]
        self.context_weight = np.ascontiguousarray(w["gnn.encoder.context.weight"].T)                      # [G, H]
        self.context_bias = w["gnn.encoder.context.bias"]
        self.convs = [self._conv(w, f"gnn.convs.{index}.update", hidden) for index in range(self._layers(w))]
        self.ends = np.ascontiguousarray(w["gnn.edge_head.ends.weight"].T)                                  # [H, 2H]
        self.ends_bias = w["gnn.edge_head.ends.bias"]
        self.edge_out = np.ascontiguousarray(w["gnn.edge_head.out.weight"][0])                             # [H]
        self.edge_out_bias = float(w["gnn.edge_head.out.bias"][0])
        self.edge_bytes_weight = float(w["gnn.edge_head.edge.weight"][0, 0])
        self.schedule = np.ascontiguousarray(w["gnn.schedule_head.weight"].T)                              # [H, S]
        self.schedule_bias = w["gnn.schedule_head.bias"]
        self.stop, self.value = (HeadWeights(
            np.ascontiguousarray(w[f"gnn.{head}.net.0.weight"].T), w[f"gnn.{head}.net.0.bias"],
            np.ascontiguousarray(w[f"gnn.{head}.net.2.weight"][0]), float(w[f"gnn.{head}.net.2.bias"][0]))
            for head in ("stop_head", "value_head"))
        self._hidden = hidden
        self._per_thread = threading.local()   # each thread its own Workspace: the kernels release the GIL

    @staticmethod
    def _layers(w: dict[str, np.ndarray]) -> int:
        return sum(1 for name in w if name.startswith("gnn.convs.") and name.endswith(".update.weight"))

    @staticmethod
    def _conv(w: dict[str, np.ndarray], prefix: str, hidden: int) -> ConvWeights:
        # [H, 3H + 4] columns: h, producers, consumers, in-edge (bytes, flag), out-edge (bytes, flag)
        update = w[f"{prefix}.weight"]
        blocks = [update[:, part * hidden:(part + 1) * hidden].T for part in range(3)]    # each [H, H]
        return ConvWeights(np.ascontiguousarray(np.concatenate(blocks, axis=1)),
                           np.ascontiguousarray(update[:, 3 * hidden]), np.ascontiguousarray(update[:, 3 * hidden + 2]),
                           w[f"{prefix}.bias"])

    def run(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(edge logits [K], schedule logits [M, S], stop logit [B], value [B])."""
        src, dst, m = batch.src, batch.dst, batch.num_nodes
        h, projected, ends = self._workspace().rows(m)                                 # [M, H], [M, 3H], [M, 2H]
        self._encode(batch, out=h)
        in_deg = np.bincount(dst, minlength=m)                                         # [M]
        out_deg = np.bincount(src, minlength=m)                                        # [M]
        inv_in = (1.0 / np.maximum(in_deg, 1)).astype(np.float32)
        inv_out = (1.0 / np.maximum(out_deg, 1)).astype(np.float32)
        ctx_in = (np.bincount(dst, batch.edge_bytes, minlength=m) * inv_in).astype(np.float32)   # [M] mean in-edge
        ctx_out = (np.bincount(src, batch.edge_bytes, minlength=m) * inv_out).astype(np.float32)  # [M] bytes, out
        for conv in self.convs:
            np.matmul(h, conv.neighbours, out=projected)
            _gnn_kernels.conv_update(h, projected, src, dst, inv_in, inv_out, ctx_in, ctx_out,
                                     conv.edge_in, conv.edge_out, conv.bias)           # h updated in place
        np.matmul(h, self.ends, out=ends)
        ends += self.ends_bias
        edge_logits = np.empty(src.shape[0], dtype=np.float32)                         # [K]
        edge_term = batch.edge_bytes * np.float32(self.edge_bytes_weight) + np.float32(self.edge_out_bias)
        _gnn_kernels.edge_scores(ends, src, dst, self.edge_out, edge_term, edge_logits)
        schedule_logits = h @ self.schedule + self.schedule_bias                       # [M, S]
        pooled = self._graph_means(h, batch.graph_ptr)                                  # [B, H]
        context = batch.glob @ self.context_weight + self.context_bias                 # [B, H]
        return edge_logits, schedule_logits, self.stop(pooled, context), self.value(pooled, context)

    def _workspace(self) -> "Workspace":
        workspace = getattr(self._per_thread, "workspace", None)
        if workspace is None:
            workspace = self._per_thread.workspace = Workspace(self._hidden)
        return workspace

    @staticmethod
    def _graph_means(h: np.ndarray, graph_ptr: np.ndarray) -> np.ndarray:
        """[M, H] -> [B, H] mean node state per graph; one graph: a BLAS matrix-vector
        product, ten times faster than numpy's reduction along the node axis."""
        if graph_ptr.shape[0] == 2:
            return (np.full(h.shape[0], 1.0 / h.shape[0], dtype=np.float32) @ h)[None]
        return np.add.reduceat(h, graph_ptr[:-1], axis=0) / np.diff(graph_ptr)[:, None]

    def _encode(self, batch: EncodedBatch, out: np.ndarray) -> None:
        """``out`` [M, H] = relu(E[op] + W floats + b), the initial node states, with the
        start state's constant columns folded into the tables."""
        np.take(self.op_kind_table, batch.op * NUM_KINDS + batch.kind, axis=0, out=out)
        out += batch.node_feat @ self.node_feat_weight
        glob_term = batch.glob @ self.glob_weight                                      # [B, H]
        out += glob_term[0] if glob_term.shape[0] == 1 else glob_term[batch.node_graph]
        np.maximum(out, 0.0, out=out)


class Workspace:
    """The engine's [M, ...] scratch arrays, kept between calls and grown as needed.

    A fresh multi-megabyte array is mapped anew by the allocator and costs page faults
    worth more than the arithmetic done in it (2 ms of a 10k-edge forward pass here).
    """

    def __init__(self, hidden: int) -> None:
        self.hidden = hidden
        self.capacity = 0
        self.arrays: tuple[np.ndarray, ...] = ()

    def rows(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of M rows: node states [M, H], convolution matmul [M, 3H], edge-head ends [M, 2H]."""
        if m > self.capacity:
            self.capacity = max(m, 2 * self.capacity)
            self.arrays = tuple(np.empty((self.capacity, width * self.hidden), dtype=np.float32) for width in (1, 3, 2))
        h, projected, ends = (array[:m] for array in self.arrays)
        return h, projected, ends


def onnx_weights(model: "onnx.ModelProto") -> dict[str, np.ndarray]:
    """The initializers of an exported policy by parameter name.

    The edge head's bias-free ``edge`` Linear is exported as the model's only MatMul, its
    weight transposed under a generated name; it is returned as
    ``gnn.edge_head.edge.weight`` [1, C] like the other parameters.
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
    missing = sorted(name for name in REQUIRED_WEIGHTS if name not in weights)
    if missing:
        raise ValueError(f"the policy file lacks the weights {missing}: it was not exported by this fusiongym's "
                         f"exporter; load it with engine='onnxruntime', or re-export it with `fusiongym export`")
    return weights
