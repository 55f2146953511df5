"""FusionEnv-v0: choose the fusion plan and kernel schedules of a compute graph at run time.

An episode draws a workload, samples the context it meets at run time (input shapes, MoE
routing, device load) and hands the agent the concrete graph with every operator in its
own kernel (or TVM's default plan). Each step fuses two groups along an edge, picks the
schedule of a group, or stops; the reward comes from the latency backend. Action layout:
``fusiongym.envs.actions``; observation keys and features: the README.

Everything that walks the graph happens in ``reset`` and is cached per graph (what depends
on its structure alone per ``graph.structure_key``, once for all instances of a template),
so ``step`` touches only the merged group and its neighbours (``fusiongym.envs.partition``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence, SupportsFloat

import gymnasium as gym
import numpy as np

from fusiongym.graphs import ComputeGraph
from fusiongym.graphs.ir import StructureCache
from fusiongym.graphs.workloads import Workload, get_workload, load_suite, suite_names
from fusiongym.reward import LatencyBackend, Plan, require_legal

from .actions import FUSE, SCHEDULE, STOP, ActionLayout, LegalActionSpace
from .backends import make_backend
from .observation import GraphFeatures, ObservationBuffers, observation_space
from .partition import GraphStructure, Partition, PartitionSnapshot
from .render import ansi_table, draw_plan
from .replay import rebuild_graph, replay_state
from .rewards import get_reward

DEFAULT_MAX_NODES = 1024
DEFAULT_MAX_EDGES = 2048
# An episode has at most N - 1 merges, one schedule per group ever formed (< 2N) and a stop.
MAX_EPISODE_STEPS = 4 * DEFAULT_MAX_NODES
STARTS = ("singletons", "tvm_default")
RESET_OPTIONS = ("workload", "dims", "routing", "device_load", "graph")
UINT16_LIMIT = 65535   # node ids travel as uint16 in the observation
GRAPH_CACHE_SIZE = 32  # prepared graphs kept per env (cached reset)
STATE_FORMAT = "fusiongym.EnvState/1"

WorkloadSource = Workload | ComputeGraph


@dataclass
class _Prepared:
    """Everything ``reset`` needs for one concrete graph, computed once and cached."""

    graph: ComputeGraph
    workload: str
    partition: Partition
    start: PartitionSnapshot
    start_plan: Plan | None        # None: singletons
    features: GraphFeatures
    unfused_us: float
    tvm_default_us: float | None


class FusionEnv(gym.Env[dict, int]):
    """Operator fusion and kernel scheduling as a Gymnasium environment.

    Args:
        workloads: a suite name (``"train"``), a workload name, a ``Workload``, a fixed
            ``ComputeGraph``, or a list mixing these.
        backend: a registered backend name (``"analytical"``, ``"tvm"``, ``"torch"``,
            ``"learned"``) or a ``LatencyBackend``.
        device: where a backend given by name runs: a device profile for ``"analytical"``
            (``"cpu"``, ``"h100_sxm"``, ...), ``"cpu"`` or ``"cuda"`` for ``"tvm"`` and ``"torch"``.
        backend_options: further constructor arguments of a backend given by name
            (e.g. ``{"max_group_size": 32, "unfusable_kinds": ["opaque"]}`` for ``"analytical"``).
        max_nodes, max_edges: padding sizes of the observation and action space; larger
            graphs are rejected. Raise ``max_episode_steps`` with them (4 x max_nodes).
        reward: ``"latency_delta"`` (dense), ``"neg_latency"`` or ``"speedup_vs_tvm"`` (sparse).
        schedule_actions: offer "set schedule" actions (otherwise every group keeps "default").
        start: ``"singletons"`` (every op its own kernel) or ``"tvm_default"`` (TVM's FuseOps plan).
        render_mode: ``"ansi"`` (group table) or ``"rgb_array"`` (drawn graph).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 2}

    def __init__(
        self,
        workloads: str | WorkloadSource | Sequence[str | WorkloadSource] = "train",
        backend: str | LatencyBackend = "analytical",
        device: str = "cpu",
        backend_options: dict[str, Any] | None = None,
        max_nodes: int = DEFAULT_MAX_NODES,
        max_edges: int = DEFAULT_MAX_EDGES,
        reward: str = "latency_delta",
        schedule_actions: bool = True,
        start: str = "singletons",
        render_mode: str | None = None,
    ) -> None:
        if not 1 <= max_nodes <= UINT16_LIMIT or not 1 <= max_edges:
            raise ValueError(f"need 1 <= max_nodes <= {UINT16_LIMIT} (uint16 node ids) and max_edges >= 1, "
                             f"got max_nodes={max_nodes}, max_edges={max_edges}")
        if start not in STARTS:
            raise ValueError(f"unknown start {start!r}; choose one of {STARTS}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; choose one of {self.metadata['render_modes']}")
        self.backend = _backend(backend, device, backend_options or {})
        self.reward_spec = get_reward(reward)
        self.reward_flags = self.reward_spec.flags(self.backend)
        self.start = start
        self.render_mode = render_mode
        self.max_nodes, self.max_edges = max_nodes, max_edges
        self.layout = ActionLayout(max_nodes, max_edges, tuple(self.backend.schedules) if schedule_actions else ())
        self._num_actions, self._stop, self._num_schedules = self.layout.n, self.layout.stop, self.layout.num_schedules
        self._sources = _resolve_workloads(workloads)
        for source in self._sources:
            if isinstance(source, ComputeGraph):
                self._check_fits(source)

        self._mask = np.zeros(self.layout.n, dtype=bool)   # [n] the action mask, updated in place
        self.action_space = LegalActionSpace(self.layout.n, self._mask)
        self.observation_space = observation_space(max_nodes, max_edges, self.layout.num_schedules)
        self._buffers = ObservationBuffers(self.observation_space)
        self._cache: OrderedDict[str, _Prepared] = OrderedDict()
        self._structure_of = StructureCache(GraphStructure.of, GRAPH_CACHE_SIZE)   # with its singletons start
        self._episode: _Prepared | None = None
        self._episode_seed: int | None = None
        self._actions: list[int] = []
        self._over = True

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        graph, workload = self._draw_graph(options or {})
        episode = self._prepare(graph, workload)
        self._episode = episode
        self._mask[:] = False
        episode.partition.restore(episode.start)
        self._mask[-1] = True
        p = episode.partition
        schedule_of_node = np.where(np.array(p.scheduled)[p.label], np.array(p.schedule)[p.label] + 1, 0)
        internal = p.label[p.structure.src] == p.label[p.structure.dst]   # [E] edges inside a start group
        self._buffers.reset(episode.features, p.label, schedule_of_node, internal, episode.unfused_us)
        self._buffers.progress(p.total_us / episode.unfused_us, p.num_groups / graph.num_nodes)
        self._actions = []
        self._over = False
        return self._buffers.observation(), self._info(with_plan=True)

    def step(self, action: int) -> tuple[dict, SupportsFloat, bool, bool, dict]:
        a = int(action)
        if self._over or not 0 <= a < self._num_actions or not self._mask[a]:
            raise ValueError(self._why_illegal(a))
        episode = self._episode
        p = episode.partition
        previous_us = p.total_us
        if a < self.max_edges:
            self._buffers.merged(p.merge(a))
        elif a != self._stop:
            node, schedule = divmod(a - self.max_edges, self._num_schedules)
            _, members = p.set_schedule(node, schedule)
            self._buffers.scheduled(members, schedule)
        self._actions.append(a)
        terminated = a == self._stop or not self._mask[:-1].any()
        self._over = terminated
        reward = self.reward_spec.fn(previous_us, p.total_us, episode.unfused_us, episode.tvm_default_us, terminated)
        self._buffers.progress(p.total_us / episode.unfused_us, p.num_groups / episode.graph.num_nodes)
        return self._buffers.observation(), reward, terminated, False, self._info(with_plan=terminated)

    def action_masks(self) -> np.ndarray:
        """[n] bool: the legal actions now (MaskablePPO's protocol); a copy."""
        return self._mask.copy()

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None or self._episode is None:
            return None
        p = self._episode.partition
        if self.render_mode == "ansi":
            return ansi_table(self._episode.graph, p, self._episode.workload, self._episode.unfused_us)
        return draw_plan(self._episode.graph, p.label, title=f"{self._episode.workload}: {p.num_groups} groups, "
                                                             f"{p.total_us:.1f} µs")

    # --------------------------------------------------------------- properties
    @property
    def graph(self) -> ComputeGraph | None:
        """The concrete graph of the current episode."""
        return self._episode.graph if self._episode else None

    @property
    def plan(self) -> Plan | None:
        """The current plan (groups and schedules)."""
        return self._episode.partition.plan() if self._episode else None

    @property
    def latency_us(self) -> float | None:
        return self._episode.partition.total_us if self._episode else None

    @property
    def state(self) -> dict:
        """The episode so far as a JSON-able dict; ``replay(state)`` rebuilds plan and latency."""
        if self._episode is None:
            raise RuntimeError("no episode yet: call reset() first")
        episode = self._episode
        start_plan = episode.start_plan
        return {
            "format": STATE_FORMAT,
            "workload": episode.workload,
            "seed": self._episode_seed,
            "graph_hash": episode.graph.hash,
            "graph_name": episode.graph.name,
            "context": json.loads(json.dumps(episode.graph.context)),
            "start": self.start,
            "start_plan": None if start_plan is None else {"groups": start_plan.groups,
                                                           "schedules": start_plan.schedules},
            "backend": self.backend.describe(),
            "reward": self.reward_spec.name,
            "actions": [self.layout.to_json(a) for a in self._actions],
            "latency_us": episode.partition.total_us,
        }

    def replay(self, state: dict) -> tuple[Plan, float]:
        """Re-apply a saved episode on this env's backend: (plan, latency in µs).

        On a deterministic backend the latency equals the one the episode reported, bit for bit.
        """
        return replay_state(self._graph_of_state(state), state, self.backend)

    # ------------------------------------------------------------------ helpers
    def _info(self, with_plan: bool) -> dict[str, Any]:
        """Latencies and the group count every step; the plan only at reset and on termination,
        since building it walks every group (~125 µs on ResNet-50, about three steps' time).
        ``env.unwrapped.plan`` gives it on demand, e.g. after a TimeLimit truncation."""
        episode = self._episode
        info = {
            "action_mask": self._mask.copy(),
            "latency_us": episode.partition.total_us,
            "unfused_latency_us": episode.unfused_us,
            "tvm_default_latency_us": episode.tvm_default_us,
            "num_groups": episode.partition.num_groups,
        }
        if with_plan:
            info["plan"] = json.loads(episode.partition.plan().to_json())
        return info

    def _draw_graph(self, options: dict[str, Any]) -> tuple[ComputeGraph, str]:
        """The episode's concrete graph: pinned by ``options`` or drawn with ``np_random``."""
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; allowed: {list(RESET_OPTIONS)}")
        self._episode_seed = int(self.np_random.integers(2**63 - 1))
        pins = {key: options[key] for key in ("dims", "routing", "device_load") if options.get(key) is not None}
        if options.get("graph") is not None:
            graph = options["graph"]
            if not isinstance(graph, ComputeGraph):
                raise ValueError(f"options['graph'] must be a ComputeGraph, got {type(graph).__name__}")
            if pins:
                raise ValueError(f"options {sorted(pins)} cannot be combined with a given graph")
            source: WorkloadSource = graph
        elif options.get("workload") is not None:
            source = self._find_source(options["workload"])
        else:
            source = self._sources[int(self.np_random.integers(len(self._sources)))]
        if isinstance(source, ComputeGraph):
            if pins:
                raise ValueError(f"graph {source.name} is fixed: options {sorted(pins)} cannot re-sample it")
            graph = source
        else:
            graph = source.sample(np.random.default_rng(self._episode_seed), **pins)
        self._check_fits(graph)
        return graph, _workload_name(source)

    def _find_source(self, name: str) -> WorkloadSource:
        for source in self._sources:
            if _workload_name(source) == name:
                return source
        return get_workload(name)  # any known workload; raises listing the names

    def _check_fits(self, graph: ComputeGraph) -> None:
        if graph.is_template:
            raise ValueError(f"graph {graph.name} is a template over dims {sorted(graph.symbols)}: "
                             f"instantiate it (graph.instantiate({{...}})) or pass a Workload")
        if graph.num_nodes > self.max_nodes or graph.num_edges > self.max_edges:
            raise ValueError(
                f"graph {graph.name} has {graph.num_nodes} nodes and {graph.num_edges} edges, over this env's "
                f"limits max_nodes={self.max_nodes}, max_edges={self.max_edges}; raise them, e.g. "
                f"gym.make('FusionEnv-v0', max_nodes={_ceil_pow2(graph.num_nodes)}, "
                f"max_edges={_ceil_pow2(graph.num_edges)}, max_episode_steps={4 * _ceil_pow2(graph.num_nodes)})")
        if graph.num_nodes == 0:
            raise ValueError(f"graph {graph.name} has no nodes")

    def _prepare(self, graph: ComputeGraph, workload: str) -> _Prepared:
        """Per-graph precomputation (structure, features, start state, baselines), cached by hash."""
        key = graph.hash
        prepared = self._cache.get(key)
        if prepared is not None:
            self._cache.move_to_end(key)
            prepared.workload = workload
            return prepared
        n, e, s = graph.num_nodes, graph.num_edges, self.layout.num_schedules
        schedule_ok = self._mask[self.max_edges:self.max_edges + n * s].reshape(n, s) if s else None
        partition = Partition(graph, self._structure_of(graph), self.backend, self._mask[:e], schedule_ok)
        singletons = Plan.singletons(graph)
        tvm_plan = None
        if self.start == "tvm_default" or self.reward_spec.needs_tvm_default:
            tvm_plan = _tvm_default_plan(graph)
        start_plan = tvm_plan if self.start == "tvm_default" else None
        if start_plan is not None:
            require_legal(graph, start_plan, self.backend)  # names the group the backend refuses
        start = partition.snapshot_of(start_plan or singletons)
        unfused_us = start.total_us if start_plan is None else sum(   # singletons start: priced already
            self.backend.latency(graph, singletons, check=False).group_us)
        tvm_default_us = None
        if tvm_plan is not None:
            tvm_default_us = start.total_us if start_plan is not None else sum(
                self.backend.latency(graph, tvm_plan, check=False).group_us)
        prepared = _Prepared(graph=graph, workload=workload, partition=partition, start=start,
                             start_plan=start_plan, features=GraphFeatures.of(graph, self.backend),
                             unfused_us=unfused_us, tvm_default_us=tvm_default_us)
        self._cache[key] = prepared
        if len(self._cache) > GRAPH_CACHE_SIZE:
            self._cache.popitem(last=False)
        return prepared

    def _graph_of_state(self, state: dict) -> ComputeGraph:
        known = {prepared.graph.hash: prepared.graph for prepared in self._cache.values()}
        known.update({s.hash: s for s in self._sources if isinstance(s, ComputeGraph)})
        return rebuild_graph(state, known)

    def _why_illegal(self, action: int) -> str:
        if self._episode is None:
            return "no episode yet: call reset() before step()"
        if self._over:
            return "the episode is over (stop, or no legal action was left): call reset()"
        kind, *args = self.layout.decode(action)
        graph, p = self._episode.graph, self._episode.partition
        if kind == FUSE:
            if args[0] >= graph.num_edges:
                return (f"action {action} fuses edge slot {args[0]}, but graph {graph.name} has only "
                        f"{graph.num_edges} edges (slots {graph.num_edges}..{self.max_edges - 1} are padding)")
            return p.why_not_merge(args[0])
        if kind == SCHEDULE:
            node, schedule = args
            if node >= graph.num_nodes:
                return (f"action {action} schedules node slot {node}, but graph {graph.name} has only "
                        f"{graph.num_nodes} nodes")
            x = p.label_list[node]
            return (f"action {action}: the group of node {node} (group {x}) already has its schedule set "
                    f"({self.layout.schedules[p.schedule[x]]!r}); fuse it with another group to schedule it again")
        return f"action {action} ({STOP}) is legal"


def _backend(backend: str | LatencyBackend, device: str, options: dict[str, Any]) -> LatencyBackend:
    if isinstance(backend, LatencyBackend):
        if options:
            raise ValueError(f"backend_options {sorted(options)} configure a backend given by name; pass them "
                             f"to the {type(backend).__name__} you built instead")
        return backend
    return make_backend(backend, device, **options)


def _resolve_workloads(workloads: Any) -> list[WorkloadSource]:
    """Suite names expand to their workloads; names resolve through the suites."""
    items = [workloads] if isinstance(workloads, (str, Workload, ComputeGraph)) else list(workloads)
    sources: list[WorkloadSource] = []
    for item in items:
        if isinstance(item, str):
            sources.extend(load_suite(item) if item in suite_names() else [get_workload(item)])
        elif isinstance(item, (Workload, ComputeGraph)):
            sources.append(item)
        else:
            raise ValueError(f"workloads entries must be suite or workload names, Workload objects or "
                             f"ComputeGraphs, got {type(item).__name__}")
    if not sources:
        raise ValueError("workloads is empty: give a suite name, workload names, Workloads or ComputeGraphs")
    return sources


def _workload_name(source: WorkloadSource) -> str:
    if isinstance(source, Workload):
        return source.name
    return str(source.context.get("workload", source.name))


def _tvm_default_plan(graph: ComputeGraph) -> Plan:
    if graph.relax_module is None and graph.source.get("kind") != "zoo":
        raise ValueError(f"TVM's default plan needs a graph imported through TVM (from_torch, from_relax or the "
                         f"zoo); graph {graph.name} has no Relax module. Use start='singletons' and a reward "
                         f"other than 'speedup_vs_tvm' for it")
    from fusiongym.reward.tvm_default import tvm_default_plan

    return tvm_default_plan(graph)


def _ceil_pow2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())
