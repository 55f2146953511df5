"""Experiment (EXPERIMENTS.md, "Where the residual errs, by schedule and kind"): the median error in ln µs
(predicted over measured) of the roofline prior and of the `plans` GNN (mean ln µs of seeds 0..K-1), per
model and per cell of (schedule, heaviest op: conv2d, matmul or another); cells of fewer than 3 groups are dots:

    python bias_by_schedule.py DATA.pt 2
"""
import sys

import numpy as np

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import analytical_us, gnn_log_us, gnn_of_seed, measured_us
from fusiongym.reward.costmodel.gnn import TrainConfig

KINDS = ("conv2d", "matmul", "other")


def print_cells(title: str, error_ln: np.ndarray, ds: CostDataset) -> None:
    models = np.array([data.model for data in ds.samples])
    schedule = np.array([ds.schedules[int(data.schedule)] for data in ds.samples])
    heaviest = np.array([ds.op_vocab[int(data.dominant_op)] for data in ds.samples])
    kind = np.where(np.isin(heaviest, KINDS[:2]), heaviest, "other")
    cells = [(s, k) for s in ds.schedules for k in KINDS]
    print(f"\n{title}: median ln(predicted / measured) (groups)")
    print(" " * 13, " ".join(f"{s[:9]:>9s}:{k[:4]:4s}" for s, k in cells))
    for model in sorted(set(models)):
        row = []
        for s, k in cells:
            chosen = (models == model) & (schedule == s) & (kind == k)
            row.append(f"{np.median(error_ln[chosen]):+6.2f}({chosen.sum():3d})" if chosen.sum() >= 3 else " " * 6
                       + ".   " + " ")
        print(f"{model:13s}", " ".join(row))


def main(data: str, seeds: str) -> None:
    ds = CostDataset.load(data)
    measured = measured_us(ds)
    print_cells("roofline prior", np.log(analytical_us(ds) / measured), ds)
    gnn = np.mean([gnn_log_us(gnn_of_seed(ds, TrainConfig(loss="plans"), seed), ds.samples)
                   for seed in range(int(seeds))], axis=0)
    print_cells(f"`plans` GNN, mean of {seeds} seeds", gnn - np.log(measured), ds)


if __name__ == "__main__":
    main(*sys.argv[1:3])
