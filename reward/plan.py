"""Plan: how a graph is cut into fused kernels and how each kernel is scheduled.

A plan is legal when it partitions the graph's nodes, every group is convex (no path leaves
a group and comes back, i.e. the graph of groups is acyclic) and the backend can compile
every group with its schedule.
"""

from __future__ import annotations

import gc
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fusiongym.graphs import ComputeGraph, GraphInstance

if TYPE_CHECKING:
    from .backend import LatencyBackend

DEFAULT_SCHEDULE = "default"


class IllegalPlanError(ValueError):
    """A plan that no backend may run; the message says which rule it breaks."""


class Plan:
    """Groups of node ids (each one kernel) and one schedule name per group.

    Built from lists, ``Plan(groups, schedules, graph_hash)`` (``normalized=True`` says the
    groups are already lists of ascending Python ints and skips re-sorting them), or from a
    group label per node, ``Plan.from_labels``: the form a compiler deciding thousands of
    groups inline produces. A plan built from labels makes its Python lists on first use of
    ``groups`` or ``schedules``; ``group_of`` and ``num_groups`` never need them.
    ``graph_hash`` may be given as the graph itself, whose hash is read on first use (the
    plan keeps the graph alive until then): hashing a graph built for new shapes costs more
    than deciding its plan, and a run-time caller may never ask.
    """

    def __init__(self, groups: Sequence[Sequence[int]], schedules: Sequence[str],
                 graph_hash: str | ComputeGraph | GraphInstance, meta: dict | None = None,
                 normalized: bool = False) -> None:
        self._groups: list[list[int]] | None = (
            list(groups) if normalized else [sorted(map(int, group)) for group in groups])   # type: ignore[arg-type]
        self._schedules: list[str] | None = list(schedules)
        self._labels: np.ndarray | None = None          # [N] group per node, when built from labels
        self._schedule_index: np.ndarray | None = None  # [G] position in _menu, when built from labels
        self._menu: tuple[str, ...] = ()
        self._graph_hash = graph_hash
        self.meta = meta if meta is not None else {}
        if len(self._schedules) != len(self._groups):
            raise IllegalPlanError(f"{len(self._groups)} groups but {len(self._schedules)} schedules")

    @property
    def graph_hash(self) -> str:
        """The hash of the graph this plan is for (read on first use when given the graph)."""
        if not isinstance(self._graph_hash, str):
            self._graph_hash = self._graph_hash.hash
        return self._graph_hash

    def __getstate__(self) -> dict:
        """Pickled with the hash, not the graph."""
        return {**self.__dict__, "_graph_hash": self.graph_hash}

    @classmethod
    def from_labels(cls, labels: np.ndarray, schedule_index: np.ndarray, menu: Sequence[str],
                    graph_hash: str | ComputeGraph | GraphInstance, meta: dict | None = None) -> "Plan":
        """A plan from ``labels`` [N], each node's group, groups numbered 0, 1, ... in the
        order of their first node, and ``schedule_index`` [G], each group's schedule as a
        position in ``menu``."""
        labels = np.asarray(labels)
        schedule_index = np.asarray(schedule_index)
        running_max = np.maximum.accumulate(labels) if labels.size else labels
        if labels.size and (labels[0] != 0 or (np.diff(running_max) > 1).any() or (labels < 0).any()):
            raise IllegalPlanError("labels must number the groups 0, 1, ... in the order of their first node")
        num_groups = int(running_max[-1]) + 1 if labels.size else 0
        if schedule_index.shape != (num_groups,):
            raise IllegalPlanError(f"{num_groups} groups but {schedule_index.shape[0]} schedules")
        if num_groups and not 0 <= int(schedule_index.min()) <= int(schedule_index.max()) < len(menu):
            raise IllegalPlanError(f"schedule indices must lie in 0..{len(menu) - 1} (the menu {list(menu)})")
        plan = cls([], [], graph_hash, meta, normalized=True)
        plan._groups = plan._schedules = None
        plan._labels, plan._schedule_index, plan._menu = labels, schedule_index, tuple(menu)
        return plan

    @property
    def groups(self) -> list[list[int]]:
        """The groups' node ids, each list ascending, groups in the order of their first node."""
        if self._groups is None:
            counts = np.bincount(self._labels, minlength=self.num_groups)                # [G]
            members = np.argsort(self._labels, kind="stable").tolist()                   # nodes by group
            bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
            collecting = gc.isenabled()
            gc.disable()   # thousands of new lists would trigger collections that traverse the whole process
            try:
                self._groups = [members[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]
            finally:
                if collecting:
                    gc.enable()
        return self._groups

    @property
    def schedules(self) -> list[str]:
        """One schedule name per group."""
        if self._schedules is None:
            self._schedules = np.array(self._menu, dtype=object)[self._schedule_index].tolist()
        return self._schedules

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return (self.graph_hash, self.groups, self.schedules, self.meta) == (
            other.graph_hash, other.groups, other.schedules, other.meta)

    def __repr__(self) -> str:
        return f"Plan({self.num_groups} groups, graph {self.graph_hash[:12]}, meta={self.meta})"

    @staticmethod
    def singletons(graph: ComputeGraph, schedule: str = DEFAULT_SCHEDULE) -> "Plan":
        """Every operator its own kernel: the unfused baseline."""
        return Plan([[n] for n in range(graph.num_nodes)], [schedule] * graph.num_nodes, graph.hash)

    @staticmethod
    def from_assignment(graph: ComputeGraph, group_of: Sequence[int],
                        schedules: dict[int, str] | None = None) -> "Plan":
        """Build a plan from a group label per node (labels need not be contiguous)."""
        if len(group_of) != graph.num_nodes:
            raise IllegalPlanError(f"assignment has {len(group_of)} labels for {graph.num_nodes} nodes")
        members: dict[int, list[int]] = {}
        for node, label in enumerate(group_of):
            members.setdefault(int(label), []).append(node)
        labels = sorted(members, key=lambda label: members[label][0])
        schedules = schedules or {}
        return Plan([members[label] for label in labels],
                    [schedules.get(label, DEFAULT_SCHEDULE) for label in labels], graph.hash)

    @property
    def num_groups(self) -> int:
        if self._groups is None:
            return self._schedule_index.shape[0]
        return len(self._groups)

    def group_of(self, num_nodes: int) -> np.ndarray:
        """[num_nodes] int32: the index of each node's group (-1 for nodes in no group)."""
        if self._labels is not None and self._labels.shape[0] == num_nodes:
            return self._labels.astype(np.int32)
        labels = np.full(num_nodes, -1, dtype=np.int32)
        for index, group in enumerate(self.groups):
            labels[group] = index
        return labels

    def canonical(self) -> tuple:
        """Order-free identity: equal plans give equal tuples."""
        return tuple(sorted((tuple(g), s) for g, s in zip(self.groups, self.schedules)))

    def to_json(self) -> str:
        return json.dumps({"format": "fusiongym.Plan/1", "graph_hash": self.graph_hash,
                           "groups": self.groups, "schedules": self.schedules, "meta": self.meta},
                          sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Plan":
        data = json.loads(text)
        if data.get("format") != "fusiongym.Plan/1":
            raise IllegalPlanError(f"not a fusiongym plan (format={data.get('format')!r})")
        return Plan(data["groups"], data["schedules"], data["graph_hash"], data.get("meta", {}))


@dataclass(frozen=True)
class Legality:
    """The verdict of ``is_legal``: ``reason`` says why not; ``cycle`` lists the groups."""

    ok: bool
    reason: str = ""
    cycle: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


def is_legal(graph: ComputeGraph, plan: Plan, backend: "LatencyBackend | None" = None) -> Legality:
    """Check partition, convexity and (when given) the backend's own constraints."""
    if plan.graph_hash != graph.hash:
        return Legality(False, f"plan is for graph {plan.graph_hash}, not {graph.hash} ({graph.name})")
    verdict = _check_partition(graph, plan)
    if verdict.ok:
        verdict = _check_convex(graph, plan)
    if verdict.ok and backend is not None:
        verdict = _check_backend(graph, plan, backend)
    return verdict


def require_legal(graph: ComputeGraph, plan: Plan, backend: "LatencyBackend | None" = None) -> None:
    """Raise IllegalPlanError with the reason when the plan is not legal."""
    verdict = is_legal(graph, plan, backend)
    if not verdict:
        raise IllegalPlanError(verdict.reason)


def _check_partition(graph: ComputeGraph, plan: Plan) -> Legality:
    """Every node id in range and in exactly one group, named exactly once in it."""
    groups = plan.groups
    sizes = np.fromiter(map(len, groups), dtype=np.intp, count=len(groups))             # [G]
    if (sizes == 0).any():
        return Legality(False, f"group {int(np.argmax(sizes == 0))} is empty")
    nodes = np.fromiter(itertools.chain.from_iterable(groups), dtype=np.int64, count=int(sizes.sum()))
    owner = np.repeat(np.arange(len(groups)), sizes)                                    # group of each entry
    outside = (nodes < 0) | (nodes >= graph.num_nodes)
    if outside.any():
        return Legality(False, f"group {int(owner[np.argmax(outside)])} names node ids outside "
                               f"0..{graph.num_nodes - 1}")
    repeated = _repeated_within_a_group(nodes, owner)
    if repeated:
        return Legality(False, repeated)
    seen = np.bincount(nodes, minlength=graph.num_nodes)
    if (seen > 1).any():
        return Legality(False, f"nodes {np.flatnonzero(seen > 1)[:8].tolist()} are in more than one group")
    if (seen == 0).any():
        return Legality(False, f"nodes {np.flatnonzero(seen == 0)[:8].tolist()} are in no group")
    return Legality(True)


def _repeated_within_a_group(nodes: np.ndarray, owner: np.ndarray) -> str:
    """Why a group lists one node twice (it would be counted once, hiding a malformed plan), or ""."""
    order = np.lexsort((nodes, owner))
    twice = (np.diff(nodes[order]) == 0) & (np.diff(owner[order]) == 0)
    if not twice.any():
        return ""
    first = order[np.argmax(twice)]
    return f"node {int(nodes[first])} is listed more than once in group {int(owner[first])}"


def group_successors(graph: ComputeGraph, plan: Plan) -> list[set[int]]:
    """Per group, the groups that read one of its outputs: the contracted graph of groups."""
    group_of = plan.group_of(graph.num_nodes)
    successors: list[set[int]] = [set() for _ in plan.groups]
    for edge in graph.edges:
        a, b = int(group_of[edge.src]), int(group_of[edge.dst])
        if a != b:
            successors[a].add(b)
    return successors


def _check_convex(graph: ComputeGraph, plan: Plan) -> Legality:
    """The contracted graph of groups must be a DAG; report one cycle when it is not."""
    successors = group_successors(graph, plan)
    cycle = _find_cycle(successors)
    if cycle:
        path = " -> ".join(f"group {g} {plan.groups[g][:6]}" for g in cycle + [cycle[0]])
        return Legality(False, f"non-convex plan: a path leaves a group and re-enters it ({path})",
                        tuple(cycle))
    return Legality(True)


def _find_cycle(successors: list[set[int]]) -> list[int]:
    """One cycle of a directed graph as a list of vertices ([] if acyclic), iterative DFS."""
    state = [0] * len(successors)  # 0 new, 1 on stack, 2 done
    parent = [-1] * len(successors)
    for root in range(len(successors)):
        if state[root]:
            continue
        stack = [(root, iter(successors[root]))]
        state[root] = 1
        while stack:
            vertex, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[vertex] = 2
                stack.pop()
            elif state[child] == 1:
                cycle = [vertex]
                while cycle[-1] != child:
                    cycle.append(parent[cycle[-1]])
                return cycle[::-1]
            elif state[child] == 0:
                state[child], parent[child] = 1, vertex
                stack.append((child, iter(successors[child])))
    return []


def _check_backend(graph: ComputeGraph, plan: Plan, backend: "LatencyBackend") -> Legality:
    for index, (group, schedule) in enumerate(zip(plan.groups, plan.schedules)):
        if schedule not in backend.schedules:
            return Legality(False, f"group {index}: schedule {schedule!r} is not offered by backend "
                                   f"{backend.name} (choices: {list(backend.schedules)})")
        reason = backend.group_constraint(graph, group)
        if reason:
            return Legality(False, f"group {index} {group[:6]}: {reason}")
    return Legality(True)
