"""Experiment (EXPERIMENTS.md, "Shrinking the residual where seeds disagree"): which groups' errors cost the
test plans their order.

For each kind of group (its heaviest op; its schedule), the test plans are ranked once more with that kind's
groups taken at their measured µs and every other group predicted. How far plan τ rises is what that kind's
errors cost. Two predictors: the mean ln µs of the `plans` GNN over seeds 0..K-1 (the ensemble of the try
above) and the roofline prior alone. Printed per test model, the kinds that cost the ensemble most first:

    python leaderboard/costmodel/plan-order-tries/shrink/which_groups_reorder.py runs/median/data.pt 8
"""
import sys

import numpy as np

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import (analytical_us, gnn_log_us, gnn_of_seed, groups_and_plans_by_model,
                                                 measured_us)
from fusiongym.reward.costmodel.gnn import TrainConfig
from fusiongym.reward.costmodel.metrics import score


def kinds(ds: CostDataset, by: str) -> np.ndarray:
    """[num_samples] each group's heaviest op or its schedule."""
    if by == "schedule":
        return np.array([ds.schedules[int(data.schedule)] for data in ds.samples])
    return np.array([ds.op_vocab[int(data.dominant_op)] for data in ds.samples])


def main(data: str, seeds: str) -> None:
    ds = CostDataset.load(data)
    measured = measured_us(ds)
    config = TrainConfig(loss="plans")
    predictors = {"ensemble": np.exp(np.mean([gnn_log_us(gnn_of_seed(ds, config, seed), ds.samples)
                                              for seed in range(int(seeds))], axis=0)),
                  "roofline": analytical_us(ds)}
    for model, (samples, plans) in groups_and_plans_by_model(ds, ["test"]).items():
        plan_tau = {name: score(name, us, measured, samples, plans).plan_tau for name, us in predictors.items()}
        print(f"\n{model}: {len(plans)} plans, {len(samples)} groups; plan τ: ensemble {plan_tau['ensemble']:.3f}, "
              f"roofline {plan_tau['roofline']:.3f}")
        for by in ("dominant op", "schedule"):
            kind_of = kinds(ds, by)
            print(f"  by {by}: plan τ with that kind's groups measured (ensemble, roofline), groups of the kind")
            rows = []
            for kind in sorted(set(kind_of[samples])):
                exact = kind_of == kind
                rows.append((kind, *(score(name, np.where(exact, measured, us), measured, samples, plans).plan_tau
                                     for name, us in predictors.items()), int(exact[samples].sum())))
            for kind, ensemble_tau, roofline_tau, count in sorted(rows, key=lambda row: -row[1])[:6]:
                print(f"    {kind:20s} {ensemble_tau:6.3f} {roofline_tau:6.3f} {count:5d}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
