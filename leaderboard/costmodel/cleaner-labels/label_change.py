"""Experiment (leaderboard/costmodel/EXPERIMENTS.md, "Cleaner training labels"): how far the labels
moved when their groups got more takes (the same store's samples, exported before and after), and
what that did to the models trained and scored on them.

1. label-change.csv: per model, the old labels scored as a prediction of the new ones (group
   MAPE, plan tau over the model's plans and over its pairs of plans >= 10 % apart, as `costmodel
   eval` scores a model), the share of groups whose label fell by more than 5 % and the median
   plan's new latency over its old;
2. with two folders of `costmodel seeds` / `tune` CSVs (trained on the old data, on the new),
   seed-means.csv: the mean over seeds of each CSV pair, per case (val, test, each test model),
   and the prior alone scored on both datasets (its score moves with the labels alone):

    python leaderboard/costmodel/cleaner-labels/label_change.py OLD_DATA NEW_DATA OUT [OLD_SEEDS NEW_SEEDS]
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
COLUMNS = ("plan_tau", "plan_tau_apart", "rmse_pct_of_delta", "mape_pct")


def sample_key(data) -> tuple:
    return data.graph_hash, tuple(data.nodes.tolist()), int(data.schedule)


def label_change(old: CostDataset, new: CostDataset) -> list[dict]:
    """Per model of every split: the old labels scored against the new ones."""
    old_us = dict(zip((sample_key(d) for d in old.samples), measured_us(old)))
    new_us = measured_us(new)
    as_before = np.array([old_us[sample_key(d)] for d in new.samples])
    rows = []
    for model, (samples, plans) in groups_and_plans_by_model(new, ["train", "val", "test"]).items():
        metrics = score(model, as_before, new_us, samples, plans)
        fell = np.log(as_before[samples] / new_us[samples]) > np.log(1.05)
        plan_ratios = [new_us[plan["samples"]].sum() / as_before[plan["samples"]].sum() for plan in plans]
        rows.append({"model": model, "split": new.split[samples[0]], "groups": len(samples), "plans": metrics.plans,
                     "old_labels_mape_pct": metrics.mape_pct, "old_labels_plan_tau": metrics.plan_tau,
                     "old_labels_plan_tau_apart": metrics.plan_tau_apart,
                     "share_fell_over_5pct": float(fell.mean()),
                     "plan_us_new_over_old_median": float(np.median(plan_ratios))})
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


def main(old_data: str, new_data: str, out_folder: str, *seed_folders: str) -> None:
    folder, old, new = Path(out_folder), CostDataset.load(old_data), CostDataset.load(new_data)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(label_change(old, new), folder / "label-change.csv")
    if seed_folders:
        before, after = map(Path, seed_folders)
        write_csv(compare_seed_files(before, after) + prior_alone(old, new), folder / "seed-means.csv")


if __name__ == "__main__":
    main(*sys.argv[1:])
