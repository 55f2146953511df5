"""Measured groups and plans: what a cost model learns from, read back from the store.

The MeasurementStore keys a latency by a group's *signature* (a hash): enough to answer
"measured before?", not enough to learn from, since a model needs the group's ops, shapes
and bytes. So ``fusiongym profile --plans`` also appends what it measured to a
``ProfileLog`` (JSON lines beside the store): each graph once, in full, and each plan as
its groups and schedules with the store key fields and the analytical profile the run's
searches planned on. ``load_measured_set`` joins the two:
every group of every logged plan, its latency from the store. Features can then change
without re-measuring anything: the log keeps the raw graphs.

One measured set comes from one ``MeasuringSetup`` (machine, backend, backend version): a
model has no input that tells two machines apart, and two machines time the same kernels
differently, enough to reorder a graph's plans (README, "Another CPU").

The log is append-only and written one flushed line at a time: a profile run killed
mid-line leaves at most one partial last line, which the reader skips.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from fusiongym.graphs import ComputeGraph

from ..devices import DeviceProfile
from ..plan import Plan
from ..signature import group_signature
from ..store import MeasurementKey, MeasurementStore, resolve_store_path

LOG_FORMAT = "fusiongym.ProfileLog/1"


class CostModelError(RuntimeError):
    """A cost-model input or file cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class GroupSample:
    """One measured kernel: ``nodes`` of graph ``graph_hash`` with ``schedule`` took ``measured_us``."""

    graph_hash: str
    nodes: tuple[int, ...]
    schedule: str
    measured_us: float


@dataclass(frozen=True)
class PlanRecord:
    """One measured plan: its groups as indices into ``MeasuredSet.samples``."""

    graph_hash: str
    method: str
    sample_indices: tuple[int, ...]
    searched_on: str = ""   # digest of the analytical profile the profile run's searches planned on


@dataclass
class MeasuredSet:
    """Graphs, their measured groups and (optionally) whole plans made of those groups.

    ``model_of`` names each graph's model (zoo name): datasets are split by it, so a test
    model is never seen in training. ``workload_of`` names the workload a graph was profiled
    from (``llama_long/test``), where the profile log says.
    """

    graphs: dict[str, ComputeGraph] = field(default_factory=dict)
    model_of: dict[str, str] = field(default_factory=dict)
    workload_of: dict[str, str] = field(default_factory=dict)
    samples: list[GroupSample] = field(default_factory=list)
    plans: list[PlanRecord] = field(default_factory=list)
    measured_on: MeasuringSetup | None = None   # where the plans' groups were timed (None: not from a log)
    _index: dict[tuple[str, tuple[int, ...], str], int] = field(default_factory=dict, repr=False)

    def add_graph(self, graph: ComputeGraph, model: str, workload: str = "") -> None:
        self.graphs[graph.hash] = graph
        self.model_of[graph.hash] = model
        if workload:
            self.workload_of[graph.hash] = workload

    def add_sample(self, sample: GroupSample) -> int:
        """Index of ``sample`` (added once: the same group and schedule on one graph is one sample)."""
        key = (sample.graph_hash, sample.nodes, sample.schedule)
        if key not in self._index:
            self._index[key] = len(self.samples)
            self.samples.append(sample)
        return self._index[key]

    @staticmethod
    def from_samples(samples: Iterable, model_of_graph=None) -> "MeasuredSet":
        """From ``calibrate.Sample`` records (graph, nodes, schedule, measured_us); the model
        name is ``graph.source["model"]`` unless ``model_of_graph(graph)`` says otherwise."""
        measured = MeasuredSet()
        for s in samples:
            if s.graph.hash not in measured.graphs:
                name = model_of_graph(s.graph) if model_of_graph else s.graph.source.get("model", s.graph.name)
                measured.add_graph(s.graph, name)
            measured.add_sample(GroupSample(s.graph.hash, tuple(s.nodes), s.schedule, float(s.measured_us)))
        return measured

    def models(self) -> list[str]:
        return sorted(set(self.model_of.values()))


@dataclass(frozen=True)
class MeasuringSetup:
    """The machine (``device`` fingerprint) and the backend that timed a plan's groups."""

    device: str
    backend: str
    backend_version: str

    def __str__(self) -> str:
        return f"{self.device} ({self.backend} {self.backend_version})"


def measuring_device(source: dict) -> str | None:
    """The machine that measured a dataset's labels, from its ``source`` (also in a model's
    header); None where the data does not name it."""
    return (source.get("measured_on") or {}).get("device")


@dataclass(frozen=True)
class StoreKeyFields:
    """The parts of a MeasurementKey that the backend, not the group, decides."""

    device: str
    backend: str
    backend_version: str
    load_level: float

    def key(self, signature: str, schedule: str) -> MeasurementKey:
        return MeasurementKey(self.device, self.backend, self.backend_version, signature, schedule,
                              self.load_level)

    @property
    def setup(self) -> MeasuringSetup:
        return MeasuringSetup(self.device, self.backend, self.backend_version)


class ProfileLog:
    """JSON lines: ``{"kind": "graph", ...}`` once per graph, ``{"kind": "plan", ...}`` per plan."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @staticmethod
    def beside(store_path: str | os.PathLike | None) -> "ProfileLog":
        """The log that goes with a store: ``<store>.plans.jsonl``."""
        store = resolve_store_path(store_path)
        return ProfileLog(store.with_name(store.name + ".plans.jsonl"))

    def records(self) -> Iterator[dict]:
        """Every complete record; a partial last line (a killed writer) is skipped."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):  # no newline after it: cut short by a kill
                    return
                raise CostModelError(f"profile log {self.path} line {number} is damaged ({exc}). "
                                     f"Fix: delete that line, or the file, and re-run fusiongym profile "
                                     f"--plans (measurements stay in the store)") from exc
            if record.get("format") != LOG_FORMAT:
                raise CostModelError(f"{self.path} line {number} is not a fusiongym profile log record "
                                     f"(format={record.get('format')!r})")
            yield record

    def setups(self) -> Counter[MeasuringSetup]:
        """How many of the logged plans each machine and backend measured."""
        return _setups(self.records())

    def known(self) -> tuple[set[str], set[tuple[str, str]]]:
        """(graph hashes, (graph hash, plan json)) already logged: a resumed run skips them."""
        graphs, plans = set(), set()
        for record in self.records():
            if record["kind"] == "graph":
                graphs.add(record["graph_hash"])
            else:
                plans.add((record["graph_hash"], _plan_identity(record["plan"])))
        return graphs, plans

    def append_graph(self, graph: ComputeGraph, model: str, workload: str) -> None:
        self._append({"kind": "graph", "graph_hash": graph.hash, "model": model, "workload": workload,
                      "graph": json.loads(graph.to_json())})

    def append_plan(self, plan: Plan, method: str, fields: StoreKeyFields, searched_on: dict) -> None:
        """``searched_on``: the analytical profile the plan's search planned on (``searched_on_record``).
        A calibrated and the generic profile find different annealing and trajectory plans, so the log
        says which; a plan copied from another log keeps that log's."""
        self._append({"kind": "plan", "graph_hash": plan.graph_hash, "method": method,
                      "plan": {"groups": plan.groups, "schedules": plan.schedules},
                      "store_key": fields.__dict__, "searched_on": searched_on})

    def plans_of_graphs(self, graph_hashes: set[str]) -> Iterator[tuple[Plan, str, dict]]:
        """(plan, method, searched_on) of every logged plan of ``graph_hashes``, in log order."""
        for record in self.records():
            if record["kind"] == "plan" and record["graph_hash"] in graph_hashes:
                plan = Plan(record["plan"]["groups"], record["plan"]["schedules"], record["graph_hash"])
                yield plan, record["method"], record.get("searched_on", {})

    def _append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"format": LOG_FORMAT, **record}, separators=(",", ":"))
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def searched_on_record(profile: DeviceProfile) -> dict:
    """How a log names the analytical profile a search planned on."""
    return {"digest": profile.digest(), "source": profile.source}


def _plan_identity(plan: dict) -> str:
    return json.dumps(sorted(zip(map(tuple, plan["groups"]), plan["schedules"])))


def plan_identity(plan: Plan) -> str:
    """Order-free identity of a plan's groups and schedules, as the log compares them."""
    return _plan_identity({"groups": plan.groups, "schedules": plan.schedules})


def load_measured_set(store_path: str | os.PathLike | None, log_path: str | os.PathLike | None = None,
                      device: str | None = None) -> MeasuredSet:
    """Every logged plan of one machine and backend whose groups are all in the store, and
    every stored group of any of its plans.

    ``device``: the machine fingerprint (``backend.device``) whose plans to take; needed when
    the log holds plans that more than one machine or backend measured. Raises
    ``CostModelError`` naming the fix when the store or the log is missing, when nothing in
    the log has a measurement, or when the plans come from more than one setup.
    """
    store_file = resolve_store_path(store_path)
    if not store_file.exists():
        raise CostModelError(f"no measurement store at {store_file}. Fix: measure one with "
                             f"`fusiongym profile --plans N --store {store_file}`, or pass --store")
    log = ProfileLog(log_path) if log_path else ProfileLog.beside(store_file)
    if not log.path.exists():
        raise CostModelError(f"no profile log at {log.path} (the groups and graphs the store's latencies "
                             f"belong to). Fix: run `fusiongym profile --plans N --store {store_file}`, "
                             f"or pass --log")
    records = list(log.records())
    setup = _one_setup(_setups(records), device, log.path)
    measured = MeasuredSet(measured_on=setup)
    with MeasurementStore(store_file) as store:
        for record in records:
            if record["kind"] == "graph":
                measured.add_graph(ComputeGraph.from_json(json.dumps(record["graph"])), record["model"],
                                   record.get("workload", ""))
            elif StoreKeyFields(**record["store_key"]).setup == setup:
                _add_plan(measured, store, record)
    if not measured.samples:
        raise CostModelError(f"{log.path} and {store_file} hold no measured group (log: "
                             f"{len(measured.graphs)} graphs). Fix: run `fusiongym profile --plans N "
                             f"--store {store_file}` to measure some")
    return measured


def describe_setups(setups: Counter[MeasuringSetup]) -> str:
    """``<setup>: N plans; ...``, the setup with the most plans first."""
    return "; ".join(f"{setup}: {count} plans" for setup, count in setups.most_common())


def _setups(records: Iterable[dict]) -> Counter[MeasuringSetup]:
    """How many of the logged plans each machine and backend measured."""
    return Counter(StoreKeyFields(**r["store_key"]).setup for r in records if r["kind"] == "plan")


def _one_setup(setups: Counter[MeasuringSetup], device: str | None, log_path: Path) -> MeasuringSetup | None:
    """The one setup whose plans a measured set takes (``device``'s, where given); None: no plan logged."""
    listing = describe_setups(setups)
    chosen = [setup for setup in setups if device is None or setup.device == device]
    if device is not None and not chosen:
        raise CostModelError(f"no plan in {log_path} was measured on {device!r}; its plans were measured on "
                             f"{listing or 'nothing (no plan logged)'}. Fix: name one of those devices")
    if len(chosen) > 1:
        raise CostModelError(
            f"{log_path} holds plans measured on {len(chosen)} machines or backends ({listing}). A dataset "
            f"takes one: a model has no input that tells them apart, and they time the same kernels differently. "
            f"Fix: take one device's plans (`fusiongym dataset export --measured-on DEVICE`), and profile each "
            f"machine and backend into a store of its own")
    return chosen[0] if chosen else None


def _add_plan(measured: MeasuredSet, store: MeasurementStore, record: dict) -> None:
    graph = measured.graphs.get(record["graph_hash"])
    if graph is None:
        raise CostModelError(f"profile log names plan of graph {record['graph_hash']} before the graph "
                             f"itself; the log is damaged. Fix: delete it and re-run fusiongym profile --plans")
    fields = StoreKeyFields(**record["store_key"])
    groups: Sequence[Sequence[int]] = record["plan"]["groups"]
    keys = [fields.key(group_signature(graph, group), schedule)
            for group, schedule in zip(groups, record["plan"]["schedules"])]
    found = store.get_many(keys)
    indices = [measured.add_sample(GroupSample(graph.hash, tuple(group), key.schedule, found[key].median_us))
               for group, key in zip(groups, keys) if key in found]
    if len(indices) == len(keys):
        measured.plans.append(PlanRecord(graph.hash, record["method"], tuple(indices),
                                         record.get("searched_on", {}).get("digest", "")))
