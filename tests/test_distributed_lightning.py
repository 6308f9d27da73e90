"""GradWatchCallback in two-process Lightning runs on the CPU: ``ddp``, ``FSDPStrategy`` and ``ModelParallelStrategy``.

The two workers are forked by the test with a torchelastic-like environment, so Lightning takes them as processes
created externally and launches nothing; each runs the three strategies one after the other in one process group.

Lightning refuses ``FSDPStrategy`` on the CPU (``accelerator='cpu'`` fails its exact-type check, and it would give FSDP
``device_id=None``, which FSDP refuses without an accelerator). The test therefore runs a subclass of it, with the
LightningModule wrapping its network in ``FullyShardedDataParallel(use_orig_params=True, device_id=cpu)`` in
``configure_model`` (the strategy's own path for a module wrapped already). ``ModelParallelStrategy`` runs on the CPU
as it is (FSDP2 ``fully_shard`` in ``configure_model``).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
# E402: these imports follow the importorskip on purpose (the module is skipped, not broken, without Lightning)
from lightning.pytorch.strategies import (  # noqa: E402
    DDPStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
)

from conftest import reference_layer_stats, rel_close  # noqa: E402
from gradwatch._errors import ConfigurationError  # noqa: E402
from gradwatch._sinks import MemorySink  # noqa: E402
from gradwatch.lightning import GradWatchCallback, unsupported_strategy  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*is smaller than the logging interval.*"),
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
]

MAX_NORM, LR = 0.05, 0.1
STRATEGIES = ("ddp", "fsdp", "model_parallel")


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(16, 4, generator=g) * 3, torch.randn(16, 1, generator=g))


class Net(pl.LightningModule):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.Tanh(), nn.Linear(3, 1))

    def configure_model(self) -> None:
        if self.kind == "model_parallel":
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for m in self.net:
                if isinstance(m, nn.Linear):
                    fully_shard(m, mesh=mesh)
            fully_shard(self, mesh=mesh)
        elif self.kind == "fsdp" and not isinstance(self.net, torch.distributed.fsdp.FullyShardedDataParallel):
            from torch.distributed.fsdp import FullyShardedDataParallel

            self.net = FullyShardedDataParallel(self.net, use_orig_params=True, device_id=torch.device("cpu"))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen = [x.tolist(), y.tolist()]
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(dataset(), batch_size=4, shuffle=False)  # Lightning adds a DistributedSampler


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` itself: a subclass only gets past Lightning's exact-type GPU check."""


def full_params(module: Net) -> list[list[float]]:
    if module.kind == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(module.net):
            return [p.detach().flatten().tolist() for p in module.net.parameters()]
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().flatten().tolist()
            for p in module.net.parameters()]


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", GROUP_RANK="0", TORCHELASTIC_RUN_ID="gradwatch-test")
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    for kind in STRATEGIES:
        strategy = {"ddp": lambda: DDPStrategy(), "fsdp": lambda: CPUFSDPStrategy(),
                    "model_parallel": lambda: ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                    }[kind]()
        sink = MemorySink()
        callback = GradWatchCallback(clip=MAX_NORM, sinks=[sink], summary=False)
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=1, logger=False,
                             log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False,
                             callbacks=[callback])
        module = Net(kind)
        trainer.fit(module)
        result[kind] = {
            "kinds": list(callback.watcher.distributed.kinds),
            "names": callback.watcher.layer_names,
            "scalars": {tag: dict(values) for tag, values in sink.scalars.items()},  # tag -> {step: value}
            "params": full_params(module),
            "batch": module.seen,
        }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = str(tmp_path_factory.mktemp("lightning"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = dict(os.environ)
    try:
        torch.multiprocessing.start_processes(worker, args=(port, out), nprocs=2, start_method="fork")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    ranks = []
    for r in (0, 1):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            ranks.append(json.load(f))
    return ranks


def reference(batches: list[list[Any]]) -> tuple[dict[str, Any], list[list[float]]]:
    """The unsharded network on the global batch (both ranks' batches together), clipped, after one SGD step."""
    module = Net("reference")
    x = torch.tensor([row for b in batches for row in b[0]])
    y = torch.tensor([row for b in batches for row in b[1]])
    nn.functional.mse_loss(module.net(x), y).backward()
    stats = reference_layer_stats(module.net)
    torch.nn.utils.clip_grad_norm_(module.parameters(), MAX_NORM)
    with torch.no_grad():
        for p in module.parameters():
            p -= LR * p.grad
    return stats, [p.detach().flatten().tolist() for p in module.net.parameters()]


@pytest.mark.parametrize("kind", STRATEGIES)
def test_callback_norms_and_clipped_step_equal_the_single_process_reference(results: Any, kind: str) -> None:
    r0, r1 = results[0][kind], results[1][kind]
    assert r0["batch"] != r1["batch"]  # each rank had its own half of the global batch
    stats, params = reference([r0["batch"], r1["batch"]])
    assert r0["names"] == ["net.0", "net.2", "net.4"]  # no module. / _fsdp_wrapped_module. prefixes
    assert set(r0["kinds"]) == {"ddp": {"ddp", "replicated"}, "fsdp": {"fsdp1"},
                                "model_parallel": {"dtensor", "fsdp2"}}[kind]
    assert r1["scalars"] == {}  # rank one's sinks were dropped: it computes and decides, never writes
    scalars = {tag: values["0"] for tag, values in r0["scalars"].items()}
    for name in ("0", "2", "4"):
        assert rel_close(scalars[f"gradwatch/grad_norm/net.{name}"], stats[name][0], 1e-5)
        assert rel_close(scalars[f"gradwatch/grad_max/net.{name}"], stats[name][1], 1e-5)
    assert rel_close(scalars["gradwatch/global/grad_norm_clipped"], MAX_NORM, 1e-4)
    for r in (r0, r1):  # the optimizer step used the globally clipped gradients (Lightning itself refuses this)
        for got, want in zip(r["params"], params, strict=True):
            assert all(abs(a - b) <= 1e-5 * max(abs(b), 1e-3) for a, b in zip(got, want, strict=True))


def test_deepspeed_is_refused_with_a_clear_message() -> None:
    class DeepSpeedStrategy:  # stands for Lightning's (deepspeed is not installed here)
        pass

    class Custom(DeepSpeedStrategy):
        pass

    message = unsupported_strategy(Custom())
    assert message is not None
    assert "DeepSpeed" in message
    assert "strategy='ddp'" in message
    assert unsupported_strategy(DDPStrategy()) is None

    class Trainer:
        gradient_clip_val = None
        strategy = Custom()

    with pytest.raises(ConfigurationError, match="does not support Custom"):
        GradWatchCallback().setup(Trainer(), None, "fit")
