"""Search baselines: they ask a latency backend and keep what is faster.

All of them move between legal plans only (merges of adjacent groups that stay convex,
cuts of a group at a node id, shifts of a group's boundary node, schedule changes) and
pick every group's schedule from the backend's menu. Given a partition, the latency is a sum over groups, so the best
schedule of a group never depends on the others: merges are scored with the best schedule
of the merged group, which is the "schedule change" part of each move.

The budget of ``annealing`` and ``beam`` counts evaluations (one group under one schedule,
see ``common.Evaluator``); both are seeded and deterministic for a deterministic backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fusiongym.graphs import ComputeGraph
from fusiongym.reward import LatencyBackend, Plan

from .common import Adjacency, BaselineError, Evaluator, PartitionState

EXHAUSTIVE_MAX_NODES = 12
DEFAULT_BEAM_WIDTH = 4
# Annealing temperature, relative to the mean group latency of its start: hot enough to
# accept undoing a typical merge early on, cold enough at the end to only descend.
ANNEAL_START_TEMPERATURE = 0.3
ANNEAL_END_TEMPERATURE = 1e-6
# Move mix of annealing: merge two groups, cut a group in two at a node id, shift a boundary
# node into a neighbouring group, change a schedule.
ANNEAL_MOVES = ("merge", "cut", "shift", "schedule")
ANNEAL_MOVE_WEIGHTS = (0.35, 0.15, 0.3, 0.2)


def default_budget(graph: ComputeGraph) -> int:
    """Evaluations a budgeted search gets when none is given: 200 per node, at least 5,000.

    Enough for beam search of width 4 to run its merge sequences to the end on zoo graphs.
    """
    return max(5_000, 200 * graph.num_nodes)


# --------------------------------------------------------------- merge frontier
@dataclass
class MergeFrontier:
    """A partition with the gain (µs saved, at the best schedule) of every merge of adjacent groups.

    Gains depend only on the two groups, so after a merge only pairs touching the merged
    group are re-scored; convexity depends on the whole partition and is checked when a
    merge is picked. Pairs the backend refuses (size, connectivity) are never stored. New
    pairs wait in ``pending`` until merges are ranked, and are scored only while the budget
    lasts, so a search never overshoots its budget by more than one group's schedules.
    """

    state: PartitionState
    evaluator: Evaluator
    gains: dict[tuple[int, int], tuple[float, str, float]] = field(default_factory=dict)
    pending: set[tuple[int, int]] = field(default_factory=set)

    @staticmethod
    def start(state: PartitionState, evaluator: Evaluator) -> "MergeFrontier":
        return MergeFrontier(state, evaluator, pending=set(state.group_pairs()))

    def _score_pending(self) -> None:
        state, evaluator = self.state, self.evaluator
        for a, b in sorted(self.pending):
            if evaluator.exhausted:
                break
            merged = state.union(a, b)
            if state.allowed_by_backend(evaluator.backend, merged):
                schedule, us = evaluator.best_schedule(merged)
                self.gains[(a, b)] = (state.us[a] + state.us[b] - us, schedule, us)
        self.pending.clear()

    def best_merges(self, count: int) -> list[tuple[float, int, int]]:
        """Up to ``count`` convex merges with a positive gain, best first: (gain, a, b)."""
        self._score_pending()
        ranked = sorted(((gain, a, b) for (a, b), (gain, _, _) in self.gains.items() if gain > 0), reverse=True)
        chosen = []
        for gain, a, b in ranked:
            if self.state.merge_is_convex(a, b):
                chosen.append((gain, a, b))
                if len(chosen) == count:
                    break
        return chosen

    def merged_key(self, a: int, b: int) -> int:
        """The partition key after merging ``a`` and ``b`` (for de-duplication, no copy)."""
        state = self.state
        return state.key + hash(state.union(a, b)) - hash(state.members[a]) - hash(state.members[b])

    def apply(self, a: int, b: int) -> None:
        """Merge ``a`` and ``b`` in place and re-score the pairs of the merged group."""
        state = self.state
        _, schedule, us = self.gains[(a, b)]
        for x in (a, b):
            for y in state.succ[x]:
                self.gains.pop((x, y), None)
            for w in state.pred[x]:
                self.gains.pop((w, x), None)
        keep = state.merge(a, b, schedule, us)
        self.pending.update((keep, y) for y in state.succ[keep])
        self.pending.update((w, keep) for w in state.pred[keep])

    def copy(self) -> "MergeFrontier":
        return MergeFrontier(self.state.copy(), self.evaluator, dict(self.gains), set(self.pending))


def _evaluator(graph: ComputeGraph, backend: LatencyBackend, budget: int | None) -> Evaluator:
    return Evaluator(graph, backend, tuple(backend.schedules), budget)


def _meta(evaluator: Evaluator, state: PartitionState, **extra) -> dict:
    return {"evaluations": evaluator.count, "predicted_us": state.total_us,
            "search_backend": evaluator.backend.name, **extra}


# ---------------------------------------------------------------------- greedy
def greedy_cost(graph: ComputeGraph, backend: LatencyBackend) -> Plan:
    """Hill climbing: apply the merge with the largest latency gain until none gains."""
    evaluator = _evaluator(graph, backend, None)
    frontier = _greedy_descent(graph, evaluator)
    return frontier.state.plan(_meta(evaluator, frontier.state))


def greedy_trajectory(graph: ComputeGraph, backend: LatencyBackend, points: int) -> list[Plan]:
    """``points`` plans spaced evenly along greedy_cost's descent, strictly between its start
    (every node alone) and its end (greedy_cost's plan): what the search visits on the way,
    plans of every degree of fusion, for a cost model's training data. Fewer when the
    descent has fewer intermediate steps."""
    if points < 0:
        raise ValueError(f"trajectory points must be 0 or more, got {points}")
    evaluator = _evaluator(graph, backend, None)
    visited: list[Plan] = []
    _greedy_descent(graph, evaluator, on_step=lambda state: visited.append(state.plan(_meta(evaluator, state))))
    merges = len(visited)                 # visited[k - 1]: the plan after k merges; the last is greedy_cost's
    steps = np.unique(np.round(np.arange(1, points + 1) * merges / (points + 1)).astype(int))
    return [visited[k - 1] for k in steps if 1 <= k < merges]


def _greedy_descent(graph: ComputeGraph, evaluator: Evaluator, state: PartitionState | None = None,
                    on_step: Callable[[PartitionState], None] | None = None) -> MergeFrontier:
    """Apply the best-gain merge until none gains; ``on_step`` sees the state after each merge."""
    frontier = MergeFrontier.start(state or PartitionState.singletons(graph, evaluator=evaluator), evaluator)
    while not evaluator.exhausted:
        best = frontier.best_merges(1)
        if not best:
            break
        frontier.apply(best[0][1], best[0][2])
        if on_step is not None:
            on_step(frontier.state)
    return frontier


# ------------------------------------------------------------------------ beam
def beam(graph: ComputeGraph, backend: LatencyBackend, seed: int = 0, budget: int | None = None,
         width: int = DEFAULT_BEAM_WIDTH) -> Plan:
    """Beam search over merge sequences: keep the ``width`` fastest distinct partitions per depth.

    Each beam state proposes its ``width`` best convex merges; the children are ranked by
    total latency, duplicates (the same partition reached in another order) dropped. The
    first slot always follows greedy_cost's path (the best merge of the previous first
    state), so given the budget to get there beam is never slower than greedy_cost. Ties
    are broken by a seeded random rank, so the seed matters only among equal latencies.
    """
    evaluator = _evaluator(graph, backend, budget if budget is not None else default_budget(graph))
    rng = np.random.default_rng(seed)
    beam_states = [MergeFrontier.start(PartitionState.singletons(graph, evaluator=evaluator), evaluator)]
    best = beam_states[0].state.copy()
    greedy_alive = True
    while beam_states and not evaluator.exhausted:
        proposals = [frontier.best_merges(width) for frontier in beam_states]
        chosen, seen = [], set()
        greedy_alive = greedy_alive and bool(proposals[0])
        if greedy_alive:
            _, a, b = proposals[0][0]
            chosen.append((0, a, b))
            seen.add(beam_states[0].merged_key(a, b))
        children = sorted((frontier.state.total_us - gain, float(rng.random()), index, a, b)
                          for index, (frontier, merges) in enumerate(zip(beam_states, proposals))
                          for gain, a, b in merges)
        for _, _, index, a, b in children:
            if len(chosen) == width:
                break
            key = beam_states[index].merged_key(a, b)
            if key not in seen:
                seen.add(key)
                chosen.append((index, a, b))
        next_states = []
        for position, (index, a, b) in enumerate(chosen):
            last_child = all(i != index for i, _, _ in chosen[position + 1:])  # may take the parent itself
            child = beam_states[index] if last_child else beam_states[index].copy()
            child.apply(a, b)
            next_states.append(child)
        beam_states = next_states
        for frontier in beam_states:
            if frontier.state.total_us < best.total_us:
                best = frontier.state.copy()
    return best.plan(_meta(evaluator, best, width=width))


# ------------------------------------------------------------------- annealing
def annealing(graph: ComputeGraph, backend: LatencyBackend, seed: int = 0, budget: int | None = None) -> Plan:
    """Simulated annealing from greedy_cost's local optimum: merges, cuts, shifts, schedules.

    Starting from the greedy plan (its evaluations count against the budget) the walk can
    undo greedy merges by cutting groups and shifting boundary nodes, and accepts a slower
    plan with probability exp(-Δ/T), T falling geometrically over the budget. The best plan
    seen wins.
    """
    evaluator = _evaluator(graph, backend, budget if budget is not None else default_budget(graph))
    adjacency = Adjacency.of(graph)
    state = _greedy_descent(graph, evaluator, PartitionState.singletons(graph, adjacency, evaluator)).state
    best = state.copy()
    walk = _AnnealingWalk(state, evaluator, np.random.default_rng(seed))
    while not evaluator.exhausted and adjacency.pairs:
        if walk.step() and state.total_us < best.total_us - 1e-9:
            best = state.copy()
    return best.plan(_meta(evaluator, best, start="greedy_cost"))


class _AnnealingWalk:
    """One Metropolis step at a time on a partition state (changed in place when accepted)."""

    def __init__(self, state: PartitionState, evaluator: Evaluator, rng: np.random.Generator) -> None:
        self.state = state
        self.evaluator = evaluator
        self.rng = rng
        self.budget_start = evaluator.count
        self.scale = state.total_us / max(1, state.num_groups)
        self.pairs = state.adjacency.pairs
        self.move_weights = np.array(ANNEAL_MOVE_WEIGHTS) / sum(ANNEAL_MOVE_WEIGHTS)

    def temperature(self) -> float:
        evaluator = self.evaluator
        progress = (evaluator.count - self.budget_start) / max(1, evaluator.budget - self.budget_start)
        return self.scale * ANNEAL_START_TEMPERATURE * (ANNEAL_END_TEMPERATURE / ANNEAL_START_TEMPERATURE) ** progress

    def refused(self) -> bool:
        """An illegal proposal costs one evaluation, so a walk that finds no legal move still ends."""
        self.evaluator.spend(1)
        return False

    def accept(self, delta_us: float) -> bool:
        return delta_us <= 0 or self.rng.random() < math.exp(-delta_us / self.temperature())

    def step(self) -> bool:
        """Propose one move; returns whether the state changed."""
        move = ANNEAL_MOVES[self.rng.choice(len(ANNEAL_MOVES), p=self.move_weights)]
        if move == "merge":
            return self.merge()
        if move == "cut":
            return self.cut()
        if move == "shift":
            return self.shift()
        return self.reschedule()

    def merge(self) -> bool:
        state = self.state
        u, v = self.pairs[self.rng.integers(len(self.pairs))]
        a, b = state.group_of[u], state.group_of[v]
        if a == b or not state.can_merge(a, b, self.evaluator.backend):
            return self.refused()
        schedule, us = self.evaluator.best_schedule(state.union(a, b))
        if not self.accept(us - state.us[a] - state.us[b]):
            return False
        state.merge(a, b, schedule, us)
        return True

    def cut(self) -> bool:
        """Cut a group into the nodes below a random member id and the rest (always convex)."""
        state, evaluator, backend = self.state, self.evaluator, self.evaluator.backend
        label = state.group_of[int(self.rng.integers(state.graph.num_nodes))]
        group = state.members[label]
        if len(group) < 2:
            return self.refused()
        position = int(self.rng.integers(1, len(group)))
        low, high = group[:position], group[position:]
        if not (state.allowed_by_backend(backend, low) and state.allowed_by_backend(backend, high)):
            return self.refused()
        low_value, high_value = evaluator.best_schedule(low), evaluator.best_schedule(high)
        if not self.accept(low_value[1] + high_value[1] - state.us[label]):
            return False
        state.split(label, low, low_value, high_value)
        return True

    def shift(self) -> bool:
        """Move a boundary node into the group of one of its producers or consumers."""
        state, evaluator, backend = self.state, self.evaluator, self.evaluator.backend
        node = int(self.rng.integers(state.graph.num_nodes))
        label = state.group_of[node]
        neighbours = [n for n in state.adjacency.pred[node] + state.adjacency.succ[node]
                      if state.group_of[n] != label]
        if not neighbours or node not in state.boundary_nodes(label):
            return self.refused()
        target = state.group_of[neighbours[int(self.rng.integers(len(neighbours)))]]
        remaining = tuple(n for n in state.members[label] if n != node)
        joined = tuple(sorted(state.members[target] + (node,)))
        if not (state.allowed_by_backend(backend, remaining) and state.allowed_by_backend(backend, joined)):
            return self.refused()
        rest, together = evaluator.best_schedule(remaining), evaluator.best_schedule(joined)
        delta = rest[1] + together[1] - state.us[label] - state.us[target]
        saved = state.checkpoint([label, target])
        state.split(label, (node,), ("default", 0.0), rest)
        producer, consumer = (node, target) if target in state.succ[node] else (target, node)
        if not state.merge_is_convex(producer, consumer) or not self.accept(delta):
            state.restore(saved)
            return False
        state.merge(producer, consumer, *together)
        return True

    def reschedule(self) -> bool:
        state = self.state
        schedules = self.evaluator.schedules
        label = state.group_of[int(self.rng.integers(state.graph.num_nodes))]
        if len(schedules) < 2:
            return self.refused()
        schedule = schedules[int(self.rng.integers(len(schedules)))]
        if schedule == state.schedule[label]:
            return self.refused()
        us = self.evaluator.latency(state.members[label], schedule)
        if not self.accept(us - state.us[label]):
            return False
        state.set_schedule(label, schedule, us)
        return True


# ---------------------------------------------------------------------- random
def random_plan(graph: ComputeGraph, backend: LatencyBackend | None = None, seed: int = 0) -> Plan:
    """Seeded random legal merges (a random number of them) and a random schedule per group."""
    rng = np.random.default_rng(seed)
    adjacency = Adjacency.of(graph)
    state = PartitionState.singletons(graph, adjacency)
    pairs = adjacency.pairs
    target = int(rng.integers(0, graph.num_nodes)) if pairs else 0
    merges = 0
    for _ in range(4 * len(pairs)):
        if merges >= target:
            break
        u, v = pairs[rng.integers(len(pairs))]
        a, b = state.group_of[u], state.group_of[v]
        if a != b and state.can_merge(a, b, backend):
            state.merge(a, b, "default", 0.0)
            merges += 1
    schedules = tuple(backend.schedules) if backend is not None else ("default",)
    for label in sorted(state.members):
        state.schedule[label] = schedules[int(rng.integers(len(schedules)))]
    return state.plan({"merges": merges})


# ------------------------------------------------------------------ exhaustive
def exhaustive(graph: ComputeGraph, backend: LatencyBackend) -> Plan:
    """The optimal plan on ``backend``: every convex partition, every group at its best schedule.

    A partition is acyclic iff its groups can be peeled off in an order where each one has
    no producer among the groups still left. Dynamic programming over the set of nodes
    left (an up-set of the DAG, at most 2^N of them) with the groups tried as its submasks
    finds the cheapest such sequence in O(3^N) steps, every group's latency asked once.
    """
    n = graph.num_nodes
    if n > EXHAUSTIVE_MAX_NODES:
        raise BaselineError(f"exhaustive search enumerates all convex partitions and is limited to "
                            f"{EXHAUSTIVE_MAX_NODES} nodes; {graph.name} has {n} (use annealing or beam)")
    evaluator = _evaluator(graph, backend, None)
    adjacency = Adjacency.of(graph)
    preds_of_node = [sum(1 << p for p in adjacency.pred[v]) for v in range(n)]
    groups = _allowed_groups(graph, backend, n, preds_of_node)
    costs: dict[int, tuple[float, str]] = {}
    best: dict[int, tuple[float, int]] = {0: (0.0, 0)}

    def solve(left: int) -> float:
        if left in best:
            return best[left][0]
        answer, choice = math.inf, 0
        group = left
        while group:
            preds = groups.get(group)
            if preds is not None and not preds & left & ~group:
                if group not in costs:
                    schedule_us = evaluator.best_schedule(_nodes_of(group))
                    costs[group] = (schedule_us[1], schedule_us[0])
                total = costs[group][0] + solve(left & ~group)
                if total < answer:
                    answer, choice = total, group
            group = (group - 1) & left
        best[left] = (answer, choice)
        return answer

    total = solve((1 << n) - 1)
    chosen, left = [], (1 << n) - 1
    while left:
        group = best[left][1]
        chosen.append(group)
        left &= ~group
    chosen.sort(key=lambda g: g & -g)
    return Plan([list(_nodes_of(g)) for g in chosen], [costs[g][1] for g in chosen], graph.hash,
                meta={"evaluations": evaluator.count, "predicted_us": total, "search_backend": backend.name,
                      "optimal": True})


def _allowed_groups(graph: ComputeGraph, backend: LatencyBackend, n: int, preds_of_node: list[int]) -> dict[int, int]:
    """Bitmask -> bitmask of its members' producers, for every group the backend accepts."""
    preds = [0] * (1 << n)
    allowed = {}
    for mask in range(1, 1 << n):
        low = mask & -mask
        preds[mask] = preds[mask ^ low] | preds_of_node[low.bit_length() - 1]
        if backend.group_constraint(graph, _nodes_of(mask)) is None:
            allowed[mask] = preds[mask]
    return allowed


def _nodes_of(mask: int) -> tuple[int, ...]:
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)
