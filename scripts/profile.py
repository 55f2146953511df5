"""Measure fused groups of zoo models on a real backend (into the store).

Two modes. ``--plans N`` samples N plans per graph of a workload suite (seeded random
merges and schedules, and the plans of baselines that search on the analytical model),
measures every group of every plan on the real backend and appends the graphs and plans to
the profile log beside the store: the data the learned cost model trains on
(``fusiongym dataset export``). Re-running the same command resumes: groups already in the
store and plans already in the log are skipped.

Without ``--plans`` it measures a seeded set of single groups; with ``--calibrate`` those
fit the analytical CPU profile to this machine (saved to ~/.cache/fusiongym/cpu_profile.json
and used by ``get_backend("analytical")`` from then on) and report the Kendall τ of
analytical vs measured group latencies, before and after the fit, on a held-out share.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

DEFAULT_PLAN_METHODS = "greedy_cost,inductor_rules,no_fusion,random,annealing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="resnet18,mobilenet_v2,bert,llama,mixtral_moe",
                        help="comma-separated zoo models (group mode)")
    parser.add_argument("--variant", default="small", choices=("small", "full"))
    parser.add_argument("--groups", type=int, default=120, help="distinct (group, schedule) pairs to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default=None, help="measurement store (default ~/.cache/fusiongym/measurements.db)")
    parser.add_argument("--calibrate", action="store_true", help="fit and save the analytical CPU profile")
    parser.add_argument("--holdout", type=float, default=0.3, help="share of groups kept out of the fit")
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
    plans.add_argument("--log", default=None, help="profile log (default: <store>.plans.jsonl)")


def run(args: argparse.Namespace) -> int:
    if args.plans is not None:
        return _profile_plans(args)
    from fusiongym.graphs import zoo
    from fusiongym.reward import get_backend
    from fusiongym.reward.calibrate import collect_samples

    graphs = [zoo.load(name.strip(), args.variant) for name in args.models.split(",") if name.strip()]
    backend = get_backend("tvm", target="llvm", store=args.store)
    samples = collect_samples(graphs, backend, max_groups=args.groups, seed=args.seed)
    print(f"measured {len(samples)} groups on {backend.device} "
          f"(store hit rate {backend.store.stats.hit_rate:.0%})")
    if args.calibrate:
        report = calibrate(samples, args.holdout, args.seed)
        print(json.dumps(report, indent=2))
        if args.report:
            with open(args.report, "w") as handle:
                json.dump(report, handle, indent=2)
    return 0


def _profile_plans(args: argparse.Namespace) -> int:
    """Sample plans on the suite's graphs, measure every new group, log graphs and plans."""
    from tqdm import tqdm

    from fusiongym.agents import baselines
    from fusiongym.agents.leaderboard import cases
    from fusiongym.reward import get_backend
    from fusiongym.reward.costmodel.records import ProfileLog, StoreKeyFields, plan_identity
    from fusiongym.reward.measured_backend import MeasuredBackend

    from .leaderboard import _parse_dims

    if args.plans < 1:
        raise ValueError(f"--plans must be at least 1, got {args.plans}")
    backend = get_backend(args.backend, store=args.store)
    if not isinstance(backend, MeasuredBackend):
        raise ValueError(f"backend {args.backend!r} keeps no MeasurementStore entries; profile --plans "
                         f"needs a measuring backend such as tvm")
    log = ProfileLog(args.log) if args.log else ProfileLog.beside(backend.store.path)
    known_graphs, known_plans = log.known()
    methods = [baselines.get(m.strip()) for m in args.methods.split(",") if m.strip()]
    deterministic = [m for m in methods if not m.seeded]
    seeded = [m for m in methods if m.seeded] or [baselines.get("random")]
    chosen = {w.strip() for w in args.workloads.split(",") if w.strip()}
    work = []  # (graph, method name, plan) to measure, sampled up front for an honest ETA
    for case in cases(args.suite, args.graphs_per_workload, args.seed, args.variant,
                      _parse_dims(args.max_dims), idle=True):
        if chosen and case.workload not in chosen:
            continue
        graph = case.graph()
        if graph.hash not in known_graphs:
            log.append_graph(graph, case.model, case.workload)
            known_graphs.add(graph.hash)
        for index in range(args.plans):
            method = deterministic[index] if index < len(deterministic) else seeded[index % len(seeded)]
            # random plans draw schedules from the measuring backend's menu; searches plan on analytical
            plan = method.decide(graph, backend if method.name == "random" else None,
                                 seed=args.seed * 1000 + index)
            identity = plan_identity(plan)
            if (graph.hash, identity) not in known_plans:
                known_plans.add((graph.hash, identity))
                work.append((graph, method.name, plan))
    total_groups = sum(plan.num_groups for _, _, plan in work)
    with tqdm(total=total_groups, unit="group", desc=f"profile {args.suite}", dynamic_ncols=True) as bar:
        for graph, method, plan in work:
            for group, schedule in zip(plan.groups, plan.schedules):
                backend.cached_group_latency(graph, group, schedule)
                bar.update(1)
            bar.set_postfix(measured=backend.stats.measurements, cached=backend.stats.cached)
            log.append_plan(plan, method, StoreKeyFields(backend.device, backend.store_backend,
                                                         backend.version(), backend.load_level(graph)))
    print(f"{len(work)} new plans, {backend.stats.measurements} groups measured, {backend.stats.cached} "
          f"from the store; log {log.path}")
    return 0


def calibrate(samples: list, holdout: float, seed: int) -> dict:
    """Fit on one share of the samples, score rank correlation on the rest, save the profile."""
    from fusiongym.reward import get_backend
    from fusiongym.reward.calibrate import fit_cpu_profile, kendall_tau
    from fusiongym.reward.devices import get_profile, save_profile

    order = np.random.default_rng(seed).permutation(len(samples))
    cut = max(1, int(len(samples) * holdout))
    held_out, fitted_on = [samples[i] for i in order[:cut]], [samples[i] for i in order[cut:]]
    profile, report = fit_cpu_profile(fitted_on)
    path = save_profile(profile)
    measured = [s.measured_us for s in held_out]
    taus = {}
    for label, device in (("before", get_profile("cpu", use_calibrated=False)), ("after", profile)):
        analytical = get_backend("analytical", device=device)
        predicted = [analytical.group_latency(s.graph, list(s.nodes), s.schedule).us for s in held_out]
        taus[label] = kendall_tau(predicted, measured)
    return {"profile_path": str(path), "fit": report.to_dict(), "held_out_groups": len(held_out),
            "kendall_tau_held_out_before": taus["before"], "kendall_tau_held_out_after": taus["after"]}
