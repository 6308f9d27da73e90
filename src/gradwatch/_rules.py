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
from ._spikes import SpikeState, spike_symptoms
from ._symptoms import Symptom
from ._thresholds import Thresholds

__all__ = ["HostStats", "RuleState", "evaluate"]


@dataclass
class HostStats:
    """One step's statistics on the host (float64 numpy arrays, one entry per layer)."""

    step: int
    names: Sequence[str]
    grad_norm: np.ndarray
    grad_max: np.ndarray
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

    def rms(self) -> np.ndarray:
        # No errstate needed (it costs more than the arithmetic): the divisor is at least 1, and a NaN or Inf norm
        # divides silently.
        return np.where(self.has_grad & (self.numel > 0), self.grad_norm / np.sqrt(np.maximum(self.numel, 1)), np.nan)


@dataclass
class RuleState:
    """What the rules remember between steps; plain Python and numpy, so it checkpoints as is."""

    n_layers: int
    vanish_count: np.ndarray = field(init=False)
    vanish_since: np.ndarray = field(init=False)
    baseline: float | None = None
    observed: int = 0
    jump_streak: int = 0
    active: dict[tuple[str, str | None], int] = field(default_factory=dict)
    spike: SpikeState = field(default_factory=SpikeState)

    def __post_init__(self) -> None:
        self.vanish_count = np.zeros(self.n_layers, dtype=np.int64)
        self.vanish_since = np.full(self.n_layers, -1, dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {
            "vanish_count": self.vanish_count.tolist(),
            "vanish_since": self.vanish_since.tolist(),
            "baseline": self.baseline,
            "observed": self.observed,
            "jump_streak": self.jump_streak,
            "active": [[k, layer, since] for (k, layer), since in self.active.items()],
            "spike": self.spike.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vanish_count = np.asarray(state["vanish_count"], dtype=np.int64)
        self.vanish_since = np.asarray(state["vanish_since"], dtype=np.int64)
        self.baseline = state["baseline"]
        self.observed = int(state["observed"])
        self.jump_streak = int(state["jump_streak"])
        self.active = {(k, layer): int(since) for k, layer, since in state["active"]}
        if "spike" in state:  # absent from checkpoints written before the spike rule existed
            self.spike.load_state_dict(state["spike"])


def evaluate(
    stats: HostStats, th: Thresholds, state: RuleState, traits: ModelTraits
) -> tuple[list[Symptom], list[Symptom]]:
    """Apply every rule to one step. Returns ``(symptoms, onsets)``: all symptoms holding at this step, and those of
    them that start a new episode (the ones worth an alert)."""
    symptoms = nonfinite_symptoms(stats, traits) + vanishing_symptoms(stats, th, state, traits)
    symptoms += exploding_symptoms(stats, th, state, traits)
    spikes = spike_symptoms(stats.step, stats.global_norm, stats.extras.get("gradwatch/loss"), th, state.spike)
    symptoms += [replace(s, since=state.active.get((s.kind, s.layer), s.step)) for s in spikes]
    now = {(s.kind, s.layer): (s.since if s.since is not None else s.step) for s in symptoms}
    onsets = [s for s in symptoms if (s.kind, s.layer) not in state.active]
    state.active = now
    return symptoms, onsets


def nonfinite_symptoms(stats: HostStats, traits: ModelTraits) -> list[Symptom]:
    out = []
    remedy = traits.nonfinite_remedy()
    for i in np.flatnonzero(stats.nonfinite):
        what = "NaN" if stats.nonfinite[i] == 1 else "Inf"
        name = stats.names[int(i)]
        out.append(Symptom.described(
            "nonfinite", name, stats.step, math.nan if what == "NaN" else math.inf, math.inf, "error",
            since=stats.step, evidence=f"{what} in the gradients of layer '{name}' at step {stats.step}.",
            cause=remedy.cause, advice=remedy.advice,
        ))
    return out


def vanishing_symptoms(stats: HostStats, th: Thresholds, state: RuleState, traits: ModelTraits) -> list[Symptom]:
    rms = stats.rms()
    usable = np.isfinite(rms)
    if not usable.any():
        state.vanish_count[:] = 0
        state.vanish_since[:] = -1
        return []
    strongest_i = int(np.argmax(np.where(usable, rms, -np.inf)))  # no NaN left: argmax, 5x cheaper than nanargmax
    strongest = float(rms[strongest_i])
    # The relative floor compares with the strongest layer; when that layer is exploding the comparison says nothing
    # about the others, so only the absolute floor applies then.
    relative = th.vanishing_ratio * strongest if stats.global_norm <= th.exploding_norm else 0.0
    floor = max(th.vanishing_rms, relative)
    starved = usable & (rms < floor)
    if not starved.any():  # the common step: no layer starved, nothing to count
        state.vanish_count.fill(0)
        state.vanish_since.fill(-1)
        return []
    state.vanish_count = np.where(starved, state.vanish_count + 1, 0)
    state.vanish_since = np.where(starved, np.where(state.vanish_since < 0, stats.step, state.vanish_since), -1)
    firing = np.flatnonzero(state.vanish_count >= th.vanishing_patience)
    if firing.size == 0:
        return []
    profile = _depth_profile(stats.names, rms, firing, strongest_i)
    remedy = traits.vanishing_remedy()
    strongest_name = stats.names[strongest_i]
    out = []
    for i in firing:
        name, value = stats.names[int(i)], float(rms[i])
        ratio = value / strongest if strongest > 0 else 0.0
        since = int(state.vanish_since[i])
        absolute = value < th.vanishing_rms
        threshold = th.vanishing_rms if absolute else th.vanishing_ratio * strongest
        out.append(Symptom.described(
            "vanishing", name, stats.step, value, float(threshold), "warning", since=since,
            evidence=(f"Vanishing gradients at layer '{name}' since step {since}: RMS {value:.2e} is {ratio:.1e}x the "
                      f"strongest layer ('{strongest_name}', {strongest:.2e})."),
            detail=profile, cause=remedy.cause, advice=remedy.advice,
        ))
    return out


def _depth_profile(names: Sequence[str], rms: np.ndarray, firing: np.ndarray, strongest_i: int) -> str:
    n = len(names)
    first, last = names[int(firing[0])], names[int(firing[-1])]
    weakest_i = int(firing[np.argmin(rms[firing])])
    if firing.size == n:
        where = f"all {n} layers starved: the whole network has stalled"
    else:
        side = "input" if firing.mean() < (n - 1) / 2 else "output"
        span = f"'{first}'" if firing.size == 1 else f"'{first}' to '{last}'"
        where = f"{firing.size} of {n} layers starved ({span}, on the {side} side, in registration order)"
    if rms[weakest_i] > 0:
        fall = f"the gradient RMS falls {rms[strongest_i] / rms[weakest_i]:.1e}x"
    else:
        fall = "the gradient RMS falls to exactly zero"
    return f"Depth profile: {where}; {fall} from '{names[strongest_i]}' to '{names[weakest_i]}'."


def exploding_symptoms(stats: HostStats, th: Thresholds, state: RuleState, traits: ModelTraits) -> list[Symptom]:
    """The ceiling and the jump judge the gradient the optimizer receives: the norm after the watcher's clipper
    (``clipped_norm``, which is the raw norm without one). A clipper that contains a blow-up silences the rule: the
    ceiling sees the clipped norm, and a step the clipper acted on is neither a jump nor part of the jump's baseline.
    The spike rule still sees the raw norm, and TensorBoard keeps both. Layers named are those over the ceiling
    before clipping: the culprits."""
    raw = stats.global_norm
    if math.isnan(raw) or stats.nonfinite.any():
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
