"""The ``spike`` rule: a global gradient norm or a loss far above its running baseline.

The baseline is the one ``ZScoreClip`` keeps (the arithmetic lives in ``_zscore``): a warm-up
mean and variance, then an EMA of the mean and variance updated with the *clipped* value, so that a spike does not
raise the bar for the next one. A value is a spike when its z-score is above ``Thresholds.spike_z`` (OLMo skips steps
above mean + 6 sigma) **and** it is clearly larger than the mean (``spike_factor`` times it for the gradient norm, 10
by default; ``spike_loss_margin`` of it above it for the loss): the second test keeps a very steady baseline (a tiny
sigma) from turning harmless wiggles into alerts.

Everything here runs on the host on Python floats, after the step's packed vector arrived: no device access.

>>> from gradwatch._thresholds import Thresholds
>>> th, state = Thresholds(spike_warmup=3), SpikeState()
>>> [len(spike_symptoms(s, g, None, th, state)) for s, g in enumerate([1.0, 1.1, 0.9, 1.0, 50.0])]
[0, 0, 0, 0, 1]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ._clip.zscore import clip_target, ema_update, welford_update, zscore
from ._symptoms import Symptom
from ._thresholds import Thresholds

__all__ = ["Baseline", "SpikeState", "observe", "spike_symptoms"]

_EPS = 1e-12


@dataclass(frozen=True)
class Baseline:
    """Running statistics of one series.

    Attributes:
        seen: finite values observed.
        mean: running mean (the warm-up mean, then the EMA).
        m2: sum of squared deviations during the warm-up (Welford).
        var: EMA variance (set when the warm-up ends).
    """

    seen: int = 0
    mean: float = 0.0
    m2: float = 0.0
    var: float = 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


def observe(b: Baseline, x: float, *, alpha: float, warmup: int, z_threshold: float) -> tuple[Baseline, float]:
    """Fold ``x`` into the baseline. Returns the new baseline and the z-score of ``x`` against the old one (NaN during
    the warm-up and for a non-finite ``x``, which is left out).

    >>> b = Baseline()
    >>> for x in (1.0, 3.0):
    ...     b, z = observe(b, x, alpha=0.5, warmup=2, z_threshold=2.0)
    >>> b.mean, b.var, z
    (2.0, 1.0, nan)
    >>> observe(b, 4.0, alpha=0.5, warmup=2, z_threshold=2.0)[1] > 1.99
    True
    """
    if not math.isfinite(x):
        return b, math.nan
    if b.seen < warmup:
        seen = b.seen + 1
        mean, m2 = welford_update(seen, b.mean, b.m2, x)
        return Baseline(seen, mean, m2, m2 / seen if seen == warmup else b.var), math.nan
    z = zscore(x, b.mean, b.var, _EPS)
    clipped = min(x, clip_target(b.mean, b.std, z, z_threshold, "zscore")) if z > z_threshold else x
    mean, var = ema_update(b.mean, b.var, clipped, alpha)
    return Baseline(b.seen + 1, mean, b.m2, var), z


@dataclass
class SpikeState:
    """The spike rule's memory: one baseline for the global gradient norm, one for the loss."""

    grad: Baseline = field(default_factory=Baseline)
    loss: Baseline = field(default_factory=Baseline)

    def state_dict(self) -> dict[str, Any]:
        return {"grad": asdict(self.grad), "loss": asdict(self.loss)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad = Baseline(**state["grad"])
        self.loss = Baseline(**state["loss"])


def spike_symptoms(step: int, global_norm: float, loss: float | None, th: Thresholds,
                   state: SpikeState) -> list[Symptom]:
    """Check one step's global gradient norm (before clipping) and loss (if given) against their baselines, then
    update the baselines. Returns at most two ``spike`` symptoms (model-wide, ``layer=None``)."""
    out = []
    before = state.grad
    state.grad, z = _observe(before, global_norm, th)
    if z > th.spike_z and global_norm > th.spike_factor * before.mean:
        out.append(_grad_spike(step, global_norm, z, before, th))
    if loss is not None:
        before = state.loss
        state.loss, z = _observe(before, loss, th)
        margin = th.spike_loss_margin * abs(before.mean)
        if z > th.spike_z and loss - before.mean > margin:
            out.append(_loss_spike(step, loss, z, before, margin, th))
    return out


def _observe(b: Baseline, x: float, th: Thresholds) -> tuple[Baseline, float]:
    return observe(b, x, alpha=th.spike_alpha, warmup=th.spike_warmup, z_threshold=th.spike_z)


def _grad_spike(step: int, global_norm: float, z: float, before: Baseline, th: Thresholds) -> Symptom:
    level = max(before.mean + th.spike_z * (before.std + _EPS), th.spike_factor * before.mean)
    evidence = (f"Gradient-norm spike at step {step}: global norm {global_norm:.3g} is {z:.3g} standard deviations "
                f"above its running mean {before.mean:.3g} ({global_norm / before.mean:.0f}x).")
    return Symptom(
        kind="spike", layer=None, step=step, value=global_norm, threshold=level, severity="warning", since=step,
        message=(f"{evidence} A bad batch or a learning rate too high for this stage; gradwatch.clipping.ZScoreClip "
                 "clips such steps and watch(on_spike='skip') skips them."),
        evidence=evidence, cause="a bad batch or a learning rate too high for this stage",
        advice="gradwatch.clipping.ZScoreClip to clip such steps, or watch(on_spike='skip') to skip them",
    )


def _loss_spike(step: int, loss: float, z: float, before: Baseline, margin: float, th: Thresholds) -> Symptom:
    level = before.mean + max(th.spike_z * (before.std + _EPS), margin)
    evidence = (f"Loss spike at step {step}: loss {loss:.4g} is {z:.3g} standard deviations above its running mean "
                f"{before.mean:.4g}.")
    return Symptom(
        kind="spike", layer=None, step=step, value=loss, threshold=level, severity="warning", since=step,
        message=(f"{evidence} A bad batch (mislabelled, corrupted, out of distribution) or an unstable update; "
                 "watch(on_spike='skip') skips such steps."),
        evidence=evidence, cause="a bad batch (mislabelled, corrupted, out of distribution) or an unstable update",
        advice="watch(on_spike='skip') to skip such steps",
    )
