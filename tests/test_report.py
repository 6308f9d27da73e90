"""``gradwatch report`` and ``gradwatch plot`` on real event files: the demo, an injected NaN, a file cut mid-record,
empty and foreign log directories."""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import gradwatch
from gradwatch._report import diagnose, flow_data, format_text, load_run, parse_alerts
from gradwatch._sinks import alerts_markdown
from gradwatch._symptoms import Symptom
from gradwatch.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--steps", "120", "--log-dir", str(root)]) == 0
    return root


def _json(capsys, argv):
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def _nan_run(log_dir, nan_step=3, steps=8):
    """A 3-layer MLP whose layer '2' gets a NaN gradient at ``nan_step``; logging every 2 steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=2, clip=1.0) as w:
        for step in range(steps):
            model.zero_grad()
            model(torch.randn(8, 3)).pow(2).mean().backward()
            if step == nan_step:
                model[2].weight.grad[1, 1] = float("nan")
            w.step()
    return model


def test_demo_report_names_the_vanishing_layers_of_the_plain_network_only(demo_dir, capsys):
    code, data = _json(capsys, ["report", str(demo_dir), "--json"])
    assert code == 0
    runs = {r["name"]: r for r in data["runs"]}
    assert set(runs) == {"plain", "residual"}
    plain, residual = runs["plain"], runs["residual"]
    # the vanishing layers are exactly those of the watcher's vanishing episode, in depth order, the input side first
    episodes = load_run("plain", str(demo_dir / "plain")).episodes.values()
    alerted = {x for e in episodes if e.kind == "vanishing" for x in e.named_layers}
    assert plain["starved_layers"]
    assert set(plain["starved_layers"]) == alerted
    assert plain["starved_layers"][:2] == ["input", "hidden.0"]
    assert plain["symptoms"]["vanishing"]["steps"] > 0
    assert "Likely cause" in plain["advice"]["vanishing"]
    assert residual["starved_layers"] == []
    assert residual["episodes"] == []
    assert all(v["steps"] == 0 for v in residual["symptoms"].values())
    assert plain["logged_steps"] == 12
    assert plain["steps"] == [0, 119]
    # one episode: its layers grouped; its onset (the first step of evidence) before its detection (the patience)
    (e,) = plain["episodes"]
    assert (e["kind"], e["where"]) == ("vanishing", "input, hidden.0–6 (8 layers)")
    assert e["onset"] < e["detected"] <= e["last"] == 119
    assert e["end"] is None
    # the table says the same
    assert main(["report", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    text_plain, text_residual = out.split("run residual")
    assert "vanishing" in text_plain
    assert "hidden.0" in text_plain
    assert "starved layers" in text_plain
    assert "no symptoms" in text_residual
    assert "hidden.0" not in text_residual
    # --run selects one run
    code, one = _json(capsys, ["report", str(demo_dir), "--run", "residual", "--json"])
    assert code == 0
    assert [r["name"] for r in one["runs"]] == ["residual"]


def test_injected_nan_fails_the_ci_exit_status(tmp_path, capsys):
    _nan_run(tmp_path)
    code, data = _json(capsys, ["report", str(tmp_path), "--json", "--fail-on", "nonfinite"])
    assert code == 1
    assert data["failed"] == [".: nonfinite"]
    (run,) = data["runs"]
    (entry,) = [e for e in run["episodes"] if e["kind"] == "nonfinite"]
    assert (entry["layers"], entry["onset"], entry["detected"], entry["last"], entry["end"], entry["severity"]) == (
        ["2"], 3, 3, 3, 4, "error")
    assert run["symptoms"]["nonfinite"] == {"steps": 1, "first_step": 3, "last_step": 3, "max_layers": 1}
    assert run["global_norm"]["nonfinite"] == 0  # step 3 is not a logging step: the logged norms stayed finite
    assert run["clipping"]["of_steps"] == run["logged_steps"]
    assert main(["report", str(tmp_path), "--fail-on", "vanishing,exploding"]) == 0
    assert main(["report", str(tmp_path)]) == 0
    assert main(["report", str(tmp_path), "--fail-on", "any"]) == 1
    capsys.readouterr()


def _record_ends(path):
    ends, offset, data = [], 0, Path(path).read_bytes()
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        offset += 12 + length + 4
        ends.append(offset)
    return ends, data


def test_a_file_cut_mid_record_still_reports_what_was_written(tmp_path, capsys):
    _nan_run(tmp_path, nan_step=3, steps=12)
    (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    ends, data = _record_ends(path)
    # the record holding the NaN alert, and a cut in the middle of the record after the next one
    alert_at = next(i for i, end in enumerate(ends) if b"gradwatch/alerts" in data[(ends[i - 1] if i else 0):end])
    cut = ends[alert_at + 1] + (ends[alert_at + 2] - ends[alert_at + 1]) // 2
    with open(path, "r+b") as f:
        f.truncate(cut)
    code, out = _json(capsys, ["report", str(tmp_path), "--json", "--fail-on", "nonfinite"])
    (run,) = out["runs"]
    assert code == 1
    assert [(e["kind"], e["layers"], e["onset"]) for e in run["episodes"]] == [("nonfinite", ["2"], 3)]
    assert run["steps"][1] < 11  # the later steps were cut off
    assert any("ends mid-record" in n for n in run["notes"])
    assert main(["report", str(tmp_path)]) == 0
    assert "ends mid-record" in capsys.readouterr().out


def test_empty_and_foreign_log_directories(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "No TensorBoard event files" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    writer = SummaryWriter(log_dir=str(tmp_path / "other"))
    writer.add_scalar("loss", 1.0, 0)
    writer.close()
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "no gradwatch tags" in captured.err
    assert "no gradwatch tags" in captured.out
    assert main(["report", str(tmp_path), "--run", "nope"]) == 2
    assert "runs found: other" in capsys.readouterr().err


def test_plot_draws_the_flow_from_event_files(demo_dir, tmp_path, capsys):
    out = tmp_path / "flow.png"
    assert main(["plot", str(demo_dir), "--run", "plain", "-o", str(out), "--step", "100"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "step 100" in capsys.readouterr().out
    run = load_run("plain", str(demo_dir / "plain"))
    data = flow_data(run, step=105)
    assert data["step"] == 100
    assert data["names"][0] == "input"
    assert data["names"][-1] == "out"
    norm = run.scalars["gradwatch/grad_norm/hidden.0"][100]
    numel = {layer.name: layer.numel for layer in run.layers}["hidden.0"]
    assert numel == 20
    assert data["rms"][1] == pytest.approx(norm / math.sqrt(20))
    assert data["flagged"].get("input") == "vanishing"
    assert main(["plot", str(demo_dir), "-o", str(out)]) == 2  # two runs: which one?
    assert "--run" in capsys.readouterr().err


def test_alert_lines_round_trip_through_the_parser():
    symptoms = [Symptom("nonfinite", "enc.layers.0", 7, float("nan"), 0.0, "error", "NaN in 'enc.layers.0'. Try x."),
                Symptom("exploding", None, 9, 1e6, 1e3, "warning", "Global norm 1e6 (model-wide): see `docs`.")]
    parsed = parse_alerts(alerts_markdown(symptoms))
    assert [(a.kind, a.layer, a.step, a.severity, a.message) for a in parsed] == [
        (s.kind, s.layer, s.step, s.severity, s.message) for s in symptoms]


def test_plain_text_fallback_without_rich(demo_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)
    assert main(["report", str(demo_dir), "--run", "plain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run plain")
    assert "vanishing  input" in out
    assert "\u2503" not in out
    text = format_text([diagnose(load_run("plain", str(demo_dir / "plain")))])
    assert text.splitlines()[0].startswith("run plain (steps 0-119")


def test_help_has_examples(capsys):
    for command in ("report", "plot"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out
        assert f"gradwatch {command} " in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "report" in capsys.readouterr().out


def test_lightning_logs_are_reported(tmp_path, capsys):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning_fit import fit_tiny

    fit_tiny(pl, tmp_path, steps=6, log_every_n_steps=2, name="tb")
    code, data = _json(capsys, ["report", str(tmp_path), "--json"])
    assert code == 0
    (run,) = [r for r in data["runs"] if r["gradwatch"]]
    assert run["name"] == "tb/version_0"
    assert run["logged_steps"] == 3
    assert os.path.isdir(run["path"])
