"""Smoke runs of the examples gallery (docs/examples.md).

Each runs with few steps, asserting the diagnosis it is meant to show.

Every example's ``main(argv)`` returns what it found (closed watchers, symptom summaries or gradient profiles). The
default thresholds are used throughout; ``vanishing`` needs ``vanishing_patience`` (50) starved steps, hence the runs of
50-60 steps where it is the expected diagnosis. ``spike_clipping.py`` and ``lightning_rnn_clipping.py`` have their own
smoke tests (tests/test_clipping_example.py, tests/test_lightning.py).
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(autouse=True)
def _restore_threads_and_logging():
    threads, level = torch.get_num_threads(), logging.getLogger("gradwatch").level
    yield  # the examples set one thread and quiet gradwatch's logger
    torch.set_num_threads(threads)
    logging.getLogger("gradwatch").setLevel(level)


def event_files(path: Path) -> list[Path]:
    return list(path.glob("events.out.tfevents.*"))


def kinds(watcher) -> set[str]:
    return {s.kind for s in watcher.history.summaries()}


def test_xor_plain_vanishes_at_the_input_side_and_residual_is_silent(tmp_path, capsys):
    out = load("xor_vanishing").main(["--steps", "60", "--log-dir", str(tmp_path)])
    starved = out["plain"].history.layers("vanishing")
    assert {"input", "hidden.0", "hidden.1", "hidden.2"} <= set(starved)  # the input side
    assert kinds(out["plain"]) == {"vanishing"}
    assert not out["residual"].history
    assert event_files(tmp_path / "plain")
    assert event_files(tmp_path / "residual")
    assert "VANISHING" in capsys.readouterr().out.upper()


def test_activation_saturation_each_case_gets_its_own_diagnosis(tmp_path):
    out = load("activation_saturation").main(["--steps", "55", "--log-dir", str(tmp_path)])
    by_case = {label: {s.kind for s in summaries} for label, summaries in out.items()}
    assert "saturated" in by_case["sigmoid, N(0, 2^2) weights"]
    assert by_case["sigmoid, default init"] == {"vanishing"}
    assert by_case["ReLU, He init"] == set()
    assert "dead" in by_case["ReLU, biases -3"]
    saturated = [s.layer for s in out["sigmoid, N(0, 2^2) weights"] if s.kind == "saturated"]
    assert saturated
    assert all(layer in {str(i) for i in range(1, 20, 2)} for layer in saturated)  # the Sigmoid modules
    dead = [s.layer for s in out["ReLU, biases -3"] if s.kind == "dead"]
    assert dead
    assert all(layer in {str(i) for i in range(1, 20, 2)} for layer in dead)  # the ReLU modules
    assert len(list(tmp_path.rglob("events.out.tfevents.*"))) == 4


def test_cnn_plain_vanishes_at_the_early_layers_and_bn_residual_is_silent(tmp_path):
    out = load("cnn_batchnorm_residual").main(["--steps", "55", "--log-dir", str(tmp_path)])
    plain = out["plain"]
    assert kinds(plain) == {"vanishing"}
    starved = plain.history.layers("vanishing")
    assert {"stem", "blocks.0.conv", "blocks.1.conv", "blocks.2.conv"} <= set(starved)
    assert not {"blocks.13.conv", "blocks.14.conv", "blocks.15.conv", "head"} & set(starved)  # output side fed
    assert min(s.first_step for s in plain.history.summaries("vanishing")) == 49  # patience 50, from step 0
    assert not out["cured"].history
    assert event_files(tmp_path / "plain")
    assert event_files(tmp_path / "cured")


def test_glorot_profiles_shrink_toward_the_input_under_standard_init_and_stay_level_under_normalised(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = load("glorot_init").main(["--steps", "10", "--log-dir", str(tmp_path), "--figure", str(tmp_path / "f.png")])
    standard, normalised = out["standard"]["backprop"], out["normalised"]["backprop"]
    assert len(standard) == len(normalised) == 5
    assert all(a < b for a, b in itertools.pairwise(standard)), standard  # fc1 (input side) smallest
    assert max(standard) / min(standard) > 4
    assert max(normalised) / min(normalised) < 2, normalised
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acc = EventAccumulator(str(tmp_path / "standard"))
    acc.Reload()
    first = {e.step: e.value for e in acc.Scalars("gradwatch/grad_out_norm/fc1")}
    assert 0 in first
    assert first[0] > 0  # the profile comes from the hooks' TensorBoard tag


def test_rnn_explodes_lstm_gru_and_clipping_are_silent(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = load("rnn_long_sequences").main(["--steps", "30", "--log-dir", str(tmp_path)])
    rnn, clipped = out["rnn"], out["rnn_clipped"]
    assert "exploding" in kinds(rnn)
    assert "rnn" in rnn.history.layers("exploding")
    assert min(s.first_step for s in rnn.history.summaries("exploding")) == 0
    # The clipper contains it: the rules judge the clipped norm, so the run is silent (not even a spike: the clipped
    # RNN learns), while the summary and TensorBoard keep the pre-clip norm.
    assert not clipped.history
    tally = clipped.clip_tally
    assert tally is not None
    assert tally.steps == 30
    assert tally.active >= 25
    assert tally.max_norm > 1e4
    assert "clipping: active on" in clipped.summary()
    acc = EventAccumulator(str(tmp_path / "rnn_clipped"))
    acc.Reload()
    raw = max(e.value for e in acc.Scalars("gradwatch/global/grad_norm"))
    clipped_norms = [e.value for e in acc.Scalars("gradwatch/global/grad_norm_clipped")]
    assert raw > 1e4
    assert max(clipped_norms) == pytest.approx(1.0, rel=1e-3)
    assert not out["lstm"].history
    assert not out["gru"].history
    for name in out:
        assert event_files(tmp_path / name), name


def test_too_large_learning_rate_explodes_then_nans_lower_rate_and_clipping_are_silent(tmp_path):
    out = load("learning_rate").main(["--steps", "20", "--log-dir", str(tmp_path)])
    sick = out["too_large"]
    assert set(sick.history.layers("exploding")) == {"0", "2", "4"}
    assert set(sick.history.layers("nonfinite")) == {"0", "2", "4"}
    first_exploding = min(s.first_step for s in sick.history.summaries("exploding"))
    first_nonfinite = min(s.first_step for s in sick.history.summaries("nonfinite"))
    assert first_exploding < first_nonfinite  # exploding, then NaN
    assert not out["lower"].history
    assert not out["clipped"].history
    for name in out:
        assert event_files(tmp_path / name), name


def test_hf_trainer_skips_the_nan_step_and_writes_into_the_trainers_tensorboard_run(tmp_path):
    pytest.importorskip("transformers")
    out = load("hf_trainer").main(["--steps", "12", "--nan-at", "7", "--output-dir", str(tmp_path)])
    watcher, trainer = out["watcher"], out["trainer"]
    assert {s.first_step for s in watcher.history.summaries("nonfinite")} == {7}
    assert trainer.state.global_step == 12  # "skip": training went on
    (run,) = (tmp_path / "runs").iterdir()  # the Trainer's TensorBoard run holds gradwatch's event file too
    assert len(event_files(run)) == 2
    assert trainer.args.max_grad_norm == 1.0  # the Trainer's clipping given back
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# examples/accelerate_loop.py: tests/test_accelerate_loop.py runs it.
