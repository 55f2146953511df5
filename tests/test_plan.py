"""Plan: JSON round trip, partition and convexity rules, backend constraints and memo."""

from __future__ import annotations

import pytest

from fusiongym.graphs import ComputeGraph, Edge, OpKind, OpNode, TensorSpec
from fusiongym.reward import IllegalPlanError, Plan, is_legal, require_legal
from fusiongym.reward.analytical import AnalyticalBackend
from fusiongym.reward.devices import get_profile


def _elementwise(node_id: int, inputs: list[TensorSpec]) -> OpNode:
    out = TensorSpec((64, 64), "float32")
    return OpNode(node_id, "relu", OpKind.ELEMWISE, tuple(inputs), (out,), flops=out.numel)


def diamond_graph() -> ComputeGraph:
    """a -> b -> c plus the shortcut a -> c (fusing a and c without b is not convex), c -> d,
    and an independent node e that reads the graph input."""
    x = TensorSpec((64, 64), "float32")
    nodes = [_elementwise(0, [x]), _elementwise(1, [x]), _elementwise(2, [x, x]), _elementwise(3, [x]),
             _elementwise(4, [x])]
    edges = [Edge(0, 1), Edge(1, 2), Edge(0, 2), Edge(2, 3)]
    return ComputeGraph(nodes, edges, outputs=[(3, 0), (4, 0)], name="diamond")


@pytest.fixture
def graph() -> ComputeGraph:
    return diamond_graph()


@pytest.fixture
def backend() -> AnalyticalBackend:
    return AnalyticalBackend(get_profile("cpu", use_calibrated=False), max_group_size=3)


def test_json_round_trip_keeps_groups_schedules_and_graph_hash(graph):
    plan = Plan([[0, 1, 2], [3], [4]], ["parallel", "default", "tiled_16"], graph.hash, meta={"agent": "test"})
    loaded = Plan.from_json(plan.to_json())
    assert loaded == plan
    assert loaded.graph_hash == graph.hash == ComputeGraph.from_json(graph.to_json()).hash
    assert is_legal(ComputeGraph.from_json(graph.to_json()), loaded).ok


def test_from_json_rejects_other_formats():
    with pytest.raises(IllegalPlanError, match="not a fusiongym plan"):
        Plan.from_json('{"format": "other"}')


def test_singletons_are_legal(graph, backend):
    plan = Plan.singletons(graph)
    assert plan.groups == [[0], [1], [2], [3], [4]]
    assert is_legal(graph, plan, backend).ok


def test_non_convex_plan_is_rejected_and_names_the_cycle(graph):
    plan = Plan([[0, 2], [1], [3, 4]], ["default"] * 3, graph.hash)
    verdict = is_legal(graph, plan)
    assert not verdict
    assert "non-convex" in verdict.reason
    assert set(verdict.cycle) == {0, 1}  # group {a, c} and group {b}
    assert "group 0 [0, 2]" in verdict.reason and "group 1 [1]" in verdict.reason
    with pytest.raises(IllegalPlanError, match="non-convex"):
        require_legal(graph, plan)


def test_convex_fusion_of_the_whole_path_is_legal(graph):
    assert is_legal(graph, Plan([[0, 1, 2], [3], [4]], ["default"] * 3, graph.hash)).ok


def test_overlapping_groups_are_rejected(graph):
    verdict = is_legal(graph, Plan([[0, 1], [1, 2], [3], [4]], ["default"] * 4, graph.hash))
    assert not verdict and "nodes [1] are in more than one group" in verdict.reason


@pytest.mark.parametrize("groups,named", [
    ([[0, 0, 1, 2], [3], [4]], "node 0 is listed more than once in group 0"),
    ([[0, 1, 2], [3], [4, 4]], "node 4 is listed more than once in group 2"),
])
def test_a_node_listed_twice_in_one_group_is_rejected(graph, groups, named):
    """A repeated id must not be counted once: the plan would name more nodes than it runs."""
    plan = Plan(groups, ["default"] * len(groups), graph.hash)
    assert named in is_legal(graph, plan).reason
    assert named in is_legal(graph, Plan.from_json(plan.to_json())).reason
    unsorted = Plan([list(reversed(g)) for g in groups], ["default"] * len(groups), graph.hash, normalized=True)
    assert named in is_legal(graph, unsorted).reason
    with pytest.raises(IllegalPlanError, match=named):
        require_legal(graph, plan)


def test_missing_nodes_are_rejected(graph):
    verdict = is_legal(graph, Plan([[0, 1], [2]], ["default"] * 2, graph.hash))
    assert not verdict and "nodes [3, 4] are in no group" in verdict.reason


def test_node_ids_outside_the_graph_are_rejected(graph):
    verdict = is_legal(graph, Plan([[0, 1, 2, 3, 4, 5]], ["default"], graph.hash))
    assert not verdict and "outside 0..4" in verdict.reason


def test_plan_for_another_graph_is_rejected(graph):
    verdict = is_legal(graph, Plan([[0], [1], [2], [3], [4]], ["default"] * 5, "0" * 16))
    assert not verdict and f"not {graph.hash}" in verdict.reason


def test_schedule_count_must_match_group_count(graph):
    with pytest.raises(IllegalPlanError, match="3 groups but 1 schedules"):
        Plan([[0, 1, 2], [3], [4]], ["default"], graph.hash)


def test_unknown_schedule_is_rejected_by_the_backend(graph, backend):
    plan = Plan([[0, 1, 2], [3], [4]], ["warp_specialized", "default", "default"], graph.hash)
    assert is_legal(graph, plan).ok  # structurally fine ...
    verdict = is_legal(graph, plan, backend)  # ... but not on this backend's menu
    assert not verdict and "'warp_specialized' is not offered by backend analytical" in verdict.reason
    with pytest.raises(IllegalPlanError, match="warp_specialized"):
        backend.latency(graph, plan)
    with pytest.raises(ValueError, match="choices: \\['default', 'parallel'"):
        backend.group_latency(graph, [0], "warp_specialized")


def test_backend_group_constraints_reach_is_legal(graph, backend):
    too_big = is_legal(graph, Plan([[0, 1, 2, 3], [4]], ["default"] * 2, graph.hash), backend)
    assert not too_big and "group 0 [0, 1, 2, 3]: group of 4 nodes exceeds max_group_size=3" in too_big.reason
    # {3, 4} is convex (no path joins them) but shares no edge: two kernels, not one.
    plan = Plan([[0, 1, 2], [3, 4]], ["default"] * 2, graph.hash)
    assert is_legal(graph, plan).ok
    disconnected = is_legal(graph, plan, backend)
    assert not disconnected and "group 1 [3, 4]: group is not weakly connected" in disconnected.reason


def test_a_deterministic_backend_remembers_only_its_most_recent_groups(graph, backend):
    """Searches ask about one group again and again; the memo answers them, within ``memo_groups``."""
    asked = []
    compute = backend.group_latency
    backend.group_latency = lambda g, nodes, schedule: asked.append(tuple(nodes)) or compute(g, nodes, schedule)
    backend.memo_groups = 2
    for nodes in ([0], [1], [0], [2], [1]):
        assert backend.cached_group_latency(graph, nodes, "default") == compute(graph, nodes, "default")
    assert asked == [(0,), (1,), (2,), (1,)]   # [0] was used again, so [1] was the one forgotten


def test_from_assignment_orders_groups_by_first_node(graph):
    plan = Plan.from_assignment(graph, [7, 7, 7, 2, 5], schedules={2: "parallel"})
    assert plan.groups == [[0, 1, 2], [3], [4]] and plan.schedules == ["default", "parallel", "default"]
    assert plan.group_of(graph.num_nodes).tolist() == [0, 0, 0, 1, 2]


def test_a_plan_from_labels_is_the_plan_of_its_lists(graph):
    """``Plan.from_labels`` (what ``decide`` returns) reads as the same plan as lists do."""
    import numpy as np

    labelled = Plan.from_labels(np.array([0, 0, 0, 1, 2]), np.array([1, 0, 0]), ["default", "parallel"], graph.hash)
    listed = Plan([[0, 1, 2], [3], [4]], ["parallel", "default", "default"], graph.hash)
    assert labelled.num_groups == 3
    np.testing.assert_array_equal(labelled.group_of(5), [0, 0, 0, 1, 2])
    assert labelled == listed and labelled.groups == listed.groups and labelled.schedules == listed.schedules
    assert Plan.from_json(labelled.to_json()) == listed
    assert is_legal(graph, labelled)


@pytest.mark.parametrize("labels,schedule_index,problem", [
    ([1, 0, 0, 1, 2], [0, 0, 0], "first node"),      # group 1 before group 0
    ([0, 2, 2, 1, 1], [0, 0, 0], "first node"),      # a label skipped
    ([0, 0, 1, 1, 2], [0, 0], "3 groups but 2 schedules"),
    ([0, 0, 1, 1, 2], [0, 0, 5], "schedule indices must lie in 0..1"),
])
def test_bad_labels_are_refused_with_the_rule(labels, schedule_index, problem):
    import numpy as np

    with pytest.raises(IllegalPlanError, match=problem):
        Plan.from_labels(np.array(labels), np.array(schedule_index), ["default", "parallel"], "hash")
