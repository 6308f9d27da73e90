"""Per-unit clippers: ``AGC`` (each output unit against its weights) and ``LayerNormClip`` (each layer).

Each unit gets its own coefficient ``min(1, bound / norm)``, computed for all units at once on the device; the report
carries the smallest coefficient, the fraction of units that were rescaled (``active_frac``) and the clipped global
norm, all as device tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._errors import ConfigurationError
from .._globs import match_globs
from .._stats import GradBatch, GradGroup
from .._tensors import LOW_PRECISION, BoundedCache, accumulate_dtype, long_tensor
from .._validate import check_number
from .base import Clipper, ClipResult

__all__ = ["AGC", "LayerNormClip", "unit_norms"]


def unit_norms(t: Tensor) -> Tensor:
    """L2 norm of each *unit* of ``t``: each slice along dim 0 (rows of a Linear weight, output filters of a conv),
    or the whole tensor when it has at most one dimension. Float32 at least; a 1-D result.

    >>> unit_norms(torch.tensor([[3.0, 4.0], [0.0, 1.0]])), unit_norms(torch.tensor([3.0, 4.0]))
    (tensor([5., 1.]), tensor([5.]))
    """
    dtype = torch.float32 if t.dtype in LOW_PRECISION else None
    norms: Tensor
    if t.ndim <= 1:
        norms = torch.linalg.vector_norm(t, dtype=dtype).reshape(1)
    else:
        norms = torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), dtype=dtype)
    return norms


def _unit_shape(t: Tensor) -> tuple[int, ...]:
    """Shape that broadcasts one coefficient per unit over ``t``."""
    return (t.shape[0],) + (1,) * (t.ndim - 1) if t.ndim > 1 else (1,) * t.ndim


class AGC(Clipper):
    """Adaptive Gradient Clipping (Brock et al. 2021, NFNets), unit-wise, with the paper's epsilon floor.

    For each unit ``i`` (a row of a Linear weight, an output filter of a conv, a whole tensor of at most one dimension:
    bias, norm scale), with ``G_i`` its gradient and ``W_i`` its weights::

        bound_i = clip_factor * max(||W_i||, eps)
        G_i <- G_i * min(1, bound_i / ||G_i||)

    The floor ``eps`` matters: without it (Composer's AGC) a zero-initialised parameter has a bound of 0 and its
    gradient is zeroed for ever; with it, it gets ``clip_factor * eps`` of gradient norm and learns.
    ``clip_factor=0.01`` was tuned for normaliser-free ResNets at batch size 4096; smaller batches and other models
    usually need a larger one (the paper: the best value shrinks as the batch grows).

    Args:
        clip_factor: lambda, the largest gradient-to-weight norm ratio allowed per unit (> 0).
        eps: the floor on a unit's weight norm (> 0; the paper's 1e-3).
        exclude: fnmatch globs over layer names (the names of ``watch(layers=...)``) left unclipped; the paper leaves
            the final classifier out (``exclude=("fc",)`` or ``("head*",)``). A pattern matching no layer is an error.

    Sparse gradients are left unclipped. ``report.extras``: ``gradwatch/clip/threshold`` is ``clip_factor``,
    ``gradwatch/clip/coef`` the smallest unit coefficient, ``gradwatch/clip/active_frac`` the fraction of (non
    excluded) units rescaled.

    Examples:
        >>> import torch, gradwatch
        >>> model = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]])), model.bias.zero_()
        >>> model.weight.grad = torch.tensor([[1.0, 0.0], [0.0, 0.001]])
        >>> model.bias.grad = torch.tensor([1.0, 0.0])
        >>> with gradwatch.watch(model, clip=AGC(clip_factor=0.01)) as watcher:
        ...     report = watcher.step()
        >>> model.weight.grad  # row 0: bound 0.01 * 5; row 1 (norm 0.001 <= 0.01 * 1) untouched
        tensor([[0.0500, 0.0000],
                [0.0000, 0.0010]])
        >>> model.bias.grad  # a zero bias still gets 0.01 * eps = 1e-5
        tensor([1.0000e-05, 0.0000e+00])
        >>> round(report.extras["gradwatch/clip/active_frac"], 3)  # 2 of 3 units rescaled
        0.667
    """

    def __init__(self, clip_factor: float = 0.01, *, eps: float = 1e-3, exclude: str | Sequence[str] = ()) -> None:
        self.clip_factor = check_number("clip_factor", clip_factor, positive=True)
        self.eps = check_number("eps", eps, positive=True)
        self.exclude = _exclude_globs(exclude)
        # Built once per pattern of layers and shapes (host-side facts), kept on the device.
        self._masks: BoundedCache[tuple[tuple[str, ...], torch.device], Tensor] = BoundedCache()
        self._unit_index: BoundedCache[tuple[torch.device, tuple[int, ...], tuple[int, ...]], Tensor] = BoundedCache()

    def check_layers(self, layer_names: Sequence[str]) -> None:
        """Raise ConfigurationError when an ``exclude`` pattern matches none of ``layer_names``.

        Examples:
            >>> try:
            ...     AGC(exclude="head*").check_layers(["body", "fc"])
            ... except ConfigurationError as error:
            ...     print(error)
            AGC(exclude=...) pattern 'head*' matches no watched layer; the layers are: body, fc.
        """
        self._exclusions(layer_names)

    def _exclusions(self, names: Sequence[str]) -> list[bool]:
        return match_globs(names, self.exclude,
                           what="AGC(exclude=...) pattern {pattern} matches no watched layer; the layers are")

    def _excluded(self, names: Sequence[str], device: torch.device) -> Tensor:
        """Boolean per-layer mask of excluded layers on ``device``, built once (host-side names only)."""
        return self._masks.get((tuple(names), device), lambda: torch.tensor(
            self._exclusions(names), dtype=torch.bool).to(device, non_blocking=True))

    def _unit_excluded(self, g: GradGroup, names: Sequence[str], positions: tuple[int, ...],
                       counts: tuple[int, ...]) -> Tensor | None:
        """Per-unit exclusion flags of the tensors at ``positions`` of one group (``None`` when nothing is excluded)."""
        if not self.exclude:
            return None
        per_tensor = self._excluded(names, g.device)[g.layer_index]
        # Which tensor each unit belongs to: depends only on host-known shapes, cached.
        index = self._unit_index.get((g.device, positions, counts), lambda: long_tensor(
            [i for i, c in zip(positions, counts, strict=True) for _ in range(c)], g.device))
        return per_tensor[index]

    def clip(self, batch: GradBatch) -> ClipResult:
        totals = _UnitTotals(batch.home)
        sparse = False
        for g in batch.groups:
            positions = tuple(i for i, t in enumerate(g.grads) if not t.is_sparse)  # sparse gradients: unclipped
            sparse = sparse or len(positions) < len(g.grads)
            if positions:
                self._clip_group(g, batch.layer_names, positions, totals)
        clipped_norm = None if sparse else totals.clipped_sq.sqrt()
        return ClipResult(clipped_norm=clipped_norm, threshold=self.clip_factor, coef=totals.min_coef,
                          active_frac=totals.active / totals.units.clamp(min=1.0), clipped=totals.active > 0)

    def _clip_group(self, g: GradGroup, names: Sequence[str], positions: tuple[int, ...], totals: _UnitTotals) -> None:
        """Clip the (dense) gradients at ``positions`` of one group, unit by unit, and add what was done to
        ``totals``."""
        params = [g.params[i] for i in positions]
        grads = [g.grads[i] for i in positions]
        grad_units = [unit_norms(t) for t in grads]
        weight_units = [unit_norms(p.detach()) for p in params]
        counts = tuple(u.numel() for u in grad_units)
        gn, wn = torch.cat(grad_units), torch.cat(weight_units).to(grad_units[0].dtype)
        bound = self.clip_factor * wn.clamp(min=self.eps)
        excluded = self._unit_excluded(g, names, positions, counts)
        ok = torch.isfinite(gn) & (gn > bound)
        if excluded is not None:
            ok = ok & ~excluded
        # torch.where instead of `if norm > bound`: branching on a device value would be a host sync.
        coef = torch.where(ok, bound / torch.where(ok, gn, torch.ones_like(gn)), torch.ones_like(gn))
        torch._foreach_mul_(grads, [c.reshape(_unit_shape(t))
                                    for c, t in zip(torch.split(coef, list(counts)), grads, strict=True)])
        totals.add(torch.where(torch.isfinite(gn), gn * coef, gn), ok, coef, excluded)

    def state_dict(self) -> dict[str, Any]:
        return {}


def _exclude_globs(exclude: Any) -> tuple[str, ...]:
    """``AGC(exclude=...)`` as a tuple of globs; raises ConfigurationError for anything but a non-empty glob string or
    a sequence (list, tuple, set) of them."""
    globs = (exclude,) if isinstance(exclude, str) else \
        tuple(exclude) if isinstance(exclude, (list, tuple, set, frozenset)) else None
    if globs is None or (isinstance(exclude, str) and not exclude) or \
            not all(isinstance(p, str) and p for p in globs):
        raise ConfigurationError(f"exclude={exclude!r} must be a glob string or a sequence of non-empty globs "
                                 "over layer names, e.g. ('head',), or () for none.")
    return globs


class _UnitTotals:
    """What ``AGC`` did over every group, as device tensors on ``home``."""

    def __init__(self, home: torch.device) -> None:
        self.home = home
        self.acc = acc = accumulate_dtype(home)
        self.clipped_sq = torch.zeros((), dtype=acc, device=home)  # squared global norm after clipping
        self.active = torch.zeros((), dtype=acc, device=home)  # units rescaled
        self.units = torch.zeros((), dtype=acc, device=home)  # units not excluded
        self.min_coef = torch.ones((), dtype=acc, device=home)

    def add(self, after: Tensor, ok: Tensor, coef: Tensor, excluded: Tensor | None) -> None:
        """One group's unit norms ``after`` clipping, which units were rescaled (``ok``), by ``coef``."""
        home, acc = self.home, self.acc
        self.clipped_sq = self.clipped_sq + after.to(home, acc, non_blocking=True).square().sum()
        self.active = self.active + ok.sum().to(home, acc, non_blocking=True)
        if excluded is None:
            self.units = self.units + coef.numel()  # a host-known count: a kernel argument, not a copy
        else:
            self.units = self.units + (~excluded).sum().to(home, acc, non_blocking=True)
        self.min_coef = torch.minimum(self.min_coef, coef.min().to(home, acc, non_blocking=True))


class LayerNormClip(Clipper):
    """Clip each layer's gradient norm on its own: ``torch.nn.utils.clip_grad_norm_(layer.parameters(), max_norm)``
    for every watched layer, in one pass.

    A layer (as gradwatch defines it: a module that owns parameters, weight and bias together) whose gradient norm
    ``n`` exceeds ``max_norm`` is scaled by ``max_norm / (n + 1e-6)``, exactly as ``clip_grad_norm_`` would scale it;
    the other layers are untouched. A layer with a non-finite norm is left alone (the ``nonfinite`` rule reports it).
    ``report.extras``: ``gradwatch/clip/threshold`` is ``max_norm``, ``gradwatch/clip/coef`` the smallest layer
    coefficient, ``gradwatch/clip/active_frac`` the fraction of layers (with a gradient) that were clipped.

    Args:
        max_norm: the largest L2 norm allowed for any one layer's gradient (> 0).

    Examples:
        >>> import torch, gradwatch
        >>> model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False))
        >>> model[0].weight.grad, model[1].weight.grad = torch.tensor([[10.0]]), torch.tensor([[0.5]])
        >>> with gradwatch.watch(model, clip=LayerNormClip(max_norm=1.0)) as watcher:
        ...     report = watcher.step()
        >>> round(float(model[0].weight.grad), 4), float(model[1].weight.grad)
        (1.0, 0.5)
        >>> report.extras["gradwatch/clip/active_frac"]
        0.5
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = check_number("max_norm", max_norm, positive=True)

    def clip(self, batch: GradBatch) -> ClipResult:
        home = batch.home
        acc = accumulate_dtype(home)
        n_layers = len(batch.layer_names)
        sumsq = torch.zeros(n_layers, dtype=acc, device=home)
        present = torch.zeros(n_layers, dtype=acc, device=home)
        for g in batch.groups:
            part = torch.zeros(n_layers, dtype=acc, device=g.device).index_add_(0, g.layer_index,
                                                                                g.tensor_norms.to(acc).square())
            sumsq += part.to(home, non_blocking=True)
            seen = torch.zeros(n_layers, dtype=acc, device=g.device).index_fill_(0, g.layer_index, 1.0)
            present = torch.maximum(present, seen.to(home, non_blocking=True))
        norms = sumsq.sqrt()
        ok = torch.isfinite(norms)
        # clamp instead of `if norm > max_norm`: branching on a device value would be a host sync.
        coef = torch.where(ok, (self.max_norm / (norms + 1e-6)).clamp(max=1.0), torch.ones_like(norms))
        for g in batch.groups:
            per_tensor = coef.to(g.device, non_blocking=True)[g.layer_index]
            torch._foreach_mul_(g.grads, list(per_tensor.unbind()))
        active = (coef < 1.0).to(acc)
        after = torch.where(ok, norms * coef, norms)
        return ClipResult(clipped_norm=after.square().sum().sqrt(), threshold=self.max_norm,
                          coef=coef.min() if n_layers else torch.ones((), dtype=acc, device=home),
                          active_frac=active.sum() / present.sum().clamp(min=1.0), clipped=active.sum() > 0)
