"""Per-layer histograms of gradients (or parameters), computed on the device and moved to the host in one piece.

Each layer's values are binned over the symmetric range ``[-m, m]``, where ``m`` is the layer's largest absolute
value, found on the device: no range has to be known on the host, so nothing is read back before the bins are
counted. Every layer's counts, range, sum and sum of squares go into one packed tensor that travels to the host with
the step's other statistics (one transfer per step, see ``gradwatch._watcher``), and become ``Histogram``
values (numpy, never tensors) for the sinks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._tensors import LOW_PRECISION, accumulate_dtype, dense_values, long_tensor

__all__ = ["DEFAULT_BINS", "Histogram", "device_histograms", "unpack_histograms"]

#: Bins per layer histogram (TensorBoard re-bins for display; 64 keeps the shape of a peaked distribution).
DEFAULT_BINS = 64
_HEADER = 4  # range m, sum, sum of squares, count


@dataclass(frozen=True)
class Histogram:
    """One layer's histogram at one step, in TensorBoard's ``HistogramProto`` terms.

    Attributes:
        limits: right edge of each bucket (increasing).
        counts: number of values in each bucket.
        min: left edge of the first bucket; max: right edge of the last bucket.
        num: number of values; sum, sum_squares: their sum and sum of squares.

    Examples:
        >>> h = unpack_histograms(np.array([2.0, 1.0, 5.0, 3.0, 1.0, 0.0, 0.0, 2.0]), ["fc"], bins=4)["fc"]
        >>> h.limits.tolist(), h.counts.tolist(), h.min, h.max
        ([-1.0, 0.0, 1.0, 2.0], [1.0, 0.0, 0.0, 2.0], -2.0, 2.0)
    """

    limits: np.ndarray
    counts: np.ndarray
    min: float
    max: float
    num: float
    sum: float
    sum_squares: float


def device_histograms(per_layer: Sequence[Sequence[Tensor]], *, home: torch.device, bins: int = DEFAULT_BINS) -> Tensor:
    """Histogram every layer's tensors, on the device, without a host sync.

    Args:
        per_layer: for each layer, its tensors (gradients or parameters); a layer may have none.
        home: the device that receives the packed result.
        bins: number of equal-width bins over each layer's range ``[-max|x|, max|x|]``.

    Returns:
        A flat float tensor on ``home`` of ``len(per_layer) * (bins + 4)`` values: per layer ``[m, sum, sum of
        squares, count, counts of each bin...]``. Read it with ``unpack_histograms()``.

    Examples:
        >>> packed = device_histograms([[torch.tensor([-2.0, 2.0, 1.5])]], home=torch.device("cpu"), bins=4)
        >>> [round(v, 4) for v in packed.tolist()]
        [2.0, 1.5, 10.25, 3.0, 1.0, 0.0, 0.0, 2.0]
    """
    acc = accumulate_dtype(home)
    n = len(per_layer)
    header = torch.zeros(_HEADER, n, dtype=acc, device=home)  # m, sum, sumsq, count
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[int, Tensor]]] = {}
    items: list[tuple[int, Tensor]] = []
    for li, tensors in enumerate(per_layer):
        for t in tensors:
            t = dense_values(t.detach())
            if t.numel():
                groups.setdefault((t.device, t.dtype), []).append((li, t))
                items.append((li, t))
    for (device, dtype), group in groups.items():
        ts = [t for _, t in group]
        wide = torch.float32 if dtype in LOW_PRECISION else None
        idx = long_tensor([li for li, _ in group], device)
        maxabs = torch.stack(torch._foreach_norm(ts, float("inf"))).to(acc)
        sumsq = torch.stack(torch._foreach_norm(ts, 2.0, dtype=wide)).to(acc).square()
        sums = torch.stack([t.sum(dtype=wide) for t in ts]).to(acc)
        part = torch.zeros(_HEADER, n, dtype=acc, device=device)
        part[0].scatter_reduce_(0, idx, maxabs, "amax")  # amax propagates NaN: such a layer is left out on the host
        part[1].index_add_(0, idx, sums)
        part[2].index_add_(0, idx, sumsq)
        counts_in = torch.tensor([float(t.numel()) for t in ts], dtype=acc).to(device, non_blocking=True)
        part[3].index_add_(0, idx, counts_in)
        part = part.to(home, non_blocking=True)
        header[0] = torch.maximum(header[0], part[0])
        header[1:] += part[1:]
    # A zero or non-finite range becomes 1: the (empty or unusable) histogram is then dropped on the host.
    scale = torch.where(torch.isfinite(header[0]) & (header[0] > 0), header[0], torch.ones_like(header[0]))
    counts = torch.zeros(n, bins, dtype=torch.float32, device=home)
    scales = {device: scale.to(device, torch.float32, non_blocking=True) for device, _ in groups}
    for li, t in items:
        # Values scaled into [-1, 1]; histc ignores NaN and Inf (outside the range). Float32 counts are exact per bin
        # up to 2**24 values of one tensor.
        h = torch.histc(t.to(torch.float32) / scales[t.device][li], bins=bins, min=-1.0, max=1.0)
        counts[li] += h.to(home, non_blocking=True)
    return torch.cat([header.T, counts.to(acc)], dim=1).reshape(-1)


def unpack_histograms(vec: np.ndarray, names: Sequence[str], *, bins: int = DEFAULT_BINS) -> dict[str, Histogram]:
    """The host side of ``device_histograms()``: one ``Histogram`` per layer that has finite values.

    Empty buckets at either end are dropped, so ``min``/``max`` bound the values to within one bucket. Layers without
    values, or whose largest value is NaN or Inf, get no histogram that step.
    """
    rows = np.asarray(vec, dtype=np.float64).reshape(len(names), _HEADER + bins)
    out: dict[str, Histogram] = {}
    for name, row in zip(names, rows, strict=True):
        m, total, sumsq, num = (float(x) for x in row[:_HEADER])
        counts = row[_HEADER:]
        if num == 0 or not math.isfinite(m) or not math.isfinite(total):
            continue
        if m == 0.0:  # every value is exactly zero
            out[name] = Histogram(np.array([0.0]), np.array([num]), 0.0, 0.0, num, 0.0, 0.0)
            continue
        nonzero = np.flatnonzero(counts)
        if nonzero.size == 0:
            continue
        lo, hi = int(nonzero[0]), int(nonzero[-1])
        edges = np.linspace(-m, m, bins + 1)
        out[name] = Histogram(limits=edges[lo + 1:hi + 2], counts=counts[lo:hi + 1].copy(), min=float(edges[lo]),
                              max=float(edges[hi + 1]), num=float(counts.sum()), sum=total, sum_squares=sumsq)
    return out
