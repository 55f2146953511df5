"""Experiment (README, "One efficiency per op class"): does weighting large kernels in the fit restore plan order?

The calibration fits ln latency, every group alike; a plan's total is its few large kernels.
This refits the seed-0 calibration's own timings (STORE: a ``profile --calibrate --groups 450
--seed 0`` run's store; every timing a store hit), split as ``profile --calibrate`` splits them,
with each group's squared log residual weighted by measured_us ** POWER (normalized to mean 1;
the weights are put into the solver's residual here, the product has no such option), with and
without op classes, and prints the analytical backend's mean plan tau over the dataset's graphs:

    cd leaderboard/costmodel/op-classes && python weighted_fit.py ../../../runs/calib/store-s0.db \\
        ../../../runs/costmodel/measurements.db.plans.jsonl ../../../runs/classfit/old/data-t10-a.pt > weighted-fit.txt
"""
import sys
from pathlib import Path

import numpy as np

from fusiongym.reward import calibrate
from fusiongym.reward.costmodel.dataset import CostDataset
from plan_order import logged_graphs, plan_taus

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "calibration-fit"))
from two_fits import calibration_samples  # noqa: E402

POWERS = (0.0, 0.5, 1.0)


def weighted_fit(samples: list[calibrate.Sample], power: float, op_classes: bool):
    """``fit_cpu_profile`` with each sample's residual row scaled by sqrt(weight)."""
    weights = np.array([s.measured_us for s in samples]) ** power
    row_scale = np.sqrt(weights / weights.mean())
    unweighted = calibrate._LogLatencyModel.residual_and_jacobian

    def residual_and_jacobian(model, theta):
        residual, jacobian = unweighted(model, theta)
        residual, jacobian = residual.copy(), jacobian.copy()
        residual[:len(row_scale)] *= row_scale
        jacobian[:len(row_scale)] *= row_scale[:, None]
        return residual, jacobian

    calibrate._LogLatencyModel.residual_and_jacobian = residual_and_jacobian
    try:
        return calibrate.fit_cpu_profile(samples, op_classes=op_classes)[0]
    finally:
        calibrate._LogLatencyModel.residual_and_jacobian = unweighted


def main(store: str, log: str, data: str) -> None:
    samples = calibration_samples(store, seed=0, groups=450)
    graphs, dataset = logged_graphs(log), CostDataset.load(data)
    for op_classes in (False, True):
        for power in POWERS:
            taus = plan_taus(dataset, graphs, weighted_fit(samples, power, op_classes))
            print(f"op_classes={op_classes!s:5s} weight = measured_us ** {power}: mean plan tau over {len(taus)} graphs "
                  f"{np.mean(list(taus.values())):+.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
