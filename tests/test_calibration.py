"""The default thresholds: silent on healthy training, firing on the classic failures.

The models and their synthetic data live in tests/zoo.py; each trains for a few hundred steps in seconds.
"""

import pytest
import zoo

import gradwatch
from gradwatch import MemorySink

pytestmark = pytest.mark.slow


def _watch_training(name, steps, *, seed=0, scale_at=None, **watch_kwargs):
    model, loss_fn = zoo.make(name, seed)
    opt, lr = zoo.DEFAULT_OPT[name]
    sink = MemorySink()
    reports = []
    with gradwatch.watch(model, sinks=[sink], **watch_kwargs) as watcher:
        def on_grads(step, m):
            if step == scale_at:  # the same as scaling this step's loss
                for p in m.parameters():
                    if p.grad is not None:
                        p.grad.mul_(1000.0)
            reports.append(watcher.step())

        losses = zoo.train(model, loss_fn, steps, lr, opt, on_grads=on_grads)
    return watcher, reports, losses


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
@pytest.mark.parametrize("seed", [0, 1])
def test_healthy_models_are_never_flagged(name, seed):
    watcher, reports, losses = _watch_training(name, 200, seed=seed)
    assert losses[-1] < losses[0], f"{name} did not train: the calibration would mean nothing"
    assert watcher.history.summaries() == [], watcher.summary()


def test_sigmoid_xor_is_flagged_vanishing_at_its_early_layers():
    watcher, reports, losses = _watch_training("sigmoid_xor", 300)
    flagged_first = [s.layer for s in watcher.history.summaries("vanishing")
                     if s.first_step == min(x.first_step for x in watcher.history.summaries("vanishing"))]
    names = watcher.layer_names
    # the first diagnosis names the input-side layers, contiguously from the first one
    assert flagged_first, watcher.summary()
    assert flagged_first == names[:len(flagged_first)]
    assert len(flagged_first) >= 5
    assert names[-1] not in flagged_first
    first = next(s for r in reports for s in r.symptoms if s.kind == "vanishing")
    assert first.step == gradwatch.Thresholds().vanishing_patience - 1
    assert "Depth profile" in first.message and "on the input side" in first.message
    assert "sigmoid" in first.message and "residual connections" in first.message


def test_residual_xor_is_not_flagged():
    watcher, reports, losses = _watch_training("residual_xor", 1000)
    assert watcher.history.summaries("vanishing") == [], watcher.summary()


def test_exploding_rnn_is_flagged_exploding():
    watcher, reports, losses = _watch_training("exploding_rnn", 60)
    exploding = watcher.history.summaries("exploding")
    assert exploding, watcher.summary()
    first = min(s.first_step for s in exploding)
    msg = next(s.message for r in reports for s in r.symptoms if s.kind == "exploding")
    assert "LSTM or GRU" in msg and "clipping" in msg
    assert first == 0  # the ceiling needs no warm-up
    # the head's gradient is tiny next to the exploding RNN's, but it is not starved: no vanishing
    assert watcher.history.summaries("vanishing") == [], watcher.summary()


@pytest.mark.parametrize("name", ["cnn_bn", "transformer"])
def test_a_sudden_x1000_jump_is_flagged_exploding_at_that_step(name):
    watcher, reports, losses = _watch_training(name, 160, scale_at=150)
    flagged = [r.step for r in reports if any(s.kind == "exploding" for s in r.symptoms)]
    assert flagged == [150]
    (symptom,) = [s for s in reports[150].symptoms if s.kind == "exploding"]
    assert symptom.layer is None and "Sudden jump" in symptom.message or "ceiling" in symptom.message
