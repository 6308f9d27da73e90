"""Gradient clippers: one small interface, device-side and branch-free.

A clipper receives the step's :class:`~gradwatch._stats.GradBatch` (gradients grouped by device and dtype, with their
per-tensor norms and the global norm already computed) and rescales the gradients in place. It never reads a device
value on the host: a coefficient is applied with ``clamp`` rather than ``if coef < 1`` (an ``if`` on a device value is
a host sync). A clipper may keep state (a running statistic, say); that state round-trips through ``state_dict``.

The clippers (docs/clipping.md, "Choosing a clipping rule", compares them):

* :class:`NormClip`, :class:`ValueClip`: ``clip_grad_norm_`` and ``clip_grad_value_``;
* :class:`ZScoreClip` (ZClip) and :class:`PercentileClip` (AutoClip): a global norm bound that follows the norm's
  history;
* :class:`AGC` (NFNets' adaptive gradient clipping, per unit) and :class:`LayerNormClip` (per layer).

>>> import torch
>>> from torch import nn
>>> import gradwatch
>>> from gradwatch.clipping import NormClip
>>> model = nn.Linear(4, 2)
>>> model(torch.ones(3, 4)).sum().mul(100).backward()
>>> with gradwatch.watch(model, clip=NormClip(1.0)) as watcher:
...     report = watcher.step()
>>> round(report.clipped_norm, 4)
1.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._clip.adaptive import PercentileClip, ZScoreClip
from ._clip.base import Clipper, ClipResult
from ._clip.unitwise import AGC, LayerNormClip
from ._validate import check_number
from ._errors import ConfigurationError
from ._stats import GradBatch

__all__ = [
    "AGC",
    "ClipResult",
    "Clipper",
    "LayerNormClip",
    "NormClip",
    "PercentileClip",
    "ValueClip",
    "ZScoreClip",
    "as_clipper",
]


class NormClip(Clipper):
    """Global norm clipping, identical to ``torch.nn.utils.clip_grad_norm_``.

    The gradients are scaled by ``min(1, max_norm / (total_norm + 1e-6))``.

    Args:
        max_norm: the largest global norm allowed (> 0).
        norm_type: the norm's order: any positive number or ``inf``.

    >>> NormClip(1.0)
    NormClip(max_norm=1.0, norm_type=2.0)
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        self.max_norm = check_number("max_norm", max_norm, positive=True)
        self.norm_type = check_number("norm_type", norm_type, positive=True, allow_inf=True)

    def clip(self, batch: GradBatch) -> ClipResult:
        if self.norm_type == 2.0:
            total = batch.total_norm.float()
        else:
            total = _total_norm(batch, self.norm_type)
        # clamp instead of `if coef < 1`: branching on a device value would be a host sync.
        coef = (self.max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in batch.groups:
            torch._foreach_mul_(g.grads, coef.to(g.device, non_blocking=True))
        clipped = batch.total_norm * coef.to(batch.total_norm.dtype) if self.norm_type == 2.0 else None
        return ClipResult(clipped_norm=clipped, threshold=self.max_norm, coef=coef, clipped=coef < 1.0)


class ValueClip(Clipper):
    """Element-wise clipping to ``[-value, value]``, identical to ``torch.nn.utils.clip_grad_value_``.

    Args:
        value: the largest absolute gradient entry allowed (> 0).

    >>> ValueClip(0.5)
    ValueClip(value=0.5)
    """

    def __init__(self, value: float) -> None:
        self.value = check_number("value", value, positive=True)

    def clip(self, batch: GradBatch) -> ClipResult:
        for g in batch.groups:
            try:
                torch._foreach_clamp_min_(g.grads, -self.value)
                torch._foreach_clamp_max_(g.grads, self.value)
            except (RuntimeError, NotImplementedError):
                # Sparse gradients (nn.Embedding(sparse=True)) have no in-place clamp: clamp their coalesced values
                # (torch.nn.utils.clip_grad_value_ refuses them).
                for i, (p, grad) in enumerate(zip(g.params, g.grads)):
                    if grad.is_sparse:
                        grad = grad.coalesce()
                        grad.values().clamp_(-self.value, self.value)
                        p.grad = g.grads[i] = grad
                    else:
                        grad.clamp_(-self.value, self.value)
        return ClipResult(clipped_norm=None, threshold=self.value)


def _total_norm(batch: GradBatch, norm_type: float) -> Tensor:
    """Global norm of any order, the way ``torch.nn.utils.get_total_norm`` computes it."""
    parts = []
    for g in batch.groups:
        norms = torch._foreach_norm(g.grads, norm_type)
        parts.append(torch.linalg.vector_norm(torch.stack(norms), norm_type).to(batch.home, torch.float32))
    if not parts:
        return torch.zeros((), device=batch.home)
    return torch.linalg.vector_norm(torch.stack(parts), norm_type)


def as_clipper(clip: float | Clipper | None) -> Clipper | None:
    """Turn ``watch(clip=...)`` into a clipper: ``None``, a float (global L2 max norm) or a :class:`Clipper`.

    Examples:
        >>> as_clipper(1.0)
        NormClip(max_norm=1.0, norm_type=2.0)
        >>> as_clipper(None) is None
        True
    """
    if clip is None or isinstance(clip, Clipper):
        return clip
    if isinstance(clip, bool) or not isinstance(clip, (int, float)):
        raise ConfigurationError(
            f"clip={clip!r} is not valid; pass None, a positive float (the max global L2 norm), or a clipper from "
            "gradwatch.clipping such as NormClip(1.0) or ValueClip(0.5)."
        )
    if math.isnan(clip) or clip <= 0 or math.isinf(clip):
        raise ConfigurationError(f"clip={clip!r} must be a positive finite max norm, or None for no clipping.")
    return NormClip(float(clip))
