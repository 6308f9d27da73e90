"""Wiring: the stages of one watcher, built from a model, a ``WatchConfig`` and the adapter's sinks;
taken apart again (``Stages.release()``) by ``close()``, by the garbage collector or at exit; and their state, for
checkpoints.

Kept apart from ``gradwatch._watcher``, which runs the stages; here they are only made, connected and released.
Everything that could be invalid was checked by the config, or is checked here before any side effect (the ``layers``
and ``activations`` globs against the model, a model still on the meta device) — files are opened and hooks attached
last.

The stages hold nothing of the watcher, so a watcher is freed as soon as it is dropped: ``guard()`` then releases
its stages (pending steps written, hooks removed, sinks closed) with a ``ResourceWarning``, as an unclosed file does;
at exit, every stage still open is released quietly, so that the last steps reach the disk.
"""

from __future__ import annotations

import atexit
import copy
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ._actions import AmpState, decides_before_step
from ._advice import ModelTraits
from ._buffers import NormBuffers
from ._cadence import Cadence
from ._config import WatchConfig
from ._dashboard import DashboardLogger
from ._distributed import DistributedContext, detect
from ._errors import ConfigurationError
from ._evaluate import Evaluator
from ._fanout import Fanout
from ._history import ClipTally, SymptomHistory
from ._hooks.probe import ActivationProbe
from ._hooks.rules import ActivationState
from ._layers import Layer, discover_layers, unwrap_model
from ._measure import Measure
from ._replaced import ReplacedCheck
from ._sinks import Sink, TensorBoardSink
from ._stats import StatsEngine
from ._transport import Delivery, Transport
from ._updates import UpdateTracker, check_optimizers
from ._validate import check_int, is_integral, is_real

__all__ = ["Stages", "assemble", "guard"]


@dataclass(eq=False)  # compared and hashed by identity: the exit registry holds them in a WeakSet
class Stages:
    """The parts of one watcher (see ``gradwatch._watcher`` for how a step flows through them)."""

    layers: list[Layer]
    dist: DistributedContext | None  # None in one process
    probe: ActivationProbe | None  # None without activations or NaN-origin hooks
    engine: StatsEngine
    measure: Measure
    evaluate: Evaluator
    fanout: Fanout
    replaced: ReplacedCheck
    amp: AmpState
    delivery: Delivery
    transport: Transport
    history: SymptomHistory
    clip_tally: ClipTally | None  # None without a clipper
    updates: UpdateTracker | None = None  # None without an optimizer (or with sharded parameters)
    buffers: NormBuffers | None = None  # kept for skipped steps (on_nonfinite or on_spike "skip"), else None
    cadence: Cadence = field(default_factory=lambda: Cadence(None))  # which steps log (gradwatch._cadence)
    cleanups: list[Any] = field(default_factory=list)  # what the watcher removes on close (hooks: probe, optimizers)
    released: bool = False

    def release(self) -> None:
        """Bring every pending step in and write it, flush; then remove every hook, close the sinks, let the model
        go. Once: later calls do nothing."""
        if self.released:
            return
        self.released = True
        try:
            self.transport.resolve_all()
            self.fanout.flush()
        finally:
            for handle in self.cleanups:
                handle.remove()
            self.cleanups.clear()
            self.fanout.close()
            self.engine.close()
            self.layers.clear()  # in place: the measurement stage holds the same list
            self.delivery.release_model()
            self.transport.clear()

    def state_dict(self, step: int, names: Sequence[str]) -> dict[str, Any]:
        """The checkpoint of ``gradwatch.Watcher.state_dict()`` (every pending step brought in first)."""
        self.transport.resolve_all()
        clipper, probe, tally = self.measure.clipper, self.probe, self.clip_tally
        return {"version": 1, "step": step, "layers": list(names),
                "rules": self.evaluate.rules.state_dict(), "clipper": clipper.state_dict() if clipper else {},
                **({"activations": probe.state_dict()} if probe is not None else {}), "amp": self.amp.state_dict(),
                **({"clip_tally": tally.state_dict()} if tally is not None else {}),
                "history": self.history.state_dict()}

    def load_state_dict(self, state: Any, names: Sequence[str]) -> int:
        """Restore ``state_dict()``'s output; the step counter to continue from. Checked whole first: a state that
        does not fit raises ``ConfigurationError`` naming what is wrong, and changes nothing."""
        step = _check_state(self, state, names)
        self.transport.resolve_all()
        clipper = self.measure.clipper
        if clipper is not None:  # first: a clipper of the user's own may check its state only as it loads it
            _load("clipper", clipper.load_state_dict, dict(state.get("clipper", {})))
        if "history" in state:  # absent from older checkpoints
            self.history.load_state_dict(state["history"])
        self.evaluate.rules.load_state_dict(state["rules"])
        if self.probe is not None and "activations" in state:
            self.probe.load_state_dict(state["activations"])
            self.probe.prepare(step)
        if self.clip_tally is not None and "clip_tally" in state:  # absent from older checkpoints
            self.clip_tally.load_state_dict(state["clip_tally"])
        self.amp.load_state_dict(state.get("amp", {}))
        return step


def assemble(model: nn.Module, c: WatchConfig, sinks: Sequence[Sink]) -> Stages:
    _check_materialised(model)
    layers = _checked_layers(model, c)
    optimizers: tuple[Optimizer, ...] = c.optimizer or ()  # type: ignore[assignment]  # a tuple once validated
    check_optimizers(layers, optimizers)  # before any side effect, as the layers globs
    dist = _distributed(model, layers, c)
    writes = dist is None or dist.rank == 0
    probe = ActivationProbe(model, activations=c.activations, nan_origin=c.origin,
                            every_n_steps=c.activation_every_n_steps or c.every_n_steps or 1, thresholds=c.rules)
    track = _tracks_updates(optimizers, dist)
    later = _update_tags(layers, track)  # written from the second step on: the dashboard knows them first
    dashboard = DashboardLogger(layers, histogram_every_n_steps=c.histogram_every_n_steps, histograms=c.histograms,
                                figure_every_n_steps=c.figure_every_n_steps, later_tags=later)
    hooks = probe if probe.enabled else None
    engine = StatsEngine(layers, dist=dist)
    traits = ModelTraits.of(unwrap_model(model), depth=len(layers), optimizer=list(optimizers) or None,
                            clips=c.clipper is not None)
    amp = AmpState(patience=c.amp_overflow_patience)
    evaluate = Evaluator([layer.name for layer in layers], c.rules, traits, hooks, amp,
                         kinds=[layer.kind for layer in layers], ratios=track)
    fanout = Fanout(_outputs(c, sinks, writes), dashboard, on_nonfinite=c.on_nonfinite, on_spike=c.on_spike,
                    speaks=writes, verbose=c.verbose)  # files opened here, after every check
    # FSDP and tensor parallelism swap parameter objects by design (sharded, unsharded): no check there.
    replaced = ReplacedCheck(engine.layers, active=dist is None or dist.kinds == ("replicated",))
    history, tally = SymptomHistory(), ClipTally() if c.clipper is not None else None
    history.share(fanout.episodes)  # summary() renders the episodes the console and the sinks speak of
    cadence = Cadence(c.every_n_steps)
    delivery = Delivery(evaluate, fanout, history=history, clip_tally=tally, probe=hooks, replaced=replaced,
                        names=[layer.name for layer in layers], model=model, on_spike=c.on_spike, cadence=cadence)
    updates = _tracker(layers, optimizers, track)  # hooks on the optimizers: attached last
    return Stages(
        layers=layers, dist=dist, probe=hooks, engine=engine,
        measure=Measure(layers, engine, c.clipper, dashboard, hooks, updates,
                        every_max=decides_before_step(c.on_nonfinite),
                        host_path=dist is None and c.scaler is None and c.on_spike != "skip"),
        evaluate=evaluate, fanout=fanout,
        replaced=replaced, amp=amp, delivery=delivery, transport=Transport(delivery), history=history,
        clip_tally=tally, updates=updates, cleanups=_removable(updates, hooks), buffers=_norm_buffers(model, c),
        cadence=cadence,
    )


def _check_materialised(model: nn.Module) -> None:
    """Refuse a model with a tensor on the meta device (built under ``torch.device("meta")``, not yet materialised):
    every step would fail on it."""
    named = [*model.named_parameters(), *model.named_buffers()]
    meta = [name for name, t in named if t.is_meta]
    if meta:
        raise ConfigurationError(
            f"{type(model).__name__} has {len(meta)} tensor(s) on the meta device ({', '.join(map(repr, meta[:3]))}"
            f"{', ...' if len(meta) > 3 else ''}): they hold no values to measure. Materialise the model first: "
            "model.to_empty(device=...) then load the weights (or reset_parameters()), then watch it.")


def _checked_layers(model: nn.Module, c: WatchConfig) -> list[Layer]:
    """The watched layers; the clipper's layer globs (``AGC(exclude=...)``) checked against them, before any side
    effect."""
    layers = discover_layers(model, c.layers)
    if c.clipper is not None:
        c.clipper.check_layers([layer.name for layer in layers])
    return layers


def _distributed(model: nn.Module, layers: list[Layer], c: WatchConfig) -> DistributedContext | None:
    """Several processes (gradwatch._distributed): statistics reduced across ranks, rank zero writes alone."""
    dist = detect(model, layers) if c.distributed == "auto" else None
    if dist is not None:
        dist.check_config(clipper=c.clipper, histograms=c.histogram_every_n_steps is not None)
        dist.agree_on_layers([layer.name for layer in layers])
    return dist


def _outputs(c: WatchConfig, sinks: Sequence[Sink], writes: bool) -> list[Sink]:
    """The adapter's sinks, the configured ones, and a TensorBoard sink for ``log_dir``/``writer`` (rank zero only)."""
    if not writes:
        return []
    outputs = [*sinks, *c.sinks]
    if c.log_dir is not None or c.writer is not None:
        try:
            outputs.insert(0, TensorBoardSink(log_dir=c.log_dir, writer=c.writer))
        except OSError as exc:  # what the config's look at the path could not foresee (a read-only file system...)
            raise ConfigurationError(f"log_dir={c.log_dir!r}: cannot create the event file there: "
                                     f"{exc.strerror or exc}{f': {exc.filename!r}' if exc.filename else ''}.") from exc
    return outputs


def _norm_buffers(model: nn.Module, c: WatchConfig) -> NormBuffers | None:
    """The normalisation layers' running statistics, kept when a step may be skipped (so that a skipped step leaves
    the model exactly as before it); ``None`` otherwise or without such layers."""
    if "skip" not in (c.on_nonfinite, c.on_spike):
        return None
    buffers = NormBuffers(model)
    return buffers if buffers.enabled else None


def _tracks_updates(optimizers: Sequence[Optimizer], dist: DistributedContext | None) -> bool:
    """Whether the update ratios are measured. Replicated parameters (one process, DDP) step alike on every rank:
    each measures its own updates. Sharded ones (FSDP, tensor parallel) hold a piece per rank, whose update norms
    would need a reduction: not measured."""
    return bool(optimizers) and (dist is None or set(dist.kinds) <= {"ddp", "replicated"})


def _tracker(layers: Sequence[Layer], optimizers: Sequence[Optimizer], track: bool) -> UpdateTracker | None:
    return UpdateTracker(layers, optimizers) if track else None


def _update_tags(layers: Sequence[Layer], track: bool) -> list[str]:
    return [f"gradwatch/update_ratio/{layer.name}" for layer in layers] if track else []


def _removable(*parts: Any) -> list[Any]:
    """The stages that attach something the watcher removes on close (the optimizers' hooks, the probe's)."""
    return [p for p in parts if p is not None]


# ---------------------------------------------------------------------------------------------------------- state
def _load(what: str, load: Callable[[Any], None], state: Any) -> None:
    """``load(state)``; an error from a damaged entry becomes a ConfigurationError naming it."""
    try:
        load(state)
    except ConfigurationError as exc:
        raise ConfigurationError(f"The checkpoint's {what!r} does not fit: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ConfigurationError(f"The checkpoint's {what!r} is damaged or of another kind: {exc!r}.") from exc


def _check_state(s: Stages, state: Any, names: Sequence[str]) -> int:
    """Check a checkpoint whole, on copies of what it would change; its step counter."""
    if not isinstance(state, Mapping):
        raise ConfigurationError(f"state={state!r:.80} is not a gradwatch checkpoint: pass what Watcher.state_dict() "
                                 "returned (a dict).")
    if state.get("version") != 1:
        raise ConfigurationError(f"Unknown gradwatch state version {state.get('version')!r}; expected 1.")
    missing = [key for key in ("step", "layers", "rules") if key not in state]
    if missing:
        raise ConfigurationError(f"The checkpoint has no {', '.join(map(repr, missing))}: it is not what "
                                 "Watcher.state_dict() returned.")
    layers = state["layers"]
    if not isinstance(layers, (list, tuple)) or list(layers) != list(names):
        raise ConfigurationError("The checkpoint's watched layers differ from this watcher's: "
                                 f"{layers!r:.200} vs {list(names)[:5]}...")
    step = _checked(lambda: check_int("step", state["step"]))
    _check_rules(s, state["rules"], len(names))
    _check_clipper(s, state.get("clipper", {}))
    for key, fresh in (("history", SymptomHistory), ("clip_tally", ClipTally), ("amp", AmpState),
                       ("activations", ActivationState)):
        if key in state:
            _load(key, fresh().load_state_dict, state[key])
    return step


def _checked(read: Callable[[], int]) -> int:
    try:
        return read()
    except ConfigurationError as exc:
        raise ConfigurationError(f"The checkpoint's {exc}") from exc


def _check_rules(s: Stages, rules: Any, n: int) -> None:
    if not isinstance(rules, Mapping):
        raise ConfigurationError(f"The checkpoint's 'rules' ({rules!r:.80}) is not a dict.")
    baseline = rules.get("baseline")
    if not (baseline is None or is_real(baseline)):
        raise ConfigurationError(f"The checkpoint's 'rules' baseline={baseline!r:.80} must be a number or None.")
    for key in ("observed", "jump_streak"):
        if key in rules and not (is_integral(rules[key]) and rules[key] >= 0):
            raise ConfigurationError(f"The checkpoint's 'rules' {key}={rules[key]!r:.80} must be an integer >= 0.")
    trial = copy.deepcopy(s.evaluate.rules)
    _load("rules", trial.load_state_dict, rules)
    per_layer = {"vanish_count": trial.vanishing.count, "vanish_since": trial.vanishing.since,
                 "weights.first_param_norm": trial.weights.first_param_norm}
    for key, values in per_layer.items():
        length = _length(values)
        if values is not None and length != n:
            raise ConfigurationError(f"The checkpoint's 'rules' {key} has {length} entries for the {n} layers watched "
                                     "here: it was saved by a watcher of other layers.")


def _length(values: Any) -> int:
    """The number of entries of a per-layer list (-1 for anything else: a number, a nested list)."""
    if getattr(values, "ndim", 1) != 1:
        return -1
    try:
        return len(values)
    except TypeError:
        return -1


def _check_clipper(s: Stages, clipper_state: Any) -> None:
    if not isinstance(clipper_state, Mapping):
        raise ConfigurationError(f"The checkpoint's 'clipper' ({clipper_state!r:.80}) is not a dict.")
    if s.measure.clipper is None and clipper_state:
        raise ConfigurationError(
            f"The checkpoint holds a clipper's state (keys {sorted(clipper_state)}), but this watcher has no clipper: "
            "watch with the clip= it was saved with, or drop state['clipper'] to start without one.")


# ---------------------------------------------------------------------------------------------------------- release
_OPEN: weakref.WeakSet[Stages] = weakref.WeakSet()  # the stages of every watcher not yet closed, released at exit


def guard(owner: object, stages: Stages) -> weakref.finalize:
    """Release ``stages`` when ``owner`` (the watcher) is garbage-collected unclosed, with a ``ResourceWarning``; and
    at exit, quietly. Holds the owner weakly: it keeps nothing alive. ``detach()`` the result on ``close()``."""
    _OPEN.add(stages)
    finalizer = weakref.finalize(owner, _collected, stages, f"{type(owner).__name__} of {len(stages.layers)} layers")
    finalizer.atexit = False  # exit is _at_exit's business: quiet, and before the interpreter tears anything down
    return finalizer


def _collected(stages: Stages, what: str) -> None:
    if stages.released:
        return
    stages.release()
    warnings.warn(f"gradwatch: a {what} was garbage-collected without close(); its pending steps were written, its "
                  "hooks removed and its sinks closed now. Use `with gradwatch.watch(...)` or call close().",
                  ResourceWarning, stacklevel=3)  # the line that dropped it


@atexit.register
def _at_exit() -> None:
    """The process ends (normally, on an uncaught exception, ``sys.exit``, Ctrl-C): write what every watcher still
    open has pending, and close its sinks, so that its last steps are on disk."""
    for stages in list(_OPEN):
        try:
            stages.release()
        except Exception as exc:  # one failing watcher must not keep the others' steps off the disk
            warnings.warn(f"gradwatch: could not write the last steps at exit: {exc!r}", RuntimeWarning, stacklevel=1)
