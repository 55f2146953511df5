"""Train the GNN fusion policy with MaskablePPO: ``fusiongym train --suite train --out runs/NAME``.

A run directory holds everything needed to reproduce, resume and export it::

    runs/NAME/run.json          command line, seed, config, versions, timings, last evaluation
    runs/NAME/checkpoints/      ckpt_<steps>_steps.zip every --checkpoint-every steps (--resume)
    runs/NAME/final.zip         the model at the end; best.zip: the best evaluation so far
    runs/NAME/eval.jsonl        one line per evaluation (per-case latencies and speedups)
    runs/NAME/progress.csv, tb/ SB3 metrics (CSV, tensorboard); wandb/ (offline by default)

The curriculum starts on small graphs (the ``smoke`` suite: small variants of the zoo
models) and moves to the full suite after a fraction of the steps; every env draws its
graph from the current stage at each reset. Evaluation runs the deterministic policy on
fixed cases of an evaluation suite (``test`` by default: held-out models and shapes), both
as the sequential rollout in the env and as the one-pass ``FusionPolicy.decide``, and
reports the speedup over TVM's default fusion plan on the analytical model.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.logger import CSVOutputFormat, KVWriter, Logger, TensorBoardOutputFormat
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from tqdm import tqdm

from fusiongym.envs import FusionEnv, make_backend as env_backend
from fusiongym.graphs import ComputeGraph, load_suite
from fusiongym.reward import LatencyBackend, get_backend
from fusiongym.reward.devices import get_profile

from .config import TrainConfig
from .export import policy_metadata
from .fusion_policy import FusionPolicy
from .policy import FusionGNNPolicy, TorchEngine

RUN_FORMAT = "fusiongym.TrainRun/1"
CHECKPOINT_PREFIX = "ckpt"
VERSION_PACKAGES = ("fusiongym", "torch", "torch-geometric", "stable-baselines3", "sb3-contrib", "gymnasium",
                    "numpy", "onnx", "onnxruntime", "wandb", "apache-tvm")


def make_backend(name: str, device: str, calibrated: bool = True) -> LatencyBackend:
    """``analytical`` on a device profile (for ``cpu``: the fitted profile of this machine when
    ``calibrated`` and one exists, else the generic one), or ``tvm`` (llvm on cpu, else cuda)."""
    if name == "analytical":
        return get_backend(name, device=get_profile(device, use_calibrated=calibrated))
    return env_backend(name, device)


# ----------------------------------------------------------------- environments
class CurriculumEnv(gym.Wrapper):
    """Draws each episode's workload from the current curriculum stage.

    ``set_stage(k)`` (called through ``VecEnv.env_method``) switches stage; the env holds
    every stage's workloads and is reset with ``options={"workload": name}``.
    """

    def __init__(self, env: FusionEnv, stages: Sequence[Sequence[str]]) -> None:
        super().__init__(env)
        self.stages = [list(stage) for stage in stages]
        self.stage = 0
        self._rng = np.random.default_rng()

    def set_stage(self, stage: int) -> None:
        if not 0 <= stage < len(self.stages):
            raise ValueError(f"stage {stage} out of range 0..{len(self.stages) - 1}")
        self.stage = stage

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        names = self.stages[self.stage]
        options = {"workload": names[int(self._rng.integers(len(names)))], **(options or {})}
        return self.env.reset(seed=seed, options=options)

    def action_masks(self) -> np.ndarray:
        return self.env.action_masks()


def env_factory(config: TrainConfig, stages: Sequence[Sequence[str]]) -> Callable[[], gym.Env]:
    """A picklable constructor of one training env (for SubprocVecEnv workers)."""
    workloads = sorted({name for stage in stages for name in stage})

    def make() -> gym.Env:
        env = FusionEnv(workloads, backend=make_backend(config.backend, config.device, config.calibrated),
                        max_nodes=config.max_nodes, max_edges=config.max_edges)
        return Monitor(CurriculumEnv(env, stages))

    return make


def check_sizes(config: TrainConfig, names: Sequence[str]) -> None:
    """Fail before training when a workload's graph cannot fit the observation's padding."""
    from fusiongym.graphs import get_workload

    for name in names:
        template = get_workload(name).template()
        if template.num_nodes > config.max_nodes or template.num_edges > config.max_edges:
            raise ValueError(f"workload {name} has {template.num_nodes} nodes and {template.num_edges} edges; "
                             f"raise --max-nodes/--max-edges (now {config.max_nodes}/{config.max_edges})")


# ----------------------------------------------------------------- evaluation
@dataclass
class EvalCase:
    workload: str
    graph: ComputeGraph
    reference_us: float | None = None     # TVM default plan on the training backend


def eval_cases(suite: str, per_workload: int, max_nodes: int, max_edges: int) -> list[EvalCase]:
    """Fixed evaluation graphs: the same for every run, seed and machine (rng seeds 1000 + i)."""
    cases = []
    for workload in load_suite(suite):
        for i in range(per_workload):
            graph = workload.sample(np.random.default_rng(1000 + i))
            if graph.num_nodes <= max_nodes and graph.num_edges <= max_edges:
                cases.append(EvalCase(workload.name, graph))
    return cases


def reference_latency(graph: ComputeGraph, backend: LatencyBackend) -> float | None:
    """Latency of TVM's default fusion plan (None for graphs not imported through TVM)."""
    if graph.source.get("kind") != "zoo" and graph.relax_module is None:
        return None
    from fusiongym.reward.tvm_default import tvm_default_plan

    return backend.latency(graph, tvm_default_plan(graph), check=False).total_us


def rollout(model: MaskablePPO, env: FusionEnv, graph: ComputeGraph, deterministic: bool = True) -> tuple[float, float]:
    """One episode of the policy on ``graph``: (return, final latency in µs)."""
    obs, info = env.reset(options={"graph": graph})
    total, done = 0.0, False
    while not done:
        action, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=deterministic)
        obs, reward, terminated, truncated, info = env.step(int(action))
        total += float(reward)
        done = terminated or truncated
    return total, float(info["latency_us"])


def geometric_mean(values: Sequence[float]) -> float:
    return float(math.exp(np.mean(np.log(values)))) if values else math.nan


class Evaluator:
    """Sequential and one-pass evaluation of a model on fixed cases, against TVM's default plan.

    Always on the analytical model of the training device (deterministic and cheap), also
    for runs that train on a timing backend.
    """

    def __init__(self, config: TrainConfig, cases: list[EvalCase]) -> None:
        self.config = config
        self.cases = cases
        self.backend = make_backend("analytical", config.device, config.calibrated)
        self.env = FusionEnv([case.graph for case in cases], backend=self.backend, max_nodes=config.max_nodes,
                             max_edges=config.max_edges)

    def __call__(self, model: MaskablePPO) -> dict[str, Any]:
        metadata = policy_metadata(model.policy.gnn, model.policy.features_extractor.layout.vocab_size,
                                   list(self.env.layout.schedules),
                                   {"config": asdict(self.config), "backend": self.backend.describe()})
        policy = FusionPolicy(TorchEngine(model.policy.gnn), metadata, name="training")
        rows = []
        for case in self.cases:
            if case.reference_us is None:
                case.reference_us = reference_latency(case.graph, self.backend)
            episode_return, sequential_us = rollout(model, self.env, case.graph)
            plan = policy.decide(case.graph, self.backend)
            one_pass_us = self.backend.latency(case.graph, plan).total_us
            rows.append({"workload": case.workload, "graph_hash": case.graph.hash, "nodes": case.graph.num_nodes,
                         "return": episode_return, "sequential_us": sequential_us, "one_pass_us": one_pass_us,
                         "tvm_default_us": case.reference_us, "decide_ms": plan.meta["decision_ms"]})
        with_reference = [r for r in rows if r["tvm_default_us"]]
        return {
            "mean_return": float(np.mean([r["return"] for r in rows])),
            "speedup_sequential": geometric_mean([r["tvm_default_us"] / r["sequential_us"] for r in with_reference]),
            "speedup_one_pass": geometric_mean([r["tvm_default_us"] / r["one_pass_us"] for r in with_reference]),
            "one_pass_over_sequential": geometric_mean([r["one_pass_us"] / r["sequential_us"] for r in rows]),
            "cases": rows,
        }


# ------------------------------------------------------------------- callbacks
class ProgressBar(BaseCallback):
    """tqdm bar over the run's timesteps (rate and ETA), with the mean episode return."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, initial=self.num_timesteps, unit="step", dynamic_ncols=True,
                        desc="train", smoothing=0.05)

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        episodes = self.model.ep_info_buffer
        if episodes:
            self.bar.set_postfix(ep_return=f"{np.mean([e['r'] for e in episodes]):.3f}", refresh=False)

    def _on_training_end(self) -> None:
        self.bar.close()


class CurriculumCallback(BaseCallback):
    """Moves every env to the stage the run's progress calls for (checked at each rollout)."""

    def __init__(self, ends: Sequence[float], total: int) -> None:
        super().__init__()
        self.ends, self.total, self.stage = list(ends), total, -1

    def _on_rollout_start(self) -> None:
        progress = self.num_timesteps / self.total
        stage = next((i for i, end in enumerate(self.ends) if progress < end), len(self.ends) - 1)
        if stage != self.stage:
            self.training_env.env_method("set_stage", stage)
            self.stage = stage
        self.logger.record("curriculum/stage", stage)

    def _on_step(self) -> bool:
        return True


class EvalCallback(BaseCallback):
    """Every ``every`` timesteps: evaluate, log ``eval/*``, append eval.jsonl, keep best.zip."""

    def __init__(self, evaluator: Evaluator, every: int, out: Path, on_result: Callable[[dict], None]) -> None:
        super().__init__()
        self.evaluator, self.every, self.out, self.on_result = evaluator, every, out, on_result
        self.next_at = 0
        self.best = -math.inf

    def _on_training_start(self) -> None:
        self.next_at = (self.num_timesteps // self.every + 1) * self.every
        self.best = max((r["speedup_sequential"] for r in read_evals(self.out)
                         if not math.isnan(r["speedup_sequential"])), default=-math.inf)

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_at:
            self.next_at += self.every
            self.evaluate()
        return True

    def evaluate(self) -> dict[str, Any]:
        started = time.perf_counter()
        result = {"timesteps": self.num_timesteps, **self.evaluator(self.model),
                  "eval_s": round(time.perf_counter() - started, 2)}
        for key in ("mean_return", "speedup_sequential", "speedup_one_pass", "one_pass_over_sequential", "eval_s"):
            self.logger.record(f"eval/{key}", result[key])
        with open(self.out / "eval.jsonl", "a") as handle:
            handle.write(json.dumps(result) + "\n")
        score = result["speedup_sequential"] if not math.isnan(result["speedup_sequential"]) else result["mean_return"]
        if score > self.best:
            self.best = score
            self.model.save(self.out / "best.zip")
        self.on_result(result)
        return result


class WandbWriter(KVWriter):
    """Forwards every SB3 logger record (rollout/, train/, eval/, curriculum/) to wandb."""

    def __init__(self, run) -> None:
        self.run = run

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        numbers = {key: float(value) for key, value in key_values.items()
                   if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)}
        if numbers:
            self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


def read_evals(out: Path) -> list[dict[str, Any]]:
    path = out / "eval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ------------------------------------------------------------------------ runs
def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in VERSION_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def latest_checkpoint(out: Path) -> Path | None:
    """The newest model to resume from: the checkpoint with most steps, else final.zip."""
    checkpoints = sorted((out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}_*_steps.zip"),
                         key=lambda p: int(p.stem.split("_")[-2]))
    if checkpoints:
        return checkpoints[-1]
    final = out / "final.zip"
    return final if final.exists() else None


def wandb_mode(choice: str) -> str:
    """``auto``: the user's WANDB_MODE when set, otherwise offline (never uploads unasked)."""
    return os.environ.get("WANDB_MODE", "offline") if choice == "auto" else choice


def start_wandb(config: TrainConfig, out: Path, run_record: dict[str, Any]):
    mode = wandb_mode(config.wandb)
    if mode == "disabled":
        return None
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fusiongym"), name=out.name, mode=mode,
                     dir=os.environ.get("WANDB_DIR", str(out)), config=asdict(config),
                     id=run_record.get("wandb_id"), resume="allow")
    run_record["wandb_id"] = run.id
    return run


def write_run(out: Path, record: dict[str, Any]) -> None:
    path = out / "run.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) a run; returns its run.json record."""
    out = Path(config.out)
    if resume:
        previous = out / "run.json"
        if not previous.exists():
            raise FileNotFoundError(f"--resume: {previous} does not exist (nothing to resume)")
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {out / 'checkpoints'} and no final.zip")
        record = json.loads(previous.read_text())
    else:
        if (out / "run.json").exists():
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        checkpoint, record = None, {}
    stages = config.stages()
    check_sizes(config, sorted({name for _, names in stages for name in names}))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    # One thread by default: the GNN's ops are small, and on shared cores every OpenMP
    # barrier waits for a descheduled sibling thread (a 30x slowdown seen on 2 busy cores).
    torch.set_num_threads(config.threads)
    record.update({"format": RUN_FORMAT, "command": config.command(), "seed": config.seed, "config": asdict(config),
                   "versions": versions(), "stages": [{"until": end, "workloads": names} for end, names in stages],
                   "backend": make_backend(config.backend, config.device, config.calibrated).describe()})
    record.setdefault("started_at", time.strftime("%Y-%m-%d %H:%M:%S"))
    record.setdefault("sessions", []).append({"started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                              "resumed_from": str(checkpoint) if checkpoint else None,
                                              "argv": sys.argv})
    wandb_run = start_wandb(config, out, record)
    write_run(out, record)

    factory = env_factory(config, [names for _, names in stages])
    vec_env: VecEnv = (DummyVecEnv([factory]) if config.n_envs == 1
                       else SubprocVecEnv([factory] * config.n_envs))
    if checkpoint is not None:
        model = MaskablePPO.load(checkpoint, env=vec_env, device="cpu")
    else:
        model = MaskablePPO(
            FusionGNNPolicy, vec_env, learning_rate=config.learning_rate, n_steps=config.n_steps,
            batch_size=config.batch_size, n_epochs=config.n_epochs, gamma=config.gamma,
            gae_lambda=config.gae_lambda, ent_coef=config.ent_coef, seed=config.seed, device="cpu", verbose=0,
            policy_kwargs={"features_extractor_kwargs": {"hidden": config.hidden, "layers": config.layers}})
    formats: list[KVWriter] = [CSVOutputFormat(str(out / "progress.csv")), TensorBoardOutputFormat(str(out / "tb"))]
    if wandb_run is not None:
        formats.append(WandbWriter(wandb_run))
    model.set_logger(Logger(str(out), formats))

    def on_eval(result: dict[str, Any]) -> None:
        record["last_eval"] = {k: v for k, v in result.items() if k != "cases"}
        write_run(out, record)

    callbacks: list[BaseCallback] = [
        CurriculumCallback([end for end, _ in stages], config.timesteps),
        CheckpointCallback(max(1, config.checkpoint_every // config.n_envs), str(out / "checkpoints"),
                           name_prefix=CHECKPOINT_PREFIX),
    ]
    evaluation = None
    if config.eval_every > 0:
        evaluator = Evaluator(config, eval_cases(config.eval_suite, config.eval_cases, config.max_nodes,
                                                 config.max_edges))
        evaluation = EvalCallback(evaluator, config.eval_every, out, on_eval)
        callbacks.append(evaluation)
    if config.progress:
        callbacks.append(ProgressBar(config.timesteps))
    started = time.perf_counter()
    remaining = max(0, config.timesteps - model.num_timesteps)
    try:
        model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=checkpoint is None)
    finally:
        vec_env.close()
    model.save(out / "final.zip")
    if evaluation is not None and record.get("last_eval", {}).get("timesteps") != model.num_timesteps:
        evaluation.evaluate()
    model.logger.dump(model.num_timesteps)
    record.update({"timesteps_done": model.num_timesteps, "checkpoint": "final.zip",
                   "wall_s": round(record.get("wall_s", 0.0) + time.perf_counter() - started, 1),
                   "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    write_run(out, record)
    model.logger.close()
    return record
