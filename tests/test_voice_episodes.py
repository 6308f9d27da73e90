"""Symptom episodes (issue 17): built from each step's symptoms, the same records for every output.

The tracker on hand-made symptoms: one episode per stretch of one kind (a NaN in every layer is one), its onset (the
symptoms' ``since``), detection, last and end steps, the layers that join later; sampled kinds that were not evaluated
neither hold nor end; a logged step concludes an end; the per-kind cap. The watcher's history reads the fan-out's
episodes; a checkpoint keeps them. No regular expression reads alert text anywhere in ``src``.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import Symptom
from gradwatch._episodes import MAX_CLOSED_PER_KIND, Episode, EpisodeTracker, fmt_number, group_layers
from gradwatch._history import SymptomHistory

SRC = Path(__file__).resolve().parents[1] / "src" / "gradwatch"


def nan(layers, step, since=None):
    return [Symptom("nonfinite", x, step, math.nan, math.inf, "error", "NaN.", since=step if since is None else since)
            for x in layers]


def vanishing(layers, step, since):
    return [Symptom("vanishing", x, step, 1e-12, 1e-8, "warning", "Vanishing.", since=since) for x in layers]


@pytest.mark.parametrize(("names", "expected"), [
    ([f"encoder.layers.{i}.{p}" for i in range(8) for p in ("self_attn", "linear1", "linear2")],
     "encoder.layers.0–7 (24 layers)"),
    ([f"encoder.layers.{i}.linear1" for i in range(8)], "encoder.layers.0–7.linear1 (8 layers)"),
    (["input", *(f"hidden.{i}" for i in range(7))], "input, hidden.0–6 (8 layers)"),
    (["conv1", "bn1", *(f"layer{b}.{i}.conv{j}" for b in range(1, 5) for i in range(2) for j in (1, 2)), "fc"],
     "conv1 … fc (19 layers)"),
    ([str(i) for i in range(0, 120, 3)], "0–117 (40 layers)"),
    (["blocks.3.conv"], "blocks.3.conv"),
    ([None], "model-wide"),
    ([None, "rnn", "head"], "rnn, head (2 layers)"),
])
def test_layers_are_grouped_as_a_depth_range(names, expected):
    assert group_layers(names) == expected


def test_numbers_are_formatted_for_people():
    assert [fmt_number(x) for x in (116120869549538852864.0, 2.7e14, 0.000123456, 0.0, float("inf"), None)] == [
        "1.16e+20", "2.7e+14", "0.000123", "0", "Inf", "-"]


def test_a_model_wide_nan_is_one_episode_with_its_onset_and_end():
    t = EpisodeTracker()
    names = [f"conv.{i}" for i in range(41)]
    started = t.observe(nan(names[:3], 10), 10).started  # it reaches the first layers first...
    assert [e.key for e in started] == ["nonfinite@10"]
    joined = t.observe(nan(names, 11), 11).joined  # ...then every layer: the same episode
    assert [len(layers) for _, layers in joined] == [38]
    for step in range(12, 20):
        assert not t.observe(nan(names, step), step).started
    (ended,) = t.observe([], 20).ended
    assert (ended.onset, ended.detected, ended.last, ended.end, ended.steps) == (10, 10, 19, 20, 10)
    assert ended.where == "conv.0–2 (3 layers)"
    assert [x for x, _ in ended.later][-1] == "conv.40"
    assert ended.named_layers == names
    assert len(t.episodes()) == 1


def test_the_onset_is_the_first_step_of_evidence_and_it_stays():
    t = EpisodeTracker()
    (e,) = t.observe(vanishing(["a", "b"], 49, since=0), 49).started
    t.observe(vanishing(["a", "b"], 50, since=0) + vanishing(["c"], 50, since=-5), 50)  # c joins, since earlier
    assert (e.onset, e.detected, e.layers, e.later) == (0, 49, ["a", "b"], [("c", 50)])  # the onset stays


def test_an_end_waits_for_a_conclusive_step_and_unobserved_kinds_neither_hold_nor_end():
    t = EpisodeTracker()
    dead = [Symptom("dead", "relu", 2, 0.9, 0.5, "warning", "Dead.", since=0)]
    t.observe(dead, 2)
    assert not t.observe([], 3, unobserved={"dead"}).ended  # not sampled at step 3
    t.observe(dead, 4)
    assert not t.observe([], 5, conclusive=False).ended  # absent, but not a logged step
    assert not t.observe([], 6, conclusive=False).ended
    (e,) = t.observe([], 7).ended
    assert (e.detected, e.last, e.end, e.steps) == (2, 4, 5, 2)  # it ended where it first held nowhere


def test_closing_ends_what_held_nowhere_and_reports_what_still_holds():
    t = EpisodeTracker()
    t.observe(nan(["a"], 1) + vanishing(["b"], 1, since=0), 1)
    t.observe(nan(["a"], 2), 2, conclusive=False)
    events = t.closing()
    assert [(e.what, e.step, e.episode.kind) for e in events] == [("end", 2, "vanishing"), ("open", 2, "nonfinite")]


def test_closed_episodes_are_capped_per_kind():
    t = EpisodeTracker()
    for k in range(MAX_CLOSED_PER_KIND + 5):
        t.observe([Symptom("spike", None, 2 * k, 9.0, 3.0, "warning", "Spike.", since=2 * k)], 2 * k)
        t.observe([], 2 * k + 1)
    episodes = t.episodes("spike")
    assert len(episodes) == MAX_CLOSED_PER_KIND
    assert episodes[-1].repeats == 6
    assert sum(e.steps for e in episodes) == MAX_CLOSED_PER_KIND + 5


def test_records_round_trip_and_a_symptom_reader_sees_the_onset():
    t = EpisodeTracker()
    (e,) = t.observe(vanishing(["a"], 9, since=4), 9).started
    record = e.to_record("start", 9)
    assert Episode.from_record(record).to_record("start", 9) == record
    assert Symptom.from_record(record).since == 4  # what an older ``gradwatch report`` reads of it
    state = t.state_dict()
    restored = EpisodeTracker()
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def _nan_run(steps=6, nan_at=2, every_n_steps=1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watcher = gradwatch.watch(model, every_n_steps=every_n_steps)
    for step in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).mean().backward()
        if step == nan_at:
            model[2].weight.grad[0, 0] = float("nan")
        watcher.step()
        if step != nan_at:
            opt.step()
    return watcher


def test_the_history_reads_the_fan_outs_episodes():
    """Activations sampled every 2nd step, logged every 3rd: dead units hold on the sampled steps only. The fan-out
    knows which steps were sampled and logged, and the history reads its episodes: one, not one per sample."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias.fill_(-10.0)  # every unit of the ReLU outputs zero: dead
    sink = gradwatch.MemorySink()
    thresholds = gradwatch.Thresholds(activation_patience=2)
    with gradwatch.watch(model, activations=True, activation_every_n_steps=2, every_n_steps=3, sinks=[sink],
                         thresholds=thresholds) as watcher:
        for _ in range(13):
            model.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            watcher.step()
    (dead,) = watcher.history.episodes("dead")
    assert (dead.where, dead.onset, dead.detected, dead.last, dead.end) == ("1", 0, 2, 12, None)
    assert [(e.what, e.step) for e in sink.episodes if e.episode.kind == "dead"] == [("start", 2), ("open", 12)]


def test_a_checkpoint_keeps_the_episodes():
    watcher = _nan_run()
    (e,) = watcher.history.episodes()
    assert (e.kind, e.onset, e.end) == ("nonfinite", 2, 3)
    state = watcher.state_dict()
    resumed = _nan_run(steps=1, nan_at=-1)
    resumed.load_state_dict(state)
    assert [x.key for x in resumed.history.episodes()] == ["nonfinite@2"]
    assert resumed.summary() == watcher.summary()
    watcher.close()
    resumed.close()


def test_a_history_on_its_own_builds_the_same_episodes():
    h = SymptomHistory()
    for step in range(3, 8):
        h.extend(nan(["a", "b"], step, since=3))
    h.extend([])
    (e,) = h.episodes()
    assert (e.onset, e.last, e.end, e.where) == (3, 7, 8, "a, b (2 layers)")
    assert "nonfinite  a, b (2 layers)" in h.format()


# The modules that render or read alert text: none of them may apply a regular expression to it.
ALERT_TEXT_MODULES = ("_episodes", "_console", "_sinks", "_report", "_history", "_fanout", "_demo", "cli", "_symptoms",
                      "_rules", "_spikes", "_vanishing", "_divergence", "_weights", "_step", "_evaluate", "_actions")
#: Where ``re`` is used, and on what: never on alert text.
RE_USERS = {
    "_advice": "module class names and the source of forward(), to describe the model",
    "_dashboard": "the rows of the gradwatch/layers table, and the custom-scalars chart patterns",
    "_mlflow_sink": "characters MLflow refuses in a metric key",
    "_tbplugin._data": "natural sort of layer names (digit runs compared as numbers)",
}


def _imports_re(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name == "re" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "re":
            return True
    return False


def test_no_regular_expression_reads_alert_text_in_src():
    users = {str(p.relative_to(SRC).with_suffix("")).replace("/", ".") for p in SRC.rglob("*.py") if _imports_re(p)}
    assert users <= set(RE_USERS), f"new users of re: {sorted(users - set(RE_USERS))}; none may read alert text"
    assert not users & set(ALERT_TEXT_MODULES)
    for name in ALERT_TEXT_MODULES:
        assert (SRC / f"{name}.py").is_file(), name  # the list names real modules
