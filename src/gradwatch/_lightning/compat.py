"""Both Lightning namespaces, ``lightning.pytorch`` and ``pytorch_lightning``, found lazily.

Nothing here is imported by ``import gradwatch``; ``gradwatch.lightning`` imports it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["NAMESPACES", "callback_bases", "grad_scaler", "is_tensorboard_logger", "lightning_logs", "logging_step",
           "namespaces"]

#: The packages a Lightning ``Trainer`` can come from, in order of preference.
NAMESPACES: tuple[str, ...] = ("lightning.pytorch", "pytorch_lightning")

_MISSING = (
    "gradwatch.lightning needs PyTorch Lightning: `pip install lightning` (from a gradwatch clone: "
    "`pip install '.[lightning]'`) "
    "(package `lightning`, namespace lightning.pytorch) or the package `pytorch-lightning` (namespace "
    "pytorch_lightning). Neither could be imported{why}."
)


def namespaces() -> list[ModuleType]:
    """The Lightning namespaces that import here, in ``NAMESPACES`` order.

    Raises:
        ImportError: when neither imports, naming the ``lightning`` extra.
    """
    found: list[ModuleType] = []
    errors: list[str] = []
    for name in NAMESPACES:
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    if not found:
        raise ImportError(_MISSING.format(why=" (" + "; ".join(errors) + ")" if errors else ""))
    return found


def callback_bases() -> tuple[type, ...]:
    """Every importable namespace's ``Callback`` class: a subclass of all of them is accepted by either ``Trainer``."""
    return tuple(ns.Callback for ns in namespaces())


def is_tensorboard_logger(logger: Any) -> bool:
    """Whether ``logger`` is a ``TensorBoardLogger`` of either namespace (whose ``experiment`` is a SummaryWriter)."""
    for ns in namespaces():
        try:
            cls = importlib.import_module(f"{ns.__name__}.loggers").TensorBoardLogger
        except (ImportError, AttributeError):
            continue
        if isinstance(logger, cls):
            return True
    return False


def grad_scaler(trainer: Any) -> Any:
    """The enabled ``GradScaler`` of the trainer's precision plugin (``precision="16-mixed"``), else ``None``."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not callable(getattr(scaler, "is_enabled", None)) or not scaler.is_enabled():
        return None
    return scaler


def logging_step(trainer: Any) -> int:
    """The step number Lightning writes this batch's own metrics at (``self.log(..., on_step=True)``).

    That is the count of batches that ended in an optimizer step before this one (``trainer.global_step`` with one
    optimizer, unless batches were skipped); ``trainer.global_step`` where the loop does not say.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)  # what Lightning's logger connector and callbacks write at
    return step if isinstance(step, int) else int(trainer.global_step)


def lightning_logs(trainer: Any) -> bool:
    """Whether Lightning writes its step metrics for the current batch (checked before its optimizer step).

    Lightning's own rule: the ``log_every_n_steps``-th, 2 x ``log_every_n_steps``-th... batch (steps ``n - 1``,
    ``2n - 1``... in ``logging_step`` numbering), the batch during which ``trainer.should_stop`` was set, every batch
    under ``fast_dev_run``, none with ``log_every_n_steps=0``.
    """
    if getattr(trainer, "fast_dev_run", False):
        return True
    flag = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
    if isinstance(flag, bool):  # what LearningRateMonitor and DeviceStatsMonitor ask too
        return flag
    n = int(trainer.log_every_n_steps)
    return n > 0 and ((logging_step(trainer) + 1) % n == 0 or bool(trainer.should_stop))
