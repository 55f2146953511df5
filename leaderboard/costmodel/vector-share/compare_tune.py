"""Experiment (README, "What LLVM vectorizes"): LightGBM's grid without and with the vector share.

Two ``costmodel tune --seeds 8`` outputs (tune-lightgbm.csv: the mean of 8 seeds per setting)
on the same store, exported before (format /4, no ``vector``) and after: per setting and split,
plan τ, plan RMSE % of Δ and group MAPE %, before -> after, and how many settings gained:

    python compare_tune.py lightgbm-seven-before.csv lightgbm-seven-after.csv > lightgbm-seven.txt
"""
import csv
import sys

SPLITS = ("val", "test", "resnet50", "vit")


def main(before_path: str, after_path: str) -> None:
    before = {row["model"]: row for row in csv.DictReader(open(before_path))}
    after = {row["model"]: row for row in csv.DictReader(open(after_path))}
    gains = {split: [0, 0, 0, 0] for split in SPLITS}
    print(f"{'setting':38s} {'split':9s} plan tau         RMSE % of delta   group MAPE %")
    for name in before:
        setting, split = name.rsplit(", ", 1)
        if split not in SPLITS:
            continue
        tau, rmse, mape = ((float(before[name][key]), float(after[name][key]))
                           for key in ("plan_tau", "rmse_pct_of_delta", "mape_pct"))
        gains[split][0] += tau[1] > tau[0]
        gains[split][1] += rmse[1] < rmse[0]
        gains[split][2] += mape[1] < mape[0]
        gains[split][3] += 1
        print(f"{setting:38s} {split:9s} {tau[0]:.3f} -> {tau[1]:.3f}   {rmse[0]:4.0f} -> {rmse[1]:4.0f}      "
              f"{mape[0]:5.1f} -> {mape[1]:5.1f}")
    for split, (tau, rmse, mape, settings) in gains.items():
        print(f"{split}: with the vector share, plan tau higher at {tau}/{settings} settings, "
              f"plan RMSE lower at {rmse}/{settings}, group MAPE lower at {mape}/{settings}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
