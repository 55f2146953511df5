"""Experiment (README, "The median take, not the fastest"): how well two 5-take stores reproduce a
test plan's total latency when each kernel is summarised by one rule or another. The leaderboard
sums each kernel's fastest of 3 takes (its first measurement and 2 replays).

    python plan_sums.py runs/costmodel/measurements.db runs/again/measurements.db runs/costmodel/measurements.db.plans.jsonl
"""
import sys

import numpy as np

from kernels import spaced_takes, test_plans

TEST_WORKLOADS = ("resnet50/test", "vit/test")
RULES = {
    "fastest of 3 (the leaderboard's)": lambda takes: min(takes[:3]),
    "median of 3": lambda takes: sorted(takes[:3])[1],
    "fastest of 5": lambda takes: min(takes[:5]),
    "median of 5": lambda takes: sorted(takes[:5])[2],
    "the first take": lambda takes: takes[0],
}


def main(store_a: str, store_b: str, log: str) -> None:
    a, b, plans = spaced_takes(store_a), spaced_takes(store_b), test_plans(log, TEST_WORKLOADS)
    print(f"{len(plans)} test plans")
    for name, rule in RULES.items():
        ln_ratio = np.array([np.log(sum(rule(a[k]) for k in plan) / sum(rule(b[k]) for k in plan)) for plan in plans])
        apart = np.abs(np.expm1(ln_ratio))
        print(f"  {name:34s} plan total, std of ln A/B {ln_ratio.std():.3f}   mean |A/B - 1| {100 * apart.mean():4.1f} %"
              f"   share of plans > 15 % apart {np.mean(apart > 0.15):.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
