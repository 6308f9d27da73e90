"""Gradient clippers: one small interface, device-side and branch-free.

A clipper receives the step's ``GradBatch`` (gradients grouped by device and dtype, one ``GradGroup`` each,
with their per-tensor norms and the global norm already computed) and rescales the gradients in place. It never reads a
device value on the host: a coefficient is applied with ``clamp`` rather than ``if coef < 1`` (an ``if`` on a device
value is a host sync). A clipper may keep state (a running statistic, say); that state round-trips through
``state_dict``.

The clippers (docs/clipping.md, "Choosing a clipping rule", compares them):

* ``NormClip``, ``ValueClip``: ``clip_grad_norm_`` and ``clip_grad_value_``;
* ``ZScoreClip`` (ZClip) and ``PercentileClip`` (AutoClip): a global norm bound that follows the norm's
  history;
* ``AGC`` (NFNets' adaptive gradient clipping, per unit) and ``LayerNormClip`` (per layer).

A clipper of your own subclasses ``Clipper`` and returns a ``ClipResult``; ``global_coef()`` and
``scale_all()`` do the arithmetic of one global coefficient without a host sync.

Examples:
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

from ._clip.adaptive import PercentileClip, ZScoreClip
from ._clip.base import Clipper, ClipResult, global_coef, scale_all
from ._clip.fixed import NormClip, ValueClip
from ._clip.unitwise import AGC, LayerNormClip
from ._errors import ConfigurationError
from ._stats import GradBatch, GradGroup
from ._validate import is_real

__all__ = [
    "AGC",
    "ClipResult",
    "Clipper",
    "GradBatch",
    "GradGroup",
    "LayerNormClip",
    "NormClip",
    "PercentileClip",
    "ValueClip",
    "ZScoreClip",
    "as_clipper",
    "global_coef",
    "scale_all",
]


def as_clipper(clip: float | Clipper | None) -> Clipper | None:
    """Turn ``watch(clip=...)`` into a clipper: ``None``, a float (global L2 max norm) or a ``Clipper``.

    Examples:
        >>> as_clipper(1.0)
        NormClip(max_norm=1.0, norm_type=2.0)
        >>> as_clipper(None) is None
        True
    """
    if clip is None or isinstance(clip, Clipper):
        return clip
    if not is_real(clip):
        raise ConfigurationError(
            f"clip={clip!r} is not valid; pass None, a positive float (the max global L2 norm), or a clipper from "
            "gradwatch.clipping such as NormClip(1.0) or ValueClip(0.5)."
        )
    value = float(clip)  # numpy scalars (np.float32(1.0)) as Python floats
    if math.isnan(value) or value <= 0 or math.isinf(value):
        raise ConfigurationError(f"clip={clip!r} must be a positive finite max norm, or None for no clipping.")
    return NormClip(value)
