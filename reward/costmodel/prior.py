"""The analytical backend's estimate as the learned models' prior, on a pinned device profile.

Trained on four or five architectures, a model meets op mixes it has never seen; the
roofline already knows how FLOPs and bytes turn into time, so both learned models take its
estimate as an input and the GNN learns only the correction: ln µs = ln analytical µs + f(group).
A model may keep only part of that correction (``check_residual_scale``): ln analytical µs + s f(group).

The profile is pinned: ``get_profile("cpu")`` reads whatever calibration this machine has
made, so the dataset records the profile it used and every model trained on it carries the
same dict; inference rebuilds the backend from that dict, never from the local cache.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fusiongym.graphs import ComputeGraph

from ..backend import get_backend
from ..devices import DeviceProfile, ProfileError
from .records import CostModelError


class AnalyticalPrior:
    """ln µs of groups on the analytical backend with one fixed profile, for a fixed schedule menu."""

    def __init__(self, profile: DeviceProfile, schedules: Sequence[str]) -> None:
        self.profile = profile
        self.backend = get_backend("analytical", device=profile)
        unknown = sorted(set(schedules) - set(self.backend.schedules))
        if unknown:
            raise CostModelError(f"schedules {unknown} are unknown to the analytical profile "
                                 f"{profile.name!r} ({list(self.backend.schedules)}). Fix: train with "
                                 f"measurements from a device of that profile's kind")
        self._schedule_map = self.backend.schedule_ids(schedules)   # model schedule id -> backend's

    @staticmethod
    def from_dict(data: dict | None, schedules: Sequence[str]) -> "AnalyticalPrior":
        """From ``DeviceProfile.to_dict()`` as a model or dataset header records it."""
        if data is None:
            raise CostModelError("the file records no analytical profile (made by an older fusiongym). "
                                 "Fix: re-export the dataset (`fusiongym dataset export`) and retrain")
        try:
            return AnalyticalPrior(DeviceProfile.from_dict(data), schedules)
        except ProfileError as exc:
            raise CostModelError(f"the recorded analytical profile is unreadable ({exc}). Fix: re-export "
                                 f"the dataset and retrain") from exc

    def plan_log_us(self, graph: ComputeGraph, group_of: np.ndarray, schedule_of_group: np.ndarray) -> np.ndarray:
        """[G] ln µs of every group of a plan (``schedule_of_group``: ids in the model's menu)."""
        return np.log(self.backend.evaluate(graph, group_of, self._schedule_map[schedule_of_group]))

    def group_log_us(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> float:
        """ln µs of one group."""
        return math.log(self.group_us(graph, nodes, schedule))

    def group_us(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> float:
        """µs of one group, exactly as the analytical backend reports it (the baseline being compared)."""
        return self.backend.group_latency(graph, list(nodes), schedule).us


def check_residual_scale(residual_scale: float) -> None:
    """``residual_scale`` s: a model predicts ln analytical µs + s * its learned residual. Below 1
    it trusts the roofline more where the residual, fitted on a few architectures, may not carry."""
    if not 0 <= residual_scale <= 1:
        raise ValueError(f"residual_scale must lie in [0, 1] (0: the analytical prior alone, 1: the learned "
                         f"residual in full), got {residual_scale}")
