"""CPU and GPU schedules for one fused group: same results as "default", real effects, CUDA builds."""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import tvm_ffi  # noqa: E402
from tvm import relax, te, topi, tirx  # noqa: E402
from tvm.ir import IRModule  # noqa: E402
from tvm.s_tir import dlight  # noqa: E402
from tvm.script import ir as I  # noqa: E402
from tvm.script import relax as R  # noqa: E402

from fusiongym.reward.timing import TimingProtocol, measure  # noqa: E402
from fusiongym.reward.tvm_schedules import (CPU_SCHEDULES, GPU_SCHEDULES, GpuScheduleResult,  # noqa: E402
                                            ScheduleResult, apply_cpu_schedule,
                                            apply_gpu_schedule, schedule_cpu, schedule_gpu)

LLVM = tvm.target.Target({"kind": "llvm", "num-cores": 2})
CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})


@I.ir_module
class _Graph:
    """Relax ops whose legalized and fused PrimFuncs have several blocks each."""

    @R.function
    def main(x: R.Tensor((1, 16, 18, 18), "float32"), w: R.Tensor((32, 16, 3, 3), "float32"),
             b: R.Tensor((1, 32, 1, 1), "float32"), y: R.Tensor((100, 250), "float32"),
             z: R.Tensor(("n", 96), "float32"), v: R.Tensor((1, 256), "float32"),
             m: R.Tensor((256, 512), "float32")):
        with R.dataflow():
            conv = R.nn.relu(R.add(R.nn.conv2d(x, w, padding=1), b))
            soft = R.nn.softmax(y, axis=-1)
            dyn = R.nn.softmax(z, axis=-1)
            gemv = R.matmul(v, m)
            mean = R.mean(y)
            R.output(conv, soft, dyn, gemv, mean)
        return conv, soft, dyn, gemv, mean


def _matmul(n: int) -> tirx.PrimFunc:
    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return te.create_prim_func([a, b, c])


def _conv2d() -> tirx.PrimFunc:
    data = te.placeholder((1, 8, 20, 20), name="data")
    kernel = te.placeholder((16, 8, 3, 3), name="kernel")
    out = topi.nn.conv2d_nchw(data, kernel, stride=1, padding=1, dilation=1)
    return te.create_prim_func([data, kernel, out])


@pytest.fixture(scope="module")
def funcs() -> dict[str, tirx.PrimFunc]:
    """Test kernels by name, each a standalone PrimFunc (the fused ones come out of FuseTIR)."""
    mod = relax.transform.LegalizeOps()(_Graph)
    mod = relax.transform.AnnotateTIROpPattern()(mod)
    mod = relax.transform.FuseTIR()(relax.transform.FuseOps()(mod))
    prims = {gvar.name_hint: func for gvar, func in mod.functions_items() if isinstance(func, tirx.PrimFunc)}
    softmaxes = sorted((name for name in prims if "softmax" in name),
                       key=lambda name: _is_dynamic(prims[name]))
    found = {"matmul": _matmul(64), "conv2d": _conv2d(),
             "fused_conv2d_add_relu": prims["fused_conv2d_add_relu"],
             "softmax": prims[softmaxes[0]], "softmax_dynamic": prims[softmaxes[1]],
             "gemv": prims["matmul"], "mean": prims["mean"]}
    return {name: func.with_attr("global_symbol", "main") for name, func in found.items()}


def _is_dynamic(func: tirx.PrimFunc) -> bool:
    return any(not isinstance(dim, (int, tirx.IntImm)) for param in func.params
               if hasattr(param, "shape") for dim in param.shape)


def _arguments(func: tirx.PrimFunc, n: int) -> list[np.ndarray]:
    """Random data for every buffer parameter; symbolic dimensions are ``n``."""
    rng = np.random.default_rng(0)
    arrays = []
    for param in func.params:
        if isinstance(param.ty, tvm.ir.PrimType):
            raise AssertionError("test functions take no scalar parameters")
        shape = [int(dim) if isinstance(dim, (int, tirx.IntImm)) else n for dim in param.shape]
        arrays.append(rng.standard_normal(shape).astype(param.dtype))
    return arrays


def _run(func: tirx.PrimFunc, n: int = 37) -> list[np.ndarray]:
    executable = tvm.compile(func, target=LLVM)
    tensors = [tvm.runtime.tensor(array) for array in _arguments(func, n)]
    executable["main"](*tensors)
    return [tensor.numpy() for tensor in tensors]


@pytest.mark.parametrize("name", ["matmul", "conv2d", "fused_conv2d_add_relu", "softmax", "softmax_dynamic"])
def test_every_cpu_schedule_computes_what_default_computes(funcs, name):
    func = funcs[name]
    expected = _run(func)
    for schedule in CPU_SCHEDULES[1:]:
        result = schedule_cpu(func, schedule, num_cores=2)
        assert result.applied, f"{schedule} did nothing to {name}: {result.skipped}"
        for got, want in zip(_run(result.func), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name} / {schedule}")


def test_default_is_tvms_unscheduled_kernel(funcs):
    result = schedule_cpu(funcs["conv2d"], "default", num_cores=2)
    assert result == ScheduleResult(funcs["conv2d"], "default")
    assert apply_cpu_schedule(funcs["conv2d"], "default", 2).same_as(funcs["conv2d"])


def test_schedules_record_their_steps(funcs):
    fused = schedule_cpu(funcs["fused_conv2d_add_relu"], "parallel_vectorize", num_cores=2)
    steps = " ".join(fused.applied)
    assert "inline:" in steps and "parallel:conv2d_nchw" in steps and "vectorize:conv2d_nchw" in steps
    tiled = schedule_cpu(funcs["matmul"], "tiled_32", num_cores=2)
    assert tiled.applied[0] == "tile:C(32x32)"
    assert "decompose_reduction:C" in tiled.applied
    assert "T.parallel" in tiled.func.script() and "T.vectorized" in tiled.func.script()


def test_symbolic_extents_are_parallel_but_not_vectorized(funcs):
    result = schedule_cpu(funcs["softmax_dynamic"], "parallel_vectorize", num_cores=2)
    assert any("symbolic extent" in note for note in result.skipped)
    assert any(step.startswith("parallel:") for step in result.applied)


def test_one_core_gets_no_parallel_loop(funcs):
    result = schedule_cpu(funcs["matmul"], "parallel_vectorize", num_cores=1)
    assert "T.parallel" not in result.func.script()
    assert "parallel:C (one core)" in result.skipped


def test_unknown_schedules_are_rejected(funcs):
    with pytest.raises(ValueError, match="unknown CPU schedule"):
        schedule_cpu(funcs["matmul"], "tiled_8", num_cores=2)
    with pytest.raises(ValueError, match="unknown GPU schedule"):
        schedule_gpu(IRModule({"main": funcs["matmul"]}), "threads_32", CUDA)


def test_parallel_vectorize_beats_default_on_a_256_cube_matmul():
    func = _matmul(256).with_attr("global_symbol", "main")
    arrays = [tvm.runtime.tensor(np.random.default_rng(1).random((256, 256), dtype="float32"))
              for _ in range(3)]
    protocol = TimingProtocol(min_repeat_ms=20, max_remeasure=0)
    default = measure(tvm.compile(func, target=LLVM), arrays, protocol)
    fast = measure(tvm.compile(apply_cpu_schedule(func, "parallel_vectorize", 2), target=LLVM),
                   arrays, protocol)
    assert default.median_us / fast.median_us > 1.3


def _cuda_source(mod: IRModule) -> str:
    return tvm.compile(mod, target=CUDA).mod.imports[0].inspect_source()


def _launch_bounds(source: str) -> set[int]:
    return {int(n) for n in re.findall(r"__launch_bounds__\((\d+)\)", source)}


def test_gpu_default_is_dlights_default_schedule(funcs):
    mod = IRModule({"main": funcs["softmax"]})
    result = schedule_gpu(mod, "default", CUDA)
    assert isinstance(result, GpuScheduleResult)
    assert result.applied == ("main:GeneralReduction",)
    assert mod["main"].same_as(funcs["softmax"]), "the input module must not change"
    with CUDA:   # ApplyDefaultSchedule rewrites the module it is given, so it goes last
        expected = dlight.ApplyDefaultSchedule(dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                                               dlight.gpu.GeneralReduction(), dlight.gpu.Fallback())(mod)
    assert tvm_ffi.structural_equal(result.mod, expected)


@pytest.mark.parametrize("name", ["matmul", "fused_conv2d_add_relu", "softmax", "softmax_dynamic"])
def test_gpu_schedules_build_cuda_without_a_gpu(funcs, name):
    bounds = {}
    for schedule in GPU_SCHEDULES:
        source = _cuda_source(apply_gpu_schedule(IRModule({"main": funcs[name]}), schedule, CUDA))
        assert "__global__" in source
        bounds[schedule] = _launch_bounds(source)
    assert bounds["threads_64"] == {64} and bounds["threads_512"] == {512}
    assert bounds["threads_128"] == {128}


def test_a_rule_that_binds_threads_its_own_way_keeps_them_and_says_so(funcs):
    """dlight's Reduction rule schedules this GEMV with a 16 x 16 (threadIdx.x, threadIdx.y) block."""
    result = schedule_gpu(IRModule({"main": funcs["gemv"]}), "threads_64", CUDA)
    assert result.applied == ("main:Reduction",)
    assert result.skipped == ("main:Reduction(threads=64) (the rule binds threads its own way)",)
    assert "__global__" in _cuda_source(result.mod)


def test_a_rule_that_raises_is_passed_over(funcs):
    """TVM 0.27's Reduction rule raises on a full reduction with an epilogue (a mean)."""
    result = schedule_gpu(IRModule({"main": funcs["mean"]}), "default", CUDA)
    assert all("raised" in note for note in result.skipped)
    assert "__global__" in _cuda_source(result.mod)
    cpu = schedule_cpu(funcs["mean"], "parallel_vectorize", num_cores=2)
    assert not cpu.applied and "no spatial loop to parallelize" in cpu.skipped[0]
