"""``GradWatchTrainerCallback``: gradwatch's engine inside a Hugging Face ``transformers.Trainer``.

The callback is a thin adapter over ``gradwatch.Watcher``. It builds the watcher in ``on_train_begin`` (with the
Trainer's model, optimizer and fp16 loss scaler), takes over the Trainer's gradient clipping (same threshold, unless
``clip=`` says otherwise) so that it measures the gradients before any clipping, calls ``watcher.step()`` in
``on_pre_optimizer_step`` (gradients accumulated, all-reduced and unscaled), logs on the Trainer's own logging steps,
and keeps its state in the Trainer's checkpoints. ``import gradwatch`` never imports ``transformers``; this module
does.

Examples:
    >>> from gradwatch.transformers import GradWatchTrainerCallback
    >>> GradWatchTrainerCallback(on_nonfinite="skip")
    GradWatchTrainerCallback(clip=None, on_nonfinite='skip', every_n_steps=None)
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal, get_args

from ._config import HistogramOf, NonFiniteAction, SpikeAction, WatchConfig
from ._console import LOGGER
from ._errors import ConfigurationError, GradWatchWarning
from ._hf.console import route_around_progress_bar, write_line
from ._hf.flow import (
    STATE_KEY,
    clip_for,
    integration_sinks,
    logs_at,
    refuse_unsupported,
    steps_per_epoch,
    strategy_name,
    tensorboard_dir,
)
from ._hf.loss import LossTap
from ._hooks.probe import NanOrigin
from ._sinks import Sink
from ._thresholds import Thresholds
from ._validate import check_choice
from ._watcher import Watcher
from .clipping import Clipper

try:
    from transformers import TrainerCallback
except ImportError as _exc:  # pragma: no cover - the extra is missing
    raise ImportError("gradwatch.transformers needs Hugging Face transformers: `pip install transformers` "
                      f"(from a gradwatch clone: `pip install '.[transformers]'`) ({_exc}).") from _exc

__all__ = ["GradWatchTrainerCallback"]

#: ``on_nonfinite`` choices of the callback: the watcher's, plus ``"stop"`` (skip the step, then end training).
TrainerOnNonFinite = Literal["warn", "raise", "skip", "stop", "ignore"]


class GradWatchTrainerCallback(TrainerCallback):
    """Per-layer gradient statistics, symptoms, clipping and actions in a ``transformers.Trainer``.

    It takes ``gradwatch.watch()``'s options, minus the model, the optimizer, the loss scaler and the process group,
    which come from the Trainer. See docs/transformers.md.

    Args:
        log_dir: where gradwatch writes its TensorBoard event file. ``None`` (default): the folder of the Trainer's own
            TensorBoard run (``report_to="tensorboard"``), else the one it would use (``output_dir/runs/<date>_<host>``
            or ``$TENSORBOARD_LOGGING_DIR``).
        writer: or write through this ``SummaryWriter`` (flushed, never closed by gradwatch).
        every_n_steps: write per-layer scalars every this many optimizer steps; ``None`` (default) follows the
            Trainer's logging steps (``logging_steps``, ``logging_strategy``, ``logging_first_step``), so that
            gradwatch's points share their steps with the Trainer's ``loss``. Symptoms are written whenever they occur.
        thresholds: the rules' parameters (``gradwatch.Thresholds``); ``None`` for the defaults.
        clip: ``None`` (default) takes over the Trainer's clipping: ``NormClip(args.max_grad_norm)``, identical to
            the Trainer's ``clip_grad_norm_`` (none with ``max_grad_norm=0``). A float (global L2 max norm) or a
            clipper from ``gradwatch.clipping`` clips instead of the Trainer. Either way the Trainer's own clipping is
            off during training, and gradwatch measures the gradients before clipping.
        on_nonfinite: ``"warn"``, ``"raise"`` (flush the logs, raise ``gradwatch.NonFiniteGradientError`` out of
            ``trainer.train()``), ``"skip"`` (the optimizer step changes nothing), ``"stop"`` (skip the step, then
            end training: ``control.should_training_stop``), or ``"ignore"``. Decided identically on every rank.
        layers: fnmatch glob(s) over layer names (qualified module names in the model).
        sinks: more ``gradwatch.Sink`` objects (written on global rank zero only).
        on_spike: ``"warn"``, ``"skip"`` (a gradient-norm or loss spike's optimizer step changes nothing) or
            ``"ignore"``, as in ``gradwatch.watch()``.
        histogram_every_n_steps: per-layer histograms every this many steps, as in ``gradwatch.watch()``.
        histograms: what to histogram: ``"grad"`` and/or ``"param"``.
        figure_every_n_steps: the gradient-flow figure every this many steps.
        activations: activation statistics and the ``saturated``/``dead`` symptoms (docs/activations.md).
        activation_every_n_steps: sample activations every this many steps (default: the logging interval).
        nan_origin: ``"off"``, ``"sampled"`` or ``"every_step"``: find the module where a NaN/Inf first appeared.
        verbose: how much gradwatch says on the console, as in ``gradwatch.watch()``.
        amp_overflow_patience: under ``fp16=True``, the Trainer's ``GradScaler`` is the watcher's ``scaler``; ``None``:
            its overflows are judged by the scale alone; an int also makes that many consecutive overflows
            ``nonfinite``.
        summary: print the symptom summary at the end of training (global rank zero).

    Attributes:
        watcher: the ``gradwatch.Watcher`` of the current (or last) ``train()``; ``None`` before it.

    Raises:
        ConfigurationError: for an invalid argument; at the start of training for a set-up it cannot watch
            (DeepSpeed, or ``layers=`` with the Trainer's clipping to take over).

    Examples:
        >>> cb = GradWatchTrainerCallback(clip=1.0, on_nonfinite="stop", layers="transformer.h.*")
        >>> cb.watcher is None, cb.clip
        (True, NormClip(max_norm=1.0, norm_type=2.0))
    """

    def __init__(
        self,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        writer: Any = None,
        every_n_steps: int | None = None,
        thresholds: Thresholds | None = None,
        clip: float | Clipper | None = None,
        on_nonfinite: TrainerOnNonFinite = "warn",
        layers: str | Sequence[str] | None = None,
        sinks: Sequence[Sink] = (),
        on_spike: SpikeAction = "warn",
        histogram_every_n_steps: int | None = None,
        histograms: Sequence[HistogramOf] = ("grad",),
        figure_every_n_steps: int | None = None,
        activations: bool | str | Sequence[str] = False,
        activation_every_n_steps: int | None = None,
        nan_origin: NanOrigin | None = None,
        verbose: bool | int | None = None,
        amp_overflow_patience: int | None = None,
        summary: bool = True,
    ) -> None:
        check_choice("on_nonfinite", on_nonfinite, get_args(TrainerOnNonFinite))
        if not isinstance(summary, bool):
            raise ConfigurationError(f"summary={summary!r} must be True or False.")
        #: The watcher's configuration; the clipper, cadence, log folder, optimizer and scaler are set at train start.
        self.config = WatchConfig(
            log_dir=log_dir, writer=writer, every_n_steps=1 if every_n_steps is None else every_n_steps,
            thresholds=thresholds, clip=clip, on_nonfinite=_engine_action(on_nonfinite), layers=layers, sinks=sinks,
            on_spike=on_spike, histogram_every_n_steps=histogram_every_n_steps, histograms=histograms,
            figure_every_n_steps=figure_every_n_steps, activations=activations,
            activation_every_n_steps=activation_every_n_steps, nan_origin=nan_origin, verbose=verbose,
            amp_overflow_patience=amp_overflow_patience)
        self.every_n_steps = every_n_steps
        self.on_nonfinite: TrainerOnNonFinite = on_nonfinite
        self.summary = summary
        self.watcher: Watcher | None = None
        self._tap: LossTap | None = None
        self._bar_handler: logging.Handler | None = None
        self._epoch_steps: int | None = None
        # The Trainer's clipping, taken over: (the TrainingArguments, their max_grad_norm) while training runs.
        self._taken: tuple[Any, float] | None = None
        self._rank_zero = True

    clip = property(lambda self: self.config.clipper, doc="The clipper given (``None``: the Trainer's, taken over).")
    layers = property(lambda self: self.config.layers, doc="The ``layers`` globs (``None``: every layer).")
    thresholds = property(lambda self: self.config.thresholds, doc="The rules' parameters.")

    # ------------------------------------------------------------------ training
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish(args)  # a train() that ended with an exception left its watcher open
        refuse_unsupported(args)
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None:
            raise ConfigurationError("GradWatchTrainerCallback: the Trainer passed no model to on_train_begin.")
        max_grad_norm = float(args.max_grad_norm or 0.0)
        clipper = clip_for(self.config.clipper, max_grad_norm, self.config.layers)  # before any side effect
        self._rank_zero = bool(state.is_world_process_zero)
        dataloader = kwargs.get("train_dataloader")
        batches = len(dataloader) if dataloader is not None and hasattr(dataloader, "__len__") else None
        self._epoch_steps = steps_per_epoch(batches, int(args.gradient_accumulation_steps))
        config = self.config.replace(
            clip=clipper, every_n_steps=self.every_n_steps or self._logging_interval(args, state),
            optimizer=optimizer, scaler=getattr(optimizer, "scaler", None))  # fp16: accelerate's GradScaler
        self.watcher = watcher = Watcher(model, self._outputs(config, args, state))
        self._taken = (args, max_grad_norm)
        self._resume(state)
        average = bool(getattr(args, "average_tokens_across_devices", False)) and int(args.world_size) > 1
        self._tap = LossTap(model, processes=int(args.world_size) if average else 1)
        watcher.add_cleanup(self._tap)
        if self._rank_zero and not args.disable_tqdm:
            self._bar_handler = route_around_progress_bar()

    def _outputs(self, config: WatchConfig, args: Any, state: Any) -> WatchConfig:
        """Where the watcher writes: on rank zero the Trainer's TensorBoard run (unless ``log_dir=``/``writer=``) and
        the runs of its W&B and MLflow integrations; other ranks compute and decide, but never write."""
        if not self._rank_zero:
            return config.replace(log_dir=None, writer=None, sinks=())
        report_to = list(args.report_to or ())
        if config.writer is None and config.log_dir is None:
            config = config.replace(log_dir=tensorboard_dir(str(args.output_dir), report_to, state.trial_name))
        extra = integration_sinks(report_to, config.sinks)  # report_to=["wandb", "mlflow"]
        return config.replace(sinks=(*config.sinks, *extra)) if extra else config

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._taken is not None:
            args.max_grad_norm = 0.0  # the Trainer only measures the norm now; gradwatch clips after measuring

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        watcher = self.watcher
        if watcher is None or self._taken is None:
            return
        step = int(state.global_step) + 1  # the step the Trainer logs this optimizer step's loss and grad_norm at
        log = None if self.every_n_steps is not None else logs_at(
            step, strategy=strategy_name(args.logging_strategy), logging_steps=int(state.logging_steps),
            first_step=bool(args.logging_first_step), epoch_steps=self._epoch_steps, max_steps=int(state.max_steps))
        loss = self._tap.take() if self._tap is not None else None
        try:
            with warnings.catch_warnings():
                if not self._rank_zero:  # one warning per run, not one per rank
                    warnings.simplefilter("ignore", GradWatchWarning)
                report = watcher.step(global_step=step, loss=loss, log=log)
        except BaseException:
            self._finish(args)  # on_train_end will not come: restore the Trainer's clipping, close the watcher
            raise
        if self.on_nonfinite == "stop" and report.skip_reason == "nonfinite":  # agreed across ranks
            control.should_training_stop = True
            if self._rank_zero:
                LOGGER.error("non-finite gradients at step %d: the step was skipped and training stops after it "
                             "(on_nonfinite='stop').", report.step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._taken is not None:
            args.max_grad_norm = self._taken[1]  # as given, in the checkpoint's training_args.bin too
        self._stash(args, state, control.should_save)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stash(args, state, control.should_save)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stash(args, state, strategy_name(args.save_strategy) == "best")  # saving follows the evaluation

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        watcher = self.watcher
        self._finish(args)
        if watcher is None or not self.summary or not self._rank_zero:
            return
        if args.disable_tqdm:
            print(watcher.summary())
        else:  # the progress bar closes after this (its callback comes last): the summary goes above it
            write_line(watcher.summary())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The watcher's rule and clipper state (``{}`` before training), as stored in the Trainer's checkpoints."""
        return self.watcher.state_dict() if self.watcher is not None else {}

    def _stash(self, args: Any, state: Any, saving: bool) -> None:
        """Put the watcher's state where the Trainer's next checkpoint saves it: ``trainer_state.json``."""
        if saving and self.watcher is not None and args.should_save:
            state.stateful_callbacks[STATE_KEY] = self.watcher.state_dict()

    def _resume(self, state: Any) -> None:
        saved = (state.stateful_callbacks or {}).get(STATE_KEY) if int(state.global_step) > 0 else None
        if not saved or self.watcher is None:
            return
        try:
            self.watcher.load_state_dict(saved)
        except ConfigurationError as exc:  # a changed model must not stop the resumed training
            warnings.warn(f"gradwatch: the checkpoint's gradwatch state was not restored: {exc}", GradWatchWarning,
                          stacklevel=2)

    # ------------------------------------------------------------------ helpers
    def _logging_interval(self, args: Any, state: Any) -> int:
        if strategy_name(args.logging_strategy) == "epoch" and self._epoch_steps is not None:
            return self._epoch_steps
        return max(1, int(state.logging_steps))

    def _finish(self, args: Any) -> None:
        """Give the Trainer its clipping back, close the watcher (it stays readable) and the console handler."""
        if self._taken is not None:
            taken_args, max_grad_norm = self._taken
            taken_args.max_grad_norm = max_grad_norm
            self._taken = None
        if self._bar_handler is not None:
            LOGGER.removeHandler(self._bar_handler)
            self._bar_handler = None
        if self.watcher is not None:
            self.watcher.close()  # removes the loss hook too
        self._tap = None

    def __repr__(self) -> str:
        return (f"GradWatchTrainerCallback(clip={self.clip!r}, on_nonfinite={self.on_nonfinite!r}, "
                f"every_n_steps={self.every_n_steps!r})")


def _engine_action(on_nonfinite: str) -> NonFiniteAction:
    """The watcher's action for the callback's: ``"stop"`` skips the bad step (the callback then ends training)."""
    return "skip" if on_nonfinite == "stop" else on_nonfinite  # type: ignore[return-value]
