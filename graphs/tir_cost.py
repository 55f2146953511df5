"""FLOPs of a TIR PrimFunc as an expression over its symbolic dims.

Counting on the legalized TIR (instead of per-op formulas) covers every operator TVM can
lower, with one rule: each arithmetic operation on loaded tensor values in a stored value
counts once per iteration of the loops around it. Arithmetic on indices, loop variables,
shape variables and constants does not count: it is address or shape computation, and a
template's ``mean`` divisor ``cast(H * W)`` must cost what a static export's ``49.0``
does. Selects count their costlier branch. Convolution and matmul therefore count 2 FLOPs
per multiply-accumulate.
"""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import tirx
from tvm.sym import Analyzer
from tvm.s_tir import SBlock, SBlockRealize

_ARITHMETIC = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Mod, tirx.FloorDiv, tirx.FloorMod,
               tirx.Max, tirx.Min)
_ANALYZER = Analyzer()
_FREE_CALLS = {"if_then_else", "likely", "reinterpret", "assume"}  # selection and hints, not arithmetic


def count_flops(func: tirx.PrimFunc) -> tirx.PrimExpr:
    """Total arithmetic operations executed by ``func`` (a PrimExpr; constant when static)."""
    total = _stmt_flops(func.body, tirx.const(1, "int64"))
    return _ANALYZER.simplify(total)


def _stmt_flops(stmt, trip_count) -> tirx.PrimExpr:
    if isinstance(stmt, tirx.For):
        return _stmt_flops(stmt.body, trip_count * stmt.extent)
    if isinstance(stmt, tirx.SeqStmt):
        total = tirx.const(0, "int64")
        for child in stmt.seq:
            total = total + _stmt_flops(child, trip_count)
        return total
    if isinstance(stmt, SBlockRealize):
        return _stmt_flops(stmt.block, trip_count)
    if isinstance(stmt, SBlock):
        return _stmt_flops(stmt.body, trip_count)  # init blocks only store constants
    if isinstance(stmt, tirx.BufferStore):
        return trip_count * _expr_ops(stmt.value)
    if isinstance(stmt, tirx.IfThenElse):
        taken = _stmt_flops(stmt.then_case, trip_count)
        if stmt.else_case is not None:
            taken = tvm.tirx.max(taken, _stmt_flops(stmt.else_case, trip_count))
        return taken
    body = getattr(stmt, "body", None)  # LetStmt, AttrStmt, AllocBuffer, DeclBuffer, ...
    return _stmt_flops(body, trip_count) if body is not None else tirx.const(0, "int64")


def _expr_ops(expr) -> int:
    """Arithmetic operations on tensor values in ``expr``; none for a subtree that loads nothing."""
    return _value_ops(expr)[0]


def _value_ops(expr) -> tuple[int, bool]:
    """(operations, whether ``expr`` reads a buffer): an operation counts only when one of its
    operands reads a buffer, so shape and index arithmetic (``cast(H * W)``) is free."""
    if isinstance(expr, tvm.ir.TensorLoad):  # what tirx.BufferLoad builds
        return 0, True
    if isinstance(expr, _ARITHMETIC):
        return _combined([expr.a, expr.b], own=1)
    if isinstance(expr, tvm.ir.Call):
        free = str(expr.op.name).rsplit(".", 1)[-1] in _FREE_CALLS
        return _combined(list(expr.args), own=0 if free else 1)
    if isinstance(expr, tirx.Cast):
        return _value_ops(expr.value)
    if isinstance(expr, tirx.Select):
        branches = [_value_ops(expr.true_value), _value_ops(expr.false_value)]
        return max(ops for ops, _ in branches), any(loads for _, loads in branches)
    return 0, False  # constants, loop and shape variables


def _combined(operands: list, own: int) -> tuple[int, bool]:
    """Operations of an operation with ``own`` cost over ``operands``; ``own`` counts only on loaded values."""
    counted = [_value_ops(operand) for operand in operands]
    loads = any(reads for _, reads in counted)
    return (own if loads else 0) + sum(ops for ops, _ in counted), loads


def prim_expr_to_python(expr, name_of: Callable[[tirx.Var], str]) -> int | str:
    """A Python expression string for ``expr`` (an int when constant).

    ``name_of`` renames variables, e.g. TVM's ``s77`` to the user's dim name ``batch``.
    """
    expr = _ANALYZER.simplify(expr)
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    return _to_python(expr, name_of)


_BINARY_SYNTAX = {
    tirx.Add: "({} + {})", tirx.Sub: "({} - {})", tirx.Mul: "({} * {})",
    tirx.FloorDiv: "({} // {})", tirx.FloorMod: "({} % {})", tirx.Div: "({} // {})",
    tirx.Max: "max({}, {})", tirx.Min: "min({}, {})",
}


def _to_python(expr, name_of: Callable[[tirx.Var], str]) -> str:
    if isinstance(expr, tirx.IntImm):
        return str(int(expr.value))
    if isinstance(expr, tirx.FloatImm):
        return repr(float(expr.value))
    if isinstance(expr, tirx.Var):
        return name_of(expr)
    if isinstance(expr, tirx.Cast):
        return _to_python(expr.value, name_of)
    syntax = _BINARY_SYNTAX.get(type(expr))
    if syntax is None:
        raise ValueError(f"cannot express symbolic shape term {expr} ({type(expr).__name__}) in Python")
    return syntax.format(_to_python(expr.a, name_of), _to_python(expr.b, name_of))
