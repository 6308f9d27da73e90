"""``load_state_dict`` refuses bad input whole, naming what is wrong, and changes nothing then (issue 19, #12)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import ConfigurationError
from gradwatch.clipping import NormClip, ZScoreClip


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def _trained(model: nn.Module, steps: int = 4, **options: Any) -> gradwatch.Watcher:
    watcher = gradwatch.watch(model, **options)
    for i in range(steps):
        model.zero_grad()
        (model(torch.randn(5, 3)).pow(2).mean() * (1 + i)).backward()
        watcher.step(loss=float(i))
    return watcher


def _snapshot(watcher: gradwatch.Watcher) -> Any:
    return copy.deepcopy(watcher.state_dict())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return bool(a == b)


@pytest.mark.parametrize(("state", "fragment"), [
    (None, "state=None"),
    ([1, 2], r"state=\[1, 2\]"),
    ({"version": 1}, r"'layers'"),
    ({"version": 2}, "version"),
])
def test_a_state_that_is_not_a_checkpoint_is_refused(state: Any, fragment: str) -> None:
    watcher = _trained(_model())
    before = _snapshot(watcher)
    with pytest.raises(ConfigurationError, match=fragment):
        watcher.load_state_dict(state)
    assert _same(watcher.state_dict(), before)
    watcher.close()


def _mutated(state: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(state)
    inner = out
    for key in path[:-1]:
        inner = inner[key]
    if value is _DELETE:
        del inner[path[-1]]
    else:
        inner[path[-1]] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "fragment"), [
    (("rules", "vanish_count"), [0, 0, 0], r"rules.*vanish_count.*3.*2 layers"),
    (("rules", "vanish_since"), [-1], r"rules.*vanish_since.*1.*2 layers"),
    (("rules", "weights", "first_param_norm"), [1.0], r"first_param_norm.*1.*2 layers"),
    (("rules", "baseline"), "high", r"rules"),
    (("rules", "observed"), _DELETE, r"rules.*observed"),
    (("rules",), None, r"rules"),
    (("step",), -3, r"step"),
    (("step",), "7", r"step"),
    (("layers",), 5, r"layers"),
    (("history",), {"summaries": 3}, r"history"),
    (("amp",), {"streak": "x"}, r"amp"),
    (("clip_tally",), {"steps": "many"}, r"clip_tally"),
])
def test_a_damaged_state_is_refused_and_nothing_changes(path: tuple[str, ...], value: Any, fragment: str) -> None:
    model = _model()
    source = _trained(model, steps=6, clip=ZScoreClip(warmup_steps=2))
    state = source.state_dict()
    target = _trained(model, steps=2, clip=ZScoreClip(warmup_steps=2))
    before = _snapshot(target)
    with pytest.raises(ConfigurationError, match=fragment):
        target.load_state_dict(_mutated(state, path, value))
    assert _same(target.state_dict(), before)  # history, rules, clipper, step: all as they were
    target.load_state_dict(state)  # the undamaged one loads
    assert target.steps_taken == 6
    source.close()
    target.close()


def test_a_clippers_state_into_a_watcher_without_a_clipper_is_refused() -> None:
    model = _model()
    source = _trained(model, clip=ZScoreClip(warmup_steps=2))
    target = _trained(model, steps=1)
    before = _snapshot(target)
    with pytest.raises(ConfigurationError, match=r"clipper.*ZScoreClip|clipper.*'count'.*no clipper"):
        target.load_state_dict(source.state_dict())
    assert _same(target.state_dict(), before)
    source.close()
    target.close()


def test_a_stateful_clipper_refuses_a_checkpoint_without_its_state_and_nothing_changes() -> None:
    model = _model()
    source = _trained(model, steps=5)  # no clipper
    target = _trained(model, steps=2, clip=ZScoreClip(warmup_steps=2))
    before = _snapshot(target)
    with pytest.raises(ConfigurationError, match="ZScoreClip"):
        target.load_state_dict(source.state_dict())
    assert _same(target.state_dict(), before)
    source.close()
    target.close()


def test_a_stateless_clipper_takes_a_checkpoint_saved_without_a_clipper() -> None:
    model = _model()
    source = _trained(model, steps=5)
    target = _trained(model, steps=1, clip=NormClip(1.0))
    target.load_state_dict(source.state_dict())
    assert target.steps_taken == 5
    source.close()
    target.close()


def test_the_callback_refuses_a_bad_state_when_it_loads_it() -> None:
    lightning = pytest.importorskip("gradwatch.lightning")
    cb = lightning.GradWatchCallback()
    with pytest.raises(ConfigurationError, match="state"):
        cb.load_state_dict([1, 2])  # type: ignore[arg-type]
