"""Symptom episodes: what every output of gradwatch renders.

The rules say, step by step, which symptoms hold (``gradwatch._rules``). An *episode* is one stretch of one kind of
symptom: it starts at the first step at which the kind holds anywhere in the model and ends at the first step at which
it holds nowhere. A NaN that reaches all 41 layers of a ResNet is one episode, not 41.

An ``Episode`` holds the facts once: the kind; the layers at detection (in depth order) and those that joined
later; the onset (the first step of evidence, the symptoms' ``since``); the detection step; the last step at which it
held; the end step; the peak evidence; the likely cause and what to try. The console (``gradwatch._console``), the
TensorBoard alert text and its records (``gradwatch._sinks``), ``watcher.summary()`` (``gradwatch._history``),
``gradwatch report`` (``gradwatch._report``) and ``gradwatch demo`` all render these records, so that the onset
step and the layers read the same everywhere.

``EpisodeTracker`` builds them on the host from each step's symptoms; its memory grows with the number of episodes
(capped per kind), not with the steps.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ._symptoms import Symptom, compose_message, json_float, remedy_text

__all__ = [
    "COLUMNS",
    "QUIET_KINDS",
    "Changes",
    "Episode",
    "EpisodeEvent",
    "EpisodeTracker",
    "advice_lines",
    "episode_table",
    "fmt_number",
    "group_layers",
    "kind_label",
    "plural",
]

EventKind = Literal["start", "end", "open"]

#: Closed episodes kept per kind; later ones are merged into the last kept one (``repeats`` counts them).
MAX_CLOSED_PER_KIND = 200

#: Kinds that are events, not symptoms (the fp16 loss scaler's overflows): their episodes are kept for the summary,
#: never said on the console nor written as alerts.
QUIET_KINDS = frozenset({"amp_overflow"})

#: The columns of the episode table, shared by ``watcher.summary()`` and ``gradwatch report``.
COLUMNS: tuple[str, ...] = ("kind", "layers", "severity", "since", "detected", "last", "ended", "steps", "peak")

_LABELS = {
    "nonfinite": "non-finite gradients",
    "vanishing": "vanishing gradients",
    "exploding": "exploding gradients",
    "spike": "spike",
    "divergence": "divergence",
    "saturated": "saturated activations",
    "dead": "dead units",
    "amp_overflow": "fp16 loss-scaler overflows",
}

#: Kinds whose evidence is worse the smaller it is (a gradient RMS, a loss scale).
_LOW_IS_WORSE = frozenset({"vanishing", "amp_overflow"})


def kind_label(kind: str) -> str:
    """A kind as people say it.

    Examples:
        >>> kind_label("nonfinite"), kind_label("something_new")
        ('non-finite gradients', 'something_new')
    """
    return _LABELS.get(kind, kind)


def fmt_number(x: float | int | str | None) -> str:
    """A number for people: three significant digits, ``NaN``, ``Inf``; ``-`` for ``None``.

    Examples:
        >>> fmt_number(116120869549538852864.0), fmt_number(0.30592), fmt_number(float("nan")), fmt_number(12)
        ('1.16e+20', '0.306', 'NaN', '12')
    """
    if x is None:
        return "-"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "Inf" if f > 0 else "-Inf"
    return f"{f:.3g}"


def plural(n: int, word: str) -> str:
    """``"1 step"``, ``"7 steps"``.

    Examples:
        >>> plural(1, "step"), plural(7, "step")
        ('1 step', '7 steps')
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ---------------------------------------------------------------------------------------------------- layer groups
def group_layers(layers: Sequence[str | None]) -> str:
    """The layers of an episode as a compact depth range or group, from their names in depth order.

    Consecutive layers of one numbered family (``encoder.layers.3.linear1``: family ``encoder.layers``, number 3) form
    a range (``encoder.layers.0–7``); other layers stand by name; beyond four groups, the first and the last are shown
    (``conv1 … fc``). The count follows when there are several. ``None`` (a model-wide symptom) alone is
    ``"model-wide"``.

    Examples:
        >>> group_layers([f"encoder.layers.{i}.linear{j}" for i in range(8) for j in (1, 2)])
        'encoder.layers.0–7 (16 layers)'
        >>> group_layers(["input", *[f"hidden.{i}" for i in range(7)]])
        'input, hidden.0–6 (8 layers)'
        >>> group_layers([None, "rnn"]), group_layers([None]), group_layers(["fc"])
        ('rnn', 'model-wide', 'fc')
    """
    named = list(dict.fromkeys(x for x in layers if x is not None))
    if not named:
        return "model-wide"
    groups: list[_Group] = []
    for name in named:
        family, number, tail = _split(name)
        last = groups[-1] if groups else None
        if last is not None and family is not None and last.family == family and last.last <= number:
            last.add(name, number, tail)
        else:
            groups.append(_Group(name, family, number, tail))
    parts = [g.render() for g in groups]
    text = ", ".join(parts) if len(parts) <= 4 else f"{parts[0]} … {parts[-1]}"
    return text if len(named) == 1 else f"{text} ({len(named)} layers)"


@dataclass
class _Group:
    first_name: str
    family: str | None
    first: int
    tail: str
    last: int = -1
    count: int = 1
    tails: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.last = self.first
        self.tails = {self.tail}

    def add(self, name: str, number: int, tail: str) -> None:
        self.last, self.count = number, self.count + 1
        self.tails.add(tail)

    def render(self) -> str:
        if self.count == 1 or self.family is None:
            return self.first_name
        head = f"{self.family}." if self.family else ""
        numbers = str(self.first) if self.first == self.last else f"{self.first}–{self.last}"
        tail = next(iter(self.tails)) if len(self.tails) == 1 else ""
        return f"{head}{numbers}" + (f".{tail}" if tail else "")


def _split(name: str) -> tuple[str | None, int, str]:
    """``(family, number, tail)`` at the first all-digit component of a dotted name; ``(None, 0, name)`` without."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i]), int(part), ".".join(parts[i + 1:])
    return None, 0, name


# ---------------------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """One stretch of one kind of symptom (see the module's docstring).

    Attributes:
        kind: the symptoms' kind.
        severity: ``"error"`` if any of its symptoms was an error, else ``"warning"``.
        layers: the layers at detection, in depth order; ``None`` for a model-wide symptom (the global norm, the loss).
        onset: the first step of evidence: the earliest ``since`` of the symptoms at detection.
        detected: the step at which a rule first reported it (after the rule's patience, for sustained kinds).
        last: the last step at which it held.
        end: the first step at which it held nowhere; ``None`` while it holds.
        steps: how many steps it held.
        peak: the most extreme evidence (largest, or smallest for a vanishing RMS; NaN for a NaN).
        peak_step: the step of ``peak``.
        threshold: the threshold crossed, at detection.
        evidence: one sentence with the numbers, at detection.
        cause, advice, detail, origin, origin_note: as in ``Symptom``, at detection.
        later: ``(layer, step)`` of the layers that joined after detection (a model-wide symptom joining is no layer).
        repeats: how many episodes this record stands for (more than one once a kind's closed episodes are capped).
        absent_since: while open, the first step since its last at which it held nowhere, until a conclusive step
            ends it there (see ``EpisodeTracker.observe()``).

    Examples:
        >>> from gradwatch import Symptom
        >>> s = Symptom.described("nonfinite", "fc", 7, float("nan"), 0.0, "error", since=7,
        ...                       evidence="NaN in the gradients of layer 'fc' at step 7.")
        >>> e = Episode.begin(7, [s])
        >>> e.key, e.where, e.onset, e.open
        ('nonfinite@7', 'fc', 7, True)
        >>> record = e.to_record("start", 7)
        >>> Episode.from_record(record).to_record("start", 7) == record
        True
    """

    kind: str
    severity: str
    layers: list[str | None]
    onset: int
    detected: int
    last: int
    end: int | None = None
    steps: int = 1
    peak: float = math.nan
    peak_step: int = -1
    threshold: float = math.nan
    evidence: str | None = None
    cause: str | None = None
    advice: str | None = None
    detail: str | None = None
    origin: tuple[str, str] | None = None
    origin_note: str | None = None
    later: list[tuple[str | None, int]] = field(default_factory=list)
    repeats: int = 1
    absent_since: int | None = None  # open, but held nowhere since this step (not yet a conclusive step)

    @classmethod
    def begin(cls, step: int, symptoms: Sequence[Symptom]) -> Episode:
        """The episode that ``symptoms`` (of one kind, holding at ``step``) start."""
        first = symptoms[0]
        told = next((s for s in symptoms if s.cause is not None or s.advice is not None), first)
        origin = next((s for s in symptoms if s.origin is not None), None)
        onset = min(step, *(s.since if s.since is not None else s.step for s in symptoms))
        peak, peak_step = _peak_of(first.kind, symptoms, math.nan, -1, step)
        return cls(
            kind=first.kind, severity=_severity(symptoms, "warning"),
            layers=list(dict.fromkeys(s.layer for s in symptoms)), onset=int(onset), detected=step, last=step,
            peak=peak, peak_step=peak_step, threshold=first.threshold, evidence=_evidence(symptoms, step),
            cause=told.cause, advice=told.advice, detail=told.detail,
            origin=origin.origin if origin is not None else None,
            origin_note=origin.origin_note if origin is not None else None,
        )

    def hold(self, step: int, symptoms: Sequence[Symptom]) -> list[str]:
        """It holds again at ``step``; returns the layers that join it now."""
        self.last, self.steps = step, self.steps + 1
        self.severity = _severity(symptoms, self.severity)
        self.peak, self.peak_step = _peak_of(self.kind, symptoms, self.peak, self.peak_step, step)
        known = set(self.layers) | {layer for layer, _ in self.later}
        joined: list[str] = [x for x in dict.fromkeys(s.layer for s in symptoms) if x is not None and x not in known]
        self.later += [(layer, step) for layer in joined]  # a model-wide symptom joining is no layer
        return joined

    def merge(self, other: Episode) -> None:
        """Take a later episode of the same kind into this record (the per-kind cap)."""
        self.last, self.end = other.last, other.end
        self.steps += other.steps
        self.repeats += other.repeats
        if _worse(self.kind, other.peak, self.peak):
            self.peak, self.peak_step = other.peak, other.peak_step
        known = set(self.layers) | {layer for layer, _ in self.later}
        self.later += [(layer, other.detected) for layer in other.layers if layer not in known]

    # ------------------------------------------------------------------ views
    @property
    def key(self) -> str:
        """``"<kind>@<detection step>"``: unique within a run (one episode of a kind is open at a time)."""
        return f"{self.kind}@{self.detected}"

    @property
    def open(self) -> bool:
        return self.end is None

    @property
    def where(self) -> str:
        """The layers at detection as a compact group (``group_layers()``)."""
        return group_layers(self.layers)

    @property
    def place(self) -> str:
        """``"in <where>"``, or ``"(model-wide)"`` for an episode of the global norm or the loss."""
        return "(model-wide)" if all(x is None for x in self.layers) else f"in {self.where}"

    @property
    def named_layers(self) -> list[str]:
        """Every layer named, at detection and later, in that order."""
        return list(dict.fromkeys(x for x in [*self.layers, *(layer for layer, _ in self.later)] if x is not None))

    @property
    def remedy(self) -> str | None:
        return remedy_text(self.cause, self.advice)

    @property
    def message(self) -> str:
        return compose_message(self.evidence or kind_label(self.kind), self.detail, self.cause, self.advice)

    def row(self) -> dict[str, str]:
        """The episode's row of the table (``COLUMNS``), numbers formatted for people."""
        return {
            "kind": self.kind if self.repeats == 1 else f"{self.kind} x{self.repeats}",
            "layers": self.where + (f" + {len(self.later)} later" if self.later else ""),
            "severity": self.severity,
            "since": str(self.onset),
            "detected": str(self.detected),
            "last": str(self.last),
            "ended": "open" if self.end is None else str(self.end),
            "steps": str(self.steps),
            "peak": fmt_number(self.peak),
        }

    def to_record(self, state: EventKind, step: int) -> dict[str, Any]:
        """The episode as JSON-ready data, as written at ``step`` when it starts, ends, or is still open when the run
        closes (``state``). It also carries the keys of a symptom's record (``step``, ``since``, ``layer``,
        ``value``, ``message``), so that a reader of symptom records sees its onset."""
        return {
            "episode": self.key, "state": state, "step": int(step), "kind": self.kind, "severity": self.severity,
            "where": self.where, "layers": list(self.layers), "later": [[layer, int(s)] for layer, s in self.later],
            "onset": self.onset, "since": self.onset, "detected": self.detected, "last": self.last, "end": self.end,
            "steps": self.steps, "repeats": self.repeats, "peak": json_float(self.peak), "peak_step": self.peak_step,
            "value": json_float(self.peak), "threshold": json_float(self.threshold),
            "layer": next((x for x in self.layers if x is not None), None), "evidence": self.evidence,
            "cause": self.cause, "advice": self.advice, "detail": self.detail,
            "origin": None if self.origin is None else list(self.origin), "origin_note": self.origin_note,
            "message": self.message, "absent_since": self.absent_since,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Episode:
        """The episode of a ``to_record()`` dict.

        Raises:
            KeyError, TypeError, ValueError: for a record that is not an episode's.
        """
        origin = r.get("origin")
        end = r.get("end")
        return cls(
            kind=str(r["kind"]), severity="error" if r.get("severity") == "error" else "warning",
            layers=[None if x is None else str(x) for x in r["layers"]], onset=int(r["onset"]),
            detected=int(r["detected"]), last=int(r["last"]), end=None if end is None else int(end),
            steps=int(r.get("steps", 1)), peak=float(r.get("peak", math.nan)),
            peak_step=int(r.get("peak_step", -1)), threshold=float(r.get("threshold", math.nan)),
            evidence=_text(r.get("evidence")), cause=_text(r.get("cause")), advice=_text(r.get("advice")),
            detail=_text(r.get("detail")), origin=None if origin is None else (str(origin[0]), str(origin[1])),
            origin_note=_text(r.get("origin_note")),
            later=[(None if x is None else str(x), int(s)) for x, s in r.get("later", [])],
            repeats=int(r.get("repeats", 1)),
            absent_since=None if r.get("absent_since") is None else int(r["absent_since"]),
        )

    def copy(self) -> Episode:
        return replace(self, layers=list(self.layers), later=list(self.later))


def _text(x: Any) -> str | None:
    return None if x is None else str(x)


def _severity(symptoms: Iterable[Symptom], current: str) -> str:
    return "error" if current == "error" or any(s.severity == "error" for s in symptoms) else "warning"


def _worse(kind: str, new: float, old: float) -> bool:
    """Whether the evidence ``new`` is more extreme than ``old`` for ``kind`` (NaN is the worst non-finite value)."""
    if kind == "nonfinite":
        return math.isnan(new) and not math.isnan(old)
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new < old if kind in _LOW_IS_WORSE else abs(new) > abs(old)


def _peak_of(kind: str, symptoms: Iterable[Symptom], peak: float, peak_step: int, step: int) -> tuple[float, int]:
    for s in symptoms:
        if peak_step < 0 or _worse(kind, s.value, peak):
            peak, peak_step = float(s.value), step
    return peak, peak_step


def _evidence(symptoms: Sequence[Symptom], step: int) -> str | None:
    """One sentence with the numbers: the first symptom's; for non-finite gradients in several layers, made from the
    values (NaN or Inf) and the count."""
    first = symptoms[0]
    layers = [s for s in symptoms if s.layer is not None]
    if first.kind == "nonfinite" and len(layers) > 1:
        what = "NaN" if any(math.isnan(s.value) for s in layers) else "Inf"
        return f"{what} in the gradients of {len(layers)} layers at step {step}."
    return first.evidence or first.message or None


# ---------------------------------------------------------------------------------------------------- tables
def episode_table(episodes: Sequence[Episode], indent: str = "  ") -> list[str]:
    """One row per episode (``COLUMNS``), aligned, with a line naming the layers that joined later.

    Examples:
        >>> from gradwatch import Symptom
        >>> e = Episode.begin(49, [Symptom("vanishing", f"hidden.{i}", 49, 1e-12, 1e-8, "warning", "...", since=0)
        ...                        for i in range(3)])
        >>> for line in episode_table([e]): print(line)
          kind       layers                       severity  since  detected  last  ended  steps  peak
          vanishing  hidden.0–2 (3 layers)        warning   0      49        49    open   1      1e-12
    """
    rows = [[e.row()[c] for c in COLUMNS] for e in episodes]
    widths = [max(len(x) for x in col) for col in zip(COLUMNS, *rows, strict=False)]
    widths[1] = max(widths[1], 27)
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    for e, row in zip(episodes, rows, strict=True):
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if e.later:
            lines.append(f"{indent}{' ' * (widths[0] + 2)}later: {group_layers([x for x, _ in e.later])} "
                         f"from step {e.later[0][1]}")
    return lines


def advice_lines(episodes: Iterable[Episode], skip: Iterable[str] = ()) -> dict[str, str]:
    """Per kind, the first episode's likely cause and what to try (with where a non-finite value first appeared)."""
    advice: dict[str, str] = {}
    skipped = set(skip)
    for e in episodes:
        if e.remedy is not None and e.kind not in advice and e.kind not in skipped:
            advice[e.kind] = " ".join(p for p in (e.remedy, e.origin_note) if p)
    return advice


# ---------------------------------------------------------------------------------------------------- the tracker
@dataclass(frozen=True)
class EpisodeEvent:
    """An episode's start, its end, or its being still open when the run closes, with the episode as it was then
    (a copy) and, for a start, the symptoms that started it."""

    what: EventKind
    step: int
    episode: Episode
    symptoms: tuple[Symptom, ...] = ()

    def record(self) -> dict[str, Any]:
        return self.episode.to_record(self.what, self.step)


@dataclass
class Changes:
    """What one step changed: the episodes that started, those that ended, the layers that joined open ones, and
    the episodes open after it."""

    step: int
    started: list[Episode] = field(default_factory=list)
    ended: list[Episode] = field(default_factory=list)
    joined: list[tuple[Episode, list[str]]] = field(default_factory=list)
    ongoing: list[Episode] = field(default_factory=list)
    detection: dict[str, tuple[Symptom, ...]] = field(default_factory=dict)  # episode key -> starting symptoms

    def events(self) -> list[EpisodeEvent]:
        """The ends, then the starts, as events for the sinks (not those of ``QUIET_KINDS``)."""
        return ([EpisodeEvent("end", self.step, e.copy()) for e in self.ended if e.kind not in QUIET_KINDS]
                + [EpisodeEvent("start", self.step, e.copy(), self.detection.get(e.key, ()))
                   for e in self.started if e.kind not in QUIET_KINDS])


class EpisodeTracker:
    """Builds episodes from the symptoms of each step, in step order.

    Call ``observe()`` once per evaluated step, with every symptom holding at it (an empty list for a healthy step:
    that ends the open episodes).

    Examples:
        >>> from gradwatch import Symptom
        >>> nan = [Symptom("nonfinite", f"conv.{i}", 5, float("nan"), 0.0, "error", "NaN.", since=5) for i in range(3)]
        >>> t = EpisodeTracker()
        >>> [e.where for e in t.observe(nan, 5).started]
        ['conv.0–2 (3 layers)']
        >>> _ = t.observe([Symptom("nonfinite", f"conv.{i}", 6, float("nan"), 0.0, "error", "NaN.", since=6)
        ...                for i in range(3)], 6)
        >>> [(e.onset, e.last, e.end, e.steps) for e in t.observe([], 7).ended]
        [(5, 6, 7, 2)]
    """

    def __init__(self) -> None:
        self.open: dict[str, Episode] = {}  # kind -> its open episode
        self.closed: list[Episode] = []
        self._clock: int | None = None  # the last step observed

    def observe(self, symptoms: Sequence[Symptom], step: int | None = None, *, conclusive: bool = True,
                unobserved: Collection[str] = ()) -> Changes:
        """Take one step's symptoms. Without ``step``, the step is the symptoms' (or, for a step without any, the one
        after the last observed).

        An open episode whose kind holds nowhere at this step ends at the first such step, once a step is
        ``conclusive`` (the logged steps: rules that judge the weights run on those only). Kinds in ``unobserved``
        were not evaluated at this step (the activation rules between their sampled steps): they neither hold nor
        end.
        """
        if step is None:
            step = self._step_of(symptoms)
            if step is None:
                return Changes(-1)  # nothing seen yet: nothing starts or ends
        self._clock = step
        by_kind: dict[str, list[Symptom]] = {}
        for s in symptoms:
            by_kind.setdefault(s.kind, []).append(s)
        changes = Changes(step)
        for kind in [k for k in self.open if k not in by_kind and k not in unobserved]:
            episode = self.open[kind]
            if episode.absent_since is None:
                episode.absent_since = step
            if conclusive:
                changes.ended.append(self._end(kind))
        for kind, group in by_kind.items():
            current = self.open.get(kind)
            if current is None:
                self.open[kind] = started = Episode.begin(step, group)
                changes.started.append(started)
                changes.detection[started.key] = tuple(group)
            else:
                current.absent_since = None
                joined = current.hold(step, group)
                if joined:
                    changes.joined.append((current, joined))
        changes.ongoing = list(self.open.values())
        return changes

    def tick(self, step: int) -> None:
        """A step observed without any symptom while no episode is open: only the clock moves."""
        self._clock = step

    def _step_of(self, symptoms: Sequence[Symptom]) -> int | None:
        """The symptoms' step; for a step without any, the one after the last observed (``None`` before any)."""
        if symptoms:
            return max(s.step for s in symptoms)
        return None if self._clock is None else self._clock + 1

    def _end(self, kind: str) -> Episode:
        episode = self.open.pop(kind)
        episode.end, episode.absent_since = episode.absent_since, None
        self._keep(episode)
        return episode

    def _keep(self, episode: Episode) -> None:
        same = [e for e in self.closed if e.kind == episode.kind]
        if len(same) >= MAX_CLOSED_PER_KIND:
            same[-1].merge(episode)
        else:
            self.closed.append(episode)

    def episodes(self, kind: str | None = None) -> list[Episode]:
        """Every episode so far (closed and open), in the order detected."""
        every = sorted([*self.closed, *self.open.values()], key=lambda e: e.detected)
        return [e for e in every if kind is None or e.kind == kind]

    def closing(self) -> list[EpisodeEvent]:
        """When the run closes: an ``"end"`` event for each open episode that held nowhere since some step (it ends
        there), an ``"open"`` one, at its last step, for each that still holds (not for one that holds since its
        last step only: its start says it all)."""
        out = []
        for kind in list(self.open):
            if self.open[kind].absent_since is not None:
                ended = self._end(kind)
                out.append(EpisodeEvent("end", int(ended.end or ended.last), ended.copy()))
        out += [EpisodeEvent("open", e.last, e.copy()) for e in self.open.values() if e.steps > 1 or e.later]
        return [e for e in out if e.episode.kind not in QUIET_KINDS]

    def state_dict(self) -> dict[str, Any]:
        return {"open": [e.to_record("open", e.last) for e in self.open.values()],
                "closed": [e.to_record("end", e.last) for e in self.closed], "clock": self._clock}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s output.

        Raises:
            KeyError, TypeError, ValueError: for a state that is not one.
        """
        opened = [Episode.from_record(r) for r in state["open"]]
        closed = [Episode.from_record(r) for r in state["closed"]]
        clock = state.get("clock")
        self.open = {e.kind: e for e in opened}
        self.closed = closed
        self._clock = None if clock is None else int(clock)
