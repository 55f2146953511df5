"""Do TVM's pool spin counts move the timings? Alternates fresh processes timing every group
of a model's TVM default plan, each group scheduled "parallel" (fresh store, the real
protocol), with TVM_THREAD_POOL_SPIN_COUNT at TVM's default (300,000) and at
fusiongym's (1,000).

    python leaderboard/benchmarks/tvm-pool-spin/compare_spin.py OUT.csv [ROUNDS]

Writes one row per (model, spin count, round, group) and prints, per model, the geometric
mean ratio of the groups' medians (1,000 / default) beside how far two runs of one setting
differ.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ("resnet18", "bert")
SPIN_COUNTS = ("300000", "1000")

TIME_EVERY_GROUP = """
import json, sys, tempfile
from fusiongym.graphs import zoo
from fusiongym.reward.plan import Plan
from fusiongym.reward.tvm_backend import TVMBackend
from fusiongym.reward.tvm_default import tvm_default_plan

graph = zoo.load(sys.argv[1], "small")
default = tvm_default_plan(graph)
plan = Plan(default.groups, ["parallel"] * default.num_groups, graph)
with tempfile.TemporaryDirectory() as folder:
    print(json.dumps(TVMBackend(store=f"{folder}/store.db").latency(graph, plan).group_us))
"""


def group_us(model: str, spin_count: str) -> list[float]:
    """Every group's timing, in a new process whose TVM pool spins ``spin_count`` yields."""
    env = {**os.environ, "TVM_THREAD_POOL_SPIN_COUNT": spin_count, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", TIME_EVERY_GROUP, model], env=env, check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.splitlines()[-1])


def summarize(rows: list[dict]) -> None:
    for model in MODELS:
        runs = {spin: [[r["us"] for r in rows if r["model"] == model and r["spin_count"] == spin and r["round"] == k]
                       for k in sorted({r["round"] for r in rows})] for spin in SPIN_COUNTS}
        default, ours = runs[SPIN_COUNTS[0]], runs[SPIN_COUNTS[1]]
        groups = range(len(default[0]))
        log_ratios = [math.log(statistics.median(run[g] for run in ours) / statistics.median(run[g] for run in default))
                      for g in groups]
        within = [abs(math.log(run[1][g] / run[0][g])) for run in (default, ours) for g in groups]
        print(f"{model}: {len(groups)} groups, geometric mean ratio 1,000 / default "
              f"{math.exp(statistics.mean(log_ratios)):.3f}; two runs of one setting differ by "
              f"{math.exp(statistics.mean(within)) - 1:.0%} per group on average")


def main(out_csv: str, rounds: int = 3) -> None:
    if rounds < 2:
        raise SystemExit(f"ROUNDS is {rounds}: the noise of one setting needs two rounds at least")
    rows = []
    for round_index in range(rounds):
        for spin_count in SPIN_COUNTS:
            for model in MODELS:
                rows += [{"model": model, "spin_count": spin_count, "round": round_index, "group": g, "us": us}
                         for g, us in enumerate(group_us(model, spin_count))]
                print(f"round {round_index + 1}/{rounds}: {model} at {spin_count} spins", flush=True)
    partial = Path(out_csv).with_suffix(".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    partial.rename(out_csv)
    summarize(rows)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
