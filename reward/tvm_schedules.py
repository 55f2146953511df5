"""Kernel schedules for one fused group: the CPU menu (TensorIR primitives) and the GPU menu (dlight).

Why this exists: TVM 0.27 lowers an unscheduled TensorIR kernel for llvm into one scalar,
single-threaded loop nest per block, so which loops run in parallel, which loop is
vectorized and how the iteration space is tiled are real decisions with large latency
effects (a 256x256x256 matmul: ~27 ms unscheduled, ~1-2 ms vectorized, on one thread). The
schedule names are shared with the analytical backend (``devices.CPU_SCHEDULES``), so an
agent's choice means the same thing whichever backend prices it.

CPU menu; every schedule but "default" first inlines elementwise tails, then per block:
- "default": TVM's unscheduled kernel, unchanged.
- "parallel": the outer spatial loops fused into one parallel loop.
- "parallel_vectorize": as "parallel", plus the innermost spatial loop split into a SIMD part
  (``VECTOR_BYTES``) placed innermost, below the reduction loops.
- "tiled_N": the two innermost spatial loops of a reduction (the innermost one of an
  elementwise block) tiled N x N; tile rows run above the reduction loops, tile columns
  (vectorized) below them, and the loops over tiles run in parallel.
Each recipe is deterministic. A step that does not fit a block (symbolic extent, opaque
iterator, loop nest shared with other blocks, a loop TVM cannot prove parallel) is skipped for
that block and recorded; it is never forced, so every schedule computes exactly what
"default" computes.

GPU menu: dlight, the schedules TVM itself ships for CUDA; the thread-count variants set the
threads per block through the parameters the rules expose or by replaying a rule's schedule
with another thread count (see ``schedule_gpu``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir import IRModule
from tvm.s_tir import dlight
from tvm.s_tir.schedule import LoopRV, SBlockRV, Schedule
from tvm.target import Target

from .devices import CPU_SCHEDULES, GPU_SCHEDULES

__all__ = ["CPU_SCHEDULES", "GPU_SCHEDULES", "GpuScheduleError", "GpuScheduleResult", "ScheduleResult",
           "VECTOR_BYTES", "apply_cpu_schedule", "apply_gpu_schedule", "inline_elementwise_blocks",
           "move_reduction_inside_tiles", "parallelize_outer_loops", "retarget_thread_extent",
           "schedule_cpu", "schedule_gpu", "split_vector_lanes", "tile_spatial_loops"]

# Bytes per vectorized loop: one AVX-512 register, two AVX2 registers. LLVM legalizes a wider
# vector into several native ones, so the same factor serves every x86 target.
VECTOR_BYTES = 64

# What a refused schedule primitive raises: ScheduleError and TVM's other C++ errors are all
# RuntimeErrors. Python mistakes (TypeError, AttributeError) are not caught.
_TVM_ERRORS = RuntimeError

_GET_SBLOCK_REALIZE = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")
_ITER_KINDS = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}


@dataclass(frozen=True)
class ScheduleResult:
    """A scheduled kernel and what the recipe did to it, step by step, for the measurement store."""

    func: tirx.PrimFunc
    schedule: str
    applied: tuple[str, ...] = ()   # e.g. "parallel:matmul(4096)", "vectorize:matmul(16)"
    skipped: tuple[str, ...] = ()   # e.g. "vectorize:softmax (symbolic extent)"


@dataclass(frozen=True)
class _CpuRecipe:
    """What a CPU schedule name asks for, block by block."""

    parallel: bool
    vectorize: bool
    tile: int | None = None   # tile edge of the innermost spatial loops; None: no tiling


_CPU_RECIPES = {
    "parallel": _CpuRecipe(parallel=True, vectorize=False),
    "parallel_vectorize": _CpuRecipe(parallel=True, vectorize=True),
    "tiled_16": _CpuRecipe(parallel=True, vectorize=True, tile=16),
    "tiled_32": _CpuRecipe(parallel=True, vectorize=True, tile=32),
    "tiled_64": _CpuRecipe(parallel=True, vectorize=True, tile=64),
}


class _NotApplicable(Exception):
    """A recipe step does not fit this block; the message says why (recorded, not raised)."""


@dataclass
class _Log:
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def apply_cpu_schedule(func: tirx.PrimFunc, schedule: str, num_cores: int) -> tirx.PrimFunc:
    """``func`` scheduled with the CPU schedule ``schedule`` for ``num_cores`` cores.

    ``num_cores`` only decides whether a parallel loop is worth it (not on one core): how many
    threads share a parallel loop is the TVM runtime's pool size when the kernel runs, which
    the timing protocol pins (``fusiongym.reward.timing.tvm_threads``).
    """
    return schedule_cpu(func, schedule, num_cores).func


def schedule_cpu(func: tirx.PrimFunc, schedule: str, num_cores: int) -> ScheduleResult:
    """Apply a CPU schedule and report, step by step, what was applied and what was skipped.

    "default" returns ``func`` unchanged (TVM's own unscheduled kernel). Every other schedule
    first inlines elementwise blocks into their elementwise consumers, then schedules each
    remaining block on its own (one trial copy per block, so a step that fails leaves that
    block as it was and the others scheduled).
    """
    if schedule not in CPU_SCHEDULES:
        raise ValueError(f"unknown CPU schedule {schedule!r}; choose one of {CPU_SCHEDULES}")
    if num_cores < 1:
        raise ValueError(f"num_cores must be at least 1, got {num_cores}")
    if schedule == "default":
        return ScheduleResult(func, schedule)
    recipe = _CPU_RECIPES[schedule]
    sch = Schedule(func, error_render_level="fast")
    log = _Log()
    log.applied.extend(f"inline:{name}" for name in inline_elementwise_blocks(sch))
    blocks = sch.get_child_blocks(_root_block(sch))
    if not blocks:
        log.skipped.append(f"{schedule} (no blocks: an opaque kernel such as sort or scan)")
    for block in blocks:
        name = sch.get(block).name_hint
        trial = sch.copy()
        trial_log = _Log()
        try:
            _schedule_block(trial, block, recipe, num_cores, trial_log)
        except _NotApplicable as reason:
            log.skipped.append(f"{schedule}:{name} ({reason})")
            continue
        except _TVM_ERRORS as error:
            log.skipped.append(f"{schedule}:{name} (TVM refused: {_first_line(error)})")
            continue
        sch = trial
        log.applied.extend(trial_log.applied)
        log.skipped.extend(trial_log.skipped)
        _decompose_reduction_if_possible(sch, block, log)
    return ScheduleResult(sch.mod["main"], schedule, tuple(log.applied), tuple(log.skipped))


def inline_elementwise_blocks(sch: Schedule) -> list[str]:
    """Inline every spatial block whose consumers are all spatial; return the inlined names.

    Why: FuseTIR keeps one block per fused operator, so an unscheduled conv+add+relu writes
    and re-reads two full intermediates; inlining makes the elementwise tail one loop nest.
    Producers of reductions (padding, transposes feeding a matmul) stay materialized so the
    reduction's inner loop stays a plain load, and output blocks cannot be inlined at all.
    """
    inlined = []
    for block in sch.get_child_blocks(_root_block(sch)):
        consumers = sch.get_consumers(block)
        if not consumers or not _is_spatial(sch, block):
            continue
        if not all(_is_spatial(sch, consumer) for consumer in consumers):
            continue
        name = sch.get(block).name_hint
        try:
            sch.compute_inline(block)
        except _TVM_ERRORS:
            continue
        inlined.append(name)
    return inlined


def _schedule_block(sch: Schedule, block: SBlockRV, recipe: _CpuRecipe, num_cores: int,
                    log: _Log) -> None:
    """Tile, reorder, parallelize and vectorize one block's loop nest as ``recipe`` asks."""
    name = sch.get(block).name_hint
    loops = sch.get_loops(block)
    if not loops:
        raise _NotApplicable("no loops")
    if len(sch.get_child_blocks(loops[0])) != 1:
        raise _NotApplicable("shares its loop nest with other blocks")
    kinds = _loop_kinds(sch, block, loops)
    if "O" in kinds:
        raise _NotApplicable("opaque or mixed iterators")
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
    reduction = [loop for loop, kind in zip(loops, kinds) if kind == "R"]
    if not spatial:
        raise _NotApplicable("no spatial loop to parallelize")

    rows: list[LoopRV] = []      # tile loops kept above the reduction loops
    columns: list[LoopRV] = []   # loops below the reduction loops, innermost last
    if recipe.tile is not None:
        spatial, tile = tile_spatial_loops(sch, spatial, recipe.tile, 2 if reduction else 1)
        rows, columns = tile[:-1], tile[-1:]
        if tile:
            log.applied.append(f"tile:{name}({'x'.join(str(_extent(sch, loop)) for loop in tile)})")
        else:
            log.skipped.append(f"tile:{name} (symbolic extents)")
    vector_loop = None
    if recipe.vectorize:
        lanes = VECTOR_BYTES // _element_bytes(sch, block)
        candidates = columns if columns else spatial
        outer_part, vector_loop, reason = split_vector_lanes(sch, candidates[-1], lanes)
        if vector_loop is None:
            log.skipped.append(f"vectorize:{name} ({reason})")
        else:
            candidates[-1:] = [outer_part] if outer_part is not None else []
            columns.append(vector_loop)
    move_reduction_inside_tiles(sch, spatial + rows, reduction, columns)
    if recipe.parallel:
        # A tile that covers whole small dimensions leaves no outer loop: its rows are outermost.
        parallel_loop, reason = parallelize_outer_loops(sch, spatial or rows, num_cores)
        if parallel_loop is None:
            log.skipped.append(f"parallel:{name} ({reason})")
        else:
            log.applied.append(f"parallel:{name}({_extent(sch, parallel_loop)})")
    if vector_loop is not None:
        sch.vectorize(vector_loop)
        log.applied.append(f"vectorize:{name}({_extent(sch, vector_loop)})")


def tile_spatial_loops(sch: Schedule, spatial: list[LoopRV], size: int,
                       count: int) -> tuple[list[LoopRV], list[LoopRV]]:
    """Split the innermost ``count`` spatial loops by ``size``: (outer loops, tile loops).

    Why: a tile of the output (size x size for a reduction, size wide for an elementwise
    block) bounds the working set: the caller runs the tile's rows above the reduction loops
    and its columns below them, so each row accumulates in registers while the reduction
    operand's panel is reused from cache by every row of the tile. A loop whose extent is at
    most ``size`` belongs wholly to the tile; a symbolic extent stays outer and unsplit, so
    no tile loop depends on a run-time size. A size that does not divide the extent leaves a
    predicate on the last tile (TVM keeps it correct; its vector code may fall back to scalar).
    """
    outer = list(spatial[:-count])
    tile = []
    for loop in spatial[-count:]:
        extent = _extent(sch, loop)
        if not isinstance(extent, int):
            outer.append(loop)
            continue
        if extent <= size:
            tile.append(loop)
            continue
        loop_outer, loop_inner = sch.split(loop, factors=[None, size])
        outer.append(loop_outer)
        tile.append(loop_inner)
    return outer, tile


def split_vector_lanes(sch: Schedule, loop: LoopRV,
                       lanes: int) -> tuple[LoopRV | None, LoopRV | None, str]:
    """Split ``loop`` into (outer, vector) with a vector part of at most ``lanes`` iterations.

    The vector factor divides the extent exactly (largest power of two up to ``lanes``), so
    the vector loop carries no predicate. Returns (None, None, reason) when the loop cannot be
    vectorized: a symbolic extent (known only at run time), a unit loop, or an odd extent.
    """
    extent = _extent(sch, loop)
    if not isinstance(extent, int):
        return None, None, "symbolic extent"
    if extent == 1:
        return None, None, "unit extent"
    if extent <= lanes:
        return None, loop, ""
    factor = lanes
    while factor > 1 and extent % factor:
        factor //= 2
    if factor == 1:
        return None, None, f"extent {extent} has no power-of-two factor"
    outer, vector = sch.split(loop, factors=[None, factor])
    return outer, vector, ""


def move_reduction_inside_tiles(sch: Schedule, outer: list[LoopRV], reduction: list[LoopRV],
                                inner: list[LoopRV]) -> None:
    """Order the nest as ``outer`` loops, reduction loops, ``inner`` (column and vector) loops.

    Why: the vector loop must be innermost to become SIMD code and the parallel loop
    outermost. With the reduction between them, each output row segment (at most one tile
    wide) accumulates in registers over the whole reduction, and in a tiled nest the
    reduction operand's tile panel is reused from cache by every row of the tile.
    """
    order = [*outer, *reduction, *inner]
    if len(order) > 1:
        sch.reorder(*order)


def parallelize_outer_loops(sch: Schedule, outer: list[LoopRV],
                            num_cores: int) -> tuple[LoopRV | None, str]:
    """Fuse the outer spatial loops into one and run it in parallel across the cores.

    Why fuse: TVM splits one parallel loop statically into one chunk per thread, so a single
    long loop balances better than a short outermost one (batch 1, a few channels).
    Returns (None, reason) when parallelism cannot help: one core, or nothing to split.
    """
    if num_cores == 1:
        return None, "one core"
    if not outer:
        return None, "no outer spatial loop"
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if _extent(sch, fused) == 1:
        return None, "outer extent 1"
    sch.parallel(fused)
    return fused, ""


def _decompose_reduction_if_possible(sch: Schedule, block: SBlockRV, log: _Log) -> None:
    """Hoist a reduction's initialization out of its reduction loops.

    Why: otherwise the init is a branch on "first reduction iteration" inside the innermost
    loop. Must come after vectorize (TVM refuses to vectorize the update block once the init
    is split off; the init loop inherits the vectorization). Skipped silently when the block
    has no reduction loop.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    kinds = _loop_kinds(sch, block, loops)
    if "R" not in kinds:
        return
    name = sch.get(block).name_hint
    try:
        sch.decompose_reduction(block, loops[kinds.index("R")])
    except _TVM_ERRORS as error:
        log.skipped.append(f"decompose_reduction:{name} (TVM refused: {_first_line(error)})")
        return
    log.applied.append(f"decompose_reduction:{name}")


def _loop_kinds(sch: Schedule, block: SBlockRV, loops: list[LoopRV]) -> list[str]:
    """"S" (spatial), "R" (reduction) or "O" (other) for each loop above ``block``.

    A loop is spatial when every block iterator bound to it is data parallel, a reduction
    loop when every one is a reduction iterator. A loop no iterator uses is spatial only
    with extent 1 (otherwise running it in parallel would race on the same element).
    """
    stmt = sch.get(block)
    values = _GET_SBLOCK_REALIZE(sch, block).iter_values
    kinds = []
    for loop in loops:
        var = sch.get(loop).loop_var
        used = {_ITER_KINDS.get(iv.iter_type, "O") for iv, value in zip(stmt.iter_vars, values)
                if any(v.same_as(var) for v in tirx.analysis.undefined_vars(value))}
        if not used:
            kinds.append("S" if _extent(sch, loop) == 1 else "O")
        else:
            kinds.append(used.pop() if len(used) == 1 else "O")
    return kinds


def _is_spatial(sch: Schedule, block: SBlockRV) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _element_bytes(sch: Schedule, block: SBlockRV) -> int:
    writes = sch.get(block).writes
    dtype = writes[0].source.dtype if writes else "float32"
    return max(1, tvm.DataType(dtype).bits // 8)


def _extent(sch: Schedule, loop: LoopRV) -> int | tirx.PrimExpr:
    extent = sch.get(loop).extent
    return extent.value if isinstance(extent, tirx.IntImm) else extent


def _root_block(sch: Schedule) -> SBlockRV:
    return sch.get_sblock(sch.mod["main"].body.block.name_hint)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


# ---------------------------------------------------------------------------------------------
# GPU


class GpuScheduleError(ValueError):
    """No dlight rule can schedule a kernel, so it cannot be built for the GPU at all."""


@dataclass(frozen=True)
class GpuScheduleResult:
    """A module whose PrimFuncs carry GPU schedules, and which rule scheduled each one."""

    mod: IRModule
    schedule: str
    applied: tuple[str, ...] = ()   # e.g. "main:GeneralReduction(threads=64)"
    skipped: tuple[str, ...] = ()   # e.g. "main:Reduction(threads=64) (the rule binds threads its own way)"


class _ThreadedMatmul(dlight.gpu.Matmul):
    """dlight's Matmul rule with ``threads`` threads per block instead of its CUDA default 128.

    Why a subclass: the thread block of this rule is ``block_size_x * block_size_y`` from
    ``get_configs``, its one tuning knob; everything else (tiling, shared memory, vthreads)
    stays dlight's CUDA configuration.
    """

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.threads = threads

    def get_configs(self, target: Target) -> dlight.gpu.Matmul.Config:
        config = super().get_configs(target)
        config.block_size_x, config.block_size_y = _thread_block_shape(self.threads)
        return config


def apply_gpu_schedule(mod: IRModule, schedule: str, target: Target) -> IRModule:
    """``mod`` with every unscheduled PrimFunc scheduled by dlight as ``schedule`` asks."""
    return schedule_gpu(mod, schedule, target).mod


def schedule_gpu(mod: IRModule, schedule: str, target: Target) -> GpuScheduleResult:
    """Schedule every unscheduled PrimFunc of ``mod`` for a GPU ``target`` with dlight.

    "default" is exactly ``ApplyDefaultSchedule(Matmul, GEMV, Reduction, GeneralReduction,
    Fallback)``: the first rule that accepts a kernel schedules it. "threads_N" asks for N
    threads per block through what each rule exposes in TVM 0.27:
    - Matmul: its config's thread block (``block_size_x * block_size_y = N``);
    - GEMV: the target's ``max_num_threads`` (an upper bound: GEMV picks up to N);
    - Reduction, GeneralReduction, Fallback: their thread count is fixed by the target kind
      (256, 1024) or the loop extent, not a parameter, so their schedule is replayed with
      the thread count set to N (``retarget_thread_extent``, exact and checked); a kernel
      whose threads cannot be retargeted keeps the rule's count and ``skipped`` says so.
    A rule that raises is passed over (recorded in ``skipped``). Raises GpuScheduleError when
    no rule accepts a kernel (it could not be built).
    """
    if schedule not in GPU_SCHEDULES:
        raise ValueError(f"unknown GPU schedule {schedule!r}; choose one of {GPU_SCHEDULES}")
    threads = None if schedule == "default" else int(schedule.removeprefix("threads_"))
    rule_target = target if threads is None else _with_thread_limit(target, threads)
    rules = _gpu_rules(threads)
    result = IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    applied, skipped = [], []
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        refusals: list[str] = []
        with rule_target:
            sch, rule = _first_accepting_rule(rules, func, rule_target, refusals)
        skipped.extend(f"{gvar.name_hint}:{refusal}" for refusal in refusals)
        if sch is None:
            raise GpuScheduleError(f"no dlight rule schedules {gvar.name_hint} for {target.kind.name}")
        note = f"{gvar.name_hint}:{type(rule).__name__.lstrip('_').replace('Threaded', '')}"
        if threads is None:
            applied.append(note)
        elif isinstance(rule, _ThreadedMatmul):
            applied.append(f"{note}(threads={threads})")
        elif isinstance(rule, dlight.gpu.GEMV):
            applied.append(f"{note}(threads<={threads})")
        else:
            retargeted = retarget_thread_extent(sch, func, threads)
            if retargeted is None:
                applied.append(note)
                skipped.append(f"{note}(threads={threads}) (the rule binds threads its own way)")
            else:
                sch = retargeted
                applied.append(f"{note}(threads={threads})")
        result[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return GpuScheduleResult(result, schedule, tuple(applied), tuple(skipped))


def retarget_thread_extent(sch: Schedule, func: tirx.PrimFunc, threads: int) -> Schedule | None:
    """Replay ``sch``'s trace on ``func`` with its threadIdx.x loops ``threads`` long.

    Applies when the scheduled kernel binds only threadIdx.x, with one constant extent L:
    every split by L in the trace is replayed as a split by ``threads``. That is safe (a
    split by any factor computes the same result, with a predicate where it does not divide)
    and is checked: the replayed kernel must bind threadIdx.x to ``threads`` and nothing
    else. Returns None when the kernel binds threads another way (threadIdx.y, mixed
    extents, a symbolic extent) or the replay is refused.
    """
    extents = _thread_extents(sch.mod["main"])
    if set(extents) != {"threadIdx.x"} or len(extents["threadIdx.x"]) != 1:
        return None
    (current,) = extents["threadIdx.x"]
    if not isinstance(current, int) or current == 1:   # symbolic, or one thread: no split to set
        return None
    if current == threads:
        return sch
    insts = [_with_split_factor(inst, current, threads) if inst.kind.name == "Split" else inst
             for inst in sch.trace.insts]
    replayed = Schedule(func, error_render_level="fast")
    try:
        s_tir.schedule.Trace(insts, {}).apply_to_schedule(replayed, remove_postproc=False)
    except _TVM_ERRORS:
        return None
    if _thread_extents(replayed.mod["main"]) != {"threadIdx.x": {threads}}:
        return None
    return replayed


def _with_split_factor(inst: s_tir.schedule.Instruction, old: int,
                       new: int) -> s_tir.schedule.Instruction:
    """The Split instruction ``inst`` with every constant factor ``old`` replaced by ``new``."""
    loop, *factors = inst.inputs
    factors = [tirx.IntImm(factor.ty, new)
               if isinstance(factor, tirx.IntImm) and factor.value == old else factor
               for factor in factors]
    return s_tir.schedule.Instruction(inst.kind, [loop, *factors], inst.attrs, inst.outputs)


def _thread_extents(func: tirx.PrimFunc) -> dict[str, set]:
    """Thread tag -> the extents of the loops bound to it (ints where constant)."""
    extents: dict[str, set] = {}

    def visit(loop: tirx.For) -> None:
        if loop.thread_binding is None:
            return
        tag = loop.thread_binding.thread_tag
        if tag.startswith("threadIdx"):
            extent = loop.extent.value if isinstance(loop.extent, tirx.IntImm) else str(loop.extent)
            extents.setdefault(tag, set()).add(extent)

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit)], order="post")
    return extents


def _gpu_rules(threads: int | None) -> list[dlight.ScheduleRule]:
    matmul = dlight.gpu.Matmul() if threads is None else _ThreadedMatmul(threads)
    return [matmul, dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(),
            dlight.gpu.Fallback()]


def _first_accepting_rule(rules: list[dlight.ScheduleRule], func: tirx.PrimFunc, target: Target,
                          refusals: list[str]) -> tuple[Schedule | None, dlight.ScheduleRule | None]:
    """The first rule's schedule, as ApplyDefaultSchedule picks it (kept here to name the rule).

    A rule that raises counts as not accepting, and the error goes to ``refusals``: in TVM
    0.27, Reduction raises on a full reduction to a scalar followed by an epilogue (e.g. a
    mean), where ApplyDefaultSchedule itself would fail and GeneralReduction schedules it.
    """
    for rule in rules:
        try:
            space = rule.apply(func, target, False)
        except _TVM_ERRORS as error:
            refusals.append(f"{type(rule).__name__.lstrip('_')} raised: {_first_line(error)}")
            continue
        if space is None:
            continue
        return (space[0] if isinstance(space, list) else space), rule
    return None, None


def _with_thread_limit(target: Target, threads: int) -> Target:
    config = dict(target.export())
    config["max_num_threads"] = threads
    config["max_threads_per_block"] = threads
    return Target(config)


def _thread_block_shape(threads: int) -> tuple[int, int]:
    """(x, y) with x * y = threads and y = x or 2x, like dlight's CUDA default 8 x 16 = 128."""
    x = 1 << ((threads.bit_length() - 1) // 2)
    return x, threads // x


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))
