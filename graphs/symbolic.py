"""Symbolic dims: a template's shape entries are ints or Python expressions over dim names.

Expressions come from TVM's symbolic shapes (``batch * 16``, ``(seq + 1) // 2``) and are
compiled once per process, so instantiating a ResNet-50-size template takes milliseconds.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping, Union

Dim = Union[int, float, str]

_ALLOWED_NAMES = {"max": max, "min": min, "ceil": math.ceil, "__builtins__": {}}


@lru_cache(maxsize=None)
def _compiled(expr: str):
    return compile(expr, f"<dim {expr}>", "eval")


def evaluate_dims(value: Dim, dims: Mapping[str, int], memo: dict[str, int] | None = None) -> int | float:
    """The number ``value`` stands for at ``dims``; numbers pass through unchanged."""
    if not isinstance(value, str):
        return value
    if memo is not None and value in memo:
        return memo[value]
    try:
        result = eval(_compiled(value), _ALLOWED_NAMES, dims)  # noqa: S307 - our own expressions
    except NameError as error:
        raise ValueError(f"dim expression {value!r} needs a dim that was not given: {error}") from None
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    if memo is not None:
        memo[value] = result
    return result
