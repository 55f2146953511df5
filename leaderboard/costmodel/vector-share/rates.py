"""Experiment (README, "What LLVM vectorizes"): how fast does a kernel run under the "default" schedule, by its vector share?

Every single-node group of a profiled store measured with the "default" schedule (TVM's
unscheduled kernel) and of at least 10 kFLOP: its measured GFLOP/s beside the vector share of
its node (``reward.vector_share``, read on this host, which must be the store's). Per op, the
correlation of ln GFLOP/s with the share; then the convolutions and matmuls one by one:

    python rates.py ../../../runs/costmodel/measurements.db > rates.txt
"""
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "calibration-fit"))
from study import store_samples  # noqa: E402

from fusiongym.reward.vector_share import vector_shares  # noqa: E402

MIN_FLOPS = 1e4


def main(store: str) -> None:
    known: dict[str, float] = {}
    rows = []
    for sample in store_samples(store, 1, frozenset()):
        node = sample.graph.nodes[sample.nodes[0]]
        if sample.schedule != "default" or float(node.flops) < MIN_FLOPS:
            continue
        share = vector_shares(sample.graph, [node.id], known)[node.id]
        rows.append((node.op, float(node.flops) / sample.measured_us / 1e3, share, sample.graph.name,
                     [tuple(t.shape) for t in node.inputs]))
    print(f"{'op':12s}    n  corr(ln GFLOP/s, share)  GFLOP/s median: share < 0.5 / share >= 0.5")
    for op, count in collections.Counter(r[0] for r in rows).most_common():
        if count < 5:
            continue
        rates, shares = (np.array(column) for column in zip(*[(r[1], r[2]) for r in rows if r[0] == op]))
        corr = np.corrcoef(np.log(rates), shares)[0, 1] if shares.std() > 0 else float("nan")
        low, high = rates[shares < 0.5], rates[shares >= 0.5]
        print(f"{op:12s} {count:4d}  {corr:+.2f}                    "
              f"{np.median(low) if len(low) else float('nan'):6.2f} (n={len(low)}) / "
              f"{np.median(high) if len(high) else float('nan'):6.2f} (n={len(high)})")
    print("\nconvolutions and matmuls, slowest first: GFLOP/s, vector share, model, input shapes")
    for op, rate, share, model, shapes in sorted((r for r in rows if r[0] in ("conv2d", "matmul")), key=lambda r: r[1]):
        print(f"  {op:7s} {rate:7.2f}  {share:.2f}  {model:14s} {shapes}")


if __name__ == "__main__":
    main(sys.argv[1])
