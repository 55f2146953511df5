"""Measure fused groups of zoo models on the real TVM CPU backend (into the store).

With ``--calibrate`` the measurements fit the analytical CPU profile to this machine
(saved to ~/.cache/fusiongym/cpu_profile.json and used by ``get_backend("analytical")``
from then on) and report the Kendall τ of analytical vs measured group latencies, before
and after the fit, on a held-out share of the groups.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="resnet18,mobilenet_v2,bert,llama,mixtral_moe",
                        help="comma-separated zoo models")
    parser.add_argument("--variant", default="small", choices=("small", "full"))
    parser.add_argument("--groups", type=int, default=120, help="distinct (group, schedule) pairs to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default=None, help="measurement store (default ~/.cache/fusiongym/measurements.db)")
    parser.add_argument("--calibrate", action="store_true", help="fit and save the analytical CPU profile")
    parser.add_argument("--holdout", type=float, default=0.3, help="share of groups kept out of the fit")
    parser.add_argument("--report", default=None, help="write the calibration report as JSON here")


def run(args: argparse.Namespace) -> int:
    from fusiongym.graphs import zoo
    from fusiongym.reward import get_backend
    from fusiongym.reward.calibrate import collect_samples

    graphs = [zoo.load(name.strip(), args.variant) for name in args.models.split(",") if name.strip()]
    backend = get_backend("tvm", target="llvm", store=args.store)
    samples = collect_samples(graphs, backend, max_groups=args.groups, seed=args.seed)
    print(f"measured {len(samples)} groups on {backend.device} "
          f"(store hit rate {backend.store.stats.hit_rate:.0%})")
    if args.calibrate:
        report = calibrate(samples, args.holdout, args.seed)
        print(json.dumps(report, indent=2))
        if args.report:
            with open(args.report, "w") as handle:
                json.dump(report, handle, indent=2)
    return 0


def calibrate(samples: list, holdout: float, seed: int) -> dict:
    """Fit on one share of the samples, score rank correlation on the rest, save the profile."""
    from fusiongym.reward import get_backend
    from fusiongym.reward.calibrate import fit_cpu_profile, kendall_tau
    from fusiongym.reward.devices import get_profile, save_profile

    order = np.random.default_rng(seed).permutation(len(samples))
    cut = max(1, int(len(samples) * holdout))
    held_out, fitted_on = [samples[i] for i in order[:cut]], [samples[i] for i in order[cut:]]
    profile, report = fit_cpu_profile(fitted_on)
    path = save_profile(profile)
    measured = [s.measured_us for s in held_out]
    taus = {}
    for label, device in (("before", get_profile("cpu", use_calibrated=False)), ("after", profile)):
        analytical = get_backend("analytical", device=device)
        predicted = [analytical.group_latency(s.graph, list(s.nodes), s.schedule).us for s in held_out]
        taus[label] = kendall_tau(predicted, measured)
    return {"profile_path": str(path), "fit": report.to_dict(), "held_out_groups": len(held_out),
            "kendall_tau_held_out_before": taus["before"], "kendall_tau_held_out_after": taus["after"]}
