"""fusiongym.reward: plans, latency backends and the measurement store."""

from .backend import (GroupLatency, LatencyBackend, LatencyReport, backend_names, get_backend,
                      register_backend)
from .plan import DEFAULT_SCHEDULE, IllegalPlanError, Legality, Plan, is_legal, require_legal

__all__ = ["DEFAULT_SCHEDULE", "GroupLatency", "IllegalPlanError", "LatencyBackend", "LatencyReport",
           "Legality", "Plan", "backend_names", "get_backend", "is_legal", "register_backend",
           "require_legal"]
