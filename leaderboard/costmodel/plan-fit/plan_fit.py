"""Experiment (EXPERIMENTS.md, "Calibrating on plans"): fit the analytical profile to the order of measured plans.

The calibration fits single groups in ln µs, every group alike; the analytical backend's use is
to order plans, whose totals are a few large kernels. This fits the profile's parameters
(``calibrate``'s model, with or without op classes, with its prior) to the training models'
measured plans instead: one residual per plan, ln(priced total) - ln(measured total), centred
within each graph so only the plans' relative totals count, optionally beside the groups' own
residuals (weight GROUP_WEIGHT). Scored by the analytical backend's plan Kendall tau on every
graph, the training graphs (fitted) apart from val's and test's (never fitted):

    python plan_fit.py runs/costmodel/measurements.db.plans.jsonl runs/classfit/old/data-t10-a.pt
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "op-classes"))
from plan_order import logged_graphs, plan_taus  # noqa: E402

from fusiongym.reward import calibrate  # noqa: E402
from fusiongym.reward.costmodel.dataset import CostDataset  # noqa: E402
from fusiongym.reward.devices import get_profile  # noqa: E402


class PlanModel:
    """Residuals (and Jacobian) of plan totals, centred per graph, on top of the groups' model."""

    def __init__(self, groups: calibrate._LogLatencyModel, plans: list[np.ndarray], graph_of_plan: np.ndarray,
                 group_weight: float) -> None:
        self.groups, self.plans, self.group_weight = groups, plans, group_weight
        self.log_measured_total = np.log([groups.design.measured_us[p].sum() for p in plans])
        self.graph_of_plan = graph_of_plan
        self.graphs = np.unique(graph_of_plan)

    def _centred(self, values: np.ndarray) -> np.ndarray:
        out = values.copy()
        for graph in self.graphs:
            rows = self.graph_of_plan == graph
            out[rows] -= values[rows].mean(axis=0)
        return out

    def residual_and_jacobian(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residual, jacobian = self.groups.residual_and_jacobian(theta)
        count = len(self.groups.log_measured)
        group_us = np.exp(residual[:count] + self.groups.log_measured)                      # [n]
        total_us = np.array([group_us[p].sum() for p in self.plans])                          # [P]
        plan_residual = np.log(total_us) - self.log_measured_total                            # [P]
        plan_jacobian = np.stack([group_us[p] @ jacobian[p] for p in self.plans]) / total_us[:, None]
        parts = [self._centred(plan_residual)], [self._centred(plan_jacobian)]
        if self.group_weight:
            parts[0].append(residual[:count] * self.group_weight)
            parts[1].append(jacobian[:count] * self.group_weight)
        parts[0].append(residual[count:])      # the prior's rows
        parts[1].append(jacobian[count:])
        return np.concatenate(parts[0]), np.concatenate(parts[1])

    def starts(self) -> list[np.ndarray]:
        return self.groups.starts()


def fit(dataset: CostDataset, graphs: dict, op_classes: bool, group_weight: float | None):
    """The profile fitted to the train split's groups (group_weight None) or plans."""
    train = dataset.indices("train")
    samples = [calibrate.Sample(graphs[s.graph_hash], tuple(int(n) for n in s.nodes), dataset.schedules[int(s.schedule)],
                                float(np.exp(float(s.y)))) for s in (dataset.samples[i] for i in train)]
    if group_weight is None:
        return calibrate.fit_cpu_profile(samples, op_classes=op_classes)[0]
    base = get_profile("cpu", use_calibrated=False)
    groups = calibrate._LogLatencyModel(calibrate._design(samples, base, op_classes), base, calibrate.PRIOR_LOG_STD)
    position = {index: k for k, index in enumerate(train)}
    plans = [p for p in dataset.plans if all(i in position for i in p["samples"])]
    model = PlanModel(groups, [np.array([position[i] for i in p["samples"]]) for p in plans],
                      np.array([p["graph_hash"] for p in plans]), group_weight)
    theta, _ = min((calibrate._levenberg_marquardt(model, start) for start in model.starts()), key=lambda f: f[1])
    return calibrate._fitted_profile(base, groups.unpack(theta), len(samples))


def main(log: str, data: str) -> None:
    graphs, dataset = logged_graphs(log), CostDataset.load(data)
    held_out = set(dataset.source["models"]["val"]) | set(dataset.source["models"]["test"])
    for op_classes in (False, True):
        for group_weight in (None, 0.0, 0.1, 0.3):
            taus = plan_taus(dataset, graphs, fit(dataset, graphs, op_classes, group_weight))
            unseen = [t for g, t in taus.items() if g.split()[0] in held_out]
            seen = [t for g, t in taus.items() if g.split()[0] not in held_out]
            way = "groups only" if group_weight is None else f"plans + groups x {group_weight}"
            print(f"op_classes={op_classes!s:5s} {way:22s} plan tau: train graphs {np.mean(seen):+.3f}, "
                  f"val+test {np.mean(unseen):+.3f} (" + ", ".join(f"{g.split()[0]} {taus[g]:+.3f}" for g in taus
                                                      if g.split()[0] in held_out) + ")")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
