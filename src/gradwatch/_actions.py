"""What the watcher does about a step: pure decisions, apart from their side effects.

The non-finite decision (skip or raise before ``optimizer.step()``), the fp16 loss scaler's overflow bookkeeping, the
spike decision and the error raised by ``on_nonfinite="raise"``. The watcher applies them; nothing here touches a
model, a sink or the device beyond building the flag tensor it is given the means for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._errors import NonFiniteGradientError
from ._history import ClipTally
from ._stats import DeviceStats
from ._step import Record
from ._symptoms import Symptom

__all__ = [
    "AmpState", "agreed_spike", "decides_before_step", "drop_for_nonfinite", "drop_gradients", "is_persistent_overflow",
    "nonfinite_error", "nonfinite_flag", "spike_in", "tally_clip",
]

ReduceFlag = Callable[[Tensor], Tensor]


@dataclass
class AmpState:
    """The fp16 loss scaler's overflows: the current streak of consecutive ones and the count so far.

    Examples:
        >>> amp = AmpState()
        >>> amp.observe(True), amp.observe(True), amp.observe(False)
        (1, 2, 0)
        >>> amp.overflows
        2
    """

    streak: int = 0
    overflows: int = 0
    patience: int = 20  # consecutive overflows after which they are a real problem (``nonfinite``)

    def observe(self, overflow: bool) -> int:
        """Count one step (``overflow``: the scaler found Inf/NaN); the streak after it."""
        self.streak = self.streak + 1 if overflow else 0
        self.overflows += int(overflow)
        return self.streak

    def observe_step(self, record: Record, nonfinite: Tensor) -> None:
        """Count a step whose gradients a dynamic loss scaler unscaled; ``nonfinite``: its per-layer codes."""
        # Intended host sync: the GradScaler reads its own Inf/NaN flags on the host in scaler.step() right after
        # this call; overflow bookkeeping needs the same answer now.
        record.amp, record.amp_overflow = True, bool(nonfinite.any())
        record.amp_streak = self.observe(record.amp_overflow)
        record.amp_overflows = self.overflows

    def state_dict(self) -> dict[str, int]:
        return {"streak": self.streak, "overflows": self.overflows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.streak = int(state.get("streak", 0))
        self.overflows = int(state.get("overflows", 0))


def is_persistent_overflow(overflow: bool, streak: int, patience: int) -> bool:
    """An overflow run long enough to be a real numerical problem, not the scaler's routine business.

    >>> is_persistent_overflow(True, 20, 20), is_persistent_overflow(True, 3, 20), is_persistent_overflow(False, 0, 1)
    (True, False, False)
    """
    return overflow and streak >= patience


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
    return dev.nonfinite.amax() if dev.layer_max.numel() else home.new_zeros(())


def drop_for_nonfinite(on_nonfinite: str, record: Record, dev: DeviceStats, patience: int,
                       reduce_flag: ReduceFlag | None) -> bool:
    """Whether to drop this step for non-finite gradients (only with ``on_nonfinite`` "skip" or "raise"); a dropped
    step is logged."""
    if not decides_before_step(on_nonfinite):
        return False
    flag = nonfinite_flag(dev, record.amp, is_persistent_overflow(record.amp_overflow, record.amp_streak, patience))
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
