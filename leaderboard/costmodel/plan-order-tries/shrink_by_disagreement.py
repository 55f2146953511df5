"""Experiment (EXPERIMENTS.md, "Shrinking the residual where seeds disagree"): trust the roofline
where the learned residual is uncertain.

On unseen models the `plans` GNN can order plans worse than its own prior (ResNet-50 on the Xeon:
roofline plan τ 0.46, the GNN about 0). A global residual scale trusts the prior alike everywhere.
Here K models that differ only in their seed stand for the residual's uncertainty: per group, the
ensemble's mean residual r (ln µs over the prior) is shrunk by c² / (c² + s²), s the seeds' std of
their residuals, as a Gaussian prior of std c on the residual would shrink a measurement of
variance s². Control: the same mean residual times one global factor a. Each of E disjoint ensembles
of K seeds is scored on val and test (and each test model apart); OUT gets the mean over ensembles
(`costmodel eval`'s CSV columns, rows "<rule>, <case>") and a PNG of plan τ:

    python leaderboard/costmodel/plan-order-tries/shrink_by_disagreement.py runs/median/data.pt 4 8 \
        0.03,0.06,0.12,0.25 0,0.25,0.5,0.75,1 OUT.csv
"""
import sys

import numpy as np
from tqdm import tqdm

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import (analytical_us, gnn_log_us, gnn_of_seed, measured_us, score_cases,
                                                 seed_means, unseen_cases, write_bar_report)
from fusiongym.reward.costmodel.gnn import TrainConfig
from fusiongym.reward.costmodel.metrics import markdown_table


def seed_residuals(ds: CostDataset, seeds: range) -> np.ndarray:
    """[K, N] ln µs residual over the prior of the `plans` GNN of each seed, on every sample."""
    prior_log_us = np.log(analytical_us(ds))
    config = TrainConfig(loss="plans")
    return np.array([gnn_log_us(gnn_of_seed(ds, config, seed), ds.samples) - prior_log_us for seed in seeds])


def disagreement_against_error(mean: np.ndarray, std: np.ndarray, true_residual: np.ndarray, ds: CostDataset,
                               ensemble: int) -> str:
    """Whether the seeds disagree where the ensemble errs: per split, the Spearman correlation of
    the seeds' std with the ensemble's |error| in ln µs, and their medians."""
    lines = []
    for split in ("val", "test"):
        samples = ds.indices(split)
        error = np.abs(mean[samples] - true_residual[samples])
        rank_std, rank_error = (np.argsort(np.argsort(x)) for x in (std[samples], error))
        lines.append(f"ensemble {ensemble}, {split}: Spearman(seed std, |error|) "
                     f"{np.corrcoef(rank_std, rank_error)[0, 1]:.3f}, median seed std {np.median(std[samples]):.3f}, "
                     f"median |error| {np.median(error):.3f}")
    return "\n".join(lines)


def main(data: str, ensembles: str, members: str, shrink_stds: str, scales: str, out: str) -> None:
    ds = CostDataset.load(data)
    measured, cases, prior_log_us = measured_us(ds), unseen_cases(ds), np.log(analytical_us(ds))
    k = int(members)
    rows = []   # "<rule>, seed <e>, <case>": seed_means averages over e (the ensemble; for one seed, the seed)
    for ensemble in tqdm(range(int(ensembles)), desc="ensembles", unit="ensemble", dynamic_ncols=True):
        seeds = range(ensemble * k, (ensemble + 1) * k)
        residuals = seed_residuals(ds, seeds)                                     # [K, N]
        mean, std = residuals.mean(axis=0), residuals.std(axis=0, ddof=1)        # [N]
        for seed, residual in zip(seeds, residuals):
            rows += score_cases(f"one seed, seed {seed}", np.exp(prior_log_us + residual), measured, cases)
        for a in (float(s) for s in scales.split(",")):
            rows += score_cases(f"mean residual x {a:g}, seed {ensemble}", np.exp(prior_log_us + a * mean),
                                measured, cases)
        print(disagreement_against_error(mean, std, np.log(measured) - prior_log_us, ds, ensemble))
        for c in (float(s) for s in shrink_stds.split(",")):
            factor = c * c / (c * c + std * std)
            rows += score_cases(f"shrunk at c {c:g}, seed {ensemble}", np.exp(prior_log_us + factor * mean),
                                measured, cases)
            print(f"ensemble {ensemble}, c {c:g}: mean shrink factor on test {factor[ds.indices('test')].mean():.3f}")
    means = seed_means(rows)
    print(markdown_table(means))
    write_bar_report(means, out, series=list(cases), ylabel="Kendall τ of plans (mean over ensembles)")


if __name__ == "__main__":
    main(*sys.argv[1:7])
