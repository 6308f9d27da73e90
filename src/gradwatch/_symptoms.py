"""What gradwatch reports: per-layer statistics and symptoms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = ["LayerStats", "Severity", "Symptom", "SymptomKind", "compose_message", "json_float", "remedy_text"]

SymptomKind = Literal["nonfinite", "vanishing", "exploding", "spike", "saturated", "dead"]
Severity = Literal["warning", "error"]


@dataclass(frozen=True)
class LayerStats:
    """Gradient statistics of one layer at one step (weight and bias together).

    Attributes:
        grad_norm: L2 norm of the layer's gradients, before clipping; ``None`` when no parameter of the layer has a
            gradient this step (frozen or unused), which is never reported as vanishing.
        grad_max: largest absolute gradient entry, measured on logging steps; ``None`` on the others and without a
            gradient.
        param_norm: L2 norm of the layer's parameters; computed on logging steps only, ``None`` on the others.
        nonfinite: ``"nan"`` if a gradient holds a NaN, else ``"inf"`` if one holds an Inf, else ``None``.
        numel: number of gradient entries that contributed (parameters with a gradient this step).
        update_ratio: ``||Δw|| / ||w||`` of the layer's last optimizer step before this one, over the parameters that
            step updated (``watch(optimizer=...)``); ``0.0`` when no optimizer step happened since the previous
            ``watcher.step()`` (a loss scaler skipped it); ``None`` without an optimizer, before its first step, and
            for a layer it does not hold or did not update.

    Examples:
        >>> LayerStats(grad_norm=2.0, grad_max=1.0, param_norm=None, nonfinite=None, numel=4).grad_rms
        1.0
    """

    grad_norm: float | None
    grad_max: float | None
    param_norm: float | None
    nonfinite: Literal["nan", "inf"] | None
    numel: int
    update_ratio: float | None = None

    @property
    def has_grad(self) -> bool:
        return self.grad_norm is not None

    @property
    def grad_rms(self) -> float | None:
        """Root mean square of the gradient entries: ``grad_norm / sqrt(numel)``."""
        if self.grad_norm is None or self.numel == 0:
            return None
        return self.grad_norm / math.sqrt(self.numel)


@dataclass(frozen=True)
class Symptom:
    """A problem gradwatch found.

    The facts behind the alert are fields (``since``, ``evidence``, ``cause``, ``advice``...); ``message`` is the
    English text made from them, for people. Programs (the ``gradwatch report`` command, a sink) read the fields, or
    the JSON record of ``to_record()``, never the message.

    Attributes:
        kind: ``"nonfinite"``, ``"vanishing"``, ``"exploding"``, ``"spike"``, ``"saturated"`` or ``"dead"``
            (later versions add kinds).
        layer: the layer's qualified name, or ``None`` for a model-wide symptom.
        step: the step at which it was seen.
        value: the evidence (for example the layer's gradient RMS, or the global norm).
        threshold: the threshold the value crossed.
        severity: ``"warning"`` (training may go on, but is likely wasting time) or ``"error"`` (results are corrupt
            or about to be).
        message: one sentence naming the layer, the evidence, the likely cause and what to try.
        since: first step of the episode this symptom belongs to (the onset: a sustained symptom is alerted only
            after its patience, ``since`` steps earlier).
        origin: ``(module name, "forward" | "backward")`` where a non-finite value first appeared, when known.
        evidence: the message's first sentence: what was measured, with the numbers (``"NaN in the gradients of layer
            'fc' at step 3."``).
        cause: the likely cause, a clause without the ``"Likely cause: "`` prefix and the final period.
        advice: what to try, a list without the ``"Try "`` prefix and the final period.
        detail: more evidence or context between the evidence and the cause (the depth profile of vanishing
            gradients, the fp16 loss scaler's overflow streak).
        origin_note: the sentence saying where a non-finite value first appeared (with ``origin``), at the message's
            end.

    Examples:
        >>> Symptom(kind="nonfinite", layer="fc", step=3, value=float("nan"), threshold=0.0, severity="error",
        ...         message="NaN in 'fc'").kind
        'nonfinite'
    """

    kind: str
    layer: str | None
    step: int
    value: float
    threshold: float
    severity: Severity
    message: str
    since: int | None = None
    origin: tuple[str, str] | None = None
    evidence: str | None = None
    cause: str | None = None
    advice: str | None = None
    detail: str | None = None
    origin_note: str | None = None

    def __str__(self) -> str:
        return f"[step {self.step}] {self.kind}: {self.message}"

    @classmethod
    def described(
        cls,
        kind: str,
        layer: str | None,
        step: int,
        value: float,
        threshold: float,
        severity: Severity,
        *,
        evidence: str,
        detail: str | None = None,
        cause: str | None = None,
        advice: str | None = None,
        since: int | None = None,
    ) -> Symptom:
        """A symptom whose message is made of its parts: ``evidence``, ``detail``, then the remedy (``remedy``).

        Examples:
            >>> s = Symptom.described("nonfinite", "fc", 3, float("nan"), 0.0, "error",
            ...                       evidence="NaN in 'fc' at step 3.", cause="a bad batch", advice="a lower rate")
            >>> s.message
            "NaN in 'fc' at step 3. Likely cause: a bad batch. Try a lower rate."
        """
        return cls(kind, layer, step, value, threshold, severity, compose_message(evidence, detail, cause, advice),
                   since=since, evidence=evidence, cause=cause, advice=advice, detail=detail)

    @property
    def remedy(self) -> str | None:
        """``"Likely cause: <cause>. Try <advice>."``, as the message says it; ``None`` without a cause and advice."""
        return remedy_text(self.cause, self.advice)

    @property
    def explanation(self) -> str:
        """What the message says after its evidence: the detail, the remedy and the origin note, those there are."""
        return " ".join(p for p in (self.detail, self.remedy, self.origin_note) if p)

    def with_origin(self, where: tuple[str, str] | None, note: str) -> Symptom:
        """This symptom with the place a non-finite value first appeared, ``note`` appended to its message."""
        return replace(self, origin=where, origin_note=note, message=f"{self.message} {note}")

    def to_record(self) -> dict[str, Any]:
        """The symptom as JSON-ready data (non-finite ``value`` and ``threshold`` as ``"nan"``, ``"inf"``, ``"-inf"``).

        Examples:
            >>> r = Symptom("spike", None, 5, float("inf"), 2.0, "warning", "Spike.", since=5).to_record()
            >>> r["value"], r["threshold"], r["since"], r["cause"]
            ('inf', 2.0, 5, None)
            >>> Symptom.from_record(r) == Symptom("spike", None, 5, float("inf"), 2.0, "warning", "Spike.", since=5)
            True
        """
        return {
            "kind": self.kind,
            "layer": self.layer,
            "step": int(self.step),
            "since": None if self.since is None else int(self.since),
            "value": json_float(self.value),
            "threshold": json_float(self.threshold),
            "severity": self.severity,
            "cause": self.cause,
            "advice": self.advice,
            "evidence": self.evidence,
            "detail": self.detail,
            "origin": None if self.origin is None else list(self.origin),
            "origin_note": self.origin_note,
            "message": self.message,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Symptom:
        """The symptom of a ``to_record()`` dict; keys other than ``kind`` and ``step`` may be missing (a record
        of another version): they take their defaults (``value`` and ``threshold`` NaN, ``severity`` ``"warning"``).

        Raises:
            KeyError: without ``kind`` or ``step``.
        """
        origin = record.get("origin")
        since = record.get("since")
        return cls(
            kind=str(record["kind"]),
            layer=_optional_str(record.get("layer")),
            step=int(record["step"]),
            value=float(record.get("value", math.nan)),
            threshold=float(record.get("threshold", math.nan)),
            severity="error" if record.get("severity") == "error" else "warning",
            message=str(record.get("message") or ""),
            since=None if since is None else int(since),
            origin=None if origin is None else (str(origin[0]), str(origin[1])),
            evidence=_optional_str(record.get("evidence")),
            cause=_optional_str(record.get("cause")),
            advice=_optional_str(record.get("advice")),
            detail=_optional_str(record.get("detail")),
            origin_note=_optional_str(record.get("origin_note")),
        )


def remedy_text(cause: str | None, advice: str | None) -> str | None:
    """``"Likely cause: <cause>. Try <advice>."``, or ``None`` unless both are given.

    Examples:
        >>> remedy_text("a bad batch", "a lower learning rate, clipping")
        'Likely cause: a bad batch. Try a lower learning rate, clipping.'
    """
    if cause is None or advice is None:
        return None
    return f"Likely cause: {cause}. Try {advice}."


def compose_message(evidence: str, detail: str | None = None, cause: str | None = None,
                    advice: str | None = None) -> str:
    """The message of a symptom: its evidence, its detail and its remedy, one space apart (those given)."""
    return " ".join(p for p in (evidence, detail, remedy_text(cause, advice)) if p)


def json_float(x: Any) -> float | str:
    """``x`` as a JSON number; NaN and infinities (and anything that is no number) as a string.

    Examples:
        >>> json_float(2.5), json_float(float("nan")), json_float(float("-inf"))
        (2.5, 'nan', '-inf')
    """
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f if math.isfinite(f) else str(f)


def _optional_str(x: Any) -> str | None:
    return None if x is None else str(x)
