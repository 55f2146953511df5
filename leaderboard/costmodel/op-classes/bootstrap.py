"""Experiment (README, "One efficiency per op class"): does a factor per op class fit unseen groups better?

Bootstraps ``fit_cpu_profile`` with and without ``op_classes`` as calibration-fit/study.py does:
each draw fits 315 groups of at most 4 nodes of the store (``profile --calibrate --groups 450``'s
share) and scores the groups not drawn; prints the held-out Kendall tau and rms log error per
draw and their mean, and how many draws the class factors won:

    python bootstrap.py runs/costmodel/measurements.db 40 > leaderboard/costmodel/op-classes/bootstrap.txt
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "calibration-fit"))
from study import held_out_scores, store_samples  # noqa: E402

from fusiongym.reward.calibrate import fit_cpu_profile  # noqa: E402

FITTED = 315


def main(store: str, draws: int) -> None:
    pool = store_samples(store)
    print(f"{len(pool)} distinct groups of at most 4 nodes; {draws} draws of {FITTED}")
    scores = {False: [], True: []}   # op_classes -> [(tau, rms)] per draw
    for draw in range(draws):
        order = np.random.default_rng(draw).permutation(len(pool))
        fitted_on, held_out = [pool[i] for i in order[:FITTED]], [pool[i] for i in order[FITTED:]]
        for op_classes in scores:
            profile, _ = fit_cpu_profile(fitted_on, op_classes=op_classes)
            scores[op_classes].append(held_out_scores(profile, held_out))
        (tau_0, rms_0), (tau_1, rms_1) = scores[False][-1], scores[True][-1]
        print(f"draw {draw:2d}: tau {tau_0:.3f} -> {tau_1:.3f}   rms log error {rms_0:.3f} -> {rms_1:.3f}")
    plain, classes = np.array(scores[False]), np.array(scores[True])
    print(f"mean: tau {plain[:, 0].mean():.3f} -> {classes[:, 0].mean():.3f} (higher in {(classes[:, 0] > plain[:, 0]).sum()}"
          f"/{draws}), rms log error {plain[:, 1].mean():.3f} -> {classes[:, 1].mean():.3f} "
          f"(lower in {(classes[:, 1] < plain[:, 1]).sum()}/{draws})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
