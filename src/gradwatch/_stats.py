"""The statistics engine: per-layer gradient norms, maxima and non-finite flags from fused ops, on the device.

Nothing in this module reads a device value on the host: every result stays a tensor until the watcher moves one
packed vector to the host, once per logged step.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from ._layers import Layer

if TYPE_CHECKING:
    from ._distributed import DistributedContext

__all__ = ["GradBatch", "GradGroup", "StatsEngine"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def accumulate_dtype(device: torch.device) -> torch.dtype:
    """Aggregation dtype: float64 where the device has it, so that sums of squares of huge norms do not overflow."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


@dataclass
class GradGroup:
    """The gradients of one (device, dtype) group that are present this step.

    Attributes:
        params: parameters whose ``.grad`` is not ``None`` this step, in a fixed order.
        grads: their gradients (the live ``.grad`` tensors: clipping them in place clips the model's gradients).
        layer_index: index of each tensor's layer, a long tensor on ``device``.
        tensor_norms: per-tensor L2 norm (float32 or float64) on ``device``.
        weight: with several processes, the inverse of how many ranks hold these same pieces (1.0: each piece is on
            one rank, or one process; 1/world: replicated, as under DDP). ``grads`` and ``tensor_norms`` are then
            this rank's local pieces (DTensor ``to_local()``, FSDP1 shard views).
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
    """Everything a clipper needs about this step's gradients, all on the device.

    Attributes:
        groups: the gradients grouped by (device, dtype).
        layer_names: names of the watched layers; ``layer_index`` in each group indexes this list.
        total_norm: global L2 norm over every present gradient, a 0-d float tensor on ``home``.
        home: the device holding the aggregated results.
        reduce: with several processes, sums a 1-d tensor over every rank (one collective); ``None`` in one process.
            ``total_norm`` is already the global norm; a clipper that measures anything else must reduce it.
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
            norms = _foreach_norms(g.grads, g.dtype)
            sq = norms.to(self.home, acc, non_blocking=True).square().sum()
            total = total + (sq if g.weight == 1.0 else sq * g.weight)
        if self.reduce is not None:  # several processes: one collective (gradwatch._distributed)
            total = self.reduce(total.reshape(1)).reshape(())
        return total.sqrt()


@dataclass
class _Bucket:
    """Parameters of one (device, dtype), with index tensors cached by which of them have a gradient.

    On the CPU the parameters are ordered small first: the first ``n_small`` (at most ``_FLAT_NUMEL`` entries each)
    are reduced together from one flat copy, which costs one kernel for all of them instead of a few per tensor.
    """

    device: torch.device
    dtype: torch.dtype
    params: list[nn.Parameter]
    layer_of: list[int]
    index_cache: dict[tuple[bool, ...] | None, Tensor] = field(default_factory=dict)
    n_small: int = 0
    segments: _Segments | None = None  # where each of the first n_small parameters lies in their flat copy
    # Runs of the first n_small parameters that share their shape after the first dimension: each run is one ``cat``
    # along dim 0 (no per-tensor view); 0-d parameters form runs of their own. See ``_Run``.
    runs: list[_Run] = field(default_factory=list)

    def index(self, present: tuple[bool, ...] | None) -> Tensor:
        idx = self.index_cache.get(present)
        if idx is None:
            ids = self.layer_of if present is None else [i for i, keep in zip(self.layer_of, present) if keep]
            idx = torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True)
            if len(self.index_cache) > 64:  # patterns of missing grads that keep changing: do not grow for ever
                self.index_cache.clear()
            self.index_cache[present] = idx
        return idx


@dataclass
class DeviceStats:
    """One step's statistics, still on the device (``home``)."""

    layer_sumsq: Tensor  # (L,) sum of squares of each layer's gradients
    layer_max: Tensor  # (L,) max |g| per layer
    total_norm: Tensor  # () global L2 norm
    has_grad: list[bool]  # host-known: which layers had at least one gradient
    numel: list[int]  # host-known: gradient entries per layer
    batch: GradBatch
    param_norm: Tensor | None = None  # (L,) when compute(with_params=True) measured them (several processes)

    @property
    def nonfinite(self) -> Tensor:
        """(L,) 0 finite, 1 NaN, 2 Inf, on the device: built only when a decision needs it on the device (the host
        derives the same codes from the packed sums and maxima, see :func:`host_nonfinite_codes`)."""
        # 1 where a NaN reached the sum of squares or the max (a NaN + anything is NaN; a collective MAX may drop a
        # NaN, a SUM does not), else 2 where the max is Inf (a sum of squares that overflowed from finite entries is
        # not Inf).
        return self.layer_max.isinf().to(self.layer_max.dtype).mul_(2).masked_fill_(
            (self.layer_sumsq + self.layer_max).isnan(), 1.0)


def host_nonfinite_codes(sumsq: np.ndarray, maxabs: np.ndarray) -> np.ndarray:
    """:attr:`DeviceStats.nonfinite` from the sums of squares and maxima on the host (int64)."""
    return np.where(np.isnan(sumsq + maxabs), 1, np.where(np.isinf(maxabs), 2, 0))


def _foreach_norms(grads: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Per-tensor L2 norms in one fused call (float32 accumulation for half types)."""
    try:
        norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32 if dtype in _LOW_PRECISION else None)
    except (RuntimeError, NotImplementedError):
        # Sparse gradients (nn.Embedding(sparse=True)) have no fused norm: their coalesced values carry the norm.
        norms = [torch.linalg.vector_norm(_dense_values(g), dtype=torch.float32 if dtype in _LOW_PRECISION else None)
                 for g in grads]
    return torch.stack(norms)


def _dense_values(g: Tensor) -> Tensor:
    return g.coalesce().values() if g.is_sparse else g


_CPU_TINY = 1024  # below this many entries a tensor's max |g| is cheaper inside one fused CPU inf-norm


def _foreach_maxabs(grads: list[Tensor], device: torch.device) -> Tensor:
    """Per-tensor max |g| (NaN propagates).

    One fused inf-norm on accelerators. On the CPU the inf-norm kernel costs about 5 ns per entry against 0.2 ns for
    ``aminmax``, whose call costs about 5 us more (one thread, the 2-core CI machine): tensors under ``_CPU_TINY``
    entries go through one fused inf-norm, the others through ``aminmax`` (4x faster at 4,608 entries, 18x at 262,144).
    """
    try:
        if device.type != "cpu":
            return torch.stack(torch._foreach_norm(grads, float("inf")))
        tiny = [i for i, g in enumerate(grads) if g.numel() < _CPU_TINY]
        if len(tiny) == len(grads):
            return torch.stack(torch._foreach_norm(grads, float("inf")))
        tiny_max = torch._foreach_norm([grads[i] for i in tiny], float("inf")) if tiny else []
    except (RuntimeError, NotImplementedError):  # sparse gradients: aminmax of their values, one by one
        tiny, tiny_max = [], []
    tiny_set = set(tiny)
    others = [i for i in range(len(grads)) if i not in tiny_set]
    rest = [grads[i] for i in others] if tiny else grads
    lows, highs = [], []
    for g in rest:
        values = _dense_values(g)
        lo, hi = torch.aminmax(values if values.numel() else values.new_zeros(1))  # aminmax refuses empty tensors
        lows.append(lo)
        highs.append(hi)
    rest_max = torch.maximum(torch.stack(highs), torch.stack(lows).neg())  # maximum propagates NaN
    if not tiny:
        return rest_max
    out = torch.empty(len(grads), dtype=rest_max.dtype, device=rest_max.device)
    out[tiny] = torch.stack(tiny_max).to(rest_max.dtype)
    out[others] = rest_max
    return out


def _norms_maxabs(grads: list[Tensor], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-tensor L2 norms (as :func:`_foreach_norms`) and max |g| (as :func:`_foreach_maxabs`).

    On the CPU, where ``_foreach_norm`` is a loop over tensors anyway, both reductions of a tensor run back to back,
    while it is still in cache (a 1 MiB gradient is read from L2 the second time, not from memory: 20-25% less time
    for the pair on the MLP benchmark). Elsewhere, and with tiny or sparse tensors, two fused calls.
    """
    if device.type != "cpu" or any(g.is_sparse or g.numel() < _CPU_TINY for g in grads):
        return _foreach_norms(grads, dtype), _foreach_maxabs(grads, device)
    norm_dtype = torch.float32 if dtype in _LOW_PRECISION else None
    norms, lows, highs = [], [], []
    for g in grads:
        norms.append(torch.linalg.vector_norm(g, dtype=norm_dtype))
        lo, hi = torch.aminmax(g)
        lows.append(lo)
        highs.append(hi)
    return torch.stack(norms), torch.maximum(torch.stack(highs), torch.stack(lows).neg())  # maximum propagates NaN


# CPU only: tensors of at most this many entries are reduced from one flat copy (one ``cat`` per run of equal
# trailing shape and two numpy ``reduceat`` calls for all of them). Per-call overhead (a few microseconds per tensor
# and op) dominates below this size; above it the copy would cost more than it saves, and the copy stays small (each
# tensor copied is at most 16 KiB in float32).
_FLAT_NUMEL = 4096


@dataclass(frozen=True)
class _Run:
    """Tensors ``first:last`` of a bucket share ``trailing``, their shape after dim 0 (``(-1,)``: 0-d tensors)."""

    first: int
    last: int
    trailing: tuple[int, ...]


def _flatten(tensors: list[Tensor], runs: list[_Run] | None, dtype: torch.dtype) -> Tensor:
    """One 1-D copy of ``tensors`` in ``dtype``, in order, that shares no memory with them.

    With ``runs`` (see ``_Bucket.runs``): one ``cat`` per run of tensors of the same trailing shape (a view and a copy
    per tensor cost four times as much). Each ``cat`` sizes its own output, so a parameter whose shape or dtype
    changed after ``watch()`` is still measured right (its sizes then disagree with the cached segment lengths and the
    caller takes the general path). Not ``cat`` into slices of one preallocated buffer: that would resize silently
    on such a change, and a ``cat`` that converts dtypes is 15x slower on the CPU.
    """
    if not runs:
        flat = torch._C._nn.flatten_dense_tensors(tensors).to(dtype)
        if len(tensors) == 1 and flat.data_ptr() == tensors[0].data_ptr():
            flat = flat.clone()  # a lone tensor may come back as a view of itself
        return flat
    parts = [(torch.cat(tensors[r.first:r.last]) if r.trailing != (-1,) else torch.stack(tensors[r.first:r.last]))
             .reshape(-1) for r in runs]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(dtype)  # cat copies: ours, whatever the dtype


@dataclass(frozen=True)
class _Segments:
    """Where each small tensor lies in their flat copy: ``lengths`` (a long tensor), ``starts`` (numpy offsets for
    ``reduceat``), ``total`` entries; ``empty`` when a tensor has no entries (``reduceat`` cannot express that)."""

    lengths: Tensor
    starts: np.ndarray
    total: int
    empty: bool

    @classmethod
    def of(cls, sizes: list[int]) -> _Segments | None:
        if not sizes:
            return None
        ends = np.cumsum(sizes, dtype=np.int64)
        return cls(torch.tensor(sizes, dtype=torch.long), ends - np.asarray(sizes, dtype=np.int64), int(ends[-1]),
                   min(sizes) == 0)


def _flat_reduce(tensors: list[Tensor], segments: _Segments, acc: torch.dtype, *, runs: list[_Run] | None = None,
                 need_max: bool = True) -> tuple[Tensor, Tensor | None]:
    """Per-tensor sum of squares and max |x| (NaN propagates; ``None`` without ``need_max``) of small dense tensors,
    from one flat copy in ``acc`` (see :func:`_flatten` for ``runs``).

    Raises ``RuntimeError`` when the tensors' sizes no longer add up to ``segments`` (a parameter resized after
    ``watch()``): the caller then takes the general path. Only the total is checked: two small parameters resized
    after ``watch()`` so that their sizes still add up would be misattributed.
    """
    work = _flatten(tensors, runs, acc)
    if work.numel() != segments.total:
        raise RuntimeError(f"the small tensors hold {work.numel()} entries, {segments.total} were expected")
    if segments.empty:  # a tensor without entries: reduceat would read its neighbour's first entry
        maxabs = torch.segment_reduce(work.abs_(), "max", lengths=segments.lengths, initial=0) if need_max else None
        return torch.segment_reduce(work.square_(), "sum", lengths=segments.lengths), maxabs
    # numpy's reduceat on our own copy (a view of it, in place): 8x faster than torch.segment_reduce, whose argument
    # checks cost more than the sums at these sizes. |x| first for the max, then |x|^2 = x^2 for the sums.
    flat = work.detach().numpy()
    with np.errstate(all="ignore"):  # x^2 overflows to inf for |x| > 1e154: that is the value we want, silently
        maxabs = torch.from_numpy(np.maximum.reduceat(np.abs(flat, out=flat), segments.starts)) if need_max else None
        sumsq = torch.from_numpy(np.add.reduceat(np.square(flat, out=flat), segments.starts))
    return sumsq, maxabs


def _reduce(tensors: list[Tensor], dtype: torch.dtype, device: torch.device, acc: torch.dtype, n_small: int,
            segments: _Segments | None, *, runs: list[_Run] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-tensor (L2 norm, sum of squares in ``acc``, max |x| in ``acc``), in the order of ``tensors``.

    The first ``n_small`` tensors (CPU only) go through :func:`_flat_reduce`, the rest through
    :func:`_norms_maxabs`. ``runs``: see ``_Bucket.runs``.
    """
    if n_small and segments is not None:
        try:
            sq_small, max_small = _flat_reduce(tensors[:n_small], segments, acc, runs=runs)
        except (RuntimeError, NotImplementedError):  # sparse gradients cannot be flattened: the general path
            n_small = 0
    if n_small and n_small == len(tensors):
        assert max_small is not None  # need_max: an invariant, not a validation
        return sq_small.sqrt().to(torch.float32 if dtype in _LOW_PRECISION else dtype), sq_small, max_small
    norms_rest, max_rest = _norms_maxabs(tensors[n_small:], dtype, device)
    if not n_small:
        return norms_rest, norms_rest.to(acc).square(), max_rest.to(acc)
    assert max_small is not None
    return (torch.cat([sq_small.sqrt().to(norms_rest.dtype), norms_rest]),
            torch.cat([sq_small, norms_rest.to(acc).square()]), torch.cat([max_small, max_rest.to(acc)]))


def _sumsq(tensors: list[Tensor], dtype: torch.dtype, acc: torch.dtype, n_small: int, segments: _Segments | None,
           runs: list[_Run]) -> Tensor:
    """Per-tensor sums of squares in ``acc`` (for the parameter norms): :func:`_reduce` without norms or maxima."""
    if n_small and segments is not None:
        try:
            sq_small, _ = _flat_reduce(tensors[:n_small], segments, acc, runs=runs, need_max=False)
        except (RuntimeError, NotImplementedError):  # a parameter resized after watch(): the general path
            n_small = 0
    if n_small and n_small == len(tensors):
        return sq_small
    sq_rest = _foreach_norms(tensors[n_small:], dtype).to(acc).square()
    return torch.cat([sq_small, sq_rest]) if n_small else sq_rest


def _trailing(p: Tensor) -> tuple[int, ...]:
    """The shape after the first dimension (``(-1,)`` for a 0-d tensor): tensors that share it ``cat`` along dim 0."""
    return tuple(p.shape[1:]) if p.dim() else (-1,)


def _to(t: Tensor, device: torch.device) -> Tensor:
    return t if t.device == device else t.to(device, non_blocking=True)


class StatsEngine:
    """Computes per-layer gradient statistics for a fixed list of layers.

    The grouping of parameters by (device, dtype) is computed once and re-checked cheaply each step (a model moved
    with ``.to()`` after ``watch`` is regrouped).
    """

    def __init__(self, layers: Sequence[Layer], *, dist: DistributedContext | None = None) -> None:
        self._dist = dist  # several processes: gradwatch._distributed computes and reduces; None: this module alone
        self.layer_names = [layer.name for layer in layers]
        self._layers = list(layers)
        self._numel = [[p.numel() for p in layer.params] for layer in layers]
        self._buckets: list[_Bucket] = []
        self._signature: list[tuple[torch.device, torch.dtype]] = []
        self._regroup()

    def close(self) -> None:
        """Drop every reference to the parameters."""
        self._layers = []
        self._buckets = []

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for b in self._buckets for p in b.params]

    def _regroup(self) -> None:
        buckets: dict[tuple[torch.device, torch.dtype], _Bucket] = {}
        for li, layer in enumerate(self._layers):
            for p in layer.params:
                key = (p.device, p.dtype)
                b = buckets.get(key)
                if b is None:
                    b = buckets[key] = _Bucket(device=p.device, dtype=p.dtype, params=[], layer_of=[])
                b.params.append(p)
                b.layer_of.append(li)
        for b in buckets.values():
            if b.device.type == "cpu" and b.dtype.is_floating_point:
                # Small ones first, grouped by trailing shape (in order of first appearance), large ones after.
                first_seen: dict[tuple[int, ...], int] = {}
                for p in b.params:
                    first_seen.setdefault(_trailing(p), len(first_seen))
                order = sorted(range(len(b.params)), key=lambda k: (
                    b.params[k].numel() > _FLAT_NUMEL, first_seen[_trailing(b.params[k])]))  # stable
                b.params = [b.params[k] for k in order]
                b.layer_of = [b.layer_of[k] for k in order]
                small = [p.numel() for p in b.params if p.numel() <= _FLAT_NUMEL]
                b.n_small = len(small)
                b.segments = _Segments.of(small)
                b.runs = []
                for k in range(b.n_small):
                    if b.runs and _trailing(b.params[k]) == b.runs[-1].trailing:
                        b.runs[-1] = dataclasses.replace(b.runs[-1], last=k + 1)
                    else:
                        b.runs.append(_Run(k, k + 1, _trailing(b.params[k])))
        self._buckets = list(buckets.values())
        self._home = self._buckets[0].device if self._buckets else torch.device("cpu")
        # What a step where every watched parameter has a gradient knows on the host (the common case).
        self._all_has_grad = [bool(sizes) for sizes in self._numel]
        self._all_numel = [sum(sizes) for sizes in self._numel]

    def _stale(self) -> bool:
        # One check per bucket, not per tensor: catches a model moved or cast as a whole after watch().
        return any(b.params[0].device != b.device or b.params[0].dtype != b.dtype for b in self._buckets)

    @property
    def home(self) -> torch.device:
        return self._home

    def compute(self, *, with_params: bool = False) -> DeviceStats:
        """Reduce this step's gradients to per-layer statistics, without any host synchronisation.

        With several processes the statistics are reduced across ranks (one collective); ``with_params`` then also
        measures the parameter norms in the same collective (``DeviceStats.param_norm``). In one process it is
        ignored: :meth:`param_norms` measures them.
        """
        if self._dist is not None:
            return self._dist.compute(self.layer_names, with_params=with_params)
        if self._stale():
            self._regroup()
        home = self._home
        acc = accumulate_dtype(home)
        n_layers = len(self.layer_names)
        layer_sumsq = torch.zeros(n_layers, dtype=acc, device=home)
        layer_max = torch.zeros(n_layers, dtype=acc, device=home)
        has_grad: list[bool] | None = None  # None while every parameter so far had a gradient
        numel: list[int] = []
        groups: list[GradGroup] = []
        for bi, b in enumerate(self._buckets):
            grads = [p.grad for p in b.params]
            present: tuple[bool, ...] | None = None
            params = b.params
            n_small, segments = b.n_small, b.segments
            if any(map(operator.is_, grads, repeat(None))):  # C-level loop: no Python frame per tensor
                if has_grad is None:
                    has_grad, numel = [False] * n_layers, [0] * n_layers
                    for bb in self._buckets[:bi]:  # the buckets before had every gradient
                        for li, p in zip(bb.layer_of, bb.params):
                            has_grad[li] = True
                            numel[li] += p.numel()
                present = tuple(g is not None for g in grads)
                params = [p for p, keep in zip(b.params, present) if keep]
                grads = [g for g in grads if g is not None]
                if n_small:
                    small = [p.numel() for p, keep in zip(b.params[:n_small], present) if keep]
                    n_small = len(small)
                    segments = _Segments.of(small)
                if not grads:
                    continue
                for li, p in zip([i for i, keep in zip(b.layer_of, present) if keep], params):
                    has_grad[li] = True
                    numel[li] += p.numel()
            elif has_grad is not None:
                for li, p in zip(b.layer_of, params):
                    has_grad[li] = True
                    numel[li] += p.numel()
            idx = b.index(present)
            norms, sq, maxabs = _reduce(grads, b.dtype, b.device, acc, n_small, segments,
                                        runs=b.runs if present is None else None)
            groups.append(GradGroup(b.device, b.dtype, params, grads, idx, norms))
            if len(self._buckets) == 1:  # the common case: reduce straight into the result, no partial vectors
                layer_sumsq.index_add_(0, idx, sq)
                layer_max.scatter_reduce_(0, idx, maxabs, "amax")
                continue
            part_sumsq = torch.zeros(n_layers, dtype=acc, device=b.device).index_add_(0, idx, sq)
            part_max = torch.zeros(n_layers, dtype=acc, device=b.device).scatter_reduce_(0, idx, maxabs, "amax")
            layer_sumsq += _to(part_sumsq, home)
            layer_max = torch.maximum(layer_max, _to(part_max, home))  # maximum propagates NaN
        if has_grad is None:
            has_grad, numel = list(self._all_has_grad), list(self._all_numel)
        total_norm = layer_sumsq.sum().sqrt()
        batch = GradBatch(groups=groups, layer_names=self.layer_names, total_norm=total_norm, home=home)
        return DeviceStats(layer_sumsq, layer_max, total_norm, has_grad, numel, batch)

    def param_norms(self) -> Tensor:
        """Per-layer L2 norm of the parameters, on ``home``: one flat reduction or fused norm per bucket."""
        if self._dist is not None:
            return self._dist.param_norms(len(self.layer_names))
        home = self._home
        acc = accumulate_dtype(home)
        out = torch.zeros(len(self.layer_names), dtype=acc, device=home)
        with torch.no_grad():  # no autograd graph and no per-tensor detach()
            for b in self._buckets:
                sq = _sumsq(b.params, b.dtype, acc, b.n_small, b.segments, b.runs)
                out += _to(torch.zeros_like(out, device=b.device).index_add_(0, b.index(None), sq), home)
        return out.sqrt()
