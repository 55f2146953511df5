"""The real TVM latency backend: every group compiled alone with its schedule and timed.

A group's latency is the time of its one fused kernel (``FuseTIR`` of the group's
``call_tir`` bindings, scheduled with the chosen CPU or GPU schedule), measured with the
shared timing protocol on this machine, under the device load the graph's context names.
Compiling costs ~0.05-0.2 s per kernel and timing as much again or more, so every
measurement goes into the MeasurementStore keyed by the group's structural signature: a
kernel seen before, in this graph, another graph or another process, is answered from the
store and never re-compiled.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

import tvm
from tvm import relax, tirx

from fusiongym.graphs import ComputeGraph

from . import timing  # first: it sizes TVM's thread pool before any kernel runs
from .device_load import DeviceLoad
from .fingerprint import cpu_fingerprint, cuda_fingerprint
from .measured_backend import MeasuredBackend
from .plan import Plan, require_legal
from .signature import SIGNATURE_VERSION
from .store import MeasurementStore
from .tvm_apply import (fuse_tir, group_bindings, group_module, kernel_of, main_only, random_arrays,
                        random_inputs, wrap_groups, analyze)
from .tvm_schedules import CPU_SCHEDULES, GPU_SCHEDULES, apply_cpu_schedule, apply_gpu_schedule

TARGETS = ("llvm", "cuda")
DEFAULT_CUDA_ARCH = "sm_90"


class TVMBackendError(RuntimeError):
    """The TVM backend cannot measure here; the message names the problem and the fix."""


@dataclass
class BuiltGroup:
    """One group compiled alone: its scheduled kernel, ready to run, and its arguments' types."""

    name: str
    func: tirx.PrimFunc
    executable: tvm.runtime.Executable
    target: tvm.target.Target
    schedule: str
    compile_s: float

    def arg_specs(self) -> list[tuple[tuple[int, ...], str]]:
        """(shape, dtype) of every kernel argument: inputs first, then outputs."""
        return [(tuple(int(d) for d in param.shape), str(param.dtype)) for param in self.func.params]

    def source(self) -> str:
        """Generated device source (CUDA C for a cuda target)."""
        imports = self.executable.mod.imports
        if not imports:
            raise TVMBackendError(f"kernel {self.name} for {self.target.kind.name} has no device source")
        return imports[0].inspect_source()


def host_cpu_target(num_cores: int) -> tvm.target.Target:
    """LLVM for this machine's CPU (its vector ISA), kernels run on ``num_cores`` threads."""
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                              "num-cores": num_cores})


class TVMBackend(MeasuredBackend):
    """Real latency: each group built with TVM for ``target`` and timed on this machine.

    ``num_cores``: CPU threads kernels are scheduled for and run with (default: all
    available). ``store``: a MeasurementStore, a path to one, or None for the default store
    (``$FUSIONGYM_STORE`` or ``~/.cache/fusiongym``). ``protocol``: how to time (default:
    ``TimingProtocol(num_threads=num_cores)``). ``measure_load``: time under a real
    ``DeviceLoad`` at the graph's ``context["device_load"]``; off, every group is timed on
    an idle device and stored as such. ``cuda_arch``: the ``sm_XY`` to build CUDA for
    (default: the local GPU's, else sm_90), so CUDA kernels can be built on any machine.
    """

    name = "tvm"

    def __init__(self, target: str = "llvm", num_cores: int | None = None,
                 store: MeasurementStore | str | os.PathLike | None = None,
                 protocol: timing.TimingProtocol | None = None, measure_load: bool = True,
                 cuda_arch: str | None = None) -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown TVM target {target!r}; choose one of {TARGETS}")
        self.target_kind = target
        self.num_cores = num_cores or timing.AVAILABLE_CORES
        self.protocol = protocol or timing.TimingProtocol(
            num_threads=self.num_cores if target == "llvm" else None)
        super().__init__(store, measure_load and target == "llvm")  # DeviceLoad loads the CPU only
        self.roofline_device = "cpu" if target == "llvm" else None
        self.schedules = CPU_SCHEDULES if target == "llvm" else GPU_SCHEDULES
        self.target = self._make_target(cuda_arch)
        self._gpu_problem = None if target == "llvm" else _cuda_problem()
        self.device = cpu_fingerprint() if target == "llvm" else (
            "cuda:unavailable" if self._gpu_problem else cuda_fingerprint())

    def _make_target(self, cuda_arch: str | None) -> tvm.target.Target:
        if self.target_kind == "llvm":
            return host_cpu_target(self.num_cores)
        arch = cuda_arch or (_local_cuda_arch() or DEFAULT_CUDA_ARCH)
        return tvm.target.Target({"kind": "cuda", "arch": arch})

    @property
    def store_backend(self) -> str:
        """The backend column of this backend's store keys: target, and CPU threads used."""
        return f"tvm-llvm-{self.num_cores}t" if self.target_kind == "llvm" else "tvm-cuda"

    def version(self) -> str:
        """TVM's version and the signature format: a change in either invalidates stored entries."""
        return f"tvm-{tvm.__version__}/signature-{SIGNATURE_VERSION}"

    def describe(self) -> dict:
        return {**super().describe(), "target": str(self.target), "num_cores": self.num_cores,
                "measure_load": self.measure_load, "store": str(self.store.path)}

    # ------------------------------------------------------------------ latency
    def measure_group(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str, signature: str,
                      load: float) -> tuple[timing.Timing, dict]:
        """Build the group's kernel alone with ``schedule`` and time it under ``load``."""
        built = self.build_group(graph, nodes, schedule)
        result = self.time_group(built, load)
        return result, {"kernel": built.name, "target": str(self.target), "num_cores": self.num_cores,
                        "compile_s": built.compile_s}

    def time_group(self, built: BuiltGroup, load: float) -> timing.Timing:
        """Time a built kernel on random inputs, under a real DeviceLoad of ``load``."""
        device = tvm.cpu() if self.target_kind == "llvm" else tvm.cuda()
        args = [tvm.runtime.tensor(array, device) for array in random_arrays(built.arg_specs())]
        start = time.perf_counter()
        with DeviceLoad(load):
            result = timing.measure(built.executable, args, self.protocol, entry=built.name, device=device)
        self.stats.measurements += 1
        self.stats.measure_s += time.perf_counter() - start
        return result

    def require_device(self) -> None:
        if self._gpu_problem:
            raise TVMBackendError(
                f"TVMBackend(target='cuda') cannot measure here: {self._gpu_problem}. Fix: use "
                f"target='llvm' on this machine, or run on a machine with a CUDA GPU. Building CUDA "
                f"kernels works without one (build_group, cuda_source).")

    # -------------------------------------------------------------------- build
    def build_group(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> BuiltGroup:
        """Compile one group alone: its fused PrimFunc, scheduled, built for the target."""
        start = time.perf_counter()
        name, func = kernel_of(group_module(graph, nodes))
        scheduled = self.schedule_kernels(tvm.IRModule({name: func}), {name: schedule})
        executable = tvm.compile(scheduled, target=self.target)
        elapsed = time.perf_counter() - start
        self.stats.compiles += 1
        self.stats.compile_s += elapsed
        return BuiltGroup(name, scheduled[name], executable, self.target, schedule, elapsed)

    def schedule_kernels(self, mod: tvm.IRModule, schedules: dict[str, str]) -> tvm.IRModule:
        """``mod`` with every PrimFunc scheduled (by name; "default" when unnamed) and exported
        under its own name."""
        functions = dict(mod.functions.items())
        for gvar, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            schedule = schedules.get(gvar.name_hint, "default")
            func = func.with_attr("global_symbol", gvar.name_hint)
            if self.target_kind == "llvm":
                functions[gvar] = apply_cpu_schedule(func, schedule, self.num_cores)
            else:
                functions[gvar] = apply_gpu_schedule(tvm.IRModule({gvar: func}), schedule, self.target)[gvar.name_hint]
        return tvm.IRModule(functions, attrs=mod.attrs)

    def cuda_source(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str = "default") -> str:
        """CUDA C source of one group's kernel (needs no GPU)."""
        if self.target_kind != "cuda":
            raise TVMBackendError(f"cuda_source needs TVMBackend(target='cuda'), this one targets {self.target_kind}")
        return self.build_group(graph, nodes, schedule).source()

    # --------------------------------------------------------------- end to end
    def build_plan(self, graph: ComputeGraph, plan: Plan) -> tvm.runtime.Executable:
        """The whole graph with ``plan`` applied and every kernel scheduled, built for the VM.

        Groups that are structurally equal but scheduled differently stay separate kernels.
        For cuda only the dataflow-lowering and finalizing passes run, never TVM's default
        GPU pipeline, which would re-run FuseOps over the plan.
        """
        require_legal(graph, plan, self)
        analysis = analyze(graph)
        wrapped, kernels = wrap_groups(analysis, group_bindings(graph, plan), plan.schedules)
        mod = main_only(self.schedule_kernels(fuse_tir(wrapped), {
            kernel: schedule for kernel, schedule in zip(kernels, plan.schedules)}))
        if self.target_kind == "llvm":
            return tvm.compile(mod, target=self.target)
        from tvm.relax.backend.cuda import pipeline as cuda_pipeline

        passes = cuda_pipeline.dataflow_lower_passes(self.target) + cuda_pipeline.finalize_passes(self.target)
        return tvm.compile(mod, target=self.target, relax_pipeline=tvm.transform.Sequential(passes))

    def end_to_end_latency_us(self, graph: ComputeGraph, plan: Plan) -> float:
        """Median time of the whole fused model in TVM's VM: kernels plus everything between.

        Compared with the sum of the groups' latencies it shows what per-group timing
        leaves out (VM dispatch, allocation, cache effects between kernels).
        """
        self.require_device()
        executable = self.build_plan(graph, plan)
        device = tvm.cpu() if self.target_kind == "llvm" else tvm.cuda()
        vm = relax.VirtualMachine(executable, device)
        args = [tvm.runtime.tensor(a, device) for a in random_inputs(analyze(graph).mod["main"])]
        with DeviceLoad(self.load_level(graph)):
            return timing.measure(vm, args, self.protocol, entry="main", device=device).median_us


def _cuda_problem() -> str | None:
    """Why no CUDA GPU can be used here, or None when one can."""
    try:
        if tvm.cuda(0).exist:
            return None
    except tvm.TVMError as error:
        return f"TVM's CUDA runtime failed ({str(error).splitlines()[0]})"
    return "no CUDA GPU is visible to TVM (tvm.cuda(0).exist is False)"


def _local_cuda_arch() -> str | None:
    """``sm_XY`` of the local GPU, or None without one."""
    if _cuda_problem():
        return None
    return "sm_" + tvm.cuda(0).compute_version.replace(".", "")
