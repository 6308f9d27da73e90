"""Small validators shared by every public constructor; they raise ConfigurationError with the bad value."""

from __future__ import annotations

import math
import numbers
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
    if not is_real(value):
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


def check_int(name: str, value: Any, *, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as a Python int: any integral number (``numpy.int64`` included), never a bool, in
    ``[minimum, maximum]``."""
    if not is_integral(value):
        raise ConfigurationError(f"{name}={value!r} must be an integer >= {minimum} (got {type(value).__name__}).")
    v = int(value)
    if v < minimum:
        raise ConfigurationError(f"{name}={value!r} must be an integer >= {minimum}.")
    if maximum is not None and v > maximum:
        raise ConfigurationError(f"{name}={value!r} must be an integer <= {maximum:,}.")
    return v


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (Python's or numpy's ``float32``, ``float64``, ``int64``...), not a bool.

    Examples:
        >>> import numpy as np
        >>> is_real(np.float32(1.0)), is_real(np.int64(3)), is_real(True), is_real(np.bool_(True)), is_real("1")
        (True, True, False, False, False)
    """
    return isinstance(value, numbers.Real) and not _is_bool(value)


def is_integral(value: Any) -> bool:
    """Whether ``value`` is an integer (Python's or numpy's ``int64``...), not a bool; a float is not, even ``2.0``.

    Examples:
        >>> import numpy as np
        >>> is_integral(np.int64(10)), is_integral(10), is_integral(2.0), is_integral(np.bool_(False))
        (True, True, False, False)
    """
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_bool(value: Any) -> bool:
    # numpy's bool_ is no numbers.Integral, but say it explicitly: a flag is never a count or a threshold.
    return isinstance(value, bool) or type(value).__name__ == "bool_"
