"""One episode, one onset, the same layers everywhere (issue 17).

For every symptom episode of a few scenarios (the XOR stack whose layers starve one after the other, a 40-layer CNN
whose weights go NaN after one bad batch, an MLP whose gradients jump x1000 for one step), the five places a user
reads it give the same onset step and the same layers: the console line, ``watcher.summary()``, the TensorBoard alert
record, the ``gradwatch report`` table and ``gradwatch report --json``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import gradwatch
from gradwatch._demo import XorNet, xor_data
from gradwatch._episodes import kind_label
from gradwatch._report import diagnose, format_text, load_run
from gradwatch._sinks import read_records
from gradwatch.cli import main


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _xor(log_dir: Path) -> gradwatch.Watcher:
    """Vanishing gradients: 8 layers starve first (onset before detection: the rule's patience), 4 join later."""
    torch.manual_seed(0)
    model = XorNet()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = xor_data()
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=10) as watcher:
        for _ in range(120):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            watcher.step(loss=loss)
            opt.step()
    return watcher


def cnn40() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1)]
    for _ in range(39):
        layers += [nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 4 * 4, 1))


def _cnn_nan(log_dir: Path, steps: int = 150, nan_at: int = 60) -> gradwatch.Watcher:
    """Non-finite gradients: one input batch holds a NaN; the optimizer steps it into the weights: NaN ever after."""
    model = cnn40()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    with gradwatch.watch(model, log_dir=log_dir) as watcher:
        for step in range(steps):
            x = torch.randn(2, 1, 4, 4, generator=g)
            if step == nan_at:
                x[0, 0, 0, 0] = float("nan")
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            watcher.step(loss=loss)
            opt.step()
    return watcher


def _jump(log_dir: Path) -> gradwatch.Watcher:
    """Exploding gradients and a spike: every gradient x1000 at one step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=2) as watcher:
        for step in range(40):
            loss = model(torch.randn(16, 8)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            if step == 30:
                for p in model.parameters():
                    p.grad.mul_(1000.0)
            watcher.step(loss=loss)
            opt.step()
    return watcher


SCENARIOS = {"xor": _xor, "cnn_nan": _cnn_nan, "jump": _jump}


def _columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _table_rows(text: str) -> dict[str, list[str]]:
    """The rows of an episode table (summary or report) by kind, as columns."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if _columns(line)[:2] == ["kind", "layers"])
    names = _columns(lines[head])
    rows = {}
    for line in lines[head + 1:]:
        cols = _columns(line)
        if len(cols) != len(names):
            break
        rows[cols[0]] = cols
    return rows


def _alert_records(log_dir: Path) -> list[dict[str, Any]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return [r for e in acc.Tensors("gradwatch/alerts") for r in read_records(e.tensor_proto.string_val[0].decode())]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_console_summary_alert_record_report_table_and_json_agree(scenario, tmp_path, caplog, capsys):
    log_dir = tmp_path / scenario
    with caplog.at_level(logging.INFO, logger="gradwatch"):
        watcher = SCENARIOS[scenario](log_dir)
    console = [r.getMessage() for r in caplog.records if r.name == "gradwatch"]
    summary = watcher.summary()
    records = _alert_records(log_dir)
    report = diagnose(load_run(scenario, str(log_dir)))
    table = format_text([report])
    assert main(["report", str(log_dir), "--json"]) == 0
    (from_json,) = json.loads(capsys.readouterr().out)["runs"]

    episodes = [e for e in watcher.history.episodes() if e.kind != "amp_overflow"]
    assert episodes, watcher.summary()
    summary_rows, table_rows = _table_rows(summary), _table_rows(table)
    for e in episodes:
        said = f"{kind_label(e.kind)} {e.place} since step {e.onset}"
        meanwhile = f"{kind_label(e.kind)}{'' if e.place == '(model-wide)' else ' ' + e.place} since step {e.onset}"
        # 1. the console: the episode's line, or (taken in by an instability said just before) that one's end line
        assert any(line.startswith(said) for line in console) or any(
            "Meanwhile: " in line and meanwhile in line for line in console), (said, console)
        # 2. summary(): its row, the layers grouped, the onset in the "since" column
        row = summary_rows[e.kind]
        assert row[1].startswith(e.where), (row, e)
        assert row[3] == str(e.onset), (row, e)
        # 3. the TensorBoard alert record of its start
        start = next(r for r in records if r["episode"] == e.key and r["state"] == "start")
        assert (start["onset"], start["where"], start["layers"]) == (e.onset, e.where, e.layers)
        # 4. the report's table: the same row
        assert table_rows[e.kind][1:4] == row[1:4], (table_rows[e.kind], row)
        # 5. report --json
        (j,) = [j for j in from_json["episodes"] if (j["kind"], j["detected"]) == (e.kind, e.detected)]
        assert (j["onset"], j["where"], j["layers"]) == (e.onset, e.where, e.layers)
    assert [j["kind"] for j in from_json["episodes"]] == [e.kind for e in episodes]
    assert report["episodes"] == from_json["episodes"]


def test_the_scenarios_show_what_they_are_meant_to(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gradwatch"):
        xor = _xor(tmp_path / "xor")
        cnn = _cnn_nan(tmp_path / "cnn")
    (vanishing,) = xor.history.episodes()
    assert vanishing.where == "input, hidden.0–6 (8 layers)"
    assert vanishing.onset < vanishing.detected  # the first step of evidence, before the rule's patience ran out
    assert [x for x, _ in vanishing.later] == ["hidden.7", "hidden.8", "hidden.9", "out"]
    (nonfinite,) = cnn.history.episodes("nonfinite")  # a model-wide NaN is one episode, not one per layer
    assert (nonfinite.onset, nonfinite.layers, nonfinite.end) == (60, cnn.layer_names, None)
    assert nonfinite.where == f"0–{cnn.layer_names[-1]} ({len(cnn.layer_names)} layers)"
    assert cnn.history.episodes() == [nonfinite]  # the network was healthy until then
