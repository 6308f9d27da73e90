"""Adaptive global-norm clippers: ``ZScoreClip`` (ZClip) and ``PercentileClip`` (AutoClip).

Both rescale every gradient by one coefficient ``min(1, bound / total_norm)``; they differ in how the bound follows the
history of the global norm. Their state is a handful of tensors on the gradients' device, updated with ``torch.where``:
a step reads nothing back to the host. The only Python branch is on the host-known step count (warm-up).
"""

from __future__ import annotations

import math
from typing import Any, get_args

import torch
from torch import Tensor

from .._errors import ConfigurationError
from .._stats import GradBatch
from .._validate import check_choice, check_int, check_number
from .base import Clipper, ClipResult, global_coef, scale_all
from .zscore import ZScoreMode, clip_target, ema_update, welford_update, zscore

__all__ = ["MAX_WINDOW", "PercentileClip", "ZScoreClip", "window_percentile"]

#: The largest ``PercentileClip(window=...)``: 8 MB of history on the device, sorted at every step.
MAX_WINDOW = 1_000_000


def _check_keys(owner: str, state: dict[str, Any], keys: set[str]) -> None:
    if set(state) != keys:
        raise ConfigurationError(f"{owner}.load_state_dict expects keys {sorted(keys)}, got {sorted(state)}; pass what "
                                 f"{owner}.state_dict() returned.")


class ZScoreClip(Clipper):
    """ZClip: clip the global gradient norm when its z-score against an EMA of its mean and variance is too high.

    With ``g`` the global L2 norm, ``mu`` and ``var`` the EMA statistics and ``sigma = sqrt(var)``:

    * **warm-up** (the first ``warmup_steps`` steps): no adaptive clipping (only the ``max_norm`` ceiling); ``mu`` and
      ``var`` are initialised to the mean and population variance of these steps' (ceiling-clipped) norms;
    * then ``z = (g - mu) / (sigma + eps)``; when ``z > z_threshold`` the norm is clipped to
      ``mu + z_threshold**2 * sigma / z`` (``mode="zscore"``, reciprocal clipping: bigger spikes are pulled back harder)
      or to ``mu + z_threshold * sigma`` (``mode="percentile"``);
    * ``max_norm``, if given, is a hard ceiling at every step, warm-up included;
    * the EMA is updated with the **clipped** norm ``c = min(g, bound)``: ``mu <- alpha*mu + (1-alpha)*c``, then
      ``var <- alpha*var + (1-alpha)*(c - mu)**2`` (with the new ``mu``), so a spike cannot inflate the baseline.

    A non-finite norm is neither clipped (gradwatch's ``nonfinite`` rule and ``on_nonfinite`` handle it) nor allowed
    into the statistics. ``report.extras["gradwatch/clip/threshold"]`` is the norm above which the step is clipped,
    ``mu + z_threshold * (sigma + eps)`` capped by ``max_norm``.

    Args:
        alpha: EMA weight of the past, in ``[0, 1)`` (ZClip's default 0.97: a memory of ~33 steps).
        z_threshold: z-score above which a step is clipped (> 0).
        warmup_steps: steps (>= 1) that initialise the statistics before any adaptive clipping.
        max_norm: optional hard ceiling on the global norm (> 0).
        mode: ``"zscore"`` (reciprocal clipping) or ``"percentile"`` (clip to ``mu + z_threshold * sigma``).
        eps: added to ``sigma`` in the z-score (> 0).

    Examples:
        >>> import torch
        >>> from gradwatch._stats import StatsEngine
        >>> from gradwatch._layers import discover_layers
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> engine, clip = StatsEngine(discover_layers(model)), ZScoreClip(warmup_steps=3)
        >>> for norm in [1.0, 1.0, 1.0, 100.0]:
        ...     model.weight.grad = torch.tensor([[norm, 0.0]])
        ...     result = clip.clip(engine.compute().batch)
        >>> round(float(model.weight.grad[0, 0]), 3)  # clipped to mu + z**2 * sigma / z = mu (sigma is 0)
        1.0
    """

    supports_distributed = True  # clips from batch.total_norm alone, which is global under sharding

    def __init__(
        self,
        *,
        alpha: float = 0.97,
        z_threshold: float = 2.5,
        warmup_steps: int = 25,
        max_norm: float | None = None,
        mode: ZScoreMode = "zscore",
        eps: float = 1e-6,
    ) -> None:
        self.alpha = check_number("alpha", alpha, nonnegative=True, below=1.0)
        self.z_threshold = check_number("z_threshold", z_threshold, positive=True)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=1)
        self.max_norm = None if max_norm is None else check_number("max_norm", max_norm, positive=True)
        self.mode: ZScoreMode = check_choice("mode", mode, get_args(ZScoreMode))  # type: ignore[assignment]
        self.eps = check_number("eps", eps, positive=True)
        self._seen = 0
        zero = torch.zeros((), dtype=torch.float64)
        self._count, self._mean, self._m2, self._var = zero, zero.clone(), zero.clone(), zero.clone()

    @property
    def steps_seen(self) -> int:
        """Number of ``clip()`` calls so far (warm-up is over once it reaches ``warmup_steps``)."""
        return self._seen

    def _place(self, like: Tensor) -> None:
        # A no-op once the state lives on the gradients' device (the first step, or a restore, moves it there).
        if self._mean.device != like.device or self._mean.dtype != like.dtype:
            self._count, self._mean, self._m2, self._var = (
                t.to(like.device, like.dtype) for t in (self._count, self._mean, self._m2, self._var))

    def clip(self, batch: GradBatch) -> ClipResult:
        g = batch.total_norm
        self._place(g)
        finite = torch.isfinite(g)
        ceiling = self.max_norm if self.max_norm is not None else math.inf
        threshold: Tensor | float | None
        if self._seen < self.warmup_steps:  # a host-known count: this branch reads nothing from the device
            bound: Tensor | float = ceiling
            clipped = g.clamp(max=ceiling)
            count = self._count + finite.to(g.dtype)
            mean, m2 = welford_update(count.clamp(min=1.0), self._mean, self._m2, clipped)
            self._mean = torch.where(finite, mean, self._mean)
            self._m2 = torch.where(finite, m2, self._m2)
            self._count = count
            if self._seen + 1 == self.warmup_steps:
                self._var = self._m2 / self._count.clamp(min=1.0)  # population variance, as ZClip initialises it
            threshold = self.max_norm
        else:
            std = self._var.sqrt()
            z = zscore(g, self._mean, self._var, self.eps)
            target = clip_target(self._mean, std, z, self.z_threshold, self.mode)
            # torch.where instead of `if z > z_threshold`: branching on a device value would be a host sync.
            bound = torch.where(z > self.z_threshold, target, torch.full_like(g, math.inf)).clamp(max=ceiling)
            threshold = (self._mean + self.z_threshold * (std + self.eps)).clamp(max=ceiling)
            clipped = torch.minimum(g, bound)
            mean, var = ema_update(self._mean, self._var, clipped, self.alpha)
            self._mean = torch.where(finite, mean, self._mean)
            self._var = torch.where(finite, var, self._var)
        coef = global_coef(g, bound)
        scale_all(batch, coef)
        self._seen += 1
        return ClipResult(clipped_norm=g * coef, threshold=threshold, coef=coef, clipped=coef < 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self._seen, "count": self._count.clone(), "mean": self._mean.clone(), "m2": self._m2.clone(),
                "var": self._var.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_keys("ZScoreClip", state, {"seen", "count", "mean", "m2", "var"})
        self._seen = int(state["seen"])
        device, dtype = self._mean.device, self._mean.dtype
        self._count, self._mean, self._m2, self._var = (
            torch.as_tensor(state[k]).detach().clone().to(device, dtype) for k in ("count", "mean", "m2", "var"))


def window_percentile(window: Tensor, percentile: float) -> Tensor:
    """``numpy.percentile(values, percentile)`` (linear interpolation) of the non-NaN entries of ``window``, on the
    device and without a host sync; NaN when the window holds no value.

    >>> window_percentile(torch.tensor([3.0, float("nan"), 1.0, 2.0]), 25.0)
    tensor(1.5000)
    """
    ordered = torch.sort(window).values  # NaN sorts last: the first n entries are the values
    n = (~torch.isnan(window)).sum()
    pos = (percentile / 100.0) * (n - 1).clamp(min=0).to(window.dtype)
    lo, hi = pos.floor(), pos.ceil()
    a = ordered.gather(0, lo.long().reshape(1)).reshape(())
    b = ordered.gather(0, hi.long().reshape(1)).reshape(())
    t = pos - lo
    diff = b - a
    # numpy's _lerp, term for term (it interpolates from the nearer end), so the two agree to the last bit.
    value = torch.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)
    return torch.where(n > 0, value, torch.full_like(value, math.nan))


class PercentileClip(Clipper):
    """AutoClip: clip the global gradient norm at a percentile of its own recent history.

    Each step appends the (unclipped) global norm to the history, then clips at ``numpy.percentile(history,
    percentile)`` (linear interpolation), as Seetharaman et al. (2020) do. AutoClip keeps every norm since the start
    and syncs once per parameter; here the history is a **fixed window** of the last ``window`` norms, a ring buffer
    on the gradients' device (memory ``8 * window`` bytes, whatever the run's length), and the percentile is computed
    there by a sort. Over that window the threshold is **exact**: it equals ``numpy.percentile`` of the same norms up
    to float64 rounding (relative error below 1e-12); the only approximation is forgetting norms older than ``window``
    steps. Non-finite norms are left out of the history and are not clipped.

    Args:
        percentile: the percentile of the history to clip at, in ``(0, 100]`` (AutoClip's best was 10).
        window: how many recent norms to keep, from 1 to ``MAX_WINDOW`` (1,000,000: the window is sorted at
            every step).

    Examples:
        >>> import torch
        >>> from gradwatch._stats import StatsEngine
        >>> from gradwatch._layers import discover_layers
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> engine, clip = StatsEngine(discover_layers(model)), PercentileClip(percentile=50.0, window=8)
        >>> for norm in [1.0, 2.0, 3.0, 10.0]:
        ...     model.weight.grad = torch.tensor([[norm]])
        ...     result = clip.clip(engine.compute().batch)
        >>> float(result.threshold), float(model.weight.grad)  # median of 1, 2, 3, 10
        (2.5, 2.5)
    """

    supports_distributed = True  # clips from batch.total_norm alone, which is global under sharding

    def __init__(self, percentile: float = 10.0, *, window: int = 1000) -> None:
        self.percentile = check_number("percentile", percentile, positive=True, at_most=100.0)
        self.window = check_int("window", window, minimum=1, maximum=MAX_WINDOW)
        self._seen = 0
        self._buffer = torch.full((self.window,), math.nan, dtype=torch.float64)

    def clip(self, batch: GradBatch) -> ClipResult:
        g = batch.total_norm
        if self._buffer.device != g.device or self._buffer.dtype != g.dtype:
            self._buffer = self._buffer.to(g.device, g.dtype)
        slot = self._seen % self.window  # host-known position in the ring
        self._buffer[slot:slot + 1] = torch.where(torch.isfinite(g), g, torch.full_like(g, math.nan)).reshape(1)
        threshold = window_percentile(self._buffer, self.percentile)
        coef = global_coef(g, torch.where(torch.isnan(threshold), torch.full_like(threshold, math.inf), threshold))
        scale_all(batch, coef)
        self._seen += 1
        return ClipResult(clipped_norm=g * coef, threshold=threshold, coef=coef, clipped=coef < 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self._seen, "window": self.window, "buffer": self._buffer.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_keys("PercentileClip", state, {"seen", "window", "buffer"})
        if int(state["window"]) != self.window:
            raise ConfigurationError(f"PercentileClip(window={self.window}) cannot load a state saved with "
                                     f"window={state['window']}; construct it with that window.")
        self._seen = int(state["seen"])
        self._buffer = torch.as_tensor(state["buffer"]).detach().clone().to(self._buffer.device, self._buffer.dtype)
