"""The real TorchInductor latency backend: every group compiled as one region and timed.

A group's latency is the time of the region TorchInductor compiles from the group's ops
(``torch_ops.build_region``): C++/OpenMP kernels on the CPU, Triton kernels on CUDA.
Inductor decides how to fuse inside the region; the plan decides where regions end, so a
group boundary is a boundary Inductor cannot fuse across (the tensor goes to memory).

Timing: on the CPU the shared protocol (``timing.measure``: warm-up, calibrated repeats,
median, re-measurement when noisy) with torch's threads pinned, under a real ``DeviceLoad``;
on CUDA, CUDA events around single calls with the L2 cache flushed before each, under a
real ``GpuLoad`` on a side stream. Inductor compiles a region in seconds on the CPU, so
compiled regions are cached per group signature within the process, and every
measurement goes into the MeasurementStore, keyed apart from TVM's by backend name,
device fingerprint and the torch/Triton versions.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from fusiongym.graphs import ComputeGraph

from . import timing
from .device_load import DeviceLoad
from .fingerprint import cpu_fingerprint, cuda_fingerprint
from .measured_backend import MeasuredBackend
from .signature import SIGNATURE_VERSION, group_signature
from .store import MeasurementStore
from .torch_ops import Region, build_region, compile_region, infer_operands, unsupported_reason

DEVICES = ("cpu", "cuda")
DEFAULT_L2_FLUSH_BYTES = 256 << 20   # over any GPU's L2 (H100: 50 MiB, H200: 60 MiB)


class TorchBackendError(RuntimeError):
    """The torch backend cannot measure here; the message names the problem and the fix."""


@dataclass
class CompiledRegion:
    """A region and its Inductor-compiled callable."""

    region: Region
    run: Callable[..., tuple[torch.Tensor, ...]]
    compile_s: float


# Per process: (device, threads, signature) -> compiled region. Inductor's compile costs
# seconds per region on the CPU; the same group met again is never compiled twice.
_COMPILED: dict[tuple[str, int | None, str], CompiledRegion] = {}


def library_versions() -> dict[str, str | None]:
    """torch and Triton versions: a change in either changes the kernels Inductor emits."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {"torch": torch.__version__, "triton": triton}


class TorchBackend(MeasuredBackend):
    """Real latency: each group compiled by TorchInductor for ``device`` and timed here.

    ``num_threads``: CPU threads the kernels are compiled for and run with (default: all
    available). ``store``: a MeasurementStore, a path, or None for the default store.
    ``protocol``: how to time on the CPU (and the warm-up/repeats/spread on CUDA).
    ``measure_load``: time under a real load at the graph's ``context["device_load"]``
    (CPU: ``DeviceLoad`` processes; CUDA: ``GpuLoad`` on a side stream).
    """

    name = "torch"
    schedules = ("default",)   # Inductor schedules each region itself

    def __init__(self, device: str = "cpu", num_threads: int | None = None,
                 store: MeasurementStore | str | os.PathLike | None = None,
                 protocol: timing.TimingProtocol | None = None, measure_load: bool = True,
                 l2_flush_bytes: int = DEFAULT_L2_FLUSH_BYTES) -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown torch device {device!r}; choose one of {DEVICES}")
        self.device_kind = device
        self.num_threads = (num_threads or timing.AVAILABLE_CORES) if device == "cpu" else None
        self.protocol = protocol or timing.TimingProtocol(num_threads=self.num_threads)
        super().__init__(store, measure_load)
        self.roofline_device = "cpu" if device == "cpu" else None
        self.l2_flush_bytes = l2_flush_bytes
        self._gpu_problem = None if device == "cpu" else _cuda_problem()
        self.device = cpu_fingerprint() if device == "cpu" else (
            "cuda:unavailable" if self._gpu_problem else cuda_fingerprint())

    @property
    def store_backend(self) -> str:
        """The backend column of this backend's store keys: compiler, device, CPU threads."""
        return f"torch-inductor-cpu-{self.num_threads}t" if self.device_kind == "cpu" else "torch-inductor-cuda"

    def version(self) -> str:
        """torch, Triton and the signature format: a change in any invalidates stored entries."""
        versions = library_versions()
        return f"torch-{versions['torch']}/triton-{versions['triton']}/signature-{SIGNATURE_VERSION}"

    def describe(self) -> dict:
        return {**super().describe(), "device_kind": self.device_kind, "num_threads": self.num_threads,
                "measure_load": self.measure_load, "store": str(self.store.path), **library_versions()}

    def group_constraint(self, graph: ComputeGraph, nodes: Sequence[int]) -> str | None:
        return unsupported_reason(graph, nodes)

    def merge_constraint(self, graph: ComputeGraph, group_a: Sequence[int], group_b: Sequence[int]) -> str | None:
        return None  # two mappable groups make a mappable union

    # ------------------------------------------------------------------ latency
    def measure_group(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str, signature: str,
                      load: float) -> tuple[timing.Timing, dict]:
        """Compile the group's region with Inductor (once per signature) and time it under ``load``."""
        compiled = self.compiled_region(graph, nodes, signature)
        result = self.time_region(compiled, load)
        return result, {"device_kind": self.device_kind, "num_threads": self.num_threads,
                        "compile_s": compiled.compile_s, **library_versions()}

    def compiled_region(self, graph: ComputeGraph, nodes: Sequence[int], signature: str | None = None) -> CompiledRegion:
        """The group's region compiled by Inductor (once per signature in this process)."""
        signature = signature or group_signature(graph, nodes)
        cache_key = (self.device_kind, self.num_threads, signature)
        if cache_key not in _COMPILED:
            region = build_region(graph, nodes, infer_operands(graph))
            start = time.perf_counter()
            with timing.torch_threads(self.num_threads):   # Inductor sizes its OpenMP loops now
                run = compile_region(region, region.random_inputs(self.device_kind))
            elapsed = time.perf_counter() - start
            self.stats.compiles += 1
            self.stats.compile_s += elapsed
            _COMPILED[cache_key] = CompiledRegion(region, run, elapsed)
        return _COMPILED[cache_key]

    def time_region(self, compiled: CompiledRegion, load: float) -> timing.Timing:
        """Time a compiled region on random inputs under a real load of ``load``."""
        args = compiled.region.random_inputs(self.device_kind)
        start = time.perf_counter()
        if self.device_kind == "cpu":
            with DeviceLoad(load):
                result = timing.measure(compiled.run, args, self.protocol)
        else:
            from .gpu_load import GpuLoad

            with GpuLoad(load):
                result = measure_cuda(compiled.run, args, self.protocol, self.l2_flush_bytes)
        self.stats.measurements += 1
        self.stats.measure_s += time.perf_counter() - start
        return result

    def require_device(self) -> None:
        if self._gpu_problem:
            raise TorchBackendError(
                f"TorchBackend(device='cuda') cannot measure here: {self._gpu_problem}. Fix: use "
                f"device='cpu' on this machine, or run on a machine with a CUDA GPU and a CUDA build of torch.")


def measure_cuda(run: Callable, args: Sequence[torch.Tensor], protocol: timing.TimingProtocol,
                 l2_flush_bytes: int = DEFAULT_L2_FLUSH_BYTES) -> timing.Timing:
    """CUDA-event time of single calls, each after the L2 cache is flushed (cold-cache latency,
    as a kernel meets it inside a model whose other kernels evicted its data).

    Samples per attempt: enough calls to span ``protocol.min_repeat_ms``, at least
    ``protocol.repeats``; median and spread as on the CPU.
    """
    flush = torch.empty(l2_flush_bytes, dtype=torch.uint8, device="cuda")
    for _ in range(protocol.warmup):
        run(*args)
    torch.cuda.synchronize()
    probe_start, probe_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    probe_start.record()
    run(*args)
    probe_end.record()
    torch.cuda.synchronize()
    estimate_us = max(probe_start.elapsed_time(probe_end) * 1e3, 1.0)
    count = min(1000, max(protocol.repeats, math.ceil(protocol.min_repeat_ms * 1e3 / estimate_us)))

    def attempt() -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
        for start, end in zip(starts, ends):
            flush.zero_()
            start.record()
            run(*args)
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) * 1e3 for start, end in zip(starts, ends)]

    return timing._best_attempt(attempt, protocol, number=1, threads=None)


def _cuda_problem() -> str | None:
    """Why no CUDA GPU can be used here, or None when one can."""
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return None
