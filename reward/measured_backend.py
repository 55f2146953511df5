"""``MeasuredBackend``: the store-first path that every backend timing real kernels shares.

A measured latency costs a compile and a timing (a fraction of a second to seconds), so a
real backend first looks the group up in the MeasurementStore under (device, backend and
threads, compiler version, group signature, schedule, load level) and only on a miss
compiles and times it, then stores the result. Subclasses say how to measure one group
(``measure_group``) and how they key the store (``store_backend``, ``version``).
"""

from __future__ import annotations

import os
import time
from abc import abstractmethod
from typing import Any, Sequence

from fusiongym.graphs import ComputeGraph

from .backend import GroupLatency, LatencyBackend, MeasurementStats
from .device_load import load_level
from .signature import group_signature
from .store import Measurement, MeasurementKey, MeasurementStore
from .timing import Timing


class MeasuredBackend(LatencyBackend):
    """Base class of real backends: store lookup, else ``measure_group`` and store.

    ``store``: a MeasurementStore, a path to one, or None for the default store
    (``$FUSIONGYM_STORE`` or ``~/.cache/fusiongym``). ``measure_load``: time under a real
    load at the graph's ``context["device_load"]``; off, every group is timed idle.
    """

    deterministic = False
    platform_dependent = True

    def __init__(self, store: MeasurementStore | str | os.PathLike | None, measure_load: bool) -> None:
        super().__init__()
        self.store = store if isinstance(store, MeasurementStore) else MeasurementStore(store)
        self.measure_load = measure_load
        self.stats = MeasurementStats()

    @property
    @abstractmethod
    def store_backend(self) -> str:
        """The backend column of this backend's store keys (compiler, device kind, threads)."""

    @abstractmethod
    def measure_group(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str, signature: str,
                      load: float) -> tuple[Timing, dict[str, Any]]:
        """Compile and time one group under ``load``: the timing and what to record with it."""

    def require_device(self) -> None:
        """Raise, naming the problem and the fix, when this machine cannot measure (no GPU)."""

    def load_level(self, graph: ComputeGraph) -> float:
        """The load this backend measures under for ``graph``: one share on the LOAD_STEP grid
        (``device_load.load_level``)."""
        return load_level(graph.context.get("device_load")) if self.measure_load else 0.0

    def group_latency(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        """The stored latency of this group on this device and load, else measured now and stored."""
        self.require_device()
        if schedule not in self.schedules:
            raise ValueError(f"schedule {schedule!r} is not offered by backend {self.name} here "
                             f"(choices: {list(self.schedules)})")
        load = self.load_level(graph)
        signature = group_signature(graph, nodes)
        key = MeasurementKey(self.device, self.store_backend, self.version(), signature, schedule, load)
        stored = self.store.get(key)
        if stored is not None:
            self.stats.cached += 1
            return GroupLatency(stored.median_us, "cached", stored.spread)
        result, meta = self.measure_group(graph, nodes, schedule, signature, load)
        self.store.put(Measurement(key, result.median_us, result.spread, result.repeats, time.time(), meta={
            "graph": graph.name, "ops": [graph.nodes[n].op for n in nodes], **meta, "timing": result.to_dict(),
        }))
        return GroupLatency(result.median_us, "measured", result.spread)
