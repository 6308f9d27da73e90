"""One step of the watcher: its record, from the device vector to the host values; the ``StepReport`` that
reads it; and the host-side values made from it (TensorBoard scalars, amp events)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from ._layout import Layout
from ._rules import HostStats
from ._symptoms import LayerStats, Symptom, compose_message

__all__ = ["Record", "StepReport", "amp_event", "amp_persistent", "layer_tags", "step_scalars"]


@dataclass
class Record:
    """One step, from the device result to its processed host form."""

    step: int
    logged: bool
    packed: Tensor | None  # device vector (slices as ``layout`` says), dropped once on the host
    has_grad: list[bool]
    numel: list[int]
    extra_tags: list[str] = field(default_factory=list)
    extra_values: dict[str, float] = field(default_factory=dict)
    layout: Layout = field(default=Layout.empty())  # frozen: one shared by every record not packed yet
    skipped: bool = False
    skip_reason: str | None = None  # "nonfinite" or "spike"
    sent: bool = False
    host_vec: np.ndarray | None = None
    stats: HostStats | None = None
    symptoms: list[Symptom] = field(default_factory=list)
    layer_stats: dict[str, LayerStats] | None = None
    probe: Any = None  # the activation probe's token for this step's values (the packed vector's tail)
    amp: bool = False  # the gradients were unscaled by a dynamic loss scaler (fp16 AMP)
    amp_overflow: bool = False  # ... which found Inf/NaN and skips the optimizer step itself
    amp_streak: int = 0  # consecutive overflow steps up to this one
    amp_overflows: int = 0  # overflow steps so far
    amp_persistent: bool = False  # ... whose run is no longer the scaler's business (gradwatch._actions.AmpState)
    amp_why: str = ""  # ... and why
    clipped_by_watcher: bool = False  # the watcher's clipper ran on this step (not on a non-finite step it drops)

    @property
    def tail_len(self) -> int:
        """Histogram values in the packed vector."""
        return self.layout.size_of("histograms")


class StepReport:
    """What one ``Watcher.step()`` found. Values materialise on first access: reading one may wait for the device.

    Attributes:
        step: the step number (0-based count of ``watcher.step()`` calls).
        skipped: ``True`` when ``on_nonfinite="skip"`` or ``on_spike="skip"`` dropped this step's gradients.
        logged: whether this was a logging step (``every_n_steps``).

    Examples:
        >>> import torch, gradwatch
        >>> model = torch.nn.Linear(3, 1)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> with gradwatch.watch(model) as watcher:
        ...     report = watcher.step()
        >>> report.step, report.skipped, round(report.global_norm, 3), report.symptoms
        (0, False, 4.0, [])
    """

    __slots__ = ("_record", "_resolve")

    def __init__(self, record: Record, resolve: Any) -> None:
        self._record = record
        self._resolve = resolve

    @property
    def step(self) -> int:
        return self._record.step

    @property
    def skipped(self) -> bool:
        return self._record.skipped

    @property
    def logged(self) -> bool:
        return self._record.logged

    @property
    def skip_reason(self) -> str | None:
        """Why the step was skipped: ``"nonfinite"`` (``on_nonfinite``), ``"spike"`` (``on_spike``), or ``None``."""
        return self._record.skip_reason

    def _host(self) -> Record:
        if self._record.stats is None:
            self._resolve(self._record)
        return self._record

    @property
    def layers(self) -> Mapping[str, LayerStats]:
        """Per-layer statistics, by layer name, in registration order."""
        rec = self._host()
        if rec.layer_stats is None:
            rec.layer_stats = _layer_stats(rec.stats)  # type: ignore[arg-type]
        return rec.layer_stats

    @property
    def global_norm(self) -> float:
        """Global L2 norm over every watched gradient, before clipping."""
        return self._host().stats.global_norm  # type: ignore[union-attr]

    @property
    def clipped_norm(self) -> float:
        """Global L2 norm after clipping (equal to ``global_norm`` without a clipper)."""
        return self._host().stats.clipped_norm  # type: ignore[union-attr]

    @property
    def symptoms(self) -> list[Symptom]:
        """Every symptom holding at this step."""
        return list(self._host().symptoms)

    @property
    def clipped(self) -> bool | None:
        """Whether the clipper changed any gradient this step; ``None`` without a clipper (or one that cannot tell)."""
        value = self._host().extra_values.get("gradwatch/clip/clipped")
        return None if value is None else bool(value)

    @property
    def extras(self) -> Mapping[str, float]:
        """Additional values of this step by tag (what the clipper did, for example)."""
        return dict(self._host().extra_values)

    def __repr__(self) -> str:
        if self._record.stats is None:
            return f"StepReport(step={self.step}, skipped={self.skipped}, <not yet on the host>)"
        kinds = sorted({s.kind for s in self._record.symptoms})
        return (f"StepReport(step={self.step}, global_norm={self.global_norm:.4g}, skipped={self.skipped}, "
                f"symptoms={kinds})")


def _layer_stats(stats: HostStats) -> dict[str, LayerStats]:
    out = {}
    codes = {0: None, 1: "nan", 2: "inf"}
    for i, name in enumerate(stats.names):
        has = bool(stats.has_grad[i])
        out[name] = LayerStats(
            grad_norm=float(stats.grad_norm[i]) if has else None,
            grad_max=float(stats.grad_max[i]) if has and stats.measured_max else None,
            param_norm=float(stats.param_norm[i]) if stats.param_norm is not None else None,
            nonfinite=codes[int(stats.nonfinite[i])] if has else None,  # type: ignore[arg-type]
            numel=int(stats.numel[i]),
            update_ratio=_ratio(stats.update_ratio, i),
        )
    return out


def _ratio(ratios: np.ndarray | None, i: int) -> float | None:
    """Layer ``i``'s update ratio, ``None`` when there is none (no optimizer, or NaN: not updated)."""
    if ratios is None or math.isnan(ratios[i]):
        return None
    return float(ratios[i])


def amp_event(r: Record) -> Symptom:
    """An fp16 loss-scaler overflow: an event for the history, not a symptom (the scaler skips the step)."""
    scale = r.extra_values.get("gradwatch/amp/scale", math.nan)
    return Symptom(kind="amp_overflow", layer=None, step=r.step, value=scale, threshold=math.inf, severity="warning",
                   since=r.step - r.amp_streak + 1,
                   message=(f"The fp16 GradScaler found Inf/NaN gradients at step {r.step} (loss scale {scale:g}) and "
                            "skipped the optimizer step; now and then this is normal: the scaler lowers its scale."))


def amp_persistent(s: Symptom, r: Record) -> Symptom:
    """A ``nonfinite`` symptom whose message says that the scaler's overflows are no longer transient."""
    scale = r.extra_values.get("gradwatch/amp/scale", math.nan)
    why = f": {r.amp_why}" if r.amp_why else ""
    note = (f"The fp16 GradScaler has found Inf/NaN for {r.amp_streak} consecutive steps (loss scale now {scale:g})"
            f"{why}. This is not a transient overflow but a real numerical problem.")
    return dataclasses.replace(s, detail=note, since=r.step - r.amp_streak + 1,
                               message=compose_message(s.evidence or s.message, note, s.cause, s.advice))


def step_scalars(stats: HostStats, tags: list[str] | None = None) -> dict[str, float]:
    """The per-layer and global scalars of a logged step (and the update ratios, with an optimizer attached).

    ``tags``: the per-layer tags (``grad_norm``, ``grad_max``, ``param_norm`` of each layer in turn), made once by
    ``layer_tags()``; with them, a step where every layer has a gradient builds its dict without a Python loop.
    """
    out: dict[str, float]
    if tags is not None and stats.param_norm is not None and stats.has_grad.all():
        values = np.stack([stats.grad_norm, stats.grad_max, stats.param_norm], axis=1).ravel()
        out = dict(zip(tags, values.tolist(), strict=True))
    else:
        out = {}
        for i, name in enumerate(stats.names):
            if stats.has_grad[i]:
                out[f"gradwatch/grad_norm/{name}"] = float(stats.grad_norm[i])
                out[f"gradwatch/grad_max/{name}"] = float(stats.grad_max[i])
            if stats.param_norm is not None:
                out[f"gradwatch/param_norm/{name}"] = float(stats.param_norm[i])
    out["gradwatch/global/grad_norm"] = stats.global_norm
    out["gradwatch/global/grad_norm_clipped"] = stats.clipped_norm
    if stats.update_ratio is not None:  # with an optimizer: the layers its last step updated (NaN: not written)
        for k in np.flatnonzero(~np.isnan(stats.update_ratio)).tolist():
            out[f"gradwatch/update_ratio/{stats.names[k]}"] = float(stats.update_ratio[k])
    return out


def layer_tags(names: Sequence[str]) -> list[str]:
    return [f"gradwatch/{kind}/{name}" for name in names for kind in ("grad_norm", "grad_max", "param_norm")]
