"""A watched model pickles and deep-copies, and a copy carries no live gradwatch hook (issue 19, #6)."""

from __future__ import annotations

import copy
import gc
import io
import pickle

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._hooks.probe import ActivationProbe


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


def _probes() -> int:
    gc.collect()
    return sum(type(o) is ActivationProbe for o in gc.get_objects())


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    model(x).pow(2).mean().backward()


def _hooks(model: nn.Module) -> list[object]:
    return [h for m in model.modules() for h in m._forward_hooks.values()]


def _copies(model: nn.Module) -> dict[str, nn.Module]:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return {"torch.save": torch.load(buffer, weights_only=False),
            "pickle": pickle.loads(pickle.dumps(model)),
            "deepcopy": copy.deepcopy(model)}


@pytest.mark.parametrize("nan_origin", ["sampled", "every_step"])
def test_a_watched_model_is_saved_and_copied_without_live_hooks(nan_origin):
    model = _model()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, activations=True, nan_origin=nan_origin, sinks=[sink]) as watcher:
        _train_step(model, torch.randn(16, 4))
        watcher.step()
        assert _hooks(model)  # the hooks are on for the next step
        probes = _probes()
        copies = _copies(model)
        assert _probes() == probes  # no copy took a probe along
        for name, twin in copies.items():
            assert all(h(twin, (torch.ones(1),), {}, torch.ones(1)) is None for h in _hooks(twin)), name
            _train_step(twin, torch.randn(16, 4))  # forward and backward run, and record nothing anywhere
            assert twin[0].weight.grad is not None
            assert torch.equal(twin[0].weight, model[0].weight)
        # the original still works: its hooks saw its own batch only (the copies' batches were never recorded)
        _train_step(model, torch.zeros(16, 4))
        watcher.step()
    first_layer_mean = dict(sink.scalars["gradwatch/act_mean/0"])
    assert first_layer_mean[1] == pytest.approx(float(model[0].bias.detach().mean()), abs=1e-6)  # zeros in: bias out
    assert not _hooks(model)  # close() removed them


def test_copies_made_before_close_stay_quiet_after_it():
    model = _model()
    watcher = gradwatch.watch(model, activations=True, nan_origin="every_step")
    _train_step(model, torch.randn(8, 4))
    watcher.step()
    probes = _probes()
    twin = copy.deepcopy(model)  # once, the copy took a live copy of the probe along, recording for ever
    watcher.close()
    for _ in range(5):
        _train_step(twin, torch.randn(8, 4))
    assert _probes() == probes
    assert all(h(twin, (), {}, None) is None for h in _hooks(twin))
