"""Experiment (README, "Cleaner training labels"): bring the training and val graphs' groups up to
K takes (step 1 asks for 3 on training graphs), without sampling plans again.

`fusiongym profile --takes K` first samples the suite's plans (the searches take ~20 min on the
train suite) and only then makes its take passes; the plans are already in the log here, so
this runs the take passes alone, each in a fresh process, over the graphs of the models named:

    python leaderboard/costmodel/cleaner-labels/more_takes.py runs/takes3/measurements.db 3 \
        resnet18,mobilenet_v2,llama,mixtral_moe,bert
"""
import sys
from pathlib import Path

from fusiongym.reward.costmodel.records import ProfileLog
from fusiongym.scripts.profile import _take_pass_in_new_process


def main(store: str, takes: str, models: str) -> None:
    """Take passes 2..``takes``; each times only the groups with fewer takes than its number."""
    log = ProfileLog.beside(Path(store))
    wanted = set(models.split(","))
    graph_hashes = {r["graph_hash"] for r in log.records() if r["kind"] == "graph" and r["model"] in wanted}
    print(f"{len(graph_hashes)} graphs of {sorted(wanted)}")
    for take in range(2, int(takes) + 1):
        measured, cached = _take_pass_in_new_process("tvm", Path(store), log.path, graph_hashes, take, 1000 + take)
        print(f"take {take}: {measured} groups timed, {cached} already had {take} takes", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
