"""Experiment (README, "One efficiency per op class"): the learned models on each profile's prior.

The GNN (``--loss plans``, 8 seeds) takes the analytical backend's estimate as its prior, so
the calibrated profile is one of its inputs. For each profile the same store was exported
(runs/t10/a: "The EPYC again"'s store, its test split at 10 takes) with FUSIONGYM_CPU_PROFILE
set to it, and ``costmodel seeds`` trained and scored 8 seeds:

    FUSIONGYM_CPU_PROFILE=P fusiongym dataset export --store runs/t10/a/measurements.db --out D \\
        --test-models resnet50,vit --val-models bert
    fusiongym costmodel seeds --data D --out DIR --loss plans --seeds 8     # DIR/seeds-plans.csv

This prints, per split and metric, each seed's value on each profile's prior and how many
seeds the op-class profile won against the plain one (same seed, same data otherwise). Then
LightGBM, mean of 8 seeds at each setting of its grid (``costmodel tune --data D --out DIR
--seeds 8``; DIR/tune-lightgbm.csv copied to lightgbm-tune-*.csv), on both priors. FOLDER
holds the CSVs: ``.`` for the seven training architectures, ``nine`` for the nine (the same
store with RegNet and Whisper profiled in, README's "More architectures" commands; exported
with ``--profile P``):

    python learned.py . > learned.txt; python learned.py nine > nine/learned.txt
"""
import csv
import sys
from pathlib import Path

import numpy as np

RUNS = {"plain": "learned-seeds-plain.csv", "op-classes": "learned-seeds-op-classes.csv",
        "store op-classes": "learned-seeds-store-op-classes.csv"}
METRICS = {"plan_tau": "plan Kendall tau", "mape_pct": "group MAPE %", "rmse_pct_of_delta": "plan RMSE % of delta"}
SEEDS = 8
LIGHTGBM = {"plain": "lightgbm-tune-plain.csv", "op-classes": "lightgbm-tune-op-classes.csv"}


def main(folder: Path) -> None:
    rows = {name: {row["model"]: row for row in csv.DictReader(open(folder / path))}
            for name, path in RUNS.items() if (folder / path).exists()}
    for split in ("val", "test", "resnet50", "vit"):
        for metric, label in METRICS.items():
            values = {name: np.array([float(rows[name][f"seed {s}, {split}"][metric]) for s in range(SEEDS)])
                      for name in rows}
            better = values["op-classes"] > values["plain"] if metric == "plan_tau" else values["op-classes"] < values["plain"]
            print(f"{split:8s} {label:22s} " + "   ".join(f"{name} {v.mean():7.3f}" for name, v in values.items())
                  + f"   op-classes better in {better.sum()}/{SEEDS} seeds")
    tuned = {name: {row["model"]: row for row in csv.DictReader(open(folder / path))} for name, path in LIGHTGBM.items()}
    print("LightGBM, mean of 8 seeds: plan tau / plan RMSE % of delta / group MAPE %, val and test")
    for setting in dict.fromkeys(model.rsplit(", ", 1)[0] for model in tuned["plain"]):
        print(f"  {setting:36s} " + "   ".join(
            f"{name} " + "  ".join(f"{tuned[name][f'{setting}, {split}']['plan_tau'][:5]} / "
                                   f"{float(tuned[name][f'{setting}, {split}']['rmse_pct_of_delta']):.0f} / "
                                   f"{float(tuned[name][f'{setting}, {split}']['mape_pct']):.1f}" for split in ("val", "test"))
            for name in LIGHTGBM))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
