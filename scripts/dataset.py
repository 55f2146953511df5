"""Build the learned cost model's dataset from measurements.

``fusiongym dataset export --store S --out data.pt`` joins the MeasurementStore with the
profile log that ``fusiongym profile --plans N`` wrote beside it, computes the features of
every measured group of one machine's plans (``--measured-on`` picks it where the log holds
several) and saves a PyG dataset split by model (train / val / test: the test
models are never trained on). ``--test-workloads`` also tests on the graphs of the named
workloads while their model's other workloads train: unseen shapes of a seen architecture.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("export",))
    parser.add_argument("--store", default=None, help="measurement store (default: $FUSIONGYM_STORE or ~/.cache)")
    parser.add_argument("--log", default=None, help="profile log (default: <store>.plans.jsonl)")
    parser.add_argument("--out", required=True, help="dataset file to write (.pt)")
    parser.add_argument("--test-models", default="", help="comma-separated models held out for testing "
                                                          "(default: one drawn with --seed)")
    parser.add_argument("--val-models", default="", help="comma-separated models for validation "
                                                         "(default: one drawn with --seed)")
    parser.add_argument("--test-workloads", default="",
                        help="comma-separated workloads whose graphs are also held out for testing, each as a "
                             "model of its own, '<model> @ <workload>' (e.g. llama_long/test: unseen shapes of "
                             "an architecture whose other workloads train)")
    parser.add_argument("--measured-on", default=None, metavar="DEVICE",
                        help="take the plans this machine measured (its fingerprint, as the store keys name it, "
                             "e.g. 'cpu:AMD EPYC:2c:isa-5fa98f18'); needed when the log holds plans that more than "
                             "one machine or backend measured, since one dataset takes one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None,
                        help="device profile of the analytical prior both models take as input (default cpu: "
                             "this machine's calibrated one when there is one); recorded in the dataset and in "
                             "every model trained on it")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="the prior's device profile from a JSON file instead (as `profile --calibrate` writes "
                             "it; e.g. an --op-classes fit written with $FUSIONGYM_CPU_PROFILE=FILE), so the learned "
                             "models' prior need not be the profile the analytical backend searches on")


def run(args: argparse.Namespace) -> int:
    from fusiongym.reward.costmodel import load_measured_set
    from fusiongym.reward.costmodel.dataset import build_dataset
    from fusiongym.reward.devices import get_profile, load_profile

    if args.profile and args.device:
        raise ValueError("--device and --profile both name the prior's device profile: give one of them")
    profile = load_profile(args.profile) if args.profile else get_profile(args.device or "cpu")
    measured = load_measured_set(args.store, args.log, args.measured_on)
    dataset = build_dataset(measured, _names(args.test_models), _names(args.val_models), args.seed,
                            profile=profile, test_workloads=_names(args.test_workloads))
    path = dataset.save(args.out)
    sizes = {split: len(dataset.indices(split)) for split in ("train", "val", "test")}
    print(f"wrote {path}: {len(dataset.samples)} groups {sizes}, {len(dataset.plans)} plans, "
          f"models {dataset.source['models']}, measured on {measured.measured_on}, data hash {dataset.content_hash}")
    if dataset.source["vector_share"] is None:
        print(f"note: {measured.measured_on.device} timed these groups, not this host's CPU, so LightGBM's "
              f"vector-share columns (what LLVM vectorizes for this host's CPU) are missing values. Fix: export "
              f"a CPU's store on the machine that timed it")
    searched_on = dataset.source["search_profiles"]
    if len(searched_on) > 1:
        print(f"note: the log's plans were searched on {len(searched_on)} analytical profiles ({searched_on}), "
              f"e.g. some before `fusiongym profile --calibrate` and some after; a run on one profile samples "
              f"other annealing and trajectory plans")
    return 0


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]
