"""Per-tensor reductions of gradient (or parameter) lists, and the device/dtype buckets they run on.

A ``Bucket`` holds the watched parameters of one (device, dtype) (and, with several processes, one replication
weight). Its tensors are reduced together: fused ``torch._foreach_norm`` calls (``foreach_norms()``,
``foreach_maxabs()``, ``norms_maxabs()``) and, on the CPU, one flat copy for all the small tensors
(``FlatPlan``, ``reduce_tensors()``). ``LayerTotals`` adds the per-tensor results up per layer.

Sparse gradients (``nn.Embedding(sparse=True)``) have no fused norm and no flat copy: every function here recognises
them up front (``gradwatch._tensors.any_sparse()``) and measures their coalesced values one by one.

Nothing here reads a device value on the host. On the CPU, ``finite_norms()`` reads whether a norm overflowed
(a CPU value: nothing to wait for) and measures such a tensor again, scaled by its largest entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from ._tensors import LOW_PRECISION, BoundedCache, any_sparse, dense_values, long_tensor, to_device

__all__ = [
    "CPU_NORM_FLOOR",
    "CPU_TINY",
    "FLAT_MIN_COUNT",
    "FLAT_NUMEL",
    "Bucket",
    "FlatPlan",
    "LayerTotals",
    "Present",
    "Run",
    "Segments",
    "cpu_sumsq",
    "finite_norms",
    "foreach_maxabs",
    "foreach_norms",
    "fused_bucket",
    "group_buckets",
    "norms_maxabs",
    "param_sumsq",
    "reduce_tensors",
]

#: Below this many entries a tensor's max |g| is cheaper inside one fused CPU inf-norm (see ``foreach_maxabs()``).
CPU_TINY = 1024

#: CPU only: tensors of at most this many entries are reduced from one flat copy (one ``cat`` per run of equal
#: trailing shape and two numpy ``reduceat`` calls for all of them). Per-call overhead (a few microseconds per tensor
#: and op) dominates below this size; above it the copy would cost more than it saves, and the copy stays small (each
#: tensor copied is at most 16 KiB in float32).
FLAT_NUMEL = 4096

_SHAPE = operator.attrgetter("shape")


def _as_list(tensors: Sequence[Tensor]) -> list[Tensor]:
    return tensors if isinstance(tensors, list) else list(tensors)


def _norm_dtype(dtype: torch.dtype, device: torch.device | None = None) -> torch.dtype | None:
    """The accumulation dtype of a norm: float32 for half types, the tensor's own otherwise; on CUDA, float64 for
    float32 and bfloat16 (see ``foreach_norms()``)."""
    if device is not None and device.type == "cuda" and dtype in _WIDE_ON_CUDA:
        return torch.float64
    return torch.float32 if dtype in LOW_PRECISION else None


#: Gradient dtypes with float32's range, whose sums of squares overflow float32 from finite entries (|g| > 1.8e19 in
#: one entry, less over many): on CUDA their fused norm accumulates in float64 instead (the fused kernel accumulates in
#: the type it returns; it reads the same bytes, so it costs about the same).
_WIDE_ON_CUDA = (torch.float32, torch.bfloat16)


def finite_norms(tensors: Sequence[Tensor], norms: Tensor) -> Tensor:
    """``norms`` (per tensor) with each one that overflowed to Inf from finite entries measured again, scaled by the
    tensor's largest entry ``m``: ``m * ||t / m||`` in float64. The result is float64 when anything was measured again.

    The CPU's norms accumulate in the gradients' own dtype, and a float32 sum of squares overflows for entries of
    1e19 while the norm itself (1e21, say) is a float32 like any other: ``clip_grad_norm_`` then zeroes every
    gradient. On the CPU, reading whether any norm is Inf waits for no device (CPU kernels have run when they return),
    so the second measurement runs only for the tensors that need it. Elsewhere ``norms`` are returned as they are: on
    CUDA the fused norm of float32 and bfloat16 tensors accumulates in float64 and cannot overflow.

    Examples:
        >>> big = torch.full((4, 1000), 1e19)
        >>> plain = torch.linalg.vector_norm(big).reshape(1)
        >>> plain, finite_norms([big], plain)
        (tensor([inf]), tensor([6.3246e+20], dtype=torch.float64))
    """
    if norms.device.type != "cpu" or not bool(norms.isinf().any()):  # CPU values: a read, no device to wait for
        return norms
    out = norms.to(torch.float64)
    for i in torch.nonzero(norms.isinf()).flatten().tolist():
        out[i] = _scaled_norm(dense_values(tensors[i]), out[i])
    return out


def _scaled_norm(t: Tensor, plain: Tensor) -> Tensor:
    """``t``'s L2 norm as ``m * ||t / m||`` (``m``: its largest magnitude), in float64; ``plain`` when an entry is not
    finite (the norm is rightly Inf or NaN then)."""
    wide = t.detach().to(torch.complex128 if t.is_complex() else torch.float64)
    m = wide.abs().amax() if wide.numel() else wide.new_zeros((), dtype=torch.float64)
    if not (math.isfinite(m) and m > 0):  # CPU values (see finite_norms)
        return plain
    norm: Tensor = m * torch.linalg.vector_norm(wide / m)
    return norm


# ---------------------------------------------------------------------------------------------- per-tensor reductions
def foreach_norms(grads: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """Per-tensor L2 norms in one fused call (float32 accumulation for half types), finite wherever the entries are
    (see ``finite_norms()``).

    Sparse gradients have no fused norm: with one among them, every tensor is measured on its own (a sparse one by its
    coalesced values).

    Examples:
        >>> foreach_norms([torch.tensor([3.0, 4.0]), torch.tensor([[1.0]])], torch.float32)
        tensor([5., 1.])
    """
    return _foreach_norms(grads, dtype, sparse=any_sparse(grads))


def _foreach_norms(grads: Sequence[Tensor], dtype: torch.dtype, *, sparse: bool) -> Tensor:
    wide = _norm_dtype(dtype, grads[0].device if len(grads) else None)
    if sparse:
        norms = torch.stack([torch.linalg.vector_norm(dense_values(g), dtype=wide) for g in grads])
    else:
        norms = torch.stack(torch._foreach_norm(_as_list(grads), 2.0, dtype=wide))
    return finite_norms(grads, norms)


def foreach_maxabs(grads: Sequence[Tensor], device: torch.device) -> Tensor:
    """Per-tensor max |g| (NaN propagates).

    One fused inf-norm on accelerators. On the CPU the inf-norm kernel costs about 5 ns per entry against 0.2 ns for
    ``aminmax``, whose call costs about 5 us more (one thread, the 2-core CI machine): tensors under ``CPU_TINY``
    entries go through one fused inf-norm, the others through ``aminmax`` (4x faster at 4,608 entries, 18x at 262,144).
    The fused inf-norm refuses sparse and empty tensors: when one would be in it, every tensor goes through ``aminmax``
    (a sparse one on its coalesced values; an empty one's max is 0).

    Examples:
        >>> foreach_maxabs([torch.tensor([1.0, -7.0]), torch.full((2000,), -2.0)], torch.device("cpu"))
        tensor([7., 2.])
    """
    return _foreach_maxabs(grads, device, sparse=any_sparse(grads))


def _foreach_maxabs(grads: Sequence[Tensor], device: torch.device, *, sparse: bool) -> Tensor:
    if device.type != "cpu":
        return _fused_maxabs(grads) if _fusable(grads, sparse) else _aminmax_maxabs(grads)
    tiny = [i for i, g in enumerate(grads) if g.numel() < CPU_TINY]
    tiny_grads = [grads[i] for i in tiny]
    if not _fusable(tiny_grads, sparse):
        tiny = []
    if len(tiny) == len(grads):
        return _fused_maxabs(grads)
    if not tiny:
        return _aminmax_maxabs(grads)
    tiny_set = set(tiny)
    others = [i for i in range(len(grads)) if i not in tiny_set]
    rest_max = _aminmax_maxabs([grads[i] for i in others])
    out = torch.empty(len(grads), dtype=rest_max.dtype, device=rest_max.device)
    out[tiny] = _fused_maxabs(tiny_grads).to(rest_max.dtype)
    out[others] = rest_max
    return out


def _fusable(grads: Sequence[Tensor], sparse: bool) -> bool:
    """Whether the fused inf-norm takes ``grads``: it refuses sparse tensors, and empty ones (a max over nothing has no
    identity). ``sparse``: whether the list they come from holds a sparse tensor."""
    return all(map(Tensor.numel, grads)) and not (sparse and any_sparse(grads))


def _fused_maxabs(grads: Sequence[Tensor]) -> Tensor:
    """Max |g| of dense tensors in one fused inf-norm."""
    return torch.stack(torch._foreach_norm(_as_list(grads), float("inf")))


def _aminmax_maxabs(grads: Sequence[Tensor]) -> Tensor:
    """Max |g| tensor by tensor through ``aminmax`` (sparse ones on their coalesced values; NaN propagates)."""
    lows, highs = [], []
    for g in grads:
        values = dense_values(g)
        lo, hi = torch.aminmax(values if values.numel() else values.new_zeros(1))  # aminmax refuses empty tensors
        lows.append(lo)
        highs.append(hi)
    return torch.maximum(torch.stack(highs), torch.stack(lows).neg())  # maximum propagates NaN


def norms_maxabs(grads: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-tensor L2 norms (as ``foreach_norms()``) and max |g| (as ``foreach_maxabs()``).

    On the CPU, where ``_foreach_norm`` is a loop over tensors anyway, both reductions of a tensor run back to back,
    while it is still in cache (a 1 MiB gradient is read from L2 the second time, not from memory: 20-25% less time
    for the pair on the MLP benchmark). Elsewhere, and with tiny or sparse tensors, two fused calls.

    Examples:
        >>> norms, maxabs = norms_maxabs([torch.tensor([3.0, -4.0])], torch.float32, torch.device("cpu"))
        >>> norms, maxabs
        (tensor([5.]), tensor([4.]))
    """
    sparse = any_sparse(grads)
    if device.type != "cpu" or sparse or any(g.numel() < CPU_TINY for g in grads):
        return _foreach_norms(grads, dtype, sparse=sparse), _foreach_maxabs(grads, device, sparse=sparse)
    norm_dtype = _norm_dtype(dtype)
    norms, lows, highs = [], [], []
    for g in grads:
        norms.append(torch.linalg.vector_norm(g, dtype=norm_dtype))
        lo, hi = torch.aminmax(g)
        lows.append(lo)
        highs.append(hi)
    maxabs = torch.maximum(torch.stack(highs), torch.stack(lows).neg())  # maximum propagates NaN
    return finite_norms(grads, torch.stack(norms)), maxabs


# ---------------------------------------------------------------------------------------------- the fused CPU sums
#: CPU gradient dtypes whose sums of squares ``cpu_sumsq()`` takes from one fused norm.
_CPU_FUSED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

#: On the CPU a fused norm of float32, bfloat16 or float16 tensors accumulates in float32, where the squares of entries
#: under about 1e-19 are denormal or zero: a tensor whose norm comes out below this floor is measured again in float64.
CPU_NORM_FLOOR = 1e-15

#: CPU: a step that logs nothing reduces the small tensors from the flat copy only when it holds at least this many
#: (below it, one fused norm of every tensor costs less inside a training loop).
FLAT_MIN_COUNT = 64


def fused_bucket(b: Bucket) -> bool:
    """Whether a step reduces the sums of squares of ``b``'s gradients with ``cpu_sumsq()`` (see ``_fused_sums()``),
    its gradients being dense and all present."""
    return b.device.type == "cpu" and b.dtype in _CPU_FUSED and (b.flat is None or b.flat.count < FLAT_MIN_COUNT)


def _fused_sums(tensors: Sequence[Tensor], dtype: torch.dtype, acc: torch.dtype, plan: FlatPlan | None) -> bool:
    """Whether ``reduce_tensors()`` takes the sums of squares from ``cpu_sumsq()``: dense real CPU tensors, unless the
    flat copy holds many of them (``FLAT_MIN_COUNT``). Inside a training loop, where backward and the optimizer have
    pushed gradwatch's code out of the caches, the fused norm's few calls cost less than the flat copy's dozen."""
    return (acc == torch.float64 and dtype in _CPU_FUSED and (plan is None or plan.count < FLAT_MIN_COUNT)
            and len(tensors) > 0 and tensors[0].device.type == "cpu" and not any_sparse(tensors))


def cpu_sumsq(tensors: Sequence[Tensor], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-tensor (L2 norm, float64 sum of squares) of dense real CPU tensors of ``dtype``, from one fused norm.

    A norm below ``CPU_NORM_FLOOR`` (its squares may have underflowed) is measured again in float64, and one that
    overflowed from finite entries is measured again scaled (``finite_norms()``): the sums are those of float64
    arithmetic wherever it matters. The checks read CPU values: nothing to wait for.

    Examples:
        >>> norms, sq = cpu_sumsq([torch.tensor([3.0, 4.0]), torch.full((1000,), 1e-25)], torch.float32)
        >>> sq.tolist()[0], round(sq.tolist()[1] / 1e-47, 6)
        (25.0, 1.0)
    """
    norms = torch.stack(torch._foreach_norm(_as_list(tensors), 2.0, dtype=_norm_dtype(dtype)))
    floor = CPU_NORM_FLOOR if dtype != torch.float64 else 0.0  # float64 accumulates in float64 already
    sq = _squares(norms)
    # A tiny or zero (float32), Inf or NaN norm (rare): NaN fails the first test, Inf the second.
    if not (np.minimum.reduce(sq) >= floor * floor and np.maximum.reduce(sq) < math.inf):
        norms = _refined(tensors, norms, floor)
        sq = _squares(norms)
    return norms, torch.from_numpy(sq)


def _squares(norms: Tensor) -> np.ndarray:
    """``norms`` squared, in float64 (a float64 norm over 1e154 squares to Inf: the value we want, silently)."""
    with np.errstate(over="ignore") if norms.dtype == torch.float64 else contextlib.nullcontext():
        sq: np.ndarray = np.square(norms.numpy(), dtype=np.float64)
        return sq


def _refined(tensors: Sequence[Tensor], norms: Tensor, floor: float) -> Tensor:
    """``norms`` (float64) with each one under ``CPU_NORM_FLOOR`` measured again in float64 and each Inf one scaled
    (``finite_norms()``); a NaN stays NaN."""
    out = finite_norms(tensors, norms).to(torch.float64)
    for i in np.flatnonzero(out.numpy() < floor).tolist():
        out[i] = torch.linalg.vector_norm(tensors[i], dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------------------------- the flat CPU path
@dataclass(frozen=True)
class Run:
    """Tensors ``first:last`` of a bucket share ``trailing``, their shape after dim 0 (``(-1,)``: 0-d tensors)."""

    first: int
    last: int
    trailing: tuple[int, ...]


@dataclass(frozen=True)
class Segments:
    """Where each small tensor lies in their flat copy: ``lengths`` (a long tensor), ``starts`` (numpy offsets for
    ``reduceat``), ``total`` entries; ``empty`` when a tensor has no entries (``reduceat`` cannot express that)."""

    lengths: Tensor
    starts: np.ndarray
    total: int
    empty: bool

    @classmethod
    def of(cls, sizes: list[int]) -> Segments:
        ends = np.cumsum(sizes, dtype=np.int64)
        return cls(torch.tensor(sizes, dtype=torch.long), ends - np.asarray(sizes, dtype=np.int64), int(ends[-1]),
                   min(sizes) == 0)


@dataclass(frozen=True)
class FlatPlan:
    """The first ``count`` tensors of a list (CPU, at most ``FLAT_NUMEL`` entries each) are reduced together from
    one flat copy, which costs one kernel for all of them instead of a few per tensor.

    Attributes:
        count: how many tensors, from the first, the flat copy holds.
        segments: where each of them lies in the copy.
        runs: runs of them that share their shape after the first dimension: each run is one ``cat`` along dim 0 (no
            per-tensor view); 0-d tensors form runs of their own. Empty: the copy is made tensor by tensor.
        shapes: the shapes ``runs`` were planned for; tensors of other shapes (a parameter reshaped after
            ``watch()``) take the general path.
    """

    count: int
    segments: Segments
    runs: tuple[Run, ...] = ()
    shapes: tuple[torch.Size, ...] = ()

    @classmethod
    def of(cls, sizes: list[int]) -> FlatPlan | None:
        """A plan without runs for tensors of ``sizes`` entries; ``None`` for none."""
        return cls(len(sizes), Segments.of(sizes)) if sizes else None

    @classmethod
    def of_tensors(cls, tensors: Sequence[Tensor]) -> FlatPlan | None:
        """A plan with runs for ``tensors`` (ordered so that tensors of one trailing shape follow each other)."""
        if not tensors:
            return None
        runs: list[Run] = []
        for k, t in enumerate(tensors):
            if runs and _trailing(t) == runs[-1].trailing:
                runs[-1] = dataclasses.replace(runs[-1], last=k + 1)
            else:
                runs.append(Run(k, k + 1, _trailing(t)))
        return cls(len(tensors), Segments.of([t.numel() for t in tensors]), tuple(runs),
                   tuple(t.shape for t in tensors))

    def copy(self, tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor | None:
        """One 1-D copy in ``dtype`` of the first ``count`` of ``tensors``, or ``None`` when they cannot take this
        path: a sparse one (no flat copy), or sizes that no longer add up to ``segments`` (a parameter resized after
        ``watch()``). Without runs only the total is checked: two small parameters resized after ``watch()`` so that
        their sizes still add up would be misattributed."""
        small = tensors[:self.count]
        if any_sparse(small) or (self.runs and tuple(map(_SHAPE, small)) != self.shapes):
            return None
        work = _flatten(small, self.runs, dtype)
        return work if work.numel() == self.segments.total else None


def _trailing(p: Tensor) -> tuple[int, ...]:
    """The shape after the first dimension (``(-1,)`` for a 0-d tensor): tensors that share it ``cat`` along dim 0."""
    return tuple(p.shape[1:]) if p.dim() else (-1,)


def _flatten(tensors: Sequence[Tensor], runs: Sequence[Run], dtype: torch.dtype) -> Tensor:
    """One 1-D copy of ``tensors`` in ``dtype``, in order, that shares no memory with them.

    With ``runs`` (see ``FlatPlan``): one ``cat`` per run of tensors of the same trailing shape (a view and a
    copy per tensor cost four times as much). Each ``cat`` sizes its own output, so a parameter whose dtype changed
    after ``watch()`` is still measured right. Not ``cat`` into slices of one preallocated buffer: that would resize
    silently on such a change, and a ``cat`` that converts dtypes is 15x slower on the CPU.
    """
    if not runs:
        flat = torch._C._nn.flatten_dense_tensors(_as_list(tensors)).to(dtype)
        if len(tensors) == 1 and flat.data_ptr() == tensors[0].data_ptr():
            flat = flat.clone()  # a lone tensor may come back as a view of itself
        return flat
    parts = [(torch.cat(list(tensors[r.first:r.last])) if r.trailing != (-1,)
              else torch.stack(list(tensors[r.first:r.last]))).reshape(-1) for r in runs]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(dtype)  # cat copies: ours, whatever the dtype


def _segment_sumsq(work: Tensor, segments: Segments) -> Tensor:
    """Per-segment sums of squares of ``work`` (our own copy, squared in place)."""
    if segments.empty:  # a tensor without entries: reduceat would read its neighbour's first entry
        return torch.segment_reduce(work.square_(), "sum", lengths=segments.lengths)
    flat = work.detach().numpy()
    with np.errstate(all="ignore"):  # x^2 overflows to inf for |x| > 1e154: that is the value we want, silently
        return torch.from_numpy(np.add.reduceat(np.square(flat, out=flat), segments.starts))


def _segment_sumsq_maxabs(work: Tensor, segments: Segments) -> tuple[Tensor, Tensor]:
    """Per-segment sums of squares and max |x| (NaN propagates) of ``work`` (our own copy, changed in place)."""
    if segments.empty:  # a tensor without entries: reduceat would read its neighbour's first entry
        maxabs = torch.segment_reduce(work.abs_(), "max", lengths=segments.lengths, initial=0)
        return torch.segment_reduce(work.square_(), "sum", lengths=segments.lengths), maxabs
    # numpy's reduceat on our own copy (a view of it, in place): 8x faster than torch.segment_reduce, whose argument
    # checks cost more than the sums at these sizes. |x| first for the max, then |x|^2 = x^2 for the sums.
    flat = work.detach().numpy()
    with np.errstate(all="ignore"):  # x^2 overflows to inf for |x| > 1e154: that is the value we want, silently
        maxabs = torch.from_numpy(np.maximum.reduceat(np.abs(flat, out=flat), segments.starts))
        sumsq = torch.from_numpy(np.add.reduceat(np.square(flat, out=flat), segments.starts))
    return sumsq, maxabs


def reduce_tensors(tensors: Sequence[Tensor], dtype: torch.dtype, device: torch.device, acc: torch.dtype,
                   plan: FlatPlan | None, *, with_max: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-tensor (L2 norm, sum of squares in ``acc``, max |x| in ``acc``), in the order of ``tensors``.

    The first ``plan.count`` tensors (CPU only) go through the flat copy when they can (see ``FlatPlan.copy()``),
    the rest through ``norms_maxabs()``. Without ``with_max`` (a step that logs nothing) the maxima are not taken:
    one read of each tensor instead of two, and ``None`` in their place.
    """
    if _fused_sums(tensors, dtype, acc, plan):  # the same sums whether the step logs or not
        norms, sq = cpu_sumsq(tensors, dtype)
        return norms, sq, foreach_maxabs(tensors, device).to(acc) if with_max else None
    if not with_max:
        return _reduce_sumsq(tensors, dtype, acc, plan)
    work = plan.copy(tensors, acc) if plan is not None else None
    if plan is None or work is None:
        norms, maxabs = norms_maxabs(tensors, dtype, device)
        return norms, norms.to(acc).square(), maxabs.to(acc)
    sq_small, max_small = _segment_sumsq_maxabs(work, plan.segments)
    if plan.count == len(tensors):
        return sq_small.sqrt().to(_norm_dtype(dtype) or dtype), sq_small, max_small
    norms_rest, max_rest = norms_maxabs(tensors[plan.count:], dtype, device)
    return (torch.cat([sq_small.sqrt().to(norms_rest.dtype), norms_rest]),
            torch.cat([sq_small, norms_rest.to(acc).square()]), torch.cat([max_small, max_rest.to(acc)]))


def _reduce_sumsq(tensors: Sequence[Tensor], dtype: torch.dtype, acc: torch.dtype,
                  plan: FlatPlan | None) -> tuple[Tensor, Tensor, None]:
    """``reduce_tensors()`` without the maxima, where the flat copy or the fused norm measures the sums: per-tensor
    (L2 norm, sum of squares in ``acc``, ``None``)."""
    work = plan.copy(tensors, acc) if plan is not None else None
    if plan is None or work is None:
        norms = foreach_norms(tensors, dtype)
        return norms, norms.to(acc).square(), None
    sq_small = _segment_sumsq(work, plan.segments)
    if plan.count == len(tensors):
        return sq_small.sqrt().to(_norm_dtype(dtype) or dtype), sq_small, None
    norms_rest = foreach_norms(tensors[plan.count:], dtype)
    return (torch.cat([sq_small.sqrt().to(norms_rest.dtype), norms_rest]),
            torch.cat([sq_small, norms_rest.to(acc).square()]), None)


def param_sumsq(tensors: Sequence[Tensor], dtype: torch.dtype, acc: torch.dtype, plan: FlatPlan | None) -> Tensor:
    """Per-tensor sums of squares in ``acc`` (for the parameter norms): ``reduce_tensors()`` without norms or maxima.

    Examples:
        >>> param_sumsq([torch.tensor([3.0, 4.0])], torch.float32, torch.float64, None)
        tensor([25.], dtype=torch.float64)
    """
    work = plan.copy(tensors, acc) if plan is not None else None
    if plan is None or work is None:
        return foreach_norms(tensors, dtype).to(acc).square()
    sq_small = _segment_sumsq(work, plan.segments)
    if plan.count == len(tensors):
        return sq_small
    return torch.cat([sq_small, foreach_norms(tensors[plan.count:], dtype).to(acc).square()])


# ---------------------------------------------------------------------------------------------- buckets
@dataclass
class Present:
    """The parameters of one bucket that have a gradient this step, and their gradients.

    Attributes:
        params, grads, layer_of: the parameters, their gradients and the index of each one's layer.
        kept: their positions in the bucket; ``None`` when every parameter has a gradient.
        flat: how their first, small gradients are reduced from one flat copy (CPU), if at all.
    """

    params: list[nn.Parameter]
    grads: list[Tensor]
    layer_of: list[int]
    kept: tuple[int, ...] | None
    flat: FlatPlan | None


@dataclass(eq=False)
class Bucket:
    """Watched parameters of one device and dtype (and, with several processes, one replication ``weight``), with
    index tensors cached by which of them take part in a step.

    On the CPU (``plan_flat()``) the parameters are ordered small first: the first ``flat.count`` (at most
    ``FLAT_NUMEL`` entries each) are reduced together from one flat copy.
    """

    device: torch.device
    dtype: torch.dtype
    params: list[nn.Parameter]
    layer_of: list[int]
    weight: float = 1.0
    flat: FlatPlan | None = None
    _index: BoundedCache[tuple[int, ...] | None, Tensor] = field(default_factory=BoundedCache, init=False, repr=False)

    def index(self, kept: tuple[int, ...] | None = None) -> Tensor:
        """Layer index (a long tensor on ``device``) of the parameters at positions ``kept`` (``None``: all)."""
        return self._index.get(kept, lambda: long_tensor(
            self.layer_of if kept is None else [self.layer_of[i] for i in kept], self.device))

    def moved(self) -> bool:
        """Whether the parameters were moved to another device or cast since the bucket was made (checked on the
        first: a model moves as a whole). ``is_cpu`` and ``get_device()`` cost less than ``.device`` (a new object)."""
        p = self.params[0]
        if p.dtype != self.dtype:
            return True
        if self.device.type == "cpu":
            return not p.is_cpu
        if self.device.type == "cuda":
            return not p.is_cuda or p.get_device() != self.device.index
        return p.device != self.device

    def plan_flat(self) -> None:
        """Order the parameters small first, grouped by trailing shape (in order of first appearance), large ones
        after, and plan the flat copy of the small ones."""
        first_seen: dict[tuple[int, ...], int] = {}
        for p in self.params:
            first_seen.setdefault(_trailing(p), len(first_seen))
        order = sorted(range(len(self.params)), key=lambda k: (
            self.params[k].numel() > FLAT_NUMEL, first_seen[_trailing(self.params[k])]))  # stable
        self.params = [self.params[k] for k in order]
        self.layer_of = [self.layer_of[k] for k in order]
        self.flat = FlatPlan.of_tensors([p for p in self.params if p.numel() <= FLAT_NUMEL])

    def present(self) -> Present:
        """This step's parameters with a gradient (every parameter in the common case, without a copy)."""
        grads = [p.grad for p in self.params]
        if not any(map(operator.is_, grads, repeat(None))):  # C-level loop: no Python frame per tensor
            return Present(self.params, cast(list[Tensor], grads), self.layer_of, None, self.flat)
        kept = tuple(i for i, g in enumerate(grads) if g is not None)
        n_small = self.flat.count if self.flat is not None else 0
        return Present([self.params[i] for i in kept], [g for g in grads if g is not None],
                       [self.layer_of[i] for i in kept], kept,
                       FlatPlan.of([self.params[i].numel() for i in kept if i < n_small]))


def group_buckets(params_per_layer: Sequence[Sequence[nn.Parameter]],
                  weight: Callable[[nn.Parameter], float] | None = None) -> list[Bucket]:
    """The parameters grouped by (device, dtype, ``weight(p)``), in order of first appearance; ``layer_of`` indexes
    ``params_per_layer``.

    Examples:
        >>> a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float64))
        >>> [(bucket.dtype, bucket.layer_of) for bucket in group_buckets([[a, b], [a]])]
        [(torch.float32, [0, 1]), (torch.float64, [0])]
    """
    buckets: dict[tuple[torch.device, torch.dtype, float], Bucket] = {}
    for li, params in enumerate(params_per_layer):
        for p in params:
            w = 1.0 if weight is None else weight(p)
            key = (p.device, p.dtype, w)
            b = buckets.get(key)
            if b is None:
                b = buckets[key] = Bucket(p.device, p.dtype, [], [], w)
            b.params.append(p)
            b.layer_of.append(li)
    return list(buckets.values())


class LayerTotals:
    """Per-layer sums of squares and maxima of ``|g|`` on ``home``, added up bucket by bucket.

    ``direct``: reduce straight into the totals (one bucket on ``home``: no partial vectors); otherwise each bucket's
    partials are built on its own device and moved to ``home``.

    Examples:
        >>> totals = LayerTotals(2, torch.float64, torch.device("cpu"), direct=False)
        >>> sq, maxabs = torch.tensor([9.0, 16.0], dtype=torch.float64), torch.tensor([3.0, 4.0], dtype=torch.float64)
        >>> totals.add(torch.tensor([1, 1]), sq, maxabs, torch.device("cpu"))
        >>> totals.sumsq.tolist(), totals.maxabs.tolist()
        ([0.0, 25.0], [0.0, 4.0])
    """

    def __init__(self, n: int, acc: torch.dtype, home: torch.device, *, direct: bool) -> None:
        self.n, self.acc, self.home, self.direct = n, acc, home, direct
        self.sumsq = torch.zeros(n, dtype=acc, device=home)
        self.maxabs = torch.zeros(n, dtype=acc, device=home)

    def add(self, idx: Tensor, sq: Tensor, maxabs: Tensor | None, device: torch.device) -> None:
        """Add per-tensor sums of squares ``sq`` and take the max with ``maxabs`` (``None``: not measured), both on
        ``device``, by layer ``idx``."""
        if self.direct:
            self.sumsq.index_add_(0, idx, sq)
            if maxabs is not None:
                self.maxabs.scatter_reduce_(0, idx, maxabs, "amax")
            return
        self.add_sumsq(idx, sq, device)
        if maxabs is not None:
            self.add_max(idx, maxabs, device)

    def add_max(self, idx: Tensor, maxabs: Tensor, device: torch.device) -> None:
        """Take the max with per-tensor maxima ``maxabs`` (on ``device``) by layer ``idx``, through a partial
        vector."""
        part_max = torch.zeros(self.n, dtype=self.acc, device=device).scatter_reduce_(0, idx, maxabs, "amax")
        self.maxabs = torch.maximum(self.maxabs, to_device(part_max, self.home))  # maximum propagates NaN

    def add_sumsq(self, idx: Tensor, sq: Tensor, device: torch.device) -> None:
        """Add per-tensor sums of squares ``sq`` (on ``device``) by layer ``idx``, through a partial vector."""
        self.sumsq += to_device(torch.zeros(self.n, dtype=self.acc, device=device).index_add_(0, idx, sq), self.home)
