"""Configuration checked at construction, with a ConfigurationError naming the bad value (issue 19, #11): numpy
scalars taken wherever a Python number is, a clipper's exclusions, a window too large to allocate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._validate import check_int, check_number
from gradwatch.clipping import AGC, LayerNormClip, NormClip, PercentileClip, ValueClip, ZScoreClip


def test_numpy_scalars_configure_a_watcher_that_runs():
    model = nn.Linear(3, 1)
    model.weight.grad, model.bias.grad = torch.tensor([[30.0, 40.0, 0.0]]), torch.tensor([0.0])
    with gradwatch.watch(model, clip=np.float32(1.0), every_n_steps=np.int64(10),
                         histogram_every_n_steps=np.int32(10)) as watcher:
        assert watcher.every_n_steps == 10
        assert type(watcher.every_n_steps) is int
        assert watcher.clipper.max_norm == 1.0
        report = watcher.step()
    assert report.clipped_norm == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("make", [
    lambda: NormClip(np.float32(2.0)),
    lambda: NormClip(np.float64(2.0), norm_type=np.float32(np.inf)),
    lambda: ValueClip(np.float32(0.5)),
    lambda: ZScoreClip(alpha=np.float64(0.9), z_threshold=np.float32(2.0), warmup_steps=np.int64(3)),
    lambda: PercentileClip(np.float32(50.0), window=np.int64(8)),
    lambda: AGC(np.float32(0.01), eps=np.float64(1e-3)),
    lambda: LayerNormClip(np.int64(1)),
])
def test_clippers_take_numpy_scalars(make):
    clipper = make()
    model = nn.Linear(2, 2)
    model(torch.ones(3, 2)).sum().backward()
    with gradwatch.watch(model, clip=clipper) as watcher:
        watcher.step()
    assert all(type(v) in (int, float) for k, v in vars(clipper).items() if not k.startswith("_")
               and isinstance(v, (int, float, np.generic)))


@pytest.mark.parametrize(("value", "ok"), [
    (np.float32(1.5), True), (np.float64(1.5), True), (np.int64(2), True), (np.int8(2), True), (2, True),
    (True, False), (np.bool_(True), False), ("1.5", False), (None, False), (torch.tensor(1.5), False),
])
def test_check_number_takes_real_numbers_but_never_a_flag(value, ok):
    if ok:
        assert check_number("x", value) == float(value)
        assert type(check_number("x", value)) is float
    else:
        with pytest.raises(gradwatch.ConfigurationError, match="x="):
            check_number("x", value)


@pytest.mark.parametrize(("value", "ok"), [
    (np.int64(10), True), (np.uint8(3), True), (7, True),
    (np.float32(10.0), False), (10.0, False), (False, False), (np.bool_(True), False), ("10", False),
])
def test_check_int_takes_integers_but_never_a_float_or_a_flag(value, ok):
    if ok:
        assert check_int("n", value) == int(value)
        assert type(check_int("n", value)) is int
    else:
        with pytest.raises(gradwatch.ConfigurationError, match="n="):
            check_int("n", value)


def test_numpy_bool_and_float_counts_are_still_refused_by_watch():
    with pytest.raises(gradwatch.ConfigurationError, match="every_n_steps"):
        gradwatch.watch(nn.Linear(1, 1), every_n_steps=np.bool_(True))
    with pytest.raises(gradwatch.ConfigurationError, match="clip"):
        gradwatch.watch(nn.Linear(1, 1), clip=np.bool_(True))
    with pytest.raises(gradwatch.ConfigurationError, match="clip"):
        gradwatch.watch(nn.Linear(1, 1), clip=np.float32("nan"))


@pytest.mark.parametrize("exclude", [5, None, 1.5, b"head", "", [""], ["fc", 3], {"fc": 1}])
def test_agc_exclude_is_checked_at_construction(exclude):
    with pytest.raises(gradwatch.ConfigurationError, match=r"exclude=.*glob"):
        AGC(exclude=exclude)


def test_agc_exclude_takes_a_glob_or_a_sequence_of_them():
    assert AGC(exclude="fc").exclude == ("fc",)
    assert AGC(exclude=["fc", "head*"]).exclude == ("fc", "head*")
    assert AGC(exclude=()).exclude == ()


def test_percentile_window_too_large_names_the_maximum_before_allocating():
    with pytest.raises(gradwatch.ConfigurationError, match=r"window=1000000000000 must be an integer <= 1,000,000"):
        PercentileClip(window=10**12)
    assert PercentileClip(window=1_000_000).window == 1_000_000


def test_agc_exclusions_are_checkable_against_the_layers_before_the_first_step():
    """What the watcher calls when it is built (the watcher's owner wires it in: see the report)."""
    AGC(exclude="1").check_layers(["0", "1"])
    with pytest.raises(gradwatch.ConfigurationError, match=r"pattern 'nomatch\*' matches no watched layer.*: 0, 1\."):
        AGC(exclude=["1", "nomatch*"]).check_layers(["0", "1"])
    for clipper in (NormClip(1.0), ValueClip(1.0), ZScoreClip(), PercentileClip(), LayerNormClip(1.0), AGC()):
        assert clipper.check_layers(["0", "1"]) is None
