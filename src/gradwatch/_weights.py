"""Rules on the weights themselves: updates that explode, weights that went non-finite, weights that collapse.

- **Exploding updates** (``exploding``): with an optimizer attached, the update-to-weight ratio ``||dw|| / ||w||``
  of each layer. Adaptive optimizers keep the gradient norm bounded while the *updates* explode (AdamW at 1000x its
  learning rate: the gradient norm stays under 13 while every weight moves by many times itself), so the gradient
  rules cannot see it. The median over the layers is judged against ``update_ratio_ceiling`` and against its running
  baseline (``update_jump_factor``).
- **Non-finite weights** (``nonfinite``): a layer whose parameter norm is NaN or Inf, reported once as the
  consequence of the bad gradients it received, naming the step they first went bad.
- **Collapsing weights** (``vanishing``): a layer whose parameter norm fell below ``collapse_ratio`` of its own
  first logged value (weights decayed to nothing, as described for the earlier layers of deep networks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._advice import ModelTraits
from ._symptoms import Symptom
from ._thresholds import Thresholds

__all__ = ["COLLAPSE_RATIO", "WeightState", "weight_symptoms"]

#: A layer whose parameter norm is below this fraction of its first logged value has collapsed.
COLLAPSE_RATIO = 1e-3
_BETA = 0.9  # smoothing of the update-ratio baseline


@dataclass
class WeightState:
    """The update-ratio baseline, the first parameter norms, and when the gradients and weights first went bad."""

    baseline: float | None = None
    first_param_norm: list[float] | None = None
    first_bad_gradient: int = -1
    weights_bad_since: int = -1

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "first_param_norm": self.first_param_norm,
                "first_bad_gradient": self.first_bad_gradient, "weights_bad_since": self.weights_bad_since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = state.get("baseline")
        self.first_param_norm = state.get("first_param_norm")
        self.first_bad_gradient = int(state.get("first_bad_gradient", -1))
        self.weights_bad_since = int(state.get("weights_bad_since", -1))


def weight_symptoms(stats: Any, th: Thresholds, state: WeightState, traits: ModelTraits,
                    active: dict[tuple[str, str | None], int]) -> list[Symptom]:
    """``stats`` is a ``gradwatch._rules.HostStats``; ``active`` the symptoms holding at the previous step."""
    if state.first_bad_gradient < 0 and stats.any_nonfinite():
        state.first_bad_gradient = stats.step
    out = _exploding_updates(stats, th, state, traits, active)
    if stats.param_norm is not None:
        out += _nonfinite_weights(stats, state, traits)
        out += _collapsed(stats, state, traits, active)
    return out


def _exploding_updates(stats: Any, th: Thresholds, state: WeightState, traits: ModelTraits,
                       active: dict[tuple[str, str | None], int]) -> list[Symptom]:
    ratio = stats.update_ratio
    if ratio is None:
        return []
    finite = ratio[np.isfinite(ratio) & (ratio > 0)]
    if finite.size == 0:
        return []
    median = float(np.median(finite))
    baseline = state.baseline
    jump = baseline is not None and baseline > 0 and median > th.update_jump_factor * baseline
    over = median > th.update_ratio_ceiling
    if not (over or jump):
        state.baseline = median if baseline is None else _BETA * baseline + (1 - _BETA) * median
        return []
    top = int(np.nanargmax(np.where(np.isfinite(ratio), ratio, -np.inf)))
    why = (f"over the ceiling {th.update_ratio_ceiling:g}" if over
           else f"{median / float(baseline or 1.0):.0f}x its running baseline {float(baseline or 0.0):.2g}")
    remedy = traits.exploding_remedy(clipping=False, updates=True)
    threshold = th.update_ratio_ceiling if over else th.update_jump_factor * float(baseline or 0.0)
    return [Symptom.described(
        "exploding", None, stats.step, median, threshold, "error", since=active.get(("exploding", None), stats.step),
        evidence=(f"Exploding updates at step {stats.step}: the optimizer's last step moved the weights by a median "
                  f"{median:.2g} of their norm over {finite.size} layers ({why}); largest at layer "
                  f"'{stats.names[top]}' ({float(ratio[top]):.2g})."),
        detail="The gradient norm can stay bounded under an adaptive optimizer (Adam normalises each entry) while "
               "its updates explode.",
        cause=remedy.cause, advice=remedy.advice)]


def _nonfinite_weights(stats: Any, state: WeightState, traits: ModelTraits) -> list[Symptom]:
    bad = ~np.isfinite(stats.param_norm)
    if not bad.any():
        state.weights_bad_since = -1
        return []
    if state.weights_bad_since < 0:
        state.weights_bad_since = stats.step
    names = [stats.names[int(i)] for i in np.flatnonzero(bad)]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    origin = (f"; the gradients first went non-finite at step {state.first_bad_gradient}, and the optimizer applied "
              "them" if state.first_bad_gradient >= 0 else "")
    remedy = traits.nonfinite_remedy()
    return [Symptom.described(
        "nonfinite", None, stats.step, math.nan, math.inf, "error", since=state.weights_bad_since,
        evidence=f"The weights of {len(names)} layer(s) are non-finite since step {state.weights_bad_since} "
                 f"({shown}){origin}.",
        detail="Every output of the model is now NaN: restore a checkpoint from before that step.",
        cause=remedy.cause, advice=remedy.advice)]


def _collapsed(stats: Any, state: WeightState, traits: ModelTraits,
               active: dict[tuple[str, str | None], int]) -> list[Symptom]:
    norms = stats.param_norm
    if state.first_param_norm is None:
        state.first_param_norm = [float(x) for x in norms]
        return []
    first = np.asarray(state.first_param_norm, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        collapsed = np.isfinite(norms) & (first > 0) & (norms < COLLAPSE_RATIO * first)
    if not collapsed.any():
        return []
    remedy = traits.vanishing_remedy()
    out = []
    for i in np.flatnonzero(collapsed):
        name = stats.names[int(i)]
        out.append(Symptom.described(
            "vanishing", name, stats.step, float(norms[i]), COLLAPSE_RATIO * float(first[i]), "warning",
            since=active.get(("vanishing", name), stats.step),
            evidence=(f"The weights of layer '{name}' collapsed toward zero: parameter norm {float(norms[i]):.2e}, "
                      f"{float(norms[i]) / float(first[i]):.1e}x its first logged value {float(first[i]):.2e}."),
            detail="Weight decay pulls weights to zero while a gradient too small to hold them up reaches them.",
            cause=remedy.cause, advice=remedy.advice))
    return out
