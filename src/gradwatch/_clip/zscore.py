"""The EMA z-score arithmetic shared by ``ZScoreClip`` (on device tensors) and the ``spike``
rule (on host floats).

Every function here is plain arithmetic (``+ - * / **``), so it runs unchanged on Python floats, numpy values and
torch tensors; the callers choose branches (``torch.where`` on the device, ``if`` on the host). These are the
equations of ZClip (Kumar et al., 2025):

* warm-up: mean and population variance of the first ``N`` values (Welford's update, numerically stable);
* z-score: ``z = (x - mu) / (sigma + eps)``;
* the clipped value when ``z > z_thr``: ``mu + z_thr**2 * sigma / z`` ("zscore", reciprocal) or ``mu + z_thr * sigma``
  ("percentile");
* the EMA update with the *clipped* value ``c``: ``mu' = a*mu + (1-a)*c``, ``var' = a*var + (1-a)*(c - mu')**2``.

>>> ema_update(1.0, 0.0, 3.0, 0.5)
(2.0, 0.5)
>>> zscore(4.0, 2.0, 1.0, 0.0)
2.0
>>> clip_target(2.0, 1.0, 4.0, 2.0, "zscore"), clip_target(2.0, 1.0, 4.0, 2.0, "percentile")
(3.0, 4.0)
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

__all__ = ["ZScoreMode", "clip_target", "ema_update", "welford_update", "zscore"]

ZScoreMode = Literal["zscore", "percentile"]
T = TypeVar("T")


def ema_update(mean: T, var: T, x: T, alpha: float) -> tuple[T, T]:
    """One EMA step of the mean and variance with the value ``x`` (ZClip's update; the variance uses the new mean)."""
    # floats, numpy values or tensors alike; annotated, not cast(): the rules call these at every step
    m: Any = mean
    v: Any = var
    c: Any = x
    new_mean = alpha * m + (1.0 - alpha) * c
    new_var = alpha * v + (1.0 - alpha) * (c - new_mean) ** 2
    return new_mean, new_var


def welford_update(count: T, mean: T, m2: T, x: T) -> tuple[T, T]:
    """Welford's running mean and sum of squared deviations; ``count`` already includes ``x`` (>= 1)."""
    m: Any = mean
    c: Any = x
    delta = c - m
    new_mean = m + delta / count
    new_m2 = m2 + delta * (c - new_mean)
    return new_mean, new_m2


def zscore(x: T, mean: T, var: T, eps: float) -> T:
    """Standard score of ``x`` against the running mean and variance (``eps`` keeps it finite at zero variance)."""
    c: Any = x
    v: Any = var
    return (c - mean) / (v ** 0.5 + eps)  # type: ignore[no-any-return]


def clip_target(mean: T, std: T, z: T, z_threshold: float, mode: ZScoreMode) -> T:
    """The value a spike (``z > z_threshold``) is clipped to.

    ``"zscore"`` (ZClip's default, reciprocal clipping): ``mean + z_threshold**2 * std / z``: the larger the spike,
    the harder it is pulled back, and always below ``mean + z_threshold * std``. ``"percentile"``: the fixed level
    ``mean + z_threshold * std``.
    """
    m: Any = mean
    s: Any = std
    if mode == "zscore":
        return m + (z_threshold * z_threshold) * s / z  # type: ignore[no-any-return]
    return m + z_threshold * s  # type: ignore[no-any-return]
