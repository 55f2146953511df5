"""fusiongym.agents: baselines, the leaderboard harness and the learned policy.

Submodules load on first use (``fusiongym.agents.baselines``), so importing this package
imports neither torch nor TVM. ``FusionPolicy`` (load an exported policy, ``decide``) needs
only numpy and onnxruntime; training (``fusiongym.agents.train``) imports torch.
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("baselines", "leaderboard", "config", "export", "fusion_policy", "gnn", "policy", "train")
_EXPORTS = {"FusionPolicy": "fusion_policy"}   # name -> submodule that defines it


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
