"""Unusual parameters: integer or bool parameters anywhere in the model (issue 19, #2), and parameters assigned anew
after ``watch()`` (#1), which the engine follows and clips."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._layers import discover_layers, follow_layers


def _with_integer_parameters() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    model[0].register_parameter("counter", nn.Parameter(torch.zeros(3, dtype=torch.int8), requires_grad=False))
    model.register_parameter("mask", nn.Parameter(torch.ones(2, dtype=torch.bool), requires_grad=False))
    return model


def _global_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def test_integer_and_bool_parameters_are_not_layers():
    layers = discover_layers(_with_integer_parameters())
    assert [layer.name for layer in layers] == ["0", "2"]
    assert [layer.paths for layer in layers] == [("0.weight", "0.bias"), ("2.weight", "2.bias")]


def test_a_model_with_only_integer_parameters_is_refused_by_name():
    model = nn.Module()
    model.steps = nn.Parameter(torch.zeros(1, dtype=torch.int64), requires_grad=False)
    with pytest.raises(gradwatch.ConfigurationError, match="no floating-point parameters"):
        gradwatch.watch(model)


@pytest.mark.parametrize("options", [
    {},
    {"clip": 1.0, "every_n_steps": 1},
    {"activations": True, "histogram_every_n_steps": 1, "histograms": ("grad", "param")},
    {"clip": gradwatch.clipping.AGC(0.01), "on_nonfinite": "skip"},
])
def test_integer_and_bool_parameters_do_not_break_a_step(options):
    model = _with_integer_parameters()
    opt = torch.optim.SGD([p for p in model.parameters() if p.is_floating_point()], lr=0.1)
    with gradwatch.watch(model, **options) as watcher:
        for _ in range(3):
            model(torch.ones(5, 3)).sum().backward()
            before = _global_norm(model)
            report = watcher.step()
            assert report.global_norm == pytest.approx(before, rel=1e-6)
            assert report.layers["0"].param_norm is not None
            opt.step()
            opt.zero_grad()
    assert watcher.steps_taken == 3


def test_a_parameter_assigned_anew_is_followed_and_clipped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the huge gradient is an exploding symptom: not what this test is about
        with gradwatch.watch(model, clip=1.0) as watcher:
            model[0].weight = nn.Parameter(torch.randn(100, 100) * 1000.0)  # one parameter replaced, the bias kept
            model(torch.randn(8, 100)).sum().backward()
            before = _global_norm(model)
            report = watcher.step()
    assert before > 1e3
    assert report.global_norm == pytest.approx(before, rel=1e-6)  # the new weight's gradient is measured ...
    assert report.layers["0"].numel == 100 * 100 + 100
    assert _global_norm(model) == pytest.approx(1.0, rel=1e-5)  # ... and clipped: the optimizer sees norm 1
    assert report.clipped_norm == pytest.approx(1.0, rel=1e-5)


def test_a_parameter_assigned_anew_with_a_stale_gradient_on_the_old_one_is_still_followed():
    model = nn.Linear(2, 1, bias=False)
    old = model.weight
    old.grad = torch.full_like(old, 100.0)  # never zeroed: the optimizer was rebuilt on the new parameter
    with gradwatch.watch(model) as watcher:
        model.weight = nn.Parameter(torch.zeros(1, 2))
        model.weight.grad = torch.tensor([[3.0, 4.0]])
        report = watcher.step()
    assert report.global_norm == pytest.approx(5.0)


def test_following_keeps_tied_parameters_once_and_ignores_a_collected_module():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    layers = discover_layers(model)
    assert follow_layers(layers) is None
    model[1].weight = model[0].weight  # tied after watch(): the first owner keeps it
    followed = follow_layers(layers)
    assert followed is not None
    assert [len(layer.params) for layer in followed] == [1, 0]
    model[0].weight = nn.Parameter(torch.ones(2, 2, dtype=torch.int32), requires_grad=False)  # not floating
    assert follow_layers(layers)[0].params[0] is layers[0].params[0]
    del model[1]  # the module is gone: its layer stays as it was
    model[0].weight = nn.Parameter(torch.ones(2, 2))
    again = follow_layers(layers)
    assert again[0].params[0] is model[0].weight


def test_the_engine_updates_its_one_list_of_layers_in_place():
    from gradwatch._stats import StatsEngine

    model = nn.Linear(2, 1)
    engine = StatsEngine(discover_layers(model))
    held = engine.layers
    model.weight = nn.Parameter(torch.ones(1, 2))
    model.weight.grad, model.bias.grad = torch.tensor([[3.0, 0.0]]), torch.tensor([4.0])
    assert float(engine.compute().total_norm) == pytest.approx(5.0)
    assert engine.layers is held
    assert held[0].params[0] is model.weight
    assert float(engine.param_norms()[0]) == pytest.approx(math.sqrt(2.0 + float(model.bias.detach().pow(2).sum())))
    engine.close()
    assert held == []


def test_a_parameter_tied_to_a_later_layer_after_watch_is_counted_once():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2))
    model[0].weight = model[1].weight  # the first layer now holds the second one's weight
    model[1].weight.grad, model[1].bias.grad = torch.full((2, 2), 1.0), torch.zeros(2)
    followed = follow_layers(discover_layers(model))
    assert followed is None  # discovered after the tie: nothing to follow
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2))
    with gradwatch.watch(model) as watcher:
        model[0].weight = model[1].weight
        model[1].weight.grad, model[1].bias.grad = torch.full((2, 2), 1.0), torch.zeros(2)
        report = watcher.step()
    assert report.global_norm == pytest.approx(2.0)  # not 2 * sqrt(2): the tied weight once
    assert report.layers["0"].grad_norm == pytest.approx(2.0)
    assert report.layers["1"].numel == 2
