"""Device-side measurement of one step: statistics, clipping, the step's extra values, packed into one vector.

Nothing here waits for the device. ``Measure.start()`` reduces the gradients (``gradwatch._stats``): on a step that
logs nothing, their sums of squares alone;
``Measure.finish()`` clips them (unless the step is dropped), gathers the extra values (what the clipper did, the
AMP scale, the loss), the parameter norms of a logged step, the update-to-weight ratios of the last optimizer step
(``gradwatch._updates``, with ``watch(optimizer=...)``), the histograms and the activation probe's values, and
packs them as ``Layout`` says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._cadence import Cadence
from ._dashboard import DashboardLogger
from ._layers import Layer
from ._layout import Layout
from ._stats import DeviceStats, StatsEngine
from ._step import Record
from ._updates import UpdateTracker
from .clipping import Clipper

__all__ = ["Measure", "Measured"]

_CLIP_TAGS = ("threshold", "coef", "active_frac", "clipped")
#: Devices whose sums of squares accumulate in float64 (``gradwatch._tensors.accumulate_dtype()``): there a step that
#: logs nothing can skip the maxima (an Inf sum means an Inf entry).
_WIDE_SUMS = ("cpu", "cuda")


@dataclass
class Measured:
    """A step between its statistics and its packing."""

    step: int
    logged: bool
    dev: DeviceStats

    @property
    def home(self) -> torch.device:
        return self.dev.total_norm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dev.total_norm.dtype

    def value(self, x: Tensor | float) -> Tensor:
        """``x`` as a 1-element tensor of the step's dtype on its device (no wait)."""
        t = x.detach() if isinstance(x, Tensor) else torch.tensor(float(x))
        return t.reshape(1).to(self.home, self.dtype, non_blocking=True)


class Measure:
    """The device side of ``gradwatch.Watcher.step()``."""

    def __init__(self, layers: Sequence[Layer], engine: StatsEngine, clipper: Clipper | None,
                 dashboard: DashboardLogger, probe: Any, updates: UpdateTracker | None = None, *,
                 every_max: bool = False, host_path: bool = False) -> None:
        self.layers = layers
        self.engine = engine
        self.clipper = clipper
        self.dashboard = dashboard
        self.probe = probe  # the activation probe (gradwatch._hooks.probe), or None
        self.updates = updates  # the optimizers' update tracker, or None
        self.every_max = every_max  # the maxima on every step (on_nonfinite "skip"/"raise": the step waits anyway)
        # Whether a CPU step that logs nothing may be judged from its sums as they are (on_host()): one process, and
        # nothing that acts on the gradients or decides before optimizer.step() (clipper, skip, raise, hooks, scaler).
        self.host_path = host_path and clipper is None and probe is None and not every_max

    def start(self, step: int, logged: bool, cadence: Cadence | None = None) -> Measured:
        """This step's per-layer statistics, on the device.

        A step that logs nothing measures the sums of squares alone (what the rules and the actions need), where they
        accumulate in float64 (the CPU, CUDA: see ``gradwatch._stats.host_nonfinite_codes()``); a step that writes
        the flow figure takes the maxima too. On the CPU, a step whose sums are not finite also takes its maxima (the
        exact NaN/Inf codes) and, within the window budget of ``cadence``, logs.
        """
        home = self.engine.home
        figure = self.dashboard.figure_every_n_steps
        with_max = (logged or self.every_max or home.type not in _WIDE_SUMS
                    or (figure is not None and step % figure == 0))
        dev = self.engine.compute(with_params=logged, with_max=with_max)
        if dev.layer_max is None and not math.isfinite(dev.cpu_norm()):
            # A CPU value: nothing to wait for. A NaN or Inf sum makes the global norm NaN or Inf.
            dev.layer_max = self.engine.grad_maxima(dev.batch)
            logged = cadence is not None and cadence.forced()
        return Measured(step, logged, dev)

    def on_host(self, m: Measured, record: Record, loss: Tensor | float | None) -> tuple[np.ndarray, float] | None:
        """A CPU step that logs nothing and whose sums are finite, ready for the rules as it is: its per-layer sums of
        squares (a numpy view) and global norm, the loss in ``record.extra_values``; no vector packed, nothing
        moved. ``None`` for any other step, which takes ``finish()``."""
        dev = m.dev
        if not (self.host_path and not record.logged and dev.layer_max is None and m.home.type == "cpu"
                and (self.updates is None or not self.updates.armed) and not self.dashboard.histogram_step(m.step)):
            return None  # (on the CPU, sums that are not finite took their maxima: start())
        if isinstance(loss, Tensor) and loss.device.type != "cpu":
            return None  # read with the step's vector, not here
        if loss is not None:
            record.extra_values["gradwatch/loss"] = float(loss)  # a CPU value: nothing to wait for
        if self.updates is not None:
            self.updates.collect(m.home, m.dtype)  # not armed: nothing was measured; its count moves on
        return dev.layer_sumsq.numpy(), dev.cpu_norm()

    def finish(self, m: Measured, record: Record, *, clip: bool, loss: Tensor | float | None,
               loss_scale: Tensor | float | None) -> None:
        """Clip (when ``clip``), gather the step's values and pack them into ``record``."""
        dev = m.dev
        parts = self._statistics(dev, record.logged)
        extras: list[Tensor] = []
        tail = self.dashboard.device_part(m.step, self.engine.layers, m.home, m.dtype)  # histograms before clipping
        clipper = self.clipper if clip else None
        clipped = dev.total_norm if clipper is None else _clip(clipper, m, record, extras)
        parts["clipped_norm"] = clipped.reshape(1).to(m.dtype)
        if loss_scale is not None:
            record.extra_tags.append("gradwatch/amp/scale")
            extras.append(m.value(loss_scale))
        if loss is not None:
            record.extra_tags.append("gradwatch/loss")
            extras.append(m.value(loss))
        if extras:
            parts["extras"] = torch.cat(extras)
        self._weights(parts, m, record.logged)
        if tail is not None:  # histograms (before clipping) travel with the step's statistics: still one transfer
            parts["histograms"] = tail
        if self.probe is not None:  # the hooks' values travel in the same vector
            probe_values, record.probe = self.probe.collect(m.step, m.home, m.dtype)
            if probe_values is not None:
                parts["probe"] = probe_values
        record.layout, record.packed = Layout.pack(parts)

    def _statistics(self, dev: DeviceStats, logged: bool) -> dict[str, Tensor]:
        """The step's gradient statistics by slice; a step that logs after all (a decision) takes its maxima now,
        before clipping changes the gradients."""
        if logged and dev.layer_max is None:
            dev.layer_max = self.engine.grad_maxima(dev.batch)
        parts: dict[str, Tensor] = {"sumsq": dev.layer_sumsq, "global_norm": dev.total_norm}
        if dev.layer_max is not None:
            parts["max"] = dev.layer_max
        return parts

    def _weights(self, parts: dict[str, Tensor], m: Measured, logged: bool) -> None:
        """The parameter norms of a logged step, and the update ratios when they were measured."""
        if logged:
            parts["param_norm"] = m.dev.param_norm if m.dev.param_norm is not None else self.engine.param_norms()
        if self.updates is not None:  # the optimizer steps since the previous call, when they were measured
            ratios = self.updates.collect(m.home, m.dtype)  # L values, no wait; None when not measured
            if ratios is not None:
                parts["update_ratio"] = ratios


def _clip(clipper: Clipper, m: Measured, record: Record, extras: list[Tensor]) -> Tensor:
    """Run the clipper; its values become the step's extras (tensors) or extra values (host numbers)."""
    record.clipped_by_watcher = True
    result = clipper.clip(m.dev.batch)
    clipped = result.clipped_norm if result.clipped_norm is not None else m.dev.batch.recompute_total_norm()
    for name in _CLIP_TAGS:
        value = getattr(result, name)
        tag = f"gradwatch/clip/{name}"
        if isinstance(value, Tensor):
            record.extra_tags.append(tag)
            extras.append(value.detach().reshape(1).to(m.home, m.dtype))
        elif value is not None:
            record.extra_values[tag] = float(value)
    return clipped
