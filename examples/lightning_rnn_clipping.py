"""A vanilla RNN whose gradients explode, trained with Lightning, then the same run kept finite by gradwatch's clipping.

The task: read a sequence of 100 numbers and output the mean of the first 10 (the answer lies 90 steps back in time).
The tanh RNN's recurrent matrix starts in the chaotic regime (spectral radius ~4), so backpropagation through time
multiplies the gradient by large Jacobians: the global gradient norm explodes and plain SGD throws the weights away.
``GradWatchCallback(clip=1.0)`` clips in ``on_before_optimizer_step``, after recording the unclipped norms: the
dashboards still show the explosion (``gradwatch/global/grad_norm`` beside ``gradwatch/global/grad_norm_clipped``),
the weights stay finite, and the ``exploding`` rule, which judges the gradient the optimizer receives, stays quiet; the
summary at the end of fit says how often clipping acted.

    python examples/lightning_rnn_clipping.py [--steps 150] [--log-dir runs/rnn]
    tensorboard --logdir runs/rnn    # gradwatch/global/grad_norm, gradwatch/grad_norm/<layer>, gradwatch/alerts
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name works the same way
    import pytorch_lightning as pl  # type: ignore[no-redef]

from gradwatch import Thresholds
from gradwatch.lightning import GradWatchCallback

SEQ_LEN, HIDDEN, GAIN = 100, 32, 4.0


class SequenceMean(pl.LightningModule):
    """A tanh RNN and a linear read-out of its last state, trained with SGD."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(1, HIDDEN, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)
        with torch.no_grad():  # Gaussian recurrent matrix with spectral radius ~GAIN: the chaotic regime
            self.rnn.weight_hh_l0.copy_(torch.randn(HIDDEN, HIDDEN) * (GAIN / math.sqrt(HIDDEN)))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def data(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, SEQ_LEN, 1, generator=g)
    return DataLoader(TensorDataset(x, x[:, :10, 0].mean(dim=1, keepdim=True)), batch_size=16, shuffle=True)


def run(name: str, clip: float | None, steps: int, lr: float, log_dir: str) -> bool:
    """Train; print gradwatch's diagnosis; return whether the weights are still finite."""
    # The unclipped run explodes, diverges, spikes and ends in NaN at every step: gradwatch says so in two lines (the
    # explosion, then the NaN), and the summary at the end of fit lists every episode.
    callback = GradWatchCallback(clip=clip, every_n_steps=5, thresholds=Thresholds(exploding_norm=100.0))
    trainer = pl.Trainer(
        max_steps=steps, logger=pl.loggers.TensorBoardLogger(log_dir, name=name), callbacks=[callback],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, accelerator="cpu",
        log_every_n_steps=5)
    model = SequenceMean(lr)
    print(f"=== {name}: clip={clip}")
    trainer.fit(model, data(16 * steps))  # the summary of symptoms is printed at the end of fit
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    loss = trainer.callback_metrics.get("train_loss", torch.tensor(math.nan))
    assert callback.watcher is not None  # created by fit's setup
    history = callback.watcher.history
    exploding = sum(e.steps for e in history.episodes("exploding"))
    nonfinite = min((e.onset for e in history.episodes("nonfinite")), default=None)
    print(f"--> weights finite: {finite}; last loss {float(loss):.4g}; {exploding} steps with exploding gradients; "
          f"first NaN/Inf gradient: {'none' if nonfinite is None else f'step {nonfinite}'}. "
          f"TensorBoard: {trainer.logger.log_dir}\n")
    return finite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--log-dir", default="runs/rnn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run("unclipped", None, args.steps, args.lr, args.log_dir)
    run("clipped", args.clip, args.steps, args.lr, args.log_dir)


if __name__ == "__main__":
    main()
