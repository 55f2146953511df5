"""Rule-based baselines: no fusion, TVM's own FuseOps, and TorchInductor's fusion rules.

They look at no latency: every group keeps the ``default`` schedule, the kernel a compiler
emits when nobody tunes it. ``inductor_rules`` follows ``torch/_inductor/scheduler.py``
(torch 2.13): ``fuse_nodes`` runs ``fuse_nodes_once`` up to 10 rounds; each round lists the
candidate pairs, sorts them by ``score_fusion`` (template kind, reduction match, bytes of the
shared buffer, proximity in program order) and fuses every pair that is still legal by
``can_fuse`` (at most ``max_fusion_size`` = 64 nodes) and ``will_fusion_create_cycle``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fusiongym.graphs import ComputeGraph, Edge, OpKind, OpNode
from fusiongym.reward import DEFAULT_SCHEDULE, LatencyBackend, Plan

from .common import BaselineError, PartitionState

# torch._inductor.config.max_fusion_size
INDUCTOR_MAX_FUSION_SIZE = 64
# fuse_nodes: at most this many rounds of fuse_nodes_once
INDUCTOR_FUSION_ROUNDS = 10

# How Inductor sees each operator of the graph. TVM's pattern kinds do not say it directly:
# TVM calls softmax, layer_norm, mean and pooling OUT_ELEMWISE_FUSABLE, which Inductor
# lowers to reductions or pointwise loops, and reshape OPAQUE, which Inductor makes a view.
TEMPLATE_OP_PATTERN = re.compile(r"(^|_)(matmul|bmm|dense|linear|einsum|conv\dd(_transpose)?)($|_)")
REDUCTION_OPS = ("sum", "mean", "max", "min", "prod", "softmax", "log_softmax", "layer_norm", "group_norm",
                 "rms_norm", "variance", "std", "argmax", "argmin", "cumsum", "batch_norm")
VIEW_OPS = ("reshape", "squeeze", "expand_dims", "flatten", "view")
POINTWISE, REDUCTION, TEMPLATE, EXTERN = "pointwise", "reduction", "template", "extern"


def no_fusion(graph: ComputeGraph) -> Plan:
    """Every operator its own kernel with the default schedule: the unfused reference."""
    return Plan.singletons(graph)


def tvm_default(graph: ComputeGraph) -> Plan:
    """TVM's own FuseOps partition, read back from ``relax.transform.FuseOps`` (default schedules)."""
    _require_tvm_source(graph)
    from fusiongym.reward.tvm_default import tvm_default_plan

    return tvm_default_plan(graph)


def prepare_tvm_module(graph: ComputeGraph) -> None:
    """Import the graph's model into TVM and bind its run-time sizes (cached per graph)."""
    _require_tvm_source(graph)
    from fusiongym.reward.tvm_apply import analyze

    analyze(graph)


def _require_tvm_source(graph: ComputeGraph) -> None:
    if graph.relax_module is None and graph.source.get("kind") != "zoo":
        raise BaselineError(f"tvm_default needs a graph imported from TVM (a zoo model or from_torch); "
                            f"{graph.name} has no Relax module")


# ------------------------------------------------------------------ inductor
@dataclass(frozen=True)
class InductorNode:
    """One operator as Inductor's scheduler classifies it: role and iteration sizes.

    ``numel`` is the size of the output iteration space, ``rnumel`` the reduction length
    (1 for pointwise and templates): Inductor's ``node.group[1]``.
    """

    role: str
    numel: int
    rnumel: int


def inductor_role(node: OpNode) -> str:
    """pointwise, reduction, template (conv/matmul) or extern (never fuses)."""
    op = node.op.lower()
    if TEMPLATE_OP_PATTERN.search(op):
        return TEMPLATE
    if op in VIEW_OPS:
        return POINTWISE
    if node.kind == OpKind.OPAQUE:
        return EXTERN
    if node.kind == OpKind.COMM_REDUCE or op in REDUCTION_OPS:
        return REDUCTION
    return POINTWISE


def inductor_node(node: OpNode) -> InductorNode:
    role = inductor_role(node)
    out_numel = max(1, sum(t.numel for t in node.outputs))
    if role != REDUCTION:
        return InductorNode(role, out_numel, 1)
    data_inputs = [t for t in node.inputs if not t.is_param] or list(node.inputs)
    in_numel = max((t.numel for t in data_inputs), default=out_numel)
    if in_numel > out_numel:              # sum, mean: the reduced axes are gone from the output
        return InductorNode(role, out_numel, max(1, in_numel // out_numel))
    last = int(node.outputs[0].shape[-1]) if node.outputs and node.outputs[0].shape else 1
    return InductorNode(role, max(1, out_numel // max(1, last)), max(1, last))  # softmax, layer_norm


@dataclass(frozen=True)
class FusedKind:
    """What Inductor knows about a fused node: ``group`` sizes and which roles it holds."""

    numel: int
    rnumel: int
    has_template: bool
    has_reduction: bool
    has_extern: bool

    @staticmethod
    def of(nodes: list[InductorNode]) -> "FusedKind":
        # FusedSchedulerNode.group: the group of its reduction when it has one
        lead = max(nodes, key=lambda n: (n.role == REDUCTION, n.role == TEMPLATE))
        return FusedKind(lead.numel, lead.rnumel, any(n.role == TEMPLATE for n in nodes),
                         any(n.role == REDUCTION for n in nodes), any(n.role == EXTERN for n in nodes))


def inductor_can_fuse(producer: FusedKind, consumer: FusedKind) -> bool:
    """``Scheduler.can_fuse`` + the SIMD backend's ``can_fuse`` for a producer→consumer pair."""
    if producer.has_extern or consumer.has_extern:
        return False                                   # extern kernels never fuse
    if consumer.has_template:
        return False                                   # no prologue fusion into templates
    if producer.has_template and consumer.has_reduction:
        return False                                   # template epilogues are pointwise
    if producer.has_reduction and consumer.has_reduction:
        return (producer.numel, producer.rnumel) == (consumer.numel, consumer.rnumel)
    if not producer.has_reduction and not consumer.has_reduction:
        return producer.numel == consumer.numel
    reduction, pointwise = (producer, consumer) if producer.has_reduction else (consumer, producer)
    return pointwise.numel in (reduction.numel, reduction.numel * reduction.rnumel)


def inductor_rules(graph: ComputeGraph, backend: LatencyBackend | None = None) -> Plan:
    """TorchInductor's greedy fusion: pairs in ``score_fusion`` order, legal by ``can_fuse``."""
    fusion = _InductorFusion(graph, backend)
    for _ in range(INDUCTOR_FUSION_ROUNDS):
        if not fusion.fuse_once():
            break
    return fusion.state.plan({"rules": "torch._inductor.scheduler (max_fusion_size=64)"})


class _InductorFusion:
    """The scheduler's state: fused nodes (groups) and what Inductor knows about each."""

    def __init__(self, graph: ComputeGraph, backend: LatencyBackend | None) -> None:
        self.graph = graph
        self.backend = backend
        self.state = PartitionState.singletons(graph)
        self.kinds = [inductor_node(node) for node in graph.nodes]
        self.fused = {label: FusedKind.of([self.kinds[label]]) for label in self.state.members}
        self.in_edges: list[list[Edge]] = [[] for _ in graph.nodes]
        for edge in graph.edges:
            self.in_edges[edge.dst].append(edge)

    def fuse_once(self) -> bool:
        """One ``fuse_nodes_once`` round: rank the candidate pairs once, fuse those still legal."""
        state = self.state
        candidates = [pair for pair in state.group_pairs() if self.legal(*pair, check_cycle=False)]
        candidates.sort(key=lambda pair: self.score(*pair), reverse=True)
        changed = False
        for first, second in candidates:
            a, b = state.group_of[first], state.group_of[second]   # the fused nodes they now belong to
            if a == b or b not in state.succ[a] or not self.legal(a, b, check_cycle=True):
                continue
            keep = state.merge(a, b, DEFAULT_SCHEDULE, 0.0)
            self.fused[keep] = FusedKind.of([self.kinds[n] for n in state.members[keep]])
            changed = True
        return changed

    def legal(self, a: int, b: int, check_cycle: bool) -> bool:
        """``can_fuse`` (size, roles, sizes), then ``will_fusion_create_cycle`` and the backend."""
        if len(self.state.members[a]) + len(self.state.members[b]) > INDUCTOR_MAX_FUSION_SIZE:
            return False
        if not inductor_can_fuse(self.fused[a], self.fused[b]):
            return False
        return not check_cycle or self.state.can_merge(a, b, self.backend)

    def score(self, a: int, b: int) -> tuple[int, int, int, int]:
        """``InductorChoices.score_fusion``: (template score, same kind, bytes saved, proximity)."""
        members = self.state.members
        memory = self.shared_bytes(a, b)
        template_score = 1 + int(not self.fused[a].has_template and memory > 0)  # epilogue_fusion_first=False
        same_kind = int(self.fused[a].has_reduction == self.fused[b].has_reduction and memory > 0)
        proximity = -max(abs(members[a][0] - members[b][-1]), abs(members[b][0] - members[a][-1]))
        return template_score, same_kind, memory, proximity

    def shared_bytes(self, a: int, b: int) -> int:
        """Bytes of the buffers ``a`` writes and ``b`` reads: the memory traffic fusion saves."""
        group_of, nodes = self.state.group_of, self.graph.nodes
        tensors = {(e.src, e.src_output) for n in self.state.members[b] for e in self.in_edges[n]
                   if group_of[e.src] == a}
        return sum(nodes[src].outputs[output].size_bytes for src, output in tensors)
