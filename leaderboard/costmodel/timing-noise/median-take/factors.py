"""Experiment (README, "The median take, not the fastest"): what a kernel's timing moves with.

One process: each of N test kernels built twice and timed on two allocations of its buffers
(build 0 / 1 x allocation 0 / 1, in that order, back to back), then, after all the others,
build 0 on allocation 0 again (round 1). Appends one JSON line per timing to OUT; run it
in several processes (PROC = 0, 1, ...), then summarise:

    for p in 0 1 2 3; do python factors.py runs/again/measurements.db.plans.jsonl factors.jsonl 120 $p; done
    python factors.py --summary factors.jsonl
"""
import collections
import json
import sys
import time

import numpy as np
import tvm

from fusiongym.reward import timing
from fusiongym.reward.tvm_apply import random_arrays
from kernels import sample_test_kernels


def measure(log: str, out: str, count: int, proc: int) -> None:
    backend, kernels = sample_test_kernels(log, count, seed=0)
    order = list(range(count))
    np.random.default_rng(100 + proc).shuffle(order)   # each process its own order
    device = tvm.cpu()

    def timed_us(built, args) -> float:
        return timing.measure(built.executable, args, backend.protocol, entry=built.name, device=device).median_us

    def line(index: int, build: int, alloc: int, round_: int, us: float) -> str:
        graph, nodes, schedule = kernels[index]
        return json.dumps({"kernel": index, "schedule": schedule, "proc": proc, "build": build, "alloc": alloc,
                           "round": round_, "us": us, "t": time.time()}) + "\n"

    kept = {}
    with open(out, "a") as f:
        for index in order:
            graph, nodes, schedule = kernels[index]
            builds = [backend.build_group(graph, nodes, schedule) for _ in range(2)]
            allocs = [[tvm.runtime.tensor(a, device) for a in random_arrays(builds[0].arg_specs())] for _ in range(2)]
            for build in range(2):
                for alloc in range(2):
                    f.write(line(index, build, alloc, 0, timed_us(builds[build], allocs[alloc])))
            kept[index] = (builds[0], allocs[0])
        for index in order:
            f.write(line(index, 0, 0, 1, timed_us(*kept[index])))


def summary(path: str) -> None:
    """Per-timing std of ln between two timings of one kernel that differ in one factor."""
    ln = collections.defaultdict(dict)
    for row in map(json.loads, open(path)):
        ln[row["kernel"]][(row["proc"], row["build"], row["alloc"], row["round"])] = np.log(row["us"])
    procs = sorted({p for v in ln.values() for p, *_ in v})

    def std(pairs_of) -> tuple[float, int]:
        diffs = np.array([a - b for v in ln.values() for a, b in pairs_of(v)])
        return float(np.sqrt(np.mean(diffs ** 2) / 2)), len(diffs)

    rows = {
        "other allocation, back to back": lambda v: [(v[(p, b, 0, 0)], v[(p, b, 1, 0)]) for p in procs for b in (0, 1)],
        "other build, one timing later": lambda v: [(v[(p, 0, a, 0)], v[(p, 1, a, 0)]) for p in procs for a in (0, 1)],
        "same build and buffers, ~2 min later": lambda v: [(v[(p, 0, 0, 0)], v[(p, 0, 0, 1)]) for p in procs],
        "another process": lambda v: [(v[(p, 0, 0, 0)], v[(q, 0, 0, 0)]) for p in procs for q in procs if p < q],
    }
    print(f"{len(ln)} kernels, {len(procs)} processes; std of ln of one timing (from pairs of timings):")
    for name, pairs_of in rows.items():
        value, pairs = std(pairs_of)
        print(f"  {name:40s} {value:.3f}  ({pairs} pairs)")


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary(sys.argv[2])
    else:
        measure(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
