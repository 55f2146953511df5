"""Experiment (README, "The median take, not the fastest"): do kernels drift together?

N test kernels, built once, timed round-robin for R rounds in one process (a round is about
a second for 8). Prints how each kernel's deviation from its mean correlates with the
others' in the same round and with its own in later rounds, and how much dividing by the
round's median of the others lowers its std; saves the timings to OUT (.npz).

    python interleave.py runs/again/measurements.db.plans.jsonl 8 40 interleave.npz
"""
import sys
import time

import numpy as np
import tvm

from fusiongym.reward import timing
from fusiongym.reward.tvm_apply import random_arrays
from kernels import sample_test_kernels


def measure(log: str, count: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """([rounds, count] µs, [rounds, count] unix s at each timing's start)."""
    backend, kernels = sample_test_kernels(log, count, seed=1)
    device = tvm.cpu()
    built = [backend.build_group(*kernel) for kernel in kernels]
    args = [[tvm.runtime.tensor(a, device) for a in random_arrays(b.arg_specs())] for b in built]
    latency_us, started = np.zeros((rounds, count)), np.zeros((rounds, count))
    for r in range(rounds):
        for i, (b, a) in enumerate(zip(built, args)):
            started[r, i] = time.time()
            latency_us[r, i] = timing.measure(b.executable, a, backend.protocol, entry=b.name, device=device).median_us
    return latency_us, started


def report(latency_us: np.ndarray, started: np.ndarray) -> None:
    deviation = np.log(latency_us) - np.log(latency_us).mean(0)                  # [rounds, count]
    count = deviation.shape[1]
    print(f"round {np.diff(started[:, 0]).mean():.2f} s; median µs per kernel {np.round(np.median(latency_us, 0), 1)}")
    print("std of ln per kernel:", np.round(deviation.std(0), 3))
    same_round = np.corrcoef(deviation.T)
    print(f"mean correlation between two kernels in one round: {(same_round.sum() - count) / (count ** 2 - count):.2f}")
    for lag in (1, 2, 5):
        own = [np.corrcoef(deviation[:-lag, i], deviation[lag:, i])[0, 1] for i in range(count)]
        print(f"a kernel's correlation with itself {lag} round(s) later:", np.round(own, 2))
    others = np.array([[np.median(np.delete(row, i)) for i in range(count)] for row in deviation])
    divided = (deviation - others).std(0)
    print("std of ln divided by the round's median of the others:", np.round(divided, 3),
          f"(lower by {100 * np.mean(1 - divided / deviation.std(0)):.0f} % on average)")


if __name__ == "__main__":
    log, count, rounds, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    latency_us, started = measure(log, count, rounds)
    np.savez(out, latency_us=latency_us, started=started)
    report(latency_us, started)
