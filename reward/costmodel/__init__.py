"""fusiongym.reward.costmodel: a latency model learned from real measurements.

``prior`` prices groups with the analytical backend on a pinned profile (both learned
models take that estimate as input; the GNN predicts the residual over it),
``features`` turns a graph and a plan into per-node and per-group arrays, ``dataset``
builds the PyG training set from the MeasurementStore, ``gnn`` trains the GNN regressor
(torch), ``model`` runs it in plain numpy (the fast path the ``learned`` backend uses),
``boosted`` is the LightGBM baseline, ``metrics`` scores all of them, ``online`` keeps
improving a model from the measurements a real backend makes.
"""

from .records import CostModelError, GroupSample, MeasuredSet, PlanRecord, ProfileLog, load_measured_set

__all__ = ["CostModelError", "GroupSample", "MeasuredSet", "PlanRecord", "ProfileLog", "load_measured_set"]
