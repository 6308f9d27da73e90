"""The one error hierarchy of gradwatch."""

from __future__ import annotations

__all__ = ["ConfigurationError", "GradWatchError", "NonFiniteGradientError"]


class GradWatchError(Exception):
    """Base class of every error gradwatch raises on purpose."""


class ConfigurationError(GradWatchError, ValueError):
    """An argument given to gradwatch is invalid; raised at construction time.

    It is also a :class:`ValueError`, so ``except ValueError`` keeps working.
    """


class NonFiniteGradientError(GradWatchError, FloatingPointError):
    """Raised by ``on_nonfinite="raise"`` when a watched gradient holds NaN or Inf.

    Attributes:
        step: the step at which the non-finite gradient was seen.
        layers: mapping of layer name to ``"nan"`` or ``"inf"``.
    """

    def __init__(self, message: str, *, step: int, layers: dict[str, str]) -> None:
        super().__init__(message)
        self.step = step
        self.layers = dict(layers)
