"""The latency-backend protocol and the registry behind ``get_backend(name)``.

A backend answers one question: how long does this group of operators take as one kernel
with this schedule on this device? ``latency(graph, plan)`` sums the groups; re-evaluating
a plan after one merge only costs the new group: a measuring backend finds the others in
its measurement store, a deterministic one in a bounded memo of recent groups.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from fusiongym.graphs import ComputeGraph

from .plan import Plan, require_legal

ORIGINS = ("measured", "cached", "estimated")
MEMO_GROUPS = 1 << 16   # group latencies a deterministic backend remembers (least recently used dropped)


@dataclass(frozen=True)
class GroupLatency:
    """Latency of one group: where the number comes from and how noisy it is."""

    us: float
    origin: str          # what this call did: "measured" (timed now), "cached" (stored), "estimated" (model)
    spread: float = 0.0  # coefficient of variation of the repeats; 0 for estimates


@dataclass
class MeasurementStats:
    """What a real backend instance did: kernels compiled, timings taken, answers from the store."""

    compiles: int = 0
    measurements: int = 0
    cached: int = 0
    compile_s: float = 0.0
    measure_s: float = 0.0


@dataclass
class LatencyReport:
    """Latency of a whole plan, group by group."""

    total_us: float
    group_us: list[float]
    origins: list[str]
    spreads: list[float]
    backend: str
    device: str
    meta: dict = field(default_factory=dict)

    @property
    def spread(self) -> float:
        """Coefficient of variation of the total, assuming independent group noise."""
        variance = sum((us * cv) ** 2 for us, cv in zip(self.group_us, self.spreads))
        return variance ** 0.5 / self.total_us if self.total_us else 0.0

    def to_dict(self) -> dict:
        return {"total_us": self.total_us, "group_us": self.group_us, "origins": self.origins,
                "spreads": self.spreads, "backend": self.backend, "device": self.device, "meta": self.meta}


class LatencyBackend(ABC):
    """Base class: subclasses define the schedule menu and ``group_latency``."""

    name: str = "abstract"
    deterministic: bool = True   # same plan -> same number, always
    platform_dependent: bool = False
    schedules: tuple[str, ...] = ("default",)
    device: str = "unknown"
    memo_groups: int = MEMO_GROUPS

    def __init__(self) -> None:
        self._memo: OrderedDict[tuple[str, tuple[int, ...], str], GroupLatency] = OrderedDict()

    @abstractmethod
    def group_latency(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        """Latency of ``nodes`` (sorted node ids, one convex group) fused into one kernel."""

    def remeasure_group(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        """A new latency of one group, read from no cache (replays, validation): recomputed
        here; re-built and re-timed by backends that measure."""
        return self.group_latency(graph, nodes, schedule)

    def group_constraint(self, graph: ComputeGraph, nodes: Sequence[int]) -> str | None:
        """Why this backend cannot compile ``nodes`` as one kernel, or None when it can."""
        return None

    def merge_constraint(self, graph: ComputeGraph, group_a: Sequence[int], group_b: Sequence[int]) -> str | None:
        """Why two compilable groups joined by an edge cannot become one kernel, or None.

        The environment asks this after every candidate merge; backends may skip checks
        such a union always passes (it is weakly connected by construction).
        """
        return self.group_constraint(graph, sorted({*group_a, *group_b}))

    def version(self) -> str:
        return "0"

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "version": self.version(),
                "deterministic": self.deterministic, "schedules": list(self.schedules)}

    def latency(self, graph: ComputeGraph, plan: Plan, check: bool = True) -> LatencyReport:
        """Total latency of ``plan``; groups seen before are looked up (``cached_group_latency``)."""
        if check:
            require_legal(graph, plan, self)
        return self._report([self.cached_group_latency(graph, group, schedule)
                             for group, schedule in zip(plan.groups, plan.schedules)])

    def remeasure(self, graph: ComputeGraph, plan: Plan) -> LatencyReport:
        """``plan``'s latency with every group evaluated anew (``remeasure_group``): what
        validation compares a reported number with."""
        require_legal(graph, plan, self)
        return self._report([self.remeasure_group(graph, group, schedule)
                             for group, schedule in zip(plan.groups, plan.schedules)])

    def _report(self, results: Sequence[GroupLatency]) -> LatencyReport:
        return LatencyReport(
            total_us=sum(r.us for r in results), group_us=[r.us for r in results],
            origins=[r.origin for r in results], spreads=[r.spread for r in results],
            backend=self.name, device=self.device,
        )

    def cached_group_latency(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        """``group_latency``, remembered for searches that ask about one group again and again.

        Only a deterministic backend remembers (the ``memo_groups`` most recently used
        groups): its answer never changes, and its origin is the same on every call. A
        measuring backend's store is its memo: asking it again reports ``cached`` and sees
        every take added since (``MeasuredBackend.take_again``, other processes).
        """
        if not self.deterministic:
            return self.group_latency(graph, nodes, schedule)
        key = (graph.hash, tuple(nodes), schedule)
        result = self._memo.get(key)
        if result is not None:
            self._memo.move_to_end(key)
            return result
        result = self.group_latency(graph, nodes, schedule)
        self._memo[key] = result
        if len(self._memo) > self.memo_groups:
            self._memo.popitem(last=False)
        return result


_REGISTRY: dict[str, Callable[..., LatencyBackend]] = {}


def register_backend(name: str, factory: Callable[..., LatencyBackend]) -> None:
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    _load_builtin_backends()
    return sorted(_REGISTRY)


def get_backend(name: str, **options) -> LatencyBackend:
    """A backend by name: ``analytical``, ``tvm`` (and others that register themselves)."""
    _load_builtin_backends()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name](**options)


def _load_builtin_backends() -> None:
    """Import the built-in backends lazily: the tvm one imports TVM (seconds)."""
    if "analytical" not in _REGISTRY:
        from . import analytical  # noqa: F401  (registers itself)
    if "tvm" not in _REGISTRY:
        register_backend("tvm", _tvm_factory)
    if "torch" not in _REGISTRY:
        register_backend("torch", _torch_factory)
    if "learned" not in _REGISTRY:
        register_backend("learned", _learned_factory)


def _tvm_factory(**options) -> LatencyBackend:
    from .tvm_backend import TVMBackend

    return TVMBackend(**options)


def _learned_factory(**options) -> LatencyBackend:
    from .costmodel.backend import LearnedBackend

    return LearnedBackend(**options)


def _torch_factory(**options) -> LatencyBackend:
    from .torch_backend import TorchBackend

    return TorchBackend(**options)
