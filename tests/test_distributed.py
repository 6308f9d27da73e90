"""Two processes on the CPU (gloo, forked workers): DDP, FSDP2 ``fully_shard`` and FSDP1 ``use_orig_params=True`` give
the single-process numbers; decisions agree; rank zero writes alone; one collective per step.

Each wrapper runs once per module (a module-scoped fixture): every rank writes what it saw to a JSON file and the
tests read them back. An exception in a worker fails the fixture (``ProcessRaisedException``).
"""

from __future__ import annotations

import glob
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

import gradwatch
from conftest import reference_layer_stats, rel_close
from gradwatch._errors import ConfigurationError, GradWatchError, NonFiniteGradientError
from gradwatch.clipping import AGC, NormClip, ValueClip, ZScoreClip

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2
NAMES = ["0", "2", "4"]
MAX_NORM = 0.05  # below every test step's global norm: clipping is active
#: The one collective of a step (``all_gather_into_tensor`` before torch renamed it).
GATHER = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"


# ---------------------------------------------------------------------------------------------------- harness
def run_ranks(tmp: str, fn: Callable[[int, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``fn(rank, tmp)`` in two forked processes joined by a gloo FileStore; return each rank's result."""

    def worker(rank: int) -> None:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=60))
        try:
            result = fn(rank, tmp)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)

    torch.multiprocessing.start_processes(worker, nprocs=WORLD, start_method="fork")
    out = []
    for r in range(WORLD):
        with open(os.path.join(tmp, f"rank{r}.json")) as f:
            out.append(json.load(f))
    return out


class CollectiveCounter:
    """Counts the collectives issued while active (every public collective of ``torch.distributed``)."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "reduce_scatter",
             "reduce_scatter_tensor", "broadcast", "all_to_all", "all_to_all_single", "barrier", "reduce")

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active = False
        for name in self.NAMES:
            original = getattr(dist, name, None)
            if original is not None:
                setattr(dist, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.calls.append(name)
            return original(*args, **kwargs)

        return counted

    def step(self, watcher: gradwatch.Watcher, **kwargs: Any) -> tuple[gradwatch.StepReport, list[str]]:
        self.calls, self.active = [], True
        try:
            report = watcher.step(**kwargs)
        finally:
            self.active = False
        return report, self.calls


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.Tanh(), nn.Linear(3, 1))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 4, generator=g) * 3, torch.randn(8, 1, generator=g)


def backward(model: nn.Module, step: int, rank: int | None) -> None:
    """Rank ``r`` takes half of the step's batch; ``rank=None`` takes all of it (the single-process reference)."""
    x, y = batch(step)
    if rank is not None:
        x, y = x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4]
    nn.functional.mse_loss(model(x), y).backward()


def reference(step: int, *, clip: float | None = None, params: list[list[float]] | None = None,
              ) -> tuple[dict[str, Any], list[list[float]]]:
    """float64 per-layer (norm, max) of the unsharded model on the full batch, and its (clipped) gradients.

    ``params``: the model's parameters at that step (after training steps), flattened; default: initial ones.
    """
    model = make_model()
    if params is not None:
        with torch.no_grad():
            for p, v in zip(model.parameters(), params, strict=True):
                p.copy_(torch.tensor(v, dtype=p.dtype).view_as(p))
    backward(model, step, None)
    stats = reference_layer_stats(model)
    for layer in gradwatch._layers.discover_layers(model):
        param_norm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in layer.params))
        stats[layer.name] = (*stats[layer.name], param_norm)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    return stats, [p.grad.flatten().tolist() for p in model.parameters()]


def layer_dict(report: gradwatch.StepReport) -> dict[str, Any]:
    return {name: [s.grad_norm, s.grad_max, s.nonfinite, s.numel, s.param_norm] for name, s in report.layers.items()}


def assert_matches_reference(result: dict[str, Any], step: int, rtol: float = 1e-5, *, logged: bool = True) -> None:
    ref, _ = reference(step, params=result.get("params"))
    assert sorted(result["layers"]) == NAMES  # no module. / _fsdp_wrapped_module. prefix
    for name, (norm, mx, nonfinite, _numel, param_norm) in result["layers"].items():
        assert rel_close(norm, ref[name][0], rtol), (name, norm, ref[name][0])
        assert rel_close(mx, ref[name][1], rtol), (name, mx, ref[name][1])
        assert nonfinite is None
        if logged:  # the parameter norms of the whole model, reduced in the same collective
            assert rel_close(param_norm, ref[name][2], rtol), (name, param_norm, ref[name][2])
        else:
            assert param_norm is None
    numels = {name: sum(p.numel() for p in layer.params)
              for name, layer in zip(NAMES, gradwatch._layers.discover_layers(make_model()), strict=True)}
    assert {n: v[3] for n, v in result["layers"].items()} == numels  # whole layers, not this rank's shard
    total = math.sqrt(sum(ref[n][0] ** 2 for n in NAMES))
    assert rel_close(result["global_norm"], total, rtol)


def assert_all_close(got: list[list[float]], want: list[list[float]], rtol: float = 1e-5) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        for a, b in zip(g, w, strict=True):
            assert abs(a - b) <= rtol * max(abs(b), 1e-3), (a, b)


# ---------------------------------------------------------------------------------------------------- DDP
def ddp_worker(rank: int, tmp: str) -> dict[str, Any]:
    counter = CollectiveCounter()
    model = nn.parallel.DistributedDataParallel(make_model())
    out: dict[str, Any] = {}
    log_dir = os.path.join(tmp, "tb")  # the same path on every rank: only rank zero may create it

    watcher = gradwatch.watch(model, log_dir=log_dir, on_nonfinite="skip", clip=NormClip(MAX_NORM))
    out["sinks"] = len(watcher.sinks)
    out["kinds"] = list(watcher.distributed.kinds)
    out["steps"] = []
    for step in range(4):
        model.zero_grad()
        backward(model, step, rank)
        if step == 2 and rank == 1:  # after DDP's all-reduce, on one rank only
            model.module[2].weight.grad[0, 0] = float("nan")
        before = [p.detach().clone() for p in model.parameters()]
        params = [p.flatten().tolist() for p in before]
        report, calls = counter.step(watcher)
        grads = [p.grad.flatten().tolist() if p.grad is not None else None for p in model.parameters()]
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        changed = any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters(), strict=True))
        out["steps"].append({"skipped": report.skipped, "changed": changed, "calls": calls,
                             "layers": layer_dict(report), "global_norm": report.global_norm,
                             "clipped_norm": report.clipped_norm, "grads": grads, "params": params})
    watcher.close()

    # Unclipped statistics, every_n_steps=2: logged steps carry the parameter norms in the same collective.
    model = nn.parallel.DistributedDataParallel(make_model())
    # Replicated gradients: every clipper, unit-wise ones included, clips the same on every rank.
    with gradwatch.watch(model, clip=AGC(0.01)) as watcher:
        model.zero_grad()
        backward(model, 0, rank)
        watcher.step()
        out["agc_grads"] = [p.grad.flatten().tolist() for p in model.parameters()]
    with gradwatch.watch(model, every_n_steps=2) as watcher:
        for step in range(2):
            model.zero_grad()
            backward(model, step, rank)
            report, calls = counter.step(watcher)
            out[f"plain{step}"] = {"layers": layer_dict(report), "global_norm": report.global_norm, "calls": calls,
                                   "param_norms": {n: s.param_norm for n, s in report.layers.items()}}
        # Inside no_sync() the gradients are local: refused.
        model.zero_grad()
        with model.no_sync():
            backward(model, 0, rank)
            try:
                watcher.step()
                out["no_sync"] = "accepted"
            except GradWatchError as exc:
                out["no_sync"] = str(exc)

    # on_nonfinite="raise": every rank raises at the same step.
    model = nn.parallel.DistributedDataParallel(make_model())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watcher = gradwatch.watch(model, on_nonfinite="raise")
        model.zero_grad()
        backward(model, 0, rank)
        if rank == 0:
            model.module[4].bias.grad.fill_(float("inf"))
        try:
            watcher.step()
            out["raised"] = None
        except NonFiniteGradientError as exc:
            out["raised"] = exc.layers
        watcher.close()

    # Ranks watching different layers are refused at construction.
    try:
        gradwatch.watch(model, layers="0" if rank == 0 else "2").close()
        out["mismatch"] = None
    except ConfigurationError as exc:
        out["mismatch"] = str(exc)
    return out


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str]:
    tmp = str(tmp_path_factory.mktemp("ddp"))
    return run_ranks(tmp, ddp_worker), tmp


def test_ddp_per_layer_norms_equal_the_single_process_reference(ddp_results: Any) -> None:
    results, _ = ddp_results
    for r in results:
        assert r["kinds"] == ["ddp", "replicated"]
        assert_matches_reference(r["plain0"], 0)
        assert_matches_reference(r["plain1"], 1, logged=False)
        for step in (0, 1, 3):
            assert_matches_reference(r["steps"][step], step)


def test_ddp_clipping_equals_clip_grad_norm_of_the_reference(ddp_results: Any) -> None:
    results, _ = ddp_results
    for r in results:
        for step in (0, 1, 3):
            _, want = reference(step, clip=MAX_NORM, params=r["steps"][step]["params"])
            assert_all_close(r["steps"][step]["grads"], want)
            assert rel_close(r["steps"][step]["clipped_norm"], MAX_NORM, 1e-4)


def test_one_collective_per_step_under_ddp(ddp_results: Any) -> None:
    results, _ = ddp_results
    for r in results:
        # Statistics, the clip coefficient and the skip decision: one all_gather, nothing else.
        assert [s["calls"] for s in r["steps"]] == [[GATHER]] * 4
        # Logged and non-logged steps alike: the parameter norms travel in the logged step's collective.
        assert r["plain0"]["calls"] == [GATHER]
        assert r["plain1"]["calls"] == [GATHER]
    ref_model = make_model()
    want = {layer.name: math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in layer.params))
            for layer in gradwatch._layers.discover_layers(ref_model)}
    for r in results:
        assert r["plain0"]["param_norms"].keys() == want.keys()  # step 0 is logged, step 1 is not
        for name, value in want.items():
            assert rel_close(r["plain0"]["param_norms"][name], value, 1e-6)
            assert r["plain1"]["param_norms"][name] is None


def test_nan_on_one_rank_every_rank_skips_and_rank_zero_alone_writes(ddp_results: Any) -> None:
    results, tmp = ddp_results
    r0, r1 = results
    for r in results:
        assert [s["skipped"] for s in r["steps"]] == [False, False, True, False]
        assert [s["changed"] for s in r["steps"]] == [True, True, False, True]
        # The NaN of rank 1 is in both ranks' statistics (reduced), at the layer where it was put.
        assert r["steps"][2]["layers"]["2"][2] == "nan"
        assert r["steps"][2]["layers"]["0"][2] is None
    assert r0["sinks"] == 1
    assert r1["sinks"] == 0
    events = glob.glob(os.path.join(tmp, "tb", "events.out.tfevents.*"))
    assert len(events) == 1  # rank zero's; rank one opened no writer
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(events[0], size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("gradwatch/grad_norm/0")] == [0, 1, 2, 3]
    assert [e.value for e in acc.Scalars("gradwatch/symptoms/nonfinite")] == [0, 0, 1, 0]


def test_raise_is_agreed_and_no_sync_and_layer_mismatch_are_refused(ddp_results: Any) -> None:
    results, _ = ddp_results
    for r in results:
        assert r["raised"] == {"4": "inf"}  # rank 1 raises too, for rank 0's Inf
        assert "no_sync" in r["no_sync"]
        assert "local" in r["no_sync"]
        assert r["mismatch"] is not None
        assert "same layers on every rank" in r["mismatch"]


# ---------------------------------------------------------------------------------------------------- FSDP2
def fsdp2_worker(rank: int, tmp: str) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    counter = CollectiveCounter()
    out: dict[str, Any] = {}

    def sharded() -> nn.Module:
        model = make_model()
        for sub in model:
            if isinstance(sub, nn.Linear):
                fully_shard(sub)
        fully_shard(model)
        return model

    model = sharded()
    out["empty"] = [n for n, p in model.named_parameters() if p.to_local().numel() == 0]
    out["kinds_layers"] = [layer.kind for layer in gradwatch._layers.discover_layers(model)]
    with gradwatch.watch(model, clip=MAX_NORM, on_nonfinite="skip") as watcher:
        out["kinds"] = list(watcher.distributed.kinds)
        for step in range(2):
            model.zero_grad()
            backward(model, step, rank)
            report, calls = counter.step(watcher)
            out[f"step{step}"] = {"layers": layer_dict(report), "global_norm": report.global_norm, "calls": calls,
                                  "clipped_norm": report.clipped_norm,
                                  "grads": [p.grad.full_tensor().flatten().tolist() for p in model.parameters()]}

    # ValueClip: element-wise, then the clipped global norm is measured again: one more (summing) collective.
    with gradwatch.watch(model, clip=ValueClip(0.01)) as watcher:
        model.zero_grad()
        backward(model, 0, rank)
        report, calls = counter.step(watcher)
        out["value_clip"] = {"clipped_norm": report.clipped_norm, "calls": calls,
                             "grads": [p.grad.full_tensor().flatten().tolist() for p in model.parameters()]}

    refusals = {}
    for key, kwargs in (("norm_type", {"clip": NormClip(1.0, norm_type=1.0)}),
                        ("histograms", {"histogram_every_n_steps": 1}),
                        ("agc", {"clip": AGC(0.01)}), ("zscore", {"clip": ZScoreClip()})):
        try:
            gradwatch.watch(model, **kwargs).close()
            refusals[key] = None
        except ConfigurationError as exc:
            refusals[key] = str(exc)
    out["refusals"] = refusals

    # Gradient sync switched off (FSDP2's no_sync): refused. Last: FSDP2 keeps the unsynchronised gradients.
    with gradwatch.watch(model) as watcher:
        model.zero_grad()
        model.set_requires_gradient_sync(False)
        backward(model, 0, rank)
        try:
            watcher.step()
            out["no_sync"] = "accepted"
        except GradWatchError as exc:
            out["no_sync"] = str(exc)
    return out


@pytest.fixture(scope="module")
def fsdp2_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(str(tmp_path_factory.mktemp("fsdp2")), fsdp2_worker)


def test_fsdp2_per_layer_norms_and_clipped_gradients_equal_the_unsharded_reference(fsdp2_results: Any) -> None:
    assert fsdp2_results[1]["empty"] == ["4.weight", "4.bias"]  # rank 1 holds no piece of the last layer
    for r in fsdp2_results:
        assert r["kinds"] == ["dtensor", "fsdp2"]
        assert r["kinds_layers"] == ["Linear"] * 3  # not FSDPLinear
        for step in (0, 1):
            assert_matches_reference(r[f"step{step}"], step)
            _, want = reference(step, clip=MAX_NORM)
            assert_all_close(r[f"step{step}"]["grads"], want)
            assert rel_close(r[f"step{step}"]["clipped_norm"], MAX_NORM, 1e-4)
            assert r[f"step{step}"]["calls"] == [GATHER]


def test_fsdp2_value_clip_equals_clip_grad_value_and_costs_one_more_collective(fsdp2_results: Any) -> None:
    model = make_model()
    backward(model, 0, None)
    torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
    want = [p.grad.flatten().tolist() for p in model.parameters()]
    norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
    for r in fsdp2_results:
        assert_all_close(r["value_clip"]["grads"], want)
        assert rel_close(r["value_clip"]["clipped_norm"], norm, 1e-5)
        assert r["value_clip"]["calls"] == [GATHER, GATHER]


def test_fsdp2_refuses_local_gradients_and_wrong_numbers(fsdp2_results: Any) -> None:
    for r in fsdp2_results:
        assert "set_requires_gradient_sync(False)" in r["no_sync"]
        assert "norm_type=1.0" in r["refusals"]["norm_type"]
        assert "histogram_every_n_steps" in r["refusals"]["histograms"]
        assert "AGC" in r["refusals"]["agc"]
        assert "sharded" in r["refusals"]["agc"]
        assert r["refusals"]["zscore"] is None  # clips from the global norm: fine under sharding


def test_ddp_accepts_unit_wise_clippers_and_ranks_agree(ddp_results: Any) -> None:
    results, _ = ddp_results
    assert results[0]["agc_grads"] == results[1]["agc_grads"]


# ---------------------------------------------------------------------------------------------------- FSDP1
def fsdp1_worker(rank: int, tmp: str) -> dict[str, Any]:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    counter = CollectiveCounter()
    out: dict[str, Any] = {}
    model = FSDP(make_model(), use_orig_params=True, device_id=torch.device("cpu"))
    out["empty"] = [n for n, p in model.named_parameters() if p.numel() == 0]
    with gradwatch.watch(model, clip=MAX_NORM) as watcher:
        out["kinds"] = list(watcher.distributed.kinds)
        for step in range(2):
            model.zero_grad()
            backward(model, step, rank)
            out[f"none{step}"] = [n for n, p in model.named_parameters() if p.grad is None]
            report, calls = counter.step(watcher)
            with FSDP.summon_full_params(model, with_grads=True):
                grads = [p.grad.flatten().tolist() for p in model.parameters()]
            out[f"step{step}"] = {"layers": layer_dict(report), "global_norm": report.global_norm, "calls": calls,
                                  "clipped_norm": report.clipped_norm, "grads": grads}
    # Large worlds: two all_reduce calls (SUM, MAX) instead of one all_gather; the same numbers.
    from gradwatch import _distributed as distributed

    limit, distributed.GATHER_LIMIT = distributed.GATHER_LIMIT, 0
    try:
        with gradwatch.watch(model) as watcher:
            model.zero_grad()
            backward(model, 0, rank)
            report, calls = counter.step(watcher)
            out["large"] = {"layers": layer_dict(report), "global_norm": report.global_norm, "calls": calls}
    finally:
        distributed.GATHER_LIMIT = limit
    try:
        gradwatch.watch(FSDP(make_model(), use_orig_params=False, device_id=torch.device("cpu"))).close()
        out["flat"] = None
    except ConfigurationError as exc:
        out["flat"] = str(exc)
    return out


@pytest.fixture(scope="module")
def fsdp1_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(str(tmp_path_factory.mktemp("fsdp1")), fsdp1_worker)


def test_fsdp1_per_layer_norms_equal_the_reference_on_every_rank(fsdp1_results: Any) -> None:
    r0, r1 = fsdp1_results
    # Each rank holds no piece of some parameter, whose .grad is then None there.
    prefix = "_fsdp_wrapped_module."
    assert prefix + "2.weight" in r0["empty"]
    assert prefix + "0.weight" in r1["empty"]
    assert prefix + "2.weight" in r0["none0"]
    assert prefix + "0.weight" in r1["none0"]
    for r in fsdp1_results:
        assert r["kinds"] == ["fsdp1"]
        for step in (0, 1):
            assert_matches_reference(r[f"step{step}"], step)
            _, want = reference(step, clip=MAX_NORM)
            assert_all_close(r[f"step{step}"]["grads"], want)  # clipped by the global norm
            assert r[f"step{step}"]["calls"] == [GATHER]
        assert "use_orig_params=True" in r["flat"]
        assert_matches_reference(r["large"], 0)
        assert r["large"]["calls"] == ["all_reduce", "all_reduce"]


# ---------------------------------------------------------------------------------------------------- tensor parallel
def tp_worker(rank: int, tmp: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (WORLD,))
    model = parallelize_module(make_model(), mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    counter = CollectiveCounter()
    with gradwatch.watch(model, clip=MAX_NORM) as watcher:
        backward(model, 0, None)  # tensor parallel: the same batch on every rank
        placements = [str(getattr(p.grad, "placements", "plain")) for p in model.parameters()]
        report, calls = counter.step(watcher)
        grads = [(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).flatten().tolist()
                 for p in model.parameters()]
    return {"layers": layer_dict(report), "global_norm": report.global_norm, "calls": calls, "grads": grads,
            "placements": placements}


def test_tensor_parallel_norms_and_clipped_gradients_equal_the_reference(tmp_path: Any) -> None:
    for r in run_ranks(str(tmp_path), tp_worker):
        # Sharded by rows, by columns, a replicated DTensor bias, and plain (replicated) tensors: each counted once.
        assert r["placements"] == ["(Shard(dim=0),)", "(Shard(dim=0),)", "(Shard(dim=1),)", "(Replicate(),)",
                                   "plain", "plain"]
        assert_matches_reference(r, 0)
        assert_all_close(r["grads"], reference(0, clip=MAX_NORM)[1])
        assert r["calls"] == [GATHER]


# ---------------------------------------------------------------------------------------------------- one process
def test_single_process_issues_no_collective(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not dist.is_initialized()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a collective in a single process")

    for name in CollectiveCounter.NAMES:
        if hasattr(dist, name):
            monkeypatch.setattr(dist, name, refuse)
    model = make_model()
    backward(model, 0, None)
    with gradwatch.watch(model, clip=MAX_NORM, on_nonfinite="skip") as watcher:
        report = watcher.step()
        assert watcher.distributed is None
    assert rel_close(report.layers["2"].grad_norm, reference(0)[0]["2"][0], 1e-6)


def test_wrapper_segments_are_dropped_from_layer_names() -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        checkpoint_wrapper,
    )

    model = nn.Sequential(nn.Linear(2, 2), checkpoint_wrapper(nn.Linear(2, 2)))
    assert [layer.name for layer in gradwatch._layers.discover_layers(model)] == ["0", "1"]


@pytest.fixture(autouse=True)
def _no_leftover_group() -> Iterator[None]:
    yield
    assert not dist.is_initialized()


def off_worker(rank: int, tmp: str) -> dict[str, Any]:
    # Only rank 0 watches, with distributed="off": no collective, so rank 1 never has to call watch().
    if rank != 0:
        return {}
    counter = CollectiveCounter()
    model = make_model()
    with gradwatch.watch(model, distributed="off") as watcher:
        backward(model, 0, rank)
        report, calls = counter.step(watcher)
    return {"calls": calls, "distributed": watcher.distributed is not None, "norm": report.global_norm}


def test_distributed_off_watches_one_rank_without_collectives(tmp_path: Any) -> None:
    r0, _r1 = run_ranks(str(tmp_path), off_worker)
    assert r0["calls"] == []
    assert r0["distributed"] is False
    assert r0["norm"] > 0
