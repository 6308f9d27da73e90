import subprocess
import sys

import pytest

from gradwatch.cli import main


def test_demo_diagnoses_the_plain_network_and_clears_the_residual_one(tmp_path, capsys):
    assert main(["demo", "--steps", "120", "--log-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    plain, residual = out.split("residual:")
    assert "vanishing gradients in input, hidden.0–6 (8 layers) since step 0 (detected at step 49)" in plain
    assert "XOR not learned" in plain
    assert "no symptoms" in residual
    assert f"tensorboard --logdir {tmp_path / 'demo'}" in out
    assert (tmp_path / "demo" / "plain").is_dir()
    assert (tmp_path / "demo" / "residual").is_dir()


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    assert "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["demo", "--steps", "0"])
    assert e.value.code == 2
    assert main([]) == 2


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "gradwatch.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("gradwatch ")
