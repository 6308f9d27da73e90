"""The watcher: the engine that every adapter (the Lightning callback, the hooks) drives.

A step flows through small stages, each in its own module:

1. measurement on the device (``gradwatch._measure``: statistics, clipping, the step's values), packed as the
   layout says (``gradwatch._layout``);
2. actions that must be decided before ``optimizer.step()`` (``gradwatch._actions``: skip or raise on non-finite
   gradients, skip a spike);
3. transport to the host (``gradwatch._transport``: one transfer per logged step, non-blocking on CUDA);
4. evaluation on the host (``gradwatch._evaluate``: the rules turn statistics into symptoms);
5. fan-out (``gradwatch._fanout``: sinks, warnings, log lines).

A step needs the host early only when a decision depends on it (``on_nonfinite="skip"`` or ``"raise"``,
``on_spike="skip"``) or when the caller reads a value of the step's report.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._actions import agreed_spike, drop_for_nonfinite, drop_gradients, nonfinite_error, tally_clip
from ._assemble import assemble, guard
from ._config import DistributedMode, HistogramOf, NonFiniteAction, SpikeAction, WatchConfig
from ._errors import ConfigurationError, GradWatchError, GradWatchWarning
from ._history import ClipTally
from ._hooks.probe import NanOrigin
from ._measure import Measured
from ._notebook import Summary, flow_figure_of, summary_of
from ._sinks import Sink, TensorBoardSink
from ._step import Record, StepReport
from ._thresholds import Thresholds
from ._validate import check_int, check_step_args
from .clipping import Clipper

__all__ = ["GradWatchWarning", "NonFiniteAction", "SpikeAction", "StepReport", "Watcher", "watch"]


class Watcher:
    """Watches a model's gradients: statistics, symptoms, clipping and actions. Create it with ``watch()``.

    Call ``step()`` once per optimizer step, after ``backward()`` (and after ``scaler.unscale_(optimizer)`` under
    AMP), before ``optimizer.step()``. Close it (or use it as a context manager); one dropped unclosed is released
    when collected, with a ``ResourceWarning``.

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

    def __init__(self, model: nn.Module, config: WatchConfig | None = None, *, sinks: Sequence[Sink] = (),
                 **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}: {model!r:.80}.")
        if config is not None and options:
            raise ConfigurationError(f"Pass a WatchConfig or options, not both (got {sorted(options)}).")
        self.config = config if config is not None else WatchConfig(**options)
        self._s = s = assemble(model, self.config, sinks)
        self._layers, self._probe, self._transport = s.layers, s.probe, s.transport
        self.layer_names: list[str] = [layer.name for layer in s.layers]
        self._model_ref: Callable[[], nn.Module | None] = weakref.ref(model)
        self.history = s.history
        #: How often the clipper acted and the largest norm it held back (``None`` without a clipper).
        self.clip_tally: ClipTally | None = s.clip_tally
        self._step = 0
        self._closed = False
        self._guard = guard(self, s)  # dropped unclosed: its steps written, its hooks removed (ResourceWarning)
        if self._probe is not None:
            self._probe.prepare(self._step)

    # ------------------------------------------------------------------ public API
    every_n_steps = property(lambda self: self.config.every_n_steps)
    thresholds = property(lambda self: self.config.thresholds)
    clipper = property(lambda self: self.config.clipper)
    on_nonfinite = property(lambda self: self.config.on_nonfinite)
    on_spike = property(lambda self: self.config.on_spike)
    sinks = property(lambda self: self._s.fanout.sinks, doc="The sinks written to (a failing one is dropped).")
    steps_taken = property(lambda self: self._step, doc="Number of completed step() calls (the next step's number).")
    model = property(lambda self: self._model_ref(), doc="The watched model; None once collected or closed.")
    distributed = property(lambda self: self._s.dist, doc="The cross-rank context with several processes, else None.")
    _pending = property(lambda self: self._transport.pending)

    @property
    def amp_overflow_patience(self) -> int | None:
        """Consecutive fp16 loss-scaler overflows after which they are ``nonfinite`` symptoms whatever the scale;
        ``None`` (default): judged by the scale alone (see ``watch(scaler=...)``)."""
        return self._s.amp.patience

    @amp_overflow_patience.setter
    def amp_overflow_patience(self, value: int | None) -> None:
        self._s.amp.patience = None if value is None else check_int("amp_overflow_patience", value, minimum=1)

    @property
    def log_dir(self) -> str | None:
        return next((s.log_dir for s in self.sinks if isinstance(s, TensorBoardSink)), None)

    def step(self, *, loss: Tensor | float | None = None, global_step: int | None = None,
             loss_scale: Tensor | float | None = None, reduce_flag: Callable[[Tensor], Tensor] | None = None,
             log: bool | None = None) -> StepReport:
        """Measure this step's gradients, clip them, act on non-finite values, and log.

        Args:
            loss: this step's loss (a number, or a tensor of one element), logged as ``gradwatch/loss``; read on the
                host only with the rest of the step's values.
            global_step: the step number to use (adapters pass the trainer's step); by default the watcher counts
                its own calls. The cadence (``every_n_steps``) reads it.
            loss_scale: the current scale of a dynamic loss scaler (fp16 AMP's ``GradScaler``), whose gradients were
                unscaled before this call; by default that of ``watch(scaler=...)``, read at each step. Non-finite
                gradients are then the scaler's business (it skips the optimizer step and lowers the scale): they are
                an ``amp_overflow`` event (``gradwatch/amp/overflows``, ``gradwatch/amp/scale``) and the rules ignore
                the step, until the scale stops falling (a scale of 1 or below, or overflows at which it did not go
                down); then they are ``nonfinite`` symptoms (and ``on_nonfinite`` acts).
            reduce_flag: combines this process's decision flag (a 0-d tensor, > 0 when the step is bad) with the
                other processes' (an all-reduce MAX), so that ``"skip"`` and ``"raise"`` (and ``on_spike="skip"``)
                decide the same everywhere. Not needed when ``torch.distributed`` is initialised: the statistics, hence
                the flags, are reduced across ranks already (see ``distributed``).
                Called on every step where a decision is taken, on every process.
            log: whether this step writes its per-layer scalars. ``None`` (default): gradwatch's cadence decides
                (``every_n_steps``); adapters pass ``True``/``False`` to follow their trainer's logging steps (with an
                optimizer attached its update ratios are then measured at every optimizer step, since the next
                logging step is the caller's to decide). Symptoms are written whenever they occur either way, and
                under the default cadence so are the episode windows.

        Returns:
            The step's ``StepReport``. Reading its values may wait for the device; not reading them keeps the
            step free of host syncs (on CUDA). On the CPU the step is evaluated and written within this call.

        Raises:
            ConfigurationError: for an argument of the wrong kind, before anything is changed.
            NonFiniteGradientError: with ``on_nonfinite="raise"``, after the logs were flushed.
        """
        # Like clip_grad_norm_, under no_grad: gradients that require grad (create_graph=True) build no graph here.
        # Set by hand: torch.no_grad()'s Python context costs tens of microseconds on caches cold after backward.
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            return self._step_now(loss, global_step, loss_scale, reduce_flag, log)
        finally:
            torch._C._set_grad_enabled(enabled)

    def _step_now(self, loss: Any, global_step: Any, loss_scale: Any, reduce_flag: Any, log: Any) -> StepReport:
        self._check_open()
        step = check_step_args(self._step, loss, global_step, loss_scale, reduce_flag, log)  # before any side effect
        log = None if log is None else bool(log)  # numpy's bools too
        s, self._step = self._s, step
        s.transport.collect()
        window = s.updates is None or s.updates.armed  # a window the host learnt of late has no ratios: not one
        m = s.measure.start(step, logged=s.cadence.logged(step, log, window=window), cadence=s.cadence)
        record = Record(step=step, logged=m.logged, packed=None, has_grad=m.dev.has_grad, numel=m.dev.numel)
        scale = s.amp.observe_step(record, m.dev, loss_scale, self.config.scaler)
        bad = drop_for_nonfinite(self.on_nonfinite, record, m.dev, reduce_flag)
        self._finish(m, record, bad, loss, scale)
        self._last_logged = record if record.logged else self._last_logged  # what plot() draws
        self._step += 1
        if self._probe is not None:
            self._probe.prepare(self._step)
        if bad:
            self._drop_nonfinite(record)
        elif record.packed is not None and (record.logged or record.packed.device.type == "cpu"):
            s.transport.send()
            s.transport.process_ready()  # on the CPU the step is on the host now: evaluated and written within step()
        if self.on_spike == "skip" and not bad:
            s.transport.resolve(record)  # Intended host sync (on_spike="skip"): decided before optimizer.step()
            if agreed_spike(record, m.dev.total_norm, reduce_flag):
                self._skip_step(record, "spike")
            else:
                tally_clip(self.clip_tally, record)
        if s.buffers is not None and not record.skipped:
            s.buffers.save()  # a fused device copy: the state a later skipped step goes back to
        if s.updates is not None:  # the next optimizer step is measured when the next watcher step logs
            s.updates.armed = s.cadence.upcoming(step, log)
        return StepReport(record, s.transport.resolve)

    def flush(self) -> None:
        """Bring every pending step to the host, evaluate it, and flush the sinks."""
        self._transport.resolve_all()
        self._s.fanout.flush()

    def close(self) -> None:
        """Flush, close what gradwatch opened, remove what it attached to the model, drop every reference to it."""
        if self._closed:
            return
        self._closed = True
        self._guard.detach()
        self._model_ref = _no_model
        self._s.release()

    def state_dict(self) -> dict[str, Any]:
        """Rule and clipper state (and the step counter), for checkpoints."""
        return self._s.state_dict(self._step, self.layer_names)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s output. The watched layers must be the same; a state that does not fit
        (another length per layer, a clipper's state without a clipper, a damaged entry) raises
        ``ConfigurationError`` naming what is wrong, and changes nothing."""
        self._step = self._s.load_state_dict(state, self.layer_names)

    def summary(self) -> Summary:
        """A short table of every symptom seen so far: kind, layer, count, first and last step; with a clipper, a
        line on how often it acted. A ``str``; in a notebook it shows as an HTML table."""
        if not self._closed:
            self._transport.resolve_all()
        return summary_of(self.history, self.clip_tally)

    def plot(self) -> Any:
        """The gradient-flow figure of the last logged step: each layer's RMS and max ``|grad|`` by depth, log scale,
        the layers of open symptom episodes marked. A matplotlib ``Figure`` (``pip install matplotlib``),
        shown inline in a notebook.

        Examples:
            >>> import torch, gradwatch
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
            >>> with gradwatch.watch(model) as watcher:
            ...     model(torch.randn(8, 3)).pow(2).mean().backward()
            ...     _ = watcher.step()
            ...     fig = watcher.plot()
            >>> len(fig.axes[0].patches)  # two bars per layer
            4
        """
        record = self._last_logged
        if record is not None and not self._closed:
            self._transport.resolve(record)
        return flow_figure_of(None if record is None else record.stats, record.symptoms if record else (),
                              self.history.episodes())

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.layer_names)} layers, step {self._step}"
        return (f"Watcher({state}, every_n_steps={self.every_n_steps}, clip={self.clipper!r}, "
                f"on_nonfinite={self.on_nonfinite!r})")

    def __iter__(self) -> Iterator[str]:
        return iter(self.layer_names)

    def add_cleanup(self, handle: Any) -> None:
        """Register something with a ``remove()`` method (a hook handle) to be removed by ``close()``."""
        self._s.cleanups.append(handle)

    # ------------------------------------------------------------------ the stages' glue
    _last_logged: Record | None = None  # the last step that logged (its statistics, once on the host)

    def _check_open(self) -> None:
        if self._closed:
            raise GradWatchError("This watcher is closed; create a new one with gradwatch.watch(model).")

    def _finish(self, m: Measured, record: Record, bad: bool, loss: Any, scale: Any) -> None:
        """A CPU step that logs nothing is judged from its sums as they are (no vector packed); any other step is
        clipped and packed (``record.packed``) for the transport."""
        s = self._s
        host = None if bad or scale is not None or s.transport.pending else s.measure.on_host(m, record, loss)
        if host is not None:
            s.delivery.on_host(record, *host)
            return
        s.measure.finish(m, record, clip=not bad, loss=loss, loss_scale=scale)
        s.transport.queue(record)

    def _drop_nonfinite(self, record: Record) -> None:
        self._transport.resolve(record)
        if self.on_nonfinite == "raise":
            self.flush()
            raise nonfinite_error(record.step, record.symptoms)
        self._skip_step(record, "nonfinite")

    def _skip_step(self, record: Record, reason: str) -> None:
        model = self._model_ref()
        drop_gradients(model.parameters() if model is not None else self._s.engine.params)
        if self._s.buffers is not None:  # BatchNorm's running statistics as before this step's forward pass
            self._s.buffers.restore()
        record.skipped, record.skip_reason = True, reason


def _no_model() -> nn.Module | None:
    return None


def watch(
    model: nn.Module,
    *,
    log_dir: str | os.PathLike[str] | None = None,
    writer: Any = None,
    every_n_steps: int | None = None,
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
    optimizer: Optimizer | Sequence[Optimizer] | None = None,
    scaler: Any = None,
    verbose: bool | int | None = None,
) -> Watcher:
    """Watch ``model``'s gradients. Call ``watcher.step()`` after each ``backward()``, before ``optimizer.step()``.

    Args:
        model: any ``nn.Module`` (DDP and ``torch.compile`` wrappers are seen through for layer names).
        log_dir: write TensorBoard event files there (a new ``SummaryWriter``, closed by ``close()``).
        writer: or write through this ``SummaryWriter`` (flushed, never closed by gradwatch).
        every_n_steps: ``None`` (default): gradwatch's cadence writes the per-layer scalars at every step of the
            first 200, then every 10th step up to step 2,000, every 100th up to step 10,000, every 200th after, and
            at every step of a window of 10 steps before and after each symptom episode: 910 steps per 100,000, plus
            the windows (at most 484). An int ``N`` (>= 1): the
            multiples of ``N``, no windows. Every step is measured and judged either way, and symptoms are logged
            whenever they occur; a step that logs nothing measures each layer's sum of squares alone.
        thresholds: the rules' parameters; ``None`` for the calibrated defaults (``Thresholds``).
        clip: ``None``; a float (global L2 max norm, as ``clip_grad_norm_``); or a clipper from
            ``gradwatch.clipping``.
        on_nonfinite: ``"warn"`` (symptom and Python warning), ``"raise"`` (flush logs, raise
            ``NonFiniteGradientError``), ``"skip"`` (set every gradient to ``None`` so
            ``optimizer.step()`` changes nothing; ``report.skipped``), ``"ignore"`` (symptom and logs only).
        layers: fnmatch glob(s) over layer names choosing what is watched (default: every layer). Statistics, rules,
            the global norm and clipping all cover the watched layers only.
        sinks: more ``Sink`` objects (a ``MemorySink``, say).
        on_spike: what to do on a ``spike`` symptom (a gradient-norm or loss spike, ``gradwatch._spikes``):
            ``"warn"`` (symptom and Python warning), ``"skip"`` (also set every gradient to ``None`` so
            ``optimizer.step()`` changes nothing; ``report.skipped``; each step then waits for the device once),
            ``"ignore"`` (symptom and logs only).
        histogram_every_n_steps: write per-layer histograms (``gradwatch/grad_hist/<layer>``) on the steps that are
            multiples of this; ``None`` (default) for none. Computed on the device, moved with the step's statistics.
        histograms: what to histogram: ``"grad"`` (default) and/or ``"param"`` (``gradwatch/param_hist/<layer>``).
        figure_every_n_steps: write the gradient-flow figure (image ``gradwatch/flow``) on the steps that are
            multiples of this; ``None`` (default) for never. Needs matplotlib (``pip install matplotlib``).
        activations: ``True`` to hook every module (a glob or list of globs over module names for some): output mean,
            std, zero fraction, saturated and dead fractions, gradient norm flowing out of each module, and the
            ``saturated`` and ``dead`` symptoms (docs/activations.md). Quiet in ``eval()`` and ``no_grad``.
        activation_every_n_steps: sample activations every this many steps (default: ``every_n_steps``, every step
            under the default cadence); hooks are attached on those steps only.
        nan_origin: locate the module where a non-finite value first appeared (``Symptom.origin``): ``"off"``,
            ``"sampled"`` (on the sampled steps) or ``"every_step"`` (hooks on every step: costs about as much as
            activations every step, still far less than ``detect_anomaly``). Default: ``"sampled"`` with activations
            on, ``"off"`` without.
        distributed: ``"auto"`` (default): when ``torch.distributed`` runs several processes, statistics are combined
            across ranks (one collective per step), decisions agree, and only global rank zero writes; creating the
            watcher is then collective (every rank must call ``watch``). ``"off"``: this process's gradients alone, as
            in a single process (for a model watched on one rank only; wrong numbers for sharded gradients).
        optimizer: a ``torch.optim.Optimizer`` (or a sequence of them) stepping the model: each watched layer's
            update-to-weight ratio ``||Δw|| / ||w||`` of the last optimizer step (``LayerStats.update_ratio``,
            ``gradwatch/update_ratio/<layer>``), measured through the optimizer's step hooks. Exact and without a
            copy of the parameters for SGD, Adam and AdamW; any other optimizer costs a copy of its parameters
            during its step. Default ``None``: no ratio.
        scaler: the dynamic loss scaler of fp16 mixed precision (a ``torch.amp.GradScaler``, or anything with
            ``get_scale()``), whose scale the watcher reads at every step: its overflows are then its own business
            (``amp_overflow`` events; no symptom, no warning, ``on_nonfinite`` does not act) while its scale keeps
            falling, and ``nonfinite`` symptoms once it has stopped (a scale of 1 or below, or overflows at which it
            did not go down). Call ``step()`` after ``scaler.unscale_(optimizer)``. A disabled scaler is ignored.
        verbose: how much gradwatch says on the console, mapped onto the ``gradwatch`` logger's level: ``True``
            (DEBUG: every episode start, end and joining layer), ``False`` (ERROR: errors only), a ``logging`` level,
            or ``None`` (default: leave the logger as it is; INFO unless you set it).

    Returns:
        A ``Watcher``; also a context manager that closes it.

    Raises:
        ConfigurationError: for any invalid argument, naming the value and the valid choices.

    Examples:
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
    options = dict(locals())
    del options["model"]
    return Watcher(model, WatchConfig(**options))
