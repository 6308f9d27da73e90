"""One call per micro-batch for a training loop written with Hugging Face Accelerate.

``step(watcher, accelerator, loss)`` goes right after ``accelerator.backward(loss)`` inside
``accelerator.accumulate(model)``. On the micro-batch that ends an accumulation window
(``accelerator.sync_gradients``: the gradients are accumulated and all-reduced) it unscales fp16 gradients and runs
``watcher.step()`` once, with the window's mean loss; on the others it only adds the loss up. Let the watcher clip
(``gradwatch.watch(model, clip=max_norm)``, identical to ``accelerator.clip_grad_norm_``) instead of calling
``accelerator.clip_grad_norm_``: it measures the gradients before clipping them. Nothing here imports ``accelerate``
(the accelerator is used through its public attributes) or ``transformers``. See docs/transformers.md.

Examples:
    >>> import gradwatch.accelerate
    >>> gradwatch.accelerate.__all__
    ['step']
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from ._errors import ConfigurationError
from ._step import StepReport
from ._watcher import Watcher

__all__ = ["step"]

#: The loss of the micro-batches of each watcher's current accumulation window: (sum on the device, count).
_windows: weakref.WeakKeyDictionary[Watcher, tuple[Tensor, int]] = weakref.WeakKeyDictionary()


def step(watcher: Watcher, accelerator: Any, loss: Tensor | float | None = None) -> StepReport | None:
    """Call after every ``accelerator.backward(loss)``: ``watcher.step()`` once per optimizer step.

    Args:
        watcher: the ``gradwatch.Watcher`` of the model (``gradwatch.watch(model, optimizer=optimizer, ...)``, with
            the prepared model and optimizer).
        accelerator: the ``accelerate.Accelerator`` (its ``sync_gradients``, ``scaler`` and ``unscale_gradients``
            are used).
        loss: this micro-batch's loss (not divided by the accumulation steps); the watcher gets the mean over the
            window, detached, on the device. ``None`` for no loss.

    Returns:
        The step's ``StepReport`` on the micro-batch that ends the window, ``None`` on the others.

    Raises:
        ConfigurationError: ``accelerator`` is not an Accelerator, or the loss is not a number or one-element tensor.
        NonFiniteGradientError: with ``on_nonfinite="raise"``, as ``watcher.step()``.

    Under fp16 mixed precision (``accelerator.scaler``) the gradients are unscaled here
    (``accelerator.unscale_gradients()``), so do not call ``accelerator.clip_grad_norm_`` after it: clip with the
    watcher. Steps are numbered by the watcher (``watcher.steps_taken``): one per optimizer step.

    Examples:
        >>> import torch, gradwatch
        >>> from accelerate import Accelerator
        >>> accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> model, optimizer = accelerator.prepare(model, optimizer)
        >>> watcher = gradwatch.watch(model, optimizer=optimizer, clip=1.0)
        >>> for micro_batch in range(8):
        ...     with accelerator.accumulate(model):
        ...         loss = model(torch.ones(3, 2)).pow(2).mean()
        ...         accelerator.backward(loss)
        ...         report = gradwatch.accelerate.step(watcher, accelerator, loss)
        ...         optimizer.step()
        ...         optimizer.zero_grad()
        >>> watcher.steps_taken  # 8 micro-batches, 4 optimizer steps
        4
        >>> watcher.close()
    """
    sync = getattr(accelerator, "sync_gradients", None)
    if not isinstance(sync, bool):
        raise ConfigurationError(f"accelerator={accelerator!r:.80} is not an accelerate.Accelerator (it has no "
                                 "sync_gradients flag); pass the Accelerator that prepared the model.")
    if loss is not None:
        if isinstance(loss, Tensor) and loss.numel() == 1:
            value = loss.detach().float().reshape(())
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            value = torch.tensor(float(loss))
        else:
            raise ConfigurationError(f"loss={loss!r:.80} must be a number or a one-element tensor, or None.")
        if watcher in _windows:
            total, count = _windows[watcher]
            value, count = total + value.to(total.device), count + 1
        else:
            count = 1
        _windows[watcher] = (value, count)
    if not sync:
        return None
    window = _windows.pop(watcher, None)
    scaler = getattr(accelerator, "scaler", None)
    scale = None
    if scaler is not None:
        accelerator.unscale_gradients()  # fp16: the watcher measures and clips the true gradients
        if watcher.config.scaler is None:
            scale = scaler.get_scale()  # Intended host sync: scaler.step() syncs on its Inf flags right after anyway
    return watcher.step(loss=None if window is None else window[0] / window[1], loss_scale=scale)
