"""Property-based tests of the configuration (issue 19): generated values for every option of ``watch()``, of
``gradwatch.Thresholds``, of each clipper and of the Lightning callback give either a ``ConfigurationError`` naming
the option, or a watcher that runs a step. Never a bare ``TypeError``, never a failure at the first step.

Each option draws from a pool of values that are valid whatever the others are, and a pool of values that are
invalid whatever the others are. A draw of valid values only must give a watcher that runs steps; a draw with an
invalid one must raise a ``ConfigurationError`` that names one of the invalid options. The number of examples is
bounded (CI runs them all in seconds).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import gradwatch
from gradwatch import ConfigurationError, MemorySink, Thresholds
from gradwatch.clipping import AGC, LayerNormClip, NormClip, PercentileClip, ValueClip, ZScoreClip

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))  # layers "0" and "2"; modules "0", "1", "2"


class _Writer:
    """A writer with every method a TensorBoardSink may call on it."""

    def add_scalar(self, *a: Any) -> None: ...
    def add_text(self, *a: Any) -> None: ...
    def add_histogram_raw(self, *a: Any) -> None: ...
    def flush(self) -> None: ...


class _NoFlush:
    def add_scalar(self, *a: Any) -> None: ...
    def add_text(self, *a: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class Draw:
    """One option's value: how to make it (some need the model, the run's directory), and whether it is valid."""

    make: Callable[[Any], Any]
    valid: bool
    label: str

    def __repr__(self) -> str:
        return self.label


@dataclasses.dataclass
class Context:
    model: nn.Module
    root: Path


def _pools(valid: list[tuple[str, Callable[[Context], Any]]],
           invalid: list[tuple[str, Callable[[Context], Any]]]) -> st.SearchStrategy[Draw]:
    return st.sampled_from([Draw(make, True, label) for label, make in valid] +
                           [Draw(make, False, label) for label, make in invalid])


@st.composite
def _drawn_options(draw: st.DrawFn, pools: dict[str, tuple[list[Any], list[Any]]]) -> dict[str, Draw]:
    """A valid value for every option, then an invalid one for up to two of them (none in many examples): a draw of
    every option at random would almost never be valid as a whole."""
    values = {name: draw(_pools(valid, [])) for name, (valid, _) in pools.items()}
    for name in draw(st.lists(st.sampled_from(sorted(pools)), max_size=2, unique=True)):
        values[name] = draw(_pools([], pools[name][1]))
    event("valid" if all(d.valid for d in values.values()) else "invalid")
    return values


def _const(value: Any) -> tuple[str, Callable[[Context], Any]]:
    return repr(value), lambda ctx, v=value: v


def _file(ctx: Context) -> Path:
    path = ctx.root / "a_file"
    path.write_text("x")
    return path


def _optimizer(ctx: Context) -> torch.optim.Optimizer:
    return torch.optim.SGD(ctx.model.parameters(), lr=0.01)


_BAD_NUMBERS = [_const(v) for v in (0, -1, 1.5, True, "2", math.nan, [1])]
_EVERY = ([_const(1), _const(3), _const(np.int64(2))], _BAD_NUMBERS)
_OPTIONAL_EVERY = ([_const(None), _const(2), _const(np.int32(5))], _BAD_NUMBERS)

#: Every option of watch(): (valid, invalid) pools. A value valid here is valid whatever the other options are.
WATCH_POOLS: dict[str, tuple[list[Any], list[Any]]] = {
    "log_dir": ([_const(None), ("<run dir>", lambda ctx: ctx.root / "run" / "sub")],
                [_const(""), _const(5), ("<a file>", _file), ("<under a file>", lambda ctx: _file(ctx) / "run")]),
    "writer": ([_const(None)], [_const(object()), ("<no flush>", lambda ctx: _NoFlush())]),
    "every_n_steps": _EVERY,
    "thresholds": ([_const(None), _const(Thresholds(vanishing_patience=3))], [_const(3), _const("default")]),
    "clip": ([_const(None), _const(1.0), _const(np.float32(0.5)), ("NormClip(1.0)", lambda ctx: NormClip(1.0)),
              ("ValueClip(0.1)", lambda ctx: ValueClip(0.1)), ("ZScoreClip()", lambda ctx: ZScoreClip()),
              ("PercentileClip()", lambda ctx: PercentileClip()), ("AGC()", lambda ctx: AGC()),
              ("LayerNormClip(1.0)", lambda ctx: LayerNormClip(1.0)),
              ("AGC(exclude='*')", lambda ctx: AGC(exclude="*"))],
             [_const(0.0), _const(-1.0), _const(math.inf), _const(True), _const("1.0"),
              ("AGC(exclude='nomatch*')", lambda ctx: AGC(exclude="nomatch*"))]),
    "on_nonfinite": ([_const(v) for v in ("warn", "raise", "skip", "ignore")], [_const(v) for v in ("stop", None, 1)]),
    "layers": ([_const(None), _const("*"), _const("0"), _const(["0", "2"]), _const(("2",))],
               [_const(0), _const([]), _const([""]), _const([0]), _const("nomatch*"), _const(b"0")]),
    "sinks": ([_const(()), ("[MemorySink()]", lambda ctx: [MemorySink()])],
              [_const(None), _const(5), _const("abc"), _const([object()]), ("MemorySink()", lambda ctx: MemorySink())]),
    "on_spike": ([_const(v) for v in ("warn", "skip", "ignore")], [_const(v) for v in ("raise", "", 0)]),
    "histogram_every_n_steps": _OPTIONAL_EVERY,
    "histograms": ([_const("grad"), _const("param"), _const(("grad", "param")), _const(["param"])],
                   [_const(None), _const(3), _const([]), _const(("grad", "grad")), _const(["weights"])]),
    "figure_every_n_steps": ([_const(None)], _BAD_NUMBERS),  # a valid one draws a figure: one example below
    "activations": ([_const(False), _const(True), _const("1"), _const(["0", "2"]), _const("*")],
                    [_const(3), _const(""), _const([""]), _const([]), _const("nomatch*"), _const([1])]),
    "activation_every_n_steps": _OPTIONAL_EVERY,
    "nan_origin": ([_const(v) for v in (None, "off", "sampled", "every_step")], [_const(v) for v in ("on", 1, "")]),
    "distributed": ([_const("auto"), _const("off")], [_const(v) for v in ("on", None, True)]),
    "optimizer": ([_const(None), ("<SGD>", _optimizer), ("[<SGD>]", lambda ctx: [_optimizer(ctx)])],
                  [_const(3), _const([]), _const(["adam"])]),
    "scaler": ([_const(None), ("GradScaler('cpu')", lambda ctx: torch.amp.GradScaler("cpu")),
                ("GradScaler(enabled=False)", lambda ctx: torch.amp.GradScaler("cpu", enabled=False))],
               [_const(5), _const("scaler"), _const(object())]),
    # valid: levels that leave the logger as the rest of the suite expects it (verbose= sets a process-wide level)
    "verbose": ([_const(None), _const(20)], [_const("loud"), _const(3.5), _const(-1), _const(99)]),
}


def test_the_pools_cover_every_option_of_watch() -> None:
    assert list(WATCH_POOLS) == list(inspect.signature(gradwatch.watch).parameters)[1:]


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # symptoms, a dropped sink's notice: not what is tested here
        yield


def _run_steps(watcher: gradwatch.Watcher, model: nn.Module, steps: int = 3) -> None:
    for _ in range(steps):
        model.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        watcher.step(loss=torch.tensor(1.0))


#: What an error about an option may name instead of the option itself: the clipper's own option.
_ALIASES = {"clip": ("exclude",)}


def _attempt(make: Callable[[], Any]) -> tuple[Any, ConfigurationError | None]:
    """``(make(), None)``, or ``(None, the ConfigurationError it raised)``; any other exception propagates."""
    try:
        return make(), None
    except ConfigurationError as error:
        return None, error


def _names_one(error: ConfigurationError, names: list[str]) -> bool:
    return any(alias in str(error) for name in names for alias in (name, *_ALIASES.get(name, ())))


@SETTINGS
@given(_drawn_options(WATCH_POOLS))
def test_watch_options_give_a_named_configuration_error_or_a_working_watcher(draws: dict[str, Draw]) -> None:
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        model = _model()
        ctx = Context(model, Path(tmp))
        options = {name: draw.make(ctx) for name, draw in draws.items()}
        invalid = [name for name, draw in draws.items() if not draw.valid]
        watcher, error = _attempt(lambda: gradwatch.watch(model, **options))
        if error is not None:
            assert invalid, f"a valid configuration was refused: {error}"
            assert _names_one(error, invalid), f"{error} names none of {invalid}"
            assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # nothing attached
            return
        assert not invalid, f"accepted although {invalid} are invalid"
        with watcher:
            _run_steps(watcher, model)
            assert watcher.steps_taken == 3


def test_a_figure_every_few_steps_runs() -> None:
    pytest.importorskip("matplotlib")
    model, sink = _model(), MemorySink()
    with _quiet(), gradwatch.watch(model, figure_every_n_steps=2, sinks=[sink]) as watcher:
        _run_steps(watcher, model)
    assert [s for s, _ in sink.images["gradwatch/flow"]] == [0, 2]


# ---------------------------------------------------------------------------------------------------------- Thresholds
_ANY_NUMBER = st.sampled_from([0, 1, 2, 3, 50, -1, 0.0, 0.5, 0.999, 1.0, 1.5, 25.0, 1e4, math.inf, -math.inf, math.nan,
                               np.float32(0.5), np.int64(5), True, False, "1", None, [1]])


def _near_default(name: str) -> st.SearchStrategy[Any]:
    """Values around the field's default, of its type (often valid), or anything at all."""
    default = getattr(Thresholds(), name)
    if isinstance(default, int):
        near = st.sampled_from([default, default + 1, max(default - 1, 0), np.int64(default)])
    else:
        near = st.sampled_from([default, default * 0.5, default * 2, default * 10, np.float32(default)])
    return st.one_of(near, near, _ANY_NUMBER)


_THRESHOLDS = st.lists(st.sampled_from([f.name for f in dataclasses.fields(Thresholds)]), min_size=1, max_size=4,
                       unique=True).flatmap(lambda names: st.fixed_dictionaries({n: _near_default(n) for n in names}))


@SETTINGS
@given(_THRESHOLDS)
def test_thresholds_give_a_named_configuration_error_or_a_working_watcher(values: dict[str, Any]) -> None:
    thresholds, error = _attempt(lambda: Thresholds(**values))
    if error is not None:
        assert _names_one(error, [f"Thresholds.{name}" for name in values]), f"{error} names none of {list(values)}"
        event("refused")
        return
    event("ran")
    model = _model()
    with _quiet(), gradwatch.watch(model, thresholds=thresholds, activations=True, optimizer=_optimizer(
            Context(model, Path()))) as watcher:
        _run_steps(watcher, model, steps=4)


# ------------------------------------------------------------------------------------------------------------ clippers
def _clipper_strategy() -> st.SearchStrategy[tuple[type, dict[str, Any]]]:
    choices = []
    for cls in (NormClip, ValueClip, ZScoreClip, PercentileClip, AGC, LayerNormClip):
        params = [name for name in inspect.signature(cls).parameters]
        values = st.sampled_from([0, 1, 2, 5, 2000, 10**13, -1, 0.0, 0.5, 0.97, 1.0, 2.5, 50.0, 100.0, 101.0, 1e-6,
                                  math.inf, math.nan, np.float32(0.5), np.int64(4), True, "1", None, [1], "zscore",
                                  "mean", "0", "2", "nomatch*", ("0",), [""], ()])
        required = [n for n, p in inspect.signature(cls).parameters.items() if p.default is inspect.Parameter.empty]
        kwargs = st.fixed_dictionaries({n: values for n in required},
                                       optional={n: values for n in params if n not in required})
        choices.append(st.tuples(st.just(cls), kwargs))
    return st.one_of(choices)


@SETTINGS
@given(_clipper_strategy())
def test_clippers_give_a_named_configuration_error_or_a_working_watcher(drawn: tuple[type, dict[str, Any]]) -> None:
    cls, kwargs = drawn
    model = _model()
    # AGC(exclude=...) is checked against the layers when the watcher is built
    watcher, error = _attempt(lambda: gradwatch.watch(model, clip=cls(**kwargs)))
    if error is not None:
        assert _names_one(error, list(kwargs)), f"{cls.__name__}({kwargs}): {error} names none of {list(kwargs)}"
        event("refused")
        return
    event("ran")
    with _quiet(), watcher:
        _run_steps(watcher, model, steps=4)
        assert math.isfinite(watcher.step().clipped_norm)


# -------------------------------------------------------------------------------------------- the Lightning callback
_CALLBACK_OWN: dict[str, tuple[list[Any], list[Any]]] = {
    "progress_bar": ([_const(False), _const(True)], [_const(1), _const("yes"), _const(None)]),
    "summary": ([_const(True), _const(False)], [_const(0), _const("no")]),
    "amp_overflow_patience": ([_const(None), _const(20), _const(np.int64(3))], _BAD_NUMBERS),
    "every_n_steps": ([_const(None), _const(1), _const(4)], _BAD_NUMBERS),
    "on_nonfinite": ([_const(v) for v in ("warn", "raise", "skip", "stop", "ignore")], [_const(v) for v in ("x", 1)]),
}


def _callback_pools() -> dict[str, tuple[list[Any], list[Any]]]:
    lightning = pytest.importorskip("gradwatch.lightning")
    names = list(inspect.signature(lightning.GradWatchCallback).parameters)
    return {name: _CALLBACK_OWN.get(name) or WATCH_POOLS[name] for name in names}


def test_the_callback_pools_cover_every_option_of_the_callback() -> None:
    pools = _callback_pools()
    lightning = pytest.importorskip("gradwatch.lightning")
    assert list(pools) == list(inspect.signature(lightning.GradWatchCallback).parameters)


@SETTINGS
@given(st.data())
def test_callback_options_give_a_named_configuration_error_or_a_working_watcher(data: st.DataObject) -> None:
    lightning = pytest.importorskip("gradwatch.lightning")
    pools = _callback_pools()
    draws = data.draw(_drawn_options(pools))
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        model = _model()
        options = {name: draw.make(Context(model, Path(tmp))) for name, draw in draws.items()}
        invalid = [name for name, draw in draws.items() if not draw.valid]
        callback, error = _attempt(lambda: lightning.GradWatchCallback(**options))  # all checked here, not at fit
        if error is not None:
            assert invalid, f"a valid configuration was refused: {error}"
            assert _names_one(error, invalid), f"{error} names none of {invalid}"
            return
        # what the callback's fit builds: its config, with the Trainer's interval, on the model
        config = callback.config.replace(every_n_steps=callback.every_n_steps or 1)
        if invalid:  # only what needs the model (globs matching no layer) passes the constructor: refused at fit
            watcher, error = _attempt(lambda: gradwatch.Watcher(model, config))
            assert watcher is None, f"accepted although {invalid} are invalid"
            assert _names_one(error, invalid), f"{error} names none of {invalid}"
            return
        with gradwatch.Watcher(model, config) as watcher:
            _run_steps(watcher, model)


def test_a_few_callbacks_fit_a_trainer(tmp_path: Path) -> None:
    """The callback's config is what fit uses: one real fit with a configuration drawn like those above."""
    pl = pytest.importorskip("lightning.pytorch")
    lightning = pytest.importorskip("gradwatch.lightning")

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    sink = MemorySink()
    callback = lightning.GradWatchCallback(every_n_steps=np.int64(1), layers=("net.*",), activations=["net.1"],
                                           histograms="param", histogram_every_n_steps=2, sinks=[sink],
                                           amp_overflow_patience=None, clip=np.float32(1.0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 3)), batch_size=4)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         accelerator="cpu", devices=1)
    with _quiet():
        trainer.fit(Module(), loader)
    assert [s for s, _ in sink.series("gradwatch/global/grad_norm")] == [0, 1, 2]
