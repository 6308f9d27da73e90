"""``WatchConfig``: every option of :func:`gradwatch.watch`, validated once, shared by every adapter.

``watch(model, **options)``, the Lightning callback and any later adapter build one ``WatchConfig``; the
:class:`~gradwatch.Watcher` takes the model, a config and the adapter's own sinks. Validation happens here, in
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
from ._validate import check_choice, check_int
from .clipping import Clipper, as_clipper

__all__ = ["DistributedMode", "HistogramOf", "NonFiniteAction", "SpikeAction", "WatchConfig"]

NonFiniteAction = Literal["warn", "raise", "skip", "ignore"]
SpikeAction = Literal["warn", "skip", "ignore"]
DistributedMode = Literal["auto", "off"]
HistogramOf = Literal["grad", "param"]


@dataclass(frozen=True)
class WatchConfig:
    """Every option of :func:`gradwatch.watch`, validated once; what every adapter builds.

    The fields are :func:`gradwatch.watch`'s keyword arguments, with the same defaults and meanings (see there).
    Values are normalised: ``clip`` holds a clipper (or ``None``), ``thresholds`` a :class:`~gradwatch.Thresholds`,
    ``layers``, ``sinks``, ``histograms`` and a list of ``activations`` globs tuples, ``nan_origin`` its resolved
    choice, and ``optimizer`` a tuple of ``torch.optim.Optimizer`` (wrappers with an ``.optimizer``, such as
    Lightning's ``LightningOptimizer``, unwrapped) or ``None``. :meth:`replace` makes a validated copy with some
    options changed.

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
    every_n_steps: int = 1
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
    #: Not an option of ``watch()``: set by adapters that know better (the Lightning callback's own option).
    amp_overflow_patience: int = field(default=20, repr=False)

    def __post_init__(self) -> None:
        for check in (_check_output, _check_actions, _check_layers_and_sinks, _check_dashboard, _check_hooks,
                      _check_optimizer):
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
    """The names of :func:`gradwatch.watch`'s options, in order (every field but the adapters' own)."""
    return [f.name for f in dataclasses.fields(WatchConfig) if f.name != "amp_overflow_patience"]


def _check_output(c: WatchConfig) -> dict[str, Any]:
    if c.log_dir is not None and c.writer is not None:
        raise ConfigurationError("Pass log_dir= or writer=, not both: log_dir makes a new SummaryWriter.")
    if c.log_dir is not None and not isinstance(c.log_dir, (str, os.PathLike)):
        raise ConfigurationError(f"log_dir={c.log_dir!r} must be a path (str or os.PathLike).")
    if c.writer is not None and not (hasattr(c.writer, "add_scalar") and hasattr(c.writer, "add_text")):
        raise ConfigurationError(
            f"writer={c.writer!r} must be a SummaryWriter (something with add_scalar and add_text).")
    return {"every_n_steps": check_int("every_n_steps", c.every_n_steps, minimum=1)}


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
        "amp_overflow_patience": check_int("amp_overflow_patience", c.amp_overflow_patience, minimum=1),
    }


def _check_layers_and_sinks(c: WatchConfig) -> dict[str, Any]:
    layers = c.layers
    if layers is not None:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigurationError(f"layers={patterns!r} must be a non-empty glob string or a sequence of them.")
        layers = layers if isinstance(layers, str) else tuple(patterns)
    sinks = tuple(c.sinks)
    for s in sinks:
        if not isinstance(s, Sink):
            raise ConfigurationError(
                f"sinks: {s!r} is not a gradwatch Sink (write_scalars, write_alerts, flush, close).")
    return {"layers": layers, "sinks": sinks}


def _optional_every(name: str, value: int | None) -> int | None:
    return None if value is None else check_int(name, value, minimum=1)


def _check_dashboard(c: WatchConfig) -> dict[str, Any]:
    histogram_every = _optional_every("histogram_every_n_steps", c.histogram_every_n_steps)
    figure_every = _optional_every("figure_every_n_steps", c.figure_every_n_steps)
    histograms = (c.histograms,) if isinstance(c.histograms, str) else tuple(c.histograms)
    choices = get_args(HistogramOf)
    if not histograms or any(h not in choices for h in histograms) or len(set(histograms)) != len(histograms):
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
    if not (isinstance(activations, (bool, str)) or
            (isinstance(activations, Sequence) and all(isinstance(a, str) for a in activations))):
        raise ConfigurationError(f"activations={activations!r} must be True/False, a glob over module names, or a "
                                 "sequence of globs.")
    if isinstance(activations, Sequence) and not isinstance(activations, str):
        activations = tuple(activations)
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
