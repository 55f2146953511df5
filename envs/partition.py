"""Incremental partition state: the groups of a graph under merges along edges.

A step of ``FusionEnv`` must cost microseconds, so nothing here walks the whole graph per
step. Groups are labelled by their smallest node id (so the same plan always gives the
same labels, whatever the merge order) and kept in three structures:

- ``label[node]``: the group of every node (a numpy array for vectorized edge tests and a
  list mirror for scalar reads);
- per group: its sorted members, the ids of the edges that leave it and enter it;
- ``reach``: a bit matrix [N labels, W words] where row X holds the nodes of every group
  reachable from group X through the group DAG (X's own nodes excluded).

Merging groups X and Y joined by an edge X -> Y is *convex* iff no other successor of X
reaches Y (a path through a third group would leave the new group and re-enter it). With
``reach`` that is one OR over the successors' rows and one bit test. After a merge only two
kinds of fuse verdicts change, and the update touches only those:

- edges touching the merged group M are re-decided (convexity and the backend's constraint);
- an edge X -> Y elsewhere becomes non-convex iff X reaches M and M reaches Y (merging can
  only add paths between other groups, never remove them): one vectorized test over edges.

``reach`` itself is updated for the ancestors of M only (rows whose bits meet M's nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Sequence

import numpy as np

from fusiongym.graphs import ComputeGraph
from fusiongym.reward import LatencyBackend, Plan

WORD_BITS = 64
_BIT = [np.uint64(1 << i) for i in range(WORD_BITS)]   # single-bit masks, as numpy scalars


@dataclass(frozen=True)
class GraphStructure:
    """The graph as the partition needs it, built once per graph (the env caches it)."""

    num_nodes: int
    num_edges: int
    words: int                    # W = ceil(N / 64): uint64 words per node bitset
    src: np.ndarray               # [E] intp, producer of each edge
    dst: np.ndarray               # [E] intp, consumer of each edge
    src_list: list[int]           # [E] the same as Python ints, for scalar reads
    dst_list: list[int]           # [E]
    node_out_edges: tuple[tuple[int, ...], ...]  # [N] edge ids leaving each node
    node_in_edges: tuple[tuple[int, ...], ...]   # [N] edge ids entering each node

    @staticmethod
    def of(graph: ComputeGraph) -> "GraphStructure":
        num_nodes = graph.num_nodes
        src_list = [edge.src for edge in graph.edges]
        dst_list = [edge.dst for edge in graph.edges]
        out_edges: list[list[int]] = [[] for _ in range(num_nodes)]
        in_edges: list[list[int]] = [[] for _ in range(num_nodes)]
        for edge_id, (u, v) in enumerate(zip(src_list, dst_list)):
            out_edges[u].append(edge_id)
            in_edges[v].append(edge_id)
        return GraphStructure(
            num_nodes=num_nodes, num_edges=len(src_list), words=max(1, -(-num_nodes // WORD_BITS)),
            src=np.array(src_list, dtype=np.intp), dst=np.array(dst_list, dtype=np.intp),
            src_list=src_list, dst_list=dst_list,
            node_out_edges=tuple(tuple(e) for e in out_edges),
            node_in_edges=tuple(tuple(e) for e in in_edges),
        )

    @cached_property
    def singletons(self) -> "PlanShape":
        """The shape of the every-node-alone plan, where every episode from singletons starts."""
        return PlanShape.of(self, [[v] for v in range(self.num_nodes)])


@dataclass(frozen=True)
class PlanShape:
    """What a plan's partition state takes from the graph structure alone: labels, groups,
    the edges between them, reach, and the merges that would stay convex (the backend's
    merge constraint is asked per graph). Shared arrays: ``Partition.restore`` copies them."""

    label: np.ndarray                              # [N] intp, group label (smallest member) per node
    reach: np.ndarray                              # [N, W] uint64, rows by label
    bits: np.ndarray                               # [N, W] uint64, the nodes of each group, rows by label
    members: tuple[tuple[int, ...] | None, ...]    # [N] by label; None for labels not in use
    out_edges: tuple[tuple[int, ...] | None, ...]  # [N] by label: edges to other groups
    in_edges: tuple[tuple[int, ...] | None, ...]   # [N] by label: edges from other groups
    convex: tuple[tuple[int, int, tuple[int, ...]], ...]  # (x, y, edges x -> y) where merging x, y is convex

    @staticmethod
    def of(s: GraphStructure, groups: Sequence[Sequence[int]]) -> "PlanShape":
        n, words = s.num_nodes, s.words
        label = np.empty(n, dtype=np.intp)
        for group in groups:
            label[group] = group[0]
        labels = [group[0] for group in groups]
        label_list = label.tolist()
        members: list[tuple[int, ...] | None] = [None] * n
        out_edges: list[tuple[int, ...] | None] = [None] * n
        in_edges: list[tuple[int, ...] | None] = [None] * n
        successors: dict[int, set[int]] = {x: set() for x in labels}
        for x, group in zip(labels, groups):
            members[x] = tuple(group)
            out_edges[x] = tuple(e for v in group for e in s.node_out_edges[v] if label_list[s.dst_list[e]] != x)
            in_edges[x] = tuple(e for v in group for e in s.node_in_edges[v] if label_list[s.src_list[e]] != x)
            successors[x].update(label_list[s.dst_list[e]] for e in out_edges[x])
        group_bits = {x: _bitset(members[x]) for x in labels}
        reach_bits = _group_reach(labels, successors, group_bits)
        convex: list[tuple[int, int, tuple[int, ...]]] = []
        for x in labels:
            by_successor: dict[int, list[int]] = {}
            for e in out_edges[x]:
                by_successor.setdefault(label_list[s.dst_list[e]], []).append(e)
            convex.extend((x, y, tuple(edges)) for y, edges in by_successor.items()
                          if not any(reach_bits[z] >> y & 1 for z in by_successor if z != y))
        return PlanShape(label=label, reach=_rows(reach_bits, n, words), bits=_rows(group_bits, n, words),
                         members=tuple(members), out_edges=tuple(out_edges), in_edges=tuple(in_edges),
                         convex=tuple(convex))


@dataclass(frozen=True)
class PartitionSnapshot:
    """A complete partition state; ``Partition.restore`` copies it (reset costs O(N) copies)."""

    shape: PlanShape                          # groups, their edges and reach
    schedule: tuple[int, ...]                 # [N] by label: schedule index
    scheduled: tuple[bool, ...]               # [N] by label: schedule chosen by an action
    group_us: tuple[float, ...]               # [N] by label: latency of the group
    fuse_ok: np.ndarray                       # [E] bool: merging along the edge is legal
    total_us: float


class Merge(NamedTuple):
    """What a merge changed, for the observation (a NamedTuple: built every step, cheaply)."""

    label: int                  # label of the merged group (the smaller of the two)
    moved: tuple[int, ...]      # nodes whose label changed
    members: tuple[int, ...]    # all nodes of the merged group
    internal_edges: list[int]   # edges that now lie inside the group
    schedules_reset: bool       # a merged group had a chosen schedule; the new one has none


class Partition:
    """Groups of one graph, merged along edges, with exact legality masks and latency.

    ``fuse_ok`` ([E] bool) and ``schedule_ok`` ([N, S] bool, or None without schedule
    actions) are written in place; the environment passes views into its action mask.
    """

    def __init__(self, graph: ComputeGraph, structure: GraphStructure, backend: LatencyBackend,
                 fuse_ok: np.ndarray, schedule_ok: np.ndarray | None) -> None:
        self.graph = graph
        self.structure = structure
        self.backend = backend
        self.schedules: tuple[str, ...] = tuple(backend.schedules)
        self.fuse_ok = fuse_ok
        self.schedule_ok = schedule_ok
        self._group_latency = backend.group_latency
        self._merge_constraint_of = backend.merge_constraint

    # ------------------------------------------------------------------ start
    def snapshot_of(self, plan: Plan) -> PartitionSnapshot:
        """The state of ``plan`` (a legal plan of this graph), computed from scratch but for
        the singletons plan's structure-only part, which the GraphStructure keeps.

        A group's schedule counts as chosen when it is not the backend's first ("default").
        """
        shape = self._shape_of(plan.groups)
        fuse_ok = np.zeros(self.structure.num_edges, dtype=bool)
        fuse_ok[self._legal_edges(shape)] = True
        labels = [group[0] for group in plan.groups]
        schedule_index = {name: i for i, name in enumerate(self.schedules)}
        schedule = self._by_label(labels, [schedule_index[name] for name in plan.schedules], 0)
        report = self.backend.latency(self.graph, plan, check=False)
        group_us = self._by_label(labels, [float(us) for us in report.group_us], 0.0)
        return PartitionSnapshot(shape=shape, schedule=schedule, scheduled=tuple(x != 0 for x in schedule),
                                 group_us=group_us, fuse_ok=fuse_ok, total_us=sum(report.group_us))

    def _shape_of(self, groups: list[list[int]]) -> PlanShape:
        s = self.structure
        if len(groups) == s.num_nodes and all(len(group) == 1 for group in groups):
            return s.singletons
        return PlanShape.of(s, groups)

    def _legal_edges(self, shape: PlanShape) -> list[int]:
        """Edges of the convex merges the backend's merge constraint allows."""
        return [e for x, y, edges in shape.convex if self._merge_constraint(shape.members[x], shape.members[y]) is None
                for e in edges]

    def _by_label(self, labels: list[int], values: list, fill: int | float) -> tuple:
        """[N] ``values`` (one per group) at their groups' labels, ``fill`` elsewhere."""
        by_label = [fill] * self.structure.num_nodes
        for x, value in zip(labels, values):
            by_label[x] = value
        return tuple(by_label)

    def restore(self, snapshot: PartitionSnapshot) -> None:
        """Make ``snapshot`` the current state (arrays copied, tuples shared: they are immutable)."""
        shape = snapshot.shape
        self.label = shape.label.copy()
        self.label_list: list[int] = self.label.tolist()
        self.reach = shape.reach.copy()
        self.bits = shape.bits.copy()
        self.members = list(shape.members)
        self.out_edges = list(shape.out_edges)
        self.in_edges = list(shape.in_edges)
        self.schedule = list(snapshot.schedule)
        self.scheduled = list(snapshot.scheduled)
        self.group_us = list(snapshot.group_us)
        self.total_us = snapshot.total_us
        self.num_groups = sum(m is not None for m in shape.members)
        self.fuse_ok[:] = snapshot.fuse_ok
        if self.schedule_ok is not None:
            self.schedule_ok[:] = ~np.array(snapshot.scheduled, dtype=bool)[self.label][:, None]

    # ------------------------------------------------------------------ merge
    def merge(self, edge: int) -> Merge:
        """Fuse the two groups joined by ``edge`` (the caller checked ``fuse_ok[edge]``)."""
        s = self.structure
        label, label_list, reach, bits = self.label, self.label_list, self.reach, self.bits
        a, b = label_list[s.src_list[edge]], label_list[s.dst_list[edge]]   # a -> b
        keep, gone = (a, b) if a < b else (b, a)
        members = tuple(sorted(self.members[a] + self.members[b]))
        moved = self.members[gone]

        # reach: M reaches what A or B reached; every ancestor of M now reaches all of M. A
        # group reaches a whole group or none of it, so one bit (its label) tests each.
        m = bits[a] | bits[b]
        reach_m = reach[a] | reach[b]
        reach_m &= ~m
        word_a, word_b = a // WORD_BITS, b // WORD_BITS
        if word_a == word_b:
            ancestors = (reach[:, word_a] & (_BIT[a % WORD_BITS] | _BIT[b % WORD_BITS])) != 0
        else:
            ancestors = (reach[:, word_a] & _BIT[a % WORD_BITS]) != 0
            ancestors |= (reach[:, word_b] & _BIT[b % WORD_BITS]) != 0
        ancestors[a] = ancestors[b] = False          # [N] by label; rows of unused labels are never read
        np.bitwise_or(reach, reach_m | m, out=reach, where=ancestors[:, None])
        reach[keep] = reach_m
        bits[keep] = m

        # Elsewhere an edge X -> Y turns non-convex iff X reaches M and M reaches Y.
        below = np.unpackbits(reach_m.view(np.uint8), count=s.num_nodes, bitorder="little").view(bool)
        self.fuse_ok &= ~(ancestors[label[s.src]] & below[s.dst])

        # Relabel and rewire: edges A -> B become internal.
        src_list, dst_list = s.src_list, s.dst_list
        internal = [e for e in self.out_edges[a] if label_list[dst_list[e]] == b]
        out_m = tuple(e for e in self.out_edges[a] if label_list[dst_list[e]] != b) + self.out_edges[b]
        in_m = self.in_edges[a] + tuple(e for e in self.in_edges[b] if label_list[src_list[e]] != a)
        label[list(moved)] = keep
        for v in moved:
            label_list[v] = keep
        self.members[keep], self.members[gone] = members, None
        self.out_edges[keep], self.out_edges[gone] = out_m, None
        self.in_edges[keep], self.in_edges[gone] = in_m, None
        self.num_groups -= 1
        fuse_ok = self.fuse_ok
        for e in internal:
            fuse_ok[e] = False

        self._decide_edges_of(keep, out_m, in_m)

        us = self._group_latency(self.graph, members, self.schedules[0]).us
        self.total_us += us - self.group_us[a] - self.group_us[b]
        self.group_us[keep] = us
        schedules_reset = self.scheduled[a] or self.scheduled[b]
        self.schedule[keep], self.scheduled[keep], self.scheduled[gone] = 0, False, False
        if schedules_reset and self.schedule_ok is not None:
            self.schedule_ok[list(members)] = True
        return Merge(keep, moved, members, internal, schedules_reset)

    def _decide_edges_of(self, x: int, out_x: tuple[int, ...], in_x: tuple[int, ...]) -> None:
        """Re-decide every fuse verdict on an edge touching group ``x``.

        Merging X with a successor Y is convex iff no other successor of X reaches Y.
        """
        s = self.structure
        label_list, members, fuse_ok, reaches = self.label_list, self.members, self.fuse_ok, self._reaches
        if out_x:
            by_successor: dict[int, list[int]] = {}
            for e in out_x:
                by_successor.setdefault(label_list[s.dst_list[e]], []).append(e)
            for y, edges in by_successor.items():
                legal = (not any(reaches(z, y) for z in by_successor if z != y)
                         and self._merge_constraint(members[x], members[y]) is None)
                for e in edges:
                    fuse_ok[e] = legal
        if in_x:
            by_predecessor: dict[int, list[int]] = {}
            for e in in_x:
                by_predecessor.setdefault(label_list[s.src_list[e]], []).append(e)
            for w, edges in by_predecessor.items():
                others = {label_list[s.dst_list[e]] for e in self.out_edges[w]}
                legal = (not any(reaches(z, x) for z in others if z != x)
                         and self._merge_constraint(members[w], members[x]) is None)
                for e in edges:
                    fuse_ok[e] = legal

    def _reaches(self, z: int, y: int) -> bool:
        """Whether group ``z`` reaches group ``y`` (labels)."""
        return self.reach.item(z, y // WORD_BITS) >> (y % WORD_BITS) & 1 == 1

    def _merge_constraint(self, a: tuple[int, ...], b: tuple[int, ...]) -> str | None:
        """The backend's verdict on fusing two groups that are joined by an edge."""
        return self._merge_constraint_of(self.graph, a, b)

    # --------------------------------------------------------------- schedule
    def set_schedule(self, node: int, schedule: int) -> tuple[int, tuple[int, ...]]:
        """Give the group of ``node`` schedule ``schedule`` (the caller checked ``schedule_ok``)."""
        x = self.label_list[node]
        members = self.members[x]
        us = self._group_latency(self.graph, members, self.schedules[schedule]).us
        self.total_us += us - self.group_us[x]
        self.group_us[x] = us
        self.schedule[x], self.scheduled[x] = schedule, True
        if self.schedule_ok is not None:
            self.schedule_ok[list(members)] = False
        return x, members

    # ---------------------------------------------------------------- queries
    def labels(self) -> list[int]:
        """Labels of the groups in use, in increasing order."""
        return [x for x, m in enumerate(self.members) if m is not None]

    def plan(self) -> Plan:
        labels = self.labels()
        return Plan([list(self.members[x]) for x in labels], [self.schedules[self.schedule[x]] for x in labels],
                    self.graph.hash)

    def why_not_merge(self, edge: int) -> str:
        """Why fusing along ``edge`` is illegal now (the slow path, for error messages)."""
        s = self.structure
        u, v = s.src_list[edge], s.dst_list[edge]
        x, y = self.label_list[u], self.label_list[v]
        where = f"edge {edge} ({u}->{v}, {self.graph.nodes[u].op}->{self.graph.nodes[v].op})"
        if x == y:
            return f"{where} lies inside group {x} already"
        path = self._path_around(x, y)
        if path:
            route = " -> ".join(f"group {g}" for g in path)
            return (f"{where}: merging group {x} with group {y} is non-convex: the path {route} "
                    f"leaves the merged group through group {path[1]} and re-enters it")
        reason = self._merge_constraint(self.members[x], self.members[y])
        if reason:
            return f"{where}: backend {self.backend.name} cannot fuse group {x} with group {y}: {reason}"
        return f"{where} is legal"

    def _path_around(self, x: int, y: int) -> list[int]:
        """A group path x -> z -> ... -> y through some z != y ([] when there is none)."""
        s = self.structure
        y_bit = (y // WORD_BITS, y % WORD_BITS)

        def successors(g: int) -> list[int]:
            return sorted({self.label_list[s.dst_list[e]] for e in self.out_edges[g]})

        def reaches_y(g: int) -> bool:
            return bool(int(self.reach[g, y_bit[0]]) >> y_bit[1] & 1)

        start = [z for z in successors(x) if z != y and reaches_y(z)]
        if not start:
            return []
        path = [x, start[0]]
        while path[-1] != y:
            nxt = successors(path[-1])
            path.append(y if y in nxt else next(z for z in nxt if reaches_y(z)))
        return path


def _bitset(nodes: Sequence[int]) -> int:
    value = 0
    for v in nodes:
        value |= 1 << v
    return value


def _group_reach(labels: list[int], successors: dict[int, set[int]], group_bits: dict[int, int]) -> dict[int, int]:
    """Nodes reachable from each group through the group DAG (Python-int bitsets).

    Groups are visited in reverse topological order of the group DAG (Kahn's algorithm), so
    every successor is final before its predecessors OR it in.
    """
    indegree = {x: 0 for x in labels}
    for x in labels:
        for y in successors[x]:
            indegree[y] += 1
    order = [x for x in labels if indegree[x] == 0]
    for x in order:
        for y in successors[x]:
            indegree[y] -= 1
            if indegree[y] == 0:
                order.append(y)
    if len(order) != len(labels):
        raise ValueError("the plan's group graph has a cycle (a non-convex group)")
    reach: dict[int, int] = {}
    for x in reversed(order):
        value = 0
        for y in successors[x]:
            value |= reach[y] | group_bits[y]
        reach[x] = value
    return reach


def _rows(bitsets: dict[int, int], num_rows: int, words: int) -> np.ndarray:
    """[num_rows, words] uint64 matrix with the given Python-int bitsets at their rows."""
    size = words * 8
    empty = bytes(size)
    data = b"".join(bitsets[row].to_bytes(size, "little") if row in bitsets else empty for row in range(num_rows))
    return np.frombuffer(data, dtype="<u8").reshape(num_rows, words).astype(np.uint64)
