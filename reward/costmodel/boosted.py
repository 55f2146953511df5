"""LightGBM on hand-made group features: the classical cost-model baseline for the GNN.

Each group is one row: the 14 group features of ``features.GROUP_FEATURES`` (summed FLOPs
and moved bytes, size, intensity, op-kind counts), its convolutions' geometry
(``features.CONV_GROUP_FEATURES``: window, stride, channels), how much of its unscheduled
kernels LLVM vectorizes (``features.GROUP_VECTOR_FEATURES``), the analytical backend's ln µs
(what carries to models never trained on), its schedule and the op of its heaviest node (both
categorical). Target: the residual ln µs - ln analytical µs, like the GNN's: trees cannot
extrapolate beyond the latencies they were trained on, the roofline can, so the prior carries
the scale to unseen models and the trees learn its errors. Deterministic (one thread, fixed
seed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from torch_geometric.data import Data

from ..store import atomic_output
from .features import CONV_GROUP_FEATURES, GROUP_FEATURES, GROUP_VECTOR_FEATURES, PRIOR_FEATURE
from .prior import check_residual_scale
from .records import CostModelError

BOOSTED_FORMAT = "fusiongym.BoostedCostModel/4"  # /4: LLVM's vector share; /3: convolution geometry
FEATURE_NAMES = (*GROUP_FEATURES, *CONV_GROUP_FEATURES, *GROUP_VECTOR_FEATURES, PRIOR_FEATURE, "schedule",
                 "dominant_op")
PARAMS = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20,
          "lambda_l2": 1.0, "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1,
          "deterministic": True, "force_row_wise": True, "num_threads": 1, "verbose": -1}
# Boosting rounds: with a val split, at most MAX_ROUNDS, ended by early stopping (at 580-920
# rounds on the README's data, where a cap of 400 used to end it first); without one, ROUNDS.
MAX_ROUNDS = 3000
ROUNDS = 400
# The settings `fusiongym costmodel tune` tries: how many leaves a tree may grow, and how many
# groups a leaf must hold.
TUNING_GRID = tuple({"num_leaves": leaves, "min_data_in_leaf": min_data}
                    for leaves in (15, 31, 63, 127, 255) for min_data in (5, 20))


def lightgbm_params(leaves: int | None = None, min_data: int | None = None) -> dict[str, int]:
    """Overrides of ``PARAMS``' tree size (``num_leaves``, ``min_data_in_leaf``), checked; None keeps one."""
    if leaves is not None and leaves < 2:
        raise ValueError(f"a LightGBM tree needs at least 2 leaves, got {leaves}")
    if min_data is not None and min_data < 1:
        raise ValueError(f"a LightGBM leaf needs at least 1 group, got {min_data}")
    return {name: value for name, value in (("num_leaves", leaves), ("min_data_in_leaf", min_data))
            if value is not None}


def design_matrix(samples: Sequence[Data]) -> np.ndarray:
    """[B, 24] float64: the 14 group features, the 5 of convolution geometry, the 2 of LLVM's
    vector share, ln analytical µs, schedule id, dominant op id."""
    return np.array([[*d.group[0].tolist(), *d.conv[0].tolist(), *d.vector[0].tolist(), float(d.prior),
                      int(d.schedule), int(d.dominant_op)] for d in samples], dtype=np.float64)


def _residuals(samples: Sequence[Data]) -> np.ndarray:
    """[B] ln measured µs - ln analytical µs."""
    return np.array([float(d.y) - float(d.prior) for d in samples])


class BoostedModel:
    """A LightGBM booster with the header saying what it was trained on."""

    def __init__(self, booster, meta: dict) -> None:
        self.booster = booster
        self.meta = meta

    @staticmethod
    def train(train: Sequence[Data], val: Sequence[Data] = (), seed: int = 0, meta: dict | None = None,
              params: Mapping[str, object] | None = None, residual_scale: float = 1.0) -> "BoostedModel":
        """Fit on ``train``: ``ROUNDS`` rounds, or with ``val`` until its error has not improved for
        50 rounds (at most ``MAX_ROUNDS``).
        ``params`` override ``PARAMS`` (``costmodel tune`` tries a grid of them); the model
        predicts prior + ``residual_scale`` * the trees' residual (``gnn.TrainConfig.residual_scale``)."""
        import lightgbm as lgb

        if not train:
            raise ValueError("BoostedModel.train needs at least one training sample")
        check_residual_scale(residual_scale)
        categorical = [len(FEATURE_NAMES) - 2, len(FEATURE_NAMES) - 1]
        dataset = lgb.Dataset(design_matrix(train), label=_residuals(train),
                              feature_name=list(FEATURE_NAMES), categorical_feature=categorical,
                              params={"min_data_per_group": 5, "verbose": -1})
        callbacks, valid_sets, rounds = [], [], ROUNDS
        if val:
            rounds = MAX_ROUNDS
            valid_sets = [lgb.Dataset(design_matrix(val), label=_residuals(val), reference=dataset)]
            callbacks = [lgb.early_stopping(50, verbose=False)]
        chosen = {**PARAMS, **(params or {}), "seed": seed}
        booster = lgb.train(chosen, dataset, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks)
        return BoostedModel(booster, {"format": BOOSTED_FORMAT, "features": list(FEATURE_NAMES),
                                      "params": chosen, "train_samples": len(train),
                                      "target": "ln µs - ln analytical µs", "residual_scale": residual_scale,
                                      "best_iteration": booster.best_iteration or rounds, **(meta or {})})

    def predict_log_us(self, samples: Sequence[Data]) -> np.ndarray:
        """[B] ln µs: the prior plus the predicted residual (times the model's residual scale)."""
        residual = self.booster.predict(design_matrix(samples), num_iteration=self.meta["best_iteration"])
        return self.meta.get("residual_scale", 1.0) * residual + np.array([float(d.prior) for d in samples])

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"meta": self.meta, "booster": self.booster.model_to_string()}))
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> "BoostedModel":
        import lightgbm as lgb

        path = Path(path)
        fix = "Fix: retrain it with `fusiongym costmodel train`"
        if not path.is_file():
            raise CostModelError(f"no LightGBM cost model at {path}. {fix}")
        try:
            payload = json.loads(path.read_text())
            booster = lgb.Booster(model_str=payload["booster"])
        except (ValueError, KeyError, TypeError, lgb.basic.LightGBMError) as exc:
            raise CostModelError(f"{path} is corrupt or not a fusiongym LightGBM cost model ({exc}). {fix}") from exc
        if payload["meta"].get("format") != BOOSTED_FORMAT:
            raise CostModelError(f"{path} has format {payload['meta'].get('format')!r}, expected {BOOSTED_FORMAT}. {fix}")
        return BoostedModel(booster, payload["meta"])
