"""The leaderboard: every method on the same fixed cases, measured on a real backend.

A *case* fixes everything a just-in-time decision sees: the model and variant, the run-time
dims, the MoE routing counts and the device load. Cases are not stored; they are generated
deterministically from a suite (``graphs/data/suites.json``) and a seed, so every method,
run and machine sees the same ones (``cases("test", per_workload=3, seed=0)``).

For each case the harness asks each method for a plan (timing the decision), checks it is
legal on the measuring backend, measures it (from the MeasurementStore when a kernel was
timed before) and, on the TVM backend for small graphs, runs the fused model against the
unfused one on the same inputs. After all cases, every plan is replayed: parsed back from
its JSON, every kernel re-built and re-timed in two passes over all the run's plans; a plan
reports the sum of each kernel's fastest take and is valid when its replayed total is
within noise of that. Submitted plans are treated the same way: no submitted number is
trusted. Results go to
``<out>/results/<suite>[-<variant>][-cap<dims>][-idle]-<backend>-<device>.csv`` (rewritten
after every plan, so an interrupted run resumes where it stopped), ``<out>/LEADERBOARD.md``
and a bar chart beside the CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from fusiongym.envs import make_backend
from fusiongym.graphs import ComputeGraph, Workload, get_workload, load_suite, zoo
from fusiongym.graphs.workloads import DimRange
from fusiongym.reward import LatencyBackend, Plan, get_backend, is_legal

from . import baselines
from .baselines.search import default_budget

__all__ = ["Case", "LeaderboardConfig", "LeaderboardError", "LeaderboardRun", "Method", "MethodSummary",
           "ResultRow", "case_from_row", "cases", "geometric_mean", "parse_methods", "read_results",
           "plan_kernels", "read_submission", "retime_kernels", "revalidate", "run_leaderboard", "selected_cases",
           "summarize", "write_report", "write_results"]

REFERENCES = ("no_fusion", "tvm_default")
DEFAULT_METHODS = ("no_fusion", "tvm_default", "inductor_rules", "greedy_cost", "random", "annealing", "beam")
BACKENDS = ("tvm", "analytical")
DEVICES = ("cpu", "cuda")
# Analytical profile the search baselines plan with, per device (``--profile`` overrides).
SEARCH_PROFILES = {"cpu": "cpu", "cuda": "h100_sxm"}
# Replayed total within max(this, REPLAY_SPREADS x the measured spread) of the reported latency:
# kernels of a few µs vary by tens of percent between timing sessions on a shared 2-core machine.
REPLAY_TOLERANCE = 0.15
REPLAY_SPREADS = 3.0
# Replays of every kernel, each in its own pass over all the run's plans (so the takes of one
# kernel lie minutes apart): with the first measurement, each kernel has this many + 1 takes.
REPLAY_TAKES = 2
DEFAULT_VALIDATE_MAX_NODES = 64
CSV_COLUMNS = (
    "case_id", "suite", "workload", "model", "variant", "graph_hash", "num_nodes", "dims", "routing",
    "device_load", "method", "status", "latency_us", "spread", "speedup_vs_tvm_default",
    "speedup_vs_no_fusion", "decision_ms", "num_groups", "replay_us", "replay_ok", "numerics_ok", "plan",
    "backend", "backend_version", "search_backend", "device", "device_fingerprint", "versions", "seed",
    "budget", "measured_at", "note",
)


class LeaderboardError(ValueError):
    """A leaderboard run is misconfigured (unknown method, unreadable submission...)."""


# ------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    """One fixed run-time situation of one workload: the same graph for every method."""

    id: str
    suite: str
    workload: str
    model: str
    variant: str
    dims: dict[str, int]
    routing: tuple[int, ...] | None
    device_load: dict[str, float]

    def graph(self) -> ComputeGraph:
        """The concrete graph of this case (the graph ``Workload.sample`` gives for these values)."""
        workload = dataclasses.replace(get_workload(self.workload), variant=self.variant)
        return workload.sample(np.random.default_rng(0), dims=self.dims,
                               routing=list(self.routing) if self.routing is not None else None,
                               device_load=self.device_load)


def cases(suite: str, per_workload: int = 3, seed: int = 0, variant: str | None = None,
          max_dims: Mapping[str, int] | None = None, idle: bool = False,
          workloads: Collection[str] = ()) -> list[Case]:
    """``per_workload`` distinct cases of every workload of ``suite`` (or of those named in
    ``workloads``, each of which the suite must hold), drawn deterministically from ``seed``.

    Each workload draws from its own generator (seeded by ``seed`` and its name), so adding
    a workload or asking for more cases never changes the cases already drawn. ``variant``
    replaces the workloads' model variant (``small`` for quick CPU runs); each dim is drawn
    from its range narrowed to what the variant was exported for and to ``max_dims`` (e.g.
    ``{"batch": 2}``: unscheduled CPU kernels at the suite's largest shapes take seconds per
    call). A draw equal to an earlier case is drawn again, so narrowed ranges do not make
    cases coincide; a workload whose narrowed ranges hold fewer distinct cases than asked
    gives the ones there are. ``idle`` puts every case on an idle device: on a 2-core CPU,
    kernels timed beside the real co-running load vary by several times between timing
    sessions, so they rarely replay.
    """
    if per_workload < 1:
        raise LeaderboardError(f"per_workload must be at least 1, got {per_workload}")
    suite_workloads = load_suite(suite)
    names = [workload.name for workload in suite_workloads]
    unknown = sorted(set(workloads) - set(names))
    if unknown:
        raise LeaderboardError(f"workloads {unknown} are not in suite {suite!r}; it has {names}")
    return [case for workload in suite_workloads if not workloads or workload.name in workloads
            for case in _workload_cases(suite, workload, per_workload, seed, variant, dict(max_dims or {}), idle)]


# Draws per case before a workload is taken to hold no further distinct case.
MAX_DRAWS_PER_CASE = 64


def _workload_cases(suite: str, workload: Workload, count: int, seed: int, variant: str | None,
                    max_dims: dict[str, int], idle: bool) -> list[Case]:
    rng = np.random.default_rng([seed, zlib.crc32(workload.name.encode())])
    # The suite's ranges fit the workload's own variant; another variant may have been exported for less.
    limits = _dim_ranges(workload.model, variant) if variant and variant != workload.variant else {}
    variant = variant or workload.variant
    ranges = {name: _narrowed(r, limits.get(name), max_dims.get(name)) for name, r in workload.dims.items()}
    drawn: list[Case] = []
    for _ in range(count * MAX_DRAWS_PER_CASE):
        if len(drawn) == count:
            break
        case = _draw_case(rng, suite, workload, variant, ranges, idle, index=len(drawn))
        if all(_situation(case) != _situation(earlier) for earlier in drawn):
            drawn.append(case)
    return drawn


def _draw_case(rng: np.random.Generator, suite: str, workload: Workload, variant: str,
               ranges: Mapping[str, DimRange], idle: bool, index: int) -> Case:
    dims = {name: r.sample(rng) for name, r in ranges.items()}
    routing = None
    if workload.routing is not None:
        tokens = dims.get("tokens", zoo.default_dims(workload.model, variant)["tokens"])
        experts = sum(1 for name in _dim_ranges(workload.model, variant) if name.startswith("tokens_e"))
        routing = tuple(workload.routing.sample(rng, tokens, experts))
    load = workload.device_load.sample(rng)
    if idle:
        load = {"compute": 0.0, "bandwidth": 0.0}
    return Case(f"{workload.name}#{index}", suite, workload.name, workload.model, variant, dims, routing, load)


def _situation(case: Case) -> tuple:
    """What makes two cases the same case: everything but the id."""
    return (sorted(case.dims.items()), case.routing, sorted(case.device_load.items()))


@lru_cache(maxsize=None)
def _dim_ranges(model: str, variant: str) -> dict[str, tuple[int, int]]:
    """The range each dim of ``model``/``variant`` is exported for: one ``tokens_e{i}`` per MoE
    expert. Builds the torch module only (no export, no TVM: cases are cheap to list)."""
    return {dim.name: (dim.min, dim.max) for dim in zoo.build(model, variant).dims}


def _narrowed(dim: DimRange, limits: tuple[int, int] | None, cap: int | None) -> DimRange:
    """``dim`` within the variant's exported ``limits`` and under ``cap``; a range entirely
    above the cap becomes the cap alone (the test suite's long sequences under ``seq=256``)."""
    low, high = dim.min, dim.max
    if limits is not None:
        low, high = min(max(low, limits[0]), limits[1]), min(max(high, limits[0]), limits[1])
    if cap is not None:
        high = min(high, max(cap, limits[0] if limits is not None else 1))
        low = min(low, high)
    return DimRange(low, high, dim.step if dim.step <= high - low else 1)


# ---------------------------------------------------------------------- methods
@dataclass
class Method:
    """Something that turns a graph into a plan. ``timed``: its decision time is meaningful;
    ``budgeted``: it searches under the run's evaluation budget (recorded per row)."""

    name: str
    decide: Callable[[ComputeGraph, Case], Plan]
    prepare: Callable[[ComputeGraph], object] | None = None
    timed: bool = True
    budgeted: bool = False


def baseline_method(name: str, planner: LatencyBackend, measuring: LatencyBackend, seed: int,
                    budget: int | None) -> Method:
    """A baseline by name: searches plan on ``planner``, rule-based ones follow ``measuring``'s rules."""
    baseline = baselines.get(name)
    backend = planner if baseline.uses_backend else measuring
    return Method(name, lambda graph, case: baseline.decide(graph, backend, seed=seed, budget=budget),
                  prepare=baseline.prepare, budgeted=baseline.budgeted)


def policy_method(path: str | os.PathLike) -> Method:
    """``policy:PATH``: a trained policy loaded with ``fusiongym.agents.FusionPolicy.load``."""
    import fusiongym.agents as agents

    try:
        policy_class = getattr(agents, "FusionPolicy")
    except AttributeError:
        raise LeaderboardError(
            "policy:PATH needs fusiongym.agents.FusionPolicy, which this installation does not provide yet "
            "(the learned policy is not built); submit a CSV of plans with --submission instead") from None
    if not Path(path).exists():
        raise FileNotFoundError(f"policy file {path} does not exist")
    policy = policy_class.load(path)
    return Method(f"policy:{Path(path).stem}", lambda graph, case: policy.decide(graph))


def submission_methods(path: str | os.PathLike) -> list[Method]:
    """One method per name in a submission CSV (columns case_id, method, plan)."""
    plans = read_submission(path)
    reserved = set(baselines.names())
    methods = []
    for name in sorted({method for _, method in plans}):
        if name in reserved or name.startswith("policy:"):
            raise LeaderboardError(f"submission {path}: method name {name!r} is reserved for a baseline or "
                                   f"policy; rename it")
        methods.append(Method(name, _submitted(plans, name, path), timed=False))
    return methods


def _submitted(plans: dict[tuple[str, str], str], name: str, path: str | os.PathLike
               ) -> Callable[[ComputeGraph, Case], Plan]:
    def decide(graph: ComputeGraph, case: Case) -> Plan:
        text = plans.get((case.id, name))
        if text is None:
            raise LookupError(f"submission {path} has no plan of {name!r} for case {case.id}")
        return Plan.from_json(text)
    return decide


def read_submission(path: str | os.PathLike) -> dict[tuple[str, str], str]:
    """(case id, method) -> plan JSON from a submission CSV."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"case_id", "method", "plan"} - set(reader.fieldnames or ())
        if missing:
            raise LeaderboardError(f"submission {path} lacks columns {sorted(missing)}; "
                                   f"expected case_id, method, plan")
        plans: dict[tuple[str, str], str] = {}
        for line, row in enumerate(reader, start=2):
            key = (row["case_id"], row["method"])
            if key in plans:
                raise LeaderboardError(f"submission {path} line {line}: a second plan for {key}")
            plans[key] = row["plan"]
    return plans


def parse_methods(spec: str | Sequence[str], planner: LatencyBackend, measuring: LatencyBackend,
                  seed: int = 0, budget: int | None = None) -> list[Method]:
    """Methods from ``"tvm_default,annealing,policy:PATH"``; the references always come first."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    ordered = list(REFERENCES) + [n for n in names if n not in REFERENCES]
    methods = []
    for name in dict.fromkeys(ordered):
        if name.startswith("policy:"):
            methods.append(policy_method(name.partition(":")[2]))
        else:
            methods.append(baseline_method(name, planner, measuring, seed, budget))
    return methods


# ---------------------------------------------------------------------- results
@dataclass
class ResultRow:
    """One case × method: what was decided, what it measured, whether it replays."""

    case_id: str
    suite: str
    workload: str
    model: str
    variant: str
    graph_hash: str
    num_nodes: int
    dims: dict
    routing: list | None
    device_load: dict
    method: str
    status: str
    latency_us: float = math.nan
    spread: float = math.nan
    speedup_vs_tvm_default: float = math.nan
    speedup_vs_no_fusion: float = math.nan
    decision_ms: float = math.nan
    num_groups: int = 0
    replay_us: float = math.nan
    replay_ok: bool | None = None
    numerics_ok: bool | None = None
    plan: str = ""
    backend: str = ""
    backend_version: str = ""
    search_backend: str = ""
    device: str = ""
    device_fingerprint: str = ""
    versions: dict = field(default_factory=dict)
    seed: int = 0
    budget: int | None = None
    measured_at: str = ""
    note: str = ""

    @property
    def valid(self) -> bool:
        """Measured, and no check failed."""
        return self.status == "ok" and self.replay_ok is not False and self.numerics_ok is not False

    def to_csv(self) -> dict[str, str]:
        out = {}
        for name in CSV_COLUMNS:
            value = getattr(self, name)
            if isinstance(value, (dict, list)):
                out[name] = json.dumps(value, sort_keys=True)
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                out[name] = ""
            else:
                out[name] = str(value)
        return out

    @staticmethod
    def from_csv(row: dict[str, str]) -> "ResultRow":
        def number(name: str) -> float:
            return float(row[name]) if row.get(name) else math.nan

        def flag(name: str) -> bool | None:
            return None if not row.get(name) else row[name] == "True"

        return ResultRow(
            case_id=row["case_id"], suite=row["suite"], workload=row["workload"], model=row["model"],
            variant=row["variant"], graph_hash=row["graph_hash"], num_nodes=int(row["num_nodes"]),
            dims=json.loads(row["dims"]), routing=json.loads(row["routing"]) if row["routing"] else None,
            device_load=json.loads(row["device_load"]), method=row["method"], status=row["status"],
            latency_us=number("latency_us"), spread=number("spread"),
            speedup_vs_tvm_default=number("speedup_vs_tvm_default"),
            speedup_vs_no_fusion=number("speedup_vs_no_fusion"), decision_ms=number("decision_ms"),
            num_groups=int(row["num_groups"] or 0), replay_us=number("replay_us"), replay_ok=flag("replay_ok"),
            numerics_ok=flag("numerics_ok"), plan=row["plan"], backend=row["backend"],
            backend_version=row["backend_version"], search_backend=row["search_backend"], device=row["device"],
            device_fingerprint=row["device_fingerprint"], versions=json.loads(row["versions"] or "{}"),
            seed=int(row["seed"] or 0), budget=int(row["budget"]) if row["budget"] else None,
            measured_at=row["measured_at"], note=row.get("note", ""))


def read_results(path: str | os.PathLike) -> list[ResultRow]:
    with open(path, newline="") as handle:
        return [ResultRow.from_csv(row) for row in csv.DictReader(handle)]


def case_from_row(row: ResultRow) -> Case:
    """The case a results row was measured on (to rebuild its graph)."""
    return Case(row.case_id, row.suite, row.workload, row.model, row.variant, row.dims,
                tuple(row.routing) if row.routing is not None else None, row.device_load)


def write_results(path: Path, rows: Iterable[ResultRow]) -> None:
    """Write the CSV atomically (an interrupted run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_csv())
    os.replace(handle.name, path)


def add_speedups(rows: list[ResultRow]) -> None:
    """Speedups vs the reference methods' latency on the same case (and the same graph)."""
    reference: dict[tuple[str, str, str], float] = {}
    for row in rows:
        if row.method in REFERENCES and row.valid:
            reference[(row.case_id, row.graph_hash, row.method)] = row.latency_us
    for row in rows:
        for name in REFERENCES:
            base = reference.get((row.case_id, row.graph_hash, name))
            speedup = base / row.latency_us if base is not None and row.valid else math.nan
            setattr(row, f"speedup_vs_{name}", speedup)


# ---------------------------------------------------------------------- harness
@dataclass
class LeaderboardConfig:
    """What a run measures and where it writes. ``variant=None``: the suite's own variants."""

    suite: str = "test"
    methods: Sequence[str] = DEFAULT_METHODS
    backend: str = "tvm"
    device: str = "cpu"
    variant: str | None = None
    max_dims: Mapping[str, int] = field(default_factory=dict)
    idle: bool = False
    cases_per_workload: int = 3
    workloads: Sequence[str] = ()
    seed: int = 0
    budget: int | None = None
    profile: str | None = None
    search_on_backend: bool = False
    submission: str | None = None
    store: str | None = None
    out: str = "leaderboard"
    replay: bool = True
    replay_tolerance: float = REPLAY_TOLERANCE
    validate_max_nodes: int = DEFAULT_VALIDATE_MAX_NODES
    fresh: bool = False

    @property
    def stem(self) -> str:
        caps = "_".join(f"{name}{value}" for name, value in sorted(self.max_dims.items()))
        parts = ([self.suite] + ([self.variant] if self.variant else []) + ([f"cap{caps}"] if caps else [])
                 + (["idle"] if self.idle else []) + [self.backend, self.device])
        return "-".join(parts)

    @property
    def csv_path(self) -> Path:
        return Path(self.out) / "results" / f"{self.stem}.csv"


@dataclass
class LeaderboardRun:
    """What a run produced."""

    rows: list[ResultRow]
    csv_path: Path
    markdown_path: Path
    chart_path: Path
    seconds: float


def measuring_backend(config: LeaderboardConfig) -> LatencyBackend:
    if config.backend not in BACKENDS:
        raise LeaderboardError(f"unknown leaderboard backend {config.backend!r}; choose one of {BACKENDS}")
    if config.device not in DEVICES:
        raise LeaderboardError(f"unknown device {config.device!r}; choose one of {DEVICES}")
    if config.backend == "tvm":
        return make_backend("tvm", config.device, store=config.store)
    return get_backend("analytical", device=config.profile or SEARCH_PROFILES[config.device])


def search_backend(config: LeaderboardConfig, measuring: LatencyBackend) -> LatencyBackend:
    """What the search baselines plan with: the analytical model, unless asked to search on the real one."""
    if config.search_on_backend or config.backend == "analytical":
        return measuring
    return get_backend("analytical", device=config.profile or SEARCH_PROFILES[config.device])


def run_leaderboard(config: LeaderboardConfig, case_list: Sequence[Case] | None = None,
                    progress: bool = True) -> LeaderboardRun:
    """Measure every method on every case; write the CSV, LEADERBOARD.md and the chart."""
    from fusiongym.reward.fingerprint import describe_machine, device_fingerprint

    started = time.perf_counter()
    measuring = measuring_backend(config)
    planner = search_backend(config, measuring)
    methods = parse_methods(config.methods, planner, measuring, config.seed, config.budget)
    if config.submission:
        methods += submission_methods(config.submission)
    chosen = list(case_list) if case_list is not None else selected_cases(config)
    machine = describe_machine()
    context = _RunContext(
        config=config, backend=measuring, planner=planner, fingerprint=device_fingerprint(config.device),
        versions={k: machine.get(k) for k in ("python", "torch", "tvm", "fusiongym")})
    rows = read_results(config.csv_path) if config.csv_path.exists() else []
    if config.fresh:   # this run's methods are recomputed; the other methods' rows stay
        rows = [r for r in rows if r.method not in {m.name for m in methods}]
    done = {(r.case_id, r.graph_hash, r.method) for r in rows if r.status == "ok" or r.status.startswith("n/a")}
    graphs: dict[str, ComputeGraph] = {}
    with tqdm(total=len(chosen) * len(methods), desc=f"leaderboard {config.stem}", unit="plan",
              disable=not progress) as bar:
        for case in chosen:
            graph = case.graph()
            graphs[graph.hash] = graph
            rows = [r for r in rows if r.case_id != case.id or r.graph_hash == graph.hash]  # stale rows go
            todo = [m for m in methods if (case.id, graph.hash, m.name) not in done]
            bar.update(len(methods) - len(todo))
            for method in todo:
                bar.set_postfix_str(f"{case.id} {method.name}")
                rows = _merge(rows, [context.evaluate(case, graph, method)])
                add_speedups(rows)
                write_results(config.csv_path, rows)   # after every plan: a long run can stop anywhere
                bar.update(1)
    if config.replay:
        context.replay(rows, graphs, progress)
        add_speedups(rows)
        write_results(config.csv_path, rows)
    markdown_path = write_report(Path(config.out))
    return LeaderboardRun(rows, config.csv_path, markdown_path, config.csv_path.with_suffix(".png"),
                          time.perf_counter() - started)


def selected_cases(config: LeaderboardConfig) -> list[Case]:
    return cases(config.suite, config.cases_per_workload, config.seed, config.variant, config.max_dims,
                 config.idle, config.workloads)


def _merge(rows: list[ResultRow], new: list[ResultRow]) -> list[ResultRow]:
    """Rows with those of ``new`` replacing any earlier row of the same case and method."""
    replaced = {(r.case_id, r.method) for r in new}
    return [r for r in rows if (r.case_id, r.method) not in replaced] + list(new)


@dataclass
class _RunContext:
    """Everything one run shares between cases: backends, machine description, replay cache."""

    config: LeaderboardConfig
    backend: LatencyBackend
    planner: LatencyBackend
    fingerprint: str
    versions: dict
    replayed: dict = field(default_factory=dict)

    def evaluate(self, case: Case, graph: ComputeGraph, method: Method) -> ResultRow:
        """Decide, check, measure, replay and validate one method on one case.

        A method or a measurement that fails gives a row saying why, never a crash: one
        broken submission must not cost the other rows of a long run.
        """
        row = self._row(case, graph, method)
        try:
            plan, decision_ms = self._decide(graph, case, method)
        except baselines.BaselineError as error:
            row.status = f"n/a: {error}"
            return row
        except Exception as error:
            row.status = f"error: {type(error).__name__}: {error}"
            return row
        row.decision_ms = decision_ms if method.timed else math.nan
        row.plan, row.num_groups = plan.to_json(), plan.num_groups
        verdict = is_legal(graph, plan, self.backend)
        if not verdict:
            row.status = f"illegal: {verdict.reason}"
            return row
        try:
            report = self.backend.latency(graph, plan)
        except Exception as error:
            row.status = f"error: measuring failed: {type(error).__name__}: {error}"
            return row
        row.latency_us, row.spread, row.status = report.total_us, report.spread, "ok"
        if self._affordable_numerics(graph):
            self._validate_into(row, graph, plan)
        return row

    @staticmethod
    def _decide(graph: ComputeGraph, case: Case, method: Method) -> tuple[Plan, float]:
        if method.prepare is not None:
            method.prepare(graph)
        started = time.perf_counter()
        plan = method.decide(graph, case)
        return plan, (time.perf_counter() - started) * 1e3

    def _validate_into(self, row: ResultRow, graph: ComputeGraph, plan: Plan) -> None:
        from fusiongym.reward.tvm_apply import validate

        try:
            report = validate(graph, plan)
            row.numerics_ok = bool(report)
            if not report:
                row.note = "; ".join(report.details)
        except Exception as error:
            row.numerics_ok, row.note = False, f"numeric check failed: {type(error).__name__}: {error}"

    def _row(self, case: Case, graph: ComputeGraph, method: Method) -> ResultRow:
        budget = None
        if method.budgeted:
            budget = self.config.budget if self.config.budget is not None else default_budget(graph)
        return ResultRow(
            case_id=case.id, suite=case.suite, workload=case.workload, model=case.model, variant=case.variant,
            graph_hash=graph.hash, num_nodes=graph.num_nodes, dims=dict(case.dims),
            routing=list(case.routing) if case.routing is not None else None, device_load=dict(case.device_load),
            method=method.name, status="", backend=self.backend.name, backend_version=self.backend.version(),
            search_backend=f"{self.planner.name}:{self.planner.device}", device=self.backend.device,
            device_fingerprint=self.fingerprint, versions=self.versions, seed=self.config.seed,
            budget=budget, measured_at=time.strftime("%Y-%m-%d %H:%M:%S"))

    def _affordable_numerics(self, graph: ComputeGraph) -> bool:
        return (self.backend.name == "tvm" and 0 < graph.num_nodes <= self.config.validate_max_nodes
                and graph.source.get("kind") == "zoo")

    def replay(self, rows: Sequence[ResultRow], graphs: Mapping[str, ComputeGraph], progress: bool) -> None:
        """Replay every measured plan of ``rows`` not replayed yet, in place.

        Each plan is parsed back from its JSON and every kernel of it re-built and re-timed
        ``REPLAY_TAKES`` times (``retime_kernels``). A row's latency becomes the sum of each
        kernel's fastest take (the first measurement's and the replays'); the replay agrees
        when the sum of the replays' fastest takes is within noise of it.
        """
        pending: list[tuple[ResultRow, list[Kernel]]] = []
        for row in rows:
            if row.status != "ok" or row.replay_ok is not None or row.graph_hash not in graphs:
                continue
            try:
                pending.append((row, plan_kernels(graphs[row.graph_hash], row.plan, self.backend)))
            except Exception as error:
                row.replay_ok, row.note = False, f"replay failed: {type(error).__name__}: {error}"
        failed = retime_kernels(self.backend, graphs, [k for _, kernels in pending for k in kernels], self.replayed,
                                progress)
        for row, kernels in pending:
            self._replay_into(row, graphs[row.graph_hash], kernels, failed)

    def _replay_into(self, row: ResultRow, graph: ComputeGraph, kernels: list[Kernel],
                     failed: Mapping[Kernel, str]) -> None:
        try:
            broken = next((kernel for kernel in kernels if kernel in failed), None)
            if broken is not None:
                raise LeaderboardError(f"kernel {list(broken[1])} ({broken[2]}): {failed[broken]}")
            first_us = [self.backend.cached_group_latency(graph, list(group), schedule).us   # from the store
                        for _, group, schedule in kernels]
            replayed_us = [min(self.replayed[kernel]) for kernel in kernels]
            row.replay_us = sum(replayed_us)
            row.latency_us = sum(min(first, again) for first, again in zip(first_us, replayed_us))
            row.replay_ok = replay_agrees(row.latency_us, row.spread, row.replay_us, self.config.replay_tolerance)
        except Exception as error:
            row.replay_ok, row.note = False, f"replay failed: {type(error).__name__}: {error}"


# A kernel of a plan: (graph hash, the group's node ids, schedule).
Kernel = tuple[str, tuple[int, ...], str]


def plan_kernels(graph: ComputeGraph, plan_json: str, backend: LatencyBackend) -> list[Kernel]:
    """The kernels of the plan parsed back from its JSON; an illegal plan raises."""
    plan = Plan.from_json(plan_json)
    verdict = is_legal(graph, plan, backend)
    if not verdict:
        raise LeaderboardError(f"replayed plan is not legal: {verdict.reason}")
    return [(graph.hash, tuple(group), schedule) for group, schedule in zip(plan.groups, plan.schedules)]


def retime_kernels(backend: LatencyBackend, graphs: Mapping[str, ComputeGraph], kernels: Iterable[Kernel],
                   takes_us: dict[Kernel, list[float]], progress: bool = False) -> dict[Kernel, str]:
    """Re-build and re-time every kernel until it has ``REPLAY_TAKES`` takes in ``takes_us``;
    returns why each kernel that could not be re-built or re-timed failed (it is not retried).

    One pass over all the kernels per take (a kernel shared by several plans is timed once
    per pass), bypassing the store. Why passes: on a shared machine a kernel's timing drifts
    with the machine's state for seconds at a time while repeats within one timing agree;
    takes minutes apart are independent, and the fastest of three reproduces where one take
    does not. (The store keeps a kernel's median take, ``store.median_take_us``; summed over a
    plan, the fastest and the median of three takes from one run reproduce alike on the Intel
    Xeon: README, "The median take, not the fastest".)
    """
    distinct = sorted(set(kernels))
    failed: dict[Kernel, str] = {}
    for take in range(1, REPLAY_TAKES + 1):
        todo = [kernel for kernel in distinct if len(takes_us.get(kernel, ())) < take and kernel not in failed]
        for kernel in tqdm(todo, desc=f"replay {take}/{REPLAY_TAKES}", unit="kernel", disable=not progress):
            graph_hash, group, schedule = kernel
            try:
                taken = backend.remeasure_group(graphs[graph_hash], list(group), schedule).us
            except Exception as error:   # one broken kernel fails its plans' replays, not the run
                failed[kernel] = f"{type(error).__name__}: {error}"
                continue
            takes_us.setdefault(kernel, []).append(taken)
    return failed


def replay_agrees(measured_us: float, spread: float, replayed_us: float,
                  tolerance: float = REPLAY_TOLERANCE) -> bool:
    """Within noise: max(tolerance, REPLAY_SPREADS x spread) of the reported latency."""
    tolerance = max(tolerance, REPLAY_SPREADS * (spread if math.isfinite(spread) else 0.0))
    return abs(replayed_us - measured_us) <= tolerance * measured_us


def revalidate(csv_path: str | os.PathLike, backend: LatencyBackend,
               tolerance: float = REPLAY_TOLERANCE) -> list[tuple[ResultRow, float, bool]]:
    """Re-measure every measured plan of a results CSV: (row, fresh latency, agrees within noise).

    The fresh latency is the sum of each kernel's fastest of ``REPLAY_TAKES`` new takes, as in a replay.
    """
    rows = [row for row in read_results(csv_path) if row.status == "ok"]
    graphs: dict[str, ComputeGraph] = {}
    for row in rows:
        if row.graph_hash not in graphs:
            graph = case_from_row(row).graph()
            if graph.hash != row.graph_hash:
                raise LeaderboardError(f"case {row.case_id} rebuilds graph {graph.hash}, the CSV has {row.graph_hash}")
            graphs[graph.hash] = graph
    kernels = {(row.case_id, row.method): plan_kernels(graphs[row.graph_hash], row.plan, backend) for row in rows}
    takes_us: dict[Kernel, list[float]] = {}
    failed = retime_kernels(backend, graphs, [k for plan in kernels.values() for k in plan], takes_us)
    checks = []
    for row in rows:
        plan = kernels[(row.case_id, row.method)]
        if any(kernel in failed for kernel in plan):
            checks.append((row, math.nan, False))   # a kernel that no longer builds or runs
            continue
        fresh_us = sum(min(takes_us[kernel]) for kernel in plan)
        checks.append((row, fresh_us, replay_agrees(row.latency_us, row.spread, fresh_us, tolerance)))
    return checks


# ----------------------------------------------------------------------- report
@dataclass(frozen=True)
class MethodSummary:
    """One method over the cases of one results file."""

    method: str
    cases: int
    valid: int
    geomean_vs_tvm_default: float
    geomean_vs_no_fusion: float
    median_decision_ms: float


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of the positive finite values (nan when there are none)."""
    kept = [v for v in values if math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in kept) / len(kept)) if kept else math.nan


def summarize(rows: Sequence[ResultRow]) -> list[MethodSummary]:
    """Per method: geomean speedups over the cases where it is valid, best first."""
    summaries = []
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        valid = [r for r in mine if r.valid]
        decisions = [r.decision_ms for r in valid if math.isfinite(r.decision_ms)]
        summaries.append(MethodSummary(
            method, len(mine), len(valid), geometric_mean([r.speedup_vs_tvm_default for r in valid]),
            geometric_mean([r.speedup_vs_no_fusion for r in valid]),
            statistics.median(decisions) if decisions else math.nan))
    return sorted(summaries, key=lambda s: -s.geomean_vs_tvm_default if math.isfinite(s.geomean_vs_tvm_default)
                  else math.inf)


def write_report(out: Path) -> Path:
    """LEADERBOARD.md over every results CSV in ``out/results`` and one chart per CSV."""
    sections = []
    for csv_path in sorted((out / "results").glob("*.csv")):
        rows = read_results(csv_path)
        if not rows:
            continue
        chart = csv_path.with_suffix(".png")
        write_chart(chart, csv_path.stem, summarize(rows))
        sections.append(_markdown_section(csv_path, chart, rows, out))
    markdown = out / "LEADERBOARD.md"
    text = "\n".join([
        "# fusiongym leaderboard", "",
        "Every method decides a fusion plan (and kernel schedules) for the same fixed cases; every plan is "
        "measured on the backend named in the section, replayed (kernels re-built and re-timed twice, in "
        "passes minutes apart; a plan's latency is the sum of each kernel's fastest take, and the plan is "
        "valid when the replays' sum is within noise of it) and, on "
        "TVM for small graphs, checked numerically against the unfused model. Speedups are latency ratios "
        "per case; the summary gives their geometric mean over the cases where the plan is valid. Search "
        "baselines plan on the analytical model unless the section says otherwise. Regenerate with "
        "`fusiongym leaderboard` (see the README, section 'Baselines and the leaderboard').", "", *sections])
    _write_text(markdown, text + "\n")
    return markdown


def _markdown_section(csv_path: Path, chart: Path, rows: list[ResultRow], out: Path) -> str:
    first = rows[0]
    versions = ", ".join(f"{k} {v}" for k, v in first.versions.items() if v)
    lines = [
        f"## {csv_path.stem}", "",
        f"Suite `{first.suite}`, backend `{first.backend}` ({first.backend_version}), device `{first.device}` "
        f"(`{first.device_fingerprint}`), search baselines planned on `{first.search_backend}`; {versions}; "
        f"measured {min(r.measured_at for r in rows)} to {max(r.measured_at for r in rows)}. "
        f"Data: [`{csv_path.relative_to(out)}`]({csv_path.relative_to(out)}).", "",
        "| method | valid / cases | geomean speedup vs tvm_default | geomean speedup vs no_fusion "
        "| median decision ms |", "|---|---|---|---|---|",
    ]
    for s in summarize(rows):
        lines.append(f"| {s.method} | {s.valid} / {s.cases} | {_fmt(s.geomean_vs_tvm_default, 'x')} "
                     f"| {_fmt(s.geomean_vs_no_fusion, 'x')} | {_fmt(s.median_decision_ms)} |")
    methods = list(dict.fromkeys(r.method for r in rows))
    lines += ["", f"![geomean speedups]({chart.relative_to(out)})", "", "Latency per case (µs; * = a check failed, "
              "- = no valid plan):", "",
              "| case | dims | load (compute/bandwidth) | " + " | ".join(methods) + " |",
              "|---" * (3 + len(methods)) + "|"]
    by_case: dict[str, dict[str, ResultRow]] = {}
    for row in rows:
        by_case.setdefault(row.case_id, {})[row.method] = row
    for case_id, mine in by_case.items():
        any_row = next(iter(mine.values()))
        dims = " ".join(f"{k}={v}" for k, v in any_row.dims.items())
        load = f"{any_row.device_load.get('compute', 0.0):.2f}/{any_row.device_load.get('bandwidth', 0.0):.2f}"
        cells = [_latency_cell(mine.get(m)) for m in methods]
        lines.append(f"| {case_id} | {dims} | {load} | " + " | ".join(cells) + " |")
    problems = [r for r in rows if not r.valid]
    if problems:
        lines += ["", "Rows without a valid measurement:", ""]
        lines += [f"- {r.case_id} {r.method}: {r.status if r.status != 'ok' else _failed_check(r)}"
                  for r in problems]
    return "\n".join(lines) + "\n"


def _failed_check(row: ResultRow) -> str:
    if row.note:
        return row.note
    if row.replay_ok is False:
        return f"replays gave {row.replay_us:.1f} µs vs {row.latency_us:.1f} µs reported"
    return "the fused model's outputs differ from the unfused model's"


def _latency_cell(row: ResultRow | None) -> str:
    if row is None or row.status != "ok":
        return "-"
    return f"{row.latency_us:,.0f}" + ("" if row.valid else "*")


def _fmt(value: float, suffix: str = "") -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}{suffix}"


def write_chart(path: Path, title: str, summaries: Sequence[MethodSummary]) -> None:
    """Bar chart: geomean speedup of every method vs tvm_default and vs no_fusion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.method for s in summaries]
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.0))
    for offset, label, values in ((-0.2, "vs tvm_default", [s.geomean_vs_tvm_default for s in summaries]),
                                  (0.2, "vs no_fusion", [s.geomean_vs_no_fusion for s in summaries])):
        axis.bar(positions + offset, [v if math.isfinite(v) else 0.0 for v in values], width=0.4, label=label)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks(positions, names, rotation=30, ha="right")
    axis.set_ylabel("geomean speedup (x)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
