"""The one error hierarchy of gradwatch, and ``warn_user()``, which attributes a warning to the user's line."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

__all__ = ["ConfigurationError", "GradWatchError", "GradWatchWarning", "NonFiniteGradientError", "caller_stacklevel",
           "warn_user"]


class GradWatchError(Exception):
    """Base class of every error gradwatch raises on purpose.

    Examples:
        >>> import gradwatch
        >>> try:
        ...     gradwatch.Thresholds(vanishing_patience=0)
        ... except gradwatch.GradWatchError as error:
        ...     print(type(error).__name__)
        ConfigurationError
    """


class ConfigurationError(GradWatchError, ValueError):
    """An argument given to gradwatch is invalid; raised at construction time.

    It is also a ``ValueError``, so ``except ValueError`` keeps working.

    Examples:
        >>> import torch, gradwatch
        >>> try:
        ...     gradwatch.watch(torch.nn.Linear(2, 1), on_nonfinite="explode")
        ... except gradwatch.ConfigurationError as error:
        ...     print("'explode'" in str(error), isinstance(error, ValueError))
        True True
    """


class NonFiniteGradientError(GradWatchError, FloatingPointError):
    """Raised by ``on_nonfinite="raise"`` when a watched gradient holds NaN or Inf.

    Attributes:
        step: the step at which the non-finite gradient was seen.
        layers: mapping of layer name to ``"nan"`` or ``"inf"``.

    Examples:
        >>> import torch, gradwatch
        >>> model = torch.nn.Linear(2, 1)
        >>> model(torch.tensor([[1.0, float("nan")]])).sum().backward()
        >>> try:
        ...     with gradwatch.watch(model, on_nonfinite="raise") as watcher:
        ...         watcher.step()
        ... except gradwatch.NonFiniteGradientError as error:
        ...     print(error.step, error.layers)
        0 {'__root__': 'nan'}
    """

    def __init__(self, message: str, *, step: int, layers: dict[str, str]) -> None:
        super().__init__(message)
        self.step = step
        self.layers = dict(layers)


class GradWatchWarning(UserWarning):
    """Warning category of gradwatch: for what needs a change in your code (a sink that fails, a parameter replaced
    after ``watch()``...). It points at your line (the first one outside gradwatch, torch and Lightning). What the
    gradients say (symptoms) goes to the ``gradwatch`` logger instead: ``logging.getLogger("gradwatch")``.

    Examples:
        >>> import warnings, torch, gradwatch
        >>> class FullDisk(gradwatch.MemorySink):
        ...     def write_scalars(self, step, scalars):
        ...         raise OSError("disk full")
        >>> model = torch.nn.Linear(2, 1)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> with warnings.catch_warnings(record=True) as caught, gradwatch.watch(model, sinks=[FullDisk()]) as watcher:
        ...     warnings.simplefilter("always")
        ...     _ = watcher.step()
        >>> [w.category.__name__ for w in caught]
        ['GradWatchWarning']
    """


_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Packages whose frames stand between gradwatch and the user's line (torch's ``no_grad`` decorator, Lightning's loop).
_CALLERS_NOT_USERS = ("torch", "lightning", "pytorch_lightning", "lightning_fabric")


def skipped_prefixes() -> tuple[str, ...]:
    """The folders whose frames are not the user's: gradwatch's, and those of torch and Lightning once imported."""
    prefixes = [_HERE]
    for name in _CALLERS_NOT_USERS:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            prefixes.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(prefixes)


def caller_stacklevel(prefixes: tuple[str, ...] | None = None) -> int:
    """The ``stacklevel`` that makes a warning issued by the function calling this one point at the first frame
    outside ``prefixes`` (default: ``skipped_prefixes()``).

    Examples:
        >>> def outside_gradwatch():  # a doctest's frames are no part of gradwatch: its own line
        ...     return caller_stacklevel()
        >>> outside_gradwatch()
        1
    """
    skip = skipped_prefixes() if prefixes is None else prefixes
    frame: FrameType | None = sys._getframe(1)  # the function that will call warnings.warn: stacklevel 1
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
        level += 1
    return level


def warn_user(message: str, category: type[Warning] = GradWatchWarning) -> None:
    """``warnings.warn(message, category)`` pointing at the user's line: the first frame outside gradwatch, torch and
    Lightning (``skip_file_prefixes`` on Python 3.12 and later, a computed ``stacklevel`` before).

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_user("gradwatch: a change is needed.")
        >>> caught[0].filename.endswith("_errors.py")  # a doctest's frame is no file
        False
    """
    prefixes = skipped_prefixes()
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, skip_file_prefixes=prefixes)  # type: ignore[call-overload,unused-ignore]
    else:
        warnings.warn(message, category, stacklevel=caller_stacklevel(prefixes))
