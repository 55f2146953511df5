"""The fusiongym command line: validate re-measures saved results and flags the ones that lie."""

from __future__ import annotations

import json

import numpy as np

from fusiongym.envs.fusion_env import FusionEnv
from fusiongym.graphs import synthetic
from fusiongym.reward.calibrate import PRIOR_LOG_STD
from fusiongym.scripts.cli import main


def saved_results(count: int, device: str = "cpu") -> list[dict]:
    graph = synthetic(n_nodes=40, seed=2)
    env = FusionEnv(workloads=[graph], device=device, max_nodes=64, max_edges=128)
    records = []
    for seed in range(count):
        env.reset(seed=seed)
        rng, done, info = np.random.default_rng(seed), False, {}
        while not done:
            action = int(rng.choice(np.flatnonzero(env.action_masks())))
            _, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        records.append({"state": env.state, "latency_us": info["latency_us"], "graph": graph.to_json(),
                        "backend": "analytical", "device": device})
    return records


def write_records(path, records: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in records))
    return str(path)


def test_validate_flags_only_the_tampered_result(tmp_path, capsys):
    records = saved_results(3)
    records[1]["latency_us"] *= 0.8
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    assert main(["validate", str(path)]) == 1
    output = capsys.readouterr().out
    assert "record 1 " in output and "record 0 " not in output and "2 of 3 results reproduce" in output


def test_validate_accepts_honest_results_and_names_bad_lines(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in saved_results(2)))
    assert main(["validate", str(path)]) == 0
    path.write_text("{not json}\n")
    assert main(["validate", str(path)]) == 2
    assert f"{path}:1" in capsys.readouterr().err


def test_validate_reprices_with_the_recorded_profile_not_this_machines(tmp_path, monkeypatch, capsys):
    """A result priced on a calibrated CPU profile reproduces on a machine calibrated otherwise."""
    from dataclasses import replace

    from fusiongym.reward.devices import CPU, save_profile

    fitted = replace(CPU, memory_bandwidth_bytes_per_s=9e9, launch_overhead_us=3.0, source="fitted (test)")
    monkeypatch.setenv("FUSIONGYM_CPU_PROFILE", str(save_profile(fitted, tmp_path / "there.json")))
    records = saved_results(2) + [dict(record, device=None) for record in saved_results(1, device="h100_sxm")]
    monkeypatch.setenv("FUSIONGYM_CPU_PROFILE", str(tmp_path / "uncalibrated-here.json"))
    assert main(["validate", write_records(tmp_path / "results.jsonl", records)]) == 0
    assert "3 of 3 results reproduce" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "results.jsonl"), "--device", "cpu"]) == 1   # here, by name: differs


def test_validate_refuses_a_cuda_record_without_a_gpu_naming_the_fix(tmp_path, monkeypatch, capsys):
    from fusiongym.reward import get_backend, tvm_backend

    monkeypatch.setattr(tvm_backend, "_cuda_problem", lambda: "no CUDA GPU is visible to TVM")
    described = get_backend("tvm", target="cuda", cuda_arch="sm_90").describe()
    record = saved_results(1)[0]
    del record["backend"], record["device"]
    record["state"]["backend"] = dict(described, device="cuda:NVIDIA H100 80GB HBM3:132sm")
    assert main(["validate", write_records(tmp_path / "results.jsonl", [record])]) == 2
    error = capsys.readouterr().err
    assert "records [0] cannot be re-measured here" in error and "no CUDA GPU is visible" in error
    assert "--backend/--device" in error


def test_bench_of_one_section_keeps_the_other_sections_of_this_machine(tmp_path, capsys):
    from fusiongym.reward.fingerprint import describe_machine

    old = {"section": "graphs", "name": "ResNet-50 import", "value": 6.5, "unit": "s", "goal": "≤ 10 s", "met": True,
           "command": "from_torch", "bench_section": "graphs", "measured_at": "2026-01-01 00:00:00"}
    stale = {**old, "section": "reward", "name": "analytical group evaluations/s (vectorized)", "value": -1.0,
             "bench_section": "analytical"}
    earlier = {"machine": describe_machine(), "date": "2026-01-01 00:00:00", "figures": [old, stale]}
    (tmp_path / "BENCHMARKS.json").write_text(json.dumps(earlier))
    assert main(["bench", "--sections", "analytical", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "BENCHMARKS.json").read_text())["figures"]
    assert [r for r in rows if r["bench_section"] == "graphs"] == [old]          # kept as it was
    analytical = [r for r in rows if r["bench_section"] == "analytical"]
    assert analytical and all(r["value"] > 0 and r["measured_at"] > old["measured_at"] for r in analytical)
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| 2026-01-01 00:00:00 |" in report
    machine = describe_machine()
    if machine["cpu_generation"]:   # x86 Linux: the header names the generation, which the CPU's name may not
        assert f"({machine['cpu_generation']}, " in report

    earlier["machine"] = {**earlier["machine"], "cpu_fingerprint": "cpu:another"}
    (tmp_path / "BENCHMARKS.json").write_text(json.dumps(earlier))
    main(["bench", "--sections", "analytical", "--quick", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "BENCHMARKS.json").read_text())["figures"]
    assert {r["bench_section"] for r in rows} == {"analytical"}                  # another machine: nothing mixed


def test_bench_prices_the_cost_model_on_connected_pairs_too():
    """The cost model's second bench plan: every group is one node or the two ends of an edge, and no edge
    is left with both ends alone (a maximal matching, so most nodes have an internal in-edge or out-edge)."""
    from fusiongym.scripts.bench import _connected_pairs

    graph = synthetic(n_nodes=300, seed=0)
    labels = _connected_pairs(graph)
    sizes = np.bincount(labels)
    assert (sizes >= 1).all() and sizes.max() == 2                                  # labels 0..G-1, all used
    edges = {(e.src, e.dst) for e in graph.edges}
    pairs = [np.flatnonzero(labels == g) for g in np.flatnonzero(sizes == 2)]
    assert all((int(a), int(b)) in edges for a, b in pairs)
    assert not any(sizes[labels[e.src]] == 1 and sizes[labels[e.dst]] == 1 for e in graph.edges)
    assert 2 * len(pairs) > 0.8 * graph.num_nodes


def test_op_classes_needs_calibrate(tmp_path, capsys):
    assert main(["profile", "--op-classes", "--groups", "5", "--store", str(tmp_path / "store.db")]) == 2
    assert "--op-classes shapes the calibration's fit: give it with --calibrate" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())   # refused before anything was measured


def test_calibrate_fits_the_cpu_profile_to_real_tvm_timings(tmp_path, monkeypatch, capsys):
    """``profile --calibrate`` end to end on real TVM kernels: a saved, loadable profile and a report."""
    from fusiongym.reward.devices import get_profile

    monkeypatch.setenv("FUSIONGYM_CPU_PROFILE", str(tmp_path / "cpu_profile.json"))
    report_path = tmp_path / "calibration.json"
    assert main(["profile", "--calibrate", "--models", "resnet18,bert", "--groups", "30", "--seed", "1",
                 "--store", str(tmp_path / "store.db"), "--report", str(report_path)]) == 0
    assert "30/30" in capsys.readouterr().err                       # the progress bar, complete
    report = json.loads(report_path.read_text())
    assert report["profile_path"] == str(tmp_path / "cpu_profile.json")
    assert report["held_out_groups"] == 9 and sum(report["held_out_groups_by_model"].values()) == 9
    assert set(report["held_out_groups_by_model"]) <= {"resnet18", "bert"}
    for key in ("kendall_tau_held_out_before", "kendall_tau_held_out_after"):
        assert -1.0 <= report[key] <= 1.0
    fitted = get_profile("cpu")                                    # now read from $FUSIONGYM_CPU_PROFILE
    assert fitted != get_profile("cpu", use_calibrated=False)
    assert report["fit"]["num_samples"] == 21
    errors = report["fit"]["log_std_error"]   # under the prior every fitted parameter has a finite error
    assert {"fp32_flops_per_s", "memory_bandwidth_bytes_per_s", "launch_overhead_us"} <= set(errors)
    assert all(0 < error <= PRIOR_LOG_STD + 1e-9 for error in errors.values())
    assert report["fit"]["prior_log_std"] == PRIOR_LOG_STD
