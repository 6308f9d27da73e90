"""Several processes (DDP, FSDP1, FSDP2/DTensor): statistics from local shards, reduced across ranks in one collective.

When ``torch.distributed`` is initialised with more than one process, ``detect()`` returns a
``DistributedContext`` and the engine (``gradwatch._stats.StatsEngine``) hands it each step's work. Every
rank computes, from the gradient pieces it holds, per-layer *partials*: sums of squares (weighted by the fraction of
the world holding the same piece, so that replicas count once), maxima of ``|g|``, and on logged steps the parameters'
sums of squares. One collective combines them (``DistributedContext.reduce()``): an ``all_gather`` of the packed
partials, summed and maxed locally in the same order on every rank, so that every rank holds bit-identical
statistics. Norms, non-finite flags, the global norm, the clipping coefficient and the skip/raise decisions are
derived from them, hence equal everywhere without any further collective.

What a piece of gradient is, by wrapper:

- DTensor gradients (FSDP2 ``fully_shard``, tensor parallel): ``grad.to_local()``; a piece is held by
  ``world / (product of the mesh sizes of the Shard dimensions)`` ranks. ``Partial`` gradients (a reduction still
  pending) are refused.
- FSDP1 (``FullyShardedDataParallel(use_orig_params=True)``): the original parameters' gradient views of the local
  flat shard; a rank that holds no piece of a parameter has ``grad=None`` there and contributes nothing.
- Everything else (DDP, or gradients you all-reduce yourself) is replicated: every rank holds all of it.

>>> from torch import nn
>>> detect(nn.Linear(2, 2)) is None  # no process group: the single-process path, unchanged and free
True
"""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._clip.fixed import NormClip, ValueClip
from ._errors import ConfigurationError, GradWatchError
from ._layers import Layer
from ._reductions import Bucket, LayerTotals, foreach_norms, group_buckets, norms_maxabs
from ._stats import DeviceStats, GradBatch, GradGroup
from ._tensors import accumulate_dtype

__all__ = ["GATHER_LIMIT", "DistributedContext", "detect", "is_distributed"]

#: Up to this many values (world size x packed partials) the reduction is one ``all_gather``; above, two
#: ``all_reduce`` calls (SUM, MAX) whose size does not grow with the world.
GATHER_LIMIT = 1 << 18


def is_distributed() -> bool:
    """Whether a process group with more than one process is initialised (``torch.distributed``).

    >>> is_distributed()
    False
    """
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1)


def _dtensor_cls() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return None
    return DTensor


@dataclass
class _Piece:
    """How one parameter's gradient is held on this rank."""

    weight: float  # fraction of the world holding the same piece, inverted: replicas count once in a sum
    numel: int  # entries of the whole (unsharded) parameter
    proxy: nn.Parameter  # whose ``.grad`` tells whether the parameter has a gradient (FSDP1: the flat parameter)
    dtensor: bool


class DistributedContext:
    """What this rank holds of each watched gradient, and the one collective that combines the ranks' partials.

    Built by ``detect()``; the engine calls ``compute()`` and ``param_norms()`` instead of its own
    single-process path.

    Attributes:
        rank: this process's global rank; only rank zero writes to sinks.
        world_size: number of processes.
        kinds: the wrappers found (``"ddp"``, ``"fsdp1"``, ``"fsdp2"``, ``"dtensor"``, ``"replicated"``).
        sharded: whether some gradient is split across ranks (then histograms are refused: they need every entry).
        collectives: collectives issued so far by this context (one per ``compute()``).
    """

    def __init__(self, model: nn.Module, layers: Sequence[Layer], *, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.collectives = 0
        self._layers = list(layers)
        self._pieces: dict[int, _Piece] = {}
        self._sync_checks: list[tuple[str, Callable[[], Any]]] = []
        kinds: set[str] = set()
        self._find_pieces(model, kinds)
        self._ddp_checks(model, kinds)
        self._fsdp2_checks(model, kinds)
        self.kinds = tuple(sorted(kinds))
        self.sharded = any(piece.weight * world_size > 1.5 for piece in self._pieces.values())
        self._buckets: list[Bucket] = group_buckets([layer.params for layer in self._layers],
                                                    lambda p: self._pieces[id(p)].weight)
        self.home = self._buckets[0].device if self._buckets else torch.device("cpu")
        # NCCL moves CUDA tensors only: partials of CPU-offloaded gradients travel through the current GPU.
        self._comm_device: torch.device | None = None
        if torch.distributed.get_backend() == "nccl" and self.home.type == "cpu":
            self._comm_device = torch.device("cuda", torch.cuda.current_device())

    # ------------------------------------------------------------------ detection
    def _find_pieces(self, model: nn.Module, kinds: set[str]) -> None:
        """How this rank holds each watched parameter's gradient (``self._pieces``); wrappers found go to ``kinds``."""
        fsdp1 = self._fsdp1_pieces(model, kinds)
        dtensor = _dtensor_cls()
        for layer in self._layers:
            for p in layer.params:
                if dtensor is not None and isinstance(p, dtensor):
                    self._pieces[id(p)] = self._dtensor_piece(p, layer.name)
                    kinds.add("dtensor")
                elif id(p) in fsdp1:
                    self._pieces[id(p)] = fsdp1[id(p)]
                else:
                    self._pieces[id(p)] = _Piece(1.0 / self.world_size, p.numel(), p, False)
                    kinds.add("replicated")

    def _dtensor_piece(self, p: Any, name: str) -> _Piece:
        mesh = p.device_mesh
        if self.world_size % mesh.size():
            raise ConfigurationError(
                f"Layer {name!r} is a DTensor on a {mesh.size()}-process mesh in a {self.world_size}-process job: "
                "gradwatch needs meshes whose size divides the world size (the ranks outside a mesh holding "
                "replicas, as the other data-parallel replicas do).")
        shard_factor = 1
        for dim, placement in enumerate(p.placements):
            if placement.is_shard():
                shard_factor *= mesh.size(dim)
            elif placement.is_partial():
                raise ConfigurationError(f"Parameter of layer {name!r} has a Partial placement: gradwatch cannot "
                                         "tell its value; only Shard and Replicate placements are supported.")
        return _Piece(shard_factor / self.world_size, p.numel(), p, True)

    def _fsdp1_pieces(self, model: nn.Module, kinds: set[str]) -> dict[int, _Piece]:
        try:
            from torch.distributed.fsdp import (
                FullyShardedDataParallel,
                ShardingStrategy,
            )
        except ImportError:  # pragma: no cover
            return {}
        pieces: dict[int, _Piece] = {}
        for unit in FullyShardedDataParallel.fsdp_modules(model):
            kinds.add("fsdp1")
            if not unit._use_orig_params:
                raise ConfigurationError(
                    "FullyShardedDataParallel(use_orig_params=False) flattens the layers into one parameter: "
                    "gradwatch cannot see per-layer gradients. Wrap with use_orig_params=True.")
            strategy = unit.sharding_strategy
            if strategy in (ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP):
                group: Any = unit.process_group
                if group.size() != self.world_size:
                    raise ConfigurationError(f"An FSDP unit shards over {group.size()} of "
                                             f"{self.world_size} processes: gradwatch supports the whole world only.")
                weight = 1.0
            elif strategy == ShardingStrategy.NO_SHARD:
                weight = 1.0 / self.world_size
            else:
                raise ConfigurationError(f"FSDP sharding_strategy={strategy} is not supported by gradwatch; supported: "
                                         "FULL_SHARD, SHARD_GRAD_OP, NO_SHARD (or FSDP2 fully_shard with a 2-D mesh "
                                         "for hybrid sharding).")
            handle = unit._handle
            if handle is None:
                continue
            flat = handle.flat_param
            for p, numel in zip(flat._params or (), flat._numels, strict=True):  # one numel per original parameter
                pieces[id(p)] = _Piece(weight, int(numel), flat, False)
            self._sync_checks.append(("FSDP no_sync()", _flag_reader(unit, "_sync_gradients")))
        return pieces

    def _ddp_checks(self, model: nn.Module, kinds: set[str]) -> None:
        for m in model.modules():
            if isinstance(m, nn.parallel.DistributedDataParallel):
                kinds.add("ddp")
                if m.process_group.size() != self.world_size:
                    raise ConfigurationError(f"DistributedDataParallel over {m.process_group.size()} of "
                                             f"{self.world_size} processes is not supported by gradwatch.")
                self._sync_checks.append(("DDP no_sync()", _flag_reader(m, "require_backward_grad_sync")))

    def _fsdp2_checks(self, model: nn.Module, kinds: set[str]) -> None:
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # pragma: no cover
            return
        for m in model.modules():
            if isinstance(m, FSDPModule):
                kinds.add("fsdp2")
                self._sync_checks.append(("set_requires_gradient_sync(False)", _fsdp2_sync_reader(m)))

    # ------------------------------------------------------------------ per step
    def check_synced(self) -> None:
        """Refuse a step whose gradients were not synchronised (inside DDP/FSDP ``no_sync``): they are local.

        Raises:
            GradWatchError: naming the context manager and the way out.
        """
        for what, synced in self._sync_checks:
            if not synced():
                raise GradWatchError(
                    f"watcher.step() was called while gradient synchronisation is off ({what}): the gradients are "
                    "this rank's local accumulation, not the global ones. Call watcher.step() after the backward "
                    "that runs with synchronisation on (the last micro-batch, outside no_sync()), before "
                    "optimizer.step().")

    def compute(self, layer_names: Sequence[str], *, with_params: bool) -> DeviceStats:
        """This step's statistics, reduced across ranks in one collective (with the parameter norms if asked)."""
        self.check_synced()
        home = self.home
        acc = accumulate_dtype(home)
        n = len(layer_names)
        totals = LayerTotals(n, acc, home, direct=False)
        has_grad = [False] * n
        numel = [0] * n
        groups: list[GradGroup] = []
        for b in self._buckets:
            kept, grads = self._local_grads(b, layer_names, has_grad, numel)
            if not grads:
                continue
            idx = b.index(kept)
            norms, maxabs = norms_maxabs(grads, b.dtype, b.device)
            maxabs = maxabs.to(acc)
            groups.append(GradGroup(b.device, b.dtype, [b.params[i] for i in kept], grads, idx, norms, b.weight))
            sq = norms.to(acc).square()
            if b.weight != 1.0:
                sq = sq * b.weight
            totals.add(idx, sq, maxabs, b.device)
        sums = torch.cat([totals.sumsq, self._param_sumsq(n)]) if with_params else totals.sumsq
        sums, maxes = self.reduce(sums, totals.maxabs)
        sumsq = sums[:n]
        total = sumsq.sum().sqrt()
        batch = GradBatch(groups=groups, layer_names=layer_names, total_norm=total, home=home,
                          reduce=self.reduce_sums)
        param_norm = sums[n:].sqrt() if with_params else None
        return DeviceStats(sumsq, maxes, total, has_grad, numel, batch, param_norm=param_norm)

    def _local_grads(self, b: Bucket, layer_names: Sequence[str], has_grad: list[bool],
                     numel: list[int]) -> tuple[tuple[int, ...], list[Tensor]]:
        """The pieces of ``b``'s gradients this rank holds, and their positions in ``b``; notes in ``has_grad`` and
        ``numel`` which layers have a gradient on any rank."""
        kept: list[int] = []
        grads: list[Tensor] = []
        for i, (p, li) in enumerate(zip(b.params, b.layer_of, strict=True)):
            piece = self._pieces[id(p)]
            if piece.proxy.grad is not None:  # global presence (FSDP1: the flat parameter has a gradient)
                has_grad[li] = True
                numel[li] += piece.numel
            g = p.grad
            if g is None:
                continue
            if piece.dtensor:
                g = _local(g, p, layer_names[li])
            if g.numel() == 0:  # this rank holds no piece of it
                continue
            kept.append(i)
            grads.append(g)
        return tuple(kept), grads

    def param_norms(self, n: int) -> Tensor:
        """Per-layer parameter norms of the whole model (one collective)."""
        sums, _ = self.reduce(self._param_sumsq(n), torch.zeros(0, dtype=accumulate_dtype(self.home), device=self.home))
        return sums.sqrt()

    def _param_sumsq(self, n: int) -> Tensor:
        totals = LayerTotals(n, accumulate_dtype(self.home), self.home, direct=False)
        for b in self._buckets:
            kept, data = [], []
            for i, p in enumerate(b.params):
                t = _to_local(p) if self._pieces[id(p)].dtensor else p
                if t.numel():
                    kept.append(i)
                    data.append(t.detach())
            if data:
                sq = foreach_norms(data, b.dtype).to(totals.acc).square()
                if b.weight != 1.0:
                    sq = sq * b.weight
                totals.add_sumsq(b.index(tuple(kept)), sq, b.device)
        return totals.sumsq

    # ------------------------------------------------------------------ the collective
    def reduce(self, sums: Tensor, maxes: Tensor) -> tuple[Tensor, Tensor]:
        """Sum ``sums`` and take the max of ``maxes`` over every rank, in one collective when it is small.

        An ``all_gather`` of both, reduced locally in rank order: every rank gets bit-identical results, and NaN
        propagates through both the sum and the max. Above ``GATHER_LIMIT`` values, an ``all_reduce(SUM)`` and an
        ``all_reduce(MAX)`` instead.
        """
        if self._comm_device is not None:
            out_sums, out_maxes = self._reduce_on(self._comm_device, sums, maxes)
            # Intended host sync (CPU-offloaded gradients under NCCL only): the results come back to the CPU.
            return out_sums.to(sums.device), out_maxes.to(maxes.device)
        return self._reduce_on(None, sums, maxes)

    def _reduce_on(self, device: torch.device | None, sums: Tensor, maxes: Tensor) -> tuple[Tensor, Tensor]:
        dist = torch.distributed
        if device is not None:
            sums, maxes = sums.to(device), maxes.to(device)
        n_sums = sums.numel()
        if self.world_size * (n_sums + maxes.numel()) <= GATHER_LIMIT:
            payload = torch.cat([sums, maxes.to(sums.dtype)])
            out = payload.new_empty(self.world_size * payload.numel())
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            gather(out, payload)  # not a host sync: on CUDA the collective is queued on the stream
            self.collectives += 1
            out = out.view(self.world_size, -1)
            return out[:, :n_sums].sum(0), out[:, n_sums:].amax(0)
        sums = sums.clone()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        self.collectives += 1
        if maxes.numel():
            maxes = maxes.clone()
            dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
            self.collectives += 1
        return sums, maxes

    def reduce_sums(self, sums: Tensor) -> Tensor:
        """Sum over ranks only (a clipped global norm measured again after clipping)."""
        return self.reduce(sums, sums.new_zeros(0))[0]

    def agree_on_layers(self, names: Sequence[str]) -> None:
        """Check once, at construction, that every rank watches the same layers (else the collectives would mix).

        Raises:
            ConfigurationError: when the ranks' layer lists differ.
        """
        digest = zlib.crc32("\n".join(names).encode()) & 0x7FFFFFFF
        mine = torch.tensor([digest, len(names)], dtype=torch.float64, device=self._comm_device or self.home)
        both = torch.stack([mine, -mine])
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
        # Intended host sync, once per watcher: construction is not on the training step's path.
        if not torch.equal(both[0], -both[1]):
            raise ConfigurationError(
                f"Rank {self.rank} watches {len(names)} layers, but other ranks watch a different list: gradwatch "
                "needs the same layers on every rank (the same model and layers= everywhere; no pipeline stages).")

    # ------------------------------------------------------------------ configuration checks
    def check_config(self, *, clipper: Any, histograms: bool) -> None:
        """Refuse what would give wrong numbers across ranks.

        Raises:
            ConfigurationError: a clipper that is not reduction-aware; histograms of sharded gradients.
        """
        if clipper is not None and self.sharded:  # replicated gradients (DDP) clip the same on every rank
            ok = (isinstance(clipper, NormClip) and clipper.norm_type == 2.0) or isinstance(clipper, ValueClip) or \
                bool(getattr(clipper, "supports_distributed", False))
            if not ok:
                raise ConfigurationError(
                    f"clip={clipper!r} is not supported with sharded gradients ({self.world_size} processes): it "
                    "would clip with this rank's partial norms. Supported: NormClip(max_norm) (L2), ValueClip(value), "
                    "or a clipper with supports_distributed = True that clips from GradBatch.total_norm and "
                    "GradBatch.reduce.")
        if histograms and self.sharded:
            raise ConfigurationError(
                "histogram_every_n_steps is not supported with sharded gradients (FSDP, DTensor): each rank holds "
                "only part of every layer. Leave histogram_every_n_steps=None, or use DDP.")

    def __repr__(self) -> str:
        return f"DistributedContext(rank={self.rank}, world_size={self.world_size}, kinds={self.kinds})"


def _to_local(t: Any) -> Tensor:
    """This rank's piece of a DTensor."""
    local: Tensor = t.to_local()
    return local


def _local(g: Tensor, p: Any, name: str) -> Tensor:
    placements = getattr(g, "placements", None)
    if placements is None:  # a plain tensor gradient on a DTensor parameter: taken as it is
        return g
    if placements != p.placements:
        if any(pl.is_partial() for pl in placements):
            raise GradWatchError(f"The gradient of layer {name!r} is a Partial DTensor (a reduction is still pending): "
                                 "call watcher.step() after the gradients are reduced.")
        raise GradWatchError(f"The gradient of layer {name!r} has placements {placements}, its parameter "
                             f"{p.placements}: gradwatch needs them equal.")
    return _to_local(g)


def _flag_reader(module: nn.Module, attr: str) -> Callable[[], bool]:
    ref = weakref.ref(module)

    def synced() -> bool:
        m = ref()
        return True if m is None else bool(getattr(m, attr, True))

    return synced


def _fsdp2_sync_reader(module: nn.Module) -> Callable[[], bool]:
    ref = weakref.ref(module)

    def synced() -> bool:
        m = ref()
        if m is None:
            return True
        state = m._get_fsdp_state()  # type: ignore[operator]
        return all(group.reduce_grads for group in state._fsdp_param_groups)

    return synced


def detect(model: nn.Module, layers: Sequence[Layer] | None = None) -> DistributedContext | None:
    """The distributed context of ``model``'s gradients, or ``None`` in a single process (no cost then).

    Args:
        model: the watched model (DDP, FSDP1, FSDP2 or DTensor-parallel, or a plain replicated module).
        layers: the watched layers (default: every layer of ``model``).

    Raises:
        ConfigurationError: for set-ups whose numbers gradwatch cannot make right (FSDP1 without
            ``use_orig_params``, hybrid FSDP1, meshes or groups of part of the world, DeepSpeed engines).
    """
    if not is_distributed():
        return None
    if type(model).__module__.split(".")[0] == "deepspeed":
        raise ConfigurationError(
            "DeepSpeed engines are not supported by gradwatch: ZeRO partitions gradients outside the module's "
            "parameters, so per-layer norms would be silently wrong. Use DDP, FSDP (use_orig_params=True) or FSDP2.")
    if layers is None:
        from ._layers import discover_layers

        layers = discover_layers(model)
    dist = torch.distributed
    return DistributedContext(model, layers, rank=dist.get_rank(), world_size=dist.get_world_size())

