"""``WatchConfig``: every option of ``gradwatch.watch()``, validated once, shared by every adapter.

``watch(model, **options)``, the Lightning callback and any later adapter build one ``WatchConfig``; the
``Watcher`` takes the model, a config and the adapter's own sinks. Validation happens here, in
``__post_init__``, before anything touches the model or the file system. What needs the model (do the ``layers``
globs match a layer?) is checked when the watcher is built, still before any side effect.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from torch.optim import Optimizer

from ._errors import ConfigurationError
from ._flowplot import MissingExtraError, require_matplotlib
from ._hooks.probe import NanOrigin, resolve_nan_origin
from ._sinks import Sink
from ._thresholds import Thresholds
from ._validate import check_choice, check_int, check_log_dir
from .clipping import Clipper, as_clipper

__all__ = ["DistributedMode", "HistogramOf", "NonFiniteAction", "SpikeAction", "WatchConfig"]

NonFiniteAction = Literal["warn", "raise", "skip", "ignore"]
SpikeAction = Literal["warn", "skip", "ignore"]
DistributedMode = Literal["auto", "off"]
HistogramOf = Literal["grad", "param"]


@dataclass(frozen=True)
class WatchConfig:
    """Every option of ``gradwatch.watch()``, validated once; what every adapter builds.

    The fields are ``gradwatch.watch()``'s keyword arguments, with the same defaults and meanings (see there).
    Values are normalised: ``clip`` holds a clipper (or ``None``), ``thresholds`` a ``Thresholds``,
    ``layers``, ``sinks``, ``histograms`` and a list of ``activations`` globs tuples, ``nan_origin`` its resolved
    choice, and ``optimizer`` a tuple of ``torch.optim.Optimizer`` (wrappers with an ``.optimizer``, such as
    Lightning's ``LightningOptimizer``, unwrapped) or ``None``; ``scaler`` a loss scaler (anything with
    ``get_scale()``, a ``torch.amp.GradScaler``) or ``None``. ``replace()`` makes a validated copy with some options
    changed.

    Raises:
        ConfigurationError: for any invalid option, naming the value and the valid choices.

    Examples:
        >>> import gradwatch
        >>> config = gradwatch.WatchConfig(clip=1.0, every_n_steps=10)
        >>> config.clip, config.every_n_steps, config.nan_origin
        (NormClip(max_norm=1.0, norm_type=2.0), 10, 'off')
        >>> config.replace(every_n_steps=50).every_n_steps
        50
        >>> try:
        ...     gradwatch.WatchConfig(on_nonfinite="explode")
        ... except gradwatch.ConfigurationError as error:
        ...     print(error)
        on_nonfinite='explode' is not valid; choose one of 'warn', 'raise', 'skip', 'ignore'.
    """

    log_dir: str | os.PathLike[str] | None = None
    writer: Any = None
    every_n_steps: int | None = None
    thresholds: Thresholds | None = None
    clip: float | Clipper | None = None
    on_nonfinite: NonFiniteAction = "warn"
    layers: str | Sequence[str] | None = None
    sinks: Sequence[Sink] = ()
    on_spike: SpikeAction = "warn"
    histogram_every_n_steps: int | None = None
    histograms: Sequence[HistogramOf] = ("grad",)
    figure_every_n_steps: int | None = None
    activations: bool | str | Sequence[str] = False
    activation_every_n_steps: int | None = None
    nan_origin: NanOrigin | None = None
    distributed: DistributedMode = "auto"
    optimizer: Optimizer | Sequence[Optimizer] | None = field(default=None, repr=False)
    scaler: Any = field(default=None, repr=False)
    verbose: bool | int | None = None
    #: Not an option of ``watch()``: the Lightning callback's own option. ``None`` (default): a run of fp16 loss-scaler
    #: overflows is judged by the scale alone; an int also makes this many consecutive overflows ``nonfinite``.
    amp_overflow_patience: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for check in (_check_output, _check_actions, _check_layers_and_sinks, _check_dashboard, _check_hooks,
                      _check_optimizer, _check_scaler, _check_verbose):
            for name, value in check(self).items():
                object.__setattr__(self, name, value)

    @property
    def clipper(self) -> Clipper | None:
        """``clip`` as a clipper (``None`` for no clipping)."""
        return self.clip if isinstance(self.clip, Clipper) else None

    @property
    def rules(self) -> Thresholds:
        """``thresholds``, never ``None`` (the calibrated defaults when none were given)."""
        return self.thresholds if isinstance(self.thresholds, Thresholds) else Thresholds()

    @property
    def origin(self) -> NanOrigin:
        """``nan_origin`` resolved (``None`` means ``"sampled"`` with activations on, ``"off"`` without)."""
        return resolve_nan_origin(self.nan_origin, self.activations)

    def replace(self, **changes: Any) -> WatchConfig:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)


def watch_options() -> list[str]:
    """The names of ``gradwatch.watch()``'s options, in order (every field but the adapters' own)."""
    return [f.name for f in dataclasses.fields(WatchConfig) if f.name != "amp_overflow_patience"]


def _check_output(c: WatchConfig) -> dict[str, Any]:
    if c.log_dir is not None and c.writer is not None:
        raise ConfigurationError("Pass log_dir= or writer=, not both: log_dir makes a new SummaryWriter.")
    if c.log_dir is not None:
        if not isinstance(c.log_dir, (str, os.PathLike)):
            raise ConfigurationError(f"log_dir={c.log_dir!r} must be a path (str or os.PathLike).")
        check_log_dir("log_dir", c.log_dir)  # before anything is created: a file, or a directory not writable
    if c.writer is not None:
        _check_writer(c.writer, c.histogram_every_n_steps)
    try:
        every = _optional_every("every_n_steps", c.every_n_steps)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} Or None (default) for gradwatch's cadence: every step at first, sparser "
                                 "later, every step around each symptom episode.") from None
    return {"every_n_steps": every}


def _check_writer(writer: Any, histogram_every_n_steps: Any) -> None:
    """The methods that ``TensorBoardSink`` calls on a writer for the configured features: a writer
    without one would be dropped at the first step that needs it."""
    needed = {"add_scalar": "scalars", "add_text": "alerts", "flush": "flush and close"}
    if histogram_every_n_steps is not None:
        needed["add_histogram_raw"] = f"histogram_every_n_steps={histogram_every_n_steps!r}"
    missing = [f"{method} (for {use})" for method, use in needed.items() if not callable(getattr(writer, method, None))]
    if missing:
        raise ConfigurationError(
            f"writer={writer!r:.120} must be a SummaryWriter (something with {', '.join(needed)}); it has no "
            f"{', '.join(missing)}.")


def _check_actions(c: WatchConfig) -> dict[str, Any]:
    thresholds = Thresholds() if c.thresholds is None else c.thresholds
    if not isinstance(thresholds, Thresholds):
        raise ConfigurationError(f"thresholds={thresholds!r} must be a gradwatch.Thresholds or None.")
    return {
        "thresholds": thresholds,
        "clip": as_clipper(c.clip),
        "on_nonfinite": check_choice("on_nonfinite", c.on_nonfinite, get_args(NonFiniteAction)),
        "on_spike": check_choice("on_spike", c.on_spike, get_args(SpikeAction)),
        "distributed": check_choice("distributed", c.distributed, get_args(DistributedMode)),
        "amp_overflow_patience": _optional_every("amp_overflow_patience", c.amp_overflow_patience),
    }


def _check_layers_and_sinks(c: WatchConfig) -> dict[str, Any]:
    layers = c.layers
    if layers is not None:
        patterns = _strings(layers)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigurationError(f"layers={patterns if patterns is not None else layers!r} must be a non-empty "
                                     "glob string or a sequence of them.")
        layers = layers if isinstance(layers, str) else tuple(patterns)
    return {"layers": layers, "sinks": _checked_sinks(c.sinks)}


def _strings(value: Any) -> list[Any] | None:
    """A glob option as a list: ``[value]`` for a string, the items of a sequence or a set, else ``None``."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (Sequence, set, frozenset)) and not isinstance(value, bytes):
        return list(value)
    return None


def _checked_sinks(sinks: Any) -> tuple[Sink, ...]:
    if isinstance(sinks, Sink):
        raise ConfigurationError(f"sinks={sinks!r:.80} is one sink: pass a list of them (sinks=[...]).")
    if isinstance(sinks, (str, bytes)) or not isinstance(sinks, (Sequence, set, frozenset)):
        raise ConfigurationError(f"sinks={sinks!r:.80} must be a list of gradwatch Sinks (objects with write_scalars, "
                                 "write_alerts, flush, close); () for none.")
    for s in sinks:
        if not isinstance(s, Sink):
            raise ConfigurationError(
                f"sinks: {s!r} is not a gradwatch Sink (write_scalars, write_alerts, flush, close).")
    return tuple(sinks)


def _optional_every(name: str, value: int | None) -> int | None:
    return None if value is None else check_int(name, value, minimum=1)


def _check_dashboard(c: WatchConfig) -> dict[str, Any]:
    histogram_every = _optional_every("histogram_every_n_steps", c.histogram_every_n_steps)
    figure_every = _optional_every("figure_every_n_steps", c.figure_every_n_steps)
    listed = _strings(c.histograms)
    histograms = tuple(listed) if listed is not None else c.histograms
    choices = get_args(HistogramOf)
    if listed is None or not histograms or any(not (isinstance(h, str) and h in choices) for h in histograms) or \
            len(set(histograms)) != len(histograms):
        raise ConfigurationError(f"histograms={histograms!r} is not valid; give one or both of "
                                 f"{', '.join(repr(ch) for ch in choices)}, each once.")
    if figure_every is not None:
        try:
            require_matplotlib()
        except MissingExtraError as exc:
            raise ConfigurationError(f"figure_every_n_steps={c.figure_every_n_steps!r}: {exc} "
                                     "(or leave figure_every_n_steps=None).") from None
    return {"histogram_every_n_steps": histogram_every, "figure_every_n_steps": figure_every,
            "histograms": histograms}


def _check_hooks(c: WatchConfig) -> dict[str, Any]:
    activations = c.activations
    if not isinstance(activations, bool):
        patterns = _strings(activations)
        if not patterns or not all(isinstance(a, str) and a for a in patterns):
            raise ConfigurationError(f"activations={activations!r} must be True/False, a glob over module names, or a "
                                     "non-empty sequence of globs.")
        activations = activations if isinstance(activations, str) else tuple(patterns)
    return {
        "activations": activations,
        "activation_every_n_steps": _optional_every("activation_every_n_steps", c.activation_every_n_steps),
        "nan_origin": resolve_nan_origin(c.nan_origin, activations),
    }


def _unwrap_optimizer(value: Any) -> Any:
    """A wrapper's optimizer (Lightning's ``LightningOptimizer`` holds it as ``.optimizer``), else ``value``."""
    inner = getattr(value, "optimizer", None)
    return inner if isinstance(inner, Optimizer) else value


def _check_optimizer(c: WatchConfig) -> dict[str, Any]:
    given = c.optimizer
    if given is None:
        return {}
    listed = [given] if isinstance(_unwrap_optimizer(given), Optimizer) else given
    if isinstance(listed, (str, bytes)) or not isinstance(listed, Sequence) or not listed:
        raise ConfigurationError(f"optimizer={given!r:.200} is not valid; pass a torch.optim.Optimizer, a non-empty "
                                 "sequence of them, or None.")
    optimizers = tuple(_unwrap_optimizer(o) for o in listed)
    for o in optimizers:
        if not isinstance(o, Optimizer):
            raise ConfigurationError(f"optimizer: {o!r:.200} ({type(o).__name__}) is not a torch.optim.Optimizer; "
                                     "pass an Optimizer, a sequence of them, or None.")
    if len({id(o) for o in optimizers}) != len(optimizers):
        raise ConfigurationError(f"optimizer: the same optimizer is given more than once ({len(optimizers)} given); "
                                 "pass each once.")
    return {"optimizer": optimizers}


def _check_scaler(c: WatchConfig) -> dict[str, Any]:
    scaler = c.scaler
    if scaler is not None and not callable(getattr(scaler, "get_scale", None)):
        raise ConfigurationError(f"scaler={scaler!r:.120} is not a loss scaler; pass the torch.amp.GradScaler of fp16 "
                                 "mixed precision (anything with get_scale()), or None.")
    return {}


def _check_verbose(c: WatchConfig) -> dict[str, Any]:
    """``verbose``: ``None`` (leave the ``gradwatch`` logger's level), ``True``, ``False`` or a ``logging`` level."""
    v = c.verbose
    if v is None or isinstance(v, bool):
        return {}
    if isinstance(v, int) and 0 <= v <= 50:
        return {"verbose": int(v)}
    raise ConfigurationError(f"verbose={v!r} is not valid; pass None (leave the 'gradwatch' logger as it is), True "
                             "(say everything), False (errors only) or a logging level such as logging.WARNING.")
