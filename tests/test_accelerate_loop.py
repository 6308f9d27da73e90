"""The Accelerate loop of examples/accelerate_loop.py and ``gradwatch.accelerate.step``: one watcher step per optimizer
step under gradient accumulation, the window's mean loss, and clipping identical to ``accelerator.clip_grad_norm_``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

accelerate = pytest.importorskip("accelerate")

import gradwatch  # noqa: E402
import gradwatch.accelerate  # noqa: E402
from gradwatch import ConfigurationError, MemorySink  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "accelerate_loop.py"


from accelerate_state import _one_thread_and_fresh_accelerate_state  # noqa: E402, F401  (autouse)


def load_example():
    spec = importlib.util.spec_from_file_location("example_accelerate_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_example_loop_measures_exactly_once_per_optimizer_step(tmp_path, precision):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = load_example().main(["--steps", "6", "--accumulation", "4", "--mixed-precision", precision,
                               "--log-dir", str(tmp_path)])
    assert out["micro_batches"] == 24
    assert out["optimizer_steps"] == 6  # the real optimizer's step() ran 6 times...
    assert out["watcher"].steps_taken == 6  # ...and gradwatch measured 6 times
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("gradwatch/global/grad_norm")] == [0, 1, 2, 3, 4, 5]
    assert [e.step for e in acc.Scalars("gradwatch/loss")] == [0, 1, 2, 3, 4, 5]


def _loop(accelerator, model, optimizer, batches, *, watcher=None, clip=None):
    for x, y in batches:
        with accelerator.accumulate(model):
            loss = F.mse_loss(model(x), y)
            accelerator.backward(loss)
            if watcher is not None:
                gradwatch.accelerate.step(watcher, accelerator, loss)
            elif accelerator.sync_gradients and clip is not None:
                accelerator.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad()


def _setup(accumulation: int):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(5, 4, generator=g) * 3, torch.randn(5, 1, generator=g) * 3) for _ in range(12)]
    return accelerator, model, optimizer, batches


def test_the_loss_is_the_mean_over_the_window_and_steps_follow_sync_gradients():
    accelerator, model, optimizer, batches = _setup(accumulation=3)
    sink = MemorySink()
    watcher = gradwatch.watch(model, optimizer=optimizer, sinks=[sink])
    reports = []
    losses = []
    for x, y in batches:
        with accelerator.accumulate(model):
            loss = F.mse_loss(model(x), y)
            losses.append(loss.item())
            accelerator.backward(loss)
            reports.append(gradwatch.accelerate.step(watcher, accelerator, loss))
            optimizer.step()
            optimizer.zero_grad()
    watcher.close()
    assert [r is not None for r in reports] == [False, False, True] * 4
    assert watcher.steps_taken == 4
    expected = [sum(losses[i:i + 3]) / 3 for i in range(0, 12, 3)]
    assert [v for _, v in sink.series("gradwatch/loss")] == pytest.approx(expected, rel=1e-6)


def test_gradwatch_clipping_trains_exactly_as_accelerators_clip_grad_norm():
    accelerator, model, optimizer, batches = _setup(accumulation=2)
    watcher = gradwatch.watch(model, optimizer=optimizer, clip=0.1)
    _loop(accelerator, model, optimizer, batches, watcher=watcher)
    watcher.close()
    assert watcher.clip_tally is not None
    assert watcher.clip_tally.active == 6
    ours = [p.detach().clone() for p in model.parameters()]

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator, model, optimizer, batches = _setup(accumulation=2)
    _loop(accelerator, model, optimizer, batches, clip=0.1)
    for p, q in zip(ours, model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


def test_a_nan_window_is_skipped_and_the_next_trains(tmp_path):
    accelerator, model, optimizer, batches = _setup(accumulation=2)
    watcher = gradwatch.watch(model, optimizer=optimizer, on_nonfinite="skip")
    first = model[0] if isinstance(model, torch.nn.Sequential) else model.module[0]
    for i, (x, y) in enumerate(batches[:4]):
        with accelerator.accumulate(model):
            loss = F.mse_loss(model(x), y)
            accelerator.backward(loss)
            if i == 1:
                first.weight.grad[0, 0] = float("nan")  # the window of step 0 ends here
                before = [p.detach().clone() for p in model.parameters()]
            report = gradwatch.accelerate.step(watcher, accelerator, loss)
            optimizer.step()
            optimizer.zero_grad()
            if i == 1:
                assert report is not None
                assert report.skip_reason == "nonfinite"
                assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    watcher.close()
    assert watcher.history.layers("nonfinite") == ["0"]  # here, the one layer that held the NaN
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_arguments_are_refused():
    accelerator, model, _optimizer, _ = _setup(accumulation=1)
    with gradwatch.watch(model) as watcher:
        with pytest.raises(ConfigurationError, match=r"not an accelerate\.Accelerator"):
            gradwatch.accelerate.step(watcher, object(), None)
        with pytest.raises(ConfigurationError, match="loss='high'"):
            gradwatch.accelerate.step(watcher, accelerator, "high")  # type: ignore[arg-type]
        assert watcher.steps_taken == 0
