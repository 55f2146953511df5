"""Message-passing layers of the fusion policy, written once for training and for inference.

Shapes: ``M`` nodes and ``K`` edges of a batch of ``B`` graphs (their disjoint union),
``H`` hidden units, ``S`` schedules, ``F`` float features per node, ``G`` global inputs.

The layers never index a padded batch and never loop over graphs: every graph operation
goes through a *structure* object that answers three questions,

- ``neighbour_mean(h)``: [M, 2, H], the mean of the producers' and of the consumers' states;
- ``edge_mean(x)``: [M, 2, C], the mean of the features of the in-edges and of the out-edges;
- ``graph_mean(h)``: [B, H], the mean over the nodes of each graph.

``ScatterStructure`` answers them with ``index_add`` (PyG's ``scatter``) on edge lists, for
training. ``CsrStructure`` answers the same sums with gathers and one cumulative sum over
edges sorted by destination (and by source): ONNX exports ``scatter`` as ScatterElements,
which onnxruntime runs an order of magnitude slower than Gather + CumSum + Sub. Sums are
accumulated in float64 there, so that differences of prefix sums over 10^4 edges keep
float32 accuracy; both structures compute the same means up to rounding (< 1e-5).

Messages are linear (``W [h_src ; e]``, summed before the nonlinearity, as in GraphSAGE with
edge features): the sum of a linear map is the map of the sum, so a layer aggregates raw
states once per direction instead of transforming every edge, which keeps inference at a
few gathers per layer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from .config import DEFAULT_HIDDEN, DEFAULT_LAYERS


class ScatterStructure:
    """Graph structure as edge lists (training): sums by ``scatter`` over edge indices.

    Args:
        src, dst: [K] int64 producer and consumer of each edge (indices into the M nodes).
        node_graph: [M] int64 graph of each node, nondecreasing.
        num_graphs: B.
    """

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, node_graph: torch.Tensor, num_graphs: int) -> None:
        self.src, self.dst, self.node_graph, self.num_graphs = src, dst, node_graph, num_graphs
        self.num_nodes = node_graph.shape[0]
        ones = torch.ones_like(src, dtype=torch.float32)
        in_deg = scatter(ones, dst, dim=0, dim_size=self.num_nodes, reduce="sum")            # [M]
        out_deg = scatter(ones, src, dim=0, dim_size=self.num_nodes, reduce="sum")           # [M]
        self.inv_deg = 1.0 / torch.stack([in_deg, out_deg], dim=1).clamp(min=1.0)           # [M, 2]
        count = scatter(torch.ones_like(node_graph, dtype=torch.float32), node_graph, dim=0,
                        dim_size=num_graphs, reduce="sum")                                   # [B]
        self.inv_count = (1.0 / count.clamp(min=1.0)).unsqueeze(1)                           # [B, 1]

    def _directed_sums(self, to_dst: torch.Tensor, to_src: torch.Tensor) -> torch.Tensor:
        """[K, C] values sent to each edge's consumer and producer -> [M, 2, C] means."""
        m = self.num_nodes
        into = scatter(to_dst, self.dst, dim=0, dim_size=m, reduce="sum")                   # [M, C]
        out_of = scatter(to_src, self.src, dim=0, dim_size=m, reduce="sum")                 # [M, C]
        return torch.stack([into, out_of], dim=1) * self.inv_deg.unsqueeze(2)               # [M, 2, C]

    def neighbour_mean(self, h: torch.Tensor) -> torch.Tensor:
        """[M, H] -> [M, 2, H]: mean over producers (in-edges) and over consumers (out-edges)."""
        return self._directed_sums(h[self.src], h[self.dst])

    def edge_mean(self, x: torch.Tensor) -> torch.Tensor:
        """[K, C] edge features -> [M, 2, C]: mean over in-edges and over out-edges."""
        return self._directed_sums(x, x)

    def graph_mean(self, h: torch.Tensor) -> torch.Tensor:
        """[M, H] -> [B, H]."""
        return scatter(h, self.node_graph, dim=0, dim_size=self.num_graphs, reduce="sum") * self.inv_count


class CsrStructure:
    """Graph structure as sorted edge lists and row pointers (inference, ONNX-friendly).

    Sorted edge lists start with one dummy row, so the inclusive prefix sum ``P`` over them
    holds the segment of node i, ``(lo[i], hi[i]]``, as ``P[hi[i]] - P[lo[i]]``; the dummy's
    value cancels in every difference, so it may be anything (node 0's state, zeros).
    Built by ``fusiongym.agents.fusion_policy.encode_graphs``.

    Args:
        nbr_index: [K+1, 2] int64: column 0 the producer of the k-th edge in consumer
            order, column 1 the consumer of the k-th edge in producer order (row 0 dummy).
        nbr_hi, nbr_lo: [M, 2] int64 flat positions into the [(K+1) * 2] prefix sums:
            ``(2 in_ptr[i+1], 2 out_ptr[i+1] + 1)`` and ``(2 in_ptr[i], 2 out_ptr[i] + 1)``.
        inv_deg: [M, 2] float32, 1 / max(1, in-degree) and 1 / max(1, out-degree).
        graph_ptr: [B+1] int64, node ranges of the graphs.
        inv_count: [B, 1] float32, 1 / nodes of each graph.
    """

    def __init__(self, nbr_index: torch.Tensor, nbr_hi: torch.Tensor, nbr_lo: torch.Tensor, inv_deg: torch.Tensor,
                 graph_ptr: torch.Tensor, inv_count: torch.Tensor) -> None:
        self.nbr_index, self.nbr_hi, self.nbr_lo, self.inv_deg = nbr_index, nbr_hi, nbr_lo, inv_deg
        self.graph_ptr, self.inv_count = graph_ptr, inv_count

    def _segment_means(self, values: torch.Tensor) -> torch.Tensor:
        """[K+1, 2, C] float64 sorted values (row 0 dummy) -> [M, 2, C] float32 means per node and direction."""
        prefix = torch.cumsum(values, dim=0).reshape(-1, values.shape[2])            # [(K+1)*2, C]
        sums = (prefix[self.nbr_hi] - prefix[self.nbr_lo]).float()                  # [M, 2, C]
        return sums * self.inv_deg.unsqueeze(2)

    def neighbour_mean(self, h: torch.Tensor) -> torch.Tensor:
        """[M, H] -> [M, 2, H]."""
        return self._segment_means(h.double()[self.nbr_index])                      # gathered [K+1, 2, H]

    def edge_mean(self, x: torch.Tensor) -> torch.Tensor:
        """[K+1, 2, C] edge features already in both sorted orders (row 0 dummy) -> [M, 2, C]."""
        return self._segment_means(x.double())

    def graph_mean(self, h: torch.Tensor) -> torch.Tensor:
        """[M, H] -> [B, H]."""
        prefix = torch.cumsum(torch.cat([h[:1], h], dim=0).double(), dim=0)          # [M+1, H], row 0 dummy
        return (prefix[self.graph_ptr[1:]] - prefix[self.graph_ptr[:-1]]).float() * self.inv_count


class NodeEncoder(nn.Module):
    """Initial node state ``relu(E[op] + W x)`` and the graph context ``C g``.

    ``x`` holds every other node input as floats (FLOPs and bytes, group size, one-hot kind
    and schedule, the graph's global features), so inference pays one Gather and one Gemm.
    """

    def __init__(self, vocab_size: int, num_floats: int, num_globals: int, hidden: int) -> None:
        super().__init__()
        self.op = nn.Embedding(vocab_size, hidden)
        self.floats = nn.Linear(num_floats, hidden)
        self.context = nn.Linear(num_globals, hidden)

    def forward(self, op: torch.Tensor, floats: torch.Tensor, glob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """op [M], floats [M, F], glob [B, G] -> (h [M, H], context [B, H])."""
        return torch.relu(self.op(op) + self.floats(floats)), self.context(glob)


class EdgeAwareConv(nn.Module):
    """One round of directed message passing with edge features.

    ``h' = h + relu(W [h ; mean_in(h_src) ; mean_out(h_dst) ; mean_in(e) ; mean_out(e)])``:
    a node hears its producers and its consumers separately (fusing a producer into a
    consumer is not symmetric) and the edges' bytes and group state.
    """

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.update = nn.Linear(3 * hidden + 2 * edge_dim, hidden)

    def forward(self, h: torch.Tensor, edge_context: torch.Tensor, structure) -> torch.Tensor:
        """h [M, H], edge_context [M, 2*C] -> [M, H]."""
        neighbours = structure.neighbour_mean(h).flatten(1)                   # [M, 2H]
        return h + torch.relu(self.update(torch.cat([h, neighbours, edge_context], dim=1)))


class EdgeHead(nn.Module):
    """Fuse logit of every edge: ``w . relu(U h_src + V h_dst) + a . e + b``.

    U and V are applied per node ([M, 2H]); the [2M, H] view interleaves them, so U h_src and
    V h_dst are rows 2 src and 2 dst + 1 of one table.
    """

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.ends = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, 1)
        self.edge = nn.Linear(edge_dim, 1, bias=False)

    def forward(self, h: torch.Tensor, end_index: torch.Tensor, edge_x: torch.Tensor) -> torch.Tensor:
        """h [M, H], end_index [K, 2] (2 src, 2 dst + 1), edge_x [K, C] -> [K] logits."""
        ends = self.ends(h).reshape(-1, self.hidden)                          # [2M, H]: U h_v, V h_v interleaved
        pair = ends[end_index[:, 0]] + ends[end_index[:, 1]]                  # [K, H]
        return (self.out(torch.relu(pair)) + self.edge(edge_x)).squeeze(1)    # [K]


class GraphHead(nn.Module):
    """A scalar per graph (stop logit or value) from the mean node state and the context."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """pooled [B, H], context [B, H] -> [B]."""
        return self.net(torch.cat([pooled, context], dim=1)).squeeze(1)


class FusionGNN(nn.Module):
    """Encoder, ``layers`` edge-aware convolutions and four heads over a disjoint union of graphs.

    Returns ``(edge_logits [K], schedule_logits [M, S], stop_logit [B], value [B])``.
    """

    def __init__(self, vocab_size: int, num_floats: int, num_globals: int, edge_dim: int, num_schedules: int,
                 hidden: int = DEFAULT_HIDDEN, layers: int = DEFAULT_LAYERS) -> None:
        super().__init__()
        self.encoder = NodeEncoder(vocab_size, num_floats, num_globals, hidden)
        self.convs = nn.ModuleList(EdgeAwareConv(hidden, edge_dim) for _ in range(layers))
        self.edge_head = EdgeHead(hidden, edge_dim)
        self.schedule_head = nn.Linear(hidden, num_schedules)
        self.stop_head = GraphHead(hidden)
        self.value_head = GraphHead(hidden)

    def forward(self, op: torch.Tensor, floats: torch.Tensor, glob: torch.Tensor, end_index: torch.Tensor,
                edge_x: torch.Tensor, edge_context: torch.Tensor,
                structure) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """op [M], floats [M, F], glob [B, G], end_index [K, 2], edge_x [K, C], edge_context
        [M, 2C] (``structure.edge_mean`` of the edge features, flattened)."""
        h, context = self.encoder(op, floats, glob)                            # [M, H], [B, H]
        for conv in self.convs:
            h = conv(h, edge_context, structure)                               # [M, H]
        pooled = structure.graph_mean(h)                                       # [B, H]
        return (self.edge_head(h, end_index, edge_x), self.schedule_head(h),
                self.stop_head(pooled, context), self.value_head(pooled, context))
