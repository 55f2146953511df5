"""Baselines: legal plans on every zoo model, TVM's FuseOps recovered, search optimality on small graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fusiongym.agents import baselines
from fusiongym.agents.baselines.common import Evaluator, PartitionState
from fusiongym.agents.baselines.rules import (EXTERN, INDUCTOR_MAX_FUSION_SIZE, TEMPLATE, FusedKind,
                                              inductor_can_fuse, inductor_role)
from fusiongym.agents.baselines.search import _AnnealingWalk, greedy_trajectory
from fusiongym.graphs import ComputeGraph, synthetic, zoo
from fusiongym.reward import Plan, is_legal
from fusiongym.reward.analytical import AnalyticalBackend
from fusiongym.reward.devices import get_profile

# hf_* models need the optional transformers extra and are left out.
ZOO_MODELS = [name for name in zoo.names() if not name.startswith("hf_")]
SEARCHES_AND_RULES = [name for name in baselines.names() if name not in ("tvm_default", "exhaustive")]


@pytest.fixture(scope="module")
def backend() -> AnalyticalBackend:
    """The uncalibrated CPU model: results do not depend on a profile fitted on this machine."""
    return AnalyticalBackend(get_profile("cpu", use_calibrated=False))


def latency(backend: AnalyticalBackend, graph: ComputeGraph, plan: Plan) -> float:
    return backend.latency(graph, plan).total_us


def branching_window(graph: ComputeGraph, size: int, skip: int = 0) -> ComputeGraph:
    """The ``skip``-th window of ``size`` consecutive nodes holding an edge that skips a node
    (a residual or a shared input), so convexity matters inside it."""
    windows = [start for start in range(graph.num_nodes - size + 1)
               if any(start <= e.src and e.dst < start + size and e.dst - e.src > 1 for e in graph.edges)]
    start = windows[skip * size % len(windows)]
    return graph.subgraph(list(range(start, start + size)))


def small_graphs() -> list[ComputeGraph]:
    """Graphs of ≤ 12 nodes: synthetic chains and zoo subgraphs with branches and residuals."""
    graphs = [synthetic(n_nodes=10, seed=seed) for seed in (0, 3, 7)]
    llama = zoo.load("llama", "small")
    resnet = zoo.load("resnet18", "small")
    return graphs + [branching_window(llama, 12), branching_window(llama, 12, skip=2),
                     branching_window(resnet, 12)]


def test_registry_names_every_baseline_and_rejects_unknown_names():
    assert baselines.names() == ["no_fusion", "tvm_default", "inductor_rules", "greedy_cost", "random",
                                 "annealing", "beam", "exhaustive"]
    assert baselines.get("annealing").name == "annealing"
    with pytest.raises(baselines.BaselineError, match="unknown baseline 'nope'"):
        baselines.get("nope")


@pytest.mark.parametrize("model", ZOO_MODELS)
def test_every_baseline_returns_a_legal_plan_on_every_zoo_model(model, backend):
    graph = zoo.load(model, "small")
    unfused = latency(backend, graph, Plan.singletons(graph))
    for name in SEARCHES_AND_RULES:
        plan = baselines.get(name).decide(graph, backend, seed=1, budget=3000)
        assert is_legal(graph, plan, backend), (name, is_legal(graph, plan, backend).reason)
        assert plan.meta["method"] == name and plan.meta["decision_ms"] > 0
        if name == "greedy_cost":
            assert latency(backend, graph, plan) < unfused, "greedy_cost must beat no_fusion"
        if name in ("annealing", "beam"):
            assert plan.meta["evaluations"] <= plan.meta["budget"] + 2 * len(backend.schedules)


def test_tvm_default_reproduces_fuseops_grouping_exactly(backend):
    from tvm import relax

    from fusiongym.reward.tvm_apply import analyze

    graph = zoo.load("resnet18", "small")
    plan = baselines.get("tvm_default").decide(graph, backend)
    assert is_legal(graph, plan, backend)
    fused = relax.transform.FuseOps()(analyze(graph).mod)
    expected = sorted(tuple(sorted(_callees_of(fused, value))) for value in _kernels_in_main(fused))
    got = sorted(tuple(sorted(graph.nodes[n].attrs["callee"] for n in group)) for group in plan.groups)
    assert got == expected
    assert 1 < plan.num_groups < graph.num_nodes
    fused_names = {gv.name_hint for gv, f in fused.functions.items() if isinstance(f, relax.Function)}
    assert all(kernel in fused_names for group, kernel in zip(plan.groups, plan.meta["kernels"]) if len(group) > 1)


def _kernels_in_main(mod) -> list:
    """Every call in main that runs a kernel: a fused function or a call_tir left alone."""
    from tvm import relax

    calls = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and (_callee_name(value) or hasattr(value.op, "name_hint")):
                calls.append(value)
    return [call for call in calls if _callees_of(mod, call)]


def _callee_name(call) -> str | None:
    if getattr(call.op, "name", None) == "relax.call_tir":
        return call.args[0].name_hint
    return None


def _callees_of(mod, call) -> list[str]:
    """PrimFuncs a kernel call runs: its own call_tir, or every call_tir in the fused function."""
    from tvm import relax

    direct = _callee_name(call)
    if direct:
        return [direct]
    function = mod[call.op] if hasattr(call.op, "name_hint") and call.op in mod.get_global_vars() else None
    if not isinstance(function, relax.Function):
        return []
    return [_callee_name(b.value) for block in function.body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and _callee_name(b.value)]


def test_exhaustive_equals_brute_force_over_every_partition(backend):
    """All set partitions of a 7-node residual subgraph, filtered by is_legal, best schedule each."""
    graph = branching_window(zoo.load("resnet18", "small"), 7)
    evaluator = Evaluator(graph, backend, tuple(backend.schedules))
    best = min(sum(evaluator.best_schedule(tuple(g))[1] for g in groups)
               for groups in _set_partitions(list(range(graph.num_nodes)))
               if is_legal(graph, Plan(groups, ["default"] * len(groups), graph.hash), backend))
    plan = baselines.get("exhaustive").decide(graph, backend)
    assert latency(backend, graph, plan) == pytest.approx(best, rel=1e-12)


def _set_partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        yield [[first]] + partition
        for index in range(len(partition)):
            yield partition[:index] + [[first] + partition[index]] + partition[index + 1:]


def test_annealing_reaches_the_exhaustive_optimum_on_small_graphs(backend):
    for graph in small_graphs():
        optimum = latency(backend, graph, baselines.get("exhaustive").decide(graph, backend))
        for name in SEARCHES_AND_RULES:
            assert latency(backend, graph, baselines.get(name).decide(graph, backend)) >= optimum * (1 - 1e-12)
        for seed in (0, 1):
            plan = baselines.get("annealing").decide(graph, backend, seed=seed, budget=3000)
            assert latency(backend, graph, plan) == pytest.approx(optimum, rel=1e-9), (graph.name, seed)


def test_greedy_cost_stops_at_a_local_optimum_annealing_escapes(backend):
    """synthetic-10-3: the optimum moves two nodes across greedy's cut; no single merge gains."""
    graph = synthetic(n_nodes=10, seed=3)
    greedy = latency(backend, graph, baselines.get("greedy_cost").decide(graph, backend))
    optimum = latency(backend, graph, baselines.get("exhaustive").decide(graph, backend))
    annealed = latency(backend, graph, baselines.get("annealing").decide(graph, backend, budget=3000))
    assert greedy > optimum * (1 + 1e-5)
    assert annealed == pytest.approx(optimum, rel=1e-9)


def test_exhaustive_refuses_graphs_above_12_nodes(backend):
    with pytest.raises(baselines.BaselineError, match="limited to 12 nodes.*has 13"):
        baselines.get("exhaustive").decide(synthetic(n_nodes=13, seed=0), backend)


def test_seeded_baselines_repeat_with_the_same_seed(backend):
    graph = zoo.load("llama", "small")
    for name in ("random", "annealing", "beam"):
        first = baselines.get(name).decide(graph, backend, seed=5, budget=6000)
        again = baselines.get(name).decide(graph, backend, seed=5, budget=6000)
        assert first.canonical() == again.canonical(), name
    plans = {baselines.get("random").decide(graph, backend, seed=s).canonical() for s in range(4)}
    assert len(plans) == 4


def test_search_baselines_pick_non_default_schedules_and_rules_keep_default(backend):
    graph = zoo.load("resnet18", "small")
    assert set(baselines.get("inductor_rules").decide(graph, backend).schedules) == {"default"}
    assert set(baselines.get("greedy_cost").decide(graph, backend).schedules) - {"default"}


def test_inductor_can_fuse_follows_the_scheduler_rules():
    pointwise = FusedKind(4096, 1, False, False, False)
    template = FusedKind(4096, 1, True, False, False)
    row_sum = FusedKind(64, 64, False, True, False)       # reduces 4096 elements to 64
    other_sum = FusedKind(32, 128, False, True, False)
    extern = FusedKind(4096, 1, False, False, True)
    assert inductor_can_fuse(template, pointwise)          # epilogue
    assert not inductor_can_fuse(pointwise, template)      # no prologue
    assert not inductor_can_fuse(template, row_sum)        # template epilogues are pointwise
    assert inductor_can_fuse(pointwise, row_sum)           # prologue of a reduction (numel = 64 x 64)
    assert inductor_can_fuse(row_sum, FusedKind(64, 1, False, False, False))   # epilogue at the reduced size
    assert inductor_can_fuse(row_sum, FusedKind(64, 64, False, True, False))   # same-size reductions
    assert not inductor_can_fuse(row_sum, other_sum)       # different sizes
    assert not inductor_can_fuse(pointwise, FusedKind(1024, 1, False, False, False))
    assert not inductor_can_fuse(pointwise, extern) and not inductor_can_fuse(extern, pointwise)


def test_inductor_rules_groups_respect_size_templates_and_extern_ops(backend):
    for model in ("llama", "resnet50", "mixtral_moe"):
        graph = zoo.load(model, "small")
        plan = baselines.get("inductor_rules").decide(graph, backend)
        assert plan.num_groups < graph.num_nodes
        for group in plan.groups:
            roles = [inductor_role(graph.nodes[n]) for n in group]
            assert len(group) <= INDUCTOR_MAX_FUSION_SIZE
            assert roles.count(TEMPLATE) <= 1
            if len(group) > 1:
                assert EXTERN not in roles, [graph.nodes[n].op for n in group]
            if TEMPLATE in roles:  # a template is its group's first node: no prologue
                assert roles[0] == TEMPLATE
    roles = {node.op: inductor_role(node) for node in zoo.load("llama", "small").nodes}
    assert (roles["matmul"], roles["take"], roles["reshape"], roles["mean"]) == (TEMPLATE, EXTERN, "pointwise",
                                                                                 "reduction")


def test_partition_state_stays_consistent_under_annealing_moves(backend):
    graph = zoo.load("mobilenet_v2", "small")
    evaluator = Evaluator(graph, backend, tuple(backend.schedules), budget=4000)
    state = PartitionState.singletons(graph, evaluator=evaluator)
    walk = _AnnealingWalk(state, evaluator, np.random.default_rng(0))
    walk.scale *= 5  # hot: many merges, cuts and shifts get accepted
    for step in itertools.count():
        if evaluator.exhausted:
            break
        walk.step()
        if step % 500 == 0:
            plan = state.plan()
            assert is_legal(graph, plan, backend)
            rebuilt = PartitionState.from_plan(graph, plan)
            assert (rebuilt.members, rebuilt.succ, rebuilt.pred) == (state.members, state.succ, state.pred)
            assert state.total_us == pytest.approx(latency(backend, graph, plan), rel=1e-9)
            assert state.key == sum(hash(m) for m in state.members.values())


@pytest.mark.slow
@pytest.mark.parametrize("model", ZOO_MODELS)
def test_tvm_default_is_legal_on_every_zoo_model(model, backend):
    """Re-importing each model into TVM takes 5-15 s, hence slow."""
    graph = zoo.load(model, "small")
    plan = baselines.get("tvm_default").decide(graph, backend)
    assert is_legal(graph, plan, backend) and plan.num_groups < graph.num_nodes


def test_greedy_trajectory_spans_no_fusion_to_greedy_cost(backend):
    """Plans along greedy_cost's descent: legal, fewer groups and faster at every point, all
    strictly between every node alone and greedy_cost's end."""
    graph = zoo.load("resnet18", "small")
    greedy = baselines.get("greedy_cost").decide(graph, backend)
    trajectory = greedy_trajectory(graph, backend, 4)
    assert len(trajectory) == 4 and all(is_legal(graph, plan) for plan in trajectory)
    groups = [graph.num_nodes, *(plan.num_groups for plan in trajectory), greedy.num_groups]
    latencies = [latency(backend, graph, plan) for plan in (baselines.get("no_fusion").decide(graph),
                                                               *trajectory, greedy)]
    assert all(a > b for a, b in zip(groups, groups[1:])), groups
    assert all(a > b for a, b in zip(latencies, latencies[1:])), latencies
    assert greedy_trajectory(graph, backend, 0) == []
    with pytest.raises(ValueError, match="trajectory points"):
        greedy_trajectory(graph, backend, -1)
