"""Host-side evaluation of one step: its unpacked values into ``HostStats``, the rules into symptoms.

Runs once a step's packed vector is on the host (``gradwatch._transport``). It reads the vector through the
step's ``Layout``, applies the gradient rules (``gradwatch._rules``) and the activation
probe's rules, and treats a transient fp16 loss-scaler overflow as the scaler's business (an event, no symptom).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._actions import AmpState
from ._advice import ModelTraits
from ._rules import HostStats, RuleState, evaluate
from ._stats import host_nonfinite_codes
from ._step import Record, amp_event, amp_persistent
from ._symptoms import Symptom
from ._thresholds import Thresholds

__all__ = ["Evaluation", "Evaluator"]

_NONE = np.empty(0)


@dataclass
class Evaluation:
    """What one step's host values say."""

    stats: HostStats
    symptoms: list[Symptom]
    onsets: list[Symptom]  # the symptoms that start at this step
    events: list[Symptom] = field(default_factory=list)  # history-only events (fp16 scaler overflows)
    probe_scalars: dict[str, float] = field(default_factory=dict)
    histograms: np.ndarray | None = None  # the step's histogram slice, for the dashboard


def host_stats(r: Record, names: Sequence[str], parts: dict[str, np.ndarray]) -> HostStats:
    """The step's per-layer statistics from its unpacked slices; the extras land in ``r.extra_values``."""
    sumsq, maxabs = parts["sumsq"], parts.get("max")  # no maxima on a step that logs nothing
    for tag, value in zip(r.extra_tags, parts.get("extras", np.empty(0)), strict=True):
        r.extra_values[tag] = float(value)
    stats = HostStats(
        step=r.step, names=names, grad_norm=np.sqrt(sumsq),
        grad_max=np.full(len(names), np.nan) if maxabs is None else maxabs, measured_max=maxabs is not None,
        nonfinite=host_nonfinite_codes(sumsq, maxabs), has_grad=np.asarray(r.has_grad, dtype=bool),
        numel=np.asarray(r.numel, dtype=np.int64), global_norm=float(parts["global_norm"][0]),
        clipped_norm=float(parts["clipped_norm"][0]), param_norm=parts.get("param_norm") if r.logged else None,
        update_ratio=parts.get("update_ratio"),  # None without an optimizer or unmeasured; NaN: a layer not updated
    )
    stats.extras = r.extra_values
    return stats


class Evaluator:
    """Rules over a step's host values; holds the rules' state across steps."""

    def __init__(self, names: Sequence[str], thresholds: Thresholds, traits: ModelTraits, probe: Any,
                 amp: AmpState, kinds: Sequence[str] | None = None, *, ratios: bool = False) -> None:
        self.names = list(names)
        self.thresholds = thresholds
        self.traits = traits
        # kinds: a lone input layer joins its stack's chain; ratios: the update ratios are the learning signal
        self.rules = RuleState(len(self.names), kinds=kinds, ratios=ratios)
        self.probe = probe  # the activation probe (gradwatch._hooks.probe), or None
        self.amp = amp  # the loss scaler's overflow state: its patience decides what is persistent
        self._sizes_of: tuple[list[bool], list[int]] | None = None  # what _size_arrays were made for
        self._size_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] = (_NONE, _NONE, _NONE)
        # The maxima a step that logs nothing did not measure (NaN) and its NaN/Inf codes (finite): read-only, shared.
        self._unmeasured = (np.full(len(self.names), np.nan), np.zeros(len(self.names), dtype=np.int64))
        for a in self._unmeasured:
            a.flags.writeable = False

    def __call__(self, r: Record) -> Evaluation:
        if r.host_vec is None:
            raise RuntimeError(f"step {r.step} is not on the host yet")  # an invariant of the transport
        parts = r.layout.unpack(r.host_vec)
        return self.judge(r, host_stats(r, self.names, parts), parts)

    def on_host(self, r: Record, sumsq: np.ndarray, global_norm: float) -> Evaluation:
        """A step that logs nothing, from its finite per-layer sums of squares on the host
        (``gradwatch._measure.Measure.on_host()``: no clipper, no hooks, no scaler)."""
        has_grad, numel, inv = self._sizes(r)
        nan, zeros = self._unmeasured
        stats = HostStats(
            step=r.step, names=self.names, grad_norm=np.sqrt(sumsq), grad_max=nan, measured_max=False,
            nonfinite=zeros, has_grad=has_grad, numel=numel, global_norm=global_norm, clipped_norm=global_norm,
            inv_sqrt_numel=inv, finite=True)
        stats.extras = r.extra_values
        return self.judge(r, stats, {})

    def _sizes(self, r: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``has_grad``, ``numel`` and ``1 / sqrt(numel)`` (NaN for a layer without a gradient) as arrays, made again
        only when which layers have a gradient, or their sizes, change: read-only, shared by the steps."""
        if self._sizes_of is None or self._sizes_of[0] != r.has_grad or self._sizes_of[1] != r.numel:
            has, numel = np.asarray(r.has_grad, dtype=bool), np.asarray(r.numel, dtype=np.int64)
            inv = np.where(has & (numel > 0), 1.0 / np.sqrt(np.maximum(numel, 1)), np.nan)
            for a in (has, numel, inv):
                a.flags.writeable = False
            self._sizes_of, self._size_arrays = (list(r.has_grad), list(r.numel)), (has, numel, inv)
        return self._size_arrays

    def judge(self, r: Record, stats: HostStats, parts: dict[str, np.ndarray]) -> Evaluation:
        """The rules over the step's host statistics (``parts``: its other unpacked slices)."""
        out = Evaluation(stats=stats, symptoms=[], onsets=[], histograms=parts.get("histograms"))
        persistent = r.amp_overflow and r.amp_persistent  # decided at the step (gradwatch._actions.AmpState)
        if r.amp_overflow and not persistent:
            out.events.append(amp_event(r))  # the scaler's business: it skips this step; the rules do not see it
        else:
            out.symptoms, out.onsets = evaluate(stats, self.thresholds, self.rules, self.traits)
            if persistent:
                out.symptoms = [amp_persistent(s, r) if s.kind == "nonfinite" else s for s in out.symptoms]
                out.onsets = [amp_persistent(s, r) if s.kind == "nonfinite" else s for s in out.onsets]
        if r.probe is not None and self.probe is not None:
            out.symptoms, out.onsets, out.probe_scalars = self.probe.process(r.probe, parts.get("probe", _NONE),
                                                                             out.symptoms,
                                                                             out.onsets, stats)
        return out
