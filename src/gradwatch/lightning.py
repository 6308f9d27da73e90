"""``GradWatchCallback``: gradwatch's engine inside any PyTorch Lightning ``Trainer``.

The callback is a thin adapter over ``gradwatch.Watcher``: it creates the watcher in ``on_fit_start`` (with the
Trainer's optimizers, for the per-layer update-to-weight ratios), calls
``watcher.step()`` in ``on_before_optimizer_step`` (gradients unscaled, accumulated and all-reduced, not yet clipped),
and maps Lightning's loggers, AMP scaler, ranks and checkpoints onto the watcher. It works with Trainers from both
``lightning.pytorch`` and ``pytorch_lightning``: it subclasses the ``Callback`` of each namespace that imports.

>>> from gradwatch.lightning import GradWatchCallback
>>> GradWatchCallback(clip=1.0, on_nonfinite="skip")
GradWatchCallback(clip=NormClip(max_norm=1.0, norm_type=2.0), on_nonfinite='skip', every_n_steps=None)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from typing_extensions import override  # a dependency of both Lightning packages

from ._config import HistogramOf, NonFiniteAction, SpikeAction, WatchConfig
from ._errors import ConfigurationError, GradWatchWarning
from ._hooks.probe import NanOrigin
from ._layers import discover_layers
from ._lightning.compat import callback_bases, grad_scaler, lightning_logs, logging_step
from ._lightning.sinks import LoggerSink, sinks_for_loggers
from ._sinks import Sink
from ._thresholds import Thresholds
from ._validate import check_choice
from ._watcher import Watcher
from .clipping import Clipper

__all__ = ["GradWatchCallback", "LoggerSink", "OnNonFinite"]

#: ``on_nonfinite`` choices of the callback: the watcher's, plus ``"stop"`` (skip the step, then end ``fit``).
OnNonFinite = Literal["warn", "raise", "skip", "stop", "ignore"]
"""``on_nonfinite`` choices of the callback: the watcher's, plus ``"stop"`` (skip the step, then end ``fit``)."""


def clip_conflict(gradient_clip_val: float | None, clip: Clipper | None) -> str | None:
    """The error message when both the Trainer and the callback clip, else ``None``.

    >>> clip_conflict(None, None) is None and clip_conflict(1.0, None) is None
    True
    """
    if clip is None or gradient_clip_val is None or gradient_clip_val <= 0:
        return None
    return (f"Both Trainer(gradient_clip_val={gradient_clip_val!r}) and GradWatchCallback(clip={clip!r}) clip the "
            "gradients. Remove gradient_clip_val from the Trainer: the callback clips in on_before_optimizer_step, "
            "after measuring the unclipped norms. Or remove clip= from the callback to keep Lightning's clipping "
            "(gradwatch then still records the norms before it).")


#: Lightning strategies refused at setup: their gradients are not the module's ``.grad`` (ZeRO partitions them).
_UNSUPPORTED_STRATEGIES = ("DeepSpeedStrategy",)


def unsupported_strategy(strategy: Any) -> str | None:
    """The error message for a strategy whose gradients gradwatch cannot measure, else ``None``.

    >>> unsupported_strategy(object()) is None
    True
    """
    names = {cls.__name__ for cls in type(strategy).__mro__}
    for name in _UNSUPPORTED_STRATEGIES:
        if name in names:
            return (f"GradWatchCallback does not support {type(strategy).__name__}: DeepSpeed ZeRO partitions the "
                    "gradients outside the parameters' .grad, so per-layer norms would be silently wrong. Use "
                    "strategy='ddp', FSDPStrategy (use_orig_params=True, the default) or ModelParallelStrategy "
                    "(FSDP2 / tensor parallel), or remove the callback.")
    return None


def engine_action(on_nonfinite: OnNonFinite) -> NonFiniteAction:
    """The watcher's action for the callback's: ``"stop"`` skips the bad step (the callback then stops ``fit``).

    >>> engine_action("stop"), engine_action("raise")
    ('skip', 'raise')
    """
    return "skip" if on_nonfinite == "stop" else on_nonfinite


class GradWatchCallback(*callback_bases()):  # type: ignore[misc]
    """Per-layer gradient statistics, symptoms, clipping and actions in a Lightning ``Trainer``.

    It takes ``gradwatch.watch()``'s configuration, minus the model and the writer, which come from the Trainer.

    Args:
        every_n_steps: write per-layer scalars on every this-many-th optimizer step, counted as Lightning counts
            its logging steps (with ``Trainer(log_every_n_steps=...)`` equal to it, on the same steps as
            Lightning's own metrics). ``None`` (default): exactly when Lightning writes its own step metrics, at
            the step number it writes them at, so they share ``step`` values in ``metrics.csv`` and points in
            TensorBoard. Symptoms are logged whenever they occur.
        thresholds: the rules' parameters (``gradwatch.Thresholds``); ``None`` for the defaults.
        clip: ``None``, a float (global L2 max norm) or a clipper from ``gradwatch.clipping``; applied in
            ``on_before_optimizer_step``. Do not also set ``Trainer(gradient_clip_val=...)``.
        on_nonfinite: ``"warn"``, ``"raise"`` (flush the logs, raise ``gradwatch.NonFiniteGradientError``),
            ``"skip"`` (the optimizer step changes nothing), ``"stop"`` (skip the step, then end ``fit`` after it:
            ``trainer.should_stop``), or ``"ignore"``. Decided identically on every rank.
        layers: fnmatch glob(s) over layer names (qualified module names inside the LightningModule).
        sinks: more ``gradwatch.Sink`` objects (written on global rank zero only).
        progress_bar: also show the global gradient norm (``grad_norm``) in the progress bar on logging steps.
        amp_overflow_patience: under ``precision="16-mixed"``, the Trainer's GradScaler is the watcher's ``scaler``:
            its overflows are ``amp_overflow`` events while its scale keeps falling, ``nonfinite`` symptoms once it has
            stopped (a scale of 1 or below, or overflows at which it did not go down). ``None`` (default): judged by
            the scale alone; an int: also this many consecutive overflows are ``nonfinite`` symptoms.
        summary: print the symptom summary at the end of ``fit`` (global rank zero).
        on_spike: ``"warn"``, ``"skip"`` (a gradient-norm or loss spike's optimizer step changes nothing; decided
            identically on every rank) or ``"ignore"``, as in ``gradwatch.watch()``. The loss is the training
            step's.
        histogram_every_n_steps: per-layer histograms every this many steps, as in ``gradwatch.watch()`` (written
            through a ``TensorBoardLogger``; off by default).
        histograms: what to histogram: ``"grad"`` and/or ``"param"``, as in ``gradwatch.watch()``.
        figure_every_n_steps: the gradient-flow figure every this many steps, as in ``gradwatch.watch()``.
        activations: forward/backward hooks for activation statistics, the gradient flowing out of each module and the
            ``saturated``/``dead`` symptoms, as in ``gradwatch.watch()`` (docs/activations.md).
        activation_every_n_steps: sample activations every this many steps (default: the logging interval).
        nan_origin: ``"off"``, ``"sampled"`` or ``"every_step"``: find the module where a NaN/Inf first appeared.
        verbose: how much gradwatch says on the console, as in ``gradwatch.watch()`` (``True``, ``False`` for
            errors only, a ``logging`` level, or ``None`` to leave the ``gradwatch`` logger as it is).

    Attributes:
        watcher: the ``gradwatch.Watcher`` of the current (or last) ``fit``; ``None`` before ``setup``.

    Raises:
        ConfigurationError: for an invalid argument; at ``setup`` when the Trainer also clips.

    Examples:
        >>> cb = GradWatchCallback(layers="encoder.*", every_n_steps=10)
        >>> cb.watcher is None
        True
    """

    def __init__(
        self,
        *,
        every_n_steps: int | None = None,
        thresholds: Thresholds | None = None,
        clip: float | Clipper | None = None,
        on_nonfinite: OnNonFinite = "warn",
        layers: str | Sequence[str] | None = None,
        sinks: Sequence[Sink] = (),
        progress_bar: bool = False,
        amp_overflow_patience: int | None = None,
        summary: bool = True,
        on_spike: SpikeAction = "warn",
        histogram_every_n_steps: int | None = None,
        histograms: Sequence[HistogramOf] = ("grad",),
        figure_every_n_steps: int | None = None,
        activations: bool | str | Sequence[str] = False,
        activation_every_n_steps: int | None = None,
        nan_origin: NanOrigin | None = None,
        verbose: bool | int | None = None,
    ) -> None:
        super().__init__()
        check_choice("on_nonfinite", on_nonfinite, get_args(OnNonFinite))
        for name, flag in (("progress_bar", progress_bar), ("summary", summary)):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"{name}={flag!r} must be True or False.")
        cadence: dict[str, Any] = {} if every_n_steps is None else {"every_n_steps": every_n_steps}  # checked there
        #: The watcher's configuration. Which steps write per-layer scalars is the callback's decision (see
        #: ``every_n_steps``); the activations' default sampling interval is set from the Trainer when it starts.
        self.config = WatchConfig(
            **cadence, thresholds=thresholds, clip=clip,
            on_nonfinite=engine_action(on_nonfinite), layers=layers, sinks=sinks, on_spike=on_spike,
            histogram_every_n_steps=histogram_every_n_steps, histograms=histograms,
            figure_every_n_steps=figure_every_n_steps, activations=activations,
            activation_every_n_steps=activation_every_n_steps, nan_origin=nan_origin, verbose=verbose,
            amp_overflow_patience=amp_overflow_patience)
        self.every_n_steps = every_n_steps
        self._layers_key = layers  # as given: the checkpoint key of earlier versions
        self.on_nonfinite: OnNonFinite = on_nonfinite
        self.progress_bar = progress_bar
        self.summary = summary
        self.watcher: Watcher | None = None
        self._pending_state: dict[str, Any] | None = None
        self._loss: Tensor | None = None
        self._rank_zero = True
        self._active = False  # a watcher is open (between setup and teardown)

    clip = property(lambda self: self.config.clipper, doc="The clipper (``None``: no clipping by the callback).")
    layers = property(lambda self: self.config.layers, doc="The ``layers`` globs (``None``: every layer).")
    thresholds = property(lambda self: self.config.thresholds, doc="The rules' parameters.")
    on_spike = property(lambda self: self.config.on_spike, doc="What to do on a ``spike`` symptom.")
    sinks = property(lambda self: list(self.config.sinks), doc="The extra sinks given (written on rank zero).")
    amp_overflow_patience = property(lambda self: self.config.amp_overflow_patience)

    @property
    @override
    def state_key(self) -> str:
        # Stable across runs: the clipper's class, not its repr (a stateful clipper's repr shows its state).
        clip = None if self.clip is None else type(self.clip).__name__
        key: str = self._generate_state_key(layers=self._layers_key, clip=clip)
        return key

    # ------------------------------------------------------------------ lifecycle
    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        message = clip_conflict(trainer.gradient_clip_val, self.clip)
        if message is not None:
            raise ConfigurationError(message)
        message = unsupported_strategy(trainer.strategy)
        if message is not None:
            raise ConfigurationError(message)
        self._close()
        # The watcher is built in on_fit_start: the optimizers exist from then on (the strategy creates them after
        # setup), the layers created in configure_model() too, and the strategy has wrapped (DDP) or sharded (FSDP,
        # ModelParallel) the model.

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._active:
            self._build(trainer, pl_module)

    def _build(self, trainer: Any, pl_module: Any) -> None:
        self._rank_zero = bool(trainer.is_global_zero)
        # Other ranks compute and decide, but never write.
        sinks: list[Sink] = sinks_for_loggers(trainer.loggers) if self._rank_zero else []
        # Several processes: the strategy's wrapper (DDP, FSDP) tells gradwatch how the gradients are held; the layer
        # names are the LightningModule's either way (wrapper prefixes are dropped).
        model = trainer.strategy.model if trainer.world_size > 1 and trainer.strategy.model is not None else pl_module
        interval = self.every_n_steps or max(1, int(trainer.log_every_n_steps))
        config = self.config.replace(every_n_steps=interval,  # for watcher.every_n_steps; step(log=) decides
                                     activation_every_n_steps=self.config.activation_every_n_steps or interval,
                                     optimizer=trainer_optimizers(trainer, model, self.config.layers),
                                     scaler=grad_scaler(trainer))  # 16-mixed: the Trainer's GradScaler, else None
        self.watcher = Watcher(model, config if self._rank_zero else config.replace(sinks=()), sinks=sinks)
        self._active = True
        if self._pending_state is not None:
            self.watcher.load_state_dict(self._pending_state)
            self._pending_state = None
        self._loss = None

    @override
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Tensor) -> None:
        # Losses backpropagated since the last optimizer step (Lightning divides them by accumulate_grad_batches).
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        watcher = self.watcher
        if watcher is None or not self._active:
            return
        loss, self._loss = self._loss, None
        scale: float | None = None
        scaler = grad_scaler(trainer)
        if scaler is not None:
            # Intended host sync: scaler.step() syncs on its Inf flags right after anyway. Read once, for the loss and
            # for the watcher (whose config holds the same scaler: passing the scale spares it a second read).
            scale = scaler.get_scale()
            if loss is not None:
                loss = loss / scale  # the hook saw the scaled loss
        # With a process group the watcher reduces its statistics across ranks: its decisions are agreed already.
        reduce = _any_rank(trainer) if trainer.world_size > 1 and watcher.distributed is None else None
        with warnings.catch_warnings():
            if not self._rank_zero:  # one warning per run, not one per rank
                warnings.simplefilter("ignore", GradWatchWarning)
            step, log = self._when(trainer, pl_module)
            report = watcher.step(global_step=step, loss=loss, loss_scale=scale, reduce_flag=reduce, log=log)
        if self.on_nonfinite == "stop" and report.skip_reason == "nonfinite":  # agreed across ranks
            trainer.should_stop = True
            if self._rank_zero:
                print(f"gradwatch: non-finite gradients at step {report.step}: the step was skipped and training "
                      "stops after it (on_nonfinite='stop'). See the summary below and the gradwatch/alerts text.")
        if self.progress_bar and report.logged:
            pl_module.log("grad_norm", report.global_norm, prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def _when(self, trainer: Any, pl_module: Any) -> tuple[int, bool]:
        """This optimizer step's number and whether it writes per-layer scalars, in Lightning's logging terms.

        The number is the one Lightning writes this batch's metrics at; under manual optimization, where a batch may
        step several optimizers, it is ``trainer.global_step`` (one watcher step per optimizer step).
        """
        manual = not getattr(pl_module, "automatic_optimization", True)
        step = int(trainer.global_step) if manual else logging_step(trainer)
        if self.every_n_steps is None:
            return step, lightning_logs(trainer)
        return step, (step + 1) % self.every_n_steps == 0

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watcher is not None and self.summary and trainer.is_global_zero:
            print(self.watcher.summary())

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._close()

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()  # Lightning does not call teardown after an exception

    def _close(self) -> None:
        """Flush and close the watcher (hooks removed, model released); it stays readable (``history``)."""
        self._loss = None
        self._active = False
        if self.watcher is not None:
            self.watcher.close()

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        """The watcher's rule and clipper state (Lightning stores it in the checkpoint's ``callbacks``)."""
        if self.watcher is not None:
            return self.watcher.state_dict()  # a closed watcher still has its final state
        return dict(self._pending_state or {})

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s output now, or at ``setup`` if the watcher does not exist yet."""
        if not state_dict:
            return
        if not isinstance(state_dict, Mapping) or state_dict.get("version") != 1:  # checked whole when it is loaded
            raise ConfigurationError(f"GradWatchCallback.load_state_dict: state={state_dict!r:.80} is not a gradwatch "
                                     "checkpoint (what GradWatchCallback.state_dict() returned).")
        if self.watcher is not None and self._active:
            self.watcher.load_state_dict(state_dict)
        else:
            self._pending_state = dict(state_dict)

    def __repr__(self) -> str:
        return (f"GradWatchCallback(clip={self.clip!r}, on_nonfinite={self.on_nonfinite!r}, "
                f"every_n_steps={self.every_n_steps!r})")


def trainer_optimizers(trainer: Any, model: Any, layers: Any) -> list[Any] | None:
    """The Trainer's optimizers that hold a watched parameter of ``model`` (the ``layers`` globs), whose updates the
    watcher measures; ``None`` when there is none (no ``configure_optimizers``, or optimizers of other layers only)."""
    own = {id(p) for layer in discover_layers(model, layers) for p in layer.params}
    optimizers = [getattr(o, "optimizer", o) for o in trainer.optimizers]  # LightningOptimizer wraps the optimizer
    held = [o for o in optimizers if any(id(p) in own for g in o.param_groups for p in g["params"])]
    return held or None


def _any_rank(trainer: Any) -> Any:
    """A ``reduce_flag`` for the watcher: the largest flag of every rank, through the Trainer's strategy."""

    def reduce(flag: Tensor) -> Tensor:
        out: Tensor = trainer.strategy.reduce(flag.to(torch.float32), reduce_op="max")
        return out

    return reduce
