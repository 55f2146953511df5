"""Experiment (README, "A calibration that says how sure it is"): two calibrations of one machine, fitted
the old way (150 groups, least squares) and the new (450 groups, the prior), on the same timings.

Each STORE holds one ``fusiongym profile --calibrate --groups 450 --seed S`` run's timings (S = 0, 1, ...
in order); the groups are drawn again with that seed (so every timing is a store hit: nothing is
measured here), split as ``profile --calibrate`` splits them, and fitted both ways. Prints each
parameter of each fit, and how far the two seeds' fits lie apart in ln against their reported
standard errors:

    python two_fits.py runs/calib/store-s0.db runs/calib/store-s1.db
"""
import argparse
import math
import sys

import numpy as np

from fusiongym.graphs import zoo
from fusiongym.reward import get_backend
from fusiongym.reward.calibrate import PRIOR_LOG_STD, Sample, collect_samples, fit_cpu_profile
from fusiongym.scripts.profile import add_arguments

HOLDOUT = 0.3
WAYS = {"old: 150 groups, least squares": (150, None), "new: 450 groups, the prior": (450, PRIOR_LOG_STD)}


def calibration_samples(store: str, seed: int, groups: int) -> list[Sample]:
    """The groups ``profile --calibrate --groups GROUPS --seed SEED`` fitted, with their timings from ``store``."""
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    models = defaults.parse_args([]).models.split(",")
    graphs = [zoo.load(name, "small") for name in models]
    backend = get_backend("tvm", target="llvm", store=store)
    samples = collect_samples(graphs, backend, max_groups=groups, seed=seed)
    if backend.stats.measurements:
        raise RuntimeError(f"{store} lacks {backend.stats.measurements} of seed {seed}'s groups: give the stores "
                           f"of --groups 450 runs in seed order")
    order = np.random.default_rng(seed).permutation(len(samples))
    return [samples[i] for i in order[max(1, int(len(samples) * HOLDOUT)):]]


def fitted(store: str, seed: int, groups: int, prior: float | None) -> tuple[dict, dict]:
    """({parameter: value}, {parameter: reported std of ln}) of one fit, as ``profile --calibrate`` splits."""
    _, report = fit_cpu_profile(calibration_samples(store, seed, groups), prior_log_std=prior)
    flat = {k: v for k, v in report.parameters.items() if k != "schedule_efficiency"}
    values = {**flat, **{f"schedule_efficiency.{s}": e for s, e in report.parameters["schedule_efficiency"].items()}}
    return values, report.log_std_error


def main(stores: list[str]) -> None:
    for way, (groups, prior) in WAYS.items():
        fits = [fitted(store, seed, groups, prior) for seed, store in enumerate(stores)]
        print(f"== {way}")
        for name in fits[0][1]:
            values = [values[name] for values, _ in fits]
            errors = [errors[name] for _, errors in fits]
            apart = abs(math.log(values[0] / values[-1]))
            print(f"  {name:40s} " + "  ".join(f"{v:9.3g} ± {e:4.2f}" for v, e in zip(values, errors))
                  + f"   |ln ratio| {apart:5.2f} ({apart / math.hypot(errors[0], errors[-1]):4.1f} errors)")


if __name__ == "__main__":
    main(sys.argv[1:])
