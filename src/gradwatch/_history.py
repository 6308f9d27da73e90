"""A compact record of every symptom seen: counts, first and last step per (kind, layer)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass, fields
from typing import Any

from ._errors import ConfigurationError
from ._symptoms import Symptom

__all__ = ["ClipTally", "SymptomHistory", "SymptomSummary"]


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
    """Accumulates symptoms as they come; memory grows with distinct (kind, layer) pairs, not with steps.

    Examples:
        >>> h = SymptomHistory()
        >>> h.extend([Symptom("vanishing", "fc", 3, 1e-9, 1e-7, "warning", "...")])
        >>> h.summaries()[0].first_step
        3
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str | None], SymptomSummary] = {}

    def extend(self, symptoms: Iterable[Symptom]) -> None:
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
        return {"summaries": [list(astuple(e)) for e in self._by_key.values()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, in place of what this history holds; symptoms seen from now on
        add to the restored counts."""
        rows = state.get("summaries") if isinstance(state, Mapping) else None
        if not isinstance(rows, (list, tuple)):
            raise ConfigurationError(f"SymptomHistory.load_state_dict expects {{'summaries': [...]}} as state_dict() "
                                     f"returns, got {state!r:.120}.")
        entries = [_summary(row) for row in rows]
        self._by_key = {(e.kind, e.layer): e for e in entries}

    def format(self) -> str:
        if not self._by_key:
            return "gradwatch: no symptoms."
        lines = ["gradwatch: symptoms by kind and layer", f"{'kind':<10} {'layer':<30} {'count':>7}  steps"]
        lines += [str(e) for e in sorted(self._by_key.values(), key=lambda e: (e.kind, e.first_step))]
        return "\n".join(lines)


_SUMMARY_FIELDS = tuple(f.name for f in fields(SymptomSummary))


def _summary(row: Any) -> SymptomSummary:
    """One :class:`SymptomSummary` from a row of :meth:`SymptomHistory.state_dict`, checked."""
    if not isinstance(row, (list, tuple)) or len(row) != len(_SUMMARY_FIELDS):
        raise ConfigurationError(f"SymptomHistory.load_state_dict: {row!r:.120} is not a summary "
                                 f"({', '.join(_SUMMARY_FIELDS)}).")
    kind, layer, count, first, last, message, first_message = row
    if not (isinstance(kind, str) and (layer is None or isinstance(layer, str)) and isinstance(message, str)
            and isinstance(first_message, str) and all(isinstance(n, int) for n in (count, first, last))):
        raise ConfigurationError(f"SymptomHistory.load_state_dict: {row!r:.120} is not a summary "
                                 f"({', '.join(_SUMMARY_FIELDS)}).")
    return SymptomSummary(kind, layer, count, first, last, message, first_message)


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
