"""Small checks and conversions for JSON values: parameters read from job specs and configs, results written.

Standard library only, so every layer (and the Slicer modules) may use it; numpy values are recognised
through the ``numbers`` ABCs and their ``tolist``/``item`` methods, without importing numpy.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

__all__ = ["is_int", "is_number", "json_default", "json_safe"]


def is_int(value: Any, lo: int | None = None, numpy: bool = False) -> bool:
    """True if ``value`` is an integer (never a bool), at least ``lo`` when given.

    Args:
        value: the value to check.
        lo: the smallest value allowed (None: any).
        numpy: also accept numpy integers (``np.int64``...), e.g. values taken from an array.
    """
    ok = isinstance(value, numbers.Integral if numpy else int) and not isinstance(value, bool)
    return ok and (lo is None or value >= lo)


def is_number(value: Any, numpy: bool = False) -> bool:
    """True if ``value`` is a finite int or float (never a bool); ``numpy``: numpy numbers too."""
    ok = isinstance(value, numbers.Real if numpy else int | float) and not isinstance(value, bool)
    return ok and math.isfinite(value)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy arrays and scalars (as Python lists and numbers) and paths.

    Raises:
        TypeError: any other object (as ``json.dumps`` does).
    """
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return value.tolist()  # ndarray -> nested lists, numpy scalar -> Python number
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def json_safe(value: Any) -> Any:
    """NaN / inf -> None, numpy scalars and arrays -> Python, paths -> str, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        value = value.tolist()
        if isinstance(value, list):
            return json_safe(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
