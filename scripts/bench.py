"""Measure fusiongym's speed on this machine; write BENCHMARKS.md and BENCHMARKS.json.

Every figure names its goal (from the issues) and whether this machine met it. Timings are
medians of several runs; where noise matters the figure is a ratio of two measurements
taken back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    from fusiongym.agents.fusion_policy import FusionPolicy
    from fusiongym.graphs import ComputeGraph


@dataclass
class BenchFigure:
    section: str
    name: str
    value: float
    unit: str
    goal: str = ""           # e.g. "≤ 10 s"; empty when the figure is informative only
    met: bool | None = None
    command: str = ""        # what was measured, reproducibly
    bench_section: str = ""  # the SECTIONS entry that measured it
    measured_at: str = ""    # date and time of that run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", default=".", help="folder for BENCHMARKS.md and BENCHMARKS.json")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (for smoke runs)")


def run(args: argparse.Namespace) -> int:
    from fusiongym.reward.fingerprint import describe_machine

    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench sections {unknown}; choose from {list(SECTIONS)}")
    figures: list[BenchFigure] = []
    _steady_heap()
    for name in tqdm(names, desc="bench", unit="section"):
        measured_at = time.strftime("%Y-%m-%d %H:%M:%S")
        figures.extend(replace(figure, bench_section=name, measured_at=measured_at)
                       for figure in SECTIONS[name](args.quick))
    machine = describe_machine()
    kept = earlier_figures(Path(args.out), machine, figures)
    write_report(Path(args.out), kept + figures, machine)
    for figure in figures:
        print(_figure_line(figure))
    if kept:
        print(f"kept {len(kept)} figures of other sections from the earlier run on this machine")
    return 0


def earlier_figures(folder: Path, machine: dict, figures: list[BenchFigure]) -> list[BenchFigure]:
    """The figures of the existing BENCHMARKS.json that this run did not re-measure, when it
    was written on this machine: re-measuring one section keeps the others (each row says
    when it was measured). Figures of another machine are never mixed in."""
    path = folder / "BENCHMARKS.json"
    if not path.exists():
        return []
    try:
        earlier = json.loads(path.read_text())
        if earlier["machine"].get("cpu_fingerprint") != machine.get("cpu_fingerprint"):
            return []
        rows = [BenchFigure(**{"measured_at": earlier["date"], **row}) for row in earlier["figures"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a BENCHMARKS.json this version can read ({exc}); move it away or "
                         f"run every section (`fusiongym bench`)") from exc
    sections = {f.bench_section for f in figures}
    shown = {f.section for f in figures}
    # Rows of files written before rows recorded their bench section go by the table's section.
    return [row for row in rows
            if row.bench_section not in sections and (row.bench_section or row.section not in shown)]


# ------------------------------------------------------------------- sections
def bench_graphs(quick: bool) -> list[BenchFigure]:
    """ResNet-50 import (torch.export + TVM, no cache) and template instantiation."""
    from fusiongym.graphs import from_torch, zoo

    model = zoo.build("resnet50", "full")
    started = time.perf_counter()
    template = from_torch(model.module, model.example_inputs, model.dynamic_shapes, name="resnet50")
    import_s = time.perf_counter() - started
    instantiate_ms = _median_ms(lambda: template.instantiate({"batch": 8, "image": 256}), 5 if quick else 30)
    return [
        BenchFigure("graphs", "ResNet-50 import (export + Relax + legalize)", import_s, "s", "≤ 10 s",
                    import_s <= 10, "from_torch(resnet50 full, dynamic batch and image)"),
        BenchFigure("graphs", "ResNet-50 instantiate(batch=8, image=256)", instantiate_ms, "ms", "≤ 20 ms",
                    instantiate_ms <= 20, f"template with {template.num_nodes} nodes"),
    ]


def bench_analytical(quick: bool) -> list[BenchFigure]:
    """Group evaluations per second on ResNet-50, vectorized, and one scalar group call."""
    from fusiongym.graphs import zoo
    from fusiongym.reward import Plan, get_backend

    graph = zoo.load("resnet50", "full", batch=8, image=224)
    backend = get_backend("analytical", device="cpu")
    rng = np.random.default_rng(0)
    group_of = rng.integers(0, graph.num_nodes // 3, size=graph.num_nodes)
    num_groups = int(group_of.max()) + 1
    schedules = rng.integers(0, len(backend.schedules), size=num_groups)
    backend.evaluate(graph, group_of, schedules)  # warm the per-graph tables
    seconds = _median_ms(lambda: backend.evaluate(graph, group_of, schedules), 20 if quick else 200) / 1e3
    batch_of, batch_schedules = np.stack([rng.permutation(group_of) for _ in range(8)]), np.tile(schedules, (8, 1))
    batch_seconds = _median_ms(lambda: backend.evaluate(graph, batch_of, batch_schedules), 10 if quick else 50) / 1e3
    plan = Plan.singletons(graph)
    single_us = _median_ms(lambda: backend.group_latency(graph, plan.groups[5] + plan.groups[6], "parallel"),
                           200 if quick else 2000) * 1e3
    rate, batch_rate = num_groups / seconds, 8 * num_groups / batch_seconds
    return [
        BenchFigure("reward", "analytical group evaluations/s (one plan, C)", rate, "groups/s", "≥ 1,000,000",
                    rate >= 1e6, f"evaluate() on resnet50 batch 8, {num_groups} groups per call "
                                 f"(one C pass, reward/roofline.c)"),
        BenchFigure("reward", "analytical group evaluations/s (8 plans a call, numpy)", batch_rate, "groups/s",
                    "≥ 1,000,000", batch_rate >= 1e6, "evaluate() of a [8, N] batch: numpy bincounts"),
        BenchFigure("reward", "analytical group_latency (one 2-node group)", single_us, "µs",
                    command="scalar path used by the env after every merge"),
    ]


def bench_tvm(quick: bool) -> list[BenchFigure]:
    """Real TVM: compile+measure per new group, noise, cache hits, sum-of-groups vs end-to-end."""
    import tempfile

    from fusiongym.graphs import zoo
    from fusiongym.reward import get_backend
    from fusiongym.reward.tvm_default import tvm_default_plan

    graph = zoo.load("resnet18", "small", batch=4)
    with tempfile.TemporaryDirectory() as folder:
        store_path = os.path.join(folder, "bench.db")
        backend = get_backend("tvm", target="llvm", store=store_path)
        plan = tvm_default_plan(graph)
        # Every schedule of the CPU menu in turn: a scheduled kernel compiles longer and times shorter.
        kernels = [(group, backend.schedules[i % len(backend.schedules)])
                   for i, group in enumerate(plan.groups[: 8 if quick else 24])]
        seconds, spreads = [], []
        for group, schedule in tqdm(kernels, desc="tvm groups", unit="group", leave=False):
            started = time.perf_counter()
            result = backend.group_latency(graph, group, schedule)
            seconds.append(time.perf_counter() - started)
            spreads.append(result.spread)
        second = get_backend("tvm", target="llvm", store=store_path)  # a new process would do the same
        for group, schedule in kernels:
            second.group_latency(graph, group, schedule)
        hit_rate, recompiles = second.store.stats.hit_rate, second.stats.compiles
        total = backend.latency(graph, plan).total_us
        end_to_end = backend.end_to_end_latency_us(graph, plan)
    median_s = statistics.median(seconds)
    return [
        BenchFigure("reward", "TVM compile+measure per new group (median)", median_s, "s", "≤ 0.3 s",
                    median_s <= 0.3, f"{len(kernels)} TVM-default groups of resnet18 small, llvm, the "
                    f"schedules {', '.join(backend.schedules)} in turn"),
        BenchFigure("reward", "measurement CV (median over groups)", statistics.median(spreads), "CV",
                    command="noise protocol: warm-up, min time, median of ≥5 repeats"),
        BenchFigure("reward", "store hit rate, second backend on the same store", hit_rate, "share", "1.0",
                    hit_rate == 1.0 and recompiles == 0, f"same {len(kernels)} kernels; {recompiles} re-compiles"),
        BenchFigure("reward", "sum of groups / end-to-end latency", total / end_to_end, "ratio",
                    command="TVM default plan of resnet18 small, whole fused module run by the VM"),
    ]


def bench_env(quick: bool) -> list[BenchFigure]:
    """FusionEnv steps/s with fuse actions on ResNet-50 (analytical, one core) and reset time."""
    from fusiongym.envs.fusion_env import FusionEnv
    from fusiongym.graphs import get_workload, zoo

    graph = zoo.load("resnet50", "full", batch=8, image=224)
    env = FusionEnv(workloads=[graph], backend="analytical", max_nodes=1024, max_edges=2048)
    rng = np.random.default_rng(0)
    steps, elapsed = 0, 0.0
    for episode in range(2 if quick else 5):
        env.reset(seed=episode)
        while True:
            fuse = np.flatnonzero(env.action_masks()[: env.max_edges])
            if fuse.size == 0:
                break
            action = int(fuse[rng.integers(fuse.size)])
            started = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            elapsed += time.perf_counter() - started
            steps += 1
            if terminated or truncated:
                break
    fixed_reset_ms = _median_ms(lambda: env.reset(seed=1), 10 if quick else 50)
    workload_env = FusionEnv(workloads=[get_workload("resnet50/test")], backend="analytical",
                             max_nodes=1024, max_edges=2048)
    workload_env.reset(seed=0)   # imports the template once (or reads it from the template cache)
    seeds = iter(range(1, 1_000))
    workload_reset_ms = _median_ms(lambda: workload_env.reset(seed=next(seeds)), 10 if quick else 50)
    rate = steps / elapsed
    return [
        BenchFigure("envs", "env steps/s (fuse actions, ResNet-50, analytical)", rate, "steps/s",
                    "≥ 20,000", rate >= 20_000, f"{steps} random legal fuse steps, step() time only"),
        BenchFigure("envs", "env reset (cached workload)", workload_reset_ms, "ms", "≤ 5 ms", workload_reset_ms <= 5,
                    "reset(seed) on the resnet50/test workload, template cached: new batch, image and load "
                    "drawn every reset, the graph instantiated from the template"),
        BenchFigure("envs", "env reset (fixed graph)", fixed_reset_ms, "ms", "", None,
                    "reset(seed) on a fixed ResNet-50 graph (batch 8, image 224)"),
    ]


def bench_policy(quick: bool) -> list[BenchFigure]:
    """The shipped policy: decide() on a 10k-edge graph (one thread), batched edges/s, file size."""
    from importlib import resources

    from fusiongym.agents.fusion_policy import FusionPolicy
    from fusiongym.graphs import synthetic, zoo

    policy = FusionPolicy.pretrained()
    graph = synthetic(n_nodes=9_400, seed=0)
    fresh_process_ms = _fresh_process_ms(
        "from fusiongym.agents.fusion_policy import FusionPolicy\n"
        "from fusiongym.graphs import synthetic\n"
        "policy, graph = FusionPolicy.pretrained(), synthetic(n_nodes=9_400, seed=0)",
        "policy.decide(graph)", 5 if quick else 30)
    policy.decide(graph)  # warm-up: scratch arrays, analytical tables
    decide_ms = _median_ms(lambda: policy.decide(graph), 5 if quick else 30)
    with_lists_ms = _median_ms(lambda: policy.decide(graph).groups, 5 if quick else 30)
    parts = [policy.decide(graph).meta for _ in range(5 if quick else 30)]
    part_ms = {part: statistics.median(meta[f"{part}_ms"] for meta in parts) for part in ("encode", "forward", "plan")}
    resnet50 = zoo.load("resnet50", "full", batch=1, image=224)
    policy.decide(resnet50)
    resnet50_ms = _median_ms(lambda: policy.decide(resnet50), 5 if quick else 30)
    run_time = _run_time_plan_ms(policy, zoo.template("resnet50", "full"), graph, 5 if quick else 30)
    batch = policy.encode([synthetic(n_nodes=1_000, seed=seed) for seed in range(32)])
    batch_edges = int(batch.src.shape[0])
    batch_s = _median_ms(lambda: policy.engine.run(batch), 3 if quick else 10) / 1e3
    with resources.as_file(resources.files("fusiongym.agents").joinpath("pretrained", "policy.onnx")) as path:
        size_kb = path.stat().st_size / 1024
        reference = FusionPolicy.load(path, engine="onnxruntime")
    single = policy.encode([graph])
    reference.engine.run(single)
    onnx_ratio = (_median_ms(lambda: reference.engine.run(single), 5 if quick else 20)
                  / _median_ms(lambda: policy.engine.run(single), 5 if quick else 20))
    hidden = policy.metadata.get("hidden")
    return [
        BenchFigure("agents", f"policy decide() on a {graph.num_edges:,}-edge graph, 1 thread", decide_ms, "ms",
                    "≤ 1 ms", decide_ms <= 1.0, f"synthetic(9400 nodes), graph arrays cached, H={hidden}, "
                    "kernels engine; parts: " + ", ".join(f"{part} {ms:.2f} ms" for part, ms in part_ms.items())),
        BenchFigure("agents", "policy decide() on the same graph, fresh process", fresh_process_ms, "ms", "", None,
                    "a new Python process that has loaded nothing else: glibc unmaps or trims the call's "
                    "few hundred KB of arrays after every call, and the next call faults them back in"),
        BenchFigure("agents", "policy decide(), then its plan's groups as Python lists", with_lists_ms, "ms", "",
                    None, f"the same graph; decide returns group labels, and plan.groups builds "
                    f"{graph.num_nodes:,} ints in lists on first use"),
        BenchFigure("agents", f"policy decide() on ResNet-50 ({resnet50.num_edges} edges), 1 thread", resnet50_ms,
                    "ms", "≤ 1 ms", resnet50_ms <= 1.0, "zoo resnet50 full, batch 1, image 224"),
        BenchFigure("agents", "run-time plan at new dims, ResNet-50: ShapeProgram.instance + decide",
                    run_time["instance"], "ms", "≤ 1 ms", run_time["instance"] <= 1.0,
                    f"a new (batch, image) on every call, nothing cached per graph; via template.instantiate "
                    f"(graph objects, arrays, hash): {run_time['instantiate']:.2f} ms, "
                    f"{run_time['instantiate'] / run_time['instance']:.0f}x"),
        BenchFigure("agents", f"run-time plan, {graph.num_edges:,}-edge graph: ShapeProgram.instance + decide",
                    run_time["instance_10k"], "ms", "", None,
                    "fresh arrays on every call (the synthetic graph has no dims; the arrays are rebuilt)"),
        BenchFigure("agents", "policy forward, batched", batch_edges / batch_s, "edges/s", "≥ 2,000,000",
                    batch_edges / batch_s >= 2e6, f"32 synthetic 1000-node graphs in one batch ({batch_edges:,} edges), "
                    "kernels engine"),
        BenchFigure("agents", "forward pass, onnxruntime time / kernels engine time", onnx_ratio, "x", "", None,
                    "same file, same 10k-edge graph, 1 thread each; the engines' outputs agree within 1e-4"),
        BenchFigure("agents", "pretrained policy file", size_kb, "KB", "≤ 300 KB", size_kb <= 300,
                    "agents/pretrained/policy.onnx"),
    ]


def bench_costmodel(quick: bool) -> list[BenchFigure]:
    """The learned cost model's numpy path: a whole 10k-edge plan (random pairs, and connected pairs,
    whose nodes take the message rows that random pairs skip), one group, file size.

    Uses the model at $FUSIONGYM_COSTMODEL (or ~/.cache) when there is one, else an untrained
    network of the same shape over the env's op vocabulary: time and size do not depend on
    the weights' values.
    """
    import tempfile

    import torch

    from fusiongym.envs.observation import OP_VOCAB
    from fusiongym.graphs import synthetic
    from fusiongym.reward.costmodel.backend import default_model_path
    from fusiongym.reward.costmodel.gnn import GroupGNN, build_model
    from fusiongym.reward.costmodel.model import CostModel
    from fusiongym.reward.devices import CPU_SCHEDULES, get_profile

    path = default_model_path()
    if path.is_file():
        model, origin = CostModel.load(path), str(path)
    else:
        torch.manual_seed(0)
        model = build_model(GroupGNN(len(OP_VOCAB) + 1, len(CPU_SCHEDULES)), ["<other>", *OP_VOCAB],
                            CPU_SCHEDULES, get_profile("cpu", use_calibrated=False).to_dict(), {"data_hash": "untrained"})
        origin = "untrained network of the trained shape (no model at $FUSIONGYM_COSTMODEL)"
        path = model.save(Path(tempfile.mkdtemp()) / "model.npz")
    graph = synthetic(n_nodes=9_400, seed=0)
    labels = np.random.default_rng(0).permutation(graph.num_nodes) // 2   # 4,700 groups of 2 nodes
    schedules = np.random.default_rng(1).integers(len(model.schedules), size=int(labels.max()) + 1)
    model.predict_groups_us(graph, labels, schedules)  # warm-up: per-graph arrays, static projection
    repeats = 10 if quick else 50
    plan_ms = _median_ms(lambda: model.predict_groups_us(graph, labels, schedules), repeats)
    inputs = Path(tempfile.mkdtemp()) / "plan.npz"
    np.savez(inputs, labels=labels, schedules=schedules)
    fresh_process_ms = _fresh_process_ms(
        "import numpy as np\nfrom fusiongym.graphs import synthetic\n"
        "from fusiongym.reward.costmodel.model import CostModel\n"
        f"model, plan = CostModel.load({str(path)!r}), np.load({str(inputs)!r})\n"
        "graph = synthetic(n_nodes=9_400, seed=0)",
        "model.predict_groups_us(graph, plan['labels'], plan['schedules'])", repeats)
    connected = _connected_pairs(graph)
    connected_schedules = np.random.default_rng(1).integers(len(model.schedules), size=int(connected.max()) + 1)
    model.predict_groups_us(graph, connected, connected_schedules)
    connected_ms = _median_ms(lambda: model.predict_groups_us(graph, connected, connected_schedules), repeats)
    group = [0, *(e.dst for e in graph.edges if e.src == 0)][:4]
    group_us = 1e3 * _median_ms(lambda: model.predict_group_log_us(graph, group, model.schedules[0]), repeats)
    size_kb = path.stat().st_size / 1024
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    return [
        BenchFigure("costmodel", f"learned cost model, all groups of a {graph.num_edges:,}-edge plan", plan_ms, "ms",
                    "≤ 1 ms", plan_ms <= 1.0, f"predict_groups_us on synthetic(9400 nodes), 4,700 groups, "
                    f"numpy + C kernels, analytical prior included, OPENBLAS_NUM_THREADS={threads}; "
                    f"model: {origin}"),
        BenchFigure("costmodel", "learned cost model, the same plan, fresh process", fresh_process_ms, "ms", "",
                    None, "a new Python process that has loaded nothing else (see the policy's fresh-process figure)"),
        BenchFigure("costmodel", "learned cost model, the same graph in connected pairs", connected_ms, "ms", "",
                    None, f"{int(connected.max()) + 1:,} groups: each edge's two ends fused while both are free "
                    f"(edge order), the rest alone; groups with internal edges take the message rows the random "
                    f"pairs skip"),
        BenchFigure("costmodel", "learned cost model, one group (env step)", group_us, "µs", "",
                    None, f"predict_group_log_us on a {len(group)}-node group of the same graph"),
        BenchFigure("costmodel", "learned cost model file", size_kb, "KB", "≤ 300 KB", size_kb <= 300,
                    f".npz: weights + JSON header ({len(model.op_vocab)} ops)"),
    ]


SECTIONS: dict[str, Callable[[bool], list[BenchFigure]]] = {
    "graphs": bench_graphs,
    "analytical": bench_analytical,
    "env": bench_env,
    "tvm": bench_tvm,
    "policy": bench_policy,
    "costmodel": bench_costmodel,
}


def _steady_heap() -> None:
    """Put glibc's heap in the state of a process that has loaded a model.

    glibc serves allocations over its mmap threshold (128 KB at start) with fresh mappings
    and trims the heap top beyond twice that, so the arrays of a call on a 10k-edge graph
    are unmapped after it and page-faulted back (~165 faults, 0.3-0.9 ms) on the next.
    Freeing any block of several MB (weights, a compiled module, a JSON text) raises both
    thresholds for the rest of the process; a host that has loaded a model is in that state.
    """
    np.ones(4_000_000).sum()   # 32 MB allocated, touched and freed


def _fresh_process_ms(setup: str, call: str, repeats: int) -> float:
    """Median time of ``call`` (after ``setup``, one warm-up call) in a new interpreter whose
    heap is as at start: the contrast to ``_steady_heap``."""
    import subprocess
    import sys

    script = (f"import statistics, time\n{setup}\n{call}\nsamples = []\nfor _ in range({repeats}):\n"
              f"    started = time.perf_counter(); {call}; samples.append(time.perf_counter() - started)\n"
              "print(statistics.median(samples) * 1e3)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _run_time_plan_ms(policy: FusionPolicy, template: ComputeGraph, large: ComputeGraph,
                      repeats: int) -> dict[str, float]:
    """Plans for shapes seen only at run time: ``decide`` on a ShapeProgram instance and on
    ``template.instantiate`` at a new (batch, image) each call; a fresh instance of ``large``."""
    import itertools

    from fusiongym.graphs import ShapeProgram

    program, large_program = ShapeProgram(template), ShapeProgram(large)
    shapes = ({"batch": 1 + step % 64, "image": 96 + 32 * (step // 64 % 8)} for step in itertools.count())
    policy.decide(program.instance(next(shapes)))
    return {"instance": _median_ms(lambda: policy.decide(program.instance(next(shapes))), 3 * repeats),
            "instantiate": _median_ms(lambda: policy.decide(template.instantiate(next(shapes))), repeats),
            "instance_10k": _median_ms(lambda: policy.decide(large_program.instance({})), repeats)}


def _connected_pairs(graph: ComputeGraph) -> np.ndarray:
    """[N] group labels: a greedy matching along the edges (in edge order), unmatched nodes alone."""
    label = np.full(graph.num_nodes, -1, dtype=np.int64)
    count = 0
    for edge in graph.edges:
        if label[edge.src] < 0 and label[edge.dst] < 0:
            label[edge.src] = label[edge.dst] = count
            count += 1
    alone = np.flatnonzero(label < 0)
    label[alone] = count + np.arange(len(alone))
    return label


def _median_ms(function: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


# -------------------------------------------------------------------- report
def _figure_line(figure: BenchFigure) -> str:
    verdict = "" if figure.met is None else (" ✓" if figure.met else " ✗")
    goal = f"  (goal {figure.goal}{verdict})" if figure.goal else ""
    return f"[{figure.section}] {figure.name}: {_format(figure.value)} {figure.unit}{goal}"


def _format(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def write_report(folder: Path, figures: list[BenchFigure], machine: dict) -> None:
    """BENCHMARKS.json (all figures + machine) and BENCHMARKS.md, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "figures": [asdict(f) for f in figures]}
    _write(folder / "BENCHMARKS.json", json.dumps(payload, indent=2, ensure_ascii=False))
    lines = ["# fusiongym benchmarks", "",
             f"Measured by `fusiongym bench` on **{machine.get('cpu_model', '?')}** "
             f"({_cpu_details(machine)}{machine.get('cpu_cores', '?')} cores, {machine.get('memory_gib', '?')} GiB, "
             f"{machine.get('os', '')}), "
             f"runs of {', '.join(sorted({f.measured_at for f in figures}))}. Machine: "
             f"`{machine.get('cpu_fingerprint', '')}`; versions: python "
             f"{machine.get('python')}, torch {machine.get('torch')}, tvm {machine.get('tvm')}, "
             f"fusiongym {machine.get('fusiongym')}.", "",
             "| section | figure | value | goal | met | what was measured | measured at |",
             "|---|---|---|---|---|---|---|"]
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(f"| {f.section} | {f.name} | {_format(f.value)} {f.unit} | {f.goal} | {met} | {f.command} "
                     f"| {f.measured_at} |")
    _write(folder / "BENCHMARKS.md", "\n".join(lines) + "\n")


def _cpu_details(machine: dict) -> str:
    """The CPU's generation and L2 / L3 sizes where known, as "family 25 model 17 stepping 1, L2
    1024K, L3 32768K, ": a VM's CPU name alone may not say which generation ran."""
    caches = machine.get("cpu_caches") or {}
    parts = [machine.get("cpu_generation"), *(f"{level} {caches[level]}" for level in ("L2", "L3") if level in caches)]
    return "".join(f"{part}, " for part in parts if part)


def _write(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
