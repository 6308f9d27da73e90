"""Fan-out of an evaluated step: scalars, alerts, histograms and figures to the sinks; warnings and log lines.

A sink that fails (disk full, a closed writer) is reported once and dropped: training goes on. Every call to a sink
goes through :meth:`Fanout.safe`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

from ._dashboard import DashboardLogger
from ._errors import GradWatchWarning
from ._evaluate import Evaluation
from ._sinks import Sink
from ._step import Record, step_scalars
from ._symptoms import Symptom

__all__ = ["SYMPTOM_KINDS", "Fanout", "step_values"]

logger = logging.getLogger("gradwatch")

#: The gradient rules' symptom kinds: counted (``gradwatch/symptoms/<kind>``) on every logged step.
SYMPTOM_KINDS: tuple[str, ...] = ("nonfinite", "vanishing", "exploding", "spike")


def step_values(r: Record, ev: Evaluation, tags: list[str], kinds: Sequence[str]) -> dict[str, float]:
    """The scalars one step writes: per-layer and global values and the extras on logged steps, the probe's, the AMP
    scale and overflow count, and the symptom counts (on logged steps and whenever a symptom holds)."""
    scalars: dict[str, float] = {}
    if r.logged:
        scalars.update(step_scalars(ev.stats, tags))
        scalars.update(r.extra_values)
    scalars.update(ev.probe_scalars)
    if r.amp and (r.logged or r.amp_overflow):
        scalars["gradwatch/amp/scale"] = r.extra_values["gradwatch/amp/scale"]
        scalars["gradwatch/amp/overflows"] = float(r.amp_overflows)
    if r.logged or ev.symptoms:
        counts = dict.fromkeys(kinds, 0.0)
        for s in ev.symptoms:
            counts[s.kind] = counts.get(s.kind, 0.0) + 1
        scalars.update({f"gradwatch/symptoms/{k}": c for k, c in counts.items()})
    return scalars


def alerts_of(ev: Evaluation) -> list[Symptom]:
    """What a step writes as alerts: every non-finite symptom, and the other symptoms when they start."""
    onset_ids = {id(s) for s in ev.onsets}
    return [s for s in ev.symptoms if s.kind == "nonfinite" or id(s) in onset_ids]


class Fanout:
    """The sinks of one watcher, the dashboard's extra outputs, and what is said on the console."""

    def __init__(self, sinks: Sequence[Sink], dashboard: DashboardLogger, *, on_nonfinite: str, on_spike: str,
                 speaks: bool = True) -> None:
        self.sinks: list[Sink] = list(sinks)
        self.dashboard = dashboard
        self.on_nonfinite = on_nonfinite
        self.on_spike = on_spike
        self.speaks = speaks  # False on the ranks other than zero: one warning per job, not one per rank

    def write(self, r: Record, ev: Evaluation, scalars: dict[str, float]) -> None:
        """Write one evaluated step to every sink."""
        alerts = alerts_of(ev)
        for sink in list(self.sinks):  # a copy: a failing sink removes itself
            self.safe(sink, "write_scalars", r.step, scalars)
            if alerts:
                self.safe(sink, "write_alerts", r.step, alerts)
        self.dashboard.host_part(r.step, ev.histograms, ev.stats, ev.symptoms, scalars, list(self.sinks), self.safe)

    def flush(self) -> None:
        for s in list(self.sinks):
            self.safe(s, "flush")

    def close(self) -> None:
        for s in list(self.sinks):
            self.safe(s, "close")

    def safe(self, sink: Sink, method: str, *args: Any) -> None:
        """Call ``sink.method(*args)``; a sink that fails is reported once and dropped."""
        try:
            getattr(sink, method)(*args)
        except Exception as exc:  # a diagnostics sink must never stop training
            if method == "close":
                return
            warnings.warn(f"gradwatch: sink {sink!r} failed in {method} ({exc!r}); it is disabled from now on.",
                          GradWatchWarning, stacklevel=3)
            if sink in self.sinks:
                self.sinks.remove(sink)

    def announce(self, step: int, ev: Evaluation) -> None:
        """Warnings for spikes and non-finite gradients, one log line per kind of symptom that starts."""
        if not self.speaks:
            return
        spikes = self._warn_spikes(ev.symptoms)
        self._warn_nonfinite(step, [s for s in ev.symptoms if s.kind == "nonfinite"])
        by_kind: dict[str, list[Symptom]] = {}
        for s in ev.onsets:
            if s.kind != "nonfinite" and not (s.kind == "spike" and spikes):  # warned about above, every one of them
                by_kind.setdefault(s.kind, []).append(s)
        for kind, group in by_kind.items():
            if len(group) == 1:
                logger.warning("gradwatch: %s", group[0].message)
            else:  # one message per kind and step: the first layer's full text, the others by name
                names = ", ".join(s.layer or "(model)" for s in group[1:])
                logger.warning("gradwatch: %s Also %s at: %s.", group[0].message, kind, names)

    def _warn_spikes(self, symptoms: Sequence[Symptom]) -> bool:
        """A warning for every spike (unless ``on_spike="ignore"``); whether there was one."""
        spikes = [s for s in symptoms if s.kind == "spike"] if self.on_spike != "ignore" else []
        for s in spikes:
            action = " The step was skipped." if self.on_spike == "skip" else ""
            warnings.warn(f"gradwatch: {s.message}{action}", GradWatchWarning, stacklevel=5)
        return bool(spikes)

    def _warn_nonfinite(self, step: int, nonfinite: list[Symptom]) -> None:
        if not nonfinite or self.on_nonfinite not in ("warn", "skip"):
            return
        what = ", ".join(f"{s.layer} ({'NaN' if math.isnan(s.value) else 'Inf'})" for s in nonfinite)
        action = " The step was skipped." if self.on_nonfinite == "skip" else ""
        warnings.warn(f"gradwatch: non-finite gradients at step {step} in {what}.{action} "
                      f"{nonfinite[0].explanation}", GradWatchWarning, stacklevel=5)
