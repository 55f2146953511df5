"""Experiment (README, "One efficiency per op class"): fit the analytical CPU profile, op classes
included, to a profiled store's training groups instead of to the calibration's own small ones.

Every group of the store's logged plans whose model is not held out (not in --exclude) and
that the store holds a label for, of at most --max-nodes nodes, is one sample; the profile is
fitted to them (with the prior and ``op_classes``, as ``profile --calibrate --op-classes``)
and saved, with its report beside it:

    python store_fit.py runs/costmodel/measurements.db leaderboard/costmodel/op-classes/profile-store-op-classes.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "calibration-fit"))
from study import store_samples  # noqa: E402

from fusiongym.reward.calibrate import fit_cpu_profile  # noqa: E402
from fusiongym.reward.devices import save_profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("profile")
    parser.add_argument("--exclude", default="resnet50,vit,bert", help="held-out models (the dataset's test and val)")
    parser.add_argument("--max-nodes", type=int, default=64)
    args = parser.parse_args()
    samples = store_samples(args.store, args.max_nodes, frozenset(args.exclude.split(",")))
    profile, report = fit_cpu_profile(samples, op_classes=True)
    save_profile(profile, args.profile)
    Path(args.profile).with_suffix(".report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"{len(samples)} groups: Kendall tau {report.kendall_tau_before:.3f} -> {report.kendall_tau_after:.3f}, "
          f"rms log error {report.rms_log_error_before:.3f} -> {report.rms_log_error_after:.3f}")


if __name__ == "__main__":
    main()
