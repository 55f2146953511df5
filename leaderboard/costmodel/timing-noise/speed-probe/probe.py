"""Experiment (README, "Where this EPYC's noise comes from"): does a speed probe timed just before each
kernel tell the host's state?

N test kernels (drawn with seed 2), built once, timed round-robin for R rounds in one process;
before each kernel's timing, two probes: a fixed numpy sort (one thread) and a reference
kernel (the ninth drawn with seed 1: ResNet-50's node 20, a 6 µs `subtract` on the `parallel`
schedule, so on both threads), timed like the others with a short protocol. Saves everything to
OUT (.npz) and prints how much of each kernel's drift the probes explain:

    python probe.py runs/again/measurements.db.plans.jsonl 16 40 probe-0.npz   # then again: probe-1.npz
    python probe.py --summary probe-0.npz
    python probe.py --agreement probe-0.npz probe-1.npz

``--agreement`` compares two processes' runs: how far apart the two estimates of each kernel lie
(mean over kernels of |ln A / B|) for the store's estimator (the median of 3 timings spread over
the run), for the median over k consecutive rounds, over every round, and over the timings in
the probe's fast state.
"""
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/median-take")


def measure(log: str, count: int, rounds: int) -> dict[str, np.ndarray]:
    import tvm

    from fusiongym.reward import timing
    from fusiongym.reward.tvm_apply import random_arrays
    from kernels import sample_test_kernels

    backend, reference = sample_test_kernels(log, 9, seed=1)
    kernels = [k for k in sample_test_kernels(log, count + 1, seed=2)[1] if k != reference[8]][:count]
    device = tvm.cpu()
    built = [backend.build_group(*kernel) for kernel in [*kernels, reference[8]]]
    args = [[tvm.runtime.tensor(a, device) for a in random_arrays(b.arg_specs())] for b in built]
    short = timing.TimingProtocol(min_repeat_ms=1.0, max_remeasure=0)
    sort_input = np.random.default_rng(0).random(20_000)

    def sort_ms() -> float:
        started = time.perf_counter()
        for _ in range(4):
            np.sort(sort_input)
        return (time.perf_counter() - started) * 1e3

    def timed_us(i: int, protocol) -> float:
        return timing.measure(built[i].executable, args[i], protocol, entry=built[i].name, device=device).median_us

    latency_us, sort_probe_ms, kernel_probe_us = (np.zeros((rounds, count)) for _ in range(3))
    for r in range(rounds):
        for i in range(count):
            sort_probe_ms[r, i] = sort_ms()
            kernel_probe_us[r, i] = timed_us(count, short)
            latency_us[r, i] = timed_us(i, backend.protocol)
    schedules = np.array([schedule for _, _, schedule in kernels])
    return {"schedule": schedules, "latency_us": latency_us, "sort_probe_ms": sort_probe_ms, "kernel_probe_us": kernel_probe_us}


def summary(data: dict[str, np.ndarray]) -> None:
    ln = np.log(data["latency_us"])
    deviation = ln - ln.mean(0)                                                       # [rounds, count]
    print("schedule per kernel:", " ".join(str(s) for s in data["schedule"]))
    print("median µs per kernel:", np.round(np.median(data["latency_us"], 0), 1))
    print("std of ln per kernel:               ", np.round(deviation.std(0), 3))
    for name in ("sort_probe_ms", "kernel_probe_us"):
        probe = np.log(data[name])
        probe_dev = probe - probe.mean()
        print(f"{name}: quantiles 0/10/50/90/100 % of the probe:", np.round(np.quantile(data[name], [0, .1, .5, .9, 1]), 2))
        print("  correlation of each kernel with it:", np.round([np.corrcoef(deviation[:, i], probe_dev[:, i])[0, 1]
                                                               for i in range(ln.shape[1])], 2))
        print("  std of ln minus ln probe:         ", np.round((deviation - probe_dev).std(0), 3))
        slope = (deviation * probe_dev).sum(0) / (probe_dev ** 2).sum(0)
        print("  slope per kernel (oracle):        ", np.round(slope, 2))
        print("  std of ln minus slope x ln probe: ", np.round((deviation - slope * probe_dev).std(0), 3))
        fast = data[name] <= np.quantile(data[name], 0.02) * 1.08
        print(f"  std of ln in its fast state ({fast.mean():.0%} of timings; nan: fewer than 3):",
              np.round([deviation[fast[:, i], i].std() if fast[:, i].sum() >= 3 else np.nan
                        for i in range(ln.shape[1])], 3))


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    ln_a, ln_b = np.log(a["latency_us"]), np.log(b["latency_us"])                    # [rounds, count]
    rounds = len(ln_a)

    def apart(rows_a, rows_b) -> float:
        return float(np.mean(np.abs(np.median(ln_a[rows_a], 0) - np.median(ln_b[rows_b], 0))))

    spread = [0, rounds // 3, 2 * rounds // 3]
    print(f"median of 3 timings spread over the run (rounds {spread}): {apart(spread, spread):.3f}")
    for k in (1, 3, 5, 13):
        pairs = [apart(list(range(s, s + k)), list(range(t, t + k)))
                 for s in range(0, rounds - k + 1, 3) for t in range(0, rounds - k + 1, 7)]
        print(f"median of {k:2d} consecutive rounds (mean over windows): {np.mean(pairs):.3f}")
    print(f"median of all {rounds} rounds: {apart(list(range(rounds)), list(range(rounds))):.3f}")
    fast_level = min(a["kernel_probe_us"].min(), b["kernel_probe_us"].min()) * 1.08

    def fast_median(ln: np.ndarray, probe: np.ndarray) -> np.ndarray:
        return np.array([np.median(ln[probe[:, i] <= fast_level, i]) if (probe[:, i] <= fast_level).any()
                         else np.nan for i in range(ln.shape[1])])

    reference = np.log(fast_level / 1.08)
    divided_a = ln_a - np.log(a["kernel_probe_us"]) + reference                     # as if at the fastest level
    divided_b = ln_b - np.log(b["kernel_probe_us"]) + reference
    for rows, label in ((spread, "3 timings spread over the run"), (list(range(rounds)), f"all {rounds} rounds")):
        apart_divided = np.mean(np.abs(np.median(divided_a[rows], 0) - np.median(divided_b[rows], 0)))
        print(f"median of {label}, each divided by the reference kernel's timing before it: {apart_divided:.3f}")
    fast = np.abs(fast_median(ln_a, a["kernel_probe_us"]) - fast_median(ln_b, b["kernel_probe_us"]))
    print(f"median of the timings with the reference kernel within 8 % of its fastest: {np.nanmean(fast):.3f} "
          f"({np.isfinite(fast).sum()} kernels with such timings in both)")


if __name__ == "__main__":
    if sys.argv[1] == "--agreement":
        agreement(dict(np.load(sys.argv[2])), dict(np.load(sys.argv[3])))
    elif sys.argv[1] == "--summary":
        summary(dict(np.load(sys.argv[2])))
    else:
        log, count, rounds, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        data = measure(log, count, rounds)
        np.savez(out, **data)
        summary(data)
