"""The rules: from one step's host-side statistics and the running state, the symptoms.

Everything here runs on the host, on numpy arrays already moved off the device, with a handful of vectorised calls
per step whatever the number of layers; Python loops only over layers that fire.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._advice import ModelTraits, Remedy
from ._divergence import DivergenceState, divergence_symptoms
from ._roles import Chains
from ._spikes import SpikeState, spike_symptoms
from ._symptoms import Symptom
from ._thresholds import Thresholds
from ._vanishing import VanishingState, vanishing_symptoms
from ._weights import WeightState, weight_symptoms

__all__ = ["HostStats", "RuleState", "evaluate"]


@dataclass
class HostStats:
    """One step's statistics on the host (float64 numpy arrays, one entry per layer)."""

    step: int
    names: Sequence[str]
    grad_norm: np.ndarray
    grad_max: np.ndarray  # NaN where not measured (``measured_max`` False: a step that logs nothing)
    nonfinite: np.ndarray  # 0 finite, 1 NaN, 2 Inf
    has_grad: np.ndarray
    numel: np.ndarray
    global_norm: float
    clipped_norm: float
    param_norm: np.ndarray | None = None
    extras: dict[str, float] = field(default_factory=dict)
    #: Per layer: ||dw|| / ||w|| of the last optimizer step before this one (``watch(optimizer=...)``); ``None``
    #: without an optimizer attached, NaN for a layer the optimizer did not update.
    update_ratio: np.ndarray | None = None
    #: Whether ``grad_max`` was measured: on logged steps (and, on the CPU, on steps with non-finite gradients).
    measured_max: bool = True
    #: ``1 / sqrt(numel)`` per layer, NaN for a layer without a gradient, when the evaluator made it already.
    inv_sqrt_numel: np.ndarray | None = None
    #: Known to have every value finite (``nonfinite`` all zeros): the rules skip their NaN/Inf checks.
    finite: bool = False

    def any_nonfinite(self) -> bool:
        """Whether a layer's gradients hold a NaN or an Inf."""
        return not self.finite and bool(self.nonfinite.any())

    def rms(self) -> np.ndarray:
        """Per layer: the gradient RMS (``grad_norm / sqrt(numel)``), NaN for a layer without a gradient."""
        if self.inv_sqrt_numel is not None:
            rms: np.ndarray = self.grad_norm * self.inv_sqrt_numel
            return rms
        # No errstate needed (it costs more than the arithmetic): the divisor is at least 1, and a NaN or Inf norm
        # divides silently.
        return np.where(self.has_grad & (self.numel > 0), self.grad_norm / np.sqrt(np.maximum(self.numel, 1)), np.nan)


@dataclass
class RuleState:
    """What the rules remember between steps; plain Python and numpy, so it checkpoints as is."""

    n_layers: int
    #: The layers' kinds (module class names), which let a lone input or output layer join its stack's chain.
    kinds: Sequence[str] | None = None
    #: Whether the update ratios are measured (an optimizer attached): they are then the vanishing rule's learning
    #: signal, measured on the logged steps only; the rule holds its count over the steps without them.
    ratios: bool = False
    vanishing: VanishingState = field(init=False)
    chains: Chains | None = field(default=None, init=False)  # built from the names at the first step
    baseline: float | None = None
    observed: int = 0
    jump_streak: int = 0
    active: dict[tuple[str, str | None], int] = field(default_factory=dict)
    spike: SpikeState = field(default_factory=SpikeState)
    divergence: DivergenceState = field(default_factory=DivergenceState)
    weights: WeightState = field(default_factory=WeightState)

    def __post_init__(self) -> None:
        self.vanishing = VanishingState(self.n_layers)

    def chains_of(self, names: Sequence[str]) -> Chains:
        if self.chains is None:
            self.chains = Chains.of(names, self.kinds)
        return self.chains

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.vanishing.state_dict(),
            "baseline": self.baseline,
            "observed": self.observed,
            "jump_streak": self.jump_streak,
            "active": [[k, layer, since] for (k, layer), since in self.active.items()],
            "spike": self.spike.state_dict(),
            "divergence": self.divergence.state_dict(),
            "weights": self.weights.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vanishing.load_state_dict(state)
        self.baseline = state["baseline"]
        self.observed = int(state["observed"])
        self.jump_streak = int(state["jump_streak"])
        self.active = {(k, layer): int(since) for k, layer, since in state["active"]}
        if "spike" in state:  # absent from checkpoints written before the spike rule existed
            self.spike.load_state_dict(state["spike"])
        self.divergence.load_state_dict(state.get("divergence", {}))  # absent from older checkpoints
        self.weights.load_state_dict(state.get("weights", {}))


def evaluate(
    stats: HostStats, th: Thresholds, state: RuleState, traits: ModelTraits
) -> tuple[list[Symptom], list[Symptom]]:
    """Apply every rule to one step. Returns ``(symptoms, onsets)``: all symptoms holding at this step, and those of
    them that start a new episode (the ones worth an alert)."""
    symptoms = nonfinite_symptoms(stats, traits)
    held = state.ratios and stats.update_ratio is None  # the vanishing rule's signal was not measured: it holds
    if not held:
        symptoms += vanishing_symptoms(stats, th, state.vanishing, state.chains_of(stats.names), traits)
    symptoms += exploding_symptoms(stats, th, state, traits)
    symptoms += weight_symptoms(stats, th, state.weights, traits, state.active)
    symptoms += divergence_symptoms(stats.step, stats.extras.get("gradwatch/loss"), th, state.divergence, traits)
    spikes = spike_symptoms(stats.step, stats.global_norm, stats.extras.get("gradwatch/loss"), th, state.spike)
    symptoms += [replace(s, since=state.active.get((s.kind, s.layer), s.step)) for s in spikes]
    now = {(s.kind, s.layer): (s.since if s.since is not None else s.step) for s in symptoms}
    if held:  # its layers stay as they were
        now.update({key: since for key, since in state.active.items() if key[0] == "vanishing" and key not in now})
    onsets = [s for s in symptoms if (s.kind, s.layer) not in state.active]
    state.active = now
    return symptoms, onsets


def nonfinite_symptoms(stats: HostStats, traits: ModelTraits) -> list[Symptom]:
    if not stats.any_nonfinite():
        return []  # the common step: no remedy looked up
    bad = np.flatnonzero(stats.nonfinite)
    out = []
    remedy = traits.nonfinite_remedy()
    for i in bad:
        what = "NaN" if stats.nonfinite[i] == 1 else "Inf"
        name = stats.names[int(i)]
        out.append(Symptom.described(
            "nonfinite", name, stats.step, math.nan if what == "NaN" else math.inf, math.inf, "error",
            since=stats.step, evidence=f"{what} in the gradients of layer '{name}' at step {stats.step}.",
            cause=remedy.cause, advice=remedy.advice,
        ))
    return out


def exploding_symptoms(stats: HostStats, th: Thresholds, state: RuleState, traits: ModelTraits) -> list[Symptom]:
    """The ceiling and the jump judge the gradient the optimizer receives: the norm after the watcher's clipper
    (``clipped_norm``, which is the raw norm without one). A clipper that contains a blow-up silences the rule: the
    ceiling sees the clipped norm, and a step the clipper acted on is neither a jump nor part of the jump's baseline.
    The spike rule still sees the raw norm, and TensorBoard keeps both. Layers named are those over the ceiling
    before clipping: the culprits."""
    raw = stats.global_norm
    if math.isnan(raw) or stats.any_nonfinite():
        return []  # the nonfinite rule speaks for this step; the baseline ignores it
    g = raw if math.isnan(stats.clipped_norm) else stats.clipped_norm
    clipped = g < raw * (1 - 1e-6)
    # An infinite norm without a NaN/Inf entry is a float32 overflow of finite, huge gradients: exploding.
    over = g > th.exploding_norm
    if not over and (clipped or not _jump(g, th, state)):
        _learn(g, clipped, th, state)
        return []  # the common step: nothing to say, no text built
    norms = _Norms.of(stats, g, clipped, traits.exploding_remedy(clipping=clipped and over))
    out = _over_ceiling(stats, norms, th, state) if over else []
    if clipped:  # the clipper bounded this step: not a jump, and not the level the baseline should learn
        return out
    if _jump(g, th, state):
        state.jump_streak += 1
        if not out:
            out.append(_jump_symptom(stats, norms, th, state))
        if state.jump_streak > max(th.jump_warmup, 1):
            state.baseline, state.jump_streak = g, 0  # a lasting new level: accept it as the baseline
    else:
        _learn(g, clipped, th, state)
    return out


@dataclass(frozen=True)
class _Norms:
    """What every ``exploding`` message says: the norm judged (and the one before clipping), the largest layer."""

    g: float  # the global norm the rule judges (after the watcher's clipper)
    norm_text: str
    largest: str  # "largest in layer 'x' (1.2e+05 before clipping)"
    before: str  # " before clipping" when the clipper acted, else ""
    remedy: Remedy

    @classmethod
    def of(cls, stats: HostStats, g: float, clipped: bool, remedy: Remedy) -> _Norms:
        top = int(np.argmax(np.where(np.isnan(stats.grad_norm), -np.inf, stats.grad_norm)))
        before = " before clipping" if clipped else ""
        norm_text = f"global norm {g:.3g} after clipping (before: {stats.global_norm:.3g})" if clipped else \
            f"global norm {g:.3g}"
        largest = f"largest in layer '{stats.names[top]}' ({float(stats.grad_norm[top]):.3g}{before})"
        return cls(g, norm_text, largest, before, remedy)


def _over_ceiling(stats: HostStats, norms: _Norms, th: Thresholds, state: RuleState) -> list[Symptom]:
    """The model-wide symptom of a global norm over the ceiling, then one per layer whose own norm is over it."""
    cause, advice = norms.remedy
    out = [Symptom.described(
        "exploding", None, stats.step, norms.g, th.exploding_norm, "error",
        since=state.active.get(("exploding", None), stats.step), cause=cause, advice=advice,
        evidence=(f"Exploding gradients at step {stats.step}: {norms.norm_text} is over the ceiling "
                  f"{th.exploding_norm:.3g}; {norms.largest}."),
    )]
    for i in np.flatnonzero(~np.isnan(stats.grad_norm) & (stats.grad_norm > th.exploding_norm)):
        name, norm = stats.names[int(i)], float(stats.grad_norm[i])
        out.append(Symptom.described(
            "exploding", name, stats.step, norm, th.exploding_norm, "error",
            since=state.active.get(("exploding", name), stats.step), cause=cause, advice=advice,
            evidence=(f"Exploding gradients at layer '{name}' at step {stats.step}: norm {norm:.3g}{norms.before} is "
                      f"over the ceiling {th.exploding_norm:.3g}."),
        ))
    return out


def _jump_symptom(stats: HostStats, norms: _Norms, th: Thresholds, state: RuleState) -> Symptom:
    baseline = float(state.baseline or 0.0)
    return Symptom.described(
        "exploding", None, stats.step, norms.g, th.jump_factor * baseline, "warning",
        since=state.active.get(("exploding", None), stats.step), cause=norms.remedy.cause,
        advice=norms.remedy.advice,
        evidence=(f"Sudden jump in the gradient norm at step {stats.step}: {norms.norm_text} is "
                  f"{norms.g / baseline:.0f}x its running baseline {baseline:.3g}; {norms.largest}."),
        detail="A bad batch, a loss spike or a learning rate too high.",
    )


def _jump(g: float, th: Thresholds, state: RuleState) -> bool:
    """``g`` is a sudden jump over the running baseline (a baseline of exactly 0, no gradient at all, has no ratio)."""
    return (state.baseline is not None and state.baseline > 0 and state.observed >= th.jump_warmup
            and g > th.jump_factor * state.baseline)


def _learn(g: float, clipped: bool, th: Thresholds, state: RuleState) -> None:
    """A step that is no jump moves the baseline, unless the clipper bounded it or its norm is not finite."""
    if clipped or not math.isfinite(g):
        return
    state.jump_streak = 0
    b = th.baseline_beta
    state.baseline = g if state.baseline is None else b * state.baseline + (1 - b) * g
    state.observed += 1
