"""How much of a node's unscheduled CPU kernel LLVM vectorizes: read from the compiled IR.

Under the "default" schedule a kernel is TVM's loop nest as legalized, and its speed is what
LLVM's vectorizers make of it. On the EPYC a 1×1 convolution over 8-32 input channels, whose
reduction LLVM unrolls so the output row vectorizes, runs at 27-97 GFLOP/s; the same op
over 48-256 channels stays scalar at 2-5 (README, "What LLVM vectorizes"). Neither the op nor
its FLOPs tell the two apart; the kernel does. So each node is compiled alone, unscheduled,
for the TVM backend's CPU target, and the share of floating-point arithmetic instructions in
its optimized LLVM IR that are vector instructions is its ``vector_share``. The target is this
host's CPU, as the TVM backend builds for it: what LLVM vectorizes depends on the vector ISA it
may use (a 1×1 convolution over 32 channels stays scalar for a generic x86-64), so a share describes the
machine it was read on, and TVM's and LLVM's versions.
"""

from __future__ import annotations

import re
from typing import Iterable

import tvm

from fusiongym.graphs import ComputeGraph

from .signature import group_signature
from .tvm_apply import group_module, kernel_of
from .tvm_backend import host_cpu_target

_FP_TYPE = r"(<\d+ x )?(?:half|bfloat|float|double)\b"
_FLAGS = r"(?: (?:fast|reassoc|nnan|ninf|nsz|arcp|contract|afn))*"
# An instruction that computes on floating-point values: an FP binary op or comparison, a
# select between FP values (ReLU, max pooling), or a call returning FP (llvm.fmuladd, llvm.exp,
# a libm function). Loads, stores, casts and shuffles only move data.
_FP_ARITHMETIC = re.compile(rf"= (?:(?:fadd|fsub|fmul|fdiv|frem|fneg){_FLAGS} {_FP_TYPE}"
                            rf"|fcmp{_FLAGS} \w+ {_FP_TYPE}"
                            rf"|select{_FLAGS} (?:<\d+ x i1>|i1) [^,]+, {_FP_TYPE}"
                            rf"|(?:tail |musttail |notail )?call{_FLAGS} {_FP_TYPE}>? @)")
# TVM links software fp16 <-> fp32 conversions into every module; they are not the kernel.
_FP16_HELPERS = re.compile(r'^define [^\n]*section "\.text\.tvm\.fp16\.conv".*?^}$', re.MULTILINE | re.DOTALL)


def ir_vector_share(llvm_ir: str) -> float:
    """Share of the floating-point arithmetic instructions in ``llvm_ir`` that act on vectors
    (0 when it has none: a reshape, a gather, integer work)."""
    vector = scalar = 0
    for match in _FP_ARITHMETIC.finditer(_FP16_HELPERS.sub("", llvm_ir)):
        if any(match.groups()):
            vector += 1
        else:
            scalar += 1
    return vector / (vector + scalar) if vector + scalar else 0.0


def node_vector_share(graph: ComputeGraph, node: int) -> float:
    """``ir_vector_share`` of ``node``'s kernel compiled alone, unscheduled, for this host's CPU."""
    name, func = kernel_of(group_module(graph, [node]))
    module = tvm.IRModule({name: func.with_attr("global_symbol", name)})
    return ir_vector_share(tvm.compile(module, target=host_cpu_target(1)).mod.inspect_source("ll"))


def vector_share_setup() -> dict[str, str]:
    """What a share read here depends on: the target (this CPU) and TVM's version."""
    return {"target": str(host_cpu_target(1)), "tvm": tvm.__version__}


def vector_shares(graph: ComputeGraph, nodes: Iterable[int], known: dict[str, float]) -> dict[int, float]:
    """{node: vector share} for ``nodes``; ``known`` maps node signatures to shares already
    compiled (filled here), so equal nodes of any graph compile once."""
    shares = {}
    for node in nodes:
        signature = group_signature(graph, [node])
        if signature not in known:
            known[signature] = node_vector_share(graph, node)
        shares[node] = known[signature]
    return shares
