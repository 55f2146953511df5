"""Measure fused groups of zoo models on a real backend (into the store).

Two modes. ``--plans N`` samples N plans per graph of a workload suite (seeded random
merges and schedules, and the plans of baselines that search on the analytical model), and
``--trajectory-points K`` more along greedy_cost's descent (the search's path, not only its end),
measures every group of every plan on the real backend and appends the graphs and plans to
the profile log beside the store: the data the learned cost model trains on
(``fusiongym dataset export``). Re-running the same command resumes: groups already in the
store and plans already in the log are skipped. ``--takes K`` then makes K passes over every
group of the suite's logged plans, each in a new process and adding a take where a group has
fewer (a pass that would add none is not started), and keeps each group's median take: a
kernel's timing drifts with the machine's state, and the median of takes spread over time
reproduces where one take, or the fastest of several, does not (``MeasuredBackend.take_again``).
``--takes-only`` samples nothing and makes the take passes alone, over the suite's graphs
already in the log: more takes for a store built earlier, without the searches that sample
plans (about 20 min on the train suite). ``--plans-from LOG`` samples nothing either: it measures the
plans another profile log holds for the suite's graphs, so that two machines' or days' stores hold one
plan set (plans searched anew follow each run's calibration, and a plan set moves a model's score more
than the model does).

Without ``--plans`` it measures a seeded set of single groups; with ``--calibrate`` those
fit the analytical CPU profile to this machine (saved to ~/.cache/fusiongym/cpu_profile.json
and used by ``get_backend("analytical")`` from then on) and report the Kendall τ of
analytical vs measured group latencies, before and after the fit, on a held-out share.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    from fusiongym.agents.leaderboard import Case
    from fusiongym.graphs import ComputeGraph
    from fusiongym.reward.costmodel.records import ProfileLog
    from fusiongym.reward.measured_backend import MeasuredBackend
    from fusiongym.reward.plan import Plan

DEFAULT_PLAN_METHODS = "greedy_cost,inductor_rules,no_fusion,random,annealing"
TRAJECTORY_METHOD = "greedy_cost_trajectory"   # the method logged for --trajectory-points plans
TAKES_ONLY_FIX = "profile them without --takes-only first (same --suite, --seed and --max-dims)"
PLANS_FROM_FIX = ("draw the graphs that log's run drew (its --suite, --seed, --graphs-per-workload and --max-dims), "
                  "or pass a log that profiled these workloads")
# A model's own Kendall τ is reported only over at least this many held-out groups.
MIN_GROUPS_FOR_TAU = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="resnet18,mobilenet_v2,bert,llama,mixtral_moe",
                        help="comma-separated zoo models (group mode; default: the train suite's, so the "
                             "test suite's models stay unseen by the fitted profile)")
    parser.add_argument("--variant", default="small", choices=("small", "full"))
    parser.add_argument("--groups", type=int, default=450, help="distinct (group, schedule) pairs to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default=None, help="measurement store (default ~/.cache/fusiongym/measurements.db)")
    parser.add_argument("--calibrate", action="store_true", help="fit and save the analytical CPU profile")
    parser.add_argument("--holdout", type=float, default=0.3, help="share of groups kept out of the fit")
    parser.add_argument("--op-classes", action="store_true",
                        help="also fit one time scale per op class (convolution/pooling, matmul, "
                             "transcendental) under each schedule: held-out groups fit better, whole "
                             "plans rank worse (README, 'One efficiency per op class')")
    parser.add_argument("--report", default=None, help="write the calibration report as JSON here")
    plans = parser.add_argument_group("plan mode (data for the learned cost model)")
    plans.add_argument("--plans", type=int, default=None, help="plans to sample and measure per graph")
    plans.add_argument("--suite", default="train", help="workload suite the graphs come from")
    plans.add_argument("--backend", default="tvm", help="the real backend that measures (registered name)")
    plans.add_argument("--workloads", default="", help="comma-separated subset of the suite's workloads")
    plans.add_argument("--graphs-per-workload", type=int, default=1, help="run-time contexts drawn per workload")
    plans.add_argument("--max-dims", default="batch=1,image=96,seq=128,tokens=128",
                       help="caps on drawn dims (unscheduled CPU kernels at large shapes take seconds)")
    plans.add_argument("--methods", default=DEFAULT_PLAN_METHODS,
                       help="baselines the plans come from: each deterministic one once, then the seeded "
                            "ones (random, annealing) in turn with a new seed per plan")
    plans.add_argument("--trajectory-points", type=int, default=4,
                       help="plans per graph taken evenly along greedy_cost's descent on the analytical model, "
                            "between no fusion and its end (search trajectories, beside --plans)")
    plans.add_argument("--takes", type=int, default=1,
                       help="time every group of the suite's logged plans in this many takes, one pass over "
                            "all of them per take, each pass in a new process, and keep the median take (timings "
                            "drift with the machine's state)")
    plans.add_argument("--takes-only", action="store_true",
                       help="sample no plans; only the --takes passes over the plans already logged for the "
                            "suite's graphs (more takes for a store built earlier)")
    plans.add_argument("--plans-from", default=None, metavar="LOG",
                       help="sample no plans; measure here the plans another profile log holds for the suite's "
                            "graphs (drawn as that run drew them: same --suite, --seed, --max-dims), so two "
                            "machines' or days' stores hold one plan set (searches follow each calibration)")
    plans.add_argument("--log", default=None, help="profile log (default: <store>.plans.jsonl)")


def run(args: argparse.Namespace) -> int:
    if args.op_classes and not args.calibrate:
        raise ValueError("--op-classes shapes the calibration's fit: give it with --calibrate")
    if args.plans is not None or args.takes_only or args.plans_from:
        return _profile_plans(args)
    from tqdm import tqdm

    from fusiongym.graphs import zoo
    from fusiongym.reward import get_backend
    from fusiongym.reward.calibrate import collect_samples
    from fusiongym.reward.store import atomic_output

    graphs = [zoo.load(name.strip(), args.variant) for name in args.models.split(",") if name.strip()]
    backend = get_backend("tvm", target="llvm", store=args.store)
    with tqdm(total=args.groups, unit="group", desc="profile groups", dynamic_ncols=True) as bar:
        samples = collect_samples(graphs, backend, max_groups=args.groups, seed=args.seed,
                                  on_sample=lambda _: bar.update())
    print(f"measured {len(samples)} groups on {backend.device} "
          f"(store hit rate {backend.store.stats.hit_rate:.0%})")
    if args.calibrate:
        report = calibrate(samples, args.holdout, args.seed, args.op_classes)
        print(json.dumps(report, indent=2))
        if args.report:
            with atomic_output(Path(args.report)) as tmp:
                tmp.write_text(json.dumps(report, indent=2))
    return 0


def _profile_plans(args: argparse.Namespace) -> int:
    """Sample plans on the suite's graphs, measure every new group, log graphs and plans; then the take passes."""
    from fusiongym.agents.leaderboard import cases
    from fusiongym.reward import get_backend
    from fusiongym.reward.costmodel.records import ProfileLog
    from fusiongym.reward.measured_backend import MeasuredBackend

    from .leaderboard import _parse_dims

    if args.plans_from and (args.plans is not None or args.takes_only):
        raise ValueError("--plans-from measures another log's plans and samples none: leave out --plans and "
                         "--takes-only")
    if (args.plans is not None and args.plans < 1) or args.takes < 1 or args.trajectory_points < 0:
        raise ValueError(f"--plans and --takes must be at least 1 and --trajectory-points at least 0, got "
                         f"{args.plans}, {args.takes} and {args.trajectory_points}")
    # drawn before the store and log are opened, so a workload the suite lacks leaves nothing written
    case_list = cases(args.suite, args.graphs_per_workload, args.seed, args.variant, _parse_dims(args.max_dims),
                      idle=True, workloads={w.strip() for w in args.workloads.split(",") if w.strip()})
    log = ProfileLog(args.log) if args.log else ProfileLog.beside(args.store)
    # --takes-only and --plans-from check their log before the store is opened: a graph it lacks leaves
    # nothing written
    run_graphs = _logged_graph_hashes(case_list, log, "--takes-only", TAKES_ONLY_FIX) if args.takes_only else set()
    source = ProfileLog(args.plans_from) if args.plans_from else None
    if source is not None:
        if not source.path.is_file():
            raise ValueError(f"--plans-from: no profile log at {source.path}")
        _logged_graph_hashes(case_list, source, "--plans-from", PLANS_FROM_FIX)
    backend = get_backend(args.backend, store=args.store)
    if not isinstance(backend, MeasuredBackend):
        raise ValueError(f"backend {args.backend!r} keeps no MeasurementStore entries; profile --plans "
                         f"needs a measuring backend such as tvm")
    _require_log_measured_here(log, backend)
    work = []
    if not args.takes_only:
        run_graphs, work = (_copy_logged_plans(source, case_list, log) if source is not None
                            else _sample_new_plans(args, case_list, backend, log))
        _measure_and_log(work, backend, log, args.suite)
    # take pass 1 measures logged groups missing from the store; each later pass adds a take
    if args.takes > 1 or args.takes_only:
        first_take = _first_missing_take(backend, log.path, run_graphs, args.takes)
        if first_take > 1:
            print(f"every logged group holds at least {first_take - 1} take(s): "
                  f"{first_take - 1} of {args.takes} take passes skipped")
        for take in range(first_take, args.takes + 1):
            measured, cached = _take_pass_in_new_process(args.backend, backend.store.path, log.path, run_graphs, take,
                                                         args.seed * 1000 + take)
            backend.stats.measurements += measured
            backend.stats.cached += cached
    print(f"{len(work)} new plans, {backend.stats.measurements} groups measured, {backend.stats.cached} "
          f"from the store; log {log.path}")
    return 0


def _require_log_measured_here(log: ProfileLog, backend: MeasuredBackend) -> None:
    """Raise when another machine or backend measured plans of the log.

    Why: the store keys name the machine, so takes or plans from here would be stored beside
    the logged plans' timings, not added to them, and ``dataset export`` takes one machine's plans.
    """
    from fusiongym.reward.costmodel.records import MeasuringSetup, describe_setups

    here = MeasuringSetup(backend.device, backend.store_backend, backend.version())
    elsewhere = log.setups()
    del elsewhere[here]
    if elsewhere:
        raise ValueError(f"the profile log {log.path} holds plans measured on {describe_setups(elsewhere)}, and "
                         f"this run measures on {here}: its takes and plans would be stored apart from those "
                         f"plans' timings. Fix: run it where those plans were measured, or profile this machine "
                         f"into a store of its own (--store NEW.db)")


def _logged_graph_hashes(case_list: list[Case], log: ProfileLog, option: str, fix: str) -> set[str]:
    """The hashes of the cases' graphs, each of which the log must hold (``option`` samples no plans)."""
    known_graphs, _ = log.known()
    hashes = [(case.workload, case.graph().hash) for case in case_list]
    missing = sorted({workload for workload, graph_hash in hashes if graph_hash not in known_graphs})
    if missing:
        raise ValueError(f"{option}: the graphs of workloads {missing} are not in the log {log.path}; {fix}")
    return {graph_hash for _, graph_hash in hashes}


def _log_case_graphs(case_list: list[Case], log: ProfileLog, known_graphs: set[str]) -> dict[str, ComputeGraph]:
    """The cases' graphs by hash; those not in ``known_graphs`` (the log's, from ``log.known()``) are logged
    and added to it."""
    graphs = {}
    for case in case_list:
        graph = case.graph()
        graphs[graph.hash] = graph
        if graph.hash not in known_graphs:
            log.append_graph(graph, case.model, case.workload)
            known_graphs.add(graph.hash)
    return graphs


def _copy_logged_plans(source: ProfileLog, case_list: list[Case], log: ProfileLog) -> tuple[set[str], list]:
    """(hashes of every graph of the run, [(graph, method, plan, searched_on)] that ``source`` holds for
    them and ``log`` does not); logs new graphs.

    Why: plans searched anew follow each run's calibration, and a test τ depends on the plan set as
    much as on the model (EXPERIMENTS.md, "The EPYC again"), so stores compare only on one plan set."""
    known_graphs, known_plans = log.known()
    graphs = _log_case_graphs(case_list, log, known_graphs)
    work = [(graphs[plan.graph_hash], method, plan, searched_on)
            for plan, method, searched_on in source.plans_of_graphs(set(graphs)) if _is_new_plan(plan, known_plans)]
    return set(graphs), work


def _is_new_plan(plan: Plan, known_plans: set[tuple[str, str]]) -> bool:
    """Whether ``plan`` is not yet in ``known_plans`` (the log's, from ``log.known()``); a new one is added."""
    from fusiongym.reward.costmodel.records import plan_identity

    key = (plan.graph_hash, plan_identity(plan))
    if key in known_plans:
        return False
    known_plans.add(key)
    return True


def _sample_new_plans(args: argparse.Namespace, case_list: list[Case], backend: MeasuredBackend,
                      log: ProfileLog) -> tuple[set[str], list]:
    """(hashes of every graph of the run, [(graph, method name, plan, searched_on)] not yet logged); logs
    new graphs.

    Plans are sampled up front, before any is measured, for an honest ETA."""
    from fusiongym.agents import baselines
    from fusiongym.agents.baselines.search import greedy_trajectory
    from fusiongym.reward.costmodel.records import searched_on_record

    known_graphs, known_plans = log.known()
    graphs = _log_case_graphs(case_list, log, known_graphs)
    searched_on = searched_on_record(baselines.default_backend().profile)
    methods = [baselines.get(m.strip()) for m in args.methods.split(",") if m.strip()]
    deterministic = [m for m in methods if not m.seeded]
    seeded = [m for m in methods if m.seeded] or [baselines.get("random")]
    work = []
    for graph in graphs.values():
        sampled = []
        for index in range(args.plans):
            method = deterministic[index] if index < len(deterministic) else seeded[index % len(seeded)]
            # random plans draw schedules from the measuring backend's menu; searches plan on analytical
            sampled.append((method.name, method.decide(graph, backend if method.name == "random" else None,
                                                       seed=args.seed * 1000 + index)))
        sampled += [(TRAJECTORY_METHOD, plan) for plan in
                    greedy_trajectory(graph, baselines.default_backend(), args.trajectory_points)]
        for method_name, plan in sampled:
            if _is_new_plan(plan, known_plans):
                work.append((graph, method_name, plan, searched_on))
    return set(graphs), work


def _measure_and_log(work: list, backend: MeasuredBackend, log: ProfileLog, suite: str) -> None:
    """Measure every group of each plan (the store skips those it holds), then log the plan."""
    from tqdm import tqdm

    from fusiongym.reward.costmodel.records import StoreKeyFields

    total_groups = sum(plan.num_groups for _, _, plan, _ in work)
    with tqdm(total=total_groups, unit="group", desc=f"profile {suite}", dynamic_ncols=True) as bar:
        for graph, method, plan, searched_on in work:
            for group, schedule in zip(plan.groups, plan.schedules):
                backend.cached_group_latency(graph, group, schedule)
                bar.update(1)
            bar.set_postfix(measured=backend.stats.measurements, cached=backend.stats.cached)
            log.append_plan(plan, method, StoreKeyFields(backend.device, backend.store_backend,
                                                         backend.version(), backend.load_level(graph)), searched_on)


def _take_pass_in_new_process(backend_name: str, store: Path, log: Path, graph_hashes: Iterable[str], take: int,
                              seed: int) -> tuple[int, int]:
    """``_take_pass`` in a fresh process: (groups measured, groups already with enough takes).

    Why a process per take: a kernel's timing also depends on the process that times it. On
    the 2-core development VM ms-long parallel kernels measured 5-30 % apart in different
    processes while agreeing within one (the cause, perhaps where a process's buffers land
    in physical memory, was not pinned down), so takes from one process share that offset.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_take_pass, backend_name, str(store), str(log), sorted(graph_hashes), take, seed).result()


def _first_missing_take(backend: MeasuredBackend, log_path: Path, graph_hashes: Iterable[str], takes: int) -> int:
    """The first take pass with work to do: 1 + the fewest takes the store holds of a logged
    group (``takes + 1``, no pass at all, when every group holds ``takes``). Why: each pass
    starts a process, seconds of imports, even when every group already holds its take."""
    graphs, groups = _logged_groups(log_path, graph_hashes)
    fewest = min((backend.takes_held(graphs[graph_hash], list(nodes), schedule)
                  for graph_hash, nodes, schedule in groups), default=takes)
    return 1 + min(fewest, takes)


def _logged_groups(log_path: str | Path, graph_hashes: Iterable[str]
                   ) -> tuple[dict[str, ComputeGraph], set[tuple[str, tuple[int, ...], str]]]:
    """({graph hash: graph}, {(graph hash, node ids, schedule)}) of every logged plan of ``graph_hashes``."""
    from fusiongym.graphs import ComputeGraph
    from fusiongym.reward.costmodel.records import ProfileLog

    records = list(ProfileLog(log_path).records())
    wanted = set(graph_hashes)
    graphs = {r["graph_hash"]: ComputeGraph.from_json(json.dumps(r["graph"]))
              for r in records if r["kind"] == "graph" and r["graph_hash"] in wanted}
    groups = {(r["graph_hash"], tuple(group), schedule)
              for r in records if r["kind"] == "plan" and r["graph_hash"] in wanted
              for group, schedule in zip(r["plan"]["groups"], r["plan"]["schedules"])}
    return graphs, groups


def _take_pass(backend_name: str, store: str, log_path: str, graph_hashes: list[str], take: int,
               seed: int) -> tuple[int, int]:
    """One more take of every group of the logged plans of ``graph_hashes`` that has fewer than
    ``take``, in a shuffled order (so a slow spell of the machine falls on unrelated groups)."""
    from tqdm import tqdm

    from fusiongym.reward import get_backend

    backend = get_backend(backend_name, store=store)
    graphs, groups = _logged_groups(log_path, graph_hashes)
    order = sorted(groups)
    np.random.default_rng(seed).shuffle(order)
    with tqdm(order, unit="group", desc=f"take {take}", dynamic_ncols=True) as bar:
        for graph_hash, nodes, schedule in bar:
            backend.take_again(graphs[graph_hash], list(nodes), schedule, take)
            bar.set_postfix(measured=backend.stats.measurements, cached=backend.stats.cached)
    return backend.stats.measurements, backend.stats.cached


def calibrate(samples: list, holdout: float, seed: int, op_classes: bool = False) -> dict:
    """Fit on one share of the samples, score rank correlation on the rest, save the profile."""
    from fusiongym.reward import get_backend
    from fusiongym.reward.calibrate import fit_cpu_profile, kendall_tau
    from fusiongym.reward.devices import get_profile, save_profile

    order = np.random.default_rng(seed).permutation(len(samples))
    cut = max(1, int(len(samples) * holdout))
    held_out, fitted_on = [samples[i] for i in order[:cut]], [samples[i] for i in order[cut:]]
    profile, report = fit_cpu_profile(fitted_on, op_classes=op_classes)
    path = save_profile(profile)
    measured = np.array([s.measured_us for s in held_out])
    models = np.array([s.graph.name for s in held_out])
    taus, by_model = {}, {}
    for label, device in (("before", get_profile("cpu", use_calibrated=False)), ("after", profile)):
        analytical = get_backend("analytical", device=device)
        predicted = np.array([analytical.group_latency(s.graph, list(s.nodes), s.schedule).us for s in held_out])
        taus[label] = kendall_tau(predicted, measured)
        by_model[label] = {model: kendall_tau(predicted[models == model], measured[models == model])
                           for model in sorted(set(models)) if (models == model).sum() >= MIN_GROUPS_FOR_TAU}
    return {"profile_path": str(path), "fit": report.to_dict(), "held_out_groups": len(held_out),
            "held_out_groups_by_model": {model: int((models == model).sum()) for model in sorted(set(models))},
            "kendall_tau_held_out_before": taus["before"], "kendall_tau_held_out_after": taus["after"],
            "kendall_tau_held_out_by_model_before": by_model["before"],
            "kendall_tau_held_out_by_model_after": by_model["after"]}
