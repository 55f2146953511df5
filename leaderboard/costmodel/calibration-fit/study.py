"""Experiment (README, "A calibration that says how sure it is"): how stable is the calibration's fit?

Bootstraps ``fit_cpu_profile`` on a profiled store: draws groups of at most 4 nodes (the
calibration's own shape) from those the store holds with their median labels, fits each draw
with and without the prior, and scores the fit on the groups not drawn. For each setting
(groups fitted x prior) it reports, per parameter, the spread of the fitted values over the
draws (std of ln, and max / min) beside the median standard error the fit itself reported,
and the held-out Kendall tau and rms log error; a CSV and a PNG of the spreads:

    python study.py runs/costmodel/measurements.db 40 leaderboard/costmodel/calibration-fit/study
"""
import csv
import math
import sys

import matplotlib
import numpy as np

from fusiongym.reward.analytical import AnalyticalBackend
from fusiongym.reward.calibrate import PRIOR_LOG_STD, Sample, fit_cpu_profile, kendall_tau
from fusiongym.reward.costmodel.records import ProfileLog
from fusiongym.reward.signature import group_signature
from fusiongym.reward.store import MeasurementStore
from fusiongym.scripts.profile import _logged_groups

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MAX_NODES = 4
SETTINGS = ((105, None), (105, PRIOR_LOG_STD), (315, None), (315, PRIOR_LOG_STD))   # (groups fitted, prior)


def store_samples(store: str, max_nodes: int = MAX_NODES, exclude: frozenset[str] = frozenset()) -> list[Sample]:
    """Every logged group of at most ``max_nodes`` nodes that the store holds, with its stored latency,
    except those of the models in ``exclude``."""
    with MeasurementStore(store) as measured:
        latency = {(m.key.signature, m.key.schedule): m.median_us for m in measured.iter_all()}
    log = f"{store}.plans.jsonl"
    model_of = {r["graph_hash"]: r["model"] for r in ProfileLog(log).records() if r["kind"] == "graph"}
    graphs, groups = _logged_groups(log, [h for h in ProfileLog(log).known()[0] if model_of.get(h) not in exclude])
    samples, seen = [], set()
    for graph_hash, nodes, schedule in sorted(groups):
        key = (group_signature(graphs[graph_hash], list(nodes)), schedule)
        if len(nodes) <= max_nodes and key in latency and key not in seen:
            seen.add(key)
            samples.append(Sample(graphs[graph_hash], nodes, schedule, latency[key]))
    return samples


def held_out_scores(profile, samples: list[Sample]) -> tuple[float, float]:
    backend = AnalyticalBackend(profile)
    predicted = np.array([backend.group_latency(s.graph, list(s.nodes), s.schedule).us for s in samples])
    measured = np.array([s.measured_us for s in samples])
    return kendall_tau(predicted, measured), float(np.sqrt(np.mean(np.log(predicted / measured) ** 2)))


def fitted_values(parameters: dict) -> dict[str, float]:
    """The report's parameters under the names of its standard errors."""
    flat = {k: v for k, v in parameters.items() if k != "schedule_efficiency"}
    return {**flat, **{f"schedule_efficiency.{s}": e for s, e in parameters["schedule_efficiency"].items()}}


def bootstrap(pool: list[Sample], draws: int, size: int, prior: float | None) -> list[dict]:
    rows = []
    for draw in range(draws):
        order = np.random.default_rng(draw).permutation(len(pool))
        profile, report = fit_cpu_profile([pool[i] for i in order[:size]], prior_log_std=prior)
        tau, rms = held_out_scores(profile, [pool[i] for i in order[size:]])
        rows.append({"tau": tau, "rms": rms, "values": fitted_values(report.parameters),
                     "errors": report.log_std_error})
    return rows


def summarise(rows: list[dict], size: int, prior: float | None) -> list[dict]:
    setting = f"{size} groups, " + ("no prior" if prior is None else f"prior std of ln {prior:.2f}")
    print(f"== {setting}: held-out tau {np.mean([r['tau'] for r in rows]):.3f}, "
          f"rms log error {np.mean([r['rms'] for r in rows]):.3f}")
    summary = []
    for name in rows[0]["errors"]:
        ln = np.log([r["values"][name] for r in rows])
        reported = float(np.median([r["errors"][name] for r in rows]))
        summary.append({"setting": setting, "groups": size, "prior_log_std": prior, "parameter": name,
                        "median": float(np.exp(np.median(ln))), "std_of_ln": float(ln.std()),
                        "max_over_min": math.exp(ln.max() - ln.min()), "median_reported_std_of_ln": reported,
                        "held_out_tau": float(np.mean([r["tau"] for r in rows])),
                        "held_out_rms_log": float(np.mean([r["rms"] for r in rows]))})
        print(f"  {name:40s} median {summary[-1]['median']:9.3g}  std of ln {ln.std():5.2f} "
              f"(reported {reported:5.2f})  max/min x{summary[-1]['max_over_min']:.3g}")
    return summary


def plot(summary: list[dict], path: str) -> None:
    settings = list(dict.fromkeys(row["setting"] for row in summary))
    parameters = list(dict.fromkeys(row["parameter"] for row in summary))
    figure, axis = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(settings)
    for i, setting in enumerate(settings):
        spread = [next(r["std_of_ln"] for r in summary if r["setting"] == setting and r["parameter"] == p)
                  for p in parameters]
        axis.bar(np.arange(len(parameters)) + i * width, np.minimum(spread, 3.0), width, label=setting)
    axis.set_xticks(np.arange(len(parameters)) + 0.4 - width / 2)
    axis.set_xticklabels([p.replace("schedule_efficiency.", "eff. ") for p in parameters], rotation=30, ha="right")
    axis.set_ylabel("std of ln over bootstrap draws (cut at 3)")
    axis.set_title("Calibration fit: spread of each parameter over 40 draws of one EPYC store")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(store: str, draws: int, out: str) -> None:
    pool = store_samples(store)
    print(f"{len(pool)} distinct groups of at most {MAX_NODES} nodes in the store")
    summary = [row for size, prior in SETTINGS for row in summarise(bootstrap(pool, draws, size, prior), size, prior)]
    with open(f"{out}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot(summary, f"{out}.png")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
