"""Baselines: graph -> legal Plan, found by name, with the interface a learned policy offers.

``get(name).decide(graph, backend=None, seed=0, budget=None)`` returns a plan that passes
``is_legal(graph, plan, backend)``. ``backend`` is what a search method asks for latencies
(and what legality is checked against); None means the analytical CPU model. Rule-based
baselines ask nothing and keep the ``default`` schedule. ``plan.meta`` records the method,
its decision time and, for searches, the evaluations spent and the latency it predicted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from fusiongym.graphs import ComputeGraph
from fusiongym.reward import LatencyBackend, Plan, get_backend, require_legal

from . import rules, search
from .common import BaselineError

__all__ = ["Baseline", "BaselineError", "get", "names", "default_backend"]


@dataclass(frozen=True)
class Baseline:
    """A named decision procedure. ``uses_backend``: it searches on latencies; ``budgeted``:
    ``budget`` (evaluations) limits it; ``seeded``: ``seed`` changes what it does.
    ``prepare(graph)``: work a compiler has done before any fusion decision (importing the
    model into TVM at the run-time sizes); a harness runs it untimed."""

    name: str
    description: str
    function: Callable[[ComputeGraph, LatencyBackend, int, int | None], Plan]
    uses_backend: bool
    budgeted: bool = False
    seeded: bool = False
    prepare: Callable[[ComputeGraph], object] | None = None

    def decide(self, graph: ComputeGraph, backend: LatencyBackend | None = None, seed: int = 0,
               budget: int | None = None) -> Plan:
        """The plan for ``graph``; legal on ``backend`` (checked: a baseline bug raises here)."""
        if graph.is_template:
            raise BaselineError(f"{graph.name} is a template over {sorted(graph.symbols)}; instantiate it first")
        backend = backend if backend is not None else default_backend()
        started = time.perf_counter()
        plan = self.function(graph, backend, seed, budget if self.budgeted else None)
        decision_ms = (time.perf_counter() - started) * 1e3
        require_legal(graph, plan, backend)
        plan.meta.update({"method": self.name, "decision_ms": decision_ms})
        if self.seeded:
            plan.meta["seed"] = seed
        if self.budgeted:
            plan.meta["budget"] = budget if budget is not None else search.default_budget(graph)
        return plan


@lru_cache(maxsize=1)
def default_backend() -> LatencyBackend:
    """The analytical CPU model (calibrated profile if this machine has one), built once."""
    return get_backend("analytical", device="cpu")


_BASELINES = {b.name: b for b in (
    Baseline("no_fusion", "every operator its own kernel, default schedule",
             lambda g, be, seed, budget: rules.no_fusion(g), uses_backend=False),
    Baseline("tvm_default", "TVM's own FuseOps partition read back exactly, default schedule",
             lambda g, be, seed, budget: rules.tvm_default(g), uses_backend=False,
             prepare=rules.prepare_tvm_module),
    Baseline("inductor_rules", "TorchInductor's scheduler rules: score_fusion order, can_fuse, 64 nodes max",
             lambda g, be, seed, budget: rules.inductor_rules(g, be), uses_backend=False),
    Baseline("greedy_cost", "hill climbing: best-gain merge (best schedule per group) until none gains",
             lambda g, be, seed, budget: search.greedy_cost(g, be), uses_backend=True),
    Baseline("random", "seeded random legal merges and schedules",
             lambda g, be, seed, budget: search.random_plan(g, be, seed), uses_backend=False, seeded=True),
    Baseline("annealing", "simulated annealing from greedy_cost: merges, cuts, boundary shifts, schedules",
             lambda g, be, seed, budget: search.annealing(g, be, seed, budget), uses_backend=True,
             budgeted=True, seeded=True),
    Baseline("beam", "beam search (width 4) over merge sequences, best schedule per group",
             lambda g, be, seed, budget: search.beam(g, be, seed, budget), uses_backend=True,
             budgeted=True, seeded=True),
    Baseline("exhaustive", f"all convex partitions x best schedules (≤ {search.EXHAUSTIVE_MAX_NODES} nodes): "
             "the optimum on the backend", lambda g, be, seed, budget: search.exhaustive(g, be),
             uses_backend=True),
)}


def names() -> list[str]:
    """Baseline names, in the order the leaderboard lists them."""
    return list(_BASELINES)


def get(name: str) -> Baseline:
    try:
        return _BASELINES[name]
    except KeyError:
        raise BaselineError(f"unknown baseline {name!r}; baselines: {names()}") from None
