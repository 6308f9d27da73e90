"""What the watcher does about a step: pure decisions, apart from their side effects.

The non-finite decision (skip or raise before ``optimizer.step()``), the fp16 loss scaler's overflow bookkeeping, the
spike decision and the error raised by ``on_nonfinite="raise"``. The watcher applies them; nothing here touches a
model, a sink or the device beyond building the flag tensor it is given the means for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._errors import ConfigurationError, NonFiniteGradientError
from ._history import ClipTally
from ._stats import DeviceStats
from ._step import Record
from ._symptoms import Symptom
from ._validate import check_int, is_real

__all__ = [
    "SCALE_FLOOR", "STUCK_LIMIT", "AmpState", "agreed_spike", "decides_before_step", "drop_for_nonfinite",
    "drop_gradients", "nonfinite_error", "nonfinite_flag", "scale_of", "spike_in", "tally_clip",
]

ReduceFlag = Callable[[Tensor], Tensor]


#: A loss scale at or below this leaves nothing to unscale: an overflow there is the gradients' own.
SCALE_FLOOR = 1.0
#: Overflows in one run at which the scale had not fallen (since the run's previous overflow) before the run is no
#: longer the scaler's business: 2 lets a scaler with a hysteresis of one step (it backs off every other overflow) be.
STUCK_LIMIT = 2


@dataclass
class AmpState:
    """The fp16 loss scaler's overflows: the current run of consecutive ones, the count so far, and whether the scale
    still falls.

    A run of overflows is the scaler's business while its scale falls at each of them (a healthy recovery halves it
    from 2**16, or 2**40, down to where the gradients fit). It is *persistent* (a real numerical problem, reported as
    ``nonfinite``) once the scale has stopped falling: an overflow at a scale of ``SCALE_FLOOR`` or below, or
    ``STUCK_LIMIT`` overflows of the run at which the scale had not gone down (a scaler at its floor, a fixed
    scale); or, with ``patience`` set, after that many consecutive overflows whatever the scale.

    Examples:
        >>> amp = AmpState()
        >>> [amp.observe(True, 2.0**k) for k in (40, 39, 38)]  # halving: the scaler's business
        [False, False, False]
        >>> amp.observe(False, 2.0**37), amp.streak
        (False, 0)
        >>> [amp.observe(True, 8.0) for _ in range(3)]  # the same scale again and again: it has stopped falling
        [False, False, True]
        >>> amp.observe(False, 8.0), amp.observe(True, 0.5)  # at a scale of 1 or below: at once
        (False, True)
        >>> amp.overflows, amp.why
        (7, 'the loss scale is down to 0.5: nothing is left to unscale, the gradients overflow on their own')
    """

    streak: int = 0
    overflows: int = 0
    patience: int | None = None  # consecutive overflows after which they are persistent whatever the scale; None: off
    last_scale: float | None = None  # the scale at the run's previous overflow
    stuck: int = 0  # overflows of the run at which the scale had not fallen
    why: str = ""  # why the current run is persistent ("" while it is the scaler's business)

    def observe(self, overflow: bool, scale: float) -> bool:
        """Count one step (``overflow``: the scaler found Inf/NaN; ``scale``: the loss scale it used); whether the
        run of overflows it belongs to is persistent."""
        if not overflow:
            self.streak, self.stuck, self.last_scale, self.why = 0, 0, None, ""
            return False
        self.streak += 1
        self.overflows += 1
        if self.last_scale is not None and not scale < self.last_scale:
            self.stuck += 1
        self.last_scale = scale
        if not self.why:
            self.why = self._persistence(scale)
        return bool(self.why)

    def _persistence(self, scale: float) -> str:
        if scale <= SCALE_FLOOR:
            return (f"the loss scale is down to {scale:g}: nothing is left to unscale, the gradients overflow on "
                    "their own")
        if self.stuck >= STUCK_LIMIT:
            return f"the loss scale has stopped falling (still {scale:g})"
        if self.patience is not None and self.streak >= self.patience:
            return f"amp_overflow_patience={self.patience} reached"
        return ""

    def observe_step(self, record: Record, dev: DeviceStats, loss_scale: Tensor | float | None,
                     scaler: Any) -> Tensor | float | None:
        """Count a step whose gradients a dynamic loss scaler unscaled; ``dev``: its statistics. The scale
        is ``loss_scale`` or, without one, the ``scaler``'s (``None`` for no scaler, or a disabled one: nothing is
        counted). Returns the scale."""
        scale = loss_scale if loss_scale is not None else scale_of(scaler)
        if scale is None:
            return None
        # Intended host sync: the GradScaler reads its own Inf/NaN flags on the host in scaler.step() right after
        # this call; overflow bookkeeping needs the same answer now. A scale given as a device tensor is read in the
        # same breath (the device is idle by then: no second wait).
        record.amp, record.amp_overflow = True, bool(dev.nonfinite.any())
        record.amp_persistent = self.observe(record.amp_overflow, float(scale))
        record.amp_streak, record.amp_overflows, record.amp_why = self.streak, self.overflows, self.why
        return scale

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak, "overflows": self.overflows, "last_scale": self.last_scale,
                "stuck": self.stuck, "why": self.why}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s output (checked whole first; older checkpoints hold the counts only)."""
        last, why = state.get("last_scale"), state.get("why", "")
        if not (last is None or is_real(last)) or not isinstance(why, str):
            raise ConfigurationError(f"amp: last_scale={last!r} must be a number or None, why={why!r} a string.")
        counts = [check_int(f"amp {name}", state.get(name, 0)) for name in ("streak", "overflows", "stuck")]
        self.streak, self.overflows, self.stuck = counts
        self.last_scale, self.why = None if last is None else float(last), why


def scale_of(scaler: Any) -> float | None:
    """The current scale of ``scaler`` (``None`` for no scaler, or a disabled one).

    >>> import torch
    >>> scale_of(None), scale_of(torch.amp.GradScaler("cpu", init_scale=1024.0))
    (None, 1024.0)
    >>> scale_of(torch.amp.GradScaler("cpu", enabled=False)) is None
    True
    """
    if scaler is None:
        return None
    enabled = getattr(scaler, "is_enabled", None)
    if callable(enabled) and not enabled():
        return None
    return float(scaler.get_scale())  # Intended host sync: the GradScaler keeps its scale on the device


def decides_before_step(on_nonfinite: str) -> bool:
    """Whether the non-finite check must be known on the host before ``optimizer.step()`` (a sync per step).

    >>> decides_before_step("skip"), decides_before_step("warn")
    (True, False)
    """
    return on_nonfinite in ("skip", "raise")


def nonfinite_flag(dev: DeviceStats, amp: bool, persistent_overflow: bool) -> Tensor:
    """The device flag (> 0: drop the step) of the non-finite decision; read on the host by the caller.

    Under a dynamic loss scaler only a persistent run of overflows counts (a transient one is the scaler's business);
    otherwise any layer's non-finite code.
    """
    home = dev.total_norm
    if amp:
        return torch.tensor(float(persistent_overflow), dtype=home.dtype, device=home.device)
    return dev.nonfinite.amax() if dev.layer_sumsq.numel() else home.new_zeros(())


def drop_for_nonfinite(on_nonfinite: str, record: Record, dev: DeviceStats, reduce_flag: ReduceFlag | None) -> bool:
    """Whether to drop this step for non-finite gradients (only with ``on_nonfinite`` "skip" or "raise"); a dropped
    step is logged."""
    if not decides_before_step(on_nonfinite):
        return False
    flag = nonfinite_flag(dev, record.amp, record.amp_overflow and record.amp_persistent)
    if reduce_flag is not None:
        flag = reduce_flag(flag)
    # Intended host sync: the decision to skip or raise must be known before optimizer.step().
    bad = bool(flag > 0)
    record.logged = record.logged or bad
    return bad


def agreed_spike(record: Record, home: Tensor, reduce_flag: ReduceFlag | None) -> bool:
    """Whether the (evaluated) step is a spike, agreed across processes when ``reduce_flag`` is given."""
    spike = spike_in(record.symptoms)
    if reduce_flag is not None:  # the loss differs between processes: one decision for all of them
        # Intended host sync (only with on_spike="skip"): the answer must be known before optimizer.step().
        spike = bool(reduce_flag(home.new_tensor(float(spike))) > 0)
    return spike


def drop_gradients(params: Iterable[Tensor]) -> None:
    """Set every gradient to ``None``, so that ``optimizer.step()`` changes nothing."""
    for p in params:
        p.grad = None


def tally_clip(tally: ClipTally | None, r: Record) -> None:
    """Count a step whose clipped gradients reach the optimizer: not one dropped by ``on_nonfinite="skip"``,
    ``on_spike="skip"`` or the fp16 loss scaler."""
    if tally is not None and r.clipped_by_watcher and not r.amp_overflow and r.stats is not None:
        tally.add(r.step, r.stats.global_norm, r.stats.clipped_norm)


def spike_in(symptoms: Sequence[Symptom]) -> bool:
    """Whether a step's symptoms hold a ``spike``."""
    return any(s.kind == "spike" for s in symptoms)


def nonfinite_error(step: int, symptoms: Sequence[Symptom]) -> NonFiniteGradientError:
    """The error ``on_nonfinite="raise"`` raises for a step's ``nonfinite`` symptoms (after the logs were flushed)."""
    layers = {s.layer: ("nan" if math.isnan(s.value) else "inf") for s in symptoms
              if s.kind == "nonfinite" and s.layer is not None}
    origin = next((s.origin for s in symptoms if s.origin is not None), None)
    return NonFiniteGradientError(
        f"Non-finite gradients at step {step} in {len(layers)} layer(s): "
        + ", ".join(f"{k} ({v})" for k, v in layers.items())
        + (f". First non-finite value: module '{origin[0]}', {origin[1]} pass" if origin else "")
        + ". The logs were flushed. Use on_nonfinite='skip' to drop such steps, or 'warn' to go on.",
        step=step, layers=layers)
