"""NaN/Inf injected at a known layer and step, and the four on_nonfinite actions."""

import copy
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
def test_injected_value_gives_one_symptom_for_that_layer_at_that_step(value, word):
    model = _mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradwatch.watch(model) as watcher:
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
    msgs = [str(w.message) for w in caught if issubclass(w.category, gradwatch.GradWatchWarning)]
    assert any("step 3" in m and "2 (" in m for m in msgs)


def test_nan_in_non_logging_step_is_still_detected_and_logged_at_its_step():
    model = _mlp()
    sink = MemorySink()
    with pytest.warns(gradwatch.GradWatchWarning, match="step 7"), \
            gradwatch.watch(model, every_n_steps=5, sinks=[sink]) as watcher:
        _train(model, watcher, 9, bad_step=7, bad_layer=4)
    # step 7's NaN went through optimizer.step() (on_nonfinite="warn"), so step 8 is NaN everywhere
    assert [(s.kind, s.layer, s.step) for s in sink.alerts if s.step == 7] == [("nonfinite", "4", 7)]
    assert {s.layer for s in sink.alerts if s.step == 8} == {"0", "2", "4"}
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


def test_skip_leaves_every_parameter_unchanged_through_the_optimizer_step():
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    snapshots = {}

    class Spy(MemorySink):
        pass

    # one block for the whole session: a loop of 5 steps, one of which warns
    with pytest.warns(gradwatch.GradWatchWarning, match="skipped"), \
            gradwatch.watch(model, on_nonfinite="skip") as watcher:  # noqa: PT031
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
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters()) is False  # later steps had grads again
    for step in (1, 3):
        before, after, skipped = snapshots[step]
        assert not skipped
        assert not all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ignore_reports_and_logs_without_warning():
    model = _mlp()
    sink = MemorySink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradwatch.GradWatchWarning)
        with gradwatch.watch(model, on_nonfinite="ignore", sinks=[sink]) as watcher:
            reports = _train(model, watcher, 3, bad_step=2)
    assert [s.kind for s in reports[2].symptoms] == ["nonfinite"]
    assert [s.step for s in sink.alerts] == [2]
    assert not reports[2].skipped
