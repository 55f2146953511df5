"""The timing protocol behind every real latency: warm-up, calibrated repeats, median, spread.

Why a protocol: one run of a kernel is noise. On the 2-core development machine a
millisecond kernel varies 1-10 % within one ``time_evaluator`` call and a 15 us kernel up to
18 %, so a reward must be the median of several repeats, each long enough to dwarf timer
resolution and launch jitter, with the spread (coefficient of variation) reported beside it
and a re-measurement when it is too high. Everything here is recorded in the store.

Threads: TVM's runtime pool is created on the first parallel kernel with
``TVM_NUM_THREADS`` (else ``OMP_NUM_THREADS``, else *half* the hardware threads: TVM assumes
hyper-threading, so a 2-core VM gets a 1-thread pool and TVM also pins the main thread to
core 0). The pool can never grow afterwards; ``runtime.config_threadpool(0, n)`` then selects
any n up to its size, without touching affinity. Hence this module sets ``TVM_NUM_THREADS``
to the available cores when it is imported (unless the user set it) and pins per measurement
with ``config_threadpool``: import it before any TVM kernel runs.

It also caps how long an idle pool worker spins (``TVM_THREAD_POOL_SPIN_COUNT``, unless the
user set it): after each parallel kernel a worker calls ``sched_yield`` up to TVM's default
300,000 times before it sleeps, and the process's exit joins it. When other processes hold
every core, each yield waits a scheduler slice (3.3 ms under six busy loops on 2 cores), so a
process that had just run a parallel kernel took over five minutes to exit. A thousand
yields still keep the worker awake between the back-to-back launches of one timing.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

AVAILABLE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
TVM_POOL_SPIN_COUNT = 1000   # sched_yield calls before an idle TVM pool worker sleeps
os.environ.setdefault("TVM_NUM_THREADS", str(AVAILABLE_CORES))
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(TVM_POOL_SPIN_COUNT))


@dataclass(frozen=True)
class TimingProtocol:
    """How to measure one kernel."""

    warmup: int = 2                 # calls before timing (lazy init, caches, page faults)
    min_repeat_ms: float = 10.0     # each repeat runs the kernel `number` times, at least this long
    repeats: int = 5                # repeats per attempt; the median of these is the result
    max_spread: float = 0.05        # re-measure when the coefficient of variation exceeds this
    max_remeasure: int = 2          # extra attempts at most; the lowest-spread attempt is kept
    num_threads: int | None = None  # runtime threads while timing; None: leave as configured

    def __post_init__(self) -> None:
        if self.warmup < 1:
            raise ValueError("warmup must be at least 1 (it also calibrates the repeat length)")
        if self.repeats < 5:
            raise ValueError(f"repeats must be at least 5 for a meaningful median, got {self.repeats}")
        if self.min_repeat_ms <= 0 or self.max_spread <= 0 or self.max_remeasure < 0:
            raise ValueError("min_repeat_ms and max_spread must be positive, max_remeasure >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {self.num_threads}")


@dataclass(frozen=True)
class Timing:
    """One measurement: the median over repeats and how much the repeats disagree."""

    median_us: float
    spread: float                   # coefficient of variation of samples_us
    repeats: int
    samples_us: tuple[float, ...]   # mean time per call in each repeat
    remeasured: int                 # attempts beyond the first (0: the first was steady enough)
    number: int                     # calls per repeat (TVM may add more to reach min_repeat_ms)
    num_threads: int | None         # runtime threads in force while timing (None: unknown)

    def to_dict(self) -> dict:
        return {"median_us": self.median_us, "spread": self.spread, "repeats": self.repeats,
                "samples_us": list(self.samples_us), "remeasured": self.remeasured,
                "number": self.number, "num_threads": self.num_threads}


def coefficient_of_variation(samples: Sequence[float]) -> float:
    """Sample standard deviation over mean; 0 for fewer than two samples or a zero mean."""
    if len(samples) < 2:
        return 0.0
    mean = statistics.fmean(samples)
    return statistics.stdev(samples) / mean if mean else 0.0


def measure(func: Any, args: Sequence[Any], protocol: TimingProtocol = TimingProtocol(), *,
            entry: str = "main", device: Any = None) -> Timing:
    """Time ``func(*args)`` under ``protocol``.

    ``func`` is either a TVM module (a runtime Module, an Executable from ``tvm.compile`` or a
    Relax VirtualMachine), timed by TVM's own ``time_evaluator`` on its function ``entry``
    and ``device`` (default: the device of the first tensor argument, else the CPU), or any
    Python callable, timed with a ``perf_counter_ns`` loop. A callable must return only when
    its work is done (synchronize inside it for asynchronous devices).
    """
    evaluator_owner = _time_evaluator_owner(func)
    if evaluator_owner is not None:
        kernel = evaluator_owner[entry]
        device = device if device is not None else _tvm_device(args)

        def synchronized(*call_args: Any) -> None:
            kernel(*call_args)
            device.sync()   # GPU launches return at once; calibrate on the finished kernel

        with tvm_threads(protocol.num_threads) as threads:
            number = _calibrate(synchronized, args, protocol)
            evaluator = evaluator_owner.time_evaluator(
                entry, device, number=number, repeat=protocol.repeats,
                min_repeat_ms=math.ceil(protocol.min_repeat_ms))

            def attempt() -> list[float]:
                return [seconds * 1e6 for seconds in evaluator(*args).results]

            return _best_attempt(attempt, protocol, number, threads)
    if not callable(func):
        raise TypeError(f"cannot time {type(func).__name__}: neither a TVM module nor callable")
    with torch_threads(protocol.num_threads) as threads:
        number = _calibrate(func, args, protocol)
        return _best_attempt(lambda: _perf_counter_repeats(func, args, number, protocol.repeats),
                             protocol, number, threads)


@contextmanager
def tvm_threads(num_threads: int | None) -> Iterator[int | None]:
    """Run TVM kernels with ``num_threads`` pool threads inside the block, then restore.

    Yields the thread count in force. Uses ``runtime.config_threadpool(0, n)``: mode 0 keeps
    the affinity as it is. Raises ValueError when the pool is smaller than asked (its size
    is fixed by ``TVM_NUM_THREADS`` when the first parallel kernel runs).
    """
    import tvm

    before = tvm.runtime.num_threads()
    if num_threads is None:
        yield before
        return
    pool = int(os.environ.get("TVM_NUM_THREADS", AVAILABLE_CORES))
    if num_threads > pool:
        raise ValueError(f"TVM's thread pool has {pool} threads (TVM_NUM_THREADS), "
                         f"cannot pin {num_threads}")
    configure = tvm.get_global_func("runtime.config_threadpool")
    configure(0, num_threads)
    try:
        yield tvm.runtime.num_threads()
    finally:
        configure(0, before)


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[int | None]:
    """Pin torch's intra-op threads for Python callables, when torch is loaded; then restore.

    Other runtimes behind a callable pin their own threads (this module cannot know them),
    so the yielded count is None unless torch is loaded.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield None
        return
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _best_attempt(attempt: Callable[[], list[float]], protocol: TimingProtocol, number: int,
                  threads: int | None) -> Timing:
    """Measure, re-measuring while the spread is too high; keep the steadiest attempt."""
    best: tuple[float, list[float]] | None = None
    for index in range(protocol.max_remeasure + 1):
        samples = attempt()
        spread = coefficient_of_variation(samples)
        if best is None or spread < best[0]:
            best = (spread, samples)
        if spread <= protocol.max_spread:
            break
    spread, samples = best
    return Timing(median_us=statistics.median(samples), spread=spread, repeats=len(samples),
                  samples_us=tuple(samples), remeasured=index, number=number, num_threads=threads)


def _calibrate(call: Callable, args: Sequence[Any], protocol: TimingProtocol) -> int:
    """Run the warm-up calls and return how many calls make one repeat last min_repeat_ms."""
    fastest_ns = math.inf
    for _ in range(protocol.warmup):
        start = time.perf_counter_ns()
        call(*args)
        fastest_ns = min(fastest_ns, time.perf_counter_ns() - start)
    return max(1, math.ceil(protocol.min_repeat_ms * 1e6 / max(fastest_ns, 1)))


def _perf_counter_repeats(func: Callable, args: Sequence[Any], number: int,
                          repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(number):
            func(*args)
        samples.append((time.perf_counter_ns() - start) / number / 1e3)
    return samples


def _time_evaluator_owner(func: Any) -> Any:
    """The object whose ``time_evaluator`` times ``func``: itself, or an Executable's module."""
    if hasattr(func, "time_evaluator"):
        return func
    module = getattr(func, "mod", None)
    return module if hasattr(module, "time_evaluator") else None


def _tvm_device(args: Sequence[Any]) -> Any:
    import tvm

    for arg in args:
        device = getattr(arg, "device", None)
        if device is not None:
            return device
    return tvm.cpu(0)
