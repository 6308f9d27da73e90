"""A CPU step that logs nothing is judged from its per-layer sums on the host (no packed vector, no transport), and a
step with nothing to say calls no sink. Its numbers are those of the packed path; its sums of squares come from one
fused float32 norm per tensor, measured again in float64 where float32 would have underflowed or overflowed.

Gradients are set by hand (known norms); late steps (numbered past the default cadence's schedule) log nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch

import gradwatch
from gradwatch._cadence import scheduled
from test_cadence import set_grads, three_layers

LATE = 1_000_001  # a step the default cadence does not log


class CountingSink(gradwatch.MemorySink):
    """A MemorySink that also records at which steps ``write_scalars`` was called at all."""

    def __init__(self) -> None:
        super().__init__()
        self.called: list[int] = []

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.called.append(step)
        super().write_scalars(step, scalars)


def test_a_step_with_nothing_to_say_calls_no_sink():
    model = three_layers()
    sink = CountingSink()
    with gradwatch.watch(model, sinks=[sink]) as w:
        for _ in range(450):
            set_grads(model, 0.1)
            w.step()
        assert str(w.summary()) == "gradwatch: no symptoms."
    expected = [s for s in range(450) if scheduled(s)]  # 0..199, then every 10th
    assert sink.called == expected
    assert sink.called[-3:] == [420, 430, 440]


def test_the_host_path_and_the_packed_path_measure_the_same_numbers():
    """The same gradients through the host path (default options) and through the packed path (a clipper that never
    clips sends every step through it): identical norms and symptoms."""
    reports = {}
    for name, options in (("host", {}), ("packed", {"clip": 1e30})):
        model = three_layers()
        set_grads(model, 0.25)
        model[1].weight.grad[1, 2] = -3.0
        with gradwatch.watch(model, **options) as w:
            reports[name] = w.step(global_step=LATE, loss=torch.tensor(2.5))
            assert not reports[name].logged
            reports[name] = {"global": reports[name].global_norm,
                             "layers": {k: v.grad_norm for k, v in reports[name].layers.items()},
                             "symptoms": reports[name].symptoms}
    assert reports["host"] == reports["packed"]
    assert reports["host"]["layers"]["1"] == pytest.approx(math.sqrt(15 * 0.0625 + 9 + 4 * 0.0625), rel=1e-7)


def test_tiny_gradients_are_measured_in_float64_on_a_step_that_logs_nothing():
    """Entries of 1e-25 square to 1e-50, under float32's range: the fused float32 norm reads 0; the tensor is measured
    again in float64 and the norm is exact."""
    model = three_layers()
    set_grads(model, 1e-25)
    with gradwatch.watch(model) as w:
        report = w.step(global_step=LATE)
        assert not report.logged
        assert report.layers["0"].grad_norm == pytest.approx(1e-25 * math.sqrt(20), rel=1e-9)
        assert report.global_norm == pytest.approx(1e-25 * math.sqrt(20 + 20 + 10), rel=1e-9)
        assert report.layers["0"].nonfinite is None


def test_huge_finite_gradients_overflow_no_sum_on_a_step_that_logs_nothing():
    """Entries of 1e20 (finite in float32) overflow a float32 sum of squares: measured again, scaled; an explosion,
    not a NaN/Inf."""
    model = three_layers()
    set_grads(model, 0.1)
    model[1].weight.grad.fill_(1e20)
    with gradwatch.watch(model) as w:
        report = w.step(global_step=LATE)
        assert report.layers["1"].grad_norm == pytest.approx(1e20 * 4, rel=1e-6)
        assert report.layers["1"].nonfinite is None
        kinds = {s.kind for s in report.symptoms}
    assert "exploding" in kinds
    assert "nonfinite" not in kinds


def test_an_exact_zero_gradient_is_zero_and_its_neighbours_exact():
    model = three_layers()
    set_grads(model, 0.5)
    model[0].weight.grad.zero_()
    with gradwatch.watch(model) as w:
        report = w.step(global_step=LATE)
    assert report.layers["0"].grad_norm == pytest.approx(0.5 * 2)  # the bias alone: four entries of 0.5
    assert report.layers["1"].grad_norm == pytest.approx(0.5 * math.sqrt(20))
