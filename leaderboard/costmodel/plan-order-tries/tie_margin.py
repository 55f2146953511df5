"""Experiment (README, "Plan pairs past a noise margin"): the `plans` loss with and without the
order of near-tie plans (`TrainConfig.plan_margin`, `costmodel seeds --plan-margin M`).

ListMLE, the `plans` loss's default, fits the measured order of plans 1 % apart as hard as that
of plans 2x apart, though a take on another day reorders near-ties (leaderboard/costmodel/
EXPERIMENTS.md, "Takes on another day"). With a margin M the loss is pairwise, over the pairs of a
graph's plans measured more than M apart. Writes to OUT (CSV), for ListMLE and each margin, at
the full and at half the residual, the mean over seeds of plan tau (all pairs, and pairs >= 10 %
apart) on val, test and each test model:

    python leaderboard/costmodel/plan-order-tries/tie_margin.py runs/testtoday/data.pt 8 0,0.05,0.1 OUT.csv
"""
import csv
import sys
from collections import defaultdict

import numpy as np

from fusiongym.reward.costmodel import evaluate
from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.gnn import TrainConfig


def mean_scores(ds: CostDataset, seeds: int, config: TrainConfig) -> dict[tuple[str, str], float]:
    """(case, metric) -> mean over seeds."""
    values = defaultdict(list)
    for row in evaluate.seed_spread(ds, config, seeds):
        case = row.model.split(", ", 1)[1]
        values[(case, "plan_tau")].append(row.plan_tau)
        values[(case, "plan_tau_apart")].append(row.plan_tau_apart)
    return {key: float(np.mean(v)) for key, v in values.items()}


def main(data: str, seeds: str, margins: str, out: str) -> None:
    ds = CostDataset.load(data)
    rows = []
    for residual_scale in (1.0, 0.5):
        for margin in (None, *(float(m) for m in margins.split(","))):
            config = TrainConfig(loss="plans", residual_scale=residual_scale, plan_margin=margin)
            name = "ListMLE" if margin is None else f"pairs > {margin:.0%} apart"
            scores = mean_scores(ds, int(seeds), config)
            rows += [{"loss": name, "residual_scale": residual_scale, "case": case, "metric": metric,
                      "mean_of_seeds": round(value, 4)} for (case, metric), value in scores.items()]
            print(name, residual_scale, {f"{case} {metric}": round(value, 3)
                                         for (case, metric), value in scores.items()}, flush=True)
    with open(out, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main(*sys.argv[1:5])
