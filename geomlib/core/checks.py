"""Checks of the arguments of public functions: each raises ``TypeError`` (wrong kind of value) or
``ValueError`` (right kind, wrong value) with a message that names the argument, the value it got
and what would work. One place, so that every function words the same mistake the same way."""

from __future__ import annotations

import math
import numbers
from typing import Literal, overload

import torch


@overload
def positive_int(name: str, value: object, *, optional: Literal[False] = False) -> int: ...


@overload
def positive_int(name: str, value: object, *, optional: bool) -> int | None: ...


def positive_int(name: str, value: object, *, optional: bool = False) -> int | None:
    """``value`` as an ``int`` if it is a positive integer (``None`` too when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "a positive integer" + (" or None" if optional else "")
        hint = f" (use {int(value)})" if isinstance(value, float) and value.is_integer() else ""
        raise TypeError(f"{name} must be {kind}, got {value!r} of type {type(value).__name__}{hint}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def positive_number(name: str, value: object, *, dtype: torch.dtype | None = None) -> float:
    """``value`` as a ``float`` if it is a finite positive number (representable in ``dtype``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if dtype is not None and dtype.is_floating_point and number >= torch.finfo(dtype).max:
        raise ValueError(f"{name}={value!r} overflows {dtype} (largest {torch.finfo(dtype).max:.3g})")
    return number


def non_negative_number(name: str, value: object) -> float:
    """``value`` as a ``float`` if it is a finite number ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def finite_tensor(name: str, value: object, *, batch_offset: int = 0) -> torch.Tensor:
    """``value`` if it is a floating tensor without NaN or inf; the error names the bad samples
    (indices along the first axis, plus ``batch_offset`` when ``value`` is part of a larger batch)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype} (use {name}.float())")
    if not torch.isfinite(value).all():
        if value.ndim == 0:
            raise ValueError(f"{name} is {value.item()}: give a finite value")
        bad = (
            (~torch.isfinite(value)).reshape(len(value), -1).any(1).nonzero().flatten() + batch_offset
        ).tolist()
        more = " ..." if len(bad) > 10 else ""
        raise ValueError(f"{name} contains NaN or inf values (samples {bad[:10]}{more})")
    return value
