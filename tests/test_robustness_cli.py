"""The command line: ``--fail-on`` takes only symptom kinds (issue 19, #4), and a bad output path is a one-line error
with exit status 2, never a traceback (#14)."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._symptoms import SymptomKind
from gradwatch.cli import FAIL_ON_KINDS, main


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
    """A run whose layer '0' gets a NaN gradient at step 2."""
    log_dir = tmp_path_factory.mktemp("nan_run")
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with gradwatch.watch(model, log_dir=log_dir, on_nonfinite="ignore") as watcher:
        for step in range(4):
            model.zero_grad()
            model(torch.randn(8, 3)).pow(2).mean().backward()
            if step == 2:
                model[0].weight.grad[0, 0] = float("nan")
            watcher.step()
    return log_dir


@pytest.mark.parametrize("kinds", ["nonfinte", "nan", "nonfinite,explodng", "NaN,any", "all"])
def test_fail_on_refuses_a_word_that_is_no_symptom_kind(nan_run, capsys, kinds):
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(nan_run), "--fail-on", kinds])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--fail-on" in err
    assert "unknown symptom kind" in err
    assert "choose from nonfinite, vanishing, exploding, spike, divergence, saturated, dead, any" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kinds", ["nonfinite", "NONFINITE", " Nonfinite , vanishing", "any", "nonfinite,"])
def test_fail_on_a_kind_in_any_case_fails_a_run_with_nans(nan_run, capsys, kinds):
    assert main(["report", str(nan_run), "--fail-on", kinds]) == 1
    assert "failing (--fail-on" in capsys.readouterr().err


def test_fail_on_a_kind_the_run_does_not_have_passes(nan_run, capsys):
    assert main(["report", str(nan_run), "--fail-on", "vanishing,exploding,divergence,dead"]) == 0
    assert main(["report", str(nan_run), "--fail-on", ""]) == 0
    capsys.readouterr()


def test_fail_on_names_every_symptom_kind():
    assert set(get_args(SymptomKind)) | {"divergence", "any"} <= set(FAIL_ON_KINDS)


def test_fail_on_error_from_the_console(nan_run):
    out = subprocess.run([sys.executable, "-m", "gradwatch.cli", "report", str(nan_run), "--fail-on", "nonfinte"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown symptom kind 'nonfinte'" in out.stderr
    assert "Traceback" not in out.stderr


def test_plot_to_a_missing_directory_is_one_line_and_exit_2(nan_run, tmp_path, capsys):
    target = tmp_path / "nonexistent" / "dir" / "x.png"
    assert main(["plot", str(nan_run), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("gradwatch plot: cannot write")
    assert "does not exist" in err
    assert not target.parent.exists()


def test_plot_to_a_path_that_cannot_be_opened_is_one_line_and_exit_2(nan_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plot", str(nan_run), "-o", str(tmp_path)]) == 2  # a directory: open() fails after drawing
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"gradwatch plot: cannot write {str(tmp_path)!r}")


def test_demo_with_a_file_as_log_dir_is_one_line_and_exit_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert main(["demo", "--steps", "5", "--log-dir", str(afile)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"gradwatch demo: cannot write the logs under --log-dir {str(afile)!r}: " \
                           f"{str(afile)!r} is a file, not a directory\n"
    assert captured.out == ""  # refused before any training
    assert afile.read_text() == "not a directory"


def test_demo_under_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["demo", "--steps", "5", "--log-dir", str(afile / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Not a directory" in err


def test_demo_when_writing_fails_midway_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    import gradwatch._demo as demo

    def disk_full(**kwargs):
        raise OSError(28, "No space left on device", kwargs["log_dir"])

    monkeypatch.setattr(demo, "run_xor", disk_full)
    assert main(["demo", "--steps", "5", "--log-dir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert err == f"gradwatch demo: cannot write the logs under {str(tmp_path / 'logs' / 'plain')!r}: " \
                  f"No space left on device: {str(tmp_path / 'logs' / 'plain')!r}\n"
