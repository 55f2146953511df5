"""Experiment (EXPERIMENTS.md, "The plans loss's temperature and weight"): can a global affine map of
ln µs, fitted on the training groups, win back the scale a setting loses? Per seed: fit
ln measured ≈ c + α ln predicted on the train split, then score val and test raw and mapped
(mean over seeds printed):

    python affine_calibration.py DATA.pt SEEDS T:W
"""
import sys

import numpy as np
import torch

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import (gnn_log_us, gnn_of_seed, measured_us, score_cases, seed_means,
                                                 unseen_cases)
from fusiongym.reward.costmodel.metrics import markdown_table
from sweep import plans_config


def main(data: str, seeds: str, setting: str) -> None:
    torch.set_num_threads(1)
    dataset = CostDataset.load(data)
    measured, cases = measured_us(dataset), unseen_cases(dataset)
    train = np.array(dataset.indices("train"))
    config = plans_config(setting)
    rows = []
    for seed in range(int(seeds)):
        log_us = gnn_log_us(gnn_of_seed(dataset, config, seed), dataset.samples)          # [N] ln µs
        alpha, offset = np.polyfit(log_us[train], np.log(measured[train]), 1)
        print(f"seed {seed}: ln measured ≈ {offset:+.3f} + {alpha:.3f} ln predicted on train", flush=True)
        rows += score_cases(f"raw, seed {seed}", np.exp(log_us), measured, cases)
        rows += score_cases(f"affine, seed {seed}", np.exp(offset + alpha * log_us), measured, cases)
    print(markdown_table(seed_means(rows)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
