"""The symptom history round-trips through a checkpoint (issue 19, #16): ``summary()`` after a resume lists the
symptoms from before it, as the restored clip tally does."""

from __future__ import annotations

import io
import json

import pytest
import torch

import gradwatch
from gradwatch._history import ClipTally, SymptomHistory
from gradwatch._symptoms import Symptom


def _history() -> SymptomHistory:
    h = SymptomHistory()
    h.extend([Symptom("vanishing", "enc.0", 3, 1e-9, 1e-7, "warning", "Vanishing at 3."),
              Symptom("nonfinite", "fc", 5, float("nan"), 0.0, "error", "NaN in 'fc'."),
              Symptom("vanishing", "enc.0", 9, 1e-9, 1e-7, "warning", "Vanishing at 9."),
              Symptom("spike", None, 7, 50.0, 3.0, "warning", "Spike.")])
    return h


def test_state_dict_round_trips_through_torch_save_with_weights_only_and_json():
    h = _history()
    buffer = io.BytesIO()
    torch.save({"gradwatch_history": h.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["gradwatch_history"]
    for loaded in (state, json.loads(json.dumps(h.state_dict()))):
        restored = SymptomHistory()
        restored.extend([Symptom("dead", "relu", 1, 0.9, 0.5, "warning", "Dead.")])  # replaced by the load
        restored.load_state_dict(loaded)
        assert restored.summaries() == h.summaries()
        assert restored.format() == h.format()


def test_symptoms_after_a_resume_add_to_the_restored_counts():
    restored = SymptomHistory()
    restored.load_state_dict(_history().state_dict())
    restored.extend([Symptom("vanishing", "enc.0", 12, 1e-9, 1e-7, "warning", "Vanishing at 12.")])
    (entry,) = restored.summaries("vanishing")
    assert (entry.count, entry.first_step, entry.last_step) == (3, 3, 12)
    assert (entry.first_message, entry.message) == ("Vanishing at 3.", "Vanishing at 12.")
    assert restored.layers("vanishing") == ["enc.0"]
    assert [e.kind for e in restored.summaries()] == ["vanishing", "nonfinite", "spike"]  # order first seen


def test_an_empty_history_round_trips():
    restored = _history()
    restored.load_state_dict(SymptomHistory().state_dict())
    assert not restored
    assert restored.format() == "gradwatch: no symptoms."


@pytest.mark.parametrize("state", [None, {}, {"version": 1}, {"summaries": 5}, {"summaries": [["spike"]]},
                                   {"summaries": [["spike", None, "1", 7, 7, "m", "m"]]},
                                   {"summaries": [[3, None, 1, 7, 7, "m", "m"]]}])
def test_a_bad_state_is_a_configuration_error_and_changes_nothing(state):
    h = _history()
    with pytest.raises(gradwatch.ConfigurationError, match=r"SymptomHistory\.load_state_dict"):
        h.load_state_dict(state)
    assert h.summaries() == _history().summaries()


@pytest.mark.parametrize("state", [None, {}, {"steps": 3, "active": 1}])
def test_a_bad_clip_tally_state_is_a_configuration_error(state):
    tally = ClipTally()
    with pytest.raises(gradwatch.ConfigurationError, match=r"ClipTally\.load_state_dict"):
        tally.load_state_dict(state)
    assert tally == ClipTally()


def test_a_watcher_history_restored_by_hand_lists_the_symptoms_from_before_the_resume():
    """What Watcher.state_dict / load_state_dict will do with the history (the watcher's owner wires it in)."""
    model = torch.nn.Linear(2, 1)
    with gradwatch.watch(model, clip=1.0, on_nonfinite="ignore") as first:
        model.weight.grad, model.bias.grad = torch.tensor([[float("nan"), 1.0]]), torch.tensor([0.0])
        first.step()
        checkpoint = {"watcher": first.state_dict(), "history": first.history.state_dict()}
    with gradwatch.watch(model, clip=1.0) as resumed:
        resumed.load_state_dict(checkpoint["watcher"])
        resumed.history.load_state_dict(checkpoint["history"])
        model.weight.grad, model.bias.grad = torch.tensor([[0.1, 0.1]]), torch.tensor([0.0])
        resumed.step()
        summary = resumed.summary()
    assert "nonfinite" in summary
    assert "clipping: active on 0 of 2 steps" in summary
