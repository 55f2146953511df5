"""Experiment (README, "Ten takes"): two stores of the same test groups, each with K spaced takes per
group: how far apart their median takes lie for K = 3, 5 and 10 (the first K takes of each), and how
much each take pass as a whole sits above or below the groups' medians, and how far apart the medians
lie once each pass's offset is taken out (per pass, or per pass and thread kind: `default` runs on one
thread, every other schedule on two).

    python takes_agreement.py runs/t10/a/measurements.db runs/t10/b/measurements.db
"""
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/timing-noise/median-take")
from kernels import spaced_takes  # noqa: E402

TAKES = 10


def without_pass_offsets(ln: np.ndarray, kinds: list[np.ndarray]) -> np.ndarray:
    """[kernels, takes] ln µs less each take pass's median offset from the groups' medians, per kind of kernel."""
    out = ln.copy()
    for kind in kinds:
        out[kind] -= np.median(ln[kind] - np.median(ln[kind], 1, keepdims=True), 0)
    return out


def main(store_a: str, store_b: str) -> None:
    a, b = spaced_takes(store_a), spaced_takes(store_b)
    kernels = sorted(k for k in a.keys() & b.keys() if len(a[k]) >= TAKES and len(b[k]) >= TAKES)
    ln_a = np.log([a[k][:TAKES] for k in kernels])                                   # [kernels, takes]
    ln_b = np.log([b[k][:TAKES] for k in kernels])
    print(f"{len(kernels)} kernels with {TAKES} takes in both stores")
    for count in (3, 5, TAKES):
        apart = np.median(ln_a[:, :count], 1) - np.median(ln_b[:, :count], 1)
        print(f"  median of the first {count:2d} takes: A - B in ln: std {apart.std():.3f}, mean {apart.mean():+.3f}, "
              f"mean |.| once centred {np.mean(np.abs(apart - np.median(apart))):.3f}")
    for name, ln in (("A", ln_a), ("B", ln_b)):
        offset = (ln - np.median(ln, 1, keepdims=True)).mean(0)
        print(f"  store {name}: each take pass's mean ln above the groups' medians:", np.round(offset, 3))
    serial = np.array([schedule == "default" for _, schedule in kernels])
    for label, kinds in (("each pass's offset", [np.ones(len(kernels), bool)]),
                         ("each pass's offset per thread kind", [serial, ~serial])):
        apart = np.median(without_pass_offsets(ln_a, kinds), 1) - np.median(without_pass_offsets(ln_b, kinds), 1)
        print(f"  median of {TAKES} takes less {label}: mean |A - B| once centred "
              f"{np.mean(np.abs(apart - np.median(apart))):.3f}")
    print(f"  std of ln of one group's {TAKES} takes, median over groups: "
          f"A {np.median(ln_a.std(1)):.3f}, B {np.median(ln_b.std(1)):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
