"""The default cadence (issue 21): which steps write their per-layer scalars, what a step that logs nothing measures,
the windows around symptom episodes, ``Watcher.step(log=...)``, and the update ratios on the cadence.

Gradients are set by hand (known norms) on a tiny model with three layers; event files are read back with
TensorBoard's own reader.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import gradwatch
from gradwatch import ConfigurationError
from gradwatch._cadence import DENSE_STEPS, WINDOW, Cadence, scheduled, scheduled_count
from gradwatch._layers import discover_layers
from gradwatch._rules import HostStats, RuleState, evaluate
from gradwatch._stats import StatsEngine, host_nonfinite_codes
from gradwatch._thresholds import Thresholds


def three_layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))


def set_grads(model: nn.Module, value: float) -> None:
    """Every gradient entry = ``value``: layer norms are ``value * sqrt(numel)``."""
    for p in model.parameters():
        p.grad = torch.full_like(p, value)


def steps_of(sink: gradwatch.MemorySink, tag: str) -> list[int]:
    return sorted({s for s, _ in sink.scalars.get(tag, [])})


def scalars(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def tb_steps(acc: EventAccumulator, tag: str) -> list[int]:
    return sorted({e.step for e in acc.Scalars(tag)}) if tag in acc.Tags()["scalars"] else []


# --------------------------------------------------------------------------------------------- the schedule
def test_the_schedule_is_dense_then_every_10th_then_every_100th_then_every_200th():
    assert all(scheduled(s) for s in range(DENSE_STEPS))
    assert [s for s in range(200, 260) if scheduled(s)] == [200, 210, 220, 230, 240, 250]
    assert [s for s in range(1950, 2250) if scheduled(s)] == [1950, 1960, 1970, 1980, 1990, 2000, 2100, 2200]
    assert [s for s in range(9_800, 10_500) if scheduled(s)] == [9_800, 9_900, 10_000, 10_200, 10_400]
    for n in (1, 150, 200, 201, 1999, 2000, 2001, 10_000, 10_001, 12_345, 100_000):
        assert scheduled_count(n) == sum(map(scheduled, range(n))), n
    assert scheduled_count(100_000) == 910


def test_every_n_steps_none_is_the_default_and_an_int_still_forces_a_fixed_cadence():
    assert gradwatch.WatchConfig().every_n_steps is None
    model = three_layers()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, every_n_steps=7, sinks=[sink]) as w:
        for step in range(30):
            set_grads(model, 0.1 if step != 15 else math.nan)  # no window with a fixed cadence
            w.step()
    assert steps_of(sink, "gradwatch/grad_norm/0") == [0, 7, 14, 21, 28]
    assert steps_of(sink, "gradwatch/symptoms/nonfinite") == [0, 7, 14, 15, 21, 28]
    with pytest.raises(ConfigurationError, match=r"every_n_steps=0 .*Or None"):
        gradwatch.watch(model, every_n_steps=0)


def test_a_long_run_logs_the_schedule_and_nothing_else(tmp_path):
    model = three_layers()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, sinks=[sink]) as w:
        for _ in range(2_300):
            set_grads(model, 0.1)
            w.step()
    expected = [s for s in range(2_300) if scheduled(s)]
    for tag in ("gradwatch/grad_norm/0", "gradwatch/grad_max/1", "gradwatch/param_norm/2",
                "gradwatch/global/grad_norm"):
        assert steps_of(sink, tag) == expected, tag
    assert sink.alerts == []


# --------------------------------------------------------------------------------------------- log=
def test_log_true_writes_a_step_the_cadence_skips_and_log_false_writes_none_but_symptoms():
    model = three_layers()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, every_n_steps=10, sinks=[sink]) as w:
        for step in range(25):
            set_grads(model, 0.1 if step != 20 else math.nan)
            w.step(log={3: True, 10: False, 20: False}.get(step))
    assert steps_of(sink, "gradwatch/grad_norm/0") == [0, 3]
    assert steps_of(sink, "gradwatch/param_norm/0") == [0, 3]
    # step 20 logs nothing but its symptom: the count, and the alert naming the layer and the step
    assert steps_of(sink, "gradwatch/symptoms/nonfinite") == [0, 3, 20]
    assert dict(sink.scalars["gradwatch/symptoms/nonfinite"])[20] == 3.0
    assert [(s.kind, s.layer, s.step) for s in sink.alerts] == [("nonfinite", name, 20) for name in ("0", "1", "2")]


def test_log_must_be_a_bool_or_none():
    model = three_layers()
    set_grads(model, 0.1)
    with gradwatch.watch(model) as w, pytest.raises(ConfigurationError, match="log=1"):
        w.step(log=1)


# --------------------------------------------------------------------------------------------- what a step measures
def test_a_step_that_logs_nothing_measures_the_sums_alone_and_the_same_sums():
    model = three_layers()
    layers = discover_layers(model)
    set_grads(model, 0.5)
    model[1].weight.grad[0, 0] = -3.0
    engine = StatsEngine(layers)
    full, lean = engine.compute(with_max=True), engine.compute(with_max=False)
    assert lean.layer_max is None
    assert torch.equal(full.layer_sumsq, lean.layer_sumsq)
    assert full.layer_max.tolist() == [0.5, 3.0, 0.5]
    assert engine.grad_maxima(lean.batch).tolist() == [0.5, 3.0, 0.5]  # taken later for a step that logs after all


def test_non_finite_codes_come_from_the_sums_alone():
    sumsq = np.array([4.0, np.nan, np.inf, 0.0])
    assert host_nonfinite_codes(sumsq, None).tolist() == [0, 1, 2, 0]
    model = three_layers()
    layers = discover_layers(model)
    set_grads(model, 0.5)
    model[0].weight.grad[1, 1] = math.inf
    model[2].bias.grad[0] = math.nan
    assert StatsEngine(layers).compute(with_max=False).nonfinite.tolist() == [2.0, 0.0, 1.0]


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_an_unlogged_cpu_step_with_non_finite_gradients_measures_its_maxima_and_logs(bad):
    model = three_layers()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, sinks=[sink]) as w:
        for step in range(DENSE_STEPS + 5):
            set_grads(model, 0.1)
            at = DENSE_STEPS + 3  # not a step of the schedule
            if step == at:
                model[1].weight.grad[2, 2] = bad
                report = w.step()
            else:
                w.step()
    assert report.logged
    assert report.layers["1"].nonfinite == ("inf" if bad == math.inf else "nan")  # the maxima tell Inf from NaN
    assert report.layers["0"].grad_max == pytest.approx(0.1)
    assert at in steps_of(sink, "gradwatch/grad_max/1")  # the onset at full resolution
    maxima = dict(sink.scalars["gradwatch/grad_max/1"])
    assert (maxima[at] == math.inf) if bad == math.inf else math.isnan(maxima[at])
    assert maxima[at + 1] == pytest.approx(0.1)  # the window after it


# --------------------------------------------------------------------------------------------- episode windows
@pytest.mark.parametrize("symptom", ["nonfinite", "exploding"])
def test_an_episode_late_in_a_run_is_written_at_its_step_with_its_window_at_full_resolution(tmp_path, symptom):
    """A NaN (or an explosion) at layer '1', step 2,345: far past the dense start, on a step the schedule skips."""
    at = 2_345
    model = three_layers()
    with gradwatch.watch(model, log_dir=tmp_path) as w:
        for step in range(at + 60):
            set_grads(model, 0.1)
            if step == at:
                model[1].weight.grad.fill_(math.nan if symptom == "nonfinite" else 1e6)
            w.step()
    acc = scalars(tmp_path)
    counts = {e.step: e.value for e in acc.Scalars(f"gradwatch/symptoms/{symptom}")}
    assert counts[at] >= 1.0
    assert counts.get(at - 1, 0.0) == 0.0
    alerts = {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors("gradwatch/alerts")}
    assert f"**{symptom}**" in alerts[at], alerts  # the alert, at its step
    if symptom == "nonfinite":
        assert f"NaN in the gradients of layer '1' at step {at}" in alerts[at]
    before, after = range(at - WINDOW, at), range(at, at + WINDOW + 1)
    grad_norm = tb_steps(acc, "gradwatch/grad_norm/1")
    for step in [*before, *after]:  # every step of the window
        assert step in grad_norm, (step, [s for s in grad_norm if at - 20 < s < at + 20])
    values = {e.step: e.value for e in acc.Scalars("gradwatch/grad_norm/1")}
    assert values[at - 3] == pytest.approx(0.1 * math.sqrt(20), rel=1e-6)  # a step before it: what it measured
    if symptom == "exploding":
        assert values[at] == pytest.approx(1e6 * 4, rel=1e-6)  # the weight's 16 entries: norm 4e6
    # after the onset: every statistic, at every step
    for tag in ("gradwatch/grad_max/1", "gradwatch/param_norm/1"):
        steps = tb_steps(acc, tag)
        assert all(s in steps for s in range(at + 1, at + WINDOW + 1)), (tag, [s for s in steps if s > at - 20])
    # and then the schedule again
    assert at + WINDOW + 10 not in grad_norm
    assert 2_400 in grad_norm


def test_a_symptom_that_keeps_coming_back_cannot_fill_the_disk():
    model = three_layers()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, sinks=[sink]) as w:
        for step in range(3_000):
            set_grads(model, 0.1 if step < 2_000 or step % 2 else math.nan)  # an episode start every other step
            w.step()
    late = [s for s in steps_of(sink, "gradwatch/grad_norm/0") if s >= 2_000]
    # the schedule (10 steps) and the window budget (84 steps, plus one per 250 steps): far fewer than 1,000
    assert len(late) <= 10 + 84 + 4 + 1
    assert steps_of(sink, "gradwatch/symptoms/nonfinite")[-1] == 2_998  # every symptom is still written


# --------------------------------------------------------------------------------------------- update ratios
def test_update_ratios_are_measured_for_the_logged_steps_only_and_exact_there():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = gradwatch.MemorySink()
    expected = {}
    with gradwatch.watch(model, optimizer=opt, sinks=[sink]) as w:
        before = None
        for step in range(260):
            x = torch.randn(8, 3, dtype=torch.float64)
            model(x).pow(2).mean().backward()
            report = w.step()
            now = torch.cat([p.detach().reshape(-1) for p in model[0].parameters()])  # the layer: weight and bias
            if before is not None and step == 250:  # the optimizer step before watcher step 250
                expected[step] = (float((now - before).norm() / before.norm()), report.layers["0"].update_ratio)
            before = now
            opt.step()
            opt.zero_grad()
    ratio_steps = steps_of(sink, "gradwatch/update_ratio/0")
    assert ratio_steps == [s for s in range(1, 260) if scheduled(s)]  # step 0: no optimizer step before it
    want, got = expected[250]
    assert got == pytest.approx(want, rel=1e-9)
    assert 205 not in ratio_steps


def test_with_log_given_by_an_adapter_every_optimizer_step_is_measured():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, optimizer=opt, sinks=[sink]) as w:
        for step in range(12):
            model(torch.randn(8, 3, dtype=torch.float64)).pow(2).mean().backward()
            report = w.step(log=step % 5 == 0)
            if step in (6, 7):
                assert report.layers["0"].update_ratio is not None
            opt.step()
            opt.zero_grad()
    assert steps_of(sink, "gradwatch/update_ratio/0") == [5, 10]


def _stats(step: int, ratio: np.ndarray | None) -> HostStats:
    n = len(ratio) if ratio is not None else 3
    return HostStats(step=step, names=[f"blocks.{i}.fc" for i in range(n)], grad_norm=np.full(n, 1.0),
                     grad_max=np.full(n, 1.0), nonfinite=np.zeros(n, dtype=np.int64), has_grad=np.ones(n, bool),
                     numel=np.full(n, 16), global_norm=math.sqrt(n), clipped_norm=math.sqrt(n), update_ratio=ratio)


def test_the_vanishing_rule_counts_only_the_steps_that_measured_its_signal():
    """With an optimizer attached the rule compares update ratios; on a step without them it holds: no count, no
    reset, its symptoms still held."""
    from gradwatch._advice import ModelTraits
    th = Thresholds(vanishing_patience=3)
    state = RuleState(3, ratios=True)
    traits = ModelTraits.of(nn.Linear(1, 1), depth=3)
    starved = np.array([1e-9, 1e-3, 1e-3])  # layer 0 learns a millionth of its deeper peers
    fired = []
    for step in range(8):
        ratio = starved if step % 2 == 0 else None  # measured every other step
        symptoms, _ = evaluate(_stats(step, ratio), th, state, traits)
        fired.append([s.layer for s in symptoms if s.kind == "vanishing"])
    # counted at steps 0, 2, 4: fires at step 4 (the third measured step), not at step 2
    assert fired[:4] == [[], [], [], []]
    assert fired[4] == ["blocks.0.fc"]
    assert state.active.get(("vanishing", "blocks.0.fc")) == 0  # held through step 5, since step 0
    assert fired[6] == ["blocks.0.fc"]


def test_the_cadence_windows_draw_on_a_bounded_budget():
    c = Cadence(None)
    c.opened(303)
    assert [s for s in range(304, 330) if c.logged(s, None)] == [*range(304, 314), 320]
    c.tokens = 0.0
    c.opened(500)
    assert [s for s in range(501, 505) if c.logged(s, None)] == []  # no budget left: the schedule alone
    assert c.logged(510, None)
