"""Configuration and step() inputs refused up front, with a ConfigurationError naming what is wrong (issue 19, #5, #9,
#10 and the rest of #11)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import ConfigurationError, MemorySink


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


# ---------------------------------------------------------------------------------- #5: a writer checked for its use
class _TextAndScalars:
    """Has add_scalar, add_text and flush: enough for scalars and alerts, not for histograms."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        pass

    def flush(self) -> None:
        pass


def test_a_writer_without_add_histogram_raw_is_refused_when_histograms_are_asked_for() -> None:
    with pytest.raises(ConfigurationError, match=r"writer=.*add_histogram_raw.*histogram_every_n_steps=100"):
        gradwatch.watch(_model(), writer=_TextAndScalars(), histogram_every_n_steps=100)


def test_a_writer_without_flush_is_refused() -> None:
    class NoFlush:
        def add_scalar(self, *a: Any) -> None: ...
        def add_text(self, *a: Any) -> None: ...

    with pytest.raises(ConfigurationError, match=r"writer=.*must be a SummaryWriter.*flush"):
        gradwatch.watch(_model(), writer=NoFlush())


def test_a_writer_with_what_the_features_need_gets_every_step() -> None:
    model, writer = _model(), _TextAndScalars()
    with gradwatch.watch(model, writer=writer) as watcher:  # no histograms: add_histogram_raw is not needed
        for _ in range(50):
            model(torch.randn(2, 3)).sum().backward()
            watcher.step()
            model.zero_grad()
    assert sorted({step for tag, _, step in writer.scalars if tag == "gradwatch/global/grad_norm"}) == list(range(50))


# ---------------------------------------------------------------------------------------------------- #9: meta device
def test_a_meta_device_model_is_refused_at_watch() -> None:
    with torch.device("meta"):
        model = _model()
    with pytest.raises(ConfigurationError, match=r"meta device.*'0\.weight'.*to_empty"):
        gradwatch.watch(model)
    assert not model[0]._forward_hooks


def test_a_model_with_one_meta_buffer_is_refused() -> None:
    model = _model()
    model.register_buffer("table", torch.empty(3, device="meta"))
    with pytest.raises(ConfigurationError, match=r"meta device.*'table'"):
        gradwatch.watch(model)


# -------------------------------------------------------------------------------- #10: step() inputs checked first
@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"loss": torch.ones(4)}, r"loss=tensor of shape \(4,\)"),
    ({"loss": torch.ones(2, 2)}, r"loss=tensor of shape \(2, 2\)"),
    ({"loss": "1.0"}, "loss='1.0'"),
    ({"loss": True}, "loss=True"),
    ({"loss": torch.tensor(1 + 2j)}, "loss=tensor.*complex"),
    ({"loss_scale": torch.ones(3)}, r"loss_scale=tensor of shape \(3,\)"),
    ({"loss_scale": [1.0]}, r"loss_scale=\[1.0\]"),
    ({"global_step": -1}, "global_step=-1"),
    ({"global_step": 1.5}, "global_step=1.5"),
    ({"reduce_flag": 3}, "reduce_flag=3"),
])
def test_bad_step_inputs_are_refused_before_the_gradients_change(kwargs: dict[str, Any], fragment: str) -> None:
    model = _model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e4)
    before = [p.grad.clone() for p in model.parameters()]
    with gradwatch.watch(model, clip=0.01, on_nonfinite="skip") as watcher:
        with pytest.raises(ConfigurationError, match=fragment):
            watcher.step(**kwargs)
        assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before, strict=True))  # not clipped
        assert watcher.steps_taken == 0  # not counted
        report = watcher.step(loss=torch.tensor([2.5]), loss_scale=torch.tensor(8.0))  # 1-element: fine
        assert report.extras["gradwatch/loss"] == 2.5
        assert report.clipped_norm == pytest.approx(0.01, rel=1e-4)
        assert watcher.steps_taken == 1


def test_numpy_and_zero_d_step_inputs_are_taken() -> None:
    np = pytest.importorskip("numpy")
    model = _model()
    model(torch.randn(2, 3)).sum().backward()
    with gradwatch.watch(model) as watcher:
        assert watcher.step(loss=np.float32(1.5), global_step=np.int64(4)).step == 4
        assert watcher.step(loss=torch.tensor(2.0, dtype=torch.float64), loss_scale=np.float64(2.0)).step == 5


# ------------------------------------------------------------------------------------------- #11: options, up front
@pytest.mark.parametrize(("options", "fragment"), [
    ({"layers": 0}, "layers=0"),
    ({"layers": [0]}, r"layers=\[0\]"),
    ({"sinks": 5}, "sinks=5"),
    ({"sinks": None}, "sinks=None"),
    ({"sinks": MemorySink()}, r"sinks=.*MemorySink.*a list"),
    ({"histograms": None}, "histograms=None"),
    ({"histograms": 3}, "histograms=3"),
    ({"activations": [""]}, r"activations=\[''\]"),
    ({"activations": ""}, "activations=''"),
    ({"activations": []}, r"activations=\[\]"),
    ({"log_dir": ""}, "log_dir=''"),
    ({"amp_overflow_patience": 0}, "amp_overflow_patience=0"),
    ({"scaler": 5}, "scaler=5"),
])
def test_bad_options_raise_a_configuration_error_naming_them(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        gradwatch.WatchConfig(**options)


@pytest.mark.parametrize("options", [
    {"layers": 5}, {"layers": []}, {"layers": [""]}, {"activations": [""]}, {"sinks": None}, {"histograms": None},
    {"amp_overflow_patience": 0},
])
def test_the_lightning_callback_refuses_them_at_construction(options: dict[str, Any]) -> None:
    lightning = pytest.importorskip("gradwatch.lightning")
    with pytest.raises(ConfigurationError, match=re.escape(next(iter(options)))):
        lightning.GradWatchCallback(**options)


def test_a_log_dir_that_is_a_file_is_refused_naming_it(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(ConfigurationError, match=rf"log_dir=.*{re.escape(str(afile))}.* is a file"):
        gradwatch.watch(_model(), log_dir=afile)
    with pytest.raises(ConfigurationError, match=rf"log_dir=.*{re.escape(str(afile))}.* is a file"):
        gradwatch.watch(_model(), log_dir=afile / "sub" / "run")
    assert afile.read_text() == "keep me"


def test_a_log_dir_that_cannot_be_created_is_a_configuration_error(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(ConfigurationError, match=r"log_dir=.*/proc/gradwatch-no/run"):
        gradwatch.watch(model, log_dir="/proc/gradwatch-no/run", activations=True)
    assert not model[0]._forward_hooks


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere; needs POSIX modes")
def test_a_read_only_log_dir_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigurationError, match="not writable"):
            gradwatch.watch(_model(), log_dir=ro / "run")
        assert not (ro / "run").exists()
    finally:
        ro.chmod(0o700)


def test_a_read_only_log_dir_is_refused_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.access`` is what the check asks: as root, simulate a directory it says is not writable."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    with pytest.raises(ConfigurationError, match=rf"log_dir=.*{re.escape(str(ro))}.* is not writable"):
        gradwatch.watch(_model(), log_dir=ro / "run")
    assert not (ro / "run").exists()


def test_a_good_log_dir_under_missing_parents_is_created(tmp_path: Path) -> None:
    model = _model()
    model(torch.randn(2, 3)).sum().backward()
    with gradwatch.watch(model, log_dir=tmp_path / "a" / "b" / "run") as watcher:
        watcher.step()
    assert any((tmp_path / "a" / "b" / "run").iterdir())
