"""Experiment (EXPERIMENTS.md, "The plans loss's temperature and weight"): how far apart a setting's
predicted plans lie, against the measured. Per test model and seed: the std over its plans of
ln(predicted plan µs), over the same std of ln(measured plan µs); and the mean ln(predicted / measured).

    python plan_spread.py DATA.pt SEEDS T:W,T:W
"""
import sys

import numpy as np
import torch

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import gnn_log_us, gnn_of_seed, groups_and_plans_by_model, measured_us
from sweep import plans_config


def plan_log_us(sample_us: np.ndarray, plans: list[list[int]]) -> np.ndarray:
    """[P] ln µs of each plan: the sum of its groups' µs."""
    return np.log([sample_us[plan].sum() for plan in plans])


def main(data: str, seeds: str, settings: str) -> None:
    torch.set_num_threads(1)
    dataset = CostDataset.load(data)
    measured = measured_us(dataset)
    plans_by_model = {model: [plan["samples"] for plan in plans]
                      for model, (_, plans) in sorted(groups_and_plans_by_model(dataset, ["test"]).items())}
    for setting in settings.split(","):
        config = plans_config(setting)
        temperature, weight = config.plan_temperature, config.rank_weight
        spread: dict[str, list[tuple[float, float]]] = {model: [] for model in plans_by_model}
        for seed in range(int(seeds)):
            predicted = np.exp(gnn_log_us(gnn_of_seed(dataset, config, seed), dataset.samples))   # [N] µs
            for model, plans in plans_by_model.items():
                predicted_log, measured_log = plan_log_us(predicted, plans), plan_log_us(measured, plans)
                spread[model].append((predicted_log.std() / measured_log.std(),
                                      float(np.mean(predicted_log - measured_log))))
        for model, rows in spread.items():
            ratio, bias = np.array(rows).T
            print(f"T {temperature:g}, W {weight:g}, {model}: predicted / measured std of plan ln µs "
                  f"{ratio.mean():.2f} ({ratio.min():.2f}-{ratio.max():.2f}), mean ln(predicted / measured) "
                  f"{bias.mean():+.2f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
