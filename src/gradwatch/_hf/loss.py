"""The loss of the micro-batches since the last optimizer step, read from the model's outputs.

The ``transformers.Trainer`` does not hand the loss to its callbacks. A forward hook on the model reads
``outputs.loss`` of each training forward pass (``model.training`` and gradients enabled: evaluation is left out),
detached, summed on the device: no host sync. ``take()`` gives the step's loss the way the Trainer adds it to its own
``loss`` log: the mean of the micro-batch losses, or their sum when the model normalised each by the tokens of the whole
accumulation window (``num_items_in_batch``, times the number of processes when the Trainer averages tokens across
devices).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LossTap"]


class LossTap:
    """Sums ``outputs.loss`` of the training forward passes of ``model`` until ``take()``.

    Args:
        model: the model whose forward outputs carry ``loss`` (a ``ModelOutput`` or a mapping).
        processes: the factor the Trainer applies to a loss normalised by ``num_items_in_batch`` (the number of
            processes with ``average_tokens_across_devices``, else 1).

    >>> from types import SimpleNamespace
    >>> class Toy(nn.Linear):
    ...     def forward(self, x, num_items_in_batch=None):
    ...         return {"loss": super().forward(x).sum()}
    >>> model = Toy(2, 1, bias=False)
    >>> _ = nn.init.ones_(model.weight)
    >>> tap = LossTap(model)
    >>> for value in (1.0, 3.0):
    ...     _ = model(torch.full((1, 2), value))
    >>> tap.take()
    tensor(4.)
    >>> tap.take() is None
    True
    >>> tap.remove()
    """

    def __init__(self, model: nn.Module, *, processes: int = 1) -> None:
        self._processes = processes
        self._sum: Tensor | None = None
        self._count = 0
        self._whole_window = False
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            return  # no loss from the model (labels popped for a label smoother or compute_loss_func)
        loss = loss.detach().float().reshape(())
        if kwargs.get("num_items_in_batch") is not None:
            self._whole_window = True  # normalised by the window's tokens already: the micro-batch losses add up
            loss = loss * self._processes
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1

    def take(self) -> Tensor | None:
        """The loss of the micro-batches seen since the last ``take()`` (a 0-d tensor on the device), or ``None``."""
        total, count, whole = self._sum, self._count, self._whole_window
        self._sum, self._count, self._whole_window = None, 0, False
        if total is None:
            return None
        return total if whole else total / count

    def clear(self) -> None:
        """Forget the micro-batches seen so far."""
        self.take()

    def remove(self) -> None:
        """Remove the hook from the model (what ``Watcher.close()`` calls, through ``add_cleanup``)."""
        self._handle.remove()
        self._sum = None
