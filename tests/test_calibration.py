"""The default thresholds: silent on healthy training, firing on the classic failures.

The models and their synthetic data live in tests/zoo.py; each trains for a few hundred steps in seconds.

Speed (the suite's slowest file):

* the runs are single-threaded: the models are tiny, so intra-op threads only add synchronisation, and on a busy
  2-core machine torch's worker threads oversubscribe the cores (10-40x slower runs were measured);
* each training run happens once per module and is shared: the x1000-jump tests reuse the healthy seed-0 runs of
  the same models, resuming from a checkpoint (model, optimizer and ``watcher.state_dict()``) taken at the jump step,
  which gives the same next steps as an uninterrupted run (tests/test_clipping_adaptive.py checks that).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import gradwatch
import zoo
from gradwatch import MemorySink

pytestmark = pytest.mark.slow

HEALTHY_STEPS = 200
JUMP_AT = 150  # the step whose gradients are scaled x1000 in the jump tests
JUMP_STEPS = 160


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Run:
    watcher: gradwatch.Watcher
    reports: list[gradwatch.StepReport]
    losses: list[float]
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)


def _optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    kind, lr = zoo.DEFAULT_OPT[name]  # as zoo.train builds it
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[kind](model.parameters(), lr=lr)


def _train(model, loss_fn, opt, steps, *, start=0, state=None, scale_at=None, checkpoint_at=None) -> Run:
    """zoo.train's loop under a watcher, for steps ``start`` to ``steps - 1``. ``state``: a ``watcher.state_dict()``
    to resume from; ``scale_at``: that step's gradients are scaled x1000 (the same as scaling its loss);
    ``checkpoint_at``: keep a checkpoint (model, optimizer, watcher) taken before that step."""
    reports, losses, checkpoint = [], [], None
    model.train()
    with gradwatch.watch(model, sinks=[MemorySink()]) as watcher:
        if state is not None:
            watcher.load_state_dict(state)
        for step in range(start, steps):
            if step == checkpoint_at:
                checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(),
                                            "watcher": watcher.state_dict()})
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, step)
            loss.backward()
            if step == scale_at:
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(1000.0)
            reports.append(watcher.step())
            opt.step()
            losses.append(float(loss.detach()))
    return Run(watcher, reports, losses, checkpoint)


def _fresh_run(name: str, steps: int, seed: int = 0, *, checkpoint_at: int | None = None) -> Run:
    model, loss_fn = zoo.make(name, seed)
    return _train(model, loss_fn, _optimizer(name, model), steps, checkpoint_at=checkpoint_at)


def _resumed_run(name: str, seed: int, checkpoint: dict[str, Any], start: int, steps: int, *, scale_at: int) -> Run:
    model, loss_fn = zoo.make(name, seed)
    model.load_state_dict(checkpoint["model"])
    opt = _optimizer(name, model)
    opt.load_state_dict(checkpoint["opt"])
    return _train(model, loss_fn, opt, steps, start=start, state=checkpoint["watcher"], scale_at=scale_at)


@pytest.fixture(scope="module")
def healthy_runs():
    """(name, seed) -> the 200-step run, trained on first use; the jump models' seed-0 runs keep a checkpoint."""
    cache: dict[tuple[str, int], Run] = {}

    def get(name: str, seed: int) -> Run:
        if (name, seed) not in cache:
            checkpoint_at = JUMP_AT if seed == 0 and name in ("cnn_bn", "transformer") else None
            cache[name, seed] = _fresh_run(name, HEALTHY_STEPS, seed, checkpoint_at=checkpoint_at)
        return cache[name, seed]

    return get


@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
@pytest.mark.parametrize("seed", [0, 1])
def test_healthy_models_are_never_flagged(name, seed, healthy_runs):
    run = healthy_runs(name, seed)
    assert len(run.losses) == HEALTHY_STEPS
    assert run.losses[-1] < run.losses[0], f"{name} did not train: the calibration would mean nothing"
    assert run.watcher.history.summaries() == [], run.watcher.summary()


def test_sigmoid_xor_is_flagged_vanishing_at_its_early_layers():
    run = _fresh_run("sigmoid_xor", 300)
    watcher, reports = run.watcher, run.reports
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
    assert "Depth profile" in first.message
    assert "on the input side" in first.message
    assert "sigmoid" in first.message
    assert "residual connections" in first.message


def test_residual_xor_is_not_flagged():
    run = _fresh_run("residual_xor", 1000)
    assert run.watcher.history.summaries("vanishing") == [], run.watcher.summary()


def test_exploding_rnn_is_flagged_exploding():
    run = _fresh_run("exploding_rnn", 60)
    watcher, reports = run.watcher, run.reports
    exploding = watcher.history.summaries("exploding")
    assert exploding, watcher.summary()
    first = min(s.first_step for s in exploding)
    msg = next(s.message for r in reports for s in r.symptoms if s.kind == "exploding")
    assert "LSTM or GRU" in msg
    assert "clipping" in msg
    assert first == 0  # the ceiling needs no warm-up
    # the head's gradient is tiny next to the exploding RNN's, but it is not starved: no vanishing
    assert watcher.history.summaries("vanishing") == [], watcher.summary()


@pytest.mark.parametrize("name", ["cnn_bn", "transformer"])
def test_a_sudden_x1000_jump_is_flagged_exploding_at_that_step(name, healthy_runs):
    # steps 0-149 are the healthy seed-0 run's; steps 150-159 resume from its checkpoint before step 150
    healthy = healthy_runs(name, 0)
    resumed = _resumed_run(name, 0, healthy.checkpoint, JUMP_AT, JUMP_STEPS, scale_at=JUMP_AT)
    reports = healthy.reports[:JUMP_AT] + resumed.reports
    assert [r.step for r in reports] == list(range(JUMP_STEPS))
    flagged = [r.step for r in reports if any(s.kind == "exploding" for s in r.symptoms)]
    assert flagged == [150]
    (symptom,) = [s for s in reports[150].symptoms if s.kind == "exploding"]
    assert (symptom.layer is None and "Sudden jump" in symptom.message) or "ceiling" in symptom.message
