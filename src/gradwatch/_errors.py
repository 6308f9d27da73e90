"""The one error hierarchy of gradwatch."""

from __future__ import annotations

__all__ = ["ConfigurationError", "GradWatchError", "GradWatchWarning", "NonFiniteGradientError"]


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

    It is also a :class:`ValueError`, so ``except ValueError`` keeps working.

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
    """Warning category of gradwatch (non-finite gradients under ``on_nonfinite="warn"``).

    Examples:
        >>> import warnings, torch, gradwatch
        >>> model = torch.nn.Linear(2, 1)
        >>> model(torch.tensor([[1.0, float("inf")]])).sum().backward()
        >>> with warnings.catch_warnings(record=True) as caught, gradwatch.watch(model) as watcher:
        ...     warnings.simplefilter("always")
        ...     _ = watcher.step()
        >>> [w.category.__name__ for w in caught]
        ['GradWatchWarning']
    """
