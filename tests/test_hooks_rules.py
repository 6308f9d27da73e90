"""The ``saturated`` and ``dead`` rules: they fire on the classic failures and stay silent on healthy models."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch
import zoo
from gradwatch._hooks.rules import ActivationState, ActStats, activation_symptoms


def deep_mlp(act: type[nn.Module], *, std: float | None = None, bias: float | None = None, depth: int = 10,
             width: int = 32) -> nn.Sequential:
    torch.manual_seed(1)
    mods: list[nn.Module] = []
    d = 16
    for _ in range(depth):
        lin = nn.Linear(d, width)
        if std is not None:
            nn.init.normal_(lin.weight, std=std)
        if bias is not None:
            nn.init.constant_(lin.bias, bias)
        mods += [lin, act()]
        d = width
    return nn.Sequential(*mods, nn.Linear(d, 1))


def train(model: nn.Module, steps: int = 12, **kw: object) -> gradwatch.Watcher:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 1, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradwatch.watch(model, activations=True, **kw) as w:
            for _ in range(steps):
                x = torch.randn(64, 16, generator=g)
                F.mse_loss(model(x), torch.sin(x @ teacher)).backward()
                w.step()
                opt.step()
                opt.zero_grad()
    return w


def test_deep_sigmoid_with_large_weights_is_saturated() -> None:
    w = train(deep_mlp(nn.Sigmoid, std=2.0))
    saturated = w.history.layers("saturated")
    assert {"1", "3", "19"} <= set(saturated)  # Sigmoid modules, first to last
    assert not w.history.layers("dead")
    entry = w.history.summaries("saturated")[0]
    assert entry.first_step == 4  # patience 5: steps 0..4
    assert "Xavier" in entry.message
    assert "flat region" in entry.message


def test_deep_sigmoid_with_default_init_vanishes_without_saturating() -> None:
    w = train(deep_mlp(nn.Sigmoid), steps=15, thresholds=gradwatch.Thresholds(vanishing_patience=10))
    assert not w.history.layers("saturated")  # small pre-activations: sigmoid' <= 0.25, multiplied, not saturation
    assert w.history.layers("vanishing")


def test_relu_with_large_negative_bias_is_dead_and_he_init_is_not() -> None:
    w = train(deep_mlp(nn.ReLU, bias=-3.0))
    assert set(w.history.layers("dead")) == {str(i) for i in range(1, 20, 2)}
    assert "LeakyReLU" in w.history.summaries("dead")[0].message
    healthy = train(deep_mlp(nn.ReLU, std=math.sqrt(2 / 32)))
    assert not healthy.history.layers("dead")
    assert not healthy.history.layers("saturated")


def test_patience_and_episodes() -> None:
    th = gradwatch.Thresholds(activation_patience=2, dead_frac=0.5)
    state = ActivationState()
    types = {"r": "ReLU"}

    def at(step: int, frac: float) -> tuple[list[str], list[str]]:
        found, started = activation_symptoms(step, {"r": ActStats(0.0, 0.0, frac, dead_frac=frac)}, types, th, state)
        return [s.kind for s in found], [s.kind for s in started]

    assert at(0, 0.9) == ([], [])
    assert at(1, 0.9) == (["dead"], ["dead"])
    assert at(2, 0.6) == (["dead"], [])  # the same episode: no new onset
    assert at(3, 0.1) == ([], [])
    assert at(4, math.nan) == ([], [])  # NaN never fires
    assert at(5, 0.9) == ([], [])


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_healthy_zoo_stays_silent_with_activations_on(name: str) -> None:
    model, loss_fn = zoo.HEALTHY[name](0)
    opt_name, lr = zoo.DEFAULT_OPT[name]
    with gradwatch.watch(model, activations=True, nan_origin="every_step") as w:
        zoo.train(model, loss_fn, steps=12, lr=lr, optimizer=opt_name, on_grads=lambda step, m: w.step())
        assert w.history.summaries() == [], w.summary()
        assert w.steps_taken == 12
