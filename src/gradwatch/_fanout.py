"""Fan-out of an evaluated step: scalars, episode alerts, histograms and figures to the sinks; the console's lines.

A sink that fails (disk full, a closed writer) is reported once (a ``GradWatchWarning`` at the
user's line) and dropped: training goes on. Every call to a sink goes through ``Fanout.safe()``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from ._console import Console, set_verbosity
from ._dashboard import DashboardLogger
from ._episodes import QUIET_KINDS, Changes, EpisodeEvent, EpisodeTracker
from ._errors import warn_user
from ._evaluate import Evaluation
from ._history import claim_history
from ._hooks.probe import ACTIVATION_KINDS
from ._sinks import Sink
from ._step import Record, step_scalars

__all__ = ["SYMPTOM_KINDS", "Fanout", "step_values"]

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


class Fanout:
    """The sinks of one watcher, the dashboard's extra outputs, and what is said on the console.

    Every evaluated step's symptoms go through one ``EpisodeTracker``; the sinks' alerts
    (one per episode start and end) and the console's lines (``Console``) are rendered from
    its episodes.

    Args:
        on_nonfinite, on_spike: ``"ignore"`` keeps the kind off the console (it stays in the summary and the logs).
        speaks: ``False`` on the ranks other than zero: one console per job, not one per rank.
        verbose: the adapters' ``verbose=`` (``gradwatch._console.set_verbosity()``); ``None`` leaves the
            ``gradwatch`` logger's level as it is (``INFO`` unless set).
    """

    def __init__(self, sinks: Sequence[Sink], dashboard: DashboardLogger, *, on_nonfinite: str, on_spike: str,
                 speaks: bool = True, verbose: bool | int | None = None) -> None:
        self.sinks: list[Sink] = list(sinks)
        self.dashboard = dashboard
        self.on_nonfinite = on_nonfinite
        self.on_spike = on_spike
        self.speaks = speaks
        self.episodes = EpisodeTracker()
        self._shared = False  # whether the watcher's history reads these episodes (SymptomHistory.share)
        actions = (("nonfinite", "on_nonfinite", on_nonfinite), ("spike", "on_spike", on_spike))
        self.console = Console(silent=[*QUIET_KINDS, *(kind for kind, _, action in actions if action == "ignore")],
                               notes={kind: f"The step was skipped ({option}='skip')."
                                      for kind, option, action in actions if action == "skip"})
        self._changes: Changes | None = None
        if speaks:
            set_verbosity(verbose)

    def write(self, r: Record, ev: Evaluation, scalars: dict[str, float]) -> None:
        """Write one evaluated step to every sink: its scalars, and the episodes that start or end at it."""
        self._changes = changes = self._observe(r, ev)
        events = changes.events()
        for sink in list(self.sinks):  # a copy: a failing sink removes itself
            self.safe(sink, "write_scalars", r.step, scalars)
            if events:
                self._write_events(sink, r.step, events)
        self.dashboard.host_part(r.step, ev.histograms, ev.stats, ev.symptoms, scalars, list(self.sinks), self.safe)

    def quiet(self, step: int) -> None:
        """A step with nothing to write and no episode open: no sink is called; the episodes' clock moves on."""
        self.episodes.tick(step)
        self._changes = None

    def _observe(self, r: Record, ev: Evaluation) -> Changes:
        """The step's symptoms (and events) into the episodes. A logged step is conclusive (the weight rules run on
        those only). Not evaluated, so neither holding nor ending: the activation kinds on a step the probe did not
        sample (no probe scalars); every other kind on a step with non-finite gradients."""
        observed = [*ev.events, *ev.symptoms]  # as the watcher gives them to its history
        if not self._shared and not self.episodes.episodes():
            history = claim_history(observed)
            if history is not None:
                history.share(self.episodes)
                self._shared = True
        if any(s.kind == "nonfinite" for s in ev.symptoms):  # the other rules cannot judge NaN: they stay as they were
            unobserved: Collection[str] = {*self.episodes.open} - {"nonfinite"}
        else:
            unobserved = () if ev.probe_scalars else ACTIVATION_KINDS
        return self.episodes.observe(observed, r.step, conclusive=r.logged, unobserved=unobserved)

    def _write_events(self, sink: Sink, step: int, events: Sequence[EpisodeEvent]) -> None:
        """Episode events to a sink that takes them, else the symptoms that start episodes (``write_alerts``)."""
        if callable(getattr(sink, "write_episodes", None)):
            self.safe(sink, "write_episodes", step, events)
            return
        alerts = [s for e in events for s in e.symptoms]
        if alerts:
            self.safe(sink, "write_alerts", step, alerts)

    def flush(self) -> None:
        for s in list(self.sinks):
            self.safe(s, "flush")

    def close(self) -> None:
        """Write the episodes still open (with their last step), then close every sink."""
        open_events = self.episodes.closing()
        for sink in list(self.sinks):
            if open_events and callable(getattr(sink, "write_episodes", None)):
                self.safe(sink, "write_episodes", max(e.step for e in open_events), open_events)
            self.safe(sink, "close")

    def safe(self, sink: Sink, method: str, *args: Any) -> None:
        """Call ``sink.method(*args)``; a sink that fails is reported once (a warning at your line) and dropped."""
        try:
            getattr(sink, method)(*args)
        except Exception as exc:  # a diagnostics sink must never stop training
            if method == "close":
                return
            warn_user(f"gradwatch: sink {sink!r} failed in {method} ({exc!r}); it is disabled from now on.")
            if sink in self.sinks:
                self.sinks.remove(sink)

    def announce(self, step: int, ev: Evaluation) -> None:
        """The console's lines for the step ``write()`` just took (see ``gradwatch._console``)."""
        changes, self._changes = self._changes, None
        if not self.speaks or changes is None or changes.step != step:
            return
        self.console.speak(changes)
