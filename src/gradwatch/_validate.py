"""Small validators shared by every public constructor; they raise ConfigurationError with the bad value."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

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


def check_step_value(name: str, value: Any) -> None:
    """A value of ``Watcher.step()`` (``loss``, ``loss_scale``): ``None``, a real number, or a real tensor of one
    element (0-d or ``[1]``). Checked on its type and shape only: reading a device value would be a host sync.

    Examples:
        >>> import torch
        >>> check_step_value("loss", torch.tensor(1.5)), check_step_value("loss", 2.0)
        (None, None)
        >>> check_step_value("loss", torch.ones(3))
        Traceback (most recent call last):
        ...
        gradwatch._errors.ConfigurationError: loss=tensor of shape (3,) must be a number or a tensor of one element \
(a 0-d tensor, such as loss.detach()): reduce it first (loss.mean(), loss.sum()).
    """
    if value is None or is_real(value):
        return
    import torch

    if not isinstance(value, torch.Tensor):
        raise ConfigurationError(f"{name}={value!r:.80} must be a number or a tensor of one element (got "
                                 f"{type(value).__name__}).")
    if value.numel() != 1:
        raise ConfigurationError(f"{name}=tensor of shape {tuple(value.shape)} must be a number or a tensor of one "
                                 f"element (a 0-d tensor, such as {name}.detach()): reduce it first ({name}.mean(), "
                                 f"{name}.sum()).")
    if value.is_complex() or value.dtype == torch.bool:
        raise ConfigurationError(f"{name}=tensor of dtype {value.dtype} must be a real number ({value.dtype} is "
                                 "complex or boolean).")


def check_log_dir(name: str, value: Any) -> None:
    """A directory to write event files in: a non-empty path that is, or can be created as, a writable directory.
    Only looks at the file system: nothing is created.

    Examples:
        >>> check_log_dir("log_dir", "")
        Traceback (most recent call last):
        ...
        gradwatch._errors.ConfigurationError: log_dir='' is an empty path; pass a directory for the event files (or \
leave log_dir=None to write none).
    """
    path = os.fsdecode(os.fspath(value))
    if not path.strip():
        raise ConfigurationError(f"{name}={value!r} is an empty path; pass a directory for the event files (or leave "
                                 f"{name}=None to write none).")
    full = os.path.abspath(path)
    existing = full
    while not os.path.exists(existing):  # the deepest part of the path that exists already
        existing = os.path.dirname(existing)
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing!r} is a file, not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing!r} is not writable"
    if problem is not None:
        how = "" if existing == full else "cannot create it: "
        raise ConfigurationError(f"{name}={path!r}: {how}{problem}.")


def check_step_args(counted: int, loss: Any, global_step: Any, loss_scale: Any, reduce_flag: Any, log: Any) -> int:
    """The number of a ``Watcher.step()`` (``global_step``, else the watcher's own count ``counted``), every argument
    checked first (a ``ConfigurationError`` naming the bad one)."""
    if loss is None and loss_scale is None and reduce_flag is None and log is None:  # the common call, at once
        if global_step is None:
            return counted
        if type(global_step) is int and global_step >= 0:
            return global_step
    if log is not None and not isinstance(log, (bool, np.bool_)):
        raise ConfigurationError(f"log={log!r:.80} must be True, False or None (gradwatch's cadence decides).")
    check_step_value("loss", loss)
    check_step_value("loss_scale", loss_scale)
    if reduce_flag is not None and not callable(reduce_flag):
        raise ConfigurationError(f"reduce_flag={reduce_flag!r:.80} must be a function of a 0-d tensor, or None.")
    return counted if global_step is None else check_int("global_step", global_step, minimum=0)
