"""Experiment (README, "One efficiency per op class"): where does the calibrated roofline miss?

Fits the calibration (with its prior) on 315 groups of at most 4 nodes drawn from a profiled
store, as ``profile --calibrate --groups 450`` does, and prints the held-out log residuals
ln(predicted / measured): by the group's moved bytes (its working set: does a cache level
matter?), by bound and schedule, and by the group's heaviest op under each schedule:

    python residuals.py runs/costmodel/measurements.db leaderboard/costmodel/op-classes/residuals
"""
import collections
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "calibration-fit"))
from study import store_samples  # noqa: E402

from fusiongym.reward.analytical import AnalyticalBackend  # noqa: E402
from fusiongym.reward.calibrate import fit_cpu_profile  # noqa: E402

FITTED = 315
BYTE_EDGES = (0, 2**15, 2**17, 2**19, 2**20, 2**21, 2**25, 2**40)   # this EPYC: L1d 32 KiB, L2 1 MiB per core, L3 32 MiB
HEAVY_OPS = ("conv2d", "matmul", "softmax", "gelu", "silu", "mean", "add", "take")


def moved_bytes(backend: AnalyticalBackend, sample) -> float:
    """Bytes the group reads from outside and writes for outside: the roofline's memory traffic."""
    costs = backend._costs(sample.graph)
    members = set(sample.nodes)
    total = 0.0
    for n in sample.nodes:
        total += costs.own_read_list[n] + sum(b for src, b in costs.in_edges[n] if src not in members)
        total += costs.fixed_out[n][0]
        total += sum(b for b, _, consumers in costs.shared_out[n] if any(c not in members for c in consumers))
    return total


def print_by(rows: list[dict], key: str) -> None:
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row[key]].append(row["residual"])
    for value, residuals in sorted(groups.items()):
        residuals = np.array(residuals)
        print(f"  {key}={value!s:32s} n={len(residuals):5d} mean {residuals.mean():+.2f} "
              f"rms {np.sqrt(np.mean(residuals ** 2)):.2f}")


def main(store: str, out: str) -> None:
    pool = store_samples(store)
    order = np.random.default_rng(0).permutation(len(pool))
    profile, _ = fit_cpu_profile([pool[i] for i in order[:FITTED]])
    backend = AnalyticalBackend(profile)
    rows = []
    for i in order[FITTED:]:
        s = pool[i]
        terms = backend.group_terms(s.graph, s.nodes, s.schedule)
        heaviest = s.graph.nodes[max(s.nodes, key=lambda n: s.graph.arrays.flops[n])].op
        moved = moved_bytes(backend, s)
        rows.append({"schedule": s.schedule, "nodes": len(s.nodes), "bound": terms.bound, "heaviest_op": heaviest,
                     "moved_bytes": moved, "moved_bytes_bin": f"< {next(e for e in BYTE_EDGES if e > moved) / 1024:>10.0f} KiB",
                     "measured_us": s.measured_us, "predicted_us": terms.total_us,
                     "residual": float(np.log(terms.total_us / s.measured_us))})
    with open(f"{out}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    residual = np.array([r["residual"] for r in rows])
    print(f"{len(rows)} held-out groups: rms log error {np.sqrt(np.mean(residual ** 2)):.3f}")
    moved = np.array([r["moved_bytes"] for r in rows])
    print(f"moved bytes: median {np.median(moved) / 1024:.0f} KiB, 99th percentile {np.percentile(moved, 99) / 1024:.0f} "
          f"KiB, largest {moved.max() / 1024:.0f} KiB")
    for key in ("moved_bytes_bin", "bound", "schedule"):
        print_by(rows, key)
    for row in rows:
        row["heaviest_op x schedule"] = f"{row['heaviest_op']:8s} {row['schedule']}"
    print_by([r for r in rows if r["heaviest_op"] in HEAVY_OPS], "heaviest_op x schedule")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
