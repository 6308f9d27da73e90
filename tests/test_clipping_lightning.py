"""Every clipper through the Lightning callback (runs once ``gradwatch.lightning`` is there)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("gradwatch.lightning", reason="the Lightning callback (issue 3) is not in this checkout")
pl = pytest.importorskip("lightning.pytorch")

import gradwatch  # noqa: E402
from gradwatch.clipping import (  # noqa: E402
    AGC,
    LayerNormClip,
    NormClip,
    PercentileClip,
    ValueClip,
    ZScoreClip,
)
from gradwatch.lightning import GradWatchCallback  # noqa: E402

STEPS = 12


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        gen = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(16 * STEPS, 4, generator=gen),
                                  torch.randn(16 * STEPS, 1, generator=gen) * 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=16)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


CLIPPERS = {
    "norm": lambda: NormClip(0.05),
    "value": lambda: ValueClip(1e-3),
    "agc": lambda: AGC(clip_factor=1e-3, exclude="net.2"),
    "zscore": lambda: ZScoreClip(warmup_steps=3, z_threshold=0.1),
    "percentile": lambda: PercentileClip(percentile=10.0, window=8),
    "layer": lambda: LayerNormClip(0.05),
}


@pytest.mark.filterwarnings("ignore:.*treespec.*")
@pytest.mark.parametrize("name", sorted(CLIPPERS))
def test_clipper_works_through_the_lightning_callback(name, tmp_path):
    torch.manual_seed(0)
    sink = gradwatch.MemorySink()
    clip = CLIPPERS[name]()
    callback = GradWatchCallback(clip=clip, every_n_steps=1, sinks=[sink])
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=STEPS, callbacks=[callback], enable_progress_bar=False,
                         logger=False, enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
                         devices=1)
    trainer.fit(Tiny())
    raw = dict(sink.series("gradwatch/global/grad_norm"))
    clipped = dict(sink.series("gradwatch/global/grad_norm_clipped"))
    assert sorted(raw) == list(range(STEPS))
    assert all(clipped[s] <= raw[s] * (1 + 1e-6) for s in raw)
    assert any(clipped[s] < raw[s] * 0.99 for s in raw)  # the clipper acted inside the Trainer
    warmup = 3 if name == "zscore" else 0  # ZScoreClip without max_norm has no threshold during its warm-up
    assert [s for s, _ in sink.series("gradwatch/clip/threshold")] == list(range(warmup, STEPS))
    assert len(sink.series("gradwatch/loss")) == STEPS  # the loss reaches the spike rule
    if name != "value":
        assert sum(v for _, v in sink.series("gradwatch/clip/clipped")) >= 1
    if name in ("agc", "layer"):
        fracs = [v for _, v in sink.series("gradwatch/clip/active_frac")]
        assert len(fracs) == STEPS
        assert all(0 <= f <= 1 for f in fracs)
        assert max(fracs) > 0
    if name == "norm":
        assert all(v <= 0.05 * (1 + 1e-5) for v in clipped.values())
    if name in ("zscore", "percentile"):
        assert clip.state_dict()["seen"] == STEPS  # every optimizer step went through the clipper once


class SpikyTiny(Tiny):
    """Tiny, with a 50x gradient spike injected at one optimizer step."""

    spike_at = 10

    def on_after_backward(self):
        if self.trainer.global_step == self.spike_at:
            for p in self.parameters():
                p.grad.mul_(50.0)


class WeightsPerStep(pl.Callback):
    def __init__(self) -> None:
        self.changed: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.changed[batch_idx] = any(not torch.equal(b, p)
                                      for b, p in zip(self._before, pl_module.parameters(), strict=True))


@pytest.mark.filterwarnings("ignore:.*treespec.*")
@pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning")
def test_on_spike_skip_through_the_callback_skips_only_that_step_and_does_not_stop(tmp_path):
    torch.manual_seed(0)
    sink, weights = gradwatch.MemorySink(), WeightsPerStep()
    callback = GradWatchCallback(every_n_steps=1, sinks=[sink], on_spike="skip", on_nonfinite="stop",
                                 thresholds=gradwatch.Thresholds(spike_warmup=5))
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=STEPS, callbacks=[callback, weights],
                         enable_progress_bar=False, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(SpikyTiny())
    assert trainer.global_step == STEPS  # a spike skip is not a non-finite stop
    assert [s for s, v in sink.series("gradwatch/symptoms/spike") if v] == [SpikyTiny.spike_at]
    assert weights.changed == {i: i != SpikyTiny.spike_at for i in range(STEPS)}
