"""Real co-running load on the CPU: a share of the cores and of the memory bandwidth.

Why: the environment decides at run time, when the device is shared with other work; a
plan that wins on an idle machine (every core in one parallel loop) can lose when half the
cores are busy, and a memory-bound fused group suffers most when another job streams
memory. The analytical backend models load as shares of compute and bandwidth; this module
creates the same shares for real while a backend measures.

How: one worker process per available core. Every ``slice_ms`` each worker streams copies
over its own buffers (twice the last-level cache, so the traffic reaches DRAM) for
``bandwidth`` of the slice, spins on in-cache arithmetic until ``max(compute, bandwidth)``
of the slice has passed, and sleeps for the rest. A streaming core is a busy core, so the
compute share actually taken is ``max(compute, bandwidth)``. Workers are daemons, are
stopped and joined on exit from the context (also on exceptions), by an ``atexit`` guard if
the parent forgets, and stop by themselves when their parent process dies.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import time
import weakref
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Mapping

import numpy as np

from fusiongym.graphs.workloads import LoadShare

from .timing import AVAILABLE_CORES

ALLOWED_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
DEFAULT_SLICE_MS = 2.0
LOAD_STEP = 0.1          # loads are measured and stored on this grid, so episodes share entries
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
_CHUNK_BYTES = 1 << 20          # one streaming copy; short enough to honour a 1 ms slice
_SCRATCH_BYTES = 32 << 10       # in-cache arithmetic for the compute phase
_FALLBACK_LLC_BYTES = 32 << 20

# Fork starts a worker in milliseconds; spawn would re-import this package (torch: seconds).
# The child only runs numpy and time, so forking a multi-threaded parent is safe here.
_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"

_ACTIVE: "weakref.WeakSet[DeviceLoad]" = weakref.WeakSet()


class DeviceLoad:
    """Context manager that keeps ``share`` of the CPU busy while its block runs.

    ``with DeviceLoad({"compute": 0.5, "bandwidth": 0.8}): measure(...)``. A zero share
    starts nothing. Entering returns once every worker has allocated its buffers and runs.
    """

    def __init__(self, share: "float | Mapping[str, float] | LoadShare", *,
                 workers: int | None = None, slice_ms: float = DEFAULT_SLICE_MS,
                 buffer_bytes: int | None = None) -> None:
        self.share = LoadShare.parse(share)
        self.workers = AVAILABLE_CORES if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if not 0.5 <= slice_ms <= 50.0:
            raise ValueError(f"slice_ms must be in [0.5, 50], got {slice_ms}")
        self.slice_ms = slice_ms
        self.buffer_bytes = buffer_bytes if buffer_bytes is not None else 2 * last_level_cache_bytes()
        self._processes: list[multiprocessing.Process] = []
        self._stop: Event | None = None

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    @property
    def running(self) -> bool:
        return bool(self._processes)

    def start(self) -> "DeviceLoad":
        """Start the workers and wait until each one runs; a no-op if idle or already running."""
        if self.share.idle or self._processes:
            return self
        context = multiprocessing.get_context(_START_METHOD)
        self._stop = context.Event()
        readiness = []
        _ACTIVE.add(self)
        try:
            for index in range(self.workers):
                ready = context.Event()
                process = context.Process(
                    target=_load_worker, name=f"fusiongym-load-{index}", daemon=True,
                    args=(self.share.compute, self.share.bandwidth, self.slice_ms / 1e3,
                          self.buffer_bytes, ready, self._stop, os.getpid()))
                process.start()
                self._processes.append(process)
                readiness.append(ready)
            deadline = time.monotonic() + START_TIMEOUT_S
            for ready, process in zip(readiness, self._processes):
                if not ready.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"load worker {process.name} did not start "
                                       f"(exit code {process.exitcode})")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop and join every worker (terminate, then kill, a worker that does not stop)."""
        if self._stop is not None:
            self._stop.set()
        for process in self._processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.terminate()
                process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        self._processes = []
        self._stop = None
        _ACTIVE.discard(self)

    def __enter__(self) -> "DeviceLoad":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def load_level(device_load: "float | Mapping[str, float] | LoadShare | None",
               step: float = LOAD_STEP) -> float:
    """A graph context's load as one share on the ``step`` grid, as real backends measure and store it.

    The store keys load by one number, so the compute and bandwidth shares become one
    symmetric load, their maximum (a core streaming memory is a busy core, so the compute
    share a load takes is at least its bandwidth share), rounded up to the grid. A
    compute-only load is therefore measured as streaming memory too: an upper bound on
    its slowdown of memory-bound groups.
    """
    share = LoadShare.parse(device_load or 0.0)
    level = max(share.compute, share.bandwidth)
    return round(math.ceil(round(level / step, 6)) * step, 2)


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (sysfs), or 32 MiB when it cannot be read."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        multiplier = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * multiplier)
    return max(sizes, default=_FALLBACK_LLC_BYTES)


def _load_worker(compute: float, bandwidth: float, slice_s: float, buffer_bytes: int,
                 ready: Event, stop: Event, parent_pid: int) -> None:
    """Duty-cycled streaming copies and in-cache arithmetic until told to stop."""
    if ALLOWED_CPUS:
        os.sched_setaffinity(0, ALLOWED_CPUS)   # the parent's main thread may have been pinned
    chunk = _CHUNK_BYTES // 8
    length = max(chunk, buffer_bytes // 8 // chunk * chunk) if bandwidth else chunk
    source = np.ones(length)
    target = np.zeros(length)     # written once, so every page is resident before timing starts
    scratch = np.ones(_SCRATCH_BYTES // 8)
    busy = max(compute, bandwidth)
    position = 0
    ready.set()
    while not stop.is_set() and os.getppid() == parent_pid:
        start = time.perf_counter()
        stream_end = start + bandwidth * slice_s
        while time.perf_counter() < stream_end:
            np.copyto(target[position:position + chunk], source[position:position + chunk])
            position = (position + chunk) % length
        busy_end = start + busy * slice_s
        while time.perf_counter() < busy_end:
            np.multiply(scratch, 1.0000001, out=scratch)
        rest = start + slice_s - time.perf_counter()
        if rest > 0:
            time.sleep(rest)


@atexit.register
def _stop_all_loads() -> None:
    """Stop loads still running when the interpreter exits (a missing ``stop`` or ``with``)."""
    for load in list(_ACTIVE):
        load.stop()
