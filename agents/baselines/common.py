"""Partition state shared by the baselines: groups merged along edges, always convex.

Every baseline builds its plan by merging groups joined by an edge (and, for annealing,
cutting a group in two or shifting a boundary node to a neighbour), so every intermediate partition is legal and the
returned plan needs no repair. Groups are labelled by their smallest node id, which is
also the smallest id any path into the group can start from: since node ids are a
topological order, a path that leaves group ``a`` and re-enters ``b`` only visits groups
whose label is below ``b``'s largest node id, which prunes the convexity search.

``Evaluator`` is the one door to the latency backend: it counts the (group, schedule)
latencies a search asks for, the unit a real backend pays a compile and a measurement for,
so the budget of a search means the same on every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from fusiongym.graphs import ComputeGraph
from fusiongym.reward import DEFAULT_SCHEDULE, LatencyBackend, Plan


class BaselineError(ValueError):
    """A baseline cannot decide for this graph (too large, wrong source); the message says why."""


@dataclass(frozen=True)
class Adjacency:
    """Producer and consumer node ids of every node (duplicates from multi-edges removed)."""

    succ: tuple[tuple[int, ...], ...]   # [N]
    pred: tuple[tuple[int, ...], ...]   # [N]
    pairs: tuple[tuple[int, int], ...]  # distinct (producer, consumer) node pairs

    @staticmethod
    def of(graph: ComputeGraph) -> "Adjacency":
        pairs = sorted({(edge.src, edge.dst) for edge in graph.edges})
        succ: list[list[int]] = [[] for _ in graph.nodes]
        pred: list[list[int]] = [[] for _ in graph.nodes]
        for u, v in pairs:
            succ[u].append(v)
            pred[v].append(u)
        return Adjacency(tuple(map(tuple, succ)), tuple(map(tuple, pred)), tuple(pairs))


@dataclass
class Evaluator:
    """Latency queries of one search on one graph, counted against an optional budget.

    One evaluation is the latency of one group under one schedule: the cost of scoring a
    candidate plan that differs from the current plan in that one group.
    """

    graph: ComputeGraph
    backend: LatencyBackend
    schedules: tuple[str, ...]
    budget: int | None = None
    count: int = 0

    @property
    def exhausted(self) -> bool:
        return self.budget is not None and self.count >= self.budget

    def spend(self, evaluations: int) -> None:
        self.count += evaluations

    def latency(self, nodes: tuple[int, ...], schedule: str) -> float:
        self.count += 1
        return self.backend.cached_group_latency(self.graph, nodes, schedule).us

    def best_schedule(self, nodes: tuple[int, ...]) -> tuple[str, float]:
        """The fastest schedule on the menu for ``nodes`` (first on the menu among ties)."""
        best_schedule, best_us = self.schedules[0], math.inf
        for schedule in self.schedules:
            us = self.latency(nodes, schedule)
            if us < best_us:
                best_schedule, best_us = schedule, us
        return best_schedule, best_us


@dataclass
class PartitionState:
    """A convex partition: members, group DAG, schedule and latency of every group.

    ``us`` is 0 for partitions built without a backend (the rule-based baselines).
    ``key`` identifies the partition (a sum of group hashes) for de-duplicating beams.
    """

    graph: ComputeGraph
    adjacency: Adjacency
    group_of: list[int]
    members: dict[int, tuple[int, ...]]
    succ: dict[int, set[int]]
    pred: dict[int, set[int]]
    schedule: dict[int, str]
    us: dict[int, float]
    total_us: float = 0.0
    key: int = 0
    _constraint_cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ build
    @staticmethod
    def singletons(graph: ComputeGraph, adjacency: Adjacency | None = None,
                   evaluator: Evaluator | None = None) -> "PartitionState":
        """Every node its own group, at its best schedule when an evaluator is given."""
        adjacency = adjacency or Adjacency.of(graph)
        labels = list(range(graph.num_nodes))
        return PartitionState._from_groups(graph, adjacency, labels, [(n,) for n in labels], evaluator)

    @staticmethod
    def from_plan(graph: ComputeGraph, plan: Plan, adjacency: Adjacency | None = None,
                  evaluator: Evaluator | None = None) -> "PartitionState":
        """The state of a legal plan; with an evaluator every group gets its best schedule."""
        adjacency = adjacency or Adjacency.of(graph)
        group_of = [0] * graph.num_nodes
        for group in plan.groups:
            for node in group:
                group_of[node] = group[0]
        state = PartitionState._from_groups(graph, adjacency, group_of,
                                            [tuple(g) for g in plan.groups], evaluator)
        if evaluator is None:
            state.schedule = {group[0]: s for group, s in zip(plan.groups, plan.schedules)}
        return state

    @staticmethod
    def _from_groups(graph: ComputeGraph, adjacency: Adjacency, group_of: list[int],
                     groups: list[tuple[int, ...]], evaluator: Evaluator | None) -> "PartitionState":
        members = {group[0]: group for group in groups}
        succ: dict[int, set[int]] = {label: set() for label in members}
        pred: dict[int, set[int]] = {label: set() for label in members}
        for u, v in adjacency.pairs:
            a, b = group_of[u], group_of[v]
            if a != b:
                succ[a].add(b)
                pred[b].add(a)
        schedule, us = {}, {}
        for label, nodes in members.items():
            schedule[label], us[label] = (evaluator.best_schedule(nodes) if evaluator is not None
                                          else (DEFAULT_SCHEDULE, 0.0))
        return PartitionState(graph, adjacency, group_of, members, succ, pred, schedule, us,
                              total_us=sum(us.values()), key=sum(hash(g) for g in groups))

    def copy(self) -> "PartitionState":
        return PartitionState(
            self.graph, self.adjacency, list(self.group_of), dict(self.members),
            {k: set(v) for k, v in self.succ.items()}, {k: set(v) for k, v in self.pred.items()},
            dict(self.schedule), dict(self.us), self.total_us, self.key, self._constraint_cache)

    # ------------------------------------------------------------------ query
    @property
    def num_groups(self) -> int:
        return len(self.members)

    def group_pairs(self) -> list[tuple[int, int]]:
        """Every (producer group, consumer group) pair joined by at least one edge."""
        return [(a, b) for a, consumers in self.succ.items() for b in consumers]

    def merge_is_convex(self, a: int, b: int) -> bool:
        """Merging producer group ``a`` into consumer ``b`` is convex iff no other path a ⇝ b exists."""
        last = self.members[b][-1]
        stack = [z for z in self.succ[a] if z != b and z < last]
        seen = set(stack)
        while stack:
            z = stack.pop()
            for y in self.succ[z]:
                if y == b:
                    return False
                if y not in seen and y < last:
                    seen.add(y)
                    stack.append(y)
        return True

    def union(self, a: int, b: int) -> tuple[int, ...]:
        return tuple(sorted(self.members[a] + self.members[b]))

    def allowed_by_backend(self, backend: LatencyBackend | None, nodes: tuple[int, ...]) -> bool:
        """The backend's own constraint on one group (size, connectivity), cached per group."""
        if backend is None:
            return True
        verdict = self._constraint_cache.get(nodes)
        if verdict is None:
            verdict = backend.group_constraint(self.graph, nodes) is None
            self._constraint_cache[nodes] = verdict
        return verdict

    def can_merge(self, a: int, b: int, backend: LatencyBackend | None) -> bool:
        """Producer ``a`` and consumer ``b`` may fuse: convex result the backend accepts."""
        return self.allowed_by_backend(backend, self.union(a, b)) and self.merge_is_convex(a, b)

    def boundary_nodes(self, label: int) -> list[int]:
        """Nodes of a group with no producer or no consumer inside it: splitting one off stays convex.

        A source node of a convex group has no path from the rest of the group to it that
        stays inside, and no path through other groups either (that path would have left
        and re-entered the group), so the split creates no cycle; the same for a sink.
        """
        group = self.members[label]
        if len(group) < 2:
            return []
        inside = set(group)
        return [n for n in group
                if not any(p in inside for p in self.adjacency.pred[n])
                or not any(s in inside for s in self.adjacency.succ[n])]

    # ------------------------------------------------------------------ change
    def merge(self, a: int, b: int, schedule: str, us: float) -> int:
        """Fuse groups ``a`` and ``b`` into one with ``schedule`` and latency ``us``; returns its label."""
        keep, gone = (a, b) if a < b else (b, a)
        merged = self.union(a, b)
        for node in self.members[gone]:
            self.group_of[node] = keep
        succ = (self.succ[a] | self.succ[b]) - {a, b}
        pred = (self.pred[a] | self.pred[b]) - {a, b}
        for x in succ:
            self.pred[x].discard(gone)
            self.pred[x].add(keep)
        for x in pred:
            self.succ[x].discard(gone)
            self.succ[x].add(keep)
        self.key += hash(merged) - hash(self.members[a]) - hash(self.members[b])
        self.total_us += us - self.us[a] - self.us[b]
        for table in (self.members, self.succ, self.pred, self.schedule, self.us):
            del table[gone]
        self.members[keep], self.succ[keep], self.pred[keep] = merged, succ, pred
        self.schedule[keep], self.us[keep] = schedule, us
        return keep

    def split(self, label: int, part: tuple[int, ...], part_value: tuple[str, float],
              rest_value: tuple[str, float]) -> None:
        """Divide group ``label`` into ``part`` and the rest: (schedule, µs) of both pieces.

        The caller makes sure both pieces keep the plan convex (a boundary node, or a
        prefix of the group in node-id order: no path can run from a later id to an earlier one).
        """
        group = self.members[label]
        inside = set(part)
        rest = tuple(n for n in group if n not in inside)
        neighbours = self.succ.pop(label) | self.pred.pop(label)
        for x in neighbours:
            self.succ[x].discard(label)
            self.pred[x].discard(label)
        self.key += hash(rest) + hash(part) - hash(group)
        self.total_us += part_value[1] + rest_value[1] - self.us.pop(label)
        del self.members[label], self.schedule[label]
        for nodes, (schedule, us) in ((part, part_value), (rest, rest_value)):
            new = nodes[0]
            for n in nodes:
                self.group_of[n] = new
            self.members[new], self.schedule[new], self.us[new] = nodes, schedule, us
            self.succ[new], self.pred[new] = set(), set()
        for new in (part[0], rest[0]):
            for n in self.members[new]:
                for s in self.adjacency.succ[n]:
                    target = self.group_of[s]
                    if target != new:
                        self.succ[new].add(target)
                        self.pred[target].add(new)
                for p in self.adjacency.pred[n]:
                    source = self.group_of[p]
                    if source != new:
                        self.pred[new].add(source)
                        self.succ[source].add(new)

    def checkpoint(self, labels: Sequence[int]) -> "Checkpoint":
        """What changes to groups ``labels`` (splits, merges among them) can touch, for ``restore``."""
        touched = set(labels)
        for x in labels:
            touched |= self.succ[x] | self.pred[x]
        return Checkpoint(
            entries={x: (self.members[x], set(self.succ[x]), set(self.pred[x]), self.schedule[x], self.us[x])
                     for x in touched},
            group_of={n: self.group_of[n] for x in labels for n in self.members[x]},
            total_us=self.total_us, key=self.key)

    def restore(self, checkpoint: "Checkpoint") -> None:
        """Undo every change made to the checkpointed groups since ``checkpoint``."""
        for node in checkpoint.group_of:
            label = self.group_of[node]
            if label not in checkpoint.entries and label in self.members:
                for table in (self.members, self.succ, self.pred, self.schedule, self.us):
                    del table[label]
        for x, (members, succ, pred, schedule, us) in checkpoint.entries.items():
            self.members[x], self.succ[x], self.pred[x] = members, set(succ), set(pred)
            self.schedule[x], self.us[x] = schedule, us
        for node, label in checkpoint.group_of.items():
            self.group_of[node] = label
        self.total_us, self.key = checkpoint.total_us, checkpoint.key

    def set_schedule(self, label: int, schedule: str, us: float) -> None:
        self.total_us += us - self.us[label]
        self.schedule[label], self.us[label] = schedule, us

    def plan(self, meta: dict | None = None) -> Plan:
        labels = sorted(self.members)
        return Plan([list(self.members[x]) for x in labels], [self.schedule[x] for x in labels],
                    self.graph.hash, meta=dict(meta or {}))


@dataclass(frozen=True)
class Checkpoint:
    """Saved entries of some groups and their neighbours (see ``PartitionState.checkpoint``)."""

    entries: dict[int, tuple[tuple[int, ...], set[int], set[int], str, float]]
    group_of: dict[int, int]
    total_us: float
    key: int
