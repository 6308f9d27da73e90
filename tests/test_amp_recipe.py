"""The quickstart's AMP recipe runs as written (issue 19, #8): float16 autocast with a ``GradScaler`` on the CPU (on the
GPU where there is one), ``watch(model, scaler=scaler)``. The scaler's routine overflows at the start of training are
events, with no error and no warning, under ``on_nonfinite="raise"``; a NaN that persists is still reported."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import gradwatch
from gradwatch import MemorySink

ROOT = Path(__file__).resolve().parents[1]


def recipe() -> str:
    """The code block of the quickstart's "Mixed precision (AMP)" section, as written."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    section = text.split("## Mixed precision (AMP)\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def batches(steps: int, *, scale: float = 100.0, nan_from: int | None = None) -> Iterator[tuple[Any, Any]]:
    """Inputs large enough (x100) for the default scale 2**16 to overflow float16 in the first steps."""
    g = torch.Generator().manual_seed(0)
    for i in range(steps):
        x = torch.randn(16, 32, generator=g) * scale
        if nan_from is not None and i >= nan_from:
            x[0, 0] = math.nan  # a NaN in the data: every later step overflows, whatever the scale
        yield x, torch.randint(0, 10, (16,), generator=g)


def run_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: Any) -> dict[str, Any]:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"loader": loader, "__name__": "quickstart_amp"}
    exec(compile(recipe(), "docs/quickstart.md (AMP)", "exec"), namespace)
    return namespace


def _events(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_the_recipe_uses_the_scaler_option() -> None:
    code = recipe()
    assert "gradwatch.watch(model, log_dir=\"runs/amp\", scaler=scaler" in code
    assert "on_nonfinite=\"raise\"" in code
    assert code.index("scaler.unscale_(optimizer)") < code.index("watcher.step(") < code.index("scaler.step(")


def test_routine_overflows_raise_nothing_and_warn_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="gradwatch"):
        warnings.simplefilter("error", gradwatch.GradWatchWarning)  # not one warning
        ns = run_recipe(tmp_path, monkeypatch, batches(30))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("gradwatch")] == []  # nor a log line
    watcher, scaler = ns["watcher"], ns["scaler"]
    (overflows,) = [e for e in watcher.history.summaries() if e.kind == "amp_overflow"]
    assert overflows.count >= 3  # the scaler did overflow, several times in a row
    assert not watcher.history.summaries("nonfinite")
    assert scaler.get_scale() < 2.0**16  # ... and came down
    acc = _events(tmp_path / "runs" / "amp")
    counts = [e.value for e in acc.Scalars("gradwatch/amp/overflows")]
    assert counts[-1] == overflows.count
    scales = [e.value for e in acc.Scalars("gradwatch/amp/scale")]
    assert scales[0] == 2.0**16
    assert scales[-1] == scaler.get_scale()
    assert "gradwatch/alerts" not in acc.Tags()["tensors"]
    assert [e.step for e in acc.Scalars("gradwatch/global/grad_norm")] == list(range(30))
    assert "amp_overflow" in capsys.readouterr().out  # the summary's line


def test_a_persistent_nan_is_still_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(gradwatch.NonFiniteGradientError) as info:
        run_recipe(tmp_path, monkeypatch, batches(60, nan_from=10))
    # Every step from 10 on overflows; the scaler halves its scale each time, from 2**11 (after the routine
    # overflows) down to 1: at a scale of 1 there is nothing left to unscale, and the NaN is reported.
    assert 15 <= info.value.step < 40
    acc = _events(tmp_path / "runs" / "amp")
    scale = {e.step: e.value for e in acc.Scalars("gradwatch/amp/scale")}
    assert scale[info.value.step] <= 1.0
    assert scale[info.value.step - 1] > 1.0  # reported at the first step at the floor, not later
    assert "gradwatch/alerts" in acc.Tags()["tensors"]


def _amp_loop(model: nn.Module, scaler: Any, watcher: gradwatch.Watcher, loader: Any) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for x, y in loader:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        watcher.step(loss=loss)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()


def test_a_healthy_recovery_from_2_to_the_40_is_not_a_persistent_overflow() -> None:
    """The count rule (20 overflows in a row) fired here while the scaler was still halving: a healthy recovery."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    sink = MemorySink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradwatch.GradWatchWarning)
        with gradwatch.watch(model, scaler=scaler, sinks=[sink], on_nonfinite="raise") as watcher:
            _amp_loop(model, scaler, watcher, batches(45))
    assert not [a for a in sink.alerts if a.kind == "nonfinite"]
    assert dict(sink.series("gradwatch/amp/overflows"))[44] >= 25  # 25+ overflows in a row, all of them routine
    assert not sink.alerts
    assert not watcher.history.summaries("nonfinite")


def _overflowing_steps(watcher: gradwatch.Watcher, model: nn.Module, scales: list[float]) -> None:
    for scale in scales:
        for p in model.parameters():
            p.grad = torch.full_like(p, math.inf)
        watcher.step(loss_scale=scale)


def _nonfinite_steps(sink: MemorySink) -> list[int]:
    return [step for step, count in sink.series("gradwatch/symptoms/nonfinite") if count > 0]


def test_overflows_at_a_scale_that_no_longer_falls_are_reported() -> None:
    """A fixed scale (or a scaler at its floor) overflows at the same scale again and again: from the third such
    overflow on, that is not the scaler's business any more."""
    model, sink = nn.Linear(3, 2), MemorySink()
    with warnings.catch_warnings(), gradwatch.watch(model, sinks=[sink]) as watcher:
        warnings.simplefilter("ignore", gradwatch.GradWatchWarning)
        _overflowing_steps(watcher, model, [1024.0] * 6)
    assert _nonfinite_steps(sink) == [2, 3, 4, 5]
    assert "stopped falling" in sink.alerts[0].message
    assert "6 overflows" not in sink.alerts[0].message
    events = [e for e in watcher.history.summaries() if e.kind == "amp_overflow"]
    assert (events[0].count, events[0].first_step) == (2, 0)


def test_a_falling_scale_passed_by_hand_is_judged_alike() -> None:
    model, sink = nn.Linear(3, 2), MemorySink()
    with gradwatch.watch(model, sinks=[sink], on_nonfinite="raise") as watcher:
        _overflowing_steps(watcher, model, [2.0**k for k in range(40, 10, -1)])  # 30 halvings: routine
        with pytest.raises(gradwatch.NonFiniteGradientError):
            _overflowing_steps(watcher, model, [8.0, 8.0, 8.0])  # stopped falling
    assert _nonfinite_steps(sink) == [32]
    assert next(a.step for a in sink.alerts if a.kind == "nonfinite") == 32


def test_an_explicit_patience_still_caps_a_run_of_overflows() -> None:
    model, sink = nn.Linear(3, 2), MemorySink()
    with warnings.catch_warnings(), \
            gradwatch.Watcher(model, gradwatch.WatchConfig(sinks=[sink], amp_overflow_patience=3)) as watcher:
        warnings.simplefilter("ignore", gradwatch.GradWatchWarning)
        _overflowing_steps(watcher, model, [2.0**k for k in range(20, 15, -1)])
    assert _nonfinite_steps(sink) == [2, 3, 4]
    assert "3 consecutive steps" in sink.alerts[0].message
