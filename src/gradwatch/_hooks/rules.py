"""Host side of the hooks: per-module statistics, the ``saturated`` and ``dead`` rules, and the NaN origin.

Pure functions over one step's host values (a float64 numpy vector in the order the hooks recorded them) and the
host-side record of which forward call recorded what; the only state is ``ActivationState``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._symptoms import Symptom
from .._thresholds import Thresholds
from .activations import OutputKind

__all__ = ["ActStats", "ActivationState", "Call", "Origin", "activation_symptoms", "grad_out_norms", "locate_origin",
           "module_stats"]


@dataclass(slots=True)
class Call:
    """One forward call of a hooked module: handles (positions in the step's values) of what its hook recorded.

    Attributes:
        module: index of the module in the probe's module list.
        stats: handles of ``output_stats()``'s values, when sampled.
        numel, units: size of the summarised output, and its number of units (entries per sample).
        inputs, outputs: handles of the finiteness flags of its floating-point inputs and outputs.
        in_slots, out_slots: backward slots (one per tensor) of its inputs and outputs that require a gradient.
    """

    module: int
    stats: list[int] = field(default_factory=list)
    numel: int = 0
    units: int = 0
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    in_slots: list[int] = field(default_factory=list)
    out_slots: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ActStats:
    """Statistics of a module's outputs over one step (every call of the module pooled)."""

    mean: float
    std: float
    zero_frac: float
    saturated_frac: float | None = None
    dead_frac: float | None = None


def module_stats(calls: Sequence[Call], v: np.ndarray, kinds: Sequence[OutputKind | None]) -> dict[int, ActStats]:
    """Pool each module's calls: mean, population std, fraction of exact zeros, saturated and dead fractions."""
    per: dict[int, list[tuple[float, ...]]] = {}
    for c in calls:
        if c.stats:
            per.setdefault(c.module, []).append(_call_row(c, v[c.stats], kinds[c.module]))
    return {i: _pooled(rows, kinds[i]) for i, rows in per.items()}


def _call_row(c: Call, vals: np.ndarray, kind: OutputKind | None) -> tuple[float, ...]:
    """One call's values: n, sum, sum of squares, centred sum of squares, nonzero, saturated, units, alive."""
    j = 4
    sat = alive = 0.0
    if kind is not None and kind.band is not None:
        sat, j = float(vals[j]), j + 1
    if kind is not None and kind.relu_like:
        alive = float(vals[j])
    return (c.numel, float(vals[0]), float(vals[1]) ** 2, float(vals[2]) ** 2, float(vals[3]), sat, c.units, alive)


def _pooled(rows: Sequence[tuple[float, ...]], kind: OutputKind | None) -> ActStats:
    """A module's statistics from the rows of its calls (``_call_row()``)."""
    n, s, q, _, nz, sat, units, alive = (sum(col) for col in zip(*rows, strict=True))
    mean = s / n
    # Pooled variance: each call's centred sum of squares plus its mean's offset from the pooled mean.
    var = sum(r[3] + r[0] * (r[1] / r[0] - mean) ** 2 for r in rows) / n
    bad = math.nan if not math.isfinite(q) else None  # fractions of a non-finite output mean nothing
    saturating = kind is not None and kind.band is not None
    relu_like = kind is not None and kind.relu_like
    return ActStats(
        mean=mean, std=math.sqrt(var) if not math.isnan(var) else math.nan,
        zero_frac=bad if bad is not None else 1.0 - nz / n,
        saturated_frac=(bad if bad is not None else sat / n) if saturating else None,
        dead_frac=(bad if bad is not None else 1.0 - alive / units) if relu_like and units else None,
    )


def grad_out_norms(calls: Sequence[Call], events: Sequence[tuple[int, int]], v: np.ndarray) -> dict[int, float]:
    """L2 norm of the gradient with respect to each module's outputs (all its calls and outputs together)."""
    sq: dict[int, float] = {}
    for slot, h in events:
        sq[slot] = sq.get(slot, 0.0) + float(v[h]) ** 2
    slots: dict[int, set[int]] = {}
    for c in calls:
        slots.setdefault(c.module, set()).update(s for s in c.out_slots if s in sq)
    return {i: math.sqrt(sum(sq[s] for s in ss)) for i, ss in slots.items() if ss}


# ---------------------------------------------------------------------------------------------- saturated and dead
@dataclass
class ActivationState:
    """Consecutive sampled steps each (kind, module) spent over its threshold, and since when."""

    count: dict[tuple[str, str], int] = field(default_factory=dict)
    since: dict[tuple[str, str], int] = field(default_factory=dict)
    active: set[tuple[str, str]] = field(default_factory=set)

    def state_dict(self) -> dict[str, Any]:
        return {"count": [[k, m, n] for (k, m), n in self.count.items()],
                "since": [[k, m, s] for (k, m), s in self.since.items()],
                "active": [[k, m] for k, m in sorted(self.active)]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = {(k, m): int(n) for k, m, n in state["count"]}
        self.since = {(k, m): int(s) for k, m, s in state["since"]}
        self.active = {(k, m) for k, m in state["active"]}


_REMEDIES = {
    "saturated": ("pre-activations too large (weights initialised at too large a scale, inputs not normalised, or a "
                  "learning rate that drove the weights up)",
                  "Xavier/Glorot initialisation, batch or layer normalisation before the activation, a lower learning "
                  "rate, or ReLU-family activations (ReLU, LeakyReLU, GELU) that do not saturate"),
    "dead": ("pre-activations pushed below zero for every input (large negative biases, a learning rate too high, or "
             "poor initialisation)",
             "LeakyReLU, ELU or GELU, He initialisation with zero biases, batch normalisation before the activation, "
             "or a lower learning rate"),
}


def activation_symptoms(
    step: int, stats: Mapping[str, ActStats], types: Mapping[str, str], th: Thresholds, state: ActivationState
) -> tuple[list[Symptom], list[Symptom]]:
    """``saturated`` and ``dead`` symptoms of one sampled step. Returns ``(symptoms, onsets)``."""
    symptoms, onsets = [], []
    for name, s in stats.items():
        for kind, frac, limit in (("saturated", s.saturated_frac, th.saturated_frac),
                                  ("dead", s.dead_frac, th.dead_frac)):
            if frac is None:
                continue
            key = (kind, name)
            if not frac >= limit:  # NaN never fires
                state.count.pop(key, None)
                state.since.pop(key, None)
                state.active.discard(key)
                continue
            n = state.count[key] = state.count.get(key, 0) + 1
            since = state.since.setdefault(key, step)
            if n < th.activation_patience:
                continue
            if kind == "saturated":
                what = (f"Saturated activations at '{name}' ({types[name]}) since step {since}: {frac:.0%} of its "
                        f"outputs sit in the flat region (local derivative below 10% of its peak) for {n} sampled "
                        "steps, so almost no gradient passes through.")
            else:
                what = (f"Dead units at '{name}' ({types[name]}) since step {since}: {frac:.0%} of its units output "
                        f"zero for the whole batch for {n} sampled steps; they pass no gradient and stop learning.")
            cause, advice = _REMEDIES[kind]
            sym = Symptom.described(kind, name, step, float(frac), float(limit), "warning", since=since,
                                    evidence=what, cause=cause, advice=advice)
            symptoms.append(sym)
            if key not in state.active:
                state.active.add(key)
                onsets.append(sym)
    return symptoms, onsets


# ---------------------------------------------------------------------------------------------- NaN origin
@dataclass(frozen=True)
class Origin:
    """Where a non-finite value first appeared: ``where`` is ``(module, "forward" | "backward")`` or ``None`` when
    no module made it (it came in with the inputs); ``what`` is ``"NaN"`` or ``"Inf"``."""

    where: tuple[str, str] | None
    what: str
    message: str


def _codes(v: np.ndarray) -> np.ndarray:
    """0 finite, 1 Inf, 2 NaN, per value (a flag is a norm: NaN if any NaN, else Inf if any Inf)."""
    return np.where(np.isnan(v), 2, np.where(np.isinf(v), 1, 0))


_WHAT = {1: "Inf", 2: "NaN"}


def locate_origin(
    calls: Sequence[Call], events: Sequence[tuple[int, int]], v: np.ndarray, names: Sequence[str],
    types: Sequence[str], bad_layers: Sequence[str] = (), param_norm: Mapping[str, float] | None = None,
) -> Origin | None:
    """The first module whose output turned non-finite while its inputs were not (forward), else, if the forward
    pass was clean, the first in backward order whose input gradient turned non-finite while its output gradient
    was not. A NaN made from an Inf counts as new (Inf entering, NaN leaving). ``None`` without flags."""
    flagged = [c for c in calls if c.outputs]
    if not flagged:
        return None
    codes = _codes(v)
    out_code = [int(codes[c.outputs].max()) for c in flagged]
    in_code = [int(codes[c.inputs].max()) if c.inputs else 0 for c in flagged]
    made = [k for k in range(len(flagged)) if out_code[k] > in_code[k]]
    if made:
        return _forward_origin([flagged[k] for k in made], [out_code[k] for k in made], in_code[made[0]], names,
                               types, param_norm)
    if any(out_code):
        return _input_origin(flagged, out_code, names)
    return _backward_origin(flagged, events, codes, names, types, bad_layers)


def _input_origin(flagged: Sequence[Call], out_code: Sequence[int], names: Sequence[str]) -> Origin:
    """No module made the bad value: it came in with the inputs of the first call whose output is not finite."""
    k = next(k for k in range(len(flagged)) if out_code[k])
    return Origin(None, _WHAT[out_code[k]],
                  f"Origin: the {_WHAT[out_code[k]]} was already in the inputs of module '{names[flagged[k].module]}', "
                  "the first to see it: bad input data, or a value made outside every module.")


def _forward_origin(
    made: Sequence[Call], made_code: Sequence[int], first_in_code: int, names: Sequence[str], types: Sequence[str],
    param_norm: Mapping[str, float] | None,
) -> Origin:
    """The origin in the forward pass: ``made`` are the calls whose output is worse than their inputs (in forward
    order, at least one), ``made_code`` their outputs' codes, ``first_in_code`` the first one's inputs' code."""
    name, what = names[made[0].module], _WHAT[made_code[0]]
    msg = (f"Origin: the {what} first appeared in the forward pass, in the output of module '{name}' "
           f"({types[made[0].module]}), whose inputs were {'finite' if first_in_code == 0 else 'free of NaN'}.")
    later_nan = next((j for j in range(1, len(made)) if made_code[j] == 2), None) if what == "Inf" else None
    if later_nan is not None:
        msg += f" The first NaN followed in '{names[made[later_nan].module]}'."
    pn = (param_norm or {}).get(name)
    if pn is not None and not math.isfinite(pn):
        msg += (" Its parameters were already non-finite, so the first bad value arose at an earlier step "
                "(nan_origin='every_step' checks every step).")
    return Origin((name, "forward"), what, msg)


@dataclass
class _SlotHistory:
    """What the backward pass did to each slot: its worst code, and the positions of its first event and of its
    first non-finite event."""

    code: dict[int, int] = field(default_factory=dict)
    fired: dict[int, int] = field(default_factory=dict)
    bad_at: dict[int, int] = field(default_factory=dict)


#: A backward-origin candidate: ((time, forward order), index in the flagged calls, code, "inputs" | "parameters").
_Candidate = tuple[tuple[float, int], int, int, str]


def _slot_history(events: Sequence[tuple[int, int]], codes: np.ndarray) -> _SlotHistory:
    history = _SlotHistory()
    for pos, (slot, h) in enumerate(events):
        code = int(codes[h])
        history.code[slot] = max(history.code.get(slot, 0), code)
        history.fired.setdefault(slot, pos)
        if code:
            history.bad_at.setdefault(slot, pos)
    return history


def _backward_candidate(k: int, call: Call, history: _SlotHistory, bad_layer: bool) -> _Candidate | None:
    """Call ``k`` as a candidate: its input gradients worse than its output's, or a non-finite parameter gradient
    (``bad_layer``) behind a finite output gradient; ``None`` when it is neither."""
    oc = max((history.code.get(s, 0) for s in call.out_slots), default=0)
    worse = [s for s in call.in_slots if history.code.get(s, 0) > oc]
    if worse:
        return (float(min(history.bad_at[s] for s in worse)), k), k, max(history.code[s] for s in worse), "inputs"
    if oc == 0 and bad_layer:
        t = min((history.fired[s] for s in call.out_slots if s in history.fired), default=math.inf)
        return (t + 0.5, k), k, 2, "parameters"
    return None


def _backward_origin(
    flagged: Sequence[Call], events: Sequence[tuple[int, int]], codes: np.ndarray, names: Sequence[str],
    types: Sequence[str], bad_layers: Sequence[str],
) -> Origin | None:
    history = _slot_history(events, codes)
    bad_layer_set = set(bad_layers)
    best: _Candidate | None = None
    for k, call in enumerate(flagged):
        cand = _backward_candidate(k, call, history, names[call.module] in bad_layer_set)
        if cand is not None and (best is None or cand[0] < best[0]):
            best = cand
    if best is None:
        return None
    _, k, code, how = best
    name = names[flagged[k].module]
    what = _WHAT[code] if how == "inputs" else "non-finite value"
    msg = (f"Origin: the forward pass was finite; the {what} first appeared in the backward pass, in the gradient "
           f"module '{name}' ({types[flagged[k].module]}) computes for its {how}, while the gradient of its output was "
           "finite (a custom autograd.Function's backward, or an op whose derivative is infinite there, such as sqrt "
           "or log at 0, or a torch.where that masks a NaN branch).")
    return Origin((name, "backward"), _WHAT.get(code, "NaN"), msg)
