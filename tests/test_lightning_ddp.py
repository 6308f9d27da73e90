"""GradWatchCallback under two-process DDP on the CPU (gloo, forked workers).

Each rank writes what it saw to a JSON file; the test reads both.
"""

from __future__ import annotations

import glob
import json
import os
from datetime import timedelta
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import Logger, TensorBoardLogger  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from gradwatch.lightning import GradWatchCallback  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*is smaller than the logging interval.*"),
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]

NAN_RANK, NAN_STEP, STEPS = 1, 2, 4


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)),
                          batch_size=4, shuffle=False)


class SpyLogger(Logger):
    """A logger that records every call, from whichever rank makes it (no rank-zero guard of its own)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    @property
    def name(self) -> str:
        return "spy"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        rank = int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank()))
        gw = sorted(k for k in metrics if k.startswith("gradwatch/"))
        if gw:
            with open(os.path.join(self.out_dir, f"spy-rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "tags": len(gw)}) + "\n")


class NaNOnOneRank(pl.Callback):
    """After the all-reduce (in on_before_optimizer_step, before gradwatch's), puts a NaN on one rank only."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.changed: dict[int, bool] = {}
        self._before: torch.Tensor | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._before = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()])

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if trainer.global_step == NAN_STEP and trainer.global_rank == NAN_RANK:
            pl_module.net[2].weight.grad[0, 0] = float("nan")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        after = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()])
        self.changed[trainer.global_step - 1] = not torch.equal(self._before, after)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        gw = next(cb for cb in trainer.callbacks if isinstance(cb, GradWatchCallback))
        result = {
            "changed": self.changed,
            "global_step": trainer.global_step,
            "sinks": len(gw.watcher.sinks) if gw.watcher is not None else -1,
            "weights": [float(v) for v in torch.cat([p.detach().flatten() for p in pl_module.parameters()])],
        }
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(result, f)


def ddp(out: str, action: str) -> None:
    # fork: the workers inherit the imports (spawn re-imports torch and Lightning in each: ~10 s of CPU apiece).
    # A short collective timeout: ranks that disagreed about stopping would otherwise wait for 30 minutes.
    strategy = DDPStrategy(start_method="fork", timeout=timedelta(seconds=60))
    trainer = pl.Trainer(
        default_root_dir=out, accelerator="cpu", devices=2, strategy=strategy, max_steps=STEPS,
        logger=[TensorBoardLogger(save_dir=out, name="tb"), SpyLogger(out)], log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=[NaNOnOneRank(out), GradWatchCallback(on_nonfinite=action, summary=False)])  # type: ignore[arg-type]
    trainer.fit(Tiny())


def ranks(out: str) -> list[dict[str, Any]]:
    results = []
    for r in (0, 1):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            results.append(json.load(f))
    return results


def test_two_process_ddp_stop_ends_fit_on_both_ranks(tmp_path: Any) -> None:
    ddp(str(tmp_path), "stop")
    for result in ranks(str(tmp_path)):
        assert result["global_step"] == NAN_STEP + 1
        assert result["changed"] == {str(s): s != NAN_STEP for s in range(NAN_STEP + 1)}


def test_two_process_ddp_rank_zero_writes_and_both_ranks_skip_the_nan_step(tmp_path: Any) -> None:
    out = str(tmp_path)
    ddp(out, "skip")

    r0, r1 = ranks(out)
    for result in (r0, r1):
        assert result["global_step"] == STEPS
        assert result["changed"] == {str(s): s != NAN_STEP for s in range(STEPS)}  # both ranks skipped step 2
    assert r0["weights"] == r1["weights"]  # the replicas did not diverge
    assert r0["sinks"] == 2  # TensorBoard + spy on rank zero
    assert r1["sinks"] == 0  # nothing elsewhere

    assert not os.path.exists(os.path.join(out, "spy-rank1.jsonl"))
    with open(os.path.join(out, "spy-rank0.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(STEPS))
    events = glob.glob(os.path.join(out, "tb", "*", "events.out.tfevents.*"))
    assert len(events) == 1  # one writer: rank zero's
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(events[0], size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("gradwatch/grad_norm/net.0")] == list(range(STEPS))
