"""Replay saved episodes and re-measure saved results (the ``fusiongym validate`` core).

An ``env.state`` names everything an episode depended on: the workload and the context it
was sampled at (dims, routing, device load), the graph's content hash, the start plan and
the actions in a layout-independent form. ``replay_state`` re-applies the actions with the
same incremental code the environment runs, so on a deterministic backend the latency is
identical bit for bit; ``validate_results`` re-measures a plan from scratch and flags the
records that do not reproduce within the backend's noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from fusiongym.graphs import ComputeGraph
from fusiongym.graphs.workloads import get_workload
from fusiongym.reward import LatencyBackend, Plan

from .actions import FUSE, SCHEDULE, ActionLayout
from .partition import GraphStructure, Partition

# Deterministic backends must agree up to floating-point summation order.
DETERMINISTIC_RTOL = 1e-9
NOISE_SIGMAS = 3.0


@dataclass(frozen=True)
class Mismatch:
    """A saved result that did not reproduce; ``reason`` says how."""

    index: int
    workload: str
    graph_hash: str
    recorded_us: float
    measured_us: float | None
    tolerance_us: float | None
    reason: str


def rebuild_graph(state: Mapping[str, Any], graphs: Mapping[str, ComputeGraph] | None = None) -> ComputeGraph:
    """The concrete graph a state was played on: from ``graphs`` (by hash) or re-sampled.

    Re-sampling pins the recorded dims, routing and device load, so the graph is the same
    whatever the seed; the content hash is checked.
    """
    if graphs and state["graph_hash"] in graphs:
        return graphs[state["graph_hash"]]
    context = state.get("context") or {}
    try:
        workload = get_workload(state["workload"])
    except ValueError as error:
        raise ValueError(f"cannot rebuild graph {state['graph_hash']} ({state.get('graph_name')}): {error}. "
                         f"Pass the graph itself (graphs={{hash: graph}}) for graphs that are not workloads") from None
    graph = workload.sample(np.random.default_rng(state.get("seed")), dims=context.get("dims"),
                            routing=context.get("routing"), device_load=context.get("device_load"))
    if graph.hash != state["graph_hash"]:
        raise ValueError(f"workload {workload.name} re-sampled at the recorded context gives graph {graph.hash}, "
                         f"not the recorded {state['graph_hash']}: the model or importer changed since")
    return graph


def replay_state(graph: ComputeGraph, state: Mapping[str, Any], backend: LatencyBackend) -> tuple[Plan, float]:
    """Apply a state's start plan and actions to ``graph``: (plan, latency µs).

    Raises ValueError naming the first action that is illegal on this graph and backend.
    """
    if graph.hash != state["graph_hash"]:
        raise ValueError(f"state is for graph {state['graph_hash']}, not {graph.hash} ({graph.name})")
    n, e = graph.num_nodes, graph.num_edges
    layout = ActionLayout(n, e, tuple(backend.schedules))
    mask = np.zeros(layout.n, dtype=bool)
    partition = Partition(graph, GraphStructure.of(graph), backend, mask[:e],
                          mask[e:e + n * layout.num_schedules].reshape(n, layout.num_schedules))
    start = state.get("start_plan")
    plan = Plan.singletons(graph) if start is None else Plan(start["groups"], start["schedules"], graph.hash)
    partition.restore(partition.snapshot_of(plan))
    for step, item in enumerate(state["actions"]):
        action = layout.from_json(item)
        layout.decode(action)  # raises for an index outside this graph's layout
        if not mask[action] and item[0] != "stop":
            raise ValueError(f"action {step} {item} is illegal here: {_why(partition, layout, action)}")
        if item[0] == FUSE:
            partition.merge(action)
        elif item[0] == SCHEDULE:
            partition.set_schedule(*divmod(action - e, layout.num_schedules))
    return partition.plan(), partition.total_us


def _why(partition: Partition, layout: ActionLayout, action: int) -> str:
    kind, *args = layout.decode(action)
    if kind == FUSE:
        return partition.why_not_merge(args[0])
    return f"the group of node {args[0]} already has its schedule set"


def validate_results(records: Iterable[Mapping[str, Any]], backend: LatencyBackend,
                     graphs: Mapping[str, ComputeGraph] | None = None) -> list[Mismatch]:
    """Re-measure saved results; return those that do not reproduce.

    Each record holds ``state`` (an ``env.state``) and ``latency_us`` (the number reported),
    optionally ``spread`` (coefficient of variation of that measurement) and ``graph`` (the
    graph's JSON, for graphs that are not workloads). The plan is rebuilt by replaying the
    actions, then measured from scratch with ``backend.latency``. A result reproduces when
    it lies within 3 x spread of the new measurement (the larger of the recorded and new
    spread), or within 1e-9 relative on a deterministic backend.
    """
    mismatches = []
    for index, record in enumerate(records):
        state, recorded = record["state"], float(record["latency_us"])
        known = dict(graphs or {})
        if record.get("graph"):
            graph = ComputeGraph.from_json(record["graph"])
            known[graph.hash] = graph

        def mismatch(measured: float | None, tolerance: float | None, reason: str) -> Mismatch:
            return Mismatch(index, str(state.get("workload")), str(state.get("graph_hash")), recorded,
                            measured, tolerance, reason)

        try:
            graph = rebuild_graph(state, known)
            plan, _ = replay_state(graph, state, backend)
            report = backend.remeasure(graph, plan)   # from scratch: a real backend re-times, not the store
        except ValueError as error:
            mismatches.append(mismatch(None, None, str(error)))
            continue
        measured = report.total_us
        if backend.deterministic:
            tolerance = DETERMINISTIC_RTOL * max(abs(recorded), abs(measured))
        else:
            tolerance = NOISE_SIGMAS * max(float(record.get("spread", 0.0)), report.spread) * measured
        if abs(measured - recorded) > tolerance:
            mismatches.append(mismatch(measured, tolerance,
                                       f"recorded {recorded:.6g} µs, measured {measured:.6g} µs "
                                       f"(difference {abs(measured - recorded):.3g} > tolerance {tolerance:.3g} µs)"))
    return mismatches
