"""A compact record of every symptom seen: its episodes (``gradwatch._episodes``), and counts, first and last step
per (kind, layer); ``watcher.summary()`` renders the episodes.

One watcher's history and its fan-out (``gradwatch._fanout``) read the same episodes: the fan-out builds them (it
knows which steps are logged and which kinds were sampled) and hands its tracker to the history with
``SymptomHistory.share()``. The watcher gives both the same step's symptoms, the history first; the fan-out finds
the history that was just given exactly those symptom objects (``claim_history()``) and shares its tracker with it.
Until then, and for a history used on its own, the history builds its own episodes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any

from ._episodes import Episode, EpisodeTracker, advice_lines, episode_table, plural
from ._errors import ConfigurationError
from ._symptoms import Symptom

__all__ = ["ClipTally", "SymptomHistory", "SymptomSummary", "claim_history"]

_LAST = threading.local()  # .entry: (weakref to the history last extended in this thread, ids of its symptoms)


@dataclass
class SymptomSummary:
    """All occurrences of one kind of symptom at one layer (``layer=None``: model-wide)."""

    kind: str
    layer: str | None
    count: int
    first_step: int
    last_step: int
    message: str  # the most recent message
    first_message: str = ""  # the message when it was first seen

    def __str__(self) -> str:
        where = self.layer if self.layer is not None else "(model)"
        steps = f"step {self.first_step}" if self.first_step == self.last_step else \
            f"steps {self.first_step}-{self.last_step}"
        return f"{self.kind:<10} {where:<30} {self.count:>6}x  {steps}"


class SymptomHistory:
    """Accumulates symptoms as they come, one call per evaluated step: their episodes, and per (kind, layer) a count;
    memory grows with the episodes and the distinct (kind, layer) pairs, not with steps.

    Examples:
        >>> h = SymptomHistory()
        >>> h.extend([Symptom("vanishing", "fc", 3, 1e-9, 1e-7, "warning", "...", since=0)])
        >>> h.summaries()[0].first_step, h.episodes()[0].onset
        (3, 0)
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str | None], SymptomSummary] = {}
        self._own = EpisodeTracker()
        self._shared: EpisodeTracker | None = None  # the fan-out's, once shared
        self._pending: tuple[list[Symptom], int | None] | None = None  # the last step, until the fan-out claims it

    def extend(self, symptoms: Iterable[Symptom], step: int | None = None) -> None:
        """One evaluated step's symptoms (every one holding at it; none for a healthy step, which ends the open
        episodes). ``step``: the step's number; by default the symptoms' own, or the step after the last one seen."""
        symptoms = list(symptoms)
        self._observe_pending()
        if self._shared is None:
            self._pending = (symptoms, step)
            _LAST.entry = (weakref.ref(self), tuple(map(id, symptoms)))
        for s in symptoms:
            key = (s.kind, s.layer)
            entry = self._by_key.get(key)
            if entry is None:
                self._by_key[key] = SymptomSummary(s.kind, s.layer, 1, s.step, s.step, s.message, s.message)
            else:
                entry.count += 1
                entry.last_step = max(entry.last_step, s.step)
                entry.first_step = min(entry.first_step, s.step)
                entry.message = s.message

    def episodes(self, kind: str | None = None) -> list[Episode]:
        """Every episode so far (closed and still open), in the order detected, optionally of one kind."""
        return self.tracker.episodes(kind)

    @property
    def tracker(self) -> EpisodeTracker:
        """Where the episodes are: the fan-out's tracker once shared, else this history's own."""
        if self._shared is not None:
            return self._shared
        self._observe_pending()
        return self._own

    def share(self, tracker: EpisodeTracker) -> None:
        """Read the episodes from ``tracker`` from now on (the fan-out feeds it); what this history holds (restored
        from a checkpoint) moves into it first, if it is still empty."""
        self._pending = None  # the step the fan-out is about to observe itself
        if self._own.episodes() and not tracker.episodes():
            tracker.load_state_dict(self._own.state_dict())
        self._shared = tracker

    def _observe_pending(self) -> None:
        if self._pending is not None and self._shared is None:
            symptoms, step = self._pending
            self._pending = None
            self._own.observe(symptoms, step)

    def summaries(self, kind: str | None = None) -> list[SymptomSummary]:
        """Summaries in the order first seen, optionally of one kind."""
        return [e for e in self._by_key.values() if kind is None or e.kind == kind]

    def layers(self, kind: str) -> list[str]:
        """Names of the layers that showed ``kind`` (model-wide entries left out)."""
        return [e.layer for e in self._by_key.values() if e.kind == kind and e.layer is not None]

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def state_dict(self) -> dict[str, Any]:
        """Every summary as plain Python values (for checkpoints: ``torch.save`` and JSON alike), in the order first
        seen.

        Examples:
            >>> h = SymptomHistory()
            >>> h.extend([Symptom("spike", None, 7, 9.0, 3.0, "warning", "Spike.")])
            >>> restored = SymptomHistory()
            >>> restored.load_state_dict(h.state_dict())
            >>> restored.summaries() == h.summaries()
            True
        """
        return {"summaries": [list(astuple(e)) for e in self._by_key.values()],
                "episodes": self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict()`` returned, in place of what this history holds; symptoms seen from now on
        add to the restored counts."""
        rows = state.get("summaries") if isinstance(state, Mapping) else None
        if not isinstance(rows, (list, tuple)):
            raise ConfigurationError(f"SymptomHistory.load_state_dict expects {{'summaries': [...]}} as state_dict() "
                                     f"returns, got {state!r:.120}.")
        entries = [_summary(row) for row in rows]
        episodes = EpisodeTracker()
        if "episodes" in state:
            try:
                episodes.load_state_dict(state["episodes"])
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise ConfigurationError(f"SymptomHistory.load_state_dict: the episodes are not as state_dict() "
                                         f"returns them ({exc!r:.120}).") from None
        else:  # a checkpoint of a gradwatch without episodes: one per (kind, layer), its end unknown
            episodes.closed = [Episode(e.kind, "warning", [e.layer], e.first_step, e.first_step, e.last_step,
                                       steps=e.count, evidence=e.first_message) for e in entries]
        self._by_key = {(e.kind, e.layer): e for e in entries}
        self._pending = None
        if self._shared is not None:
            self._shared.load_state_dict(episodes.state_dict())
        else:
            self._own = episodes

    def format(self) -> str:
        """The episodes as a table (kind, layers, severity, onset, detection, last and end step, steps, peak), then
        the likely cause and what to try for each kind."""
        episodes = self.episodes()
        if not episodes:
            return "gradwatch: no symptoms."
        lines = [f"gradwatch: {plural(len(episodes), 'symptom episode')}", *episode_table(episodes)]
        lines += [f"  advice ({kind}): {text}" for kind, text in advice_lines(episodes).items()]
        return "\n".join(lines)


_SUMMARY_FIELDS = tuple(f.name for f in fields(SymptomSummary))


def _summary(row: Any) -> SymptomSummary:
    """One ``SymptomSummary`` from a row of ``SymptomHistory.state_dict()``, checked."""
    if not isinstance(row, (list, tuple)) or len(row) != len(_SUMMARY_FIELDS):
        raise ConfigurationError(f"SymptomHistory.load_state_dict: {row!r:.120} is not a summary "
                                 f"({', '.join(_SUMMARY_FIELDS)}).")
    kind, layer, count, first, last, message, first_message = row
    if not (isinstance(kind, str) and (layer is None or isinstance(layer, str)) and isinstance(message, str)
            and isinstance(first_message, str) and all(isinstance(n, int) for n in (count, first, last))):
        raise ConfigurationError(f"SymptomHistory.load_state_dict: {row!r:.120} is not a summary "
                                 f"({', '.join(_SUMMARY_FIELDS)}).")
    return SymptomSummary(kind, layer, count, first, last, message, first_message)


def claim_history(symptoms: Sequence[Symptom]) -> SymptomHistory | None:
    """The history last extended in this thread, if it was given exactly these symptom objects (the watcher extends
    its history with a step's symptoms right before its fan-out writes the same step); ``None`` otherwise."""
    entry = getattr(_LAST, "entry", None)
    _LAST.entry = None
    if entry is None:
        return None
    ref, ids = entry
    history = ref()
    return history if history is not None and ids == tuple(map(id, symptoms)) else None


@dataclass
class ClipTally:
    """How often the watcher's clipper acted, and the largest norm it held back: a contained explosion is silent in
    the rules (they judge the clipped norm), so the summary says what clipping hid.

    Examples:
        >>> t = ClipTally()
        >>> t.add(0, 250.0, 1.0); t.add(1, 0.5, 0.5)
        >>> print(t)
        clipping: active on 1 of 2 steps; the norm before clipping reached 250 (step 0)
    """

    steps: int = 0
    active: int = 0
    max_norm: float = 0.0
    max_step: int = -1

    def add(self, step: int, norm: float, clipped_norm: float) -> None:
        self.steps += 1
        if clipped_norm < norm * (1 - 1e-6):
            self.active += 1
            if not norm <= self.max_norm:  # also takes an infinite or NaN norm
                self.max_norm, self.max_step = norm, step

    def __str__(self) -> str:
        text = f"clipping: active on {self.active} of {self.steps} steps"
        if self.active:
            text += f"; the norm before clipping reached {self.max_norm:.3g} (step {self.max_step})"
        return text

    def state_dict(self) -> dict[str, float]:
        return {"steps": self.steps, "active": self.active, "max_norm": self.max_norm, "max_step": self.max_step}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        keys = ("steps", "active", "max_norm", "max_step")
        if not isinstance(state, Mapping) or any(k not in state for k in keys):
            raise ConfigurationError(f"ClipTally.load_state_dict expects the keys {', '.join(keys)} (what state_dict() "
                                     f"returns), got {state!r:.120}.")
        self.steps, self.active = int(state["steps"]), int(state["active"])
        self.max_norm, self.max_step = float(state["max_norm"]), int(state["max_step"])
