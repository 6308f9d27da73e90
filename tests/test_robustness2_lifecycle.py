"""Nothing lost on a crash, nothing left behind by a dropped watcher (issue 19, #3 and #7).

#3: on the CPU a step is evaluated and written to the sinks within its own ``step()`` call, and a step with an alert
reaches the event file at once; whatever is still pending (on CUDA, the last step) is written when the process exits
or the watcher is garbage-collected. #7: a watcher dropped without ``close()`` removes its hooks and says so with a
``ResourceWarning``, as an unclosed file does.
"""

from __future__ import annotations

import gc
import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings
import weakref
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import gradwatch
from gradwatch import MemorySink

ROOT = Path(__file__).resolve().parents[1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _grads(model: nn.Module, *, nan: bool = False) -> None:
    """Known gradients: 0.5 everywhere (NaN in the first layer's weight when ``nan``)."""
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    if nan:
        model[0].weight.grad[0, 0] = math.nan


def _read(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------------ #3: the step within step()
def test_a_cpu_step_is_written_within_its_own_step_call() -> None:
    model, sink = _model(), MemorySink()
    watcher = gradwatch.watch(model, sinks=[sink])
    _grads(model)
    watcher.step()
    assert [s for s, _ in sink.series("gradwatch/global/grad_norm")] == [0]  # before any later call
    assert watcher._pending == []
    watcher.close()


def test_a_crash_after_a_nan_step_keeps_the_nan_step_on_disk_and_in_the_sinks(tmp_path: Path) -> None:
    model, sink = _model(), MemorySink()
    watcher = gradwatch.watch(model, log_dir=tmp_path, sinks=[sink])
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="the user's own check"):  # noqa: PT012
        warnings.simplefilter("ignore", gradwatch.GradWatchWarning)  # said at step 5 (warning or log line)
        for step in range(10):
            if step == 6:
                raise RuntimeError("the user's own check")
            _grads(model, nan=step == 5)
            watcher.step()
    # no close(): what a crash leaves
    assert (5, 1.0) in sink.series("gradwatch/symptoms/nonfinite")
    assert [(a.kind, a.layer, a.step) for a in sink.alerts] == [("nonfinite", "0", 5)]
    acc = _read(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("gradwatch/symptoms/nonfinite") if e.step == 5] == [(5, 1.0)]
    assert [e.step for e in acc.Tensors("gradwatch/alerts")] == [5]
    assert "gradwatch/alerts" in acc.Tags()["tensors"]
    watcher.close()


_SCRIPT = """
import sys, torch, gradwatch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
watcher = gradwatch.watch(model, log_dir=sys.argv[1])
for step in range(7):
    model.zero_grad()
    model(torch.randn(5, 4)).pow(2).mean().backward()
    watcher.step()
{ending}
"""


@pytest.mark.parametrize(("ending", "returncode"), [
    ("sys.exit(3)", 3),
    ("raise KeyboardInterrupt", -signal.SIGINT if os.name == "posix" else 1),
    ("raise RuntimeError('boom')", 1),
])
def test_a_process_that_ends_without_close_has_every_step_on_disk(tmp_path: Path, ending: str,
                                                                  returncode: int) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_SCRIPT).format(ending=ending))
    log_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, str(script), str(log_dir)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
    assert out.returncode == returncode, out.stderr
    assert [e.step for e in _read(log_dir).Scalars("gradwatch/global/grad_norm")] == list(range(7))  # 7 of 7
    assert "ResourceWarning" not in out.stderr  # exiting is not dropping: no warning then


def test_steps_still_pending_are_written_when_the_watcher_is_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path, simulated on the CPU: steps whose values have not reached the host yet when the watcher is
    dropped are brought in and written."""
    from gradwatch import _transport

    model, sink = _model(), MemorySink()
    watcher = gradwatch.watch(model, sinks=[sink])
    monkeypatch.setattr(_transport.Transport, "process_ready", lambda self: None)  # as if not landed yet
    for _ in range(3):
        _grads(model)
        watcher.step()
    assert [s for s, _ in sink.series("gradwatch/global/grad_norm")] == [0, 1]  # the last one is pending
    with pytest.warns(ResourceWarning, match="without close"):
        del watcher  # freed at once: nothing holds a watcher in a cycle
    assert [s for s, _ in sink.series("gradwatch/global/grad_norm")] == [0, 1, 2]
    assert sink.closed


def test_pending_steps_are_written_at_exit(tmp_path: Path) -> None:
    """The CUDA path at exit, simulated on the CPU: the last step is still pending when the process ends."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import sys, torch, gradwatch
        from gradwatch import _transport
        from torch import nn
        _transport.Transport.process_ready = lambda self: None  # as if the last copy had not landed yet
        model = nn.Linear(4, 1)
        watcher = gradwatch.watch(model, log_dir=sys.argv[1])
        for step in range(5):
            model.zero_grad()
            model(torch.randn(5, 4)).pow(2).mean().backward()
            watcher.step()
        sys.exit(0)
    """))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
    assert out.returncode == 0, out.stderr
    assert [e.step for e in _read(tmp_path / "run").Scalars("gradwatch/global/grad_norm")] == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------ #7: a dropped watcher's hooks
def test_a_watcher_per_epoch_without_close_does_not_pile_up_hooks() -> None:
    model = _model()
    hooks_of_one = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(6):
            watcher = gradwatch.watch(model, activations=True)  # the previous one is dropped here, unclosed
            model(torch.randn(3, 4)).sum().backward()
            watcher.step()
            gc.collect()
            hooks_of_one = hooks_of_one or _hooks(model)
            assert _hooks(model) == hooks_of_one  # one watcher's hooks, not six
    assert hooks_of_one > 0
    with pytest.warns(ResourceWarning, match=r"Watcher .* garbage-collected without close\(\)"):
        del watcher
    assert _hooks(model) == 0


def test_a_dropped_watcher_removes_its_optimizer_hooks_and_releases_the_model() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watcher = gradwatch.watch(model, optimizer=opt, activations=True)
    model(torch.randn(3, 4)).sum().backward()
    watcher.step()
    assert opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
    ref = weakref.ref(watcher)
    with pytest.warns(ResourceWarning):
        del watcher
    assert ref() is None  # collected at once: nothing keeps a watcher alive in a cycle
    assert not opt._optimizer_step_pre_hooks
    assert not opt._optimizer_step_post_hooks
    assert _hooks(model) == 0


def test_a_closed_watcher_gives_no_resource_warning() -> None:
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        watcher = gradwatch.watch(model, activations=True)
        model(torch.randn(3, 4)).sum().backward()
        watcher.step()
        watcher.close()
        del watcher
        gc.collect()
        with gradwatch.watch(model) as w:
            w.step()
        del w
        gc.collect()
