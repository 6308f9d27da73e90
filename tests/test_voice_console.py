"""A quiet console with one switch (issue 17): what gradwatch prints while it watches.

* a 300-step run of a 40-layer CNN whose weights go NaN after one bad input batch prints at most 3 gradwatch lines;
  the Lightning RNN clipping example at most 5; ``gradwatch demo`` at most 12 lines in all, with a conclusion that
  follows from what it measured;
* the ``gradwatch`` logger's level is the one switch: at ERROR nothing but errors is printed;
* symptoms never become Python warnings; warnings (what needs a change in your code) point at your line.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._console import LOGGER, Console, set_verbosity
from gradwatch._episodes import EpisodeTracker
from gradwatch.cli import main

ROOT = Path(__file__).resolve().parents[1]

CNN_RUN = textwrap.dedent("""
    import logging, sys, torch, gradwatch
    from torch import nn
    torch.manual_seed(0)
    torch.set_num_threads(1)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    for _ in range(39):
        layers += [nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 4 * 4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    level = sys.argv[1] if len(sys.argv) > 1 else None
    if level:
        logging.getLogger("gradwatch").setLevel(level)
    with gradwatch.watch(model) as watcher:
        for step in range(300):
            x = torch.randn(2, 1, 4, 4)
            if step == 120:
                x[0, 0, 0, 0] = float("nan")  # one bad batch: the optimizer steps its NaN into the weights
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            watcher.step(loss=loss)
            opt.step()
""")


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env,
                          timeout=600)


def _gradwatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "gradwatch" in line.lower()]


def test_a_40_layer_cnn_whose_weights_go_nan_prints_at_most_three_lines():
    out = _run(CNN_RUN)
    lines = _gradwatch_lines(out.stdout + out.stderr)
    assert len(lines) <= 3, "\n".join(lines)
    # what they say: the plain deep ReLU stack starves (a true diagnosis), then the NaN, then a reminder with a count
    nan = [line for line in lines if line.startswith("gradwatch: non-finite gradients in 0–")]
    assert nan[0].startswith("gradwatch: non-finite gradients in 0–80 (41 layers) since step 120: NaN in the "
                             "gradients of 41 layers at step 120.")
    assert nan[1] == ("gradwatch: non-finite gradients in 0–80 (41 layers) since step 120 still holds at step 219 "
                      "(seen on 100 steps).")
    assert "Warning" not in out.stderr  # symptoms are no Python warnings


def test_at_the_error_level_nothing_but_errors_is_printed():
    out = _run(CNN_RUN, "ERROR")
    lines = (out.stdout + out.stderr).splitlines()
    assert len(lines) == 2, lines  # the NaN and its reminder; not the vanishing gradients (a warning)
    assert all(line.startswith("gradwatch: non-finite gradients") for line in lines)
    quiet = _run(CNN_RUN.replace("x[0, 0, 0, 0] = float(\"nan\")", "pass"), "ERROR")
    assert quiet.stdout + quiet.stderr == ""  # a run without errors prints nothing at all


def test_the_applications_logging_configuration_takes_the_lines_once():
    code = "import logging; logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')\n" + CNN_RUN
    out = _run(code)
    lines = _gradwatch_lines(out.stderr)
    assert lines
    assert all(line.startswith(("WARNING gradwatch: ", "ERROR gradwatch: ", "INFO gradwatch: ")) for line in lines)
    assert len(lines) <= 3


def test_the_lightning_clipping_example_prints_at_most_five_gradwatch_lines(tmp_path):
    pytest.importorskip("lightning.pytorch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "lightning_rnn_clipping.py"), "--log-dir",
                          str(tmp_path)], capture_output=True, text=True, check=True, env=env, timeout=600)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("gradwatch")]
    # the explosion, the NaN that follows it, the clipped run's one spike; and the two summaries' first lines
    assert len(lines) <= 5, "\n".join(lines)
    assert "GradWatchWarning" not in out.stderr
    assert any(line.startswith("gradwatch: exploding gradients in rnn since step 0: ") for line in lines)
    assert any(line.startswith("gradwatch: non-finite gradients in rnn since step 89: ") for line in lines)


def test_demo_prints_at_most_twelve_lines_and_a_short_run_says_it_did_not_learn(tmp_path, capsys):
    assert main(["demo", "--steps", "300", "--log-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert len(lines) <= 12, lines
    text = "\n".join(lines)
    assert "residual: final loss 0.2570, outputs 0.40 0.42 0.41 0.42 for (00, 01, 10, 11): XOR not learned" in text
    assert "residual connections carry the gradient through and it trains" not in text
    (diagnosis,) = [line for line in lines if line.startswith("Diagnosis: ")]
    assert diagnosis.startswith("Diagnosis: neither network learned XOR in 300 steps: ")
    assert "More steps may help: gradwatch demo --steps 1500." in diagnosis
    assert f"tensorboard --logdir {tmp_path}" in lines[-1]


def _nan_model() -> nn.Module:
    model = nn.Linear(2, 1)
    model.weight.grad, model.bias.grad = torch.tensor([[float("nan"), 1.0]]), torch.tensor([1.0])
    return model


def test_symptoms_go_to_the_logger_only_one_switch(caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="gradwatch"):
        warnings.simplefilter("always")
        with gradwatch.watch(_nan_model()) as watcher:
            watcher.step()
    assert [w for w in caught if issubclass(w.category, gradwatch.GradWatchWarning)] == []
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    with caplog.at_level(logging.CRITICAL, logger="gradwatch"):
        caplog.clear()
        with gradwatch.watch(_nan_model()) as watcher:
            watcher.step()
    assert caplog.records == []


class _FullDisk(gradwatch.MemorySink):
    def write_scalars(self, step, scalars):
        raise OSError("disk full")


def test_a_warning_points_at_the_callers_line():
    model = nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watcher = gradwatch.watch(model, sinks=[_FullDisk()])
        line = sys._getframe().f_lineno + 1
        watcher.step()  # the sink fails in this call: the warning points here, not into gradwatch or torch
        watcher.close()
    (w,) = [w for w in caught if issubclass(w.category, gradwatch.GradWatchWarning)]
    assert "disk full" in str(w.message)
    assert (w.filename, w.lineno) == (__file__, line)


def test_the_verbosity_switch_maps_onto_the_logger_level():
    old = LOGGER.level
    try:
        set_verbosity(True)
        assert LOGGER.level == logging.DEBUG
        set_verbosity(False)
        assert LOGGER.level == logging.ERROR
        set_verbosity(logging.WARNING)
        assert LOGGER.level == logging.WARNING
        set_verbosity(None)
        assert LOGGER.level == logging.WARNING  # None leaves it
    finally:
        LOGGER.setLevel(old)


def _symptom(kind, layer, step, since=None, severity="warning"):
    return gradwatch.Symptom(kind, layer, step, 1.0, 0.5, severity, f"{kind} at {layer}.", since=since, advice="x")


def _said(steps):
    """Run a console over ``steps`` (step -> symptoms) and return what it says, with levels."""
    tracker, console, said = EpisodeTracker(), Console(), []
    console.say = lambda level, text: said.append((logging.getLevelName(level), text))
    console.enabled = lambda level: True
    for step in range(max(steps) + 2):
        console.speak(tracker.observe(steps.get(step, []), step))
    return said


def test_consequences_of_an_instability_are_folded_into_its_lines():
    steps = {s: [_symptom("exploding", None, s)] for s in range(0, 20)}
    for s in range(5, 20):
        steps[s] = [*steps[s], _symptom("divergence", None, s, since=3, severity="error")]
    said = [(level, text) for level, text in _said(steps) if level != "DEBUG"]
    assert [level for level, _ in said] == ["WARNING", "INFO"]
    assert said[1][1] == ("exploding gradients (model-wide) since step 0 ended at step 20 (seen on 20 steps). "
                          "Meanwhile: divergence since step 3.")


def test_a_kind_that_keeps_coming_back_is_said_again_with_a_count():
    steps = {s: [_symptom("spike", None, s)] for s in range(10, 400, 7)}
    said = [text for level, text in _said(steps) if level != "DEBUG"]
    assert len(said) == 2  # the first spike, and one more after 100 steps with how many were not shown
    assert said[0].startswith("spike (model-wide) since step 10: spike at None. Try x.")
    assert said[1].startswith("spike (model-wide) since step 115: ")
    assert said[1].endswith("(14 more such episodes since step 17 were not shown.)")
    assert "Try" not in said[1]  # the advice once per kind
