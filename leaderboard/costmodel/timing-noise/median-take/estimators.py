"""Experiment (README, "The median take, not the fastest"): which summary of a kernel's spaced
takes does a second, independent store reproduce? Both stores hold the same kernels with 5
takes each (``meta["spaced_takes_us"]``); prints the std of ln and the MAPE between the two
stores' values of a kernel, for each summary, and how lopsided the takes are.

    python estimators.py runs/costmodel/measurements.db runs/again/measurements.db
"""
import sys

import numpy as np

from kernels import Kernel, spaced_takes

SUMMARIES = {
    "fastest of 5 takes": lambda ln: ln.min(1),
    "second fastest of 5": lambda ln: np.sort(ln, 1)[:, 1],
    "mean of the 5 ln": lambda ln: ln.mean(1),
    "median of 5": lambda ln: np.median(ln, 1),
    "fastest of the first 3": lambda ln: ln[:, :3].min(1),
    "median of the first 3": lambda ln: np.median(ln[:, :3], 1),
    "the first take alone": lambda ln: ln[:, 0],
}


def five_takes_ln(store: str) -> dict[Kernel, np.ndarray]:
    """ln µs of the first 5 spaced takes of every group that has 5."""
    return {kernel: np.log(takes[:5]) for kernel, takes in spaced_takes(store).items() if len(takes) >= 5}


def main(store_a: str, store_b: str) -> None:
    a, b = five_takes_ln(store_a), five_takes_ln(store_b)
    kernels = sorted(set(a) & set(b))
    ln_a, ln_b = np.array([a[k] for k in kernels]), np.array([b[k] for k in kernels])   # [kernels, 5]
    print(f"{len(kernels)} kernels with 5 takes in both stores")
    for name, summary in SUMMARIES.items():
        diff = summary(ln_a) - summary(ln_b)
        print(f"  {name:24s} std of ln A-B {np.std(diff):.3f}   MAPE {100 * np.mean(np.abs(np.expm1(diff))):4.1f} %")
    for label, ln in (("A", ln_a), ("B", ln_b)):
        below, above = np.median(ln, 1) - ln.min(1), ln.max(1) - np.median(ln, 1)
        print(f"  store {label}: median - fastest, quantiles 50/90/99 %: {np.round(np.quantile(below, [.5, .9, .99]), 3)};"
              f" slowest - median: {np.round(np.quantile(above, [.5, .9, .99]), 3)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
