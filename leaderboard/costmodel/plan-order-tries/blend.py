"""Experiment (EXPERIMENTS.md, "LightGBM and the `plans` GNN blended"): one model's order, the other's scale.

The `plans` GNN orders unseen models' plans best and prices them worst (plan RMSE 209 % of Δ in the
README's table); LightGBM prices them best (65 % there) and orders them worse. Both predict ln µs as the prior plus a
residual, so a blend ``share`` * GNN + (1 - ``share``) * LightGBM in ln µs is one more residual
over the same prior. For each seed both are trained as `costmodel train --loss plans` trains them
(same seed), each share is scored on val and test (and each test model apart), and OUT gets the
mean over seeds (`costmodel eval`'s CSV columns, rows "GNN share <w>, <case>") and a PNG of plan τ:

    python leaderboard/costmodel/plan-order-tries/blend.py runs/costmodel/data.pt 8 0,0.25,0.5,0.75,1 OUT.csv
"""
import sys

import numpy as np
from tqdm import tqdm

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import (gnn_log_us, measured_us, score_cases, seed_means, train_models,
                                                 unseen_cases, write_bar_report)
from fusiongym.reward.costmodel.gnn import TrainConfig
from fusiongym.reward.costmodel.metrics import markdown_table


def main(data: str, seeds: str, shares: str, out: str) -> None:
    ds = CostDataset.load(data)
    measured, cases = measured_us(ds), unseen_cases(ds)
    rows = []   # "GNN share <w>, seed <s>, <case>"
    for seed in tqdm(range(int(seeds)), desc="seeds", unit="pair of models", dynamic_ncols=True):
        trained = train_models(ds, TrainConfig(loss="plans", seed=seed))
        gnn, boosted = gnn_log_us(trained.gnn, ds.samples), trained.boosted.predict_log_us(ds.samples)  # [N] ln µs
        for share in (float(s) for s in shares.split(",")):
            blended_us = np.exp(share * gnn + (1 - share) * boosted)
            rows += score_cases(f"GNN share {share:g}, seed {seed}", blended_us, measured, cases)
    means = seed_means(rows)
    print(markdown_table(means))
    write_bar_report(means, out, series=list(cases), ylabel="Kendall τ of plans (mean over seeds)")


if __name__ == "__main__":
    main(*sys.argv[1:5])
