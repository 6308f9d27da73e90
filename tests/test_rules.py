"""The rules as pure functions of host-side statistics with known numbers."""

import math

import numpy as np
import pytest

from gradwatch import Thresholds
from gradwatch._advice import ModelTraits
from gradwatch._rules import HostStats, RuleState, evaluate

NAMES = ["l0", "l1", "l2", "l3"]


def _stats(step, norms, *, numel=(100, 100, 100, 100), nonfinite=(0, 0, 0, 0), has_grad=(True,) * 4, clipped=None):
    norms = np.asarray(norms, dtype=float)
    global_norm = float(np.sqrt((norms ** 2).sum()))
    return HostStats(step=step, names=NAMES, grad_norm=norms, grad_max=norms / 2, nonfinite=np.asarray(nonfinite),
                     has_grad=np.asarray(has_grad), numel=np.asarray(numel), global_norm=global_norm,
                     clipped_norm=global_norm if clipped is None else clipped)  # no clipper: the same norm


def _run(sequence, th):
    state = RuleState(len(NAMES))
    out = []
    for step, kwargs in enumerate(sequence):
        symptoms, onsets = evaluate(_stats(step, **kwargs), th, state, ModelTraits())
        out.append((symptoms, onsets))
    return out


def test_vanishing_needs_patience_and_names_the_starved_layers():
    th = Thresholds(vanishing_patience=3)
    # RMS = norm / 10: l0 1e-6 x the strongest (l3), l1 1e-2 x: only l0 is under the 3e-4 ratio floor
    seq = [{"norms": [1e-5, 0.1, 5.0, 10.0]}] * 5
    out = _run(seq, th)
    assert [len(s) for s, _ in out] == [0, 0, 1, 1, 1]
    symptom = out[2][0][0]
    assert (symptom.kind, symptom.layer, symptom.step, symptom.since) == ("vanishing", "l0", 2, 0)
    assert symptom.value == pytest.approx(1e-6)
    assert symptom.threshold == pytest.approx(3e-4 * 1.0)
    assert [len(o) for _, o in out] == [0, 0, 1, 0, 0]  # one onset, then it just holds


def test_vanishing_counter_resets_when_the_layer_recovers():
    th = Thresholds(vanishing_patience=3)
    low, ok = {"norms": [1e-5, 1, 1, 1]}, {"norms": [1, 1, 1, 1]}
    out = _run([low, low, ok, low, low, low], th)
    assert [len(s) for s, _ in out] == [0, 0, 0, 0, 0, 1]
    assert out[5][0][0].since == 3


def test_absolute_floor_flags_a_uniformly_dead_network():
    th = Thresholds(vanishing_patience=1)
    out = _run([{"norms": [1e-9, 1e-9, 1e-9, 1e-9]}], th)  # RMS 1e-10 < 1e-8, ratio 1
    assert [s.layer for s in out[0][0]] == NAMES


def test_layers_without_gradient_are_never_vanishing():
    th = Thresholds(vanishing_patience=1)
    out = _run([{"norms": [0.0, 0.0, 1.0, 1.0], "has_grad": (False, True, True, True)}], th)
    assert [s.layer for s in out[0][0]] == ["l1"]  # exactly-zero gradient is starved; no gradient is not


def test_the_ratio_floor_is_off_while_the_model_explodes():
    th = Thresholds(vanishing_patience=1)
    out = _run([{"norms": [1.0, 1.0, 1.0, 1e9]}], th)
    kinds = sorted({s.kind for s in out[0][0]})
    assert kinds == ["exploding"]


def test_exploding_ceiling_global_and_per_layer():
    th = Thresholds(exploding_norm=100.0)
    out = _run([{"norms": [1.0, 1.0, 150.0, 50.0]}], th)
    flagged = [(s.layer, s.severity) for s in out[0][0] if s.kind == "exploding"]
    assert flagged == [(None, "error"), ("l2", "error")]
    assert "'l2'" in out[0][0][0].message


def test_overflowed_finite_gradients_count_as_exploding_not_nonfinite():
    th = Thresholds()
    out = _run([{"norms": [1.0, math.inf, 1.0, 1.0]}], th)
    assert [s.kind for s in out[0][0]] == ["exploding", "exploding"]


def test_a_clipper_that_contains_the_blow_up_silences_the_ceiling():
    th = Thresholds(exploding_norm=100.0)
    # raw global norm ~158; the clipper brought it down to 1.0: the optimizer never sees the explosion
    out = _run([{"norms": [1.0, 1.0, 150.0, 50.0], "clipped": 1.0}], th)
    assert [s for s in out[0][0] if s.kind == "exploding"] == []


def test_a_clipper_set_above_the_ceiling_still_fires_on_the_clipped_norm_naming_the_culprits():
    th = Thresholds(exploding_norm=100.0)
    out = _run([{"norms": [1.0, 1.0, 300.0, 400.0], "clipped": 200.0}], th)  # raw 500, clipped to 200
    flagged = [s for s in out[0][0] if s.kind == "exploding"]
    assert [(s.layer, s.value) for s in flagged] == [(None, 200.0), ("l2", 300.0), ("l3", 400.0)]
    assert "200 after clipping (before: 500)" in flagged[0].message
    assert "lower clipping threshold" in flagged[0].message
    assert "before clipping" in flagged[1].message


def test_the_jump_baseline_follows_the_clipped_norm():
    th = Thresholds(jump_warmup=3, jump_factor=10.0)
    calm = {"norms": [0.5] * 4, "clipped": 1.0}  # raw 1.0, clipped to 1.0 (not acting)
    held = {"norms": [60.0] * 4, "clipped": 1.0}  # raw 120, clipped to 1.0: no jump for the optimizer
    free = {"norms": [60.0] * 4}  # no clipper: a 120x jump
    assert not any(s for s, _ in _run([calm] * 5 + [held], th))
    assert [s.kind for s in _run([calm] * 5 + [free], th)[-1][0]] == ["exploding"]


def test_a_step_the_clipper_bounded_is_no_jump_and_leaves_the_baseline_alone():
    th = Thresholds(jump_warmup=3, jump_factor=50.0)
    calm = {"norms": [0.008] * 4}  # global 0.016, far under clip=1.0
    held = {"norms": [1.58e6] * 4, "clipped": 1.0}  # raw 3.16e6, clipped to 1.0: 63x the baseline, but bounded
    out = _run([calm] * 10 + [held] * 3 + [{"norms": [0.5] * 4}], th)  # then 1.0 unclipped: 62x of 0.016
    assert [i for i, (s, _) in enumerate(out) if s] == [13]  # the baseline stayed at 0.016 through the held steps
    assert "after clipping" not in out[13][0][0].message
    assert "Sudden jump" in out[13][0][0].message


def test_no_jump_from_a_baseline_of_exactly_zero():
    th = Thresholds(jump_warmup=3)
    out = _run([{"norms": [0.0] * 4}] * 6 + [{"norms": [1.0] * 4}], th)
    assert not any(symptoms for symptoms, _ in out)  # no ZeroDivisionError either


def test_jump_after_warmup_against_the_running_baseline():
    th = Thresholds(jump_warmup=5, jump_factor=50.0)
    seq = [{"norms": [1.0, 1.0, 1.0, 1.0]}] * 8 + [{"norms": [60.0] * 4}] + [{"norms": [1.0] * 4}] * 3
    out = _run(seq, th)
    flagged = [i for i, (s, _) in enumerate(out) if any(x.kind == "exploding" for x in s)]
    assert flagged == [8]
    s = out[8][0][0]
    assert s.layer is None
    assert s.severity == "warning"
    assert s.threshold == pytest.approx(50 * 2.0)
    assert "Sudden jump" in s.message


def test_no_jump_during_warmup():
    th = Thresholds(jump_warmup=5)
    seq = [{"norms": [1.0] * 4}] * 2 + [{"norms": [1000.0] * 4}]
    assert all(not s for s, _ in _run(seq, th))


def test_a_lasting_new_level_becomes_the_baseline():
    th = Thresholds(jump_warmup=3, jump_factor=10.0)
    seq = [{"norms": [1.0] * 4}] * 5 + [{"norms": [100.0] * 4}] * 12
    flagged = [i for i, (s, _) in enumerate(_run(seq, th)) if s]
    assert flagged == [5, 6, 7, 8]  # re-baselined after jump_warmup + 1 consecutive jumps


def test_nonfinite_one_symptom_per_layer_saying_nan_or_inf():
    out = _run([{"norms": [1.0, math.nan, math.inf, 1.0], "nonfinite": (0, 1, 2, 0)}], Thresholds())
    got = [(s.kind, s.layer, s.message.split(" ")[0]) for s in out[0][0]]
    assert got == [("nonfinite", "l1", "NaN"), ("nonfinite", "l2", "Inf")]
    assert math.isnan(out[0][0][0].value)
    assert out[0][0][1].value == math.inf


def test_rule_state_round_trips():
    th = Thresholds(vanishing_patience=3, jump_warmup=2)
    state = RuleState(4)
    for step in range(4):
        evaluate(_stats(step, [1e-5, 1, 1, 1]), th, state, ModelTraits())
    clone = RuleState(4)
    clone.load_state_dict(state.state_dict())
    assert clone.state_dict() == state.state_dict()
    a, _ = evaluate(_stats(4, [1e-5, 1, 1, 1]), th, state, ModelTraits())
    b, _ = evaluate(_stats(4, [1e-5, 1, 1, 1]), th, clone, ModelTraits())
    assert a == b
    assert a
