"""Experiment (README, "Plan pairs past a noise margin"): the `plans` loss with and without the
order of near-tie plans (`TrainConfig.plan_margin`, `costmodel seeds --plan-margin M`).

ListMLE, the `plans` loss's default, fits the measured order of plans 1 % apart as hard as that
of plans 2x apart, though a take on another day reorders near-ties (leaderboard/costmodel/
EXPERIMENTS.md, "Takes on another day"). With a margin M the loss is pairwise, over the pairs of a
graph's plans measured more than M apart. Writes to OUT (`costmodel eval`'s CSV columns), for
ListMLE and each margin, at the full and at half the residual, the mean over seeds on val, test
and each test model (rows "<loss> at residual <S>, <case>"):

    python leaderboard/costmodel/plan-order-tries/tie_margin.py runs/testtoday/data.pt 8 0,0.05,0.1 OUT.csv
"""
import sys
from dataclasses import replace

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import seed_means, seed_spread
from fusiongym.reward.costmodel.gnn import TrainConfig
from fusiongym.reward.costmodel.metrics import markdown_table, write_csv


def main(data: str, seeds: str, margins: str, out: str) -> None:
    ds = CostDataset.load(data)
    rows = []   # "<loss> at residual <S>, seed <s>, <case>"
    for residual_scale in (1.0, 0.5):
        for margin in (None, *(float(m) for m in margins.split(","))):
            config = TrainConfig(loss="plans", residual_scale=residual_scale, plan_margin=margin)
            label = f"{'ListMLE' if margin is None else f'pairs > {margin:.0%} apart'} at residual {residual_scale:g}"
            rows += [replace(row, model=f"{label}, {row.model}") for row in seed_spread(ds, config, int(seeds))]
    means = seed_means(rows)
    print(markdown_table(means))
    write_csv(means, out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
