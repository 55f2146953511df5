"""fusiongym.agents: baselines, the leaderboard harness and (later) the learned policy.

Submodules load on first use (``fusiongym.agents.baselines``), so importing this package
imports neither torch nor TVM.
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("baselines", "leaderboard")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
