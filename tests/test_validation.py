"""Every invalid argument is rejected at construction, naming the value and the valid choices."""

import math
import re

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.clipping import NormClip, ValueClip


@pytest.fixture
def model():
    return nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"every_n_steps": 0}, r"every_n_steps=0 must be an integer >= 1"),
    ({"every_n_steps": -3}, r"every_n_steps=-3"),
    ({"every_n_steps": 2.5}, r"every_n_steps=2\.5 must be an integer"),
    ({"every_n_steps": True}, r"every_n_steps=True"),
    ({"on_nonfinite": "explode"},
     r"on_nonfinite='explode' is not valid; choose one of 'warn', 'raise', 'skip', 'ignore'"),
    ({"on_nonfinite": None}, r"on_nonfinite=None is not valid"),
    ({"layers": "decoder.*"}, r"'decoder\.\*' matches no layer.*0, 2"),
    ({"layers": []}, r"layers=\[\] must be a non-empty"),
    ({"clip": -1.0}, r"clip=-1\.0 must be a positive finite max norm"),
    ({"clip": 0}, r"clip=0 must be a positive"),
    ({"clip": math.nan}, r"clip=nan must be a positive"),
    ({"clip": math.inf}, r"clip=inf must be a positive"),
    ({"clip": "1.0"}, r"clip='1\.0' is not valid; pass None, a positive float"),
    ({"thresholds": {"vanishing_rms": 1e-7}}, r"thresholds=.* must be a gradwatch\.Thresholds"),
    ({"log_dir": "x", "writer": object()}, r"log_dir= or writer=, not both"),
    ({"writer": object()}, r"writer=.* must be a SummaryWriter"),
    ({"sinks": [object()]}, r"is not a gradwatch Sink"),
])
def test_watch_rejects_bad_arguments(model, kwargs, pattern):
    with pytest.raises(gradwatch.ConfigurationError, match=pattern):
        gradwatch.watch(model, **kwargs)


def test_configuration_error_is_a_value_error_and_a_gradwatch_error(model):
    with pytest.raises(ValueError):
        gradwatch.watch(model, every_n_steps=0)
    assert issubclass(gradwatch.ConfigurationError, gradwatch.GradWatchError)
    assert issubclass(gradwatch.NonFiniteGradientError, gradwatch.GradWatchError)


@pytest.mark.parametrize("bad", [None, 3, "model", torch.zeros(2), [nn.Linear(2, 2)]])
def test_non_modules_are_rejected(bad):
    with pytest.raises(gradwatch.ConfigurationError, match=re.escape("model must be a torch.nn.Module")):
        gradwatch.watch(bad)


def test_keyword_only(model):
    with pytest.raises(TypeError):
        gradwatch.watch(model, "runs/x")  # type: ignore[misc]


@pytest.mark.parametrize(("field", "value", "pattern"), [
    ("vanishing_rms", -1.0, r"vanishing_rms=-1\.0 must be >= 0"),
    ("vanishing_rms", math.nan, r"vanishing_rms=nan must be a finite number"),
    ("vanishing_ratio", 1.5, r"vanishing_ratio=1\.5 must be < 1"),
    ("vanishing_ratio", -0.1, r"vanishing_ratio=-0\.1 must be >= 0"),
    ("vanishing_patience", 0, r"vanishing_patience=0 must be an integer >= 1"),
    ("exploding_norm", -5.0, r"exploding_norm=-5\.0 must be > 0"),
    ("exploding_norm", math.nan, r"exploding_norm=nan"),
    ("jump_factor", 0.5, r"jump_factor=0\.5 must be > 1"),
    ("jump_factor", math.nan, r"jump_factor=nan"),
    ("jump_warmup", -1, r"jump_warmup=-1"),
    ("baseline_beta", 1.0, r"baseline_beta=1\.0 must be < 1"),
    ("baseline_beta", "0.9", r"baseline_beta='0\.9' must be a number"),
])
def test_thresholds_reject_bad_values(field, value, pattern):
    with pytest.raises(gradwatch.ConfigurationError, match=pattern):
        gradwatch.Thresholds(**{field: value})


def test_thresholds_reject_unknown_fields():
    with pytest.raises(TypeError, match="vanishing_rmss"):
        gradwatch.Thresholds(vanishing_rmss=1.0)  # type: ignore[call-arg]


def test_thresholds_are_frozen():
    with pytest.raises(AttributeError):
        gradwatch.Thresholds().vanishing_rms = 0.0  # type: ignore[misc]


def test_infinite_ceilings_disable_rules():
    th = gradwatch.Thresholds(exploding_norm=math.inf, jump_factor=math.inf)
    assert th.exploding_norm == math.inf


@pytest.mark.parametrize(("make", "pattern"), [
    (lambda: NormClip(0.0), r"max_norm=0\.0 must be > 0"),
    (lambda: NormClip(-1.0), r"max_norm=-1\.0 must be > 0"),
    (lambda: NormClip(math.nan), r"max_norm=nan must be a finite number"),
    (lambda: NormClip(1.0, norm_type=0), r"norm_type=0 must be > 0"),
    (lambda: ValueClip(-0.5), r"value=-0\.5 must be > 0"),
    (lambda: ValueClip(math.inf), r"value=inf must be a finite number"),
])
def test_clippers_reject_bad_values(make, pattern):
    with pytest.raises(gradwatch.ConfigurationError, match=pattern):
        make()


def test_step_after_close_is_an_error(model):
    watcher = gradwatch.watch(model)
    watcher.close()
    with pytest.raises(gradwatch.GradWatchError, match="closed"):
        watcher.step()
    watcher.close()  # idempotent


def test_distributed_mode_is_validated(model):
    with pytest.raises(gradwatch.ConfigurationError,
                       match=r"distributed='on' is not valid; choose one of 'auto', 'off'"):
        gradwatch.watch(model, distributed="on")
