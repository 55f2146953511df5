"""Named rewards of FusionEnv, each with the properties a result table must state.

A reward maps the latency before and after a step to a number. Its flags combine its own
nature with the backend's: a reward computed from a noisy timing backend is not
deterministic, and one measured on real hardware depends on the platform. All latencies
are normalized by the unfused latency (every op alone, default schedule) so returns are
comparable across graphs of very different size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fusiongym.reward import LatencyBackend

# fn(previous_us, new_us, unfused_us, tvm_default_us, episode_over) -> reward
RewardFn = Callable[[float, float, float, "float | None", bool], float]


@dataclass(frozen=True)
class RewardSpec:
    """One reward: how it is computed and what can be said of its values."""

    name: str
    fn: RewardFn
    sparse: bool                # nonzero only on the final step
    deterministic: bool         # the reward's own nature, before the backend's
    platform_dependent: bool    # the reward's own nature, before the backend's
    needs_tvm_default: bool     # needs the latency of TVM's own FuseOps plan
    description: str

    def flags(self, backend: LatencyBackend) -> dict[str, bool]:
        """The reward's properties on ``backend``: deterministic only if both are."""
        return {"deterministic": self.deterministic and backend.deterministic,
                "platform_dependent": self.platform_dependent or backend.platform_dependent}


def _latency_delta(previous_us: float, new_us: float, unfused_us: float, tvm_us: float | None, over: bool) -> float:
    return (previous_us - new_us) / unfused_us


def _neg_latency(previous_us: float, new_us: float, unfused_us: float, tvm_us: float | None, over: bool) -> float:
    return -new_us / unfused_us if over else 0.0


def _speedup_vs_tvm(previous_us: float, new_us: float, unfused_us: float, tvm_us: float | None, over: bool) -> float:
    return tvm_us / new_us - 1.0 if over else 0.0


REWARDS: dict[str, RewardSpec] = {spec.name: spec for spec in (
    RewardSpec("latency_delta", _latency_delta, sparse=False, deterministic=True, platform_dependent=False,
               needs_tvm_default=False,
               description="(L_prev - L_new) / L_unfused per step; the return is the share of the "
                           "unfused latency the episode removed (relative to the start plan)"),
    RewardSpec("neg_latency", _neg_latency, sparse=True, deterministic=True, platform_dependent=False,
               needs_tvm_default=False,
               description="-L_final / L_unfused on the final step, 0 before"),
    RewardSpec("speedup_vs_tvm", _speedup_vs_tvm, sparse=True, deterministic=True, platform_dependent=False,
               needs_tvm_default=True,
               description="L_tvm_default / L_final - 1 on the final step, 0 before: > 0 beats TVM's "
                           "own FuseOps plan (default schedules) on the same backend"),
)}


def get_reward(name: str) -> RewardSpec:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}") from None
