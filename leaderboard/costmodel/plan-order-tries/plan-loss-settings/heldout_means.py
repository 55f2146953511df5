"""Experiment (EXPERIMENTS.md, "The plans loss's temperature and weight"): `costmodel heldout` runs of one
setting with several --seed, averaged. Per held-out model, the GNN's plan τ over seeds; then the mean over
models of plan τ (and each seed's), group MAPE and plan RMSE % of Δ:

    python heldout_means.py xeon-median-labels/heldout/T0.5-W3-seed*.csv
"""
import csv
import sys
from statistics import mean


def gnn_rows(path: str) -> dict[str, dict]:
    """Held-out model -> the GNN's row of one `heldout-<loss>.csv` (not the summary rows)."""
    rows = {}
    for row in csv.DictReader(open(path)):
        model, scored = row["model"].rsplit(", ", 1)
        if scored == "gnn" and not model.startswith(("mean of", "min of", "max of")):
            rows[model] = row
    return rows


def mean_over(seeds: list[dict[str, dict]], models: list[str], column: str) -> float:
    """``column``'s mean over every seed and held-out model."""
    return mean(float(seed[model][column]) for seed in seeds for model in models)


def main(paths: list[str]) -> None:
    seeds = [gnn_rows(path) for path in paths]
    models = sorted(seeds[0])
    for model in models:
        print(f"{model}: plan τ {mean(float(seed[model]['plan_tau']) for seed in seeds):.3f}")
    per_seed = [mean(float(seed[model]["plan_tau"]) for model in models) for seed in seeds]
    print(f"mean of {len(models)} models, {len(seeds)} seeds: plan τ {mean(per_seed):.3f} (seeds: "
          f"{', '.join(f'{tau:.3f}' for tau in per_seed)}), group MAPE {mean_over(seeds, models, 'mape_pct'):.0f} %, "
          f"plan RMSE {mean_over(seeds, models, 'rmse_pct_of_delta'):.0f} % of Δ")


if __name__ == "__main__":
    main(sys.argv[1:])
