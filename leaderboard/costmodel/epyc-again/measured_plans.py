"""Experiment (EXPERIMENTS.md, "The EPYC again"): how far apart a data set's measured plans lie.

For each val and test graph: its plans' measured µs (the sum of their groups' labels), max / min, the std
of their ln µs and the share of plan pairs measured ≥ 10 % apart (the pairs `Kendall τ plans ≥ 10 % apart`
scores), then every plan with its method and number of groups, fastest first:

    python leaderboard/costmodel/epyc-again/measured_plans.py runs/costmodel/data.pt
"""
import sys
from collections import defaultdict

import numpy as np

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import measured_us, plans_of_split

APART = np.log(1.1)


def main(data: str) -> None:
    dataset = CostDataset.load(data)
    group_us = measured_us(dataset)
    for split in ("val", "test"):
        plans_of_graph = defaultdict(list)                  # (model, graph hash) -> [(method, µs, groups)]
        for plan in plans_of_split(dataset, split):
            plans_of_graph[plan["model"], plan["graph_hash"]].append(
                (plan["method"], group_us[plan["samples"]].sum(), len(plan["samples"])))
        for (model, graph_hash), plans in plans_of_graph.items():
            plan_us = np.array([us for _, us, _ in plans])
            ln_us = np.log(plan_us)
            first, second = np.triu_indices(len(plan_us), 1)
            apart = np.mean(np.abs(ln_us[first] - ln_us[second]) > APART)
            print(f"{split} {model} {graph_hash}: {len(plans)} plans, fastest {plan_us.min():.0f} µs, "
                  f"max / min {plan_us.max() / plan_us.min():.2f}, std of ln µs {ln_us.std():.3f}, "
                  f"pairs >= 10 % apart {apart:.2f}")
            for method, us, groups in sorted(plans, key=lambda plan: plan[1]):
                print(f"    {method:24s} {us:9.0f} µs  {groups:3d} groups")


if __name__ == "__main__":
    main(sys.argv[1])
