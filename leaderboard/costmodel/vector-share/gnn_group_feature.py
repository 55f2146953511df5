"""Experiment (README, "What LLVM vectorizes"): does the `plans` GNN gain from the vector share too?

The shipped GNN does not see ``vector`` (LightGBM does). Here its two columns are appended to
each group's features (the GNN's head reads them beside the pooled nodes and the prior), and
8 seeds are trained and scored as ``costmodel seeds --loss plans`` does; ``control`` runs the
same script without them:

    python gnn_group_feature.py ../../../runs/vector/seven/data.pt control > gnn-seven-control.txt
    python gnn_group_feature.py ../../../runs/vector/seven/data.pt vector > gnn-seven-vector.txt
"""
import sys

import numpy as np
import torch

import fusiongym.reward.costmodel.gnn as gnn
import fusiongym.reward.costmodel.model as model
from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import seed_spread
from fusiongym.reward.costmodel.features import GROUP_VECTOR_FEATURES
from fusiongym.reward.costmodel.gnn import TrainConfig

SEEDS = 8


def main(data: str, variant: str) -> None:
    dataset = CostDataset.load(data)
    if variant == "vector":
        for sample in dataset.samples:
            sample.group = torch.cat([sample.group, sample.vector.to(sample.group.dtype)], dim=1)
        for module in (gnn, model):
            module.GROUP_FEATURES = (*module.GROUP_FEATURES, *GROUP_VECTOR_FEATURES)
    rows = seed_spread(dataset, TrainConfig(loss="plans"), SEEDS)
    for case in ("val", "test", "resnet50", "vit"):
        picked = [r for r in rows if r.model.endswith(f", {case}")]
        tau = np.array([r.plan_tau for r in picked])
        print(f"{variant:8s} {case:9s} plan tau {tau.mean():.3f} (seeds {tau.min():.3f}-{tau.max():.3f})  "
              f"plan RMSE % of delta {np.mean([r.rmse_pct_of_delta for r in picked]):6.1f}  "
              f"group MAPE % {np.mean([r.mape_pct for r in picked]):5.1f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
