"""Re-measure saved results and report any whose latency does not reproduce within the noise.

FILE holds records, one JSON object per line (or a JSON list), each with ``state`` (an
``env.state``), ``latency_us`` (the reported number), optionally ``spread``, ``graph``
(the graph's JSON, for graphs that are not suite workloads) and ``backend`` / ``device``
(what measured it). Exit status 1 when any record does not reproduce.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="JSON lines (or a JSON list) of saved results")
    parser.add_argument("--backend", default=None, help="backend to re-measure with (default: the record's)")
    parser.add_argument("--device", default=None, help="device for the backend (default: the record's)")


def run(args: argparse.Namespace) -> int:
    from fusiongym.envs.replay import validate_results
    from fusiongym.reward import get_backend

    records = read_records(Path(args.file))
    by_backend: dict[tuple[str, str], list[int]] = {}
    for index, record in enumerate(records):
        key = (args.backend or record.get("backend", "analytical"), args.device or record.get("device", "cpu"))
        by_backend.setdefault(key, []).append(index)
    failures = 0
    for (name, device), indices in by_backend.items():
        options = {"device": device} if name == "analytical" else {}
        backend = get_backend(name, **options)
        for mismatch in validate_results([records[i] for i in indices], backend):
            failures += 1
            print(f"record {indices[mismatch.index]} ({mismatch.workload}, graph {mismatch.graph_hash}): "
                  f"{mismatch.reason}")
    print(f"{len(records) - failures} of {len(records)} results reproduce")
    return 1 if failures else 0


def read_records(path: Path) -> list[dict]:
    """Records from a JSON list or JSON lines; a malformed file names the line at fault."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON record ({error.msg})") from None
    return records
