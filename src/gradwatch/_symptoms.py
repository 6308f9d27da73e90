"""What gradwatch reports: per-layer statistics and symptoms."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["LayerStats", "Severity", "Symptom", "SymptomKind"]

SymptomKind = Literal["nonfinite", "vanishing", "exploding", "spike", "saturated", "dead"]
Severity = Literal["warning", "error"]


@dataclass(frozen=True)
class LayerStats:
    """Gradient statistics of one layer at one step (weight and bias together).

    Attributes:
        grad_norm: L2 norm of the layer's gradients, before clipping; ``None`` when no parameter of the layer has a
            gradient this step (frozen or unused), which is never reported as vanishing.
        grad_max: largest absolute gradient entry; ``None`` without a gradient.
        param_norm: L2 norm of the layer's parameters; computed on logging steps only, ``None`` on the others.
        nonfinite: ``"nan"`` if a gradient holds a NaN, else ``"inf"`` if one holds an Inf, else ``None``.
        numel: number of gradient entries that contributed (parameters with a gradient this step).

    Examples:
        >>> LayerStats(grad_norm=2.0, grad_max=1.0, param_norm=None, nonfinite=None, numel=4).grad_rms
        1.0
    """

    grad_norm: float | None
    grad_max: float | None
    param_norm: float | None
    nonfinite: Literal["nan", "inf"] | None
    numel: int

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
        since: first step of the episode this symptom belongs to.
        origin: ``(module name, "forward" | "backward")`` where a non-finite value first appeared, when known.

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

    def __str__(self) -> str:
        return f"[step {self.step}] {self.kind}: {self.message}"
