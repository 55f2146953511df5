"""Experiment (leaderboard/costmodel/EXPERIMENTS.md, "Eight tries by hand"): keep the GNN state with the best val plan tau, not val group ln RMSE.

``train_gnn`` keeps the state whose val ln RMSE is lowest. Here its ``ln_rmse`` is replaced by
minus the mean plan tau over the val graphs, so the state kept is the one that orders val's
plans best. Prints the mean plan tau of ``--seeds`` seeds on val, test and each test model,
with the stock selection and with this one:

    python select_on_plan_tau.py runs/costmodel/data.pt plans 8
"""
import sys
from collections import defaultdict

import numpy as np
import torch

from fusiongym.reward.costmodel import evaluate
from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.gnn import TrainConfig
from fusiongym.reward.costmodel.metrics import kendall_tau

ds = CostDataset.load(sys.argv[1])
loss, seeds = sys.argv[2], int(sys.argv[3])
position = {index: k for k, index in enumerate(ds.indices("val"))}
val_plans = defaultdict(list)   # graph hash -> its plans as positions in the val batch
for plan in evaluate.plans_of_split(ds, "val"):
    val_plans[plan["graph_hash"]].append([position[i] for i in plan["samples"]])


@torch.no_grad()
def minus_val_plan_tau(net, batch) -> float:
    net.eval()
    predicted_us, measured_us = torch.exp(net.log_us(batch)).double().numpy(), torch.exp(batch.y).double().numpy()
    return -float(np.mean([kendall_tau(np.array([predicted_us[p].sum() for p in plans]),
                                       np.array([measured_us[p].sum() for p in plans]))
                           for plans in val_plans.values()]))


def mean_plan_tau() -> dict[str, float]:
    by_case = defaultdict(list)
    for row in evaluate.seed_spread(ds, TrainConfig(loss=loss), seeds):
        by_case[row.model.split(", ", 1)[1]].append(row.plan_tau)
    return {case: round(float(np.mean(taus)), 3) for case, taus in by_case.items()}


print("kept on val ln RMSE:", mean_plan_tau())
evaluate.train_gnn.__globals__["ln_rmse"] = minus_val_plan_tau   # the name train_gnn looks up
print("kept on val plan tau:", mean_plan_tau())
