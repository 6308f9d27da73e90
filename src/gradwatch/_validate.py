"""Small validators shared by every public constructor; they raise ConfigurationError with the bad value."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ._errors import ConfigurationError


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ConfigurationError(f"{name}={value!r} is not valid; choose one of {', '.join(repr(c) for c in choices)}.")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    at_most: float | None = None,
    below: float | None = None,
    allow_inf: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name}={value!r} must be a number (got {type(value).__name__}).")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ConfigurationError(f"{name}={value!r} must be a finite number.")
    _check_sign(name, value, v, positive=positive, nonnegative=nonnegative)
    _check_bounds(name, value, v, at_most=at_most, below=below)
    return v


def _check_sign(name: str, value: Any, v: float, *, positive: bool, nonnegative: bool) -> None:
    if positive and not v > 0:
        raise ConfigurationError(f"{name}={value!r} must be > 0.")
    if nonnegative and not v >= 0:
        raise ConfigurationError(f"{name}={value!r} must be >= 0.")


def _check_bounds(name: str, value: Any, v: float, *, at_most: float | None, below: float | None) -> None:
    if at_most is not None and v > at_most:
        raise ConfigurationError(f"{name}={value!r} must be <= {at_most}.")
    if below is not None and not v < below:
        raise ConfigurationError(f"{name}={value!r} must be < {below}.")


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name}={value!r} must be an integer >= {minimum} (got {type(value).__name__}).")
    if value < minimum:
        raise ConfigurationError(f"{name}={value!r} must be an integer >= {minimum}.")
    return value
