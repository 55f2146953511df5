"""Experiment (EXPERIMENTS.md, "The plans loss's temperature and weight"): the two settings of the
`plans` loss that were never swept.

``plan_temperature`` T is the ln µs between two plans' latencies worth one unit of ListMLE score
(shipped 0.05: plans 5 % apart differ by one unit); ``rank_weight`` W is the plan term's weight
beside the mse term on groups (shipped 1). Each setting is trained as `costmodel seeds --loss plans`
trains (seeds 0..K-1, early stopping on val's group RMSE) and scored in torch (``torch_seeds.py``);
each seed's val, test and per-test-model scores are written to OUT/T-W.csv. Settings can run in
separate processes (2 cores: two at once); ``report`` averages OUT/*-*.csv over seeds into
OUT/settings.csv, settings.md (with test τ's range over seeds) and settings.png (val and test plan τ):

    python sweep.py DATA.pt 8 OUT 0.02:1,0.05:1,0.1:1
    python sweep.py report OUT
"""
import csv
import sys
from dataclasses import asdict
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "network-variants"))

from torch_seeds import seed_rows  # noqa: E402

from fusiongym.reward.costmodel.dataset import CostDataset  # noqa: E402
from fusiongym.reward.costmodel.gnn import TrainConfig  # noqa: E402
from fusiongym.reward.costmodel.metrics import Metrics  # noqa: E402

SETTING = ("temperature", "rank_weight")
COLUMNS = (*SETTING, "seed", "case", *Metrics.__dataclass_fields__)
AVERAGED = ("plan_tau_apart", "rmse_pct_of_delta", "mape_pct", "top1_slowdown")
MEANS = (*SETTING, "case", "seeds", "plan_tau", "plan_tau_min", "plan_tau_max", *AVERAGED)
CASES = ("val", "test", "resnet50", "vit")


def plans_config(setting: str) -> TrainConfig:
    """The `plans` loss at a setting written ``T:W`` (this folder's scripts take them so)."""
    temperature, weight = (float(x) for x in setting.split(":"))
    return TrainConfig(loss="plans", plan_temperature=temperature, rank_weight=weight)


def run(data: str, seeds: str, out: str, settings: str) -> None:
    dataset = CostDataset.load(data)
    Path(out).mkdir(parents=True, exist_ok=True)
    for setting in settings.split(","):
        config = plans_config(setting)
        temperature, weight = config.plan_temperature, config.rank_weight
        rows = seed_rows(dataset, config, int(seeds), "setting")
        path = Path(out) / f"{temperature:g}-{weight:g}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS)
            writer.writeheader()
            for row in rows:                                   # row.model: "setting, seed <s>, <case>"
                _, seed, case = row.model.split(", ")
                writer.writerow({"temperature": temperature, "rank_weight": weight,
                                 "seed": int(seed.removeprefix("seed ")), "case": case, **asdict(row)})
        print(f"T {temperature:g}, W {weight:g}: written {path}", flush=True)


def seed_summaries(folder: Path) -> list[dict]:
    """One row per (setting, case): means over seeds, and plan τ's range."""
    by_case: dict[tuple[float, float, str], list[dict]] = {}
    for path in sorted(folder.glob("*-*.csv")):
        for row in csv.DictReader(path.open()):
            by_case.setdefault((float(row["temperature"]), float(row["rank_weight"]), row["case"]), []).append(row)
    summaries = []
    for (temperature, weight, case), seeds in sorted(by_case.items(),
                                                     key=lambda item: (item[0][1], item[0][0], CASES.index(item[0][2]))):
        taus = [float(row["plan_tau"]) for row in seeds]
        summaries.append({"temperature": temperature, "rank_weight": weight, "case": case, "seeds": len(seeds),
                          "plan_tau": mean(taus), "plan_tau_min": min(taus), "plan_tau_max": max(taus),
                          **{name: mean(float(row[name]) for row in seeds) for name in AVERAGED}})
    return summaries


def report(out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out)
    summaries = seed_summaries(folder)
    with (folder / "settings.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, MEANS)
        writer.writeheader()
        writer.writerows(summaries)
    cell = {(row["temperature"], row["rank_weight"], row["case"]): row for row in summaries}
    settings = list(dict.fromkeys((row["temperature"], row["rank_weight"]) for row in summaries))
    table = ["| T | W | val plan τ (seeds) | test plan τ (seeds) | ResNet-50 | ViT | test plan RMSE % of Δ |",
             "|---|---|---|---|---|---|---|"]
    for temperature, weight in settings:
        val, test, resnet, vit = (cell[temperature, weight, case] for case in CASES)
        table.append(f"| {temperature:g} | {weight:g} | {val['plan_tau']:.3f} ({val['plan_tau_min']:.2f}-"
                     f"{val['plan_tau_max']:.2f}) | {test['plan_tau']:.3f} ({test['plan_tau_min']:.2f}-"
                     f"{test['plan_tau_max']:.2f}) | {resnet['plan_tau']:.3f} | {vit['plan_tau']:.3f} | "
                     f"{test['rmse_pct_of_delta']:.0f} |")
    (folder / "settings.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, case in zip(axes, ("val", "test")):
        for weight in sorted({weight for _, weight in settings}):
            points = [cell[t, w, case] for t, w in settings if w == weight]        # by temperature
            axis.errorbar([r["temperature"] for r in points], [r["plan_tau"] for r in points],
                          yerr=[[r["plan_tau"] - r["plan_tau_min"] for r in points],
                                [r["plan_tau_max"] - r["plan_tau"] for r in points]],
                          marker="o", capsize=3, label=f"W {weight:g}")
        axis.set_xscale("log")
        axis.set_xlabel("plan temperature T (ln µs per score unit)")
        axis.set_title(f"{case}: plan τ, mean and range of seeds")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("Kendall τ of plans")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(folder / "settings.png", dpi=120)


if __name__ == "__main__":
    if sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        run(*sys.argv[1:5])
