"""Fixed-threshold clippers, identical to torch's own: ``NormClip`` (``clip_grad_norm_``) and ``ValueClip``
(``clip_grad_value_``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._stats import GradBatch, GradGroup
from .._tensors import any_sparse
from .._validate import check_number
from .base import Clipper, ClipResult

__all__ = ["NormClip", "ValueClip"]


class NormClip(Clipper):
    """Global norm clipping, identical to ``torch.nn.utils.clip_grad_norm_``.

    The gradients are scaled by ``min(1, max_norm / (total_norm + 1e-6))``.

    Args:
        max_norm: the largest global norm allowed (> 0).
        norm_type: the norm's order: any positive number or ``inf``.

    Examples:
        >>> NormClip(1.0)
        NormClip(max_norm=1.0, norm_type=2.0)
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        self.max_norm = check_number("max_norm", max_norm, positive=True)
        self.norm_type = check_number("norm_type", norm_type, positive=True, allow_inf=True)

    def clip(self, batch: GradBatch) -> ClipResult:
        total = batch.total_norm.float() if self.norm_type == 2.0 else _total_norm(batch, self.norm_type)
        # clamp instead of `if coef < 1`: branching on a device value would be a host sync.
        coef = (self.max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in batch.groups:
            torch._foreach_mul_(g.grads, coef.to(g.device, non_blocking=True))
        clipped = batch.total_norm * coef.to(batch.total_norm.dtype) if self.norm_type == 2.0 else None
        return ClipResult(clipped_norm=clipped, threshold=self.max_norm, coef=coef, clipped=coef < 1.0)


class ValueClip(Clipper):
    """Element-wise clipping to ``[-value, value]``, identical to ``torch.nn.utils.clip_grad_value_``.

    Sparse gradients (``nn.Embedding(sparse=True)``, which ``clip_grad_value_`` refuses) have their coalesced values
    clamped.

    Args:
        value: the largest absolute gradient entry allowed (> 0).

    Examples:
        >>> ValueClip(0.5)
        ValueClip(value=0.5)
    """

    def __init__(self, value: float) -> None:
        self.value = check_number("value", value, positive=True)

    def clip(self, batch: GradBatch) -> ClipResult:
        for g in batch.groups:
            if any_sparse(g.grads):  # no fused in-place clamp for sparse tensors: one by one
                self._clamp_one_by_one(g)
            else:
                torch._foreach_clamp_min_(g.grads, -self.value)
                torch._foreach_clamp_max_(g.grads, self.value)
        return ClipResult(clipped_norm=None, threshold=self.value)

    def _clamp_one_by_one(self, g: GradGroup) -> None:
        for i, (p, grad) in enumerate(zip(g.params, g.grads, strict=True)):
            if grad.is_sparse:
                grad = grad.coalesce()
                grad.values().clamp_(-self.value, self.value)
                p.grad = g.grads[i] = grad
            else:
                grad.clamp_(-self.value, self.value)


def _total_norm(batch: GradBatch, norm_type: float) -> Tensor:
    """Global norm of any order, the way ``torch.nn.utils.get_total_norm`` computes it."""
    parts = []
    for g in batch.groups:
        norms = torch._foreach_norm(g.grads, norm_type)
        parts.append(torch.linalg.vector_norm(torch.stack(norms), norm_type).to(batch.home, torch.float32))
    if not parts:
        return torch.zeros((), device=batch.home)
    total: Tensor = torch.linalg.vector_norm(torch.stack(parts), norm_type)
    return total
