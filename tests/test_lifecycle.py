"""close(), the context manager, references to the model, and state_dict round trips."""

import gc
import weakref

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import MemorySink


def _step(model, watcher, scale=1.0):
    model.zero_grad()
    (model(torch.randn(4, 3)).pow(2).mean() * scale).backward()
    return watcher.step()


def test_close_drops_every_reference_to_the_model_and_its_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    watcher = gradwatch.watch(model)
    report = _step(model, watcher)
    watcher.close()
    ref = weakref.ref(model)
    param_ref = weakref.ref(model[0].weight)
    del model
    gc.collect()
    assert ref() is None
    assert param_ref() is None
    assert watcher.model is None
    assert report.layers["0"].grad_norm > 0  # reports outlive the model


def test_the_watcher_holds_the_model_weakly_while_open():
    model = nn.Linear(3, 1)
    watcher = gradwatch.watch(model)
    assert watcher.model is model
    ref = weakref.ref(model)
    watcher.close()
    del model
    gc.collect()
    assert ref() is None


def test_context_manager_closes_and_flushes_on_exception():
    sink = MemorySink()
    model = nn.Linear(3, 1)
    # one block for the whole session: the exception is raised inside it, after a step
    with pytest.raises(RuntimeError, match="user code"), gradwatch.watch(model, sinks=[sink]) as watcher:  # noqa: PT012
        _step(model, watcher)
        raise RuntimeError("user code")
    assert sink.closed
    assert sink.flushes >= 1
    assert sink.series("gradwatch/global/grad_norm")


def test_state_dict_round_trip_restores_rule_state_and_step():
    th = gradwatch.Thresholds(jump_warmup=3)
    model = nn.Linear(3, 1)
    a = gradwatch.watch(model, thresholds=th)
    for _ in range(6):
        _step(model, a)
    state = a.state_dict()
    b = gradwatch.watch(model, thresholds=th)
    b.load_state_dict(state)
    assert b.state_dict() == state
    assert b.steps_taken == 6
    # the restored jump baseline is live: a x1000 step is flagged at once, with no new warm-up
    r = _step(model, b, scale=1000.0)
    assert r.step == 6
    assert any(s.kind == "exploding" for s in r.symptoms)
    a.close()
    b.close()


def test_load_state_dict_refuses_other_layers():
    a = gradwatch.watch(nn.Linear(3, 1))
    b = gradwatch.watch(nn.Sequential(nn.Linear(3, 1)))
    with pytest.raises(gradwatch.ConfigurationError, match="watched layers differ"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(gradwatch.ConfigurationError, match="version"):
        b.load_state_dict({"version": 99})
