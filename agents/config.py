"""Training options of the fusion policy: torch-free, so the CLI can list them instantly.

``TrainConfig`` is what ``fusiongym train`` parses and what run.json records; ``command()``
rebuilds the full command line (every option explicit) from it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields

from fusiongym.graphs import get_workload, load_suite, suite_names

DEFAULT_HIDDEN = 8    # the shipped policy's width; 16 units scored 7 % higher on the analytical eval, 2.5x slower
DEFAULT_LAYERS = 2
WANDB_MODES = ("auto", "offline", "online", "disabled")


@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded in run.json; ``command()`` rebuilds the CLI)."""

    out: str
    suite: str = "train"              # a suite, or comma-separated workload names
    backend: str = "analytical"
    device: str = "cpu"
    calibrated: bool = True           # analytical cpu: this machine's fitted profile when it has one
    timesteps: int = 150_000
    n_envs: int = 2
    seed: int = 0
    curriculum: str = "smoke:0.2"     # "SUITE:FRACTION,...": earlier stages and their share of the steps; "none"
    max_nodes: int = 1024
    max_edges: int = 1024
    hidden: int = DEFAULT_HIDDEN
    layers: int = DEFAULT_LAYERS
    n_steps: int = 256                # per env and rollout
    batch_size: int = 128
    n_epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    eval_suite: str = "test"
    eval_every: int = 25_000          # timesteps; 0 = no periodic evaluation
    eval_cases: int = 2               # per workload of the eval suite
    checkpoint_every: int = 25_000    # timesteps
    threads: int = 1                  # torch threads of the learner (see train.train)
    wandb: str = "auto"               # auto (WANDB_MODE, else offline) | offline | online | disabled
    progress: bool = True

    def __post_init__(self) -> None:
        if self.wandb not in WANDB_MODES:
            raise ValueError(f"--wandb {self.wandb!r}: choose one of {', '.join(WANDB_MODES)}")

    def command(self) -> str:
        """The full ``fusiongym train`` command line of this config (every option explicit)."""
        parts = ["fusiongym", "train"]
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
            else:
                parts += [flag, str(value)]
        return shlex.join(parts)

    def stages(self) -> list[tuple[float, list[str]]]:
        """Curriculum as (end fraction of the steps, workload names), the full suite last."""
        stages: list[tuple[float, list[str]]] = []
        if self.curriculum not in ("", "none") and self.suite != self.curriculum.split(":")[0]:
            for item in self.curriculum.split(","):
                suite, _, fraction = item.partition(":")
                end = float(fraction) if fraction else 0.0
                if not 0.0 < end < 1.0 or (stages and end <= stages[-1][0]):
                    raise ValueError(f"curriculum stage {item!r}: need SUITE:FRACTION with increasing fractions "
                                     f"in (0, 1), e.g. 'smoke:0.2'")
                stages.append((end, _workload_names(suite)))
        stages.append((1.0, _workload_names(self.suite)))
        return stages


def _workload_names(suite: str) -> list[str]:
    """A suite's workloads, or a comma-separated list of workload names (``mixtral_moe/smoke``)."""
    if suite in suite_names():
        return [w.name for w in load_suite(suite)]
    names = suite.split(",")
    for name in names:
        get_workload(name)   # raises, listing the known workloads
    return names
