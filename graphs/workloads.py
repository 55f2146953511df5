"""Dynamic workloads: a model plus distributions over the context it meets at run time.

The context is what a just-in-time decision sees and an ahead-of-time compiler does not:
the input shapes (batch, sequence, image size), how an MoE router spreads tokens over
experts (an expert with zero tokens drops out of the graph) and how much of the device
co-running work takes. Named suites (``train``, ``test``, ``smoke``) live in
``data/suites.json``; ``test`` holds out models and shape ranges never seen in training.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

import numpy as np

from .ir import ComputeGraph, GraphError


@dataclass(frozen=True)
class DimRange:
    """An integer dim drawn log-uniformly from [min, max] (optionally a multiple of ``step``)."""

    min: int
    max: int
    step: int = 1

    def sample(self, rng: np.random.Generator) -> int:
        value = math.exp(rng.uniform(math.log(self.min), math.log(self.max)))
        snapped = int(round(value / self.step)) * self.step
        return int(min(max(snapped, self.min), self.max))


@dataclass(frozen=True)
class Routing:
    """Skewed token-to-expert routing: expert popularity ~ Dirichlet(alpha), counts ~ Multinomial.

    A small ``alpha`` concentrates tokens on few experts, so some get zero tokens.
    """

    top_k: int
    alpha: float = 0.5

    def sample(self, rng: np.random.Generator, tokens: int, num_experts: int) -> list[int]:
        popularity = rng.dirichlet(np.full(num_experts, self.alpha))
        return rng.multinomial(tokens * self.top_k, popularity).astype(int).tolist()


@dataclass(frozen=True)
class LoadRange:
    """Share of compute units and of memory bandwidth taken by co-running work.

    With probability ``idle_probability`` the device is idle; otherwise each share is
    drawn uniformly from [min, max] independently.
    """

    min: float = 0.0
    max: float = 0.9
    idle_probability: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.min <= self.max <= MAX_LOAD_SHARE:
            raise ValueError(f"device_load range [{self.min}, {self.max}] must satisfy 0 <= min <= max <= "
                             f"{MAX_LOAD_SHARE} (beyond it any kernel is arbitrarily slow); fix the suite file")
        if not 0.0 <= self.idle_probability <= 1.0:
            raise ValueError(f"device_load idle_probability {self.idle_probability} is not in [0, 1]")

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        if rng.random() < self.idle_probability:
            return {"compute": 0.0, "bandwidth": 0.0}
        compute, bandwidth = rng.uniform(self.min, self.max, size=2)
        return {"compute": round(float(compute), 3), "bandwidth": round(float(bandwidth), 3)}


MAX_LOAD_SHARE = 0.9  # beyond this, co-running work would make any kernel arbitrarily slow


@dataclass(frozen=True)
class LoadShare:
    """Shares of the device's compute units and memory bandwidth taken by co-running work.

    The one representation of ``graph.context["device_load"]`` that every backend reads.
    """

    compute: float = 0.0
    bandwidth: float = 0.0

    def __post_init__(self) -> None:
        for kind, share in (("compute", self.compute), ("bandwidth", self.bandwidth)):
            if not 0.0 <= share <= MAX_LOAD_SHARE:
                raise GraphError(f"device load {kind}={share} outside [0, {MAX_LOAD_SHARE}]")

    @property
    def idle(self) -> bool:
        return self.compute == 0.0 and self.bandwidth == 0.0

    @staticmethod
    def parse(value: "float | Mapping[str, float] | LoadShare | None") -> "LoadShare":
        """``0.4`` -> both shares 0.4; a mapping names ``compute`` and/or ``bandwidth``."""
        if value is None:
            return LoadShare()
        if isinstance(value, LoadShare):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"compute", "bandwidth"}
            if unknown:
                raise GraphError(f"device load keys must be 'compute'/'bandwidth', got {sorted(unknown)}")
            return LoadShare(float(value.get("compute", 0.0)), float(value.get("bandwidth", 0.0)))
        return LoadShare(float(value), float(value))

    def to_dict(self) -> dict[str, float]:
        return {"compute": self.compute, "bandwidth": self.bandwidth}


@dataclass
class Workload:
    """A zoo model and the distributions its run-time context is drawn from."""

    name: str
    model: str
    variant: str = "full"
    dims: dict[str, DimRange] = field(default_factory=dict)
    routing: Routing | None = None
    device_load: LoadRange = field(default_factory=LoadRange)

    def template(self) -> ComputeGraph:
        from . import zoo

        return zoo.template(self.model, self.variant)

    def sample(
        self,
        rng: np.random.Generator,
        dims: Mapping[str, int] | None = None,
        routing: list[int] | None = None,
        device_load: float | Mapping[str, float] | None = None,
    ) -> ComputeGraph:
        """A concrete graph for one run-time context; given arguments pin their part."""
        from . import zoo

        values = {**zoo.default_dims(self.model, self.variant),
                  **{name: r.sample(rng) for name, r in self.dims.items()}, **(dims or {})}
        context: dict[str, Any] = {"workload": self.name}
        if self.routing is not None:
            counts = (list(routing) if routing is not None
                      else self.routing.sample(rng, values["tokens"], self.num_experts))
            values.update(self._expert_dims(counts, values["tokens"]))
            context["routing"] = counts
        load = self.device_load.sample(rng) if device_load is None else LoadShare.parse(device_load).to_dict()
        context["device_load"] = load
        return self.template().instantiate(values, context)

    @property
    def num_experts(self) -> int:
        """Experts of the model: one ``tokens_e{i}`` dim each."""
        return sum(1 for name in self.template().symbols if name.startswith("tokens_e"))

    def _expert_dims(self, counts: list[int], tokens: int) -> dict[str, int]:
        if len(counts) != self.num_experts:
            raise GraphError(f"{self.name}: routing gives {len(counts)} counts for {self.num_experts} experts")
        if sum(counts) != tokens * self.routing.top_k:
            raise GraphError(f"{self.name}: routing sends {sum(counts)} token slots, expected "
                             f"tokens × top_k = {tokens * self.routing.top_k}")
        return {f"tokens_e{expert}": count for expert, count in enumerate(counts)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "Workload":
        return Workload(
            name=data["name"], model=data["model"], variant=data.get("variant", "full"),
            dims={name: DimRange(**spec) for name, spec in data.get("dims", {}).items()},
            routing=Routing(**data["routing"]) if data.get("routing") else None,
            device_load=LoadRange(**data.get("device_load", {})),
        )


@lru_cache(maxsize=1)
def _suites() -> dict[str, list[dict]]:
    text = resources.files("fusiongym.graphs").joinpath("data/suites.json").read_text()
    return json.loads(text)["suites"]


def suite_names() -> list[str]:
    return sorted(_suites())


def load_suite(name: str) -> list[Workload]:
    """The workloads of suite ``name`` as declared in ``graphs/data/suites.json``."""
    if name not in _suites():
        raise GraphError(f"unknown suite {name!r}; suites: {suite_names()}")
    return [Workload.from_dict(entry) for entry in _suites()[name]]


def get_workload(name: str) -> Workload:
    """A workload by its name, e.g. ``resnet18/train``, searched across all suites."""
    for suite in suite_names():
        for workload in load_suite(suite):
            if workload.name == name:
                return workload
    known = sorted(w["name"] for entries in _suites().values() for w in entries)
    raise GraphError(f"unknown workload {name!r}; workloads: {known}")
