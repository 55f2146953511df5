"""Re-measure saved results and report any whose latency does not reproduce within the noise.

FILE holds records, one JSON object per line (or a JSON list), each with ``state`` (an
``env.state``), ``latency_us`` (the reported number), optionally ``spread`` and ``graph``
(the graph's JSON, for graphs that are not suite workloads). Each record is re-measured by
the backend its ``state["backend"]`` describes, on the same device: the recorded profile
for ``analytical`` (a calibrated one included), the recorded target and threads for
``tvm``; a record whose device this machine lacks (a CUDA record without a GPU, another
CPU) is an error, not a mismatch. Records without that description use their ``backend``
and ``device`` keys (default ``analytical`` on ``cpu``). ``--backend``/``--device``
re-measure every record by name on this machine instead. Exit status 1 when any record
does not reproduce, 2 when one cannot be re-measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fusiongym.reward import LatencyBackend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="JSON lines (or a JSON list) of saved results")
    parser.add_argument("--backend", default=None,
                        help="re-measure with this backend by name (default: the one each record names)")
    parser.add_argument("--device", default=None,
                        help="device for --backend, or for the recorded backend by name (cpu, cuda, a profile)")


def run(args: argparse.Namespace) -> int:
    from fusiongym.envs.replay import validate_results

    records = read_records(Path(args.file))
    by_measurer: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_measurer.setdefault(json.dumps(measurer_of(record, args), sort_keys=True), []).append(index)
    failures = 0
    for key, indices in by_measurer.items():
        backend = backend_of(json.loads(key), indices)
        for mismatch in validate_results([records[i] for i in indices], backend):
            failures += 1
            print(f"record {indices[mismatch.index]} ({mismatch.workload}, graph {mismatch.graph_hash}): "
                  f"{mismatch.reason}")
    print(f"{len(records) - failures} of {len(records)} results reproduce")
    return 1 if failures else 0


def measurer_of(record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """What re-measures ``record``: ``{"description": ...}`` (the recorded backend itself) or
    ``{"name": ..., "device": ...}`` (a backend by name, from the options or the record's keys)."""
    description = (record.get("state") or {}).get("backend")
    if description and not (args.backend or args.device):
        return {"description": description}
    name = args.backend or record.get("backend") or (description or {}).get("backend") or "analytical"
    return {"name": name, "device": args.device or record.get("device") or "cpu"}


def backend_of(measurer: dict[str, Any], indices: list[int]) -> LatencyBackend:
    """The backend ``measurer`` names; ValueError naming the records, the problem and the fix."""
    from fusiongym.envs.backends import make_backend, recorded_backend

    if "name" in measurer:
        return make_backend(measurer["name"], measurer["device"])
    try:
        return recorded_backend(measurer["description"])
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"records {indices} cannot be re-measured here as recorded: {error}. Validate them "
                         f"on a machine with that device, or pass --backend/--device to re-measure them on "
                         f"this one (a different device gives different numbers)") from None


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
