"""The analytical latency backend: a roofline per fused group, microseconds per evaluation.

A group (one fused kernel) costs ``max(compute_us, memory_us) * wave_factor + overhead_us``:

- ``compute_us``: each node's FLOPs at the schedule's peak for its op kind (conv/matmul reach
  more of the peak than reductions or opaque calls; tensor cores only for half precision);
- ``memory_us``: only the bytes the kernel really moves: inputs that do not come from inside
  the group (edges from other groups, graph inputs, parameters) and outputs consumed outside
  the group or leaving the graph. Fusion removes exactly the intermediate tensors;
- ``wave_factor`` (≥ 1): the group's output is cut into tiles (CPU chunks, GPU thread
  blocks); the last wave of tiles leaves compute units idle, and a co-running workload
  holding a share of the device leaves fewer units for the waves;
- ``overhead_us``: kernel launch (plus thread-pool fork/join for parallel CPU schedules).

A calibrated profile scales the compute and memory time of each schedule
(``schedule_efficiency``) and, under each schedule, of each op class: convolutions and
pooling, matmuls, transcendental ops (``class_efficiency``, ``devices.op_class``).

Two entry points share one per-graph precomputation (cached by graph hash): the scalar
``group_latency`` (a few µs, called by the environment after every merge) and the
vectorized ``evaluate`` (whole plans, or batches of plans, without a Python loop over groups).
What of it depends on the graph's structure alone is kept per ``graph.structure_key``, so an
instance of a template at new dims costs only its numbers (about 0.5 ms for ResNet-50).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fusiongym.graphs import ComputeGraph, GraphError, OpKind, TensorSpec
from fusiongym.graphs.ir import StructureCache, dtype_bytes
from fusiongym.graphs.workloads import LoadShare

from . import _roofline
from .backend import GroupLatency, LatencyBackend, LatencyReport, register_backend
from .devices import OP_CLASSES, DeviceProfile, get_profile, op_class
from .plan import Plan, require_legal

MODEL_VERSION = "1"

# Share of a schedule's peak FLOP/s an op of each kind reaches. Elementwise code issues one
# multiply or add per element (no FMA pairing), reductions carry a serial dependency,
# conv/matmul are what compilers tile best, opaque calls (sort, scatter, ...) defeat both.
KIND_COMPUTE_EFFICIENCY = {
    OpKind.ELEMWISE: 0.5, OpKind.BROADCAST: 0.5, OpKind.INJECTIVE: 0.5, OpKind.COMM_REDUCE: 0.35,
    OpKind.OUT_ELEMWISE_FUSABLE: 0.75, OpKind.TUPLE: 1.0, OpKind.OPAQUE: 0.25,
}
# Share of the bandwidth an op's accesses reach: streaming elementwise access is best,
# transposes (injective) and reductions stride, opaque ops gather and scatter.
KIND_BANDWIDTH_EFFICIENCY = {
    OpKind.ELEMWISE: 0.9, OpKind.BROADCAST: 0.9, OpKind.INJECTIVE: 0.7, OpKind.COMM_REDUCE: 0.65,
    OpKind.OUT_ELEMWISE_FUSABLE: 0.8, OpKind.TUPLE: 1.0, OpKind.OPAQUE: 0.45,
}
# One CPU core alone draws this share of a small machine's DRAM bandwidth (two saturate it).
UNIT_BANDWIDTH_SHARE = 0.6
# Scalar loops keep too few cache misses in flight to saturate DRAM.
SCALAR_BANDWIDTH_SHARE = 0.5
# A cache-blocking tile that does not fit its core's cache share re-reads operands from DRAM.
TILE_SPILL_BANDWIDTH = 0.3
COST_CACHE_SIZE = 128


@dataclass(frozen=True)
class ScheduleModel:
    """How one schedule changes the roofline: parallelism, SIMD, tiling, efficiencies.

    ``heavy_*`` multiply the efficiencies of compute-heavy ops (OUT_ELEMWISE_FUSABLE:
    conv, matmul, pooling), ``other_*`` those of all other ops. ``tile_elems`` output
    elements form one parallel work item; a compute unit runs ``slots_per_unit`` at once.
    ``cache_tile`` is N of an N×N cache-blocking tile (0: none): when the working set of a
    heavy op's tile fits its core's cache share, operands are reused from cache and the
    effective bandwidth exceeds DRAM's (``heavy_bandwidth`` > 1); otherwise it spills.
    """

    name: str
    all_units: bool
    vectorized: bool
    tensor_cores: bool
    tile_elems: int
    slots_per_unit: int
    heavy_compute: float
    heavy_bandwidth: float
    other_compute: float
    other_bandwidth: float
    cache_tile: int = 0


# Without cache blocking a conv/matmul re-reads its operands: DRAM traffic about twice the
# minimal bytes, hence heavy_bandwidth 0.5. Tiling costs other ops a little loop overhead.
CPU_SCHEDULE_MODELS = {m.name: m for m in (
    ScheduleModel("default", False, False, False, 1, 1, 1.0, 0.5, 1.0, 1.0),
    ScheduleModel("parallel", True, False, False, 1024, 1, 1.0, 0.5, 1.0, 1.0),
    ScheduleModel("parallel_vectorize", True, True, False, 1024, 1, 1.0, 0.5, 1.0, 1.0),
    ScheduleModel("tiled_16", True, True, False, 16 * 16, 1, 1.1, 2.0, 0.95, 0.95, cache_tile=16),
    ScheduleModel("tiled_32", True, True, False, 32 * 32, 1, 1.2, 2.0, 0.95, 0.95, cache_tile=32),
    ScheduleModel("tiled_64", True, True, False, 64 * 64, 1, 1.25, 2.0, 0.95, 0.95, cache_tile=64),
)}
# dlight's default: Fallback binds 1024 threads per block (2 resident per SM of 2048 threads)
# and Matmul rules use shared-memory tiling and tensor cores. The fixed thread-count variants
# are plain elementwise-style schedules: fine for memory-bound ops, poor for conv/matmul.
# Resident blocks per SM: min(32, 2048 / threads).
GPU_SCHEDULE_MODELS = {m.name: m for m in (
    ScheduleModel("default", True, True, True, 1024, 2, 1.0, 1.0, 1.0, 0.92),
    ScheduleModel("threads_64", True, True, False, 64, 32, 0.25, 0.5, 0.9, 0.85),
    ScheduleModel("threads_128", True, True, False, 128, 16, 0.3, 0.5, 1.0, 0.95),
    ScheduleModel("threads_512", True, True, False, 512, 4, 0.3, 0.5, 1.0, 1.0),
)}


def schedule_models(profile: DeviceProfile) -> dict[str, ScheduleModel]:
    """The schedule models of ``profile``'s device kind, keyed by schedule name."""
    return CPU_SCHEDULE_MODELS if profile.kind == "cpu" else GPU_SCHEDULE_MODELS


@dataclass(frozen=True)
class GroupTerms:
    """The roofline of one group, term by term (µs); ``total_us`` is what the backend reports."""

    compute_us: float   # FLOP time at the schedule's effective peak, before wave quantization
    memory_us: float    # external bytes at the effective bandwidth (bandwidth load included)
    wave_factor: float  # ≥ 1: work-item slots paid for / slots used
    overhead_us: float  # launch (+ fork/join)

    @property
    def total_us(self) -> float:
        return max(self.compute_us, self.memory_us) * self.wave_factor + self.overhead_us

    @property
    def bound(self) -> str:
        return "compute" if self.compute_us >= self.memory_us else "memory"


@dataclass(frozen=True)
class _GraphCosts:
    """Everything a group evaluation needs, precomputed once per graph (S schedules).

    Numpy arrays serve ``evaluate``; the ``*_rows`` / per-node lists serve the scalar path,
    where indexing Python lists is several times faster than indexing numpy arrays.
    """

    num_nodes: int
    node_index: np.ndarray          # [N] intp, 0..N-1
    compute_us: np.ndarray          # [S*N] µs of node n's FLOPs under schedule s at index s*N+n
    us_per_byte: np.ndarray         # [S*N] µs per byte moved by node n under schedule s
    own_read_bytes: np.ndarray      # [N] input bytes not carried by an edge (params, graph inputs)
    edge_src: np.ndarray            # [E] intp
    edge_dst: np.ndarray            # [E] intp
    edge_read_bytes: np.ndarray     # [E] bytes dst reads through the edge when src is outside
    edge_tensor: np.ndarray         # [E] intp, the tensor the edge carries
    tensor_node: np.ndarray         # [T] intp, producer of each tensor
    tensor_bytes: np.ndarray        # [T]
    tensor_elems: np.ndarray        # [T]
    tensor_always_written: np.ndarray  # [T] bool: graph outputs and tensors nobody consumes
    one_tensor_per_node: bool       # tensor t is node t's only output (most graphs)
    schedule_table: np.ndarray      # [S, 4] columns as in ``schedule_rows``
    schedule_rows: list[tuple[float, float, float, float]]  # [S] (tile elems, slots left under
                                    # load, wave scale = unloaded slots / time share, overhead µs)
    compute_rows: list[list[float]]        # [S][N]
    byte_rows: list[list[float]]           # [S][N]
    own_read_list: list[float]             # [N]
    in_edges: list[tuple[tuple[int, float], ...]]                    # [N] (src, read bytes)
    fixed_out: list[tuple[float, float]]                             # [N] (bytes, elems) always written
    shared_out: list[tuple[tuple[float, float, tuple[int, ...]], ...]]  # [N] (bytes, elems, consumers)
    neighbors: list[frozenset[int]]                                  # [N] producers and consumers


class AnalyticalBackend(LatencyBackend):
    """Roofline latency of fused groups on a device profile; deterministic, microseconds.

    ``device``: a profile name (``cpu``, ``h100_sxm``, ``a100``, ``l4``) or a DeviceProfile.
    ``load``: device load applied to every graph, overriding ``graph.context["device_load"]``
    (a float share of both compute and bandwidth, or ``{"compute": c, "bandwidth": b}``);
    None reads each graph's context. ``max_group_size``: larger groups are not compiled.
    ``unfusable_kinds``: op kinds (labels such as ``"opaque"``, or ``OpKind``) whose ops never
    share a kernel, TVM FuseOps' rule for opaque ops; none by default.

    ``platform_dependent`` is True when ``device="cpu"`` found this machine's calibrated
    profile (``fusiongym profile --calibrate``): the latencies then describe this machine.
    """

    name = "analytical"
    deterministic = True

    def __init__(self, device: str | DeviceProfile = "cpu",
                 load: float | Mapping[str, float] | None = None, max_group_size: int = 64,
                 unfusable_kinds: Sequence[str | OpKind] = ()) -> None:
        super().__init__()
        self.profile = device if isinstance(device, DeviceProfile) else get_profile(device)
        self.platform_dependent = isinstance(device, str) and self.profile != get_profile(device, use_calibrated=False)
        self.device = self.profile.name
        self.schedules = self.profile.schedules
        self.load_override = None if load is None else LoadShare.parse(load)
        if max_group_size < 1:
            raise ValueError(f"max_group_size must be ≥ 1, got {max_group_size}")
        self.max_group_size = max_group_size
        self.unfusable_kinds = frozenset(_op_kind(kind) for kind in unfusable_kinds)
        models = schedule_models(self.profile)
        self._models = tuple(models[s] for s in self.schedules)
        self._schedule_ids = {s: i for i, s in enumerate(self.schedules)}
        self._costs_cache: OrderedDict[str, _GraphCosts] = OrderedDict()
        self._structure = StructureCache(cost_structure, COST_CACHE_SIZE)

    # ------------------------------------------------------------------ protocol
    def version(self) -> str:
        return f"{MODEL_VERSION}+{self.profile.digest()}"

    def describe(self) -> dict:
        return {**super().describe(), "profile": self.profile.to_dict(),
                "max_group_size": self.max_group_size,
                "unfusable_kinds": sorted(kind.label for kind in self.unfusable_kinds),
                "load": None if self.load_override is None else asdict(self.load_override)}

    def group_latency(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        compute_us, memory_us, wave_factor, overhead_us = self._group_terms(graph, nodes, schedule)
        return GroupLatency(max(compute_us, memory_us) * wave_factor + overhead_us, "estimated")

    def group_terms(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupTerms:
        """The roofline terms of one group, for explanations and calibration."""
        return GroupTerms(*self._group_terms(graph, nodes, schedule))

    def group_constraint(self, graph: ComputeGraph, nodes: Sequence[int]) -> str | None:
        """Groups above ``max_group_size``, groups that are not weakly connected and groups
        holding an op of an unfusable kind with anything else are refused."""
        if len(nodes) > self.max_group_size:
            return f"group of {len(nodes)} nodes exceeds max_group_size={self.max_group_size}"
        if not self._is_weakly_connected(self._costs(graph), nodes):
            return "group is not weakly connected (its nodes share no producer-consumer path)"
        if len(nodes) > 1:
            return self._unfusable_reason(graph, nodes)
        return None

    def merge_constraint(self, graph: ComputeGraph, group_a: Sequence[int], group_b: Sequence[int]) -> str | None:
        """The size limit and unfusable kinds: two connected groups joined by an edge stay
        connected, and an op of an unfusable kind is always alone, so only singletons need a look."""
        size = len(group_a) + len(group_b)
        if size > self.max_group_size:
            return f"group of {size} nodes exceeds max_group_size={self.max_group_size}"
        if self.unfusable_kinds:
            return self._unfusable_reason(graph, [group[0] for group in (group_a, group_b) if len(group) == 1])
        return None

    def _unfusable_reason(self, graph: ComputeGraph, nodes: Sequence[int]) -> str | None:
        """Why the first of ``nodes`` of an unfusable kind cannot join a kernel with others, or None."""
        for v in nodes:
            node = graph.nodes[v]
            if node.kind in self.unfusable_kinds:
                kinds = sorted(kind.label for kind in self.unfusable_kinds)
                return (f"node {v} ({node.op}) is of kind {node.kind.label!r}, which never shares a kernel on "
                        f"this backend (unfusable_kinds={kinds})")
        return None

    def latency(self, graph: ComputeGraph, plan: Plan, check: bool = True) -> LatencyReport:
        """Total latency of ``plan``, all groups in one vectorized ``evaluate`` call."""
        if check:
            require_legal(graph, plan, self)
        group_us = self.evaluate(graph, plan.group_of(graph.num_nodes), self.schedule_ids(plan.schedules))
        count = plan.num_groups
        return LatencyReport(total_us=float(group_us.sum()), group_us=group_us.tolist(),
                             origins=["estimated"] * count, spreads=[0.0] * count,
                             backend=self.name, device=self.device)

    # ---------------------------------------------------------------- vectorized
    def schedule_ids(self, schedules: Sequence[str]) -> np.ndarray:
        """[len(schedules)] int: positions in ``self.schedules``, the ids ``evaluate`` takes."""
        return np.array([self._schedule_id(s) for s in schedules], dtype=np.intp)

    def evaluate(self, graph: ComputeGraph, group_of: np.ndarray,
                 schedule_of_group: np.ndarray) -> np.ndarray:
        """Latency (µs) of every group of a plan, or of a batch of plans, with no loop over groups.

        ``group_of``: [N] group label per node, labels 0..G-1 (every label used);
        ``schedule_of_group``: [G] schedule ids (positions in ``self.schedules``). Returns [G].
        Batched: ``group_of`` [B, N] and ``schedule_of_group`` [B, G] (plans padded to a
        common G; a label with no nodes costs only the overhead) return [B, G].
        Convexity and group constraints are not checked here (``latency`` checks them).
        One plan is priced by one C pass (``reward/roofline.c``), a batch by numpy bincounts.
        """
        costs = self._costs(graph)
        labels = np.asarray(group_of)
        schedules = np.asarray(schedule_of_group)
        if labels.ndim == 1 and schedules.ndim == 1 and len(labels) == costs.num_nodes:
            return _one_plan_us(costs, labels, schedules)
        batched = labels.ndim == 2
        labels, schedules = np.atleast_2d(labels), np.atleast_2d(schedules)
        batch, num_nodes = labels.shape
        groups = schedules.shape[1]
        if num_nodes != costs.num_nodes or schedules.shape[0] != batch or labels.ndim != 2:
            raise ValueError(f"evaluate needs group_of [N={costs.num_nodes}] or [B, N] and schedule_of_group "
                             f"[G] or [B, G]; got {np.shape(group_of)} and {np.shape(schedule_of_group)}")
        if labels.min() < 0 or labels.max() >= groups:
            raise ValueError(f"group labels must lie in 0..{groups - 1} "
                             f"(schedule_of_group has {groups} entries)")
        cells, num_tensors = batch * groups, costs.tensor_node.shape[0]
        # [B, N] group ids made unique across the batch: 0..B*G-1
        flat_group = labels if batch == 1 else labels + (np.arange(batch) * groups)[:, None]
        flat_schedule = schedules.ravel()                                               # [B*G]
        cell = flat_schedule[flat_group] * num_nodes + costs.node_index                 # [B, N] into [S*N]
        crossing = flat_group[:, costs.edge_src] != flat_group[:, costs.edge_dst]       # [B, E]
        crossed = np.bincount(_per_plan(costs.edge_tensor, num_tensors, batch), weights=crossing.ravel(),
                              minlength=batch * num_tensors)                            # [B*T]
        written = (crossed > 0).reshape(batch, num_tensors) | costs.tensor_always_written  # [B, T]
        written_bytes, written_elems = _per_node(costs, written * costs.tensor_bytes,
                                                 written * costs.tensor_elems)          # [B, N] each
        read_in_bytes = np.bincount(_per_plan(costs.edge_dst, num_nodes, batch), minlength=batch * num_nodes,
                                    weights=(crossing * costs.edge_read_bytes).ravel())  # [B*N]
        moved_bytes = costs.own_read_bytes + read_in_bytes.reshape(batch, num_nodes) + written_bytes  # [B, N]
        node_group = flat_group.ravel()                                                 # [B*N]
        memory_us = np.bincount(node_group, weights=(moved_bytes * costs.us_per_byte[cell]).ravel(),
                                minlength=cells)                                        # [B*G]
        compute_us = np.bincount(node_group, weights=costs.compute_us[cell].ravel(), minlength=cells)
        elems = np.bincount(node_group, weights=written_elems.ravel(), minlength=cells)
        tile_elems, slots_left, wave_scale, overhead_us = costs.schedule_table[flat_schedule].T  # 4 x [B*G]
        tiles = np.maximum(1.0, np.ceil(elems / tile_elems))
        wave_factor = np.ceil(tiles / slots_left) * wave_scale / tiles
        group_us = np.maximum(compute_us, memory_us) * wave_factor + overhead_us
        return group_us.reshape(batch, groups) if batched else group_us

    # -------------------------------------------------------------------- scalar
    def _group_terms(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str
                     ) -> tuple[float, float, float, float]:
        """(compute µs, memory µs, wave factor, overhead µs) of one group: a loop over its
        nodes and their edges on Python lists, the few µs the environment pays per merge."""
        costs = self._costs(graph)
        s = self._schedule_id(schedule)
        compute_row, byte_row = costs.compute_rows[s], costs.byte_rows[s]
        own_read, in_edges, fixed_out, shared_out = (
            costs.own_read_list, costs.in_edges, costs.fixed_out, costs.shared_out)
        members = set(nodes)
        compute_us = memory_us = elems = 0.0
        for n in nodes:
            read = own_read[n]
            for src, read_bytes in in_edges[n]:
                if src not in members:
                    read += read_bytes
            written, out_elems = fixed_out[n]
            for tensor_bytes, tensor_elems, consumers in shared_out[n]:
                for consumer in consumers:
                    if consumer not in members:
                        written += tensor_bytes
                        out_elems += tensor_elems
                        break
            memory_us += (read + written) * byte_row[n]
            compute_us += compute_row[n]
            elems += out_elems
        tile_elems, slots_left, wave_scale, overhead_us = costs.schedule_rows[s]
        tiles = max(1.0, math.ceil(elems / tile_elems))
        return compute_us, memory_us, math.ceil(tiles / slots_left) * wave_scale / tiles, overhead_us

    def _schedule_id(self, schedule: str) -> int:
        try:
            return self._schedule_ids[schedule]
        except KeyError:
            raise ValueError(f"schedule {schedule!r} is not offered by backend {self.name} on "
                             f"{self.device} (choices: {list(self.schedules)})") from None

    @staticmethod
    def _is_weakly_connected(costs: _GraphCosts, nodes: Sequence[int]) -> bool:
        members = set(nodes)
        if not members:
            return True
        start = next(iter(members))
        seen, frontier = {start}, [start]
        while frontier:
            for neighbor in costs.neighbors[frontier.pop()]:
                if neighbor in members and neighbor not in seen:
                    seen.add(neighbor)
                    frontier.append(neighbor)
        return len(seen) == len(members)

    # -------------------------------------------------------------- precompute
    def _costs(self, graph: ComputeGraph) -> _GraphCosts:
        key = graph.hash
        costs = self._costs_cache.get(key)
        if costs is None:
            load = self.load_override if self.load_override is not None else load_of(graph.context)
            costs = build_graph_costs(graph, self.profile, self._models, load, self._structure(graph))
            self._costs_cache[key] = costs
            if len(self._costs_cache) > COST_CACHE_SIZE:
                self._costs_cache.popitem(last=False)
        else:
            self._costs_cache.move_to_end(key)
        return costs


def _one_plan_us(costs: _GraphCosts, group_of: np.ndarray, schedule_of_group: np.ndarray) -> np.ndarray:
    """[G] µs of one plan: ``evaluate``'s numbers in one C pass (``reward/roofline.c``)."""
    group_us = np.empty(len(schedule_of_group), dtype=np.float64)
    _roofline.plan_us(np.ascontiguousarray(group_of, dtype=np.int64),
                      np.ascontiguousarray(schedule_of_group, dtype=np.int64), costs.compute_us, costs.us_per_byte,
                      costs.own_read_bytes, costs.edge_src, costs.edge_dst, costs.edge_read_bytes, costs.edge_tensor,
                      costs.tensor_node, costs.tensor_bytes, costs.tensor_elems,
                      costs.tensor_always_written.view(np.uint8), costs.schedule_table, group_us)
    return group_us


def _per_plan(index: np.ndarray, width: int, batch: int) -> np.ndarray:
    """[B*len(index)] ``index`` shifted by ``width`` per plan of a batch, for one bincount over all."""
    return index if batch == 1 else (index + (np.arange(batch) * width)[:, None]).ravel()


def _per_node(costs: _GraphCosts, *per_tensor: np.ndarray) -> list[np.ndarray]:
    """[B, T] tensor quantities summed onto their producers: [B, N] each."""
    if costs.one_tensor_per_node:
        return list(per_tensor)
    batch, num_nodes = per_tensor[0].shape[0], costs.num_nodes
    index = _per_plan(costs.tensor_node, num_nodes, batch)
    return [np.bincount(index, weights=values.ravel(), minlength=batch * num_nodes).reshape(batch, num_nodes)
            for values in per_tensor]


# ------------------------------------------------------------------ precomputation
@dataclass(frozen=True)
class _NodeFacts:
    """Per-node numbers the schedule models need ([N] arrays)."""

    flops: np.ndarray            # [N]
    compute_eff: np.ndarray      # [N] kind's share of peak
    bandwidth_eff: np.ndarray    # [N] kind's share of bandwidth
    heavy: np.ndarray            # [N] bool, OUT_ELEMWISE_FUSABLE
    op_class: np.ndarray         # [N] intp, index into OP_CLASSES
    half: np.ndarray             # [N] bool, fp16/bf16 output
    reduction_len: np.ndarray    # [N] FLOPs per output element / 2 (K of a matmul)
    elem_bytes: np.ndarray       # [N] bytes per output element


def _node_facts(graph: ComputeGraph, structure: "_CostStructure", tensor_elems: np.ndarray) -> _NodeFacts:
    out_elems = np.maximum(1.0, np.bincount(structure.tensor_node, weights=tensor_elems,
                                            minlength=structure.num_nodes))
    flops = graph.arrays.flops
    return _NodeFacts(
        flops=flops, compute_eff=structure.compute_eff, bandwidth_eff=structure.bandwidth_eff,
        heavy=structure.heavy, op_class=structure.op_class, half=structure.half,
        reduction_len=np.maximum(1.0, flops / (2.0 * out_elems)), elem_bytes=structure.elem_bytes,
    )


def _schedule_rates(profile: DeviceProfile, model: ScheduleModel, facts: _NodeFacts,
                    load: LoadShare) -> tuple[np.ndarray, np.ndarray]:
    """[N] effective FLOP/s and [N] effective bytes/s of each node under ``model``."""
    units_used = profile.compute_units if model.all_units else 1
    lane_share = 1.0 if model.vectorized else 1.0 / profile.vector_width
    unit_share = units_used / profile.compute_units
    use_half = model.tensor_cores and profile.half_flops_per_s is not None
    peak_flops_per_s = np.where(use_half & facts.heavy & facts.half,
                                profile.half_flops_per_s or 0.0, profile.fp32_flops_per_s)
    peak_flops_per_s = peak_flops_per_s * lane_share * unit_share
    bandwidth_bytes_per_s = (profile.memory_bandwidth_bytes_per_s
                             * min(1.0, units_used * UNIT_BANDWIDTH_SHARE)
                             * (1.0 if model.vectorized else SCALAR_BANDWIDTH_SHARE))
    compute_mult = np.where(facts.heavy, model.heavy_compute, model.other_compute)
    bandwidth_mult = np.where(facts.heavy, model.heavy_bandwidth, model.other_bandwidth)
    if model.cache_tile:
        bandwidth_mult = np.where(facts.heavy & ~_tile_fits_cache(profile, model.cache_tile, facts),
                                  bandwidth_mult * TILE_SPILL_BANDWIDTH, bandwidth_mult)
    efficiency = profile.efficiency_of(model.name) * _class_factors(profile, model.name)[facts.op_class]
    flops_per_s = peak_flops_per_s * facts.compute_eff * compute_mult * efficiency
    bytes_per_s = (bandwidth_bytes_per_s * facts.bandwidth_eff * bandwidth_mult * efficiency
                   * (1.0 - load.bandwidth))
    return flops_per_s, bytes_per_s


def _class_factors(profile: DeviceProfile, schedule: str) -> np.ndarray:
    """[len(OP_CLASSES)] the profile's time scale of each op class under ``schedule``."""
    return np.array([profile.class_factor(schedule, name) for name in OP_CLASSES])


def _tile_fits_cache(profile: DeviceProfile, tile: int, facts: _NodeFacts) -> np.ndarray:
    """[N] bool: an N×N output tile with its two K-long operand panels fits one core's cache share."""
    working_set_bytes = (2.0 * tile * facts.reduction_len + tile * tile) * facts.elem_bytes
    return working_set_bytes <= profile.cache_bytes / profile.compute_units


def _wave_constants(profile: DeviceProfile, model: ScheduleModel, load: LoadShare) -> tuple[float, float]:
    """(slots left to the schedule under load, wave scale) for ``wave_factor = waves * scale / tiles``.

    Co-running work holds ``load.compute`` of the units: the waves run on the whole units
    left; with less than one unit left the kernel also time-slices that unit. Unloaded and
    with a multiple of the slots in tiles, the factor is exactly 1.
    """
    units_used = profile.compute_units if model.all_units else 1
    available_units = min(float(units_used), profile.compute_units * (1.0 - load.compute))
    whole_units = max(1, math.floor(available_units + 1e-9))
    time_share = min(1.0, available_units)
    return float(whole_units * model.slots_per_unit), units_used * model.slots_per_unit / time_share


def build_graph_costs(graph: ComputeGraph, profile: DeviceProfile, models: Sequence[ScheduleModel],
                      load: LoadShare, structure: "_CostStructure | None" = None) -> _GraphCosts:
    """Precompute per-node, per-edge and per-tensor costs of ``graph`` under every schedule.

    ``structure``: ``cost_structure(graph)``, or that of a graph with the same
    ``structure_key`` (the backend keeps one per key); only the numbers are computed here.
    """
    if graph.is_template:
        raise GraphError(f"{graph.name} is a template over {sorted(graph.symbols)}; instantiate it first")
    s = structure if structure is not None else cost_structure(graph)
    tensor_bytes, tensor_elems = _tensor_sizes(graph, s)
    read_bytes = tensor_bytes[s.edge_tensor] * _edge_copies(graph, s)      # [E] bytes dst reads through the edge
    facts = _node_facts(graph, s, tensor_elems)
    rates = [_schedule_rates(profile, model, facts, load) for model in models]
    compute_us = np.stack([facts.flops / f * 1e6 for f, _ in rates])                                  # [S, N]
    us_per_byte = np.stack([1e6 / b for _, b in rates])                                              # [S, N]
    schedule_rows = [(float(model.tile_elems), *_wave_constants(profile, model, load),
                      profile.launch_overhead_us + (profile.parallel_launch_us if model.all_units else 0.0))
                     for model in models]
    own_read = np.maximum(0.0, graph.arrays.bytes_read
                          - np.bincount(s.edge_dst, weights=read_bytes, minlength=s.num_nodes))
    fixed_out, shared_out = _written_per_node(s, tensor_bytes, tensor_elems)
    return _GraphCosts(
        num_nodes=s.num_nodes, node_index=s.node_index,
        compute_us=compute_us.ravel(), us_per_byte=us_per_byte.ravel(), own_read_bytes=own_read,
        edge_src=s.edge_src, edge_dst=s.edge_dst, edge_read_bytes=read_bytes, edge_tensor=s.edge_tensor,
        tensor_node=s.tensor_node, tensor_bytes=tensor_bytes, tensor_elems=tensor_elems,
        tensor_always_written=s.tensor_always_written, one_tensor_per_node=s.one_tensor_per_node,
        schedule_table=np.array(schedule_rows, dtype=np.float64).reshape(len(models), 4),
        schedule_rows=schedule_rows,
        compute_rows=compute_us.tolist(), byte_rows=us_per_byte.tolist(), own_read_list=own_read.tolist(),
        in_edges=_per_node_tuples(zip(s.in_edge_src, read_bytes[s.in_edge_order].tolist()), s.in_edge_bounds),
        fixed_out=fixed_out, shared_out=shared_out, neighbors=s.neighbors,
    )


def _written_per_node(s: "_CostStructure", tensor_bytes: np.ndarray, tensor_elems: np.ndarray
                      ) -> tuple[list[tuple[float, float]], list[tuple[tuple[float, float, tuple[int, ...]], ...]]]:
    """The scalar path's outputs per node: (bytes, elements) summed over the tensors always
    written, and (bytes, elements, consumers) of each tensor written only if a consumer is outside."""
    always, shared = s.always_written_tensors, s.shared_tensors
    fixed_bytes, fixed_elems = (np.bincount(s.tensor_node[always], weights=values[always], minlength=s.num_nodes)
                                for values in (tensor_bytes, tensor_elems))
    shared_out = _per_node_tuples(zip(tensor_bytes[shared].tolist(), tensor_elems[shared].tolist(),
                                      s.shared_consumers), s.shared_bounds)
    return list(zip(fixed_bytes.tolist(), fixed_elems.tolist())), shared_out


@dataclass(frozen=True)
class _CostStructure:
    """What ``build_graph_costs`` reads from a graph's structure alone (N nodes, E edges, T
    tensors: every node output, in node order). Equal for graphs with one ``structure_key``
    (instances of a template with the same live nodes), so the backend builds it once per
    key and each new instance costs only its numbers."""

    num_nodes: int
    node_index: np.ndarray          # [N] intp, 0..N-1
    tensor_node: np.ndarray         # [T] intp, producer of each tensor
    tensor_dtype_bytes: np.ndarray  # [T]
    sized_by_node: tuple[tuple[int, int, int], ...]  # (tensor, node, output) whose size is read off
                                    # the node (its producer has other outputs, or an odd dtype size)
    tensor_always_written: np.ndarray  # [T] bool: graph outputs and tensors nobody consumes
    always_written_tensors: np.ndarray  # ids of those tensors
    shared_tensors: np.ndarray      # ids of the others (grouped by producer)
    shared_consumers: list[tuple[int, ...]]  # their consumers
    shared_bounds: list[int]        # [N + 1] node n's shared tensors: shared_tensors[b[n]:b[n+1]]
    one_tensor_per_node: bool       # tensor t is node t's only output (most graphs)
    edge_src: np.ndarray            # [E] intp
    edge_dst: np.ndarray            # [E] intp
    edge_tensor: np.ndarray         # [E] intp, the tensor the edge carries
    repeated_inputs: tuple[tuple[int, tuple[int, ...]], ...]  # (node, its in-edges) for nodes with
                                    # two or more non-parameter inputs: their edges may carry copies
    in_edge_order: np.ndarray       # [E] edge ids grouped by consumer, in edge order
    in_edge_src: list[int]          # [E] their producers
    in_edge_bounds: list[int]       # [N + 1]
    compute_eff: np.ndarray         # [N] kind's share of peak
    bandwidth_eff: np.ndarray       # [N] kind's share of bandwidth
    heavy: np.ndarray               # [N] bool, OUT_ELEMWISE_FUSABLE
    op_class: np.ndarray            # [N] intp, index into OP_CLASSES
    half: np.ndarray                # [N] bool, fp16/bf16 first output
    elem_bytes: np.ndarray          # [N] bytes per element of the first output
    neighbors: list[frozenset[int]]  # [N] producers and consumers


def cost_structure(graph: ComputeGraph) -> _CostStructure:
    """The structure-only part of ``build_graph_costs(graph, ...)``."""
    nodes, num_nodes = graph.nodes, graph.num_nodes
    offset = np.cumsum([0] + [len(n.outputs) for n in nodes]).tolist()          # [N + 1]
    tensor_node = np.repeat(np.arange(num_nodes, dtype=np.intp), np.diff(offset))
    tensor_dtypes = [spec.dtype for n in nodes for spec in n.outputs]
    edge_src = np.array([e.src for e in graph.edges], dtype=np.intp)
    edge_dst = np.array([e.dst for e in graph.edges], dtype=np.intp)
    edge_tensor = np.array([offset[e.src] + e.src_output for e in graph.edges], dtype=np.intp)
    consumed = np.zeros(len(tensor_node), dtype=bool)
    consumed[edge_tensor] = True
    is_output = np.zeros(len(tensor_node), dtype=bool)
    is_output[[offset[n] + output for n, output in graph.outputs]] = True
    always_written = is_output | ~consumed
    shared = np.flatnonzero(~always_written)
    consumers: list[list[int]] = [[] for _ in tensor_node]
    for tensor, dst in zip(edge_tensor.tolist(), edge_dst.tolist()):
        consumers[tensor].append(dst)
    in_edge_order = np.argsort(edge_dst, kind="stable")
    in_edges = np.split(in_edge_order, np.cumsum(np.bincount(edge_dst, minlength=num_nodes))[:-1])
    first_dtype = [n.outputs[0].dtype if n.outputs else "float32" for n in nodes]
    kinds = [n.kind for n in nodes]
    return _CostStructure(
        num_nodes=num_nodes, node_index=np.arange(num_nodes, dtype=np.intp), tensor_node=tensor_node,
        tensor_dtype_bytes=np.array([dtype_bytes(d) for d in tensor_dtypes], dtype=np.float64),
        sized_by_node=tuple((offset[n] + i, n, i) for n, node in enumerate(nodes) for i, spec in enumerate(node.outputs)
                            if len(node.outputs) > 1 or not _is_power_of_two(dtype_bytes(spec.dtype))),
        tensor_always_written=always_written, always_written_tensors=np.flatnonzero(always_written),
        shared_tensors=shared, shared_consumers=[tuple(consumers[t]) for t in shared.tolist()],
        shared_bounds=_bounds(tensor_node[shared], num_nodes),
        one_tensor_per_node=bool(len(tensor_node) == num_nodes and (tensor_node == np.arange(num_nodes)).all()),
        edge_src=edge_src, edge_dst=edge_dst, edge_tensor=edge_tensor,
        repeated_inputs=tuple((n, tuple(in_edges[n].tolist())) for n, node in enumerate(nodes)
                              if sum(not t.is_param for t in node.inputs) >= 2 and in_edges[n].size),
        in_edge_order=in_edge_order, in_edge_src=edge_src[in_edge_order].tolist(),
        in_edge_bounds=_bounds(edge_dst, num_nodes),
        compute_eff=np.array([KIND_COMPUTE_EFFICIENCY[k] for k in kinds]),
        bandwidth_eff=np.array([KIND_BANDWIDTH_EFFICIENCY[k] for k in kinds]),
        heavy=np.array([k == OpKind.OUT_ELEMWISE_FUSABLE for k in kinds], dtype=bool),
        op_class=np.array([OP_CLASSES.index(op_class(n.op)) for n in nodes], dtype=np.intp),
        half=np.array([d in ("float16", "bfloat16") for d in first_dtype], dtype=bool),
        elem_bytes=np.array([dtype_bytes(d) for d in first_dtype], dtype=np.float64),
        neighbors=_neighbors(graph),
    )


def _bounds(owner: np.ndarray, num_nodes: int) -> list[int]:
    """[N + 1] where each node's run starts in a list grouped by (non-decreasing) ``owner``."""
    return [0] + np.cumsum(np.bincount(owner, minlength=num_nodes)).tolist()


def _per_node_tuples(items: Iterable, bounds: list[int]) -> list[tuple]:
    """``items`` (grouped by node) cut into one tuple per node at ``bounds``."""
    flat = list(items)
    return [tuple(flat[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])]


def _neighbors(graph: ComputeGraph) -> list[frozenset[int]]:
    neighbors: list[set[int]] = [set() for _ in range(graph.num_nodes)]
    for edge in graph.edges:
        neighbors[edge.src].add(edge.dst)
        neighbors[edge.dst].add(edge.src)
    return [frozenset(n) for n in neighbors]


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _tensor_sizes(graph: ComputeGraph, structure: _CostStructure) -> tuple[np.ndarray, np.ndarray]:
    """[T] bytes and [T] elements of every tensor.

    A node's only output has the node's written bytes (``arrays``); its elements are those
    bytes over the dtype size, exact in float64 for power-of-two sizes. Other tensors are
    sized from their spec.
    """
    tensor_bytes = graph.arrays.bytes_written[structure.tensor_node]
    tensor_elems = tensor_bytes / structure.tensor_dtype_bytes
    for tensor, node, output in structure.sized_by_node:
        spec = graph.nodes[node].outputs[output]
        tensor_bytes[tensor] = float(spec.numel * dtype_bytes(spec.dtype))
        tensor_elems[tensor] = float(spec.numel)
    return tensor_bytes, tensor_elems


def _edge_copies(graph: ComputeGraph, structure: _CostStructure) -> np.ndarray:
    """[E] copies of its tensor each edge carries into its consumer.

    An edge is stored once even when its consumer reads the tensor twice (``x * x``), while
    the consumer's ``inputs`` list it twice: the edge carries as many copies as the
    consumer has non-parameter inputs of that shape and dtype, shared among its in-edges of
    that shape and dtype, so fusing ``x`` into ``x * x`` removes both reads. A consumer with
    at most one non-parameter input reads one copy.
    """
    copies = np.ones(structure.edge_src.shape[0])
    for node, in_edges in structure.repeated_inputs:
        keys = [_spec_key(graph.nodes[e.src].outputs[e.src_output]) for e in map(graph.edges.__getitem__, in_edges)]
        edges_alike = Counter(keys)
        inputs_alike = Counter(_spec_key(t) for t in graph.nodes[node].inputs if not t.is_param)
        copies[list(in_edges)] = [max(1.0, inputs_alike[key] / edges_alike[key]) for key in keys]
    return copies


def _spec_key(spec: TensorSpec) -> tuple:
    return spec.shape, spec.dtype


def _op_kind(kind: str | OpKind) -> OpKind:
    """An OpKind from itself or its label (``"opaque"``, ``"comm-reduce"``, ...)."""
    if isinstance(kind, OpKind):
        return kind
    by_label = {k.label: k for k in OpKind}
    if kind not in by_label:
        raise ValueError(f"unknown op kind {kind!r} in unfusable_kinds; choose among {sorted(by_label)}")
    return by_label[kind]


def load_of(context: Mapping[str, Any]) -> LoadShare:
    """The device load a graph's context names (none: an idle device)."""
    return LoadShare.parse(context.get("device_load"))


register_backend("analytical", AnalyticalBackend)
