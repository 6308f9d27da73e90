"""The statistics engine: per-layer gradient norms, maxima and non-finite flags from fused ops, on the device.

Nothing in this module reads a device value on the host: every result stays a tensor until the watcher moves one
packed vector to the host, once per logged step. The reductions themselves live in ``gradwatch._reductions``; with
several processes a ``StatsBackend`` (``gradwatch._distributed.DistributedContext``) does the work instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ._layers import Layer, follow_layers, registrations
from ._reductions import (
    Bucket,
    LayerTotals,
    Present,
    cpu_sumsq,
    foreach_maxabs,
    foreach_norms,
    fused_bucket,
    group_buckets,
    param_sumsq,
    reduce_tensors,
)
from ._tensors import accumulate_dtype, any_sparse

__all__ = ["DeviceStats", "GradBatch", "GradGroup", "StatsBackend", "StatsEngine", "host_nonfinite_codes"]


@dataclass
class GradGroup:
    """The gradients of one (device, dtype) group that are present this step.

    Attributes:
        device: the device of every tensor of the group.
        dtype: the gradients' dtype.
        params: parameters whose ``.grad`` is not ``None`` this step, in a fixed order.
        grads: their gradients (the live ``.grad`` tensors: clipping them in place clips the model's gradients).
        layer_index: index of each tensor's layer, a long tensor on ``device``.
        tensor_norms: per-tensor L2 norm (float32 or float64) on ``device``.
        weight: with several processes, the inverse of how many ranks hold these same pieces (1.0: each piece is on
            one rank, or one process; 1/world: replicated, as under DDP). ``grads`` and ``tensor_norms`` are then
            this rank's local pieces (DTensor ``to_local()``, FSDP1 shard views).

    Examples:
        A clipper that caps every tensor's norm at 1 on its own, from the norms already measured:

        >>> import torch, gradwatch
        >>> from gradwatch.clipping import Clipper, ClipResult, GradBatch
        >>> class PerTensor(Clipper):
        ...     def clip(self, batch: GradBatch) -> ClipResult:
        ...         for group in batch.groups:  # one GradGroup per (device, dtype)
        ...             coefs = (1.0 / (group.tensor_norms + 1e-6)).clamp(max=1.0)
        ...             torch._foreach_mul_(group.grads, list(coefs.unbind()))
        ...         return ClipResult()
        >>> model = torch.nn.Linear(2, 1)
        >>> model.weight.grad, model.bias.grad = torch.tensor([[3.0, 4.0]]), torch.tensor([0.5])
        >>> with gradwatch.watch(model, clip=PerTensor()) as watcher:
        ...     _ = watcher.step()
        >>> model.weight.grad, model.bias.grad
        (tensor([[0.6000, 0.8000]]), tensor([0.5000]))
    """

    device: torch.device
    dtype: torch.dtype
    params: list[nn.Parameter]
    grads: list[Tensor]
    layer_index: Tensor
    tensor_norms: Tensor
    weight: float = 1.0


@dataclass
class GradBatch:
    """Everything a clipper needs about this step's gradients, all on the device: what ``Clipper.clip()`` receives.

    Attributes:
        groups: the gradients grouped by (device, dtype).
        layer_names: names of the watched layers; ``layer_index`` in each group indexes this list.
        total_norm: global L2 norm over every present gradient, a 0-d float tensor on ``home``.
        home: the device holding the aggregated results.
        reduce: with several processes, sums a 1-d tensor over every rank (one collective); ``None`` in one process.
            ``total_norm`` is already the global norm; a clipper that measures anything else must reduce it.

    Examples:
        A clipper that only looks:

        >>> import torch, gradwatch
        >>> from gradwatch.clipping import Clipper, ClipResult, GradBatch
        >>> class Look(Clipper):
        ...     def clip(self, batch: GradBatch) -> ClipResult:
        ...         print(list(batch.layer_names), float(batch.total_norm), len(batch.groups))
        ...         return ClipResult(clipped_norm=batch.total_norm)
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Linear(1, 1))
        >>> for p in model.parameters():
        ...     p.grad = torch.zeros_like(p)
        >>> model[0].bias.grad = torch.tensor([3.0])
        >>> model[1].weight.grad = torch.tensor([[4.0]])
        >>> with gradwatch.watch(model, clip=Look()) as watcher:
        ...     _ = watcher.step()
        ['0', '1'] 5.0 1
    """

    groups: list[GradGroup]
    layer_names: Sequence[str]
    total_norm: Tensor
    home: torch.device
    reduce: Callable[[Tensor], Tensor] | None = None

    def recompute_total_norm(self) -> Tensor:
        """Global L2 norm of the gradients as they are now (after a clipper changed them)."""
        acc = accumulate_dtype(self.home)
        total = torch.zeros((), dtype=acc, device=self.home)
        for g in self.groups:
            norms = foreach_norms(g.grads, g.dtype)
            sq = norms.to(self.home, acc, non_blocking=True).square().sum()
            total = total + (sq if g.weight == 1.0 else sq * g.weight)
        if self.reduce is not None:  # several processes: one collective (gradwatch._distributed)
            total = self.reduce(total.reshape(1)).reshape(())
        return total.sqrt()


@dataclass
class DeviceStats:
    """One step's statistics, still on the device (``home``)."""

    layer_sumsq: Tensor  # (L,) sum of squares of each layer's gradients
    layer_max: Tensor | None  # (L,) max |g| per layer; None on a step that did not measure it (logs nothing)
    total_norm: Tensor  # () global L2 norm
    has_grad: list[bool]  # host-known: which layers had at least one gradient
    numel: list[int]  # host-known: gradient entries per layer
    batch: GradBatch
    param_norm: Tensor | None = None  # (L,) when compute(with_params=True) measured them (several processes)
    host_norm: float | None = None  # total_norm as a host float, when the sums were added up on the host (CPU)

    def cpu_norm(self) -> float:
        """The global norm where reading it waits for nothing (the CPU); 0.0 elsewhere (not read)."""
        if self.host_norm is not None:
            return self.host_norm
        return float(self.total_norm) if self.total_norm.device.type == "cpu" else 0.0

    @property
    def nonfinite(self) -> Tensor:
        """(L,) 0 finite, 1 NaN, 2 Inf, on the device: built only when a decision needs it on the device (the host
        derives the same codes from the packed sums and maxima, see ``host_nonfinite_codes()``)."""
        # 1 where a NaN reached the sum of squares or the max (a NaN + anything is NaN; a collective MAX may drop a
        # NaN, a SUM does not), else 2 where the max is Inf (a sum of squares that overflowed from finite entries is
        # not Inf). Without the maxima, from the sums alone (see host_nonfinite_codes).
        ref = self.layer_sumsq if self.layer_max is None else self.layer_max
        nan = self.layer_sumsq.isnan() if self.layer_max is None else (self.layer_sumsq + self.layer_max).isnan()
        return ref.isinf().to(ref.dtype).mul_(2).masked_fill_(nan, 1.0)


def host_nonfinite_codes(sumsq: np.ndarray, maxabs: np.ndarray | None) -> np.ndarray:
    """``DeviceStats.nonfinite`` from the sums of squares and maxima on the host (int64).

    Without the maxima (a step that logs nothing), from the sums alone: NaN where the sum is NaN, Inf where it is
    Inf. The sums accumulate in float64 (on the CPU and CUDA), where squares of float32, bfloat16 or float16 entries
    cannot overflow: an Inf sum means an Inf entry. Only float64 gradients over about 1e154 could read as Inf from
    finite entries; on the CPU such a step measures its maxima too (its sums are not finite), so the codes are exact.

    Examples:
        >>> host_nonfinite_codes(np.array([1.0, np.nan, np.inf]), None).tolist()
        [0, 1, 2]
    """
    if maxabs is None:
        return np.where(np.isnan(sumsq), 1, np.where(np.isinf(sumsq), 2, 0))
    return np.where(np.isnan(sumsq + maxabs), 1, np.where(np.isinf(maxabs), 2, 0))


class StatsBackend(Protocol):
    """Who computes the statistics in place of the engine's single-process path (several processes:
    ``gradwatch._distributed.DistributedContext``, which reduces them across ranks)."""

    def compute(self, layer_names: Sequence[str], *, with_params: bool) -> DeviceStats:
        """This step's statistics of every layer (with the parameter norms if ``with_params``)."""
        ...

    def param_norms(self, n: int) -> Tensor:
        """The L2 norm of each of the ``n`` layers' parameters."""
        ...


class _Presence:
    """Which layers had a gradient this step, and how many entries: tracked only once a gradient is missing (until
    then every layer had all of its gradients, which the engine knows without a loop)."""

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.has_grad: list[bool] | None = None
        self.numel: list[int] = []

    def record(self, before: Sequence[Bucket], present: Present) -> None:
        """Note ``present``, the gradients of the bucket that follows the buckets ``before``."""
        if self.has_grad is None:
            if present.kept is None:
                return
            self.has_grad, self.numel = [False] * self.n_layers, [0] * self.n_layers
            for b in before:  # the buckets before had every gradient
                self._add(b.layer_of, b.params)
        self._add(present.layer_of, present.params)

    def _add(self, layer_of: Sequence[int], params: Sequence[nn.Parameter]) -> None:
        assert self.has_grad is not None
        for li, p in zip(layer_of, params, strict=True):
            self.has_grad[li] = True
            self.numel[li] += p.numel()

    def result(self, all_has_grad: list[bool], all_numel: list[int]) -> tuple[list[bool], list[int]]:
        """(has_grad, numel) per layer; ``all_*`` when no gradient was missing."""
        if self.has_grad is None:
            return list(all_has_grad), list(all_numel)
        return self.has_grad, self.numel


class HostTotals:
    """Per-layer sums of squares of CPU buckets, added up by numpy (float64): ``LayerTotals`` without the maxima, for
    a step that logs nothing. The results are tensors sharing numpy's memory."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sums: np.ndarray | None = None

    def add(self, idx: Tensor, sq: Tensor, maxabs: Tensor | None, device: torch.device) -> None:
        """Add per-tensor float64 sums of squares ``sq`` by layer ``idx`` (CPU tensors; ``maxabs`` is not taken)."""
        part = np.bincount(idx.numpy(), weights=sq.numpy(), minlength=self.n)  # NaN and Inf propagate
        self.sums = part if self.sums is None else self.sums + part

    def result(self) -> tuple[Tensor, Tensor]:
        """(per-layer sums of squares, the global norm as a 0-d tensor), float64 on the CPU."""
        sums = np.zeros(self.n) if self.sums is None else self.sums
        return torch.from_numpy(sums), torch.from_numpy(np.asarray(math.sqrt(np.add.reduce(sums))))


class StatsEngine:
    """Computes per-layer gradient statistics for a fixed list of layers.

    The grouping of parameters by (device, dtype) is computed once and re-checked cheaply each step (a model moved
    with ``.to()`` after ``watch`` is regrouped). A parameter assigned anew on its module after ``watch``
    (``model[0].weight = nn.Parameter(...)``) is followed: the engine looks for one only when a parameter was registered
    somewhere since the last step (one integer comparison a step, see ``gradwatch._layers.follow_layers()``).
    """

    def __init__(self, layers: Sequence[Layer], *, dist: StatsBackend | None = None) -> None:
        self._dist = dist  # several processes: gradwatch._distributed computes and reduces; None: this module alone
        self.layer_names = [layer.name for layer in layers]
        self._layers = list(layers)
        self._registrations = registrations()
        self._buckets: list[Bucket] = []
        self._regroup()

    def close(self) -> None:
        """Drop every reference to the parameters."""
        self._layers.clear()  # in place: whoever holds ``layers`` lets go of them too
        self._buckets = []

    @property
    def layers(self) -> list[Layer]:
        """The layers as the engine measures them now: a parameter assigned anew after ``watch`` in its old one's
        place. One list, updated in place, for the life of the engine."""
        return self._layers

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for b in self._buckets for p in b.params]

    def _regroup(self) -> None:
        self._numel = [[p.numel() for p in layer.params] for layer in self._layers]
        self._buckets = group_buckets([layer.params for layer in self._layers])
        for b in self._buckets:
            if b.device.type == "cpu" and b.dtype.is_floating_point:
                b.plan_flat()
        self._home = self._buckets[0].device if self._buckets else torch.device("cpu")
        self._all_cpu = all(b.device.type == "cpu" for b in self._buckets)
        # One CPU bucket whose sums come from one fused norm: a step that logs nothing takes _host_sums().
        lean = len(self._buckets) == 1 and fused_bucket(self._buckets[0])
        self._lean_index = np.asarray(self._buckets[0].layer_of, dtype=np.int64) if lean else None
        # What a step where every watched parameter has a gradient knows on the host (the common case).
        self._all_has_grad = [bool(sizes) for sizes in self._numel]
        self._all_numel = [sum(sizes) for sizes in self._numel]

    def _stale(self) -> bool:
        # One check per bucket, not per tensor: catches a model moved or cast as a whole after watch().
        return any(b.moved() for b in self._buckets)

    def _follow(self) -> None:
        """Take up the parameters the layers' modules hold now, if any was assigned anew (see the class)."""
        self._registrations = registrations()
        followed = follow_layers(self._layers)
        if followed is not None:
            self._layers[:] = followed  # in place: see layers
            self._regroup()

    @property
    def home(self) -> torch.device:
        return self._home

    def compute(self, *, with_params: bool = False, with_max: bool = True) -> DeviceStats:
        """Reduce this step's gradients to per-layer statistics, without any host synchronisation.

        With several processes the statistics are reduced across ranks (one collective); ``with_params`` then also
        measures the parameter norms in the same collective (``DeviceStats.param_norm``), and the maxima are always
        measured. In one process ``with_params`` is ignored (``param_norms()`` measures them), and without
        ``with_max`` the maxima are not (``DeviceStats.layer_max`` is ``None``; ``grad_maxima()`` takes them later).
        """
        if self._dist is not None:
            return self._dist.compute(self.layer_names, with_params=with_params)
        if self._registrations != registrations():  # an int comparison: a parameter was registered somewhere
            self._follow()
        if self._stale():
            self._regroup()
        if not with_max and self._lean_index is not None:
            lean = self._host_sums(self._buckets[0], self._lean_index)
            if lean is not None:
                return lean
        home = self._home
        acc = accumulate_dtype(home)
        n_layers = len(self.layer_names)
        # One bucket (the common case): reduce straight into the result, no partial vectors. Sums alone on the CPU:
        # added up by numpy, whose calls cost a fraction of torch's on vectors this small.
        totals: LayerTotals | HostTotals = (
            HostTotals(n_layers) if not with_max and self._all_cpu
            else LayerTotals(n_layers, acc, home, direct=len(self._buckets) == 1))
        presence = _Presence(n_layers)
        groups: list[GradGroup] = []
        for bi, b in enumerate(self._buckets):
            present = b.present()
            presence.record(self._buckets[:bi], present)
            if not present.grads:
                continue
            idx = b.index(present.kept)
            norms, sq, maxabs = reduce_tensors(present.grads, b.dtype, b.device, acc, present.flat, with_max=with_max)
            groups.append(GradGroup(b.device, b.dtype, present.params, present.grads, idx, norms))
            totals.add(idx, sq, maxabs, b.device)
        has_grad, numel = presence.result(self._all_has_grad, self._all_numel)
        if isinstance(totals, HostTotals):
            sumsq, total_norm = totals.result()
            batch = GradBatch(groups=groups, layer_names=self.layer_names, total_norm=total_norm, home=home)
            return DeviceStats(sumsq, None, total_norm, has_grad, numel, batch)
        total_norm = totals.sumsq.sum().sqrt()
        batch = GradBatch(groups=groups, layer_names=self.layer_names, total_norm=total_norm, home=home)
        return DeviceStats(totals.sumsq, totals.maxabs if with_max else None, total_norm, has_grad, numel, batch)

    def _host_sums(self, b: Bucket, layer_index: np.ndarray) -> DeviceStats | None:
        """``compute(with_max=False)`` of one CPU bucket whose gradients are dense and all present, in few calls (a
        step that logs nothing, late in a run: the common step); ``None`` for any other step."""
        present = b.present()
        if present.kept is not None or any_sparse(present.grads):
            return None
        norms, sq = cpu_sumsq(present.grads, b.dtype)
        sums = np.bincount(layer_index, weights=sq.numpy(), minlength=len(self.layer_names))  # NaN, Inf propagate
        norm = math.sqrt(np.add.reduce(sums))
        total = torch.from_numpy(np.asarray(norm))
        group = GradGroup(b.device, b.dtype, present.params, present.grads, b.index(), norms)
        batch = GradBatch(groups=[group], layer_names=self.layer_names, total_norm=total, home=self._home)
        return DeviceStats(torch.from_numpy(sums), None, total, list(self._all_has_grad), list(self._all_numel), batch,
                           host_norm=norm)

    def grad_maxima(self, batch: GradBatch) -> Tensor:
        """Per-layer max |g| of ``batch``'s gradients, on ``home``: for a step that measured its sums alone and turns
        out to log (a decision, non-finite sums). Called before clipping changes the gradients."""
        totals = LayerTotals(len(self.layer_names), accumulate_dtype(self._home), self._home, direct=False)
        for g in batch.groups:
            totals.add_max(g.layer_index, foreach_maxabs(g.grads, g.device).to(totals.acc), g.device)
        return totals.maxabs

    def param_norms(self) -> Tensor:
        """Per-layer L2 norm of the parameters, on ``home``: one flat reduction or fused norm per bucket."""
        if self._dist is not None:
            return self._dist.param_norms(len(self.layer_names))
        home = self._home
        acc = accumulate_dtype(home)
        totals = LayerTotals(len(self.layer_names), acc, home, direct=False)
        with torch.no_grad():  # no autograd graph and no per-tensor detach()
            for b in self._buckets:
                totals.add_sumsq(b.index(), param_sumsq(b.params, b.dtype, acc, b.flat), b.device)
        return totals.sumsq.sqrt()
