"""The Lightning callback finds the Trainer's GradScaler and judges its overflows by the scale (issue 19, #8)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import MemorySink

pl = pytest.importorskip("lightning.pytorch")
lightning = pytest.importorskip("gradwatch.lightning")


class _Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Overflow(pl.Callback):
    """An Inf in the (scaled) gradient at the given steps: the scaler skips them and halves its scale."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step in self.steps:
            pl_module.net[0].weight.grad[0, 0] = float("inf")


def _fit(tmp_path: Any, callbacks: list[Any], steps: int) -> None:
    plugin = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         accelerator="cpu", devices=1, plugins=[plugin])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4 * steps, 4)), batch_size=4)
    trainer.fit(_Module(), loader)


def test_overflows_while_the_scale_falls_are_events_only(tmp_path: Any) -> None:
    sink = MemorySink()
    cb = lightning.GradWatchCallback(every_n_steps=1, sinks=[sink], on_nonfinite="raise")  # patience: by the scale
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradwatch.GradWatchWarning)
        _fit(tmp_path, [_Overflow({1, *range(4, 12)}), cb], steps=14)  # 9 overflows in a row: the scale halves 9 times
    assert isinstance(cb.watcher.config.scaler, torch.amp.GradScaler)  # the Trainer's, found by the callback
    assert cb.amp_overflow_patience is None
    overflows = dict(sink.series("gradwatch/amp/overflows"))
    assert overflows[13] - overflows[3] == 8  # (the scaler may overflow at step 0 on its own: 2**16 is high)
    assert not [a for a in sink.alerts if a.kind == "nonfinite"]
    assert not [n for _, n in sink.series("gradwatch/symptoms/nonfinite") if n > 0]
    scales = dict(sink.series("gradwatch/amp/scale"))
    assert scales[12] == scales[4] / 2**8


def test_overflows_at_a_scale_down_to_one_are_reported(tmp_path: Any) -> None:
    sink = MemorySink()
    cb = lightning.GradWatchCallback(every_n_steps=1, sinks=[sink], on_nonfinite="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradwatch.GradWatchWarning)
        _fit(tmp_path, [_Overflow(set(range(1, 21))), cb], steps=21)
    nonfinite = [s for s, n in sink.series("gradwatch/symptoms/nonfinite") if n > 0]
    scales = dict(sink.series("gradwatch/amp/scale"))
    # 2**16 halved at each overflow: reported from the first overflow at a scale of 1 (nothing left to unscale) on
    assert nonfinite == [s for s in range(1, 21) if scales[s] <= 1.0]
    assert scales[nonfinite[0]] == 1.0
    assert 15 <= nonfinite[0] <= 17
