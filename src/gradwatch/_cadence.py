"""Which steps write their per-layer scalars: gradwatch's default cadence, and the windows around symptom episodes.

Every step is measured and judged by the rules, whatever the cadence: per-layer sums of squares (hence the gradient
norms and non-finite values), the decisions, the symptoms. What the cadence decides is which steps also measure what
only a chart needs (max |g|, the parameter norms, the update ratios) and write every layer's scalars.

The default (``every_n_steps=None``) keeps event files small and dense where it matters:

- every step of the first ``DENSE_STEPS`` (200) steps, where most runs go wrong and most tests end;
- then every 10th step up to step 2,000, every 100th up to step 10,000, and every 200th after (``SPACING``): 910
  logged steps in 100,000 (TensorBoard draws at most 1,000 points per chart anyway);
- and around every symptom episode, at full resolution (``WINDOW`` steps): the steps before its start (from a ring
  of the steps just evaluated, with what such a step measured: each layer's gradient norm, the global norms), its
  start, and the steps after its start and after its end. Windows draw on a budget (``WINDOW_CAPACITY`` steps, one
  more every ``WINDOW_REFILL`` steps), so that a run whose symptoms come and go for ever cannot fill the disk: at
  most 484 window steps per 100,000.

``every_n_steps=N`` forces a fixed cadence: the multiples of ``N``, no windows. An adapter that follows its trainer's
logging steps passes ``Watcher.step(log=True/False)``; the windows are added to them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._rules import HostStats

__all__ = [
    "DENSE_STEPS",
    "SPACING",
    "WINDOW",
    "WINDOW_CAPACITY",
    "WINDOW_REFILL",
    "Cadence",
    "Recent",
    "scheduled",
    "scheduled_count",
    "window_scalars",
]

#: The default cadence logs every step below this one.
DENSE_STEPS = 200
#: ... then every ``every`` steps below ``until`` (``None``: for ever), in order.
SPACING: tuple[tuple[int | None, int], ...] = ((2_000, 10), (10_000, 100), (None, 200))
#: Steps written at full resolution before an episode's start, and after its start and its end.
WINDOW = 10
#: The window budget: at most this many window steps at once ...
WINDOW_CAPACITY = 4 * (2 * WINDOW + 1)
#: ... and one more every this many steps.
WINDOW_REFILL = 250


def scheduled(step: int) -> bool:
    """Whether the default cadence logs ``step`` (episode windows aside).

    Examples:
        >>> [s for s in (0, 199, 200, 205, 210, 1990, 2000, 2010, 2100, 10_100, 10_200) if scheduled(s)]
        [0, 199, 200, 210, 1990, 2000, 2100, 10200]
    """
    if step < DENSE_STEPS:
        return True
    for until, every in SPACING:
        if until is None or step < until:
            return step % every == 0
    return False  # pragma: no cover - SPACING ends with None


def scheduled_count(steps: int) -> int:
    """How many of the steps ``0 .. steps - 1`` the default cadence logs (episode windows aside).

    Examples:
        >>> scheduled_count(100), scheduled_count(2_000), scheduled_count(100_000)
        (100, 380, 910)
    """
    count, start = min(steps, DENSE_STEPS), DENSE_STEPS
    for until, every in SPACING:
        end = steps if until is None else min(steps, until)
        if end > start:
            count += (end - 1) // every - (start - 1) // every
        if until is None or steps <= until:
            break
        start = until
    return count


class Cadence:
    """Which steps log: the caller's choice (``log=``), a fixed ``every_n_steps``, or the default cadence, plus the
    episode windows (not with a fixed ``every_n_steps``).

    Examples:
        >>> c = Cadence(None)
        >>> c.logged(5, None), c.logged(205, None), c.logged(205, True), c.logged(0, False)
        (True, False, True, False)
        >>> c.opened(205)  # an episode started at step 205: the next WINDOW steps log
        >>> [s for s in range(206, 220) if c.logged(s, None)]
        [206, 207, 208, 209, 210, 211, 212, 213, 214, 215]
        >>> Cadence(10).logged(20, None), Cadence(10).logged(21, None)
        (True, False)
    """

    def __init__(self, every_n_steps: int | None) -> None:
        self.every_n_steps = every_n_steps
        self.windows = every_n_steps is None
        self.until = -1  # the steps up to this one are in a window after an episode's start or end
        self.tokens = float(WINDOW_CAPACITY)
        self._clock: int | None = None  # the last step the budget was refilled at

    def planned(self, step: int, log: bool | None) -> bool:
        """Whether ``step`` logs by the caller's choice or the cadence (windows aside)."""
        if log is not None:
            return log
        return step % self.every_n_steps == 0 if self.every_n_steps is not None else scheduled(step)

    def logged(self, step: int, log: bool | None, *, window: bool = True) -> bool:
        """Whether ``step`` writes its per-layer scalars (a window step draws on the budget). ``window=False``: not
        as a window step (its update ratios were not measured: a window the host learnt of late)."""
        self._refill(step)
        if self.planned(step, log):
            return True
        return window and self.windows and step <= self.until and self.spend(1)

    def forced(self) -> bool:
        """Whether a step the cadence does not log is logged anyway because its gradients are not finite (the start
        of an episode, at full resolution); draws on the budget."""
        return self.windows and self.spend(1)

    def upcoming(self, step: int, log: bool | None) -> bool:
        """Whether the step after ``step`` is expected to log: the optimizer step before it measures its update
        ratios. A caller that decides (``log=``) decides step by step: every optimizer step is measured then."""
        if log is not None:
            return True
        return self.planned(step + 1, None) or (self.windows and step + 1 <= self.until and self.tokens >= 1)

    def opened(self, step: int) -> None:
        """An episode started or ended at ``step``: the ``WINDOW`` steps after it log."""
        if self.windows:
            self.until = max(self.until, step + WINDOW)

    def spend(self, n: int) -> bool:
        """Take ``n`` window steps from the budget; ``False`` (and nothing taken) when it has fewer."""
        if self.tokens < n:
            return False
        self.tokens -= n
        return True

    def _refill(self, step: int) -> None:
        if self._clock is not None and step > self._clock:
            self.tokens = min(float(WINDOW_CAPACITY), self.tokens + (step - self._clock) / WINDOW_REFILL)
        self._clock = step


@dataclass
class _Seen:
    stats: HostStats
    written: bool  # its per-layer scalars are written (a logged step, or already in a window)


class Recent:
    """The last ``WINDOW`` evaluated steps (their host statistics), for the window before an episode's start."""

    def __init__(self, size: int = WINDOW) -> None:
        self._ring: deque[_Seen] = deque(maxlen=size)

    def add(self, stats: HostStats, written: bool) -> None:
        self._ring.append(_Seen(stats, written))

    def unwritten_before(self, step: int) -> list[HostStats]:
        """The steps in the ring before ``step`` whose per-layer scalars were not written, oldest first; marked
        written (a later episode does not write them again)."""
        out = []
        for seen in self._ring:
            if not seen.written and step - WINDOW <= seen.stats.step < step:
                seen.written = True
                out.append(seen.stats)
        return out


def window_scalars(stats: HostStats, names: Sequence[str]) -> dict[str, float]:
    """The scalars of a step in an episode's window that did not log: what every step measures, each layer's
    gradient norm and the global norms (and the update ratios, if that step measured them)."""
    out = {f"gradwatch/grad_norm/{names[i]}": float(stats.grad_norm[i])
           for i in np.flatnonzero(stats.has_grad).tolist()}
    out["gradwatch/global/grad_norm"] = stats.global_norm
    out["gradwatch/global/grad_norm_clipped"] = stats.clipped_norm
    if stats.update_ratio is not None:
        for k in np.flatnonzero(~np.isnan(stats.update_ratio)).tolist():
            out[f"gradwatch/update_ratio/{names[k]}"] = float(stats.update_ratio[k])
    return out
