"""Small tensor helpers that several modules share: dtypes, device moves, sparse values, a bounded device cache."""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

__all__ = [
    "LOW_PRECISION",
    "BoundedCache",
    "accumulate_dtype",
    "any_sparse",
    "dense_values",
    "long_tensor",
    "to_device",
]

#: Floating dtypes whose norms are accumulated in float32 (torch's ``vector_norm(dtype=...)``).
LOW_PRECISION: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)

_IS_SPARSE = operator.attrgetter("is_sparse")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def accumulate_dtype(device: torch.device) -> torch.dtype:
    """Aggregation dtype: float64 where the device has it, so that sums of squares of huge norms do not overflow."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``: itself when it is there already, else a non-blocking copy."""
    return t if t.device == device else t.to(device, non_blocking=True)


def dense_values(g: Tensor) -> Tensor:
    """The entries of ``g`` that exist: a sparse tensor's coalesced values, a dense tensor itself."""
    return g.coalesce().values() if g.is_sparse else g


def any_sparse(tensors: Iterable[Tensor]) -> bool:
    """Whether any tensor is sparse: fused ``torch._foreach_*`` ops refuse them, so callers decide up front.

    Examples:
        >>> any_sparse([torch.zeros(2), torch.zeros(2).to_sparse()]), any_sparse([torch.zeros(2)])
        (True, False)
    """
    return any(map(_IS_SPARSE, tensors))  # a C-level loop: no Python frame per tensor


def long_tensor(ids: Sequence[int], device: torch.device) -> Tensor:
    """An index tensor built on the host and moved without waiting (``non_blocking``)."""
    return torch.tensor(list(ids), dtype=torch.long).to(device, non_blocking=True)


class BoundedCache(Generic[K, V]):
    """A dict of device tensors keyed by host-side facts, cleared when it passes ``limit`` entries.

    For index tensors that depend on patterns (which gradients are missing, which layers are excluded) that usually
    repeat: built once, reused every step, and never growing for ever when the pattern keeps changing.

    Examples:
        >>> cache = BoundedCache[tuple[int, ...], int](limit=2)
        >>> cache.get((1,), lambda: 10), cache.get((1,), lambda: 11)
        (10, 10)
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._items: dict[K, V] = {}

    def get(self, key: K, build: Callable[[], V]) -> V:
        """The value for ``key``, built by ``build()`` the first time."""
        value = self._items.get(key)
        if value is None:
            if len(self._items) >= self.limit:
                self._items.clear()
            value = self._items[key] = build()
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
