"""What LLVM vectorizes in a node's unscheduled kernel: the IR count, and real compiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusiongym.graphs import from_torch
from fusiongym.reward.costmodel.features import GraphTensors, group_vector_share
from fusiongym.reward.vector_share import ir_vector_share, vector_shares

IR = """
define weak dso_local half @__truncsfhf2(float %a0) local_unnamed_addr #4 section ".text.tvm.fp16.conv" {
  %0 = tail call float @llvm.fabs.f32(float %a0)
  %1 = fmul float %0, %0
  ret half %h
}

define internal fastcc i32 @kernel_compute_(i32 %0, ptr %1) {
  %w = load float, ptr %1, align 4
  %i = add nsw i64 %a, 1
  %v0 = fmul <4 x float> %wide.load, %broadcast.splat
  %v1 = tail call <4 x float> @llvm.fmuladd.v4f32(<4 x float> %a, <4 x float> %b, <4 x float> %v0), !dbg !47
  %v2 = select <4 x i1> %c, <4 x float> %v1, <4 x float> zeroinitializer
  %s0 = fadd contract float %x, %y
  %s1 = fcmp ogt float %s0, 0.000000e+00
  %p = select i1 %q, i32 1, i32 2
  ret i32 0
}
"""


def test_ir_vector_share_counts_fp_arithmetic_of_the_kernel_only():
    # Vector: fmul, fmuladd, select on <4 x float>; scalar: fadd, fcmp. Loads, integer work, an
    # integer select and the fp16 helper TVM links into every module do not count.
    assert ir_vector_share(IR) == pytest.approx(3 / 5)


def test_ir_without_fp_arithmetic_has_share_zero():
    assert ir_vector_share("define void @f() {\n  %a = load float, ptr %p\n  store float %a, ptr %q\n}\n") == 0.0


class TwoPointwiseConvolutions(torch.nn.Module):
    """A 1×1 convolution over 8 channels, then one over 128: LLVM unrolls the first's short
    reduction and vectorizes the output row; the second's stays a scalar loop."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = torch.nn.Conv2d(8, 128, 1, bias=False)
        self.wide = torch.nn.Conv2d(128, 64, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wide(self.narrow(x))


def test_llvm_vectorizes_a_narrow_pointwise_convolution_and_not_a_wide_one():
    graph = from_torch(TwoPointwiseConvolutions(), (torch.randn(1, 8, 24, 24),), name="pointwise")
    narrow, wide = [node.id for node in graph.nodes if node.op == "conv2d"]
    known: dict[str, float] = {}
    shares = vector_shares(graph, [narrow, wide], known)
    assert shares[narrow] > 0.9
    assert shares[wide] < 0.1
    assert len(known) == 2
    again = vector_shares(graph, [wide], known)  # from ``known``: no compile, same share
    assert again == {wide: shares[wide]} and len(known) == 2
    group = group_vector_share(GraphTensors.of(graph), [narrow, wide], shares)
    flops = np.array([float(graph.nodes[n].flops) for n in (narrow, wide)])
    assert group[0] == pytest.approx(shares[wide])  # the wide one has 2× the FLOPs
    assert flops[1] > flops[0]
    assert group[1] == pytest.approx((flops @ [shares[narrow], shares[wide]]) / flops.sum())
