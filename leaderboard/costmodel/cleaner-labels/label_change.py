"""Experiment (README, "Cleaner training labels"): how far the training and val labels moved when
their groups went from 1-2 takes to 3, and what that did to the models trained on them.

1. label-change.csv: per model, the old labels scored as a prediction of the new ones (group
   MAPE, plan tau over the model's plans, as `costmodel eval` scores a model), and the share of
   groups whose label fell by more than 5 %;
2. seed-means.csv: the mean over seeds of each `costmodel seeds` / `tune` CSV pair (old data,
   new data) named on the command line, per case (val, test, each test model), and the prior
   alone scored on both datasets (its val score moves with the val labels alone):

    python leaderboard/costmodel/cleaner-labels/label_change.py runs/costmodel/data.pt runs/takes3/data.pt \
        leaderboard/costmodel/measured-ops-prior/roofline-prior leaderboard/costmodel/cleaner-labels/three-takes \
        leaderboard/costmodel/cleaner-labels
"""
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import analytical_us, groups_and_plans_by_model, measured_us, unseen_cases
from fusiongym.reward.costmodel.metrics import score

SEED_FILES = ("seeds-plans.csv", "seeds-plans-residual-0.5.csv", "seeds-mse.csv", "tune-lightgbm.csv")
COLUMNS = ("plan_tau", "rmse_pct_of_delta", "mape_pct")


def sample_key(data) -> tuple:
    return data.graph_hash, tuple(data.nodes.tolist()), int(data.schedule)


def label_change(old: CostDataset, new: CostDataset) -> list[dict]:
    """Per model of train and val: the old labels scored against the new ones."""
    old_us = dict(zip((sample_key(d) for d in old.samples), measured_us(old)))
    new_us = measured_us(new)
    as_before = np.array([old_us[sample_key(d)] for d in new.samples])
    rows = []
    for model, (samples, plans) in groups_and_plans_by_model(new, ["train", "val"]).items():
        metrics = score(model, as_before, new_us, samples, plans)
        fell = np.log(as_before[samples] / new_us[samples]) > np.log(1.05)
        rows.append({"model": model, "split": new.split[samples[0]], "groups": len(samples), "plans": metrics.plans,
                     "old_labels_mape_pct": metrics.mape_pct, "old_labels_plan_tau": metrics.plan_tau,
                     "share_fell_over_5pct": float(fell.mean())})
    return rows


def means_in_seed_csv(path: Path) -> dict[tuple[str, str, str], float]:
    """(setting, case, column) -> mean over the seeds of a `costmodel seeds` or `tune` CSV; a seeds
    CSV's setting is ''. (evaluate.seed_means averages Metrics rows in memory; these are the files.)"""
    values = defaultdict(list)
    with path.open() as file:
        for row in csv.DictReader(file):
            name, case = row["model"].rsplit(", ", 1)
            setting = "" if name.startswith("seed ") else name
            for column in COLUMNS:
                values[(setting, case, column)].append(float(row[column]))
    return {key: float(np.mean(v)) for key, v in values.items()}


def compare_seed_files(before: Path, after: Path) -> list[dict]:
    rows = []
    for name in SEED_FILES:
        old, new = means_in_seed_csv(before / name), means_in_seed_csv(after / name)
        for key in sorted(old.keys() & new.keys()):
            setting, case, column = key
            rows.append({"file": name, "setting": setting, "case": case, "metric": column,
                         "before": old[key], "after": new[key]})
    return rows


def prior_alone(old: CostDataset, new: CostDataset) -> list[dict]:
    """The analytical prior scored against the old and the new labels, in ``compare_seed_files``' rows."""
    scored = [{case: score(case, analytical_us(ds), measured_us(ds), samples, plans)
               for case, (samples, plans) in unseen_cases(ds).items()} for ds in (old, new)]
    return [{"file": "the prior alone", "setting": "", "case": case, "metric": column,
             "before": getattr(scored[0][case], column), "after": getattr(scored[1][case], column)}
            for case in scored[1] for column in COLUMNS]


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(old_data: str, new_data: str, before: str, after: str, out_folder: str) -> None:
    folder, old, new = Path(out_folder), CostDataset.load(old_data), CostDataset.load(new_data)
    write_csv(label_change(old, new), folder / "label-change.csv")
    write_csv(compare_seed_files(Path(before), Path(after)) + prior_alone(old, new), folder / "seed-means.csv")


if __name__ == "__main__":
    main(*sys.argv[1:6])
