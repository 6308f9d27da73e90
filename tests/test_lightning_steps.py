"""GradWatchCallback writes on Lightning's own logging steps, at Lightning's step numbers.

Lightning writes a batch's ``self.log(..., on_step=True)`` metrics when ``(batches_that_stepped + 1) %
log_every_n_steps == 0``, at step ``batches_that_stepped``: with ``log_every_n_steps=7``, at steps 6, 13, 20. The
callback's scalars must land on exactly those steps, in ``metrics.csv`` (CSVLogger) and in the TensorBoard event files
(TensorBoardLogger), with the values of those batches' gradients.
"""

from __future__ import annotations

import csv
import importlib
import math
import os
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradwatch.lightning import GradWatchCallback

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
    pytest.mark.filterwarnings("ignore:.*is smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*tensorboardX.*"),
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint.*"),
    pytest.mark.filterwarnings("ignore:.*weights_only.*"),
    pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning"),
]

NORM = "gradwatch/grad_norm/net.0"


def module_class(pl: Any) -> type:
    class Logged(pl.LightningModule):
        """Logs ``train_loss`` on every step, as most LightningModules do; records net.0's gradient norm by hand."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
            self.hand: dict[int, float] = {}  # Lightning's logging step -> net.0's gradient norm, in float64

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            return loss

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
            grads = [p.grad for p in self.net[0].parameters() if p.grad is not None]
            self.hand[step] = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Logged


def loader(n_batches: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(4 * n_batches, 4, generator=g), torch.randn(4 * n_batches, 1,
                                                                                            generator=g)),
                      batch_size=4, shuffle=False)


def fit(pl: Any, tmp_path: Any, n_batches: int, callback: GradWatchCallback, *, name: str = "run",
        ckpt_path: str | None = None, model: Any = None, **kw: Any) -> tuple[Any, Any, Any, Any]:
    loggers = importlib.import_module(f"{pl.__name__}.loggers")
    csv_logger = loggers.CSVLogger(save_dir=tmp_path, name=f"{name}_csv")
    tb = loggers.TensorBoardLogger(save_dir=tmp_path, name=f"{name}_tb")
    model = model if model is not None else module_class(pl)()
    kw.setdefault("max_epochs", 1)
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=[csv_logger, tb],
                         callbacks=[callback], **kw)
    trainer.fit(model, loader(n_batches), ckpt_path=ckpt_path)
    return trainer, model, csv_logger, tb


def csv_steps(csv_logger: Any, column: str) -> list[int]:
    with open(os.path.join(csv_logger.log_dir, "metrics.csv"), newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get(column)]


def tb_scalars(tb: Any, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_scalars_share_lightnings_steps_in_metrics_csv_and_tensorboard(namespace: str, tmp_path: Any) -> None:
    pl = pytest.importorskip(namespace)
    _, model, csv_logger, tb = fit(pl, tmp_path, 21, GradWatchCallback(summary=False), log_every_n_steps=7)
    assert csv_steps(csv_logger, "train_loss") == [6, 13, 20]  # Lightning's own rule, for reference
    assert csv_steps(csv_logger, NORM) == [6, 13, 20]
    assert csv_steps(csv_logger, "gradwatch/global/grad_norm") == [6, 13, 20]
    assert [s for s, _ in tb_scalars(tb, "train_loss")] == [6, 13, 20]
    written = tb_scalars(tb, NORM)
    assert [s for s, _ in written] == [6, 13, 20]
    assert [v for _, v in written] == pytest.approx([model.hand[s] for s in (6, 13, 20)], rel=1e-5)


def test_manual_optimization_with_one_optimizer_shares_lightnings_steps(tmp_path: Any) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    base = module_class(pl)

    class Manual(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            self.manual_backward(loss)
            opt.step()

    _, model, csv_logger, tb = fit(pl, tmp_path, 9, GradWatchCallback(summary=False), model=Manual(),
                                   log_every_n_steps=3)
    assert csv_steps(csv_logger, "train_loss") == [2, 5, 8]
    assert csv_steps(csv_logger, NORM) == [2, 5, 8]
    assert [v for _, v in tb_scalars(tb, NORM)] == pytest.approx([model.hand[s] for s in (2, 5, 8)], rel=1e-5)


def test_gradient_accumulation_logs_on_lightnings_optimizer_steps(tmp_path: Any) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    _, model, csv_logger, tb = fit(pl, tmp_path, 12, GradWatchCallback(summary=False), log_every_n_steps=3,
                                   accumulate_grad_batches=2)  # 6 optimizer steps: Lightning logs after the 3rd, 6th
    assert csv_steps(csv_logger, "train_loss") == [2, 5]
    assert csv_steps(csv_logger, NORM) == [2, 5]
    assert [v for _, v in tb_scalars(tb, NORM)] == pytest.approx([model.hand[2], model.hand[5]], rel=1e-5)


@pytest.mark.parametrize(("every", "expected"), [(3, [2, 5, 8, 11]), (6, [5, 11]), (1, list(range(12)))])
def test_explicit_every_n_steps_counts_as_lightning_does(tmp_path: Any, every: int, expected: list[int]) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    _, _, csv_logger, _ = fit(pl, tmp_path, 12, GradWatchCallback(every_n_steps=every, summary=False),
                              log_every_n_steps=3)
    assert csv_steps(csv_logger, "train_loss") == [2, 5, 8, 11]
    assert csv_steps(csv_logger, NORM) == expected  # every 3: Lightning's rows; every 6: every other one of them


def test_log_every_n_steps_zero_writes_no_per_layer_scalars(tmp_path: Any) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    _, _, _, tb = fit(pl, tmp_path, 5, GradWatchCallback(summary=False), log_every_n_steps=0)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb.log_dir)
    acc.Reload()
    assert NORM not in acc.Tags()["scalars"]


def test_a_resumed_fit_goes_on_at_lightnings_steps(tmp_path: Any) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    first, _, _, _ = fit(pl, tmp_path, 14, GradWatchCallback(summary=False), name="first", max_steps=9,
                         log_every_n_steps=4, max_epochs=2)
    ckpt = os.path.join(tmp_path, "first.ckpt")
    first.save_checkpoint(ckpt)
    _, model, csv_logger, tb = fit(pl, tmp_path, 14, GradWatchCallback(summary=False), name="second",
                                   ckpt_path=ckpt, max_steps=14, log_every_n_steps=4, max_epochs=2)
    assert sorted(model.hand) == [9, 10, 11, 12, 13]  # the resumed steps, numbered on from the checkpoint
    assert csv_steps(csv_logger, "train_loss") == [11]
    assert csv_steps(csv_logger, NORM) == [11]
    assert [v for _, v in tb_scalars(tb, NORM)] == pytest.approx([model.hand[11]], rel=1e-5)
