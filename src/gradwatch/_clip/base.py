"""The clipper interface and the small device-side helpers every clipper shares (no host reads anywhere)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._errors import ConfigurationError
from .._stats import GradBatch

__all__ = ["ClipResult", "Clipper", "global_coef", "scale_all"]


@dataclass
class ClipResult:
    """What a clipper did this step; device tensors or Python numbers, read on the host only when logged.

    Attributes:
        clipped_norm: global L2 norm after clipping, or ``None`` to have the watcher measure it.
        threshold: the threshold used this step (a norm or a value), if the rule has one.
        coef: the scale applied (1.0 when nothing was clipped), for rules with one global coefficient; the smallest
            scale applied to any unit for per-unit rules.
        active_frac: for per-unit rules (``AGC``, ``LayerNormClip``),
            the fraction of units whose gradient was rescaled this step.
        clipped: whether any gradient was changed this step (a boolean tensor, or a bool).

    Examples:
        >>> ClipResult(threshold=1.0, coef=0.5, clipped=True).coef
        0.5
    """

    clipped_norm: Tensor | None = None
    threshold: Tensor | float | None = None
    coef: Tensor | float | None = None
    active_frac: Tensor | float | None = None
    clipped: Tensor | bool | None = None


class Clipper(ABC):
    """Base class of gradwatch's clippers.

    Subclasses implement ``clip()``. Those that keep state override ``state_dict()`` and
    ``load_state_dict()``, keeping it as tensors on the gradients' device so that no step needs a host sync.

    Examples:
        A clipper that halves every gradient (``batch.groups`` holds the gradients by device and dtype):

        >>> import torch, gradwatch
        >>> class Halve(Clipper):
        ...     def clip(self, batch):
        ...         for group in batch.groups:
        ...             torch._foreach_mul_(group.grads, 0.5)
        ...         return ClipResult(coef=0.5, clipped=True)  # clipped_norm=None: the watcher measures it
        >>> model = torch.nn.Linear(3, 1)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> with gradwatch.watch(model, clip=Halve()) as watcher:
        ...     report = watcher.step()
        >>> round(report.global_norm, 3), round(report.clipped_norm, 3)
        (4.0, 2.0)
    """

    #: Whether the clipper is correct with sharded gradients (FSDP, tensor parallel): it must clip from
    #: ``GradBatch.total_norm`` (global) or combine partials with ``GradBatch.reduce``.
    supports_distributed: bool = False

    @abstractmethod
    def clip(self, batch: GradBatch) -> ClipResult:
        """Rescale ``batch``'s gradients in place and say what was done."""

    def check_layers(self, layer_names: Sequence[str]) -> None:
        """Raise ``ConfigurationError`` if the clipper's options do not fit these watched layers (a
        pattern that matches none, say). The watcher calls it once, when it is built, before touching anything."""
        return None  # nothing to check by default

    def state_dict(self) -> dict[str, Any]:
        """The clipper's state, for checkpoints (empty for stateless clippers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict()`` returned."""
        if state:
            raise ConfigurationError(
                f"{type(self).__name__} keeps no state, but load_state_dict got keys {sorted(state)}.")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def global_coef(norm: Tensor, bound: Tensor | float) -> Tensor:
    """``min(1, bound / norm)``, exactly; 1 where ``norm`` is zero or not finite (a non-finite step is the
    ``nonfinite`` rule's business: scaling it would only smear NaN over every gradient).

    The coefficient that brings a global norm down to ``bound``, computed on the device without a host sync: pass it
    to ``scale_all()``.

    Examples:
        >>> global_coef(torch.tensor(4.0), 2.0), global_coef(torch.tensor(1.0), 2.0)
        (tensor(0.5000), tensor(1.))
        >>> global_coef(torch.tensor(float("nan")), 2.0)  # left alone: the nonfinite rule reports it
        tensor(1.)
    """
    ok = torch.isfinite(norm) & (norm > 0)
    # torch.where and clamp instead of `if norm > bound`: branching on a device value would be a host sync.
    return torch.where(ok, (bound / torch.where(ok, norm, torch.ones_like(norm))).clamp(max=1.0), torch.ones_like(norm))


def scale_all(batch: GradBatch, coef: Tensor) -> None:
    """Multiply every gradient of ``batch`` by the 0-d tensor ``coef``, one fused call per (device, dtype) group.

    Examples:
        A clipper that holds the global norm at 1, from ``global_coef()``:

        >>> import gradwatch
        >>> class AtMostOne(Clipper):
        ...     def clip(self, batch):
        ...         coef = global_coef(batch.total_norm, 1.0)
        ...         scale_all(batch, coef)
        ...         return ClipResult(clipped_norm=batch.total_norm * coef, threshold=1.0, coef=coef)
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> model.weight.grad = torch.tensor([[3.0, 4.0]])
        >>> with gradwatch.watch(model, clip=AtMostOne()) as watcher:
        ...     report = watcher.step()
        >>> model.weight.grad, round(report.clipped_norm, 4)
        (tensor([[0.6000, 0.8000]]), 1.0)
    """
    for g in batch.groups:
        torch._foreach_mul_(g.grads, coef.to(g.device, non_blocking=True))
