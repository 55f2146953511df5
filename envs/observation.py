"""The observation of FusionEnv: lean padded arrays, updated in place after every action.

Why these dtypes: SB3 stores every observation key in its space's dtype for every step of
the rollout buffer, and sb3-contrib stores the action mask as float32. At max_nodes=2048,
max_edges=4096 with six schedules, 2048 steps x 4 envs, the mask alone takes 537 MB; the
observation gets the rest of a 1 GiB budget (62 KiB per step), hence an op id instead of a
one-hot, float16 features, uint16 indices, and the edge mask and "inside a group" flag
folded into one uint8 ``edge_state``. The README (section FusionEnv-v0) documents every key and feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from gymnasium import spaces

from fusiongym.graphs import ComputeGraph, OpKind
from fusiongym.graphs.ir import GraphArrays
from fusiongym.reward import LatencyBackend

from .partition import Merge

# Canonical operator names (Relax op names after legalization, as the importers record
# them). Id 0 marks padding, id 1 every op not in the list; the list only ever grows at
# the end, so trained policies keep their embeddings.
OP_VOCAB: tuple[str, ...] = (
    "<pad>", "<other>",
    # contractions, convolutions, pooling
    "matmul", "conv1d", "conv2d", "conv3d", "conv2d_transpose", "max_pool2d", "avg_pool2d",
    "adaptive_avg_pool2d", "attention",
    # normalization and activations with a reduction inside
    "softmax", "log_softmax", "layer_norm", "rms_norm", "group_norm", "batch_norm",
    # reductions
    "sum", "mean", "max", "min", "prod", "variance", "std", "argmax", "argmin", "cumsum",
    # elementwise arithmetic
    "add", "subtract", "multiply", "divide", "floor_divide", "power", "maximum", "minimum",
    "negative", "abs", "exp", "log", "sqrt", "rsqrt", "square", "tanh", "sigmoid", "erf",
    "sin", "cos", "relu", "gelu", "gelu_tanh", "silu", "clip", "where", "astype",
    "zeros_like", "ones_like", "full_like", "equal", "not_equal", "less", "less_equal",
    "greater", "greater_equal", "logical_and", "logical_or", "logical_not",
    # layout and data movement
    "reshape", "permute_dims", "expand_dims", "squeeze", "broadcast_to", "concat", "split",
    "strided_slice", "take", "flatten", "repeat", "tile", "flip", "gather_elements",
    "gather_nd", "scatter_elements", "scatter_nd", "index_tensor", "one_hot", "topk", "sort",
    "argsort", "full", "zeros", "ones", "arange", "tril", "triu",
)
OP_IDS: dict[str, int] = {name: i for i, name in enumerate(OP_VOCAB)}
OTHER_OP = OP_IDS["<other>"]

# Per-node numeric features (float16), in column order.
NODE_FEATURES: tuple[str, ...] = (
    "log2_flops", "log2_bytes_read", "log2_bytes_written", "log2_param_bytes", "log2_intensity",
)
# Runtime dims with a fixed slot in the global vector (log2(1 + value), 0 when absent).
DIM_SLOTS: tuple[str, ...] = ("batch", "seq", "image", "tokens")
# Global context features (float16), in order.
GLOBAL_FEATURES: tuple[str, ...] = (
    "device_is_gpu", "log2_peak_gflops", "log2_bandwidth_gbs", "launch_overhead_us",
    "load_compute", "load_bandwidth",
    *(f"log2_{dim}" for dim in DIM_SLOTS),
    "routing_imbalance", "experts_active_share",
    "log2_unfused_us", "latency_ratio", "groups_ratio", "nodes_fill",
)
_G = {name: i for i, name in enumerate(GLOBAL_FEATURES)}
FEATURE_HIGH = 64.0    # log2(1 + x) of any float64 count stays below 64 for x < 2**64
GLOBAL_HIGH = 1024.0   # global features are clipped to [0, 1024]

# node_kind: 0 = padding, 1 + position of the OpKind in OpKind order.
KIND_CODES: dict[OpKind, int] = {kind: 1 + i for i, kind in enumerate(OpKind)}


def op_id(name: str) -> int:
    """Vocabulary id of an op name; de-duplicated names (``add3``) map to their base op."""
    found = OP_IDS.get(name)
    if found is None:
        found = OP_IDS.get(name.rstrip("0123456789"), OTHER_OP)
    return found


def op_ids(arrays: GraphArrays) -> np.ndarray:
    """[N] uint16 vocabulary ids, looking up each distinct name once (graphs repeat few ops)."""
    return np.array([op_id(name) for name in arrays.op_table], dtype=np.uint16)[arrays.op_code]


def observation_space(max_nodes: int, max_edges: int, num_schedules: int) -> spaces.Dict:
    """The Dict space; shapes [max_nodes], [max_nodes, F], [2, max_edges], [max_edges, 1], [G]."""
    n, e = max_nodes, max_edges
    return spaces.Dict({
        "node_op": spaces.Box(0, len(OP_VOCAB) - 1, (n,), np.uint16),
        "node_kind": spaces.Box(0, len(OpKind), (n,), np.uint8),
        "node_feat": spaces.Box(0.0, FEATURE_HIGH, (n, len(NODE_FEATURES)), np.float16),
        "node_group": spaces.Box(0, max(n - 1, 0), (n,), np.uint16),
        "node_schedule": spaces.Box(0, num_schedules, (n,), np.uint8),
        "node_mask": spaces.MultiBinary(n),
        "edge_index": spaces.Box(0, max(n - 1, 0), (2, e), np.uint16),
        "edge_feat": spaces.Box(0.0, FEATURE_HIGH, (e, 1), np.float16),
        "edge_state": spaces.Box(0, 2, (e,), np.uint8),
        "global": spaces.Box(0.0, GLOBAL_HIGH, (len(GLOBAL_FEATURES),), np.float16),
    })


@dataclass(frozen=True)
class GraphFeatures:
    """The parts of an observation that depend only on the graph and backend (cached per graph)."""

    node_op: np.ndarray      # [N] uint16
    node_kind: np.ndarray    # [N] uint8
    node_feat: np.ndarray    # [N, F] float16
    edge_index: np.ndarray   # [2, E] uint16
    edge_feat: np.ndarray    # [E, 1] float16
    context: np.ndarray      # [G] float64, the graph/device part of "global" (rest zero)

    @staticmethod
    def of(graph: ComputeGraph, backend: LatencyBackend) -> "GraphFeatures":
        arrays = graph.arrays
        return GraphFeatures(
            node_op=op_ids(arrays),
            node_kind=(arrays.kind_index + 1).astype(np.uint8),        # KIND_CODES: 1 + position in OpKind
            node_feat=node_log_features(arrays).astype(np.float16),
            edge_index=arrays.edge_index.astype(np.uint16),
            edge_feat=edge_log_features(arrays).astype(np.float16)[:, None],
            context=context_features(graph, backend),
        )


# log2(1 + x) features are computed in float32, not float64: numpy's float32 log2 is
# vectorized (20x faster here), and the float16 the observation stores differs at most by
# one unit in its last place, in rare ties.
def node_log_features(arrays: GraphArrays) -> np.ndarray:
    """[N, 5] float32: min(log2(1 + x), FEATURE_HIGH) of each NODE_FEATURES column, before
    the observation's float16 rounding."""
    values = np.zeros((arrays.flops.shape[0], len(NODE_FEATURES)), dtype=np.float32)      # [N, 5]
    for column, counts in enumerate((arrays.flops, arrays.bytes_read, arrays.bytes_written, arrays.param_bytes)):
        values[:, column] = counts
    moved = values[:, 1] + values[:, 2]
    np.divide(values[:, 0], moved, out=values[:, 4], where=moved > 0)                     # intensity
    values += 1.0
    return np.minimum(np.log2(values, out=values), FEATURE_HIGH, out=values)


def edge_log_features(arrays: GraphArrays) -> np.ndarray:
    """[E] float32: min(log2(1 + bytes), FEATURE_HIGH) per edge, before float16 rounding."""
    return np.minimum(np.log2(1.0 + arrays.edge_bytes.astype(np.float32)), FEATURE_HIGH)


def context_features(graph: ComputeGraph, backend: LatencyBackend) -> np.ndarray:
    """[G] float64: device profile, device load, runtime dims, MoE routing (rest zero)."""
    values = np.zeros(len(GLOBAL_FEATURES))
    profile = getattr(backend, "profile", None)  # analytical backends carry a DeviceProfile
    if profile is not None:
        values[_G["device_is_gpu"]] = float(profile.kind == "gpu")
        values[_G["log2_peak_gflops"]] = math.log2(1.0 + profile.fp32_flops_per_s / 1e9)
        values[_G["log2_bandwidth_gbs"]] = math.log2(1.0 + profile.memory_bandwidth_bytes_per_s / 1e9)
        values[_G["launch_overhead_us"]] = profile.launch_overhead_us
    load = graph.context.get("device_load") or {}
    if isinstance(load, Mapping):
        values[_G["load_compute"]] = float(load.get("compute", 0.0))
        values[_G["load_bandwidth"]] = float(load.get("bandwidth", 0.0))
    else:
        values[_G["load_compute"]] = values[_G["load_bandwidth"]] = float(load)
    dims: Mapping[str, Any] = graph.context.get("dims") or {}
    for name in DIM_SLOTS:
        if name in dims:
            values[_G[f"log2_{name}"]] = math.log2(1.0 + float(dims[name]))
    routing = graph.context.get("routing")
    if routing:
        counts = np.asarray(routing, dtype=np.float64)
        if counts.sum() > 0:
            values[_G["routing_imbalance"]] = counts.max() / counts.mean()
        values[_G["experts_active_share"]] = float((counts > 0).mean())
    return values


class ObservationBuffers:
    """The padded arrays of one env, written in place; ``observation()`` hands out copies."""

    def __init__(self, space: spaces.Dict) -> None:
        self.arrays: dict[str, np.ndarray] = {key: np.zeros(sub.shape, sub.dtype) for key, sub in space.items()}
        self.max_nodes = space["node_op"].shape[0]
        a = self.arrays
        self._node_group, self._node_schedule = a["node_group"], a["node_schedule"]
        self._edge_state, self._global = a["edge_state"], a["global"]

    def reset(self, features: GraphFeatures, label: np.ndarray, schedule_of_node: np.ndarray,
              internal: np.ndarray, unfused_us: float) -> None:
        """Fill every array for a new episode (padding zeroed)."""
        n, e = features.node_op.shape[0], features.edge_index.shape[1]
        for array in self.arrays.values():
            array.fill(0)
        a = self.arrays
        a["node_op"][:n] = features.node_op
        a["node_kind"][:n] = features.node_kind
        a["node_feat"][:n] = features.node_feat
        a["node_mask"][:n] = 1
        a["edge_index"][:, :e] = features.edge_index
        a["edge_feat"][:e] = features.edge_feat
        a["node_group"][:n] = label
        a["node_schedule"][:n] = schedule_of_node
        a["edge_state"][:e] = np.where(internal, 2, 1)
        context = features.context.copy()
        context[_G["log2_unfused_us"]] = math.log2(1.0 + unfused_us)
        context[_G["nodes_fill"]] = n / self.max_nodes
        self._global[:] = np.clip(context, 0.0, GLOBAL_HIGH)

    def merged(self, merge: Merge) -> None:
        self._node_group[list(merge.moved)] = merge.label
        if merge.schedules_reset:
            self._node_schedule[list(merge.members)] = 0
        self._edge_state[merge.internal_edges] = 2

    def scheduled(self, members: tuple[int, ...], schedule: int) -> None:
        self._node_schedule[list(members)] = schedule + 1

    def progress(self, latency_ratio: float, groups_ratio: float) -> None:
        self._global[_G["latency_ratio"]] = min(latency_ratio, GLOBAL_HIGH)
        self._global[_G["groups_ratio"]] = groups_ratio

    def observation(self) -> dict[str, np.ndarray]:
        """Copies: callers keep observations, and the buffers change in place next step."""
        return {key: array.copy() for key, array in self.arrays.items()}
