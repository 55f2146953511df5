"""Measure baselines, policies and submitted plans on fixed cases; write the leaderboard.

Example: ``fusiongym leaderboard --methods tvm_default,inductor_rules,annealing --suite test
--backend tvm --device cpu --variant small --cases-per-workload 2``. Results go to
``<out>/results/<suite>[-<variant>][-cap<dims>][-idle]-<backend>-<device>.csv``, ``<out>/LEADERBOARD.md`` and a
PNG chart beside the CSV. A re-run skips the case × method rows already in the CSV
(``--fresh`` recomputes those of the methods named); measured kernels come from the MeasurementStore either way.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # No fusiongym import here: the CLI builds every subcommand's parser on each start.
    parser.add_argument("--methods", default=None,
                        help="comma-separated baselines (fusiongym.agents.baselines.names()) and policy:PATH "
                             "(default: every baseline but exhaustive); no_fusion and tvm_default are always "
                             "measured, they are the speedup references")
    parser.add_argument("--suite", default="test", help="workload suite the cases come from (train, test, smoke)")
    parser.add_argument("--backend", default="tvm", choices=("tvm", "analytical"), help="the backend that measures")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--variant", choices=("small", "full"), default=None,
                        help="model variant for every workload (default: the suite's own)")
    parser.add_argument("--cases-per-workload", type=int, default=3)
    parser.add_argument("--idle", action="store_true",
                        help="every case on an idle device (loaded CPU timings vary by several x between sessions)")
    parser.add_argument("--max-dims", default="",
                        help="caps on drawn dims, e.g. batch=2,image=128,seq=256,tokens=256 (quick CPU runs)")
    parser.add_argument("--workloads", default="", help="comma-separated subset of the suite's workloads")
    parser.add_argument("--seed", type=int, default=0, help="case generation and seeded baselines")
    parser.add_argument("--budget", type=int, default=None,
                        help="evaluations for annealing and beam (default: 200 per node, at least 5,000)")
    parser.add_argument("--profile", default=None,
                        help="analytical device profile the search baselines plan with (default: cpu / h100_sxm)")
    parser.add_argument("--search-on-backend", action="store_true",
                        help="search baselines query the measuring backend itself (slow on tvm: every "
                             "candidate kernel is compiled and timed)")
    parser.add_argument("--submission", default=None, help="CSV of plans to measure (columns case_id, method, plan)")
    parser.add_argument("--store", default=None, help="MeasurementStore path (default: $FUSIONGYM_STORE or ~/.cache)")
    parser.add_argument("--out", default="leaderboard", help="folder for results/, LEADERBOARD.md and charts")
    parser.add_argument("--no-replay", action="store_true", help="skip re-building and re-timing every plan")
    parser.add_argument("--replay-tolerance", type=float, default=None,
                        help="relative difference a replay may show (default 0.15, or 3x the measured spread)")
    parser.add_argument("--validate-max-nodes", type=int, default=None,
                        help="on tvm, check fused vs unfused outputs for graphs up to this size "
                             "(default 64; 0: never)")
    parser.add_argument("--fresh", action="store_true", help="recompute the rows of the methods named by --methods (others are kept)")
    parser.add_argument("--list-cases", action="store_true", help="print the cases and exit")


def run(args: argparse.Namespace) -> int:
    from fusiongym.agents.leaderboard import (DEFAULT_METHODS, DEFAULT_VALIDATE_MAX_NODES, REPLAY_TOLERANCE,
                                              LeaderboardConfig, run_leaderboard, selected_cases, summarize)

    config = LeaderboardConfig(
        suite=args.suite, methods=args.methods.split(",") if args.methods else DEFAULT_METHODS,
        backend=args.backend, device=args.device, variant=args.variant, max_dims=_parse_dims(args.max_dims),
        idle=args.idle, cases_per_workload=args.cases_per_workload,
        workloads=tuple(w for w in args.workloads.split(",") if w), seed=args.seed, budget=args.budget,
        profile=args.profile, search_on_backend=args.search_on_backend, submission=args.submission,
        store=args.store, out=args.out, replay=not args.no_replay,
        replay_tolerance=args.replay_tolerance if args.replay_tolerance is not None else REPLAY_TOLERANCE,
        validate_max_nodes=(args.validate_max_nodes if args.validate_max_nodes is not None
                            else DEFAULT_VALIDATE_MAX_NODES),
        fresh=args.fresh)
    if args.list_cases:
        for case in selected_cases(config):
            print(f"{case.id}\t{case.model}/{case.variant}\tdims={case.dims}\tload={case.device_load}"
                  + (f"\trouting={list(case.routing)}" if case.routing else ""))
        return 0
    result = run_leaderboard(config)
    print(f"{len(result.rows)} rows in {result.csv_path} ({result.seconds:.0f} s); report {result.markdown_path}")
    for summary in summarize(result.rows):
        print(f"  {summary.method:<18} valid {summary.valid}/{summary.cases}  "
              f"vs tvm_default {summary.geomean_vs_tvm_default:.3g}x  vs no_fusion {summary.geomean_vs_no_fusion:.3g}x")
    return 0


def _parse_dims(text: str) -> dict[str, int]:
    """``"batch=2,seq=256"`` -> ``{"batch": 2, "seq": 256}``."""
    dims = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--max-dims expects name=integer pairs, got {item!r}")
        dims[name.strip()] = int(value)
    return dims
