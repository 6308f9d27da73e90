"""The ``spike`` rule: its EMA baseline, an injected 50x spike, silence on the healthy zoo, and on_spike actions."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch import nn

import gradwatch
import zoo
from gradwatch._errors import ConfigurationError
from gradwatch._rules import RuleState
from gradwatch._spikes import Baseline, SpikeState, observe, spike_symptoms


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Training runs here are tiny: one intra-op thread is faster than two fighting over a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_baseline_follows_the_warmup_then_the_ema_of_the_clipped_value():
    xs = [2.0, 4.0, 3.0, 3.5, 40.0]
    b = Baseline()
    zs = []
    for x in xs:
        b, z = observe(b, x, alpha=0.8, warmup=3, z_threshold=2.0)
        zs.append(z)
    # warm-up: mean 3, population variance 2/3; no verdict
    assert all(math.isnan(z) for z in zs[:3])
    mean, var = 3.0, 2.0 / 3.0
    for x, z in zip(xs[3:], zs[3:], strict=True):
        std = math.sqrt(var)
        want_z = (x - mean) / (std + 1e-12)
        assert z == pytest.approx(want_z, rel=1e-12)
        c = min(x, mean + 4.0 * std / want_z) if want_z > 2.0 else x  # ZClip's reciprocal clipping
        mean = 0.8 * mean + 0.2 * c
        var = 0.8 * var + 0.2 * (c - mean) ** 2
    assert (b.mean, b.var) == pytest.approx((mean, var), rel=1e-12)
    assert b.mean < 4.0  # the 40 entered the baseline clipped, not as 40


def test_non_finite_values_do_not_touch_the_baseline():
    b = Baseline(seen=30, mean=1.0, var=0.1)
    for x in (math.nan, math.inf):
        assert observe(b, x, alpha=0.9, warmup=3, z_threshold=6.0)[0] == b


def _train(name: str, steps: int, *, spike_at: int | None = None, loss_spike_at: int | None = None, **watch_kw):
    model, loss_fn = zoo.make(name, 0)
    opt = torch.optim.Adam(model.parameters(), lr=zoo.DEFAULT_OPT[name][1])
    reports = []
    with gradwatch.watch(model, every_n_steps=50, **watch_kw) as w:
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, step)
            loss.backward()
            if step == spike_at:
                for p in model.parameters():
                    p.grad.mul_(50.0)
            logged_loss = loss.detach() * 50 if step == loss_spike_at else loss.detach()
            before = [p.detach().clone() for p in model.parameters()]
            report = w.step(loss=logged_loss)
            opt.step()
            changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
            reports.append((report, changed))
    return reports


@pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning")
def test_injected_50x_gradient_spike_fires_at_that_step_and_only_then():
    reports = _train("residual_mlp", 70, spike_at=60)
    firing = [r.step for r, _ in reports if any(s.kind == "spike" for s in r.symptoms)]
    assert firing == [60]
    spike = next(s for s in reports[60][0].symptoms if s.kind == "spike")
    assert spike.layer is None
    assert spike.value == pytest.approx(reports[60][0].global_norm)
    assert spike.value > spike.threshold
    assert "Gradient-norm spike at step 60" in spike.message


@pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning")
def test_injected_50x_loss_spike_fires_at_that_step():
    reports = _train("residual_mlp", 45, loss_spike_at=40)
    firing = [(r.step, s.message.split(":")[0]) for r, _ in reports for s in r.symptoms if s.kind == "spike"]
    assert firing == [(40, "Loss spike at step 40")]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.HEALTHY))
def test_spike_rule_stays_silent_on_healthy_training(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradwatch.GradWatchWarning)  # a spike would also warn: fail loudly
        reports = _train(name, 300)
    spikes = [s for r, _ in reports for s in r.symptoms if s.kind == "spike"]
    assert spikes == []


def test_on_spike_skip_drops_the_step_and_training_goes_on(caplog):
    with caplog.at_level(logging.INFO, logger="gradwatch"):
        reports = _train("residual_mlp", 45, spike_at=40, on_spike="skip")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("spike (model-wide) since step 40: Gradient-norm spike at step 40")
    assert line.endswith("The step was skipped (on_spike='skip').")
    assert [(r.step, r.skip_reason) for r, _ in reports if r.skipped] == [(40, "spike")]
    assert [changed for _, changed in reports] == [step != 40 for step in range(45)]


def test_on_spike_ignore_reports_without_a_line_and_warn_says_it(caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="gradwatch"):
        warnings.simplefilter("error", gradwatch.GradWatchWarning)
        reports = _train("residual_mlp", 32, spike_at=30, on_spike="ignore")
    assert any(s.kind == "spike" for s in reports[30][0].symptoms)
    assert not reports[30][0].skipped
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger="gradwatch"):
        _train("residual_mlp", 32, spike_at=30)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "Gradient-norm spike at step 30" in caplog.records[0].getMessage()


def test_spike_count_and_alert_reach_the_sinks():
    sink = gradwatch.MemorySink()
    _train("residual_mlp", 32, spike_at=30, sinks=[sink])
    assert dict(sink.series("gradwatch/symptoms/spike"))[30] == 1.0
    assert dict(sink.series("gradwatch/symptoms/spike"))[0] == 0.0
    assert [a.step for a in sink.alerts if a.kind == "spike"] == [30]


def test_rule_state_round_trips_and_old_checkpoints_still_load():
    th = gradwatch.Thresholds(spike_warmup=2)
    state = RuleState(3)
    for step, g in enumerate([1.0, 2.0, 1.5]):
        spike_symptoms(step, g, 0.5 * g, th, state.spike)
    saved = state.state_dict()
    fresh = RuleState(3)
    fresh.load_state_dict(saved)
    assert fresh.spike == state.spike
    assert fresh.spike.grad.seen == 3
    legacy = dict(saved)
    del legacy["spike"]
    RuleState(3).load_state_dict(legacy)  # a checkpoint from before the spike rule


def test_spike_z_inf_disables_the_rule():
    th = gradwatch.Thresholds(spike_warmup=2, spike_z=math.inf)
    state = SpikeState()
    assert [spike_symptoms(s, g, g, th, state) for s, g in enumerate([1.0, 1.1, 1e6])] == [[], [], []]


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"spike_factor": 0.5}, "spike_factor=0.5"),
    ({"spike_alpha": 1.0}, "spike_alpha=1.0"),
    ({"spike_warmup": 0}, "spike_warmup=0"),
    ({"spike_z": -1.0}, "spike_z=-1.0"),
])
def test_invalid_spike_thresholds_are_refused(kwargs, bad):
    with pytest.raises(ConfigurationError, match=bad):
        gradwatch.Thresholds(**kwargs)


def test_invalid_on_spike_is_refused_with_the_choices():
    with pytest.raises(ConfigurationError, match=r"on_spike='stop'.*'warn', 'skip', 'ignore'"):
        gradwatch.watch(nn.Linear(2, 1), on_spike="stop")


def test_skip_reason_tells_a_non_finite_skip_from_a_spike_skip():
    model = nn.Linear(2, 1)
    model.weight.grad, model.bias.grad = torch.tensor([[float("nan"), 1.0]]), torch.tensor([1.0])
    with gradwatch.watch(model, on_nonfinite="skip", on_spike="skip") as w:
        report = w.step()
    assert report.skipped
    assert report.skip_reason == "nonfinite"
    model.weight.grad, model.bias.grad = torch.tensor([[1.0, 1.0]]), torch.tensor([1.0])
    with gradwatch.watch(model, on_spike="skip") as w:
        report = w.step()
    assert not report.skipped
    assert report.skip_reason is None
