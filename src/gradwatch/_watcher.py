"""The watcher: the engine that every adapter (the Lightning callback, the hooks) drives.

Per step it reduces the gradients on the device (:mod:`gradwatch._stats`), clips them (:mod:`gradwatch.clipping`),
and queues one packed vector of results. The vector reaches the host once per logged step (one transfer, non-blocking
into pinned memory on CUDA) and is then turned into symptoms (:mod:`gradwatch._rules`) and written to the sinks. A step
needs the host earlier only when a decision depends on it (``on_nonfinite="skip"`` or ``"raise"``,
``on_spike="skip"``) or when the caller reads a value of the step's report.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from ._step import (
    StepReport,
    _amp_event,
    _amp_persistent,
    _layer_tags,
    _Record,
    _scalars,
    _Transfer,
)
from ._validate import check_choice, check_int
from ._advice import ModelTraits
from .clipping import Clipper, as_clipper
from ._dashboard import DashboardLogger, HistogramOf
from ._distributed import DistributedContext, detect
from ._errors import ConfigurationError, GradWatchError, GradWatchWarning, NonFiniteGradientError
from ._history import ClipTally, SymptomHistory
from ._hooks.probe import ActivationProbe, NanOrigin, resolve_nan_origin
from ._layers import Layer, discover_layers, replaced_parameters, unwrap_model
from ._rules import HostStats, RuleState, evaluate
from ._sinks import Sink, TensorBoardSink
from ._stats import StatsEngine, host_nonfinite_codes
from ._symptoms import Symptom
from ._thresholds import Thresholds

__all__ = ["GradWatchWarning", "NonFiniteAction", "SpikeAction", "StepReport", "Watcher", "watch"]

logger = logging.getLogger("gradwatch")

NonFiniteAction = Literal["warn", "raise", "skip", "ignore"]
SpikeAction = Literal["warn", "skip", "ignore"]
DistributedMode = Literal["auto", "off"]
SYMPTOM_KINDS: tuple[str, ...] = ("nonfinite", "vanishing", "exploding", "spike")


class Watcher:
    """Watches a model's gradients: statistics, symptoms, clipping and actions. Create it with :func:`watch`.

    Call :meth:`step` once per optimizer step, after ``backward()`` (and after ``scaler.unscale_(optimizer)`` under
    AMP), before ``optimizer.step()``.

    Examples:
        >>> import torch, gradwatch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> watcher = gradwatch.watch(model)
        >>> for _ in range(3):
        ...     model(torch.randn(8, 3)).pow(2).mean().backward()
        ...     report = watcher.step()
        ...     model.zero_grad()
        >>> watcher.steps_taken, list(report.layers)
        (3, ['0', '2'])
        >>> print(watcher.summary())
        gradwatch: no symptoms.
        >>> watcher.close()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        writer: Any = None,
        every_n_steps: int = 1,
        thresholds: Thresholds | None = None,
        clip: float | Clipper | None = None,
        on_nonfinite: NonFiniteAction = "warn",
        layers: str | Sequence[str] | None = None,
        sinks: Sequence[Sink] = (),
        on_spike: SpikeAction = "warn",
        histogram_every_n_steps: int | None = None,
        histograms: Sequence[HistogramOf] = ("grad",),
        figure_every_n_steps: int | None = None,
        activations: bool | str | Sequence[str] = False,
        activation_every_n_steps: int | None = None,
        nan_origin: NanOrigin | None = None,
        distributed: DistributedMode = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}: {model!r:.80}.")
        if log_dir is not None and writer is not None:
            raise ConfigurationError("Pass log_dir= or writer=, not both: log_dir makes a new SummaryWriter.")
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise ConfigurationError(f"log_dir={log_dir!r} must be a path (str or os.PathLike).")
        if writer is not None and not (hasattr(writer, "add_scalar") and hasattr(writer, "add_text")):
            raise ConfigurationError(f"writer={writer!r} must be a SummaryWriter (something with add_scalar and add_text).")
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
        if thresholds is None:
            thresholds = Thresholds()
        if not isinstance(thresholds, Thresholds):
            raise ConfigurationError(f"thresholds={thresholds!r} must be a gradwatch.Thresholds or None.")
        self.thresholds = thresholds
        self.clipper = as_clipper(clip)
        self.on_nonfinite: NonFiniteAction = check_choice(  # type: ignore[assignment]
            "on_nonfinite", on_nonfinite, get_args(NonFiniteAction))
        self.on_spike: SpikeAction = check_choice("on_spike", on_spike, get_args(SpikeAction))  # type: ignore[assignment]
        sinks = list(sinks)
        for s in sinks:
            if not isinstance(s, Sink):
                raise ConfigurationError(f"sinks: {s!r} is not a gradwatch Sink (write_scalars, write_alerts, flush, close).")
        self._layers: list[Layer] = discover_layers(model, layers)
        self.layer_names: list[str] = [layer.name for layer in self._layers]
        self._model_ref: Callable[[], nn.Module | None] = weakref.ref(model)
        # Several processes (gradwatch._distributed): statistics reduced across ranks, rank zero writes alone.
        check_choice("distributed", distributed, get_args(DistributedMode))
        # None in one process (no cost), or when the caller watches this process's gradients alone.
        self._dist: DistributedContext | None = detect(model, self._layers) if distributed == "auto" else None
        if self._dist is not None:
            self._dist.check_config(clipper=self.clipper, histograms=histogram_every_n_steps is not None)
            self._dist.agree_on_layers(self.layer_names)
            if self._dist.rank != 0:
                sinks, log_dir, writer = [], None, None
        self._engine = StatsEngine(self._layers, dist=self._dist)
        self._tags = _layer_tags(self.layer_names)  # made once: formatting them every logged step is not free
        self._dashboard = DashboardLogger(self._layers, histogram_every_n_steps=histogram_every_n_steps,
                                          histograms=histograms, figure_every_n_steps=figure_every_n_steps)
        self._traits = ModelTraits.of(unwrap_model(model), depth=len(self._layers))
        self._rules = RuleState(len(self._layers))
        self.history = SymptomHistory()
        #: How often the clipper acted and the largest norm it held back (``None`` without a clipper).
        self.clip_tally: ClipTally | None = ClipTally() if self.clipper is not None else None
        probe = ActivationProbe(model, activations=activations, nan_origin=resolve_nan_origin(nan_origin, activations),
                                every_n_steps=self.every_n_steps if activation_every_n_steps is None
                                else activation_every_n_steps, thresholds=thresholds)
        if log_dir is not None or writer is not None:
            sinks.insert(0, TensorBoardSink(log_dir=log_dir, writer=writer))
        self.sinks: list[Sink] = sinks
        self._step = 0
        self._pending: list[_Record] = []
        self._transfers: list[_Transfer] = []
        self._closed = False
        self._cleanups: list[Any] = []  # handles (hooks) to remove on close
        self._probe = probe if probe.enabled else None  # hooks for activations and the NaN origin (hooks.py)
        if self._probe is not None:
            self.add_cleanup(self._probe)
            self._probe.prepare(self._step)
        #: Consecutive fp16 loss-scaler overflows after which they are reported as ``nonfinite`` (see ``loss_scale``).
        self.amp_overflow_patience = 20
        self._amp_streak = 0
        self._without_grad = b""  # which layers had no gradient at the last check for replaced parameters
        self._replaced_warned: set[str] = set()
        self._amp_overflows = 0

    # ------------------------------------------------------------------ public API
    @property
    def steps_taken(self) -> int:
        """Number of completed :meth:`step` calls (the next step's number)."""
        return self._step

    @property
    def model(self) -> nn.Module | None:
        """The watched model, or ``None`` once it was garbage-collected or the watcher closed."""
        return self._model_ref()

    @property
    def distributed(self) -> DistributedContext | None:
        """The cross-rank context when ``torch.distributed`` runs several processes, else ``None``."""
        return self._dist

    @property
    def log_dir(self) -> str | None:
        for s in self.sinks:
            if isinstance(s, TensorBoardSink):
                return s.log_dir
        return None

    @torch.no_grad()  # like clip_grad_norm_: gradients that require grad (create_graph=True) build no graph here
    def step(
        self,
        *,
        loss: Tensor | float | None = None,
        global_step: int | None = None,
        loss_scale: Tensor | float | None = None,
        reduce_flag: Callable[[Tensor], Tensor] | None = None,
    ) -> StepReport:
        """Measure this step's gradients, clip them, act on non-finite values, and log.

        Args:
            loss: this step's loss (a tensor or a float), logged as ``gradwatch/loss``; read on the host only with
                the rest of the step's values.
            global_step: the step number to use (adapters pass the trainer's step); by default the watcher counts
                its own calls. Logging happens when ``global_step % every_n_steps == 0``.
            loss_scale: the current scale of a dynamic loss scaler (fp16 AMP's ``GradScaler``), whose gradients were
                unscaled before this call. Non-finite gradients are then the scaler's business (it skips the
                optimizer step and lowers the scale): they are counted as an ``amp_overflow`` event
                (``gradwatch/amp/overflows``, ``gradwatch/amp/scale``) and the rules ignore the step, unless the
                overflows go on for ``amp_overflow_patience`` consecutive steps; then they are ``nonfinite``
                symptoms (and ``on_nonfinite`` acts).
            reduce_flag: combines this process's decision flag (a 0-d tensor, > 0 when the step is bad) with the
                other processes' (an all-reduce MAX), so that ``"skip"`` and ``"raise"`` (and ``on_spike="skip"``)
                decide the same everywhere. Not needed when ``torch.distributed`` is initialised: the statistics, hence
                the flags, are reduced across ranks already (see :attr:`distributed`).
                Called on every step where a decision is taken, on every process.

        Returns:
            The step's :class:`StepReport`. Reading its values may wait for the device; not reading them keeps the
            step free of host syncs (on CUDA).

        Raises:
            NonFiniteGradientError: with ``on_nonfinite="raise"``, after the logs were flushed.
        """
        self._check_open()
        if global_step is not None:
            self._step = check_int("global_step", global_step, minimum=0)
        step = self._step
        logged = step % self.every_n_steps == 0
        self._collect_ready()
        dev = self._engine.compute(with_params=logged)
        record = _Record(step=step, logged=logged, packed=None, has_grad=dev.has_grad, numel=dev.numel,
                         extra_tags=[], extra_values={})
        tail = self._dashboard.device_part(step, self._layers, dev.total_norm.device, dev.total_norm.dtype)
        amp = record.amp = loss_scale is not None
        if amp:
            # Intended host sync: the GradScaler reads its own Inf/NaN flags on the host in scaler.step() right after
            # this call; overflow bookkeeping needs the same answer now.
            overflow = record.amp_overflow = bool(dev.nonfinite.any())
            self._amp_streak = self._amp_streak + 1 if overflow else 0
            self._amp_overflows += int(overflow)
            record.amp_streak, record.amp_overflows = self._amp_streak, self._amp_overflows
        bad = False
        if self.on_nonfinite in ("skip", "raise"):
            if amp:
                flag = torch.tensor(float(record.amp_overflow and record.amp_streak >= self.amp_overflow_patience),
                                    dtype=dev.total_norm.dtype, device=dev.total_norm.device)
            else:
                flag = dev.nonfinite.amax() if dev.layer_max.numel() else dev.total_norm.new_zeros(())
            if reduce_flag is not None:
                flag = reduce_flag(flag)
            # Intended host sync: the decision to skip or raise must be known before optimizer.step().
            bad = bool(flag > 0)
            if bad:
                logged = record.logged = True
        clipped = dev.total_norm
        extras: list[Tensor] = []
        if self.clipper is not None and not bad:
            record.clipped_by_watcher = True
            result = self.clipper.clip(dev.batch)
            clipped = result.clipped_norm if result.clipped_norm is not None else dev.batch.recompute_total_norm()
            for tag, value in (("gradwatch/clip/threshold", result.threshold), ("gradwatch/clip/coef", result.coef),
                               ("gradwatch/clip/active_frac", result.active_frac),
                               ("gradwatch/clip/clipped", result.clipped)):
                if isinstance(value, Tensor):
                    record.extra_tags.append(tag)
                    extras.append(value.detach().reshape(1).to(dev.total_norm.device, dev.total_norm.dtype))
                elif value is not None:
                    record.extra_values[tag] = float(value)
        if amp:
            record.extra_tags.append("gradwatch/amp/scale")
            scale_t = loss_scale.detach() if isinstance(loss_scale, Tensor) else torch.tensor(float(loss_scale))
            extras.append(scale_t.reshape(1).to(dev.total_norm.device, dev.total_norm.dtype, non_blocking=True))
        if loss is not None:
            record.extra_tags.append("gradwatch/loss")
            loss_t = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
            extras.append(loss_t.reshape(1).to(dev.total_norm.device, dev.total_norm.dtype, non_blocking=True))
        parts = [dev.layer_sumsq, dev.layer_max, dev.total_norm.reshape(1),
                 clipped.reshape(1).to(dev.total_norm.dtype), *extras]
        if logged:
            parts.append(dev.param_norm if dev.param_norm is not None else self._engine.param_norms())
        if tail is not None:  # histograms (before clipping) travel with the step's statistics: still one transfer
            parts.append(tail)
            record.tail_len = tail.numel()
        if self._probe is not None:  # the hooks' values travel at the end of the same vector
            probe_values, record.probe = self._probe.collect(step, dev.total_norm.device, dev.total_norm.dtype)
            if probe_values is not None:
                parts.append(probe_values)
        record.packed = torch.cat(parts)
        self._pending.append(record)
        self._step += 1
        if self._probe is not None:
            self._probe.prepare(self._step)
        report = StepReport(record, self._resolve)
        if bad:
            self._resolve(record)
            if self.on_nonfinite == "raise":
                self.flush()
                layers = {s.layer: ("nan" if s.value != s.value else "inf") for s in record.symptoms
                          if s.kind == "nonfinite" and s.layer is not None}
                origin = next((s.origin for s in record.symptoms if s.origin is not None), None)
                raise NonFiniteGradientError(
                    f"Non-finite gradients at step {step} in {len(layers)} layer(s): "
                    + ", ".join(f"{k} ({v})" for k, v in layers.items())
                    + (f". First non-finite value: module '{origin[0]}', {origin[1]} pass" if origin else "")
                    + ". The logs were flushed. Use on_nonfinite='skip' to drop such steps, or 'warn' to go on.",
                    step=step, layers=layers)
            self._skip()
            record.skipped, record.skip_reason = True, "nonfinite"
        elif logged or record.packed.device.type == "cpu":
            self._send()
        if self.on_spike == "skip" and not bad:
            # Intended host sync (only with on_spike="skip"): whether this step is a spike must be known before
            # optimizer.step().
            self._resolve(record)
            spike = any(s.kind == "spike" for s in record.symptoms)
            if reduce_flag is not None:  # the loss differs between processes: one decision for all of them
                spike = bool(reduce_flag(dev.total_norm.new_tensor(float(spike))) > 0)
            if spike:
                self._skip()
                record.skipped, record.skip_reason = True, "spike"
            else:
                self._tally(record)
        return report

    def _tally(self, r: _Record) -> None:
        """Count a step whose clipped gradients reach the optimizer (``clip_tally``): not one dropped by
        ``on_nonfinite="skip"``, ``on_spike="skip"`` or the fp16 loss scaler."""
        if self.clip_tally is not None and r.clipped_by_watcher and not r.amp_overflow and r.stats is not None:
            self.clip_tally.add(r.step, r.stats.global_norm, r.stats.clipped_norm)

    def flush(self) -> None:
        """Bring every pending step to the host, evaluate it, and flush the sinks."""
        if self._pending:
            self._resolve(self._pending[-1])
        for s in list(self.sinks):
            self._safe(s, "flush")

    def close(self) -> None:
        """Flush, close what gradwatch opened, remove what it attached to the model, drop every reference to it."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            for handle in self._cleanups:
                handle.remove()
            self._cleanups.clear()
            for s in list(self.sinks):
                self._safe(s, "close")
            self._engine.close()
            self._layers = []
            self._model_ref = _no_model
            self._transfers.clear()

    def state_dict(self) -> dict[str, Any]:
        """Rule and clipper state (and the step counter), for checkpoints."""
        if self._pending:
            self._resolve(self._pending[-1])
        return {
            "version": 1,
            "step": self._step,
            "layers": list(self.layer_names),
            "rules": self._rules.state_dict(),
            "clipper": self.clipper.state_dict() if self.clipper is not None else {},
            **({"activations": self._probe.state_dict()} if self._probe is not None else {}),
            "amp": {"streak": self._amp_streak, "overflows": self._amp_overflows},
            **({"clip_tally": self.clip_tally.state_dict()} if self.clip_tally is not None else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. The watched layers must be the same."""
        if state.get("version") != 1:
            raise ConfigurationError(f"Unknown gradwatch state version {state.get('version')!r}; expected 1.")
        if list(state["layers"]) != self.layer_names:
            raise ConfigurationError("The checkpoint's watched layers differ from this watcher's: "
                                     f"{list(state['layers'])[:5]}... vs {self.layer_names[:5]}...")
        if self._pending:
            self._resolve(self._pending[-1])
        self._step = int(state["step"])
        self._rules.load_state_dict(state["rules"])
        if self.clipper is not None:
            self.clipper.load_state_dict(dict(state["clipper"]))
        if self._probe is not None and "activations" in state:
            self._probe.load_state_dict(state["activations"])
            self._probe.prepare(self._step)
        if self.clip_tally is not None and "clip_tally" in state:  # absent from older checkpoints
            self.clip_tally.load_state_dict(state["clip_tally"])
        amp = state.get("amp", {})
        self._amp_streak = int(amp.get("streak", 0))
        self._amp_overflows = int(amp.get("overflows", 0))

    def summary(self) -> str:
        """A short table of every symptom seen so far: kind, layer, count, first and last step; with a clipper, a
        line on how often it acted."""
        if self._pending and not self._closed:
            self._resolve(self._pending[-1])
        text = self.history.format()
        if self.clip_tally is not None and self.clip_tally.steps:
            text += f"\n{self.clip_tally}"
        return text

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.layer_names)} layers, step {self._step}"
        return f"Watcher({state}, every_n_steps={self.every_n_steps}, clip={self.clipper!r}, on_nonfinite={self.on_nonfinite!r})"

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise GradWatchError("This watcher is closed; create a new one with gradwatch.watch(model).")

    def add_cleanup(self, handle: Any) -> None:
        """Register something with a ``remove()`` method (a hook handle) to be removed by :meth:`close`."""
        self._cleanups.append(handle)

    def _skip(self) -> None:
        model = self._model_ref()
        params = model.parameters() if model is not None else self._engine.params
        for p in params:
            p.grad = None

    def _send(self) -> None:
        """Move every step not yet on its way to the host, as one vector: one transfer per logged step."""
        records = [r for r in self._pending if not r.sent]
        if not records:
            return
        for r in records:
            r.sent = True
        payload = torch.cat([r.packed for r in records])  # type: ignore[misc]
        if payload.device.type == "cpu":
            self._distribute(records, payload.numpy())
        elif payload.device.type == "cuda":
            buffer = torch.empty(payload.shape, dtype=payload.dtype, pin_memory=True)
            buffer.copy_(payload, non_blocking=True)  # not a sync: read once the event says it has landed
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(payload.device))  # the copy's stream, not cuda:0's
            self._transfers.append(_Transfer(records, buffer, event))
        else:
            self._distribute(records, payload.cpu().numpy())  # Intended host sync: other devices have no event API here.

    @staticmethod
    def _distribute(records: list[_Record], vec: np.ndarray) -> None:
        offset = 0
        for r in records:
            n = r.packed.numel()  # type: ignore[union-attr]
            r.host_vec = np.array(vec[offset:offset + n], dtype=np.float64)
            r.packed = None
            offset += n

    def _collect_ready(self, *, wait: bool = False) -> None:
        while self._transfers:
            t = self._transfers[0]
            if not wait and not t.event.query():
                break
            if wait:
                t.event.synchronize()  # Intended host sync, only when waiting: the copy was queued a step or more ago.
            self._distribute(t.records, t.buffer.numpy())
            self._transfers.pop(0)
        self._process_ready()

    def _resolve(self, record: _Record) -> None:
        """Bring ``record`` and every earlier step to the host and evaluate them (a sync if not there yet)."""
        if record.stats is not None:
            return
        self._send()
        self._collect_ready(wait=True)

    def _process_ready(self) -> None:
        while self._pending and self._pending[0].host_vec is not None:
            self._process(self._pending.pop(0))

    def _process(self, r: _Record) -> None:
        n = len(self.layer_names)
        v = r.host_vec
        assert v is not None  # invariant of _process_ready, not a validation
        n_extra = len(r.extra_tags)
        base = 2 * n + 2
        stats = HostStats(
            step=r.step, names=self.layer_names, grad_norm=np.sqrt(v[:n]), grad_max=v[n:2 * n],
            nonfinite=host_nonfinite_codes(v[:n], v[n:2 * n]), has_grad=np.asarray(r.has_grad, dtype=bool),
            numel=np.asarray(r.numel, dtype=np.int64), global_norm=float(v[2 * n]), clipped_norm=float(v[2 * n + 1]),
            param_norm=v[base + n_extra:base + n_extra + n] if r.logged else None,
        )
        for i, tag in enumerate(r.extra_tags):
            r.extra_values[tag] = float(v[base + i])
        stats.extras = r.extra_values
        persistent = r.amp_overflow and r.amp_streak >= self.amp_overflow_patience
        if r.amp_overflow and not persistent:
            symptoms, onsets = [], []  # the scaler's business: it skips this step; the rules do not see it
            self.history.extend([_amp_event(r)])
        else:
            symptoms, onsets = evaluate(stats, self.thresholds, self._rules, self._traits)
            if persistent:
                symptoms = [_amp_persistent(s, r) if s.kind == "nonfinite" else s for s in symptoms]
                onsets = [_amp_persistent(s, r) if s.kind == "nonfinite" else s for s in onsets]
        probe_scalars: dict[str, float] = {}
        if r.probe is not None and self._probe is not None:
            symptoms, onsets, probe_scalars = self._probe.process(r.probe, v[v.size - r.probe.size:], symptoms, onsets,
                                                                  stats)
        r.stats, r.symptoms, r.host_vec = stats, symptoms, None
        if self.on_spike != "skip":  # with on_spike="skip", step() counts the step once it knows it is not dropped
            self._tally(r)
        self.history.extend(symptoms)
        scalars: dict[str, float] = {}
        if r.logged:
            scalars.update(_scalars(stats, self._tags))
            scalars.update(r.extra_values)
        scalars.update(probe_scalars)
        if r.amp and (r.logged or r.amp_overflow):
            scalars["gradwatch/amp/scale"] = r.extra_values["gradwatch/amp/scale"]
            scalars["gradwatch/amp/overflows"] = float(r.amp_overflows)
        if r.logged or symptoms:
            counts = dict.fromkeys(SYMPTOM_KINDS + (self._probe.kinds if self._probe is not None else ()), 0.0)
            for s in symptoms:
                counts[s.kind] = counts.get(s.kind, 0.0) + 1
            scalars.update({f"gradwatch/symptoms/{k}": c for k, c in counts.items()})
        onset_ids = {id(s) for s in onsets}
        alerts = [s for s in symptoms if s.kind == "nonfinite" or id(s) in onset_ids]
        for sink in list(self.sinks):  # a copy: a failing sink removes itself
            self._safe(sink, "write_scalars", r.step, scalars)
            if alerts:
                self._safe(sink, "write_alerts", r.step, alerts)
        end = len(v) - (r.probe.size if r.probe is not None else 0)  # the probe's values come last, histograms before
        tail = v[end - r.tail_len:end] if r.tail_len else None
        self._dashboard.host_part(r.step, tail, stats, symptoms, scalars, list(self.sinks), self._safe)
        self._announce(r.step, symptoms, onsets)
        if r.logged and not stats.has_grad.all():
            self._check_replaced(stats.has_grad)

    def _check_replaced(self, has_grad: np.ndarray) -> None:
        """A trainable layer without a gradient may hold parameters replaced after ``watch()``: say so, once a layer.

        Runs when the set of layers without a gradient changes (frozen layers cost nothing step after step)."""
        key = has_grad.tobytes()
        if key == self._without_grad:
            return
        self._without_grad = key
        model = self._model_ref()
        if model is None or (self._dist is not None and (self._dist.rank != 0 or self._dist.kinds != ("replicated",))):
            return  # FSDP and tensor parallelism swap parameter objects by design (sharded, unsharded)
        for i in np.flatnonzero(~has_grad):
            layer = self._layers[i]
            if layer.name in self._replaced_warned or not any(p.requires_grad for p in layer.params):
                continue
            paths = replaced_parameters(model, layer)
            if paths:
                self._replaced_warned.add(layer.name)
                warnings.warn(
                    f"gradwatch: layer '{layer.name}' now holds other parameters than when watch() was called "
                    f"({', '.join(paths)} replaced, by resize_token_embeddings() or a module swapped for a new one, "
                    "say). gradwatch still watches the old ones, which get no gradient: close this watcher and call "
                    "gradwatch.watch() again once the model is final.", GradWatchWarning, stacklevel=4)

    def _announce(self, step: int, symptoms: list[Symptom], onsets: list[Symptom]) -> None:
        if self._dist is not None and self._dist.rank != 0:
            return  # one warning per job, not one per rank
        nonfinite = [s for s in symptoms if s.kind == "nonfinite"]
        spikes = [s for s in symptoms if s.kind == "spike"] if self.on_spike != "ignore" else []
        for s in spikes:
            action = " The step was skipped." if self.on_spike == "skip" else ""
            warnings.warn(f"gradwatch: {s.message}{action}", GradWatchWarning, stacklevel=4)
        if nonfinite and self.on_nonfinite in ("warn", "skip"):
            what = ", ".join(f"{s.layer} ({'NaN' if s.value != s.value else 'Inf'})" for s in nonfinite)
            action = " The step was skipped." if self.on_nonfinite == "skip" else ""
            warnings.warn(f"gradwatch: non-finite gradients at step {step} in {what}.{action} "
                          f"{nonfinite[0].message.split('. ', 1)[-1]}", GradWatchWarning, stacklevel=4)
        by_kind: dict[str, list[Symptom]] = {}
        for s in onsets:
            if s.kind != "nonfinite" and not (s.kind == "spike" and spikes):  # warned about above, every one of them
                by_kind.setdefault(s.kind, []).append(s)
        for kind, group in by_kind.items():
            if len(group) == 1:
                logger.warning("gradwatch: %s", group[0].message)
            else:  # one message per kind and step: the first layer's full text, the others by name
                names = ", ".join(s.layer or "(model)" for s in group[1:])
                logger.warning("gradwatch: %s Also %s at: %s.", group[0].message, kind, names)

    def _safe(self, sink: Sink, method: str, *args: Any) -> None:
        """A sink that fails (disk full, closed writer) is reported once and dropped; training goes on."""
        try:
            getattr(sink, method)(*args)
        except Exception as exc:  # noqa: BLE001 - a diagnostics sink must never stop training
            if method == "close":
                return
            warnings.warn(f"gradwatch: sink {sink!r} failed in {method} ({exc!r}); it is disabled from now on.",
                          GradWatchWarning, stacklevel=3)
            if sink in self.sinks:
                self.sinks.remove(sink)

    def __iter__(self) -> Iterator[str]:
        return iter(self.layer_names)


def _no_model() -> nn.Module | None:
    return None


def watch(
    model: nn.Module,
    *,
    log_dir: str | os.PathLike[str] | None = None,
    writer: Any = None,
    every_n_steps: int = 1,
    thresholds: Thresholds | None = None,
    clip: float | Clipper | None = None,
    on_nonfinite: NonFiniteAction = "warn",
    layers: str | Sequence[str] | None = None,
    sinks: Sequence[Sink] = (),
    on_spike: SpikeAction = "warn",
    histogram_every_n_steps: int | None = None,
    histograms: Sequence[HistogramOf] = ("grad",),
    figure_every_n_steps: int | None = None,
    activations: bool | str | Sequence[str] = False,
    activation_every_n_steps: int | None = None,
    nan_origin: NanOrigin | None = None,
    distributed: DistributedMode = "auto",
) -> Watcher:
    """Watch ``model``'s gradients. Call ``watcher.step()`` after each ``backward()``, before ``optimizer.step()``.

    Args:
        model: any ``nn.Module`` (DDP and ``torch.compile`` wrappers are seen through for layer names).
        log_dir: write TensorBoard event files there (a new ``SummaryWriter``, closed by ``close()``).
        writer: or write through this ``SummaryWriter`` (flushed, never closed by gradwatch).
        every_n_steps: write per-layer scalars every this many steps (>= 1). Symptoms are logged whenever they occur.
        thresholds: the rules' parameters; ``None`` for the calibrated defaults (:class:`Thresholds`).
        clip: ``None``; a float (global L2 max norm, as ``clip_grad_norm_``); or a clipper from
            :mod:`gradwatch.clipping`.
        on_nonfinite: ``"warn"`` (symptom and Python warning), ``"raise"`` (flush logs, raise
            :class:`~gradwatch.NonFiniteGradientError`), ``"skip"`` (set every gradient to ``None`` so
            ``optimizer.step()`` changes nothing; ``report.skipped``), ``"ignore"`` (symptom and logs only).
        layers: fnmatch glob(s) over layer names choosing what is watched (default: every layer). Statistics, rules,
            the global norm and clipping all cover the watched layers only.
        sinks: more :class:`~gradwatch._sinks.Sink` objects (a :class:`~gradwatch._sinks.MemorySink`, say).
        on_spike: what to do on a ``spike`` symptom (a gradient-norm or loss spike, :mod:`gradwatch._spikes`):
            ``"warn"`` (symptom and Python warning), ``"skip"`` (also set every gradient to ``None`` so
            ``optimizer.step()`` changes nothing; ``report.skipped``; each step then waits for the device once),
            ``"ignore"`` (symptom and logs only).
        histogram_every_n_steps: write per-layer histograms (``gradwatch/grad_hist/<layer>``) on the steps that are
            multiples of this; ``None`` (default) for none. Computed on the device, moved with the step's statistics.
        histograms: what to histogram: ``"grad"`` (default) and/or ``"param"`` (``gradwatch/param_hist/<layer>``).
        figure_every_n_steps: write the gradient-flow figure (image ``gradwatch/flow``) on the steps that are
            multiples of this; ``None`` (default) for never. Needs matplotlib (``pip install 'gradwatch[plot]'``).
        activations: ``True`` to hook every module (a glob or list of globs over module names for some): output mean,
            std, zero fraction, saturated and dead fractions, gradient norm flowing out of each module, and the
            ``saturated`` and ``dead`` symptoms (docs/activations.md). Quiet in ``eval()`` and ``no_grad``.
        activation_every_n_steps: sample activations every this many steps (default: ``every_n_steps``); hooks are
            attached on those steps only.
        nan_origin: locate the module where a non-finite value first appeared (``Symptom.origin``): ``"off"``,
            ``"sampled"`` (on the sampled steps) or ``"every_step"`` (hooks on every step: costs about as much as
            activations every step, still far less than ``detect_anomaly``). Default: ``"sampled"`` with activations
            on, ``"off"`` without.
        distributed: ``"auto"`` (default): when ``torch.distributed`` runs several processes, statistics are combined
            across ranks (one collective per step), decisions agree, and only global rank zero writes; creating the
            watcher is then collective (every rank must call ``watch``). ``"off"``: this process's gradients alone, as
            in a single process (for a model watched on one rank only; wrong numbers for sharded gradients).

    Returns:
        A :class:`Watcher`; also a context manager that closes it.

    Raises:
        ConfigurationError: for any invalid argument, naming the value and the valid choices.

    >>> import torch
    >>> from torch import nn
    >>> import gradwatch
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> with gradwatch.watch(model) as watcher:
    ...     model(torch.randn(16, 4)).pow(2).mean().backward()
    ...     report = watcher.step()
    >>> sorted(report.layers)
    ['0', '2']
    >>> report.symptoms
    []
    """
    return Watcher(model, log_dir=log_dir, writer=writer, every_n_steps=every_n_steps, thresholds=thresholds,
                   clip=clip, on_nonfinite=on_nonfinite, layers=layers, sinks=sinks, on_spike=on_spike,
                   histogram_every_n_steps=histogram_every_n_steps, histograms=histograms,
                   figure_every_n_steps=figure_every_n_steps, activations=activations,
                   activation_every_n_steps=activation_every_n_steps, nan_origin=nan_origin, distributed=distributed)
