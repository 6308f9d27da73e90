"""Both Lightning namespaces, ``lightning.pytorch`` and ``pytorch_lightning``, found lazily.

Nothing here is imported by ``import gradwatch``; ``gradwatch.lightning`` imports it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["NAMESPACES", "callback_bases", "grad_scaler", "is_tensorboard_logger", "namespaces"]

#: The packages a Lightning ``Trainer`` can come from, in order of preference.
NAMESPACES: tuple[str, ...] = ("lightning.pytorch", "pytorch_lightning")

_MISSING = (
    "gradwatch.lightning needs PyTorch Lightning: install the extra with `pip install 'gradwatch[lightning]'` "
    "(package `lightning`, namespace lightning.pytorch) or the package `pytorch-lightning` (namespace "
    "pytorch_lightning). Neither could be imported{why}."
)


def namespaces() -> list[ModuleType]:
    """The Lightning namespaces that import here, in ``NAMESPACES`` order.

    Raises:
        ImportError: when neither imports, naming the ``gradwatch[lightning]`` extra.
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
