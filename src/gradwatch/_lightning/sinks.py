"""Sinks that write through a Lightning Trainer's loggers.

A ``TensorBoardLogger`` gets gradwatch's own tag scheme through its ``SummaryWriter`` (scalars and alert text, via
``TensorBoardSink``); every other logger (CSV, MLflow, W&B...) gets the scalars through its
``log_metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._sinks import Sink, TensorBoardSink
from .._symptoms import Symptom
from .compat import is_tensorboard_logger

__all__ = ["LoggerSink", "sinks_for_loggers"]


class LoggerSink:
    """Forwards gradwatch's scalars to a Lightning logger's ``log_metrics``; alerts stay in gradwatch's summary.

    The logger is saved (``logger.save()``) on flush and close, never finalized: the Trainer owns it.

    Args:
        logger: any Lightning ``Logger`` (``CSVLogger``, ``MLFlowLogger``, ``WandbLogger``...).

    Examples:
        >>> class Recorder:
        ...     def __init__(self): self.calls = []
        ...     def log_metrics(self, metrics, step): self.calls.append((step, dict(metrics)))
        ...     def save(self): pass
        >>> sink = LoggerSink(Recorder())
        >>> sink.write_scalars(3, {"gradwatch/global/grad_norm": 2.0})
        >>> sink.logger.calls
        [(3, {'gradwatch/global/grad_norm': 2.0})]
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if scalars:
            self.logger.log_metrics(dict(scalars), step=step)

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        """Loggers other than TensorBoard get the symptom counts as scalars (``gradwatch/symptoms/<kind>``) only."""

    def flush(self) -> None:
        self.logger.save()

    def close(self) -> None:
        self.logger.save()

    def __repr__(self) -> str:
        return f"LoggerSink({type(self.logger).__name__})"


def sinks_for_loggers(loggers: Iterable[Any]) -> list[Sink]:
    """One sink per logger: the SummaryWriter of a ``TensorBoardLogger``, ``log_metrics`` for any other logger.

    Call it on global rank zero only: other ranks' loggers hold dummy experiments.
    """
    sinks: list[Sink] = []
    for logger in loggers:
        if is_tensorboard_logger(logger):
            sinks.append(TensorBoardSink(writer=logger.experiment))  # flushed by gradwatch, closed by the logger
        elif callable(getattr(logger, "log_metrics", None)):
            sinks.append(LoggerSink(logger))
    return sinks
