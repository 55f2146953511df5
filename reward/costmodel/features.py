"""Features of fused groups: per node (for the GNN) and per group (for both models).

A group's latency depends on what its ops compute (op, kind, FLOPs), on what the fused
kernel moves (only inputs from outside the group, outputs consumed outside it or leaving
the graph, parameters) and on its schedule. The first part is fixed per graph and computed
once (``GraphTensors``); the second depends on the plan and is computed for all groups of a
plan at once: one C pass over nodes and their edges (``_kernels.plan_pass``; on the Intel Xeon
an edge pass, numpy's dozen passes over [N] arrays and a group-sum pass took 0.39 ms of a
10k-edge plan, the one pass and numpy's log2 take 0.20 ms). One group alone (a training
sample, an env step) is computed in numpy from its own nodes and their edges only
(``group_example``, with bincounts), through ``_node_features`` and ``_group_rows``, the
formulas the C pass follows, so a group costs the same whether it is priced alone or inside
a 10k-edge plan; tests check that both give the same numbers.

The analytical backend's estimate of the group (``PRIOR_FEATURE``, ln µs, from the pinned
profile of ``prior.AnalyticalPrior``) enters both learned models as one more group input.

Shapes: N nodes, E edges, G groups, S schedules. All numbers enter as ``log2(1 + x) / 16``
(bytes and FLOPs span 10 orders of magnitude; /16 keeps them near [0, 4]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from fusiongym.graphs import ComputeGraph
from fusiongym.graphs.ir import GraphArrays, OpNode

from . import _kernels

NUM_KINDS = 7  # OpKind values in GraphArrays.kind_index order
NUM_SUMS = 5 + NUM_KINDS  # additive per-node columns summed over a group
STATIC_NODE_FEATURES = ("log_flops", "log_bytes_read", "log_bytes_written", "log_param_bytes", "log_intensity")
PLAN_NODE_FEATURES = ("log_external_read_bytes", "log_written_bytes", "internal_in_degree", "internal_out_degree")
GROUP_FEATURES = ("log_flops", "log_external_read_bytes", "log_written_bytes", "log_param_bytes",
                  "log_internal_edges", *(f"log_kind_{k}" for k in range(NUM_KINDS)), "log_nodes", "log_intensity")
NODE_FEATURES = (*STATIC_NODE_FEATURES, *(f"kind_{k}" for k in range(NUM_KINDS)), *PLAN_NODE_FEATURES)
# LightGBM's alone (``group_conv_geometry``): the FLOPs-weighted mean over the group's convolutions of
# their window (kH kW), stride, input and output channels and channel groups, log_scale'd, 0 without
# one. At like FLOPs and bytes a 1 x 1 and a 3 x 3 convolution are different kernels to schedule,
# and the sums above cannot tell them apart. The GNN ordered unseen models' plans worse with them
# (README, "Convolution geometry").
CONV_GROUP_FEATURES = ("conv_log_window", "conv_log_stride", "conv_log_in_channels", "conv_log_out_channels",
                       "conv_log_groups")
# LightGBM's alone too (``group_vector_share``): how much of the kernel of the group's heaviest node,
# and FLOP-weighted of all its nodes, LLVM vectorizes when unscheduled (``reward.vector_share``): under
# "default" that, not the op, decides whether a convolution or matmul runs at 3 or at 40 GFLOP/s
# (README, "What LLVM vectorizes").
GROUP_VECTOR_FEATURES = ("vector_share_of_heaviest", "flop_weighted_vector_share")
# Per edge (the tensor it carries): its size, and how much more the consumer writes than this
# input holds (> 0: a broadcast or an expansion, < 0: a reduction), which decides what fusing
# producer and consumer into one loop nest costs.
EDGE_FEATURES = ("log_edge_bytes", "log_consumer_written_over_edge_bytes")
OTHER_OP = "<other>"  # id 0 of every op vocabulary: ops the model never trained on
PRIOR_FEATURE = "analytical_ln_us"
PRIOR_INPUT_SCALE = 1 / 8  # ln µs of kernels here spans about 0..12; /8 keeps the input near [0, 1.5]


def log_scale(x: np.ndarray) -> np.ndarray:
    """log2(1 + x) / 16 in float32 (16x faster than float64 here: SIMD)."""
    x = np.asarray(x, dtype=np.float32) + np.float32(1.0)
    return np.log2(x, out=x) * np.float32(1 / 16)


@dataclass(frozen=True)
class GraphTensors:
    """Everything plan-independent about a graph, as arrays (built once per graph)."""

    num_nodes: int
    op_names: tuple[str, ...]      # [N]
    summed: np.ndarray             # [N, 5 + 7] float32 per-node terms of the group sums; the plan-dependent
                                   # columns (1, 2, 4) are zero: a plan copies it and fills them
    static: np.ndarray             # [N, 5 + 7] float32: STATIC_NODE_FEATURES then kind one-hot
    flops: np.ndarray              # [N] float64
    own_read_bytes: np.ndarray     # [N] parameters and graph inputs: read whatever the plan
    bytes_written: np.ndarray      # [N]
    always_written: np.ndarray     # [N] bool: an output leaves the graph or has no consumer
    src: np.ndarray                # [E] int64
    dst: np.ndarray                # [E] int64
    edge_bytes: np.ndarray         # [E]
    edge_static: np.ndarray        # [E, 2] float32: EDGE_FEATURES
    by_dst: np.ndarray             # [E] edge ids sorted by consumer (stable)
    in_indptr: np.ndarray          # [N + 1] CSR row pointers of the in-edges in ``by_dst`` order
    in_src: np.ndarray             # [E] int64 producer of each in-edge, in ``by_dst`` order
    in_edge_static: np.ndarray     # [E, 2] float32 ``edge_static`` in ``by_dst`` order
    in_edge_bytes: np.ndarray      # [E] ``edge_bytes`` in ``by_dst`` order
    by_src: np.ndarray             # [E] edge ids sorted by producer (stable)
    out_indptr: np.ndarray         # [N + 1] CSR row pointers of the out-edges in ``by_src`` order
    out_dst: np.ndarray            # [E] int64 consumer of each out-edge, in ``by_src`` order

    @staticmethod
    def of(graph: ComputeGraph) -> "GraphTensors":
        arrays = graph.arrays
        n = graph.num_nodes
        src, dst = (arrays.edge_index.astype(np.int64) if arrays.edge_index.size
                    else np.zeros((2, 0), dtype=np.int64))
        in_bytes = np.bincount(dst, weights=arrays.edge_bytes, minlength=n)
        own_read = np.maximum(arrays.param_bytes, arrays.bytes_read - in_bytes)
        intensity = arrays.flops / np.maximum(1.0, arrays.bytes_read + arrays.bytes_written)
        kind = arrays.kind_index.astype(np.int64)
        static = np.concatenate([
            log_scale(np.stack([arrays.flops, arrays.bytes_read, arrays.bytes_written, arrays.param_bytes,
                                intensity], axis=1)),
            np.eye(NUM_KINDS, dtype=np.float32)[kind]], axis=1)
        by_dst, by_src = np.argsort(dst, kind="stable"), np.argsort(src, kind="stable")
        log_edge_bytes = log_scale(arrays.edge_bytes)
        edge_static = np.stack([log_edge_bytes, log_scale(arrays.bytes_written)[dst] - log_edge_bytes], axis=1)
        return GraphTensors(
            num_nodes=n, op_names=arrays.op_names, static=static, summed=_summed_template(arrays, kind),
            flops=arrays.flops,
            own_read_bytes=own_read, bytes_written=arrays.bytes_written,
            always_written=(arrays.output_bytes_external > 0) | (np.bincount(src, minlength=n) == 0),
            src=src, dst=dst, edge_bytes=arrays.edge_bytes, edge_static=edge_static, by_dst=by_dst,
            in_indptr=csr_indptr(dst, n), in_src=src[by_dst], in_edge_static=np.ascontiguousarray(edge_static[by_dst]),
            in_edge_bytes=arrays.edge_bytes[by_dst], by_src=by_src, out_indptr=csr_indptr(src, n), out_dst=dst[by_src])


def _summed_template(arrays: GraphArrays, kind: np.ndarray) -> np.ndarray:
    """[N, 12] float32: FLOPs, 0, 0, parameter bytes, 0, kind one-hot (zeros: plan columns)."""
    summed = np.zeros((len(kind), 5 + NUM_KINDS), dtype=np.float32)
    summed[:, 0] = arrays.flops
    summed[:, 3] = arrays.param_bytes
    summed[np.arange(len(kind)), 5 + kind] = 1.0
    return summed


def csr_indptr(rows: np.ndarray, num_rows: int) -> np.ndarray:
    """[num_rows + 1] CSR row pointers of edges sorted by ``rows``."""
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_rows))]).astype(np.int64)


@dataclass(frozen=True)
class PlanFeatures:
    """Plan-dependent arrays of one graph under one partition (labels 0..G-1 per node)."""

    node: np.ndarray              # [4, N] float32: PLAN_NODE_FEATURES, feature by feature
    in_internal: np.ndarray       # [E] bool in consumer order (``GraphTensors.by_dst``): both ends in one group
    group: np.ndarray             # [G, len(GROUP_FEATURES)] float32


def plan_features(tensors: GraphTensors, group_of: np.ndarray, num_groups: int) -> PlanFeatures:
    """Node and group features of the partition ``group_of`` ([N] labels in 0..G-1): one C pass
    (``_kernels.plan_pass``) over nodes and their edges, the formulas of ``_node_features`` and
    ``_group_rows``, then numpy's log2 over the columns that take ``log_scale``."""
    in_internal = np.empty(len(tensors.src), dtype=bool)                                  # [E] by consumer
    node = np.empty((len(PLAN_NODE_FEATURES), tensors.num_nodes), dtype=np.float32)       # [4, N]
    group = np.empty((num_groups, len(GROUP_FEATURES)), dtype=np.float32)                 # [G, 14]
    _kernels.plan_pass(tensors.in_indptr, tensors.in_src, tensors.in_edge_bytes, tensors.out_indptr, tensors.out_dst,
                       np.ascontiguousarray(group_of, dtype=np.int64), tensors.own_read_bytes, tensors.bytes_written,
                       tensors.always_written.view(np.uint8), tensors.summed, in_internal.view(np.uint8), node, group)
    _log2_over_16(node[:2])        # 1 + external read bytes, 1 + written bytes (contiguous: 30x faster)
    _log2_over_16(group)           # 1 + every column
    return PlanFeatures(node, in_internal, group)


def _log2_over_16(one_plus_x: np.ndarray) -> None:
    """The rest of ``log_scale`` in place, for values the C pass left as float32 1 + x."""
    np.log2(one_plus_x, out=one_plus_x)
    one_plus_x *= np.float32(1 / 16)


def _node_features(tensors: GraphTensors, nodes: slice | np.ndarray, external_read: np.ndarray,
                   leaves: np.ndarray, in_degree: np.ndarray, out_degree: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """([n, 4] PLAN_NODE_FEATURES, [n, 12] per-node sums for ``_group_rows``) of ``nodes``,
    from their external read bytes, whether an output leaves the group, internal degrees."""
    written = tensors.bytes_written[nodes] * (tensors.always_written[nodes] | leaves)
    additive = tensors.summed[nodes].copy()                                                # [n, 5 + 7]
    additive[:, 1] = external_read
    additive[:, 2] = written
    additive[:, 4] = in_degree
    node = np.empty((len(written), len(PLAN_NODE_FEATURES)), dtype=np.float32)            # [n, 4]
    node[:, 0] = log_scale(external_read)      # column by column: ufuncs on contiguous 1-D arrays
    node[:, 1] = log_scale(written)
    node[:, 2] = np.minimum(in_degree, 8.0) * 0.25
    node[:, 3] = np.minimum(out_degree, 8.0) * 0.25
    return node, additive


def _group_rows(sums: np.ndarray) -> np.ndarray:
    """[G, len(GROUP_FEATURES)] from the [G, 12] float32 sums of ``_node_features``' additive
    columns, written in place into one array (``log_scale`` of each column)."""
    rows = np.empty((sums.shape[0], len(GROUP_FEATURES)), dtype=np.float32)               # [G, 14]
    rows[:, :NUM_SUMS] = sums
    rows[:, NUM_SUMS] = sums[:, 5:] @ np.ones(NUM_KINDS, dtype=np.float32)                 # nodes (BLAS, not a
    rows[:, NUM_SUMS + 1] = sums[:, 0] / np.maximum(np.float32(1.0), sums[:, 1] + sums[:, 2])  # strided sum)
    rows += np.float32(1.0)
    np.log2(rows, out=rows)
    rows *= np.float32(1 / 16)
    return rows


@dataclass(frozen=True)
class GroupExample:
    """One group as a model input: its nodes' features and internal edges, local ids."""

    op_names: tuple[str, ...]   # [n]
    node: np.ndarray            # [n, 16] float32: NODE_FEATURES
    edge_index: np.ndarray      # [2, e] int64 internal edges, local ids
    edge_attr: np.ndarray       # [e, 2] float32: EDGE_FEATURES of those edges
    group: np.ndarray           # [len(GROUP_FEATURES)] float32


def group_example(tensors: GraphTensors, nodes: Sequence[int]) -> GroupExample:
    """The features of one group of a graph, as ``plan_features`` computes them in any plan
    holding it, from the group's own nodes and edges only (no pass over the whole graph)."""
    members = np.unique(np.asarray(nodes, dtype=np.int64))                              # sorted
    size = len(members)
    in_edges = _edges_of(tensors.by_dst, tensors.in_indptr, members)
    out_edges = _edges_of(tensors.by_src, tensors.out_indptr, members)
    in_local, in_inside = _local_ids(members, tensors.src[in_edges])
    out_inside = _local_ids(members, tensors.dst[out_edges])[1]
    in_dst = np.searchsorted(members, tensors.dst[in_edges])
    out_src = np.searchsorted(members, tensors.src[out_edges])
    external_read = tensors.own_read_bytes[members] + np.bincount(
        in_dst, weights=tensors.edge_bytes[in_edges] * ~in_inside, minlength=size)
    leaves = np.bincount(out_src, weights=~out_inside, minlength=size) > 0
    in_degree = np.bincount(in_dst, weights=in_inside, minlength=size)
    out_degree = np.bincount(out_src, weights=out_inside, minlength=size)
    node, additive = _node_features(tensors, members, external_read, leaves, in_degree, out_degree)
    return GroupExample(
        op_names=tuple(tensors.op_names[i] for i in members),
        node=np.concatenate([tensors.static[members], node], axis=1),
        edge_index=np.stack([in_local[in_inside], in_dst[in_inside]]),
        edge_attr=tensors.edge_static[in_edges[in_inside]],
        group=_group_rows(additive.sum(axis=0, keepdims=True))[0])


def _edges_of(order: np.ndarray, indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Edge ids of CSR ``rows`` (``order`` sorted by row, ``indptr`` its pointers), row by row."""
    starts, stops = indptr[rows], indptr[rows + 1]
    counts = stops - starts
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[np.repeat(starts, counts) + offsets]


def _local_ids(members: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of each of ``nodes`` in sorted ``members``, whether it is one of them)."""
    position = np.minimum(np.searchsorted(members, nodes), len(members) - 1)
    return position, members[position] == nodes


def group_conv_geometry(graph: ComputeGraph, nodes: Sequence[int]) -> np.ndarray:
    """[len(CONV_GROUP_FEATURES)] float32 of the group ``nodes`` (conv2d: NCHW data, OIHW weight)."""
    convs = [graph.nodes[node] for node in nodes if graph.nodes[node].op == "conv2d"]
    if not convs:
        return np.zeros(len(CONV_GROUP_FEATURES), dtype=np.float32)
    geometry = np.array([_conv_geometry(conv) for conv in convs])                          # [c, 5]
    flops = np.array([float(conv.flops) for conv in convs])
    return (flops @ log_scale(geometry) / flops.sum()).astype(np.float32)


def _conv_geometry(conv: OpNode) -> tuple[int, float, int, int, float]:
    """Window, stride, input and output channels, channel groups of one conv2d."""
    data, weight, out = conv.inputs[0].shape, conv.inputs[1].shape, conv.outputs[0].shape
    return (int(weight[2]) * int(weight[3]), int(data[2]) / int(out[2]), int(data[1]), int(out[1]),
            int(data[1]) / int(weight[1]))


def group_vector_share(tensors: GraphTensors, nodes: Sequence[int], shares: Mapping[int, float]) -> np.ndarray:
    """[len(GROUP_VECTOR_FEATURES)] float32: the vector share (``shares``: node -> share) of the
    group's heaviest node, and the FLOP-weighted mean share of its nodes."""
    members = np.unique(np.asarray(nodes, dtype=np.int64))
    flops = tensors.flops[members]
    share = np.array([shares[int(n)] for n in members])
    weighted = float(flops @ share / flops.sum()) if flops.sum() > 0 else float(share.mean())
    return np.array([shares[heaviest_node(tensors, members)], weighted], dtype=np.float32)


def dominant_op(tensors: GraphTensors, nodes: Sequence[int]) -> str:
    """The op of the group's heaviest node."""
    return tensors.op_names[heaviest_node(tensors, nodes)]


def heaviest_node(tensors: GraphTensors, nodes: Sequence[int]) -> int:
    """The group's node with the most FLOPs (the lowest node id on ties)."""
    members = np.unique(np.asarray(nodes, dtype=np.int64))
    return int(members[np.argmax(tensors.flops[members])])
