"""Train the GNN fusion policy with MaskablePPO (sb3-contrib) on FusionEnv.

Example: ``fusiongym train --suite train --backend analytical --timesteps 150000 --n-envs 2
--seed 0 --out runs/ppo``. The run directory gets run.json (full command, seed, versions),
checkpoints, final.zip, eval.jsonl, tensorboard logs (``tensorboard --logdir runs/ppo/tb``)
and an offline wandb run (``--wandb online`` or WANDB_MODE=online to upload). ``--resume``
continues the run in ``--out`` from its newest checkpoint with its recorded options; options
given again override them (e.g. a larger ``--timesteps``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from fusiongym.agents.config import TrainConfig

HELP = {
    "out": "run directory (created; must not hold a run unless --resume)",
    "suite": "training suite (graphs/data/suites.json): train, smoke, test",
    "backend": "latency backend of the reward: analytical or tvm (real timings, cached in the store)",
    "device": "device profile (analytical) or target (tvm: cpu = llvm, else cuda)",
    "calibrated": "analytical cpu: use this machine's fitted profile (fusiongym profile --calibrate) when present; "
                  "--no-calibrated: the generic profile, the same on every machine",
    "timesteps": "total environment steps of the run",
    "n_envs": "parallel environments (SubprocVecEnv; DummyVecEnv when 1)",
    "seed": "seed of the policy initialization, the envs and PPO",
    "curriculum": "earlier stages as SUITE:FRACTION,... (share of the steps each ends at); 'none' to disable",
    "max_nodes": "observation padding: nodes", "max_edges": "observation padding: edges",
    "hidden": "hidden units of the GNN", "layers": "message-passing layers",
    "n_steps": "steps per env and rollout", "batch_size": "PPO minibatch", "n_epochs": "PPO epochs per rollout",
    "learning_rate": "Adam learning rate", "gamma": "discount", "gae_lambda": "GAE lambda",
    "ent_coef": "entropy bonus",
    "eval_suite": "suite of the fixed evaluation cases (speedup vs TVM's default plan, analytical backend)",
    "eval_every": "evaluate every N timesteps and at the end (0: never)",
    "eval_cases": "evaluation cases per workload of the eval suite",
    "checkpoint_every": "save a checkpoint every N timesteps",
    "threads": "torch threads of the learner (1 avoids OpenMP stalls on busy shared cores)",
    "wandb": "auto (WANDB_MODE if set, else offline), offline, online or disabled",
    "progress": "show the progress bar",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is MISSING else f.default
        text = f"{HELP[f.name]} (default: {default})" if default is not None else HELP[f.name]
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, required=f.name == "out", help=text)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the resumed run's recorded options, then the options given now."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values = asdict(TrainConfig(out=given["out"]))
    run_file = Path(given["out"]) / "run.json"
    if args.resume and run_file.exists():
        values.update(json.loads(run_file.read_text()).get("config", {}))
    values.update(given)
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from fusiongym.agents.train import train

    record = train(config, resume=args.resume)
    last = record.get("last_eval") or {}
    print(f"trained {record['timesteps_done']} steps in {record['wall_s']:.0f} s -> {config.out}/final.zip")
    if last:
        print(f"eval ({config.eval_suite}, analytical): speedup vs tvm_default {last['speedup_sequential']:.3f}x "
              f"sequential, {last['speedup_one_pass']:.3f}x one-pass; mean return {last['mean_return']:.3f}")
    print(f"export: fusiongym export {config.out} --out {config.out}/policy.onnx")
    return 0
