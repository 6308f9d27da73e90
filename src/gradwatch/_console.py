"""What gradwatch says on the console while it watches: one voice, the ``gradwatch`` logger, and few lines.

* One line when an episode (``gradwatch._episodes``) starts: its kind, where, since when, one sentence of evidence;
  the advice once per kind per run, on that same line. One line when it ends (if it lasted more than one step).
* A condition that persists (NaN at every step) gets its line, then reminders with a count, after 100, 1,000,
  10,000... steps. A kind that comes back is said again on the same schedule, with how many episodes were not shown.
* Soon after an instability (exploding gradients, a diverging loss, a spike, non-finite values) was said, while it
  holds, a new episode of another kind is most often its consequence (the loss diverges and spikes while the
  gradients explode): it is named in that episode's reminders and end line, not on a line of its own. Non-finite
  gradients always get their own line.

How much is said is the ``gradwatch`` logger's level, the one switch::

    logging.getLogger("gradwatch").setLevel(logging.ERROR)    # errors only (non-finite gradients, divergence)
    logging.getLogger("gradwatch").setLevel(logging.WARNING)  # episode starts and reminders, no end lines
    logging.getLogger("gradwatch").setLevel(logging.INFO)     # also the end lines (the default)
    logging.getLogger("gradwatch").setLevel(logging.DEBUG)    # every start, end and joining layer

The lines go to the application's logging handlers when it has configured some (``logging.basicConfig``), else
straight to stderr, prefixed ``gradwatch:``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ._episodes import Changes, Episode, group_layers, kind_label, plural

__all__ = ["LOGGER", "Console", "ConsoleHandler", "ancestors_handle", "end_line", "prepare_logger", "quiet",
           "set_verbosity", "start_line"]

LOGGER = logging.getLogger("gradwatch")
"""The logger every console line of gradwatch goes through."""

#: Steps after which a persisting episode (or a kind that keeps coming back) is said again: 100, then x10 each time.
FIRST_REMINDER = 100
_GROWTH = 10
#: Kinds whose episodes take in the others that start soon after (within ``FIRST_REMINDER`` steps): when the
#: gradients explode, the loss diverges and spikes as a consequence.
INSTABILITY = frozenset({"exploding", "divergence", "spike", "nonfinite"})


class ConsoleHandler(logging.Handler):
    """Writes gradwatch's lines to the current ``sys.stderr`` (``gradwatch: ...``), unless another handler will: the
    application's own (the root logger's, through propagation) or one added to the ``gradwatch`` logger."""

    def emit(self, record: logging.LogRecord) -> None:
        if _handled_elsewhere(self):
            return
        try:
            sys.stderr.write(f"gradwatch: {record.getMessage()}\n")
        except Exception:  # a closed stream must not stop training
            self.handleError(record)


def _handled_elsewhere(handler: logging.Handler) -> bool:
    return any(h is not handler for h in LOGGER.handlers) or ancestors_handle()


def ancestors_handle() -> bool:
    """Whether the ``gradwatch`` logger's lines propagate to a logger with handlers (the application's logging)."""
    logger: logging.Logger | None = LOGGER
    while logger is not None and logger.propagate:
        logger = logger.parent
        if logger is not None and logger.handlers:
            return True
    return False


def prepare_logger() -> None:
    """Give the ``gradwatch`` logger its console handler (once) and, when nobody set its level, ``INFO``."""
    if not any(isinstance(h, ConsoleHandler) for h in LOGGER.handlers):
        LOGGER.addHandler(ConsoleHandler())
    if LOGGER.level == logging.NOTSET:
        LOGGER.setLevel(logging.INFO)


def set_verbosity(verbose: bool | int | None) -> None:
    """``verbose=`` of ``watch()`` and the adapters, mapped onto the logger's level: ``True`` DEBUG (every start, end
    and joining layer), ``False`` ERROR (errors only), a ``logging`` level as given; ``None`` leaves it.

    Examples:
        >>> old = LOGGER.level
        >>> set_verbosity(False); logging.getLevelName(LOGGER.level)
        'ERROR'
        >>> LOGGER.setLevel(old)
    """
    prepare_logger()
    if verbose is None:
        return
    if isinstance(verbose, bool):
        LOGGER.setLevel(logging.DEBUG if verbose else logging.ERROR)
    else:
        LOGGER.setLevel(int(verbose))


@contextmanager
def quiet(level: int = logging.ERROR) -> Iterator[None]:
    """The ``gradwatch`` logger at ``level`` for a while (``gradwatch demo`` prints its own account)."""
    old = LOGGER.level
    LOGGER.setLevel(level)
    try:
        yield
    finally:
        LOGGER.setLevel(old)


# ---------------------------------------------------------------------------------------------------- the lines
def start_line(e: Episode, *, advice: bool = True) -> str:
    """The line said when an episode starts.

    Examples:
        >>> from gradwatch import Symptom
        >>> s = [Symptom.described("nonfinite", f"conv.{i}", 12, float("nan"), 0.0, "error", since=12,
        ...      evidence="NaN.", advice="a check of the batch") for i in range(40)]
        >>> print(start_line(Episode.begin(12, s)))
        non-finite gradients in conv.0–39 (40 layers) since step 12: NaN in the gradients of 40 layers at step 12. \
Try a check of the batch.
    """
    detected = f" (detected at step {e.detected})" if e.detected != e.onset else ""
    text = f"{kind_label(e.kind)} {e.place} since step {e.onset}{detected}: {e.evidence or e.kind}"
    if e.origin_note:
        text += f" {e.origin_note}"
    if advice and e.advice:
        text += f" Try {e.advice}."
    return text


def end_line(e: Episode, meanwhile: Sequence[Episode] = ()) -> str:
    """The line said when an episode ends (or, with ``e.end`` unset, when it persists).

    Examples:
        >>> from gradwatch import Symptom
        >>> e = Episode.begin(3, [Symptom("exploding", None, 3, 1e9, 1e3, "warning", "...", since=3)])
        >>> e.last, e.end, e.steps = 9, 10, 7
        >>> end_line(e)
        'exploding gradients (model-wide) since step 3 ended at step 10 (seen on 7 steps).'
    """
    head = f"{kind_label(e.kind)} {e.place} since step {e.onset}"
    seen = f"seen on {plural(e.steps, 'step')}" + (f" since step {e.detected}" if e.detected != e.onset else "")
    if e.end is not None:
        text = f"{head} ended at step {e.end} ({seen})."
    else:
        text = f"{head} still holds at step {e.last} ({seen})."
    return text + _meanwhile(meanwhile)


def _meanwhile(folded: Sequence[Episode]) -> str:
    """``" Meanwhile: divergence since step 4; spike since step 25 (12 episodes)."``"""
    if not folded:
        return ""
    by_kind: dict[str, list[Episode]] = {}
    for e in folded:
        by_kind.setdefault(e.kind, []).append(e)
    parts = []
    for kind, group in by_kind.items():
        named = [x for e in group for x in e.layers]
        where = "" if all(x is None for x in named) else f" in {group_layers(named)}"
        count = f" ({len(group)} episodes)" if len(group) > 1 else ""
        parts.append(f"{kind_label(kind)}{where} since step {group[0].onset}{count}")
    return " Meanwhile: " + "; ".join(parts) + "."


# ---------------------------------------------------------------------------------------------------- the console
@dataclass
class _Said:
    """An open episode that was said, and what has been folded into it."""

    episode: Episode
    next_reminder: int = FIRST_REMINDER
    folded: list[Episode] = field(default_factory=list)


@dataclass
class _KindPace:
    """When a kind that comes back may be said again, and how many of its episodes were not."""

    next_step: int
    gap: int
    unsaid: int = 0
    first_unsaid: int | None = None


class Console:
    """Says what each step's ``Changes`` mean, in few lines (see the module's docstring).

    Args:
        silent: kinds never said (``on_nonfinite="ignore"``, ``on_spike="ignore"``); still in the summary and logs.
        notes: per kind, a sentence added to its start lines (``"The step was skipped (on_spike='skip')."``).

    Examples:
        >>> from gradwatch import Symptom
        >>> from gradwatch._episodes import EpisodeTracker
        >>> tracker, console, lines = EpisodeTracker(), Console(), []
        >>> console.say = lambda level, text: lines.append(text)  # instead of the logger
        >>> for step in range(250):
        ...     nan = [Symptom("nonfinite", f"conv.{i}", step, float("nan"), 0.0, "error", "NaN.", since=step)
        ...            for i in range(40)] if step >= 50 else []
        ...     console.speak(tracker.observe(nan, step))
        >>> for line in lines: print(line)
        non-finite gradients in conv.0–39 (40 layers) since step 50: NaN in the gradients of 40 layers at step 50.
        non-finite gradients in conv.0–39 (40 layers) since step 50 still holds at step 149 (seen on 100 steps).
    """

    def __init__(self, silent: Collection[str] = (), notes: Mapping[str, str] | None = None) -> None:
        self.silent = frozenset(silent)
        self.notes = dict(notes or {})
        self.advised: set[str] = set()
        self.said: dict[str, _Said] = {}  # episode key -> what was said of it, while it is open
        self.pace: dict[str, _KindPace] = {}

    def say(self, level: int, text: str) -> None:
        LOGGER.log(level, "%s", text)

    def enabled(self, level: int) -> bool:
        return LOGGER.isEnabledFor(level)

    def _debug(self, text: Callable[[], str]) -> None:
        """A DEBUG line, made only when it will be said."""
        if self.enabled(logging.DEBUG):
            self.say(logging.DEBUG, text())

    def speak(self, changes: Changes) -> None:
        """The lines of one step."""
        for e in changes.ended:
            self._ended(e)
        if changes.joined and self.enabled(logging.DEBUG):
            for e, layers in changes.joined:
                self.say(logging.DEBUG, f"{kind_label(e.kind)} since step {e.onset} spreads to {group_layers(layers)} "
                                        f"at step {changes.step}.")
        started = {e.key for e in changes.started}
        for e in changes.started:
            self._started(e, changes.step)
        for e in changes.ongoing:
            said = self.said.get(e.key)
            if said is not None and e.key not in started and e.steps >= said.next_reminder:
                said.next_reminder *= _GROWTH
                self.say(_level(e), end_line(e, said.folded))

    def _started(self, e: Episode, step: int) -> None:
        if e.kind in self.silent or self._folded(e, step):
            return
        pace = self.pace.get(e.kind)
        if pace is not None and step < pace.next_step:
            pace.unsaid += 1
            pace.first_unsaid = pace.first_unsaid if pace.first_unsaid is not None else e.onset
            self._debug(lambda: start_line(e, advice=False))
            return
        if not self.enabled(_level(e)):
            return  # not said: it neither takes the advice nor hosts what follows
        text = start_line(e, advice=e.kind not in self.advised)
        if e.kind in self.notes:
            text += f" {self.notes[e.kind]}"
        if pace is not None and pace.unsaid:
            text += f" ({pace.unsaid} more such episodes since step {pace.first_unsaid} were not shown.)"
        self.advised.add(e.kind)
        gap = pace.gap if pace is not None else FIRST_REMINDER
        self.pace[e.kind] = _KindPace(step + gap, gap * _GROWTH)
        self.said[e.key] = _Said(e)
        self.say(_level(e), text)

    def _folded(self, e: Episode, step: int) -> bool:
        """Whether ``e`` is taken in by an instability said shortly before (never non-finite gradients)."""
        if e.kind == "nonfinite":
            return False
        host = next((s for s in self.said.values() if s.episode.kind != e.kind and s.episode.kind in INSTABILITY
                     and step - s.episode.detected < FIRST_REMINDER), None)
        if host is None:
            return False
        host.folded.append(e)
        self._debug(lambda: start_line(e, advice=False) + f" (while {kind_label(host.episode.kind)} holds)")
        return True

    def _ended(self, e: Episode) -> None:
        said = self.said.pop(e.key, None)
        if said is None:
            if e.kind not in self.silent:
                self._debug(lambda: end_line(e))
            return
        if e.steps > 1 or said.folded:
            self.say(logging.INFO, end_line(e, said.folded))


def _level(e: Episode) -> int:
    return logging.ERROR if e.severity == "error" else logging.WARNING
