"""The ``divergence`` rule: the loss climbs far above where it was and stays there.

The loss comes from ``watcher.step(loss=...)`` (the adapters pass it). Each step's level is the median of the last
three losses (one bad batch is the ``spike`` rule's business, not this one's). The level is compared with:

- the **lowest level reached** (the minimum of a slow moving average of the levels): diverging when the level is
  ``divergence_factor`` times above it; for a loss that fell close to zero the rise must also be a sizable part of
  the start (``divergence_floor`` of it), so that noise around a converged loss of 0.001 is no divergence;
- the **start** (the first loss): diverging when the level is ``divergence_start_factor`` times above where training
  began, which catches a run that blew up before it learned anything;
- and, in both, the loss's own **noise**: the rise must also exceed four times the mean absolute deviation of the
  level from its moving average, learned on the steps that were not diverging (small batches make losses swing by
  an order of magnitude while training is healthy).

It must hold for ``divergence_patience`` steps in a row; there is no warm-up, so an order-of-magnitude rise is
flagged within a few steps. Calibrated on GPT-2, BERT, LLaMA, ViT and ResNet from ``transformers`` configs, an LSTM,
post-LN and pre-LN stacks and CNNs (tests/test_real_models.py): silent on all of them when healthy.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._advice import ModelTraits
from ._symptoms import Symptom
from ._thresholds import Thresholds

__all__ = ["DivergenceState", "divergence_symptoms"]

_WINDOW = 3  # the level is the median of this many losses
_ALPHA = 0.9  # memory of the moving average and of the noise (about 10 steps)
_NOISE_Z = 4.0  # the rise must exceed this many mean absolute deviations of the level


@dataclass
class DivergenceState:
    """The recent losses, the start, the moving average and its minimum, the noise, and the run of diverging steps."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    start: float | None = None
    average: float = 0.0
    minimum: float = 0.0
    minimum_step: int = 0
    noise: float = 0.0
    streak: int = 0
    since: int = -1

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "start": self.start, "average": self.average, "minimum": self.minimum,
                "minimum_step": self.minimum_step, "noise": self.noise, "streak": self.streak, "since": self.since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = deque((float(x) for x in state.get("recent", ())), maxlen=_WINDOW)
        self.start = state.get("start")
        for name in ("average", "minimum", "noise"):
            setattr(self, name, float(state.get(name, 0.0)))
        self.minimum_step = int(state.get("minimum_step", 0))
        self.streak, self.since = int(state.get("streak", 0)), int(state.get("since", -1))

    def learn(self, step: int, level: float) -> None:
        """A step that is not diverging: it moves the average, the minimum and the noise."""
        self.noise = _ALPHA * self.noise + (1 - _ALPHA) * abs(level - self.average)
        self.average = _ALPHA * self.average + (1 - _ALPHA) * level
        if self.average < self.minimum:
            self.minimum, self.minimum_step = self.average, step


def _level(values: deque[float]) -> float:
    """The median of the recent losses (the smallest of two, at the second step)."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if len(ordered) == _WINDOW else ordered[0]


def divergence_symptoms(step: int, loss: float | None, th: Thresholds, state: DivergenceState,
                        traits: ModelTraits) -> list[Symptom]:
    """At most one model-wide ``divergence`` symptom for this step's ``loss``."""
    if loss is None or not math.isfinite(loss):
        return []  # no loss passed; a non-finite loss shows in the gradients (the nonfinite rule)
    state.recent.append(float(loss))
    if state.start is None:
        state.start = state.average = state.minimum = float(loss)
        state.minimum_step = step
        return []
    level = _level(state.recent)
    reason = _diverging(level, th, state)
    if reason is None:
        state.learn(step, level)
        state.streak, state.since = 0, -1
        return []
    state.streak += 1
    if state.since < 0:
        state.since = step
    if state.streak < th.divergence_patience:
        return []
    remedy = traits.divergence_remedy()
    return [Symptom.described(
        "divergence", None, step, level, reason[1], "error", since=state.since,
        evidence=(f"Divergence at step {step}: the loss (median of the last {_WINDOW} steps) is {level:.4g}, "
                  f"{reason[0]}."),
        cause=remedy.cause, advice=remedy.advice)]


def _diverging(level: float, th: Thresholds, state: DivergenceState) -> tuple[str, float] | None:
    """Why ``level`` is diverging (a phrase and the threshold it crossed), or ``None``."""
    start, low = float(state.start or 0.0), state.minimum
    noise = _NOISE_Z * state.noise
    scale = max(abs(low), th.divergence_floor * abs(start), 1e-12)
    over_min = low + max((th.divergence_factor - 1.0) * scale, noise)
    if level > over_min:
        return (f"{level / low:.1f}x its lowest level {low:.4g} (step {state.minimum_step})" if low > 0 else
                f"{level - low:.4g} above its lowest level {low:.4g} (step {state.minimum_step})", over_min)
    over_start = start + max((th.divergence_start_factor - 1.0) * abs(start), noise)
    if level > over_start:
        return f"{level / start:.2f}x where training started ({start:.4g})" if start > 0 else \
            f"{level - start:.4g} above where training started ({start:.4g})", over_start
    return None
