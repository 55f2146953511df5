"""The demo (``make demo``): train briefly, then race the pretrained policy on real TVM latency.

1. A short MaskablePPO run on the analytical backend (``smoke`` suite: small variants of the
   zoo models), with the progress bar: what ``fusiongym train`` does, in miniature.
2. The shipped pretrained policy (``FusionPolicy.pretrained()``) against ``tvm_default``,
   ``inductor_rules`` and ``no_fusion`` on the real TVM CPU backend (llvm): every plan is
   compiled group by group and timed (measurements cached in the store). The cases are
   test-suite workloads (held-out models and shapes) in their *small* variants, so the
   whole demo compiles in a few minutes on 2 cores; the table says which.

Writes ``demo_out/latency.png`` (bar chart) and ``demo_out/results.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

# Test-suite workloads, small variant, and the run-time dims each demo case pins.
DEMO_CASES = (
    ("resnet50/test", {"batch": 1, "image": 224}),
    ("vit/test", {"batch": 1}),
    ("llama_long/test", {"batch": 1, "seq": 1024}),
    ("mixtral_moe_long/test", {"tokens": 1024}),
)
BASELINES = ("no_fusion", "tvm_default", "inductor_rules")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--train-steps", type=int, default=6000, help="steps of the short training run (0: skip)")
    parser.add_argument("--n-envs", type=int, default=2, help="environments of the short training run")
    parser.add_argument("--policy", default=None, help="exported policy (.onnx) to race (default: the pretrained one)")
    parser.add_argument("--cases", type=int, default=len(DEMO_CASES), help=f"how many of the {len(DEMO_CASES)} cases")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.train_steps > 0:
        short_training(out / "train", args.train_steps, args.n_envs, args.seed)
    rows = race(args.policy, DEMO_CASES[:args.cases], args.seed)
    print_table(rows)
    chart = write_chart(out / "latency.png", rows)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {chart} and {out / 'results.json'}")
    return 0


def short_training(run_dir: Path, steps: int, n_envs: int, seed: int) -> None:
    from fusiongym.agents.config import TrainConfig
    from fusiongym.agents.train import train

    print(f"== 1. PPO training, {steps} steps on the smoke suite (analytical backend, generic CPU profile) ==")
    shutil.rmtree(run_dir, ignore_errors=True)
    config = TrainConfig(out=str(run_dir), suite="smoke", timesteps=steps, n_envs=n_envs, seed=seed,
                         calibrated=False, curriculum="none", eval_every=0, checkpoint_every=steps,
                         wandb="disabled")   # the generic CPU profile, as the pretrained policy
    record = train(config)
    with open(run_dir / "progress.csv") as handle:
        returns = [float(row["rollout/ep_rew_mean"]) for row in csv.DictReader(handle)
                   if row.get("rollout/ep_rew_mean")]
    trend = f"; mean episode return {returns[0]:.3f} -> {returns[-1]:.3f}" if len(returns) > 1 else ""
    print(f"trained {record['timesteps_done']} steps in {record['wall_s']:.0f} s{trend} "
          f"(the pretrained policy had {_pretrained_steps()} steps on the full train suite)\n")


def _pretrained_steps() -> str:
    from fusiongym.agents import FusionPolicy

    return str(FusionPolicy.pretrained().metadata["training"].get("timesteps", "?"))


def demo_graphs(cases, seed: int) -> list[tuple[str, object]]:
    from fusiongym.graphs import load_suite

    workloads = {w.name: w for w in load_suite("test")}
    graphs = []
    for name, dims in cases:
        workload = dataclasses.replace(workloads[name], variant="small")
        graph = workload.sample(np.random.default_rng(seed), dims=dims, device_load=0.0)
        graphs.append((f"{name.split('/')[0]} (small, {', '.join(f'{k}={v}' for k, v in dims.items())})", graph))
    return graphs


def race(policy_path: str | None, cases, seed: int) -> list[dict]:
    from fusiongym.agents import FusionPolicy, baselines
    from fusiongym.reward import get_backend

    print("== 2. pretrained policy vs baselines on the real TVM CPU backend (llvm) ==")
    policy = FusionPolicy.load(policy_path) if policy_path else FusionPolicy.pretrained()
    backend = get_backend("tvm", target="llvm")
    rows = []
    for label, graph in demo_graphs(cases, seed):
        print(f"{label}: {graph.num_nodes} ops; compiling and timing every group ...", flush=True)
        methods = [(f"policy:{policy.name}", lambda g: policy.decide(g, backend), None)]
        methods += [(name, lambda g, b=baselines.get(name): b.decide(g, backend=backend), baselines.get(name).prepare)
                    for name in BASELINES]
        for method, decide, prepare in methods:
            if prepare is not None:
                prepare(graph)          # work done before any fusion decision (importing into TVM): untimed
            started = time.perf_counter()
            plan = decide(graph)
            decide_ms = (time.perf_counter() - started) * 1e3
            report = backend.latency(graph, plan)
            rows.append({"case": label, "method": method, "latency_us": report.total_us, "spread": report.spread,
                         "groups": plan.num_groups, "decide_ms": decide_ms,
                         "schedules": sorted(set(plan.schedules))})
    reference = {row["case"]: row["latency_us"] for row in rows if row["method"] == "tvm_default"}
    for row in rows:
        row["speedup_vs_tvm_default"] = reference[row["case"]] / row["latency_us"]
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':44s} {'method':20s} {'latency µs':>12s} {'± %':>5s} {'vs tvm':>7s} {'groups':>6s} "
          f"{'decide ms':>9s}")
    for row in rows:
        print(f"{row['case']:44s} {row['method']:20s} {row['latency_us']:12.1f} {100 * row['spread']:5.1f} "
              f"{row['speedup_vs_tvm_default']:6.2f}x {row['groups']:6d} {row['decide_ms']:9.2f}")


def write_chart(path: Path, rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(row["case"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    latency = {(row["case"], row["method"]): row["latency_us"] for row in rows}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2.6 * len(cases) + 2, 4.5))
    for i, method in enumerate(methods):
        xs = np.arange(len(cases)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(xs, [latency[(case, method)] for case in cases], width, label=method)
    ax.set_xticks(np.arange(len(cases)), [case.replace(" (", "\n(") for case in cases], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency on TVM llvm (µs, log scale)")
    ax.set_title("fusion plans measured on the real TVM CPU backend")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
