"""The tag scheme, read back from real event files with TensorBoard's own reader."""

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import gradwatch


def _read(path):
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _run(model, watcher, steps, clip_scale=1.0):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    reports = []
    for _ in range(steps):
        opt.zero_grad()
        (model(torch.randn(8, 3)).pow(2).mean() * clip_scale).backward()
        reports.append(watcher.step())
        opt.step()
    return reports


def test_tags_steps_and_values(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with gradwatch.watch(model, log_dir=tmp_path, every_n_steps=2, clip=0.01) as watcher:
        reports = _run(model, watcher, 5)
    acc = _read(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    expected = {f"gradwatch/{kind}/{layer}" for kind in ("grad_norm", "grad_max", "param_norm") for layer in ("0", "2")}
    expected |= {"gradwatch/global/grad_norm", "gradwatch/global/grad_norm_clipped", "gradwatch/clip/coef",
                 "gradwatch/clip/threshold"}
    expected |= {f"gradwatch/symptoms/{k}" for k in ("nonfinite", "vanishing", "exploding")}
    assert expected <= scalars
    events = acc.Scalars("gradwatch/grad_norm/0")
    assert [e.step for e in events] == [0, 2, 4]
    for e in events:
        assert e.value == pytest.approx(reports[e.step].layers["0"].grad_norm, rel=1e-6)
    clipped = acc.Scalars("gradwatch/global/grad_norm_clipped")
    assert all(e.value == pytest.approx(0.01, rel=1e-3) for e in clipped)
    assert [e.value for e in acc.Scalars("gradwatch/symptoms/vanishing")] == [0.0, 0.0, 0.0]


def test_a_user_writer_is_flushed_but_not_closed(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path))
    model = nn.Linear(3, 1)
    with gradwatch.watch(model, writer=writer) as watcher:
        _run(model, watcher, 2)
    writer.add_scalar("user/after_close", 1.0, 0)  # the writer still works
    writer.close()
    tags = _read(tmp_path).Tags()["scalars"]
    assert "user/after_close" in tags
    assert "gradwatch/global/grad_norm" in tags


def test_alert_text_is_written_under_the_alerts_tag(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    with gradwatch.watch(model, log_dir=tmp_path) as watcher:
        model(torch.randn(2, 3)).sum().backward()
        model[1].bias.grad[0] = float("inf")
        watcher.step()
    acc = _read(tmp_path)
    (event,) = acc.Tensors("gradwatch/alerts")
    text = event.tensor_proto.string_val[0].decode()
    assert event.step == 0
    assert "**nonfinite**" in text
    assert "Inf in the gradients of layer '1'" in text


def test_a_failing_sink_is_dropped_with_a_warning_and_training_goes_on():
    class Broken(gradwatch.MemorySink):
        def write_scalars(self, step, scalars):
            raise OSError("disk full")

    model = nn.Linear(3, 1)
    good = gradwatch.MemorySink()
    with pytest.warns(gradwatch.GradWatchWarning, match="disk full"), \
            gradwatch.watch(model, sinks=[Broken(), good]) as watcher:
        _run(model, watcher, 3)
    assert len(good.series("gradwatch/global/grad_norm")) == 3
    assert len(watcher.sinks) == 1


def test_the_overview_group_summarises_the_step_from_its_own_values(tmp_path):
    """``GradWatch/...``: the model-wide charts, copied or computed on the host from the step's scalars; the log10
    summaries of the gradient RMS use the layer sizes (weights 4x3 + 4 and 1x4 + 1 entries), from the first step on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, log_dir=tmp_path, sinks=[sink], optimizer=opt, every_n_steps=1, clip=0.01) as w:
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(8, 3)).pow(2).mean().backward()
            w.step(loss=1.5)
            opt.step()
    acc = _read(tmp_path)
    tags = set(acc.Tags()["scalars"])
    overview = {t for t in tags if t.startswith("GradWatch/")}
    assert {"GradWatch/global_grad_norm", "GradWatch/global_grad_norm_clipped", "GradWatch/clip_threshold",
            "GradWatch/loss", "GradWatch/symptoms_vanishing", "GradWatch/grad_rms_log10_min",
            "GradWatch/grad_rms_log10_median", "GradWatch/grad_rms_log10_max", "GradWatch/update_ratio_log10_min",
            "GradWatch/update_ratio_log10_max"} <= overview
    assert len(overview) <= 16  # a handful per step
    assert not any(t.startswith("GradWatch/") for t in sink.scalars)  # TensorBoard only: the sinks' data is unchanged

    def series(tag):
        return {e.step: e.value for e in acc.Scalars(tag)}

    assert series("GradWatch/global_grad_norm") == pytest.approx(dict(sink.series("gradwatch/global/grad_norm")))
    assert series("GradWatch/loss") == {s: 1.5 for s in range(4)}
    sizes = {"0": 16, "2": 5}
    for step in range(4):  # step 0 included: written before the layer sizes reached the sink
        logs = sorted(math.log10(dict(sink.series(f"gradwatch/grad_norm/{n}"))[step] / math.sqrt(k))
                      for n, k in sizes.items())
        assert series("GradWatch/grad_rms_log10_min")[step] == pytest.approx(logs[0], rel=1e-5)
        assert series("GradWatch/grad_rms_log10_max")[step] == pytest.approx(logs[-1], rel=1e-5)
        assert series("GradWatch/grad_rms_log10_median")[step] == pytest.approx(sum(logs) / 2, rel=1e-5)
    ratios = [dict(sink.series(f"gradwatch/update_ratio/{n}"))[3] for n in sizes]
    assert series("GradWatch/update_ratio_log10_max")[3] == pytest.approx(math.log10(max(ratios)), rel=1e-5)
