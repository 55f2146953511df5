"""fusiongym.envs: the FusionEnv-v0 Gymnasium environment, its action layout, observation and rewards."""

from .actions import ActionLayout, LegalActionSpace
from .backends import make_backend, recorded_backend
from .fusion_env import DEFAULT_MAX_EDGES, DEFAULT_MAX_NODES, MAX_EPISODE_STEPS, FusionEnv
from .observation import DIM_SLOTS, GLOBAL_FEATURES, NODE_FEATURES, OP_VOCAB, op_id
from .replay import Mismatch, rebuild_graph, replay_state, validate_results
from .rewards import REWARDS, RewardSpec, get_reward

__all__ = ["ActionLayout", "DEFAULT_MAX_EDGES", "DEFAULT_MAX_NODES", "DIM_SLOTS", "FusionEnv", "GLOBAL_FEATURES",
           "LegalActionSpace", "MAX_EPISODE_STEPS", "Mismatch", "NODE_FEATURES", "OP_VOCAB", "REWARDS",
           "RewardSpec", "get_reward", "make_backend", "op_id", "rebuild_graph", "recorded_backend", "replay_state",
           "validate_results"]
