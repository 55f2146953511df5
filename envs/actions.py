"""The action layout of FusionEnv: one Discrete space, three blocks.

======================================  ==========================================
index                                   action
======================================  ==========================================
``[0, max_edges)``                      fuse edge ``e``: merge the two groups it joins
``max_edges + v * S + s``               give the group of node ``v`` schedule ``s``
(``v < max_nodes``, ``s < S``)          (only with ``schedule_actions=True``)
``n - 1``                               stop: the plan is final
======================================  ==========================================

``S`` is the number of schedules the backend offers (``backend.schedules``, "default"
first). Without schedule actions the space has ``max_edges + 1`` actions. Edge ``e`` is
``graph.edges[e]`` and column ``e`` of the observation's ``edge_index``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

FUSE, SCHEDULE, STOP = "fuse", "schedule", "stop"


@dataclass(frozen=True)
class ActionLayout:
    """Encodes and decodes action indices; ``schedules`` is empty without schedule actions."""

    max_nodes: int
    max_edges: int
    schedules: tuple[str, ...]

    @property
    def num_schedules(self) -> int:
        return len(self.schedules)

    @property
    def n(self) -> int:
        return self.max_edges + self.max_nodes * self.num_schedules + 1

    @property
    def stop(self) -> int:
        return self.n - 1

    def fuse(self, edge: int) -> int:
        return edge

    def schedule(self, node: int, schedule: int) -> int:
        return self.max_edges + node * self.num_schedules + schedule

    def decode(self, action: int) -> tuple:
        """``("fuse", e)``, ``("schedule", v, s)`` or ``("stop",)``; ValueError when out of range."""
        if not 0 <= action < self.n:
            raise ValueError(f"action {action} is out of range: the action space has {self.n} actions "
                             f"(0..{self.n - 1}; see fusiongym.envs.actions for the layout)")
        if action < self.max_edges:
            return (FUSE, action)
        if action == self.stop:
            return (STOP,)
        node, schedule = divmod(action - self.max_edges, self.num_schedules)
        return (SCHEDULE, node, schedule)

    def to_json(self, action: int) -> list:
        """The layout-independent form kept in ``env.state``: schedules by name."""
        decoded = self.decode(action)
        if decoded[0] == SCHEDULE:
            return [SCHEDULE, decoded[1], self.schedules[decoded[2]]]
        return list(decoded)

    def from_json(self, item: list) -> int:
        """Inverse of ``to_json`` under this layout."""
        kind = item[0]
        if kind == FUSE:
            return self.fuse(int(item[1]))
        if kind == STOP:
            return self.stop
        if kind == SCHEDULE:
            if item[2] not in self.schedules:
                raise ValueError(f"schedule {item[2]!r} is not among this env's schedule actions {self.schedules}")
            return self.schedule(int(item[1]), self.schedules.index(item[2]))
        raise ValueError(f"unknown action kind {kind!r} (expected {FUSE!r}, {SCHEDULE!r} or {STOP!r})")


class LegalActionSpace(spaces.Discrete):
    """A Discrete space whose ``sample()`` draws uniformly among the currently legal actions.

    Random agents and the Gymnasium/SB3 environment checkers call ``sample()`` without a
    mask; drawing from the live action mask keeps them from sending actions the env
    rejects. An explicit ``mask`` or ``probability`` is honoured as in ``Discrete``; a copy
    of the space taken before any reset (e.g. pickled to another process) has no legal
    action to draw from and samples like a plain ``Discrete``.
    """

    def __init__(self, n: int, legal: np.ndarray, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(n, seed=seed)
        self._legal = legal  # [n] bool, the env's action mask (updated in place)

    def sample(self, mask: np.ndarray | None = None, probability: np.ndarray | None = None) -> np.int64:
        if mask is None and probability is None and self._legal.any():
            mask = self._legal.view(np.int8)
        return super().sample(mask=mask, probability=probability)
