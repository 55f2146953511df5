"""Policy plan vs TorchInductor's own fusion vs TVM's default plan, on real latency of one device.

Example (GPU): ``fusiongym compare --device cuda --suite test --variant small
--cases-per-workload 2 --out leaderboard``. Per case (the leaderboard's fixed cases):

* ``policy``: the pretrained policy's plan, each group one Inductor region (torch backend);
* ``inductor_default``: the whole graph as one Inductor region, so Inductor fuses as it likes;
* ``tvm_default``: TVM's own FuseOps plan on the tvm backend (skipped where TVM is missing).

Writes ``<out>/compare/<suite>-<variant>-<device>.csv`` and ``COMPARE-<suite>-<variant>-<device>.md``
with the device fingerprint and library versions. Latencies are sums of per-group times, as the
environment's reward counts them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from tqdm import tqdm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--suite", default="test")
    parser.add_argument("--variant", choices=("small", "full"), default="small")
    parser.add_argument("--cases-per-workload", type=int, default=1)
    parser.add_argument("--workloads", default="", help="comma-separated subset of the suite's workloads")
    parser.add_argument("--max-dims", default="", help="caps on drawn dims, e.g. batch=2,image=64")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the torch and tvm kernels (default: all available; on busy shared "
                             "cores 1 avoids OpenMP barrier stalls)")
    parser.add_argument("--store", default=None, help="MeasurementStore path (default: $FUSIONGYM_STORE or ~/.cache)")
    parser.add_argument("--out", default="leaderboard")


def run(args: argparse.Namespace) -> int:
    from fusiongym.agents import FusionPolicy
    from fusiongym.agents.leaderboard import cases
    from fusiongym.reward import Plan
    from fusiongym.reward.fingerprint import describe_machine
    from fusiongym.reward.store import atomic_output
    from fusiongym.reward.torch_backend import TorchBackend, library_versions

    from .leaderboard import _parse_dims

    case_list = cases(args.suite, args.cases_per_workload, variant=args.variant, max_dims=_parse_dims(args.max_dims),
                      idle=True, workloads={w for w in args.workloads.split(",") if w})
    torch_backend = TorchBackend(device=args.device, num_threads=args.threads, store=args.store)
    tvm_backend, tvm_note = _tvm_backend(args.device, args.threads, args.store)
    policy = FusionPolicy.pretrained()
    rows = []
    for case in tqdm(case_list, desc="compare", unit="case", dynamic_ncols=True):
        graph = case.graph()
        plans = {"policy": (torch_backend, policy.decide(graph, torch_backend)),
                 "inductor_default": (torch_backend, Plan([list(range(graph.num_nodes))], ["default"], graph.hash))}
        if tvm_backend is not None:
            from fusiongym.reward.tvm_default import tvm_default_plan

            plans["tvm_default"] = (tvm_backend, tvm_default_plan(graph))
        for method, (backend, plan) in plans.items():
            report = backend.latency(graph, plan)
            rows.append({"case_id": case.id, "dims": case.dims, "num_nodes": graph.num_nodes, "method": method,
                         "backend": backend.name, "num_groups": plan.num_groups,
                         "latency_us": round(report.total_us, 2), "spread": round(report.spread, 4),
                         "graph_hash": graph.hash, "plan": json.dumps({"groups": plan.groups,
                                                                       "schedules": plan.schedules})})
            tqdm.write(f"{case.id:28s} {method:17s} {report.total_us:12.1f} us  ({plan.num_groups} groups)")
    out = Path(args.out) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.suite}-{args.variant}-{args.device}"
    with atomic_output(out / f"{stem}.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["case_id"])
        writer.writeheader()
        writer.writerows(rows)
    machine = {**describe_machine(), **library_versions(), "device": torch_backend.device}
    with atomic_output(out / f"COMPARE-{stem}.md") as tmp:
        tmp.write_text(_markdown(rows, machine, tvm_note, args))
    print(f"wrote {out / f'{stem}.csv'} and {out / f'COMPARE-{stem}.md'}")
    return 0


def _tvm_backend(device: str, threads: int | None, store: str | None):
    """The TVM backend for the device, or None and the reason it is left out."""
    from fusiongym.envs import make_backend

    try:
        return make_backend("tvm", device, num_cores=threads, store=store, measure_load=False), ""
    except ImportError as error:
        return None, f"tvm_default not measured: TVM is not installed here ({error})"


def _markdown(rows: list[dict], machine: dict, tvm_note: str, args: argparse.Namespace) -> str:
    methods = list(dict.fromkeys(row["method"] for row in rows))
    by_case: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault(row["case_id"], {})[row["method"]] = row
    lines = [f"# Policy vs Inductor vs TVM on {machine['device']}", "",
             f"`fusiongym compare --device {args.device} --suite {args.suite} --variant {args.variant} "
             f"--cases-per-workload {args.cases_per_workload}"
             + (f" --workloads {args.workloads}" if args.workloads else "")
             + (f" --threads {args.threads}" if args.threads else "")
             + (f" --max-dims {args.max_dims}" if args.max_dims else "") + "`", "",
             "Versions: " + ", ".join(f"{k} {machine.get(k)}" for k in ("torch", "triton", "tvm", "python")), ""]
    if tvm_note:
        lines += [tvm_note, ""]
    lines += ["| case | nodes | " + " | ".join(f"{m} µs (groups)" for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
    for case_id, results in by_case.items():
        cells = [f"{results[m]['latency_us']:.1f} ({results[m]['num_groups']})" if m in results else "-"
                 for m in methods]
        nodes = next(iter(results.values()))["num_nodes"]
        lines.append(f"| {case_id} | {nodes} | " + " | ".join(cells) + " |")
    if "inductor_default" in methods:
        ratios = [r["policy"]["latency_us"] / r["inductor_default"]["latency_us"]
                  for r in by_case.values() if "policy" in r and "inductor_default" in r]
        if ratios:
            geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
            lines += ["", f"Geomean policy / inductor_default latency: {geomean:.2f} (< 1: the policy's plan is faster)."]
    return "\n".join(lines) + "\n"
