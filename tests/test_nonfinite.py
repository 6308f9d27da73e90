"""NaN/Inf injected at a known layer and step, and the four on_nonfinite actions."""

import copy
import logging
import math
import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import gradwatch
from gradwatch import MemorySink


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def _train(model, watcher, steps, *, bad_step, bad_layer=2, value=float("nan"), opt=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    reports = []
    for step in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        if step == bad_step:
            model[bad_layer].weight.grad[0, 0] = value
        r = watcher.step()
        reports.append(r)
        if not r.skipped:
            opt.step()
    return reports


@pytest.mark.parametrize(("value", "word"), [(float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "inf")])
def test_injected_value_gives_one_symptom_for_that_layer_at_that_step(value, word, caplog):
    model = _mlp()
    with caplog.at_level(logging.INFO, logger="gradwatch"), gradwatch.watch(model) as watcher:
        reports = _train(model, watcher, 6, bad_step=3, value=value)
    for r in reports:
        bad = [s for s in r.symptoms if s.kind == "nonfinite"]
        if r.step == 3:
            assert [(s.layer, s.step) for s in bad] == [("2", 3)]
            assert ("NaN" if word == "nan" else "Inf") in bad[0].message
            assert "'2'" in bad[0].message
            assert r.layers["2"].nonfinite == word
            assert r.layers["0"].nonfinite is None
        elif r.step < 3:
            assert bad == []
    # one console line for the episode (the NaN spreads through the weights to every layer after step 3), an error
    (line,) = [r for r in caplog.records if r.name == "gradwatch"]
    assert line.levelno == logging.ERROR
    assert line.getMessage().startswith("non-finite gradients in 2 since step 3: ")


def test_nan_in_non_logging_step_is_still_detected_and_logged_at_its_step(caplog):
    model = _mlp()
    sink = MemorySink()
    with caplog.at_level(logging.INFO, logger="gradwatch"), \
            gradwatch.watch(model, every_n_steps=5, sinks=[sink]) as watcher:
        _train(model, watcher, 9, bad_step=7, bad_layer=4)
    assert any("since step 7" in r.getMessage() for r in caplog.records)
    # step 7's NaN went through optimizer.step() (on_nonfinite="warn"), so step 8 is NaN everywhere: the same episode
    assert [(s.kind, s.layer, s.step) for s in sink.alerts] == [("nonfinite", "4", 7)]
    (start, still) = sink.episodes
    assert (start.what, start.step, still.what, still.step) == ("start", 7, "open", 8)
    assert still.episode.later == [("0", 8), ("2", 8)]
    assert (7, 1.0) in sink.series("gradwatch/symptoms/nonfinite")
    assert [s for s, _ in sink.series("gradwatch/grad_norm/4")] == [0, 5]  # per-layer scalars on logging steps only


def test_raise_flushes_the_event_file_before_raising(tmp_path):
    model = _mlp()
    watcher = gradwatch.watch(model, log_dir=tmp_path, on_nonfinite="raise", every_n_steps=10)
    with pytest.raises(gradwatch.NonFiniteGradientError, match=r"step 4.*2 \(nan\)") as info:
        _train(model, watcher, 6, bad_step=4)
    assert info.value.step == 4
    assert info.value.layers == {"2": "nan"}
    # Read the event file while the watcher is still open: the step must already be on disk.
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "gradwatch/grad_norm/2" in tags
    assert "gradwatch/symptoms/nonfinite" in tags
    assert [e.step for e in acc.Scalars("gradwatch/grad_norm/2")] == [0, 4]
    assert math.isnan(acc.Scalars("gradwatch/grad_norm/2")[-1].value)
    assert acc.Scalars("gradwatch/symptoms/nonfinite")[-1].value == 1.0
    assert "gradwatch/alerts" in acc.Tags()["tensors"]
    watcher.close()


def test_skip_leaves_every_parameter_unchanged_through_the_optimizer_step(caplog):
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    snapshots = {}

    class Spy(MemorySink):
        pass

    # one block for the whole session: a loop of 5 steps, one of which is said to be skipped
    with caplog.at_level(logging.INFO, logger="gradwatch"), gradwatch.watch(model, on_nonfinite="skip") as watcher:
        for step in range(5):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            if step == 2:
                model[2].weight.grad[1, 1] = float("nan")
            before = copy.deepcopy(model.state_dict())
            r = watcher.step()
            opt.step()
            snapshots[step] = (before, copy.deepcopy(model.state_dict()), r.skipped)
    before, after, skipped = snapshots[2]
    assert skipped
    assert [r.getMessage().endswith("The step was skipped (on_nonfinite='skip').") for r in caplog.records] == [True]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters()) is False  # later steps had grads again
    for step in (1, 3):
        before, after, skipped = snapshots[step]
        assert not skipped
        assert not all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ignore_reports_and_logs_without_warning(caplog):
    model = _mlp()
    sink = MemorySink()
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="gradwatch"):
        warnings.simplefilter("error", gradwatch.GradWatchWarning)
        with gradwatch.watch(model, on_nonfinite="ignore", sinks=[sink]) as watcher:
            reports = _train(model, watcher, 3, bad_step=2)
    assert caplog.records == []  # recorded, not said
    assert [s.kind for s in reports[2].symptoms] == ["nonfinite"]
    assert [s.step for s in sink.alerts] == [2]
    assert not reports[2].skipped
