"""Hooks lifecycle: nothing left on the model after close, the model held weakly, quiet outside training, compile."""

from __future__ import annotations

import copy
import gc
import pickle
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
              "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
              "_load_state_dict_post_hooks")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True)),
                         nn.LSTM(8, 8, batch_first=True))


def train_step(model: nn.Module, w: gradwatch.Watcher) -> gradwatch.StepReport:
    out, _ = model(torch.randn(2, 3, 4))
    out.pow(2).mean().backward()
    report = w.step()
    model.zero_grad()
    return report


def hooks_left(model: nn.Module) -> dict[str, int]:
    return {f"{name}.{d}": len(getattr(m, d)) for name, m in model.named_modules() for d in HOOK_DICTS
            if len(getattr(m, d, {}))}


@pytest.mark.parametrize("nan_origin", ["sampled", "every_step"])
def test_close_leaves_no_hook_and_the_model_pickles_copies_and_dies(nan_origin: str) -> None:
    model = make_model()
    w = gradwatch.watch(model, activations=True, nan_origin=nan_origin)
    assert hooks_left(model)  # the test can see hooks when there are some
    for _ in range(2):
        train_step(model, w)
    w.close()
    assert hooks_left(model) == {}
    pickle.loads(pickle.dumps(model))
    copy.deepcopy(model)
    ref = weakref.ref(model)
    del model
    assert ref() is None  # no reference cycle: gone without gc.collect()


def test_model_dropped_while_watched_is_collected() -> None:
    model = make_model()
    w = gradwatch.watch(model, activations=True, nan_origin="every_step")
    train_step(model, w)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert w.model is None
    w.close()


def test_close_between_forward_and_backward_and_on_exception() -> None:
    model = make_model()
    # one block for the whole session: the exception is raised inside it, between forward and backward
    with pytest.raises(RuntimeError, match="boom"), gradwatch.watch(model, activations=True) as w:  # noqa: PT012
        out, _ = model(torch.randn(2, 3, 4))
        raise RuntimeError("boom")
    assert hooks_left(model) == {}
    out.sum().backward()  # the tensor hooks left on this graph are removed or inert
    assert w._probe is not None
    assert len(w._probe._buffer) == 0  # nothing recorded after close


def test_quiet_in_eval_no_grad_and_inference_mode() -> None:
    model = make_model()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, activations=True, sinks=[sink]) as w:
        model.eval()
        train_step(model, w)  # step 0: eval mode
        model.train()
        with torch.no_grad():
            model(torch.randn(2, 3, 4))
        w.step()  # step 1: no_grad forward only
        with torch.inference_mode():
            model(torch.randn(2, 3, 4))
        w.step()  # step 2
        train_step(model, w)  # step 3: recorded
    assert [s for s, _ in sink.series("gradwatch/act_mean/1")] == [3]


def test_state_dict_round_trip_keeps_the_rule_state() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every unit dead
    th = gradwatch.Thresholds(activation_patience=3)
    with gradwatch.watch(model, activations=True, thresholds=th) as w:
        for _ in range(2):
            model(torch.randn(8, 4)).sum().backward()
            w.step()
        state = w.state_dict()
    assert state["activations"]["count"] == [["dead", "1", 2]]
    with gradwatch.watch(model, activations=True, thresholds=th) as w2:
        w2.load_state_dict(state)
        model(torch.randn(8, 4)).sum().backward()
        kinds = [s.kind for s in w2.step().symptoms]
    assert kinds.count("dead") == 1  # the third step in a row, counting the two before the checkpoint


def test_compiled_model_keeps_gradient_stats_and_warns_once_about_hooks() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    compiled = torch.compile(model, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradwatch.watch(compiled, activations=True) as w:
            for _ in range(2):
                compiled(torch.randn(8, 4)).sum().backward()
                report = w.step()
                model.zero_grad()
    hook_warnings = [c for c in caught if "switched off for a torch.compile'd model" in str(c.message)]
    assert len(hook_warnings) == 1
    assert sorted(report.layers) == ["0", "2"]
    assert report.layers["0"].grad_norm > 0
    assert hooks_left(model) == {}


def test_configuration_errors_name_the_value() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(gradwatch.ConfigurationError, match=r"nan_origin='always'.*'off', 'sampled', 'every_step'"):
        gradwatch.watch(model, nan_origin="always")  # type: ignore[arg-type]
    with pytest.raises(gradwatch.ConfigurationError, match="activation_every_n_steps=0"):
        gradwatch.watch(model, activations=True, activation_every_n_steps=0)
    with pytest.raises(gradwatch.ConfigurationError, match="activations=3"):
        gradwatch.watch(model, activations=3)  # type: ignore[arg-type]
    with pytest.raises(gradwatch.ConfigurationError, match="saturated_frac"):
        gradwatch.Thresholds(saturated_frac=1.5)


def test_off_by_default_no_hooks() -> None:
    model = make_model()
    with gradwatch.watch(model) as w:
        assert hooks_left(model) == {}
        train_step(model, w)
        assert w._probe is None


def test_outputs_of_every_shape_survive_a_training_step() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> dict[str, object]:
            y = self.fc(x)
            return {"y": y, "pair": (y.argmax(-1), None), "empty": torch.empty(0), "n": 3, "c": torch.ones(2) * 1j}

    model = nn.Sequential(Odd())
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, activations=True, nan_origin="every_step", sinks=[sink]) as w:
        F.mse_loss(model(torch.randn(5, 3))["y"], torch.zeros(5, 3)).backward()
        assert w.step().symptoms == []
    assert sink.series("gradwatch/act_mean/0")


@pytest.mark.parametrize("fresh", [True, False])
def test_model_compiled_after_watch_records_nothing_and_warns_once(fresh: bool) -> None:
    if fresh:  # hooks met while tracing; else (a graph cached by an earlier test) hooks never even called
        torch._dynamo.reset()
    else:
        compiled = torch.compile(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)), backend="eager")
        compiled(torch.randn(8, 4))
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    sink = gradwatch.MemorySink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradwatch.watch(model, activations=True, sinks=[sink]) as w:
            compiled = torch.compile(model, backend="eager")
            for _ in range(3):
                compiled(torch.randn(8, 4)).sum().backward()
                report = w.step()
                model.zero_grad()
    assert report.layers["0"].grad_norm > 0
    assert not [t for t in sink.scalars if "/act_" in t]
    assert len([c for c in caught if "the model runs under torch.compile" in str(c.message)]) == 1
