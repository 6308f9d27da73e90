"""A tiny LightningModule fit with a GradWatchCallback and a TensorBoardLogger.

Shared by the report and server tests.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def fit_tiny(pl, root: str | os.PathLike[str], *, steps: int, log_every_n_steps: int, name: str,
             version: int | None = None, **callback_kwargs):
    """Train a 2-layer regression net for ``steps`` steps; returns the trainer."""
    from gradwatch.lightning import GradWatchCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(24, 4), torch.randn(24, 1)), batch_size=4)
    trainer = pl.Trainer(default_root_dir=root, max_steps=steps, enable_progress_bar=False,
                         log_every_n_steps=log_every_n_steps, enable_checkpointing=False, enable_model_summary=False,
                         logger=pl.loggers.TensorBoardLogger(str(root), name=name, version=version),
                         callbacks=[GradWatchCallback(summary=False, **callback_kwargs)])
    trainer.fit(Tiny(), loader)
    return trainer
