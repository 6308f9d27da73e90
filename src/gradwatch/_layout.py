"""The packed step vector's layout: the one place that says which slice holds what, in which order.

A step's device results travel to the host as one vector (one transfer per logged step). The writer
(``Layout.pack()``, on the device) and the reader (``Layout.unpack()``, on the host) share this definition, so a
new piece cannot shift the numbers after it: it is added to ``SLICES``, and both sides follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["SLICES", "Layout"]

#: The slices of a step's packed vector, in order. Every slice but the sums of squares may be absent (size 0).
SLICES: tuple[str, ...] = (
    "sumsq",         # per layer: sum of squares of the gradient entries (before clipping)
    "max",           # per layer, on steps that measured it (logged, non-finite on the CPU, figure steps): max |g|
    "global_norm",   # 1: global L2 norm before clipping
    "clipped_norm",  # 1: global L2 norm after clipping
    "extras",        # one per extra tag of the step (clipper values, the AMP scale, the loss), in the record's order
    "param_norm",    # per layer, on logged steps: parameter L2 norm
    "update_ratio",  # per layer, with an optimizer, when measured (logged steps): ||dw|| / ||w|| of its last step
    "histograms",    # per-layer histograms (gradwatch._histograms layout), on histogram steps
    "probe",         # the activation probe's values (gradwatch._hooks), on sampled steps
)


@dataclass(frozen=True)
class Layout:
    """Sizes of the slices of one step's packed vector (absent slices have size 0).

    Examples:
        >>> import torch
        >>> layout, vec = Layout.pack({"sumsq": torch.tensor([4.0, 9.0]), "max": torch.tensor([2.0, 3.0]),
        ...                            "global_norm": torch.tensor([3.6]), "clipped_norm": torch.tensor([1.0])})
        >>> layout.size, layout.has("probe")
        (6, False)
        >>> layout.unpack(vec.numpy())["max"].tolist()
        [2.0, 3.0]
    """

    sizes: tuple[int, ...]

    @classmethod
    def pack(cls, parts: Mapping[str, Tensor]) -> tuple[Layout, Tensor]:
        """The layout of ``parts`` (by slice name) and the packed vector, in ``SLICES`` order (one ``cat``)."""
        unknown = set(parts) - set(SLICES)
        if unknown:
            raise KeyError(f"not slices of the packed step vector: {sorted(unknown)}")
        flat = [parts[name].reshape(-1) if name in parts else None for name in SLICES]
        sizes = tuple(0 if t is None else t.numel() for t in flat)
        return cls(sizes), torch.cat([t for t in flat if t is not None])

    @classmethod
    def empty(cls) -> Layout:
        """The layout of a vector not packed yet (every slice absent)."""
        return cls((0,) * len(SLICES))

    @property
    def size(self) -> int:
        """Length of the packed vector."""
        return sum(self.sizes)

    def size_of(self, name: str) -> int:
        """Length of the slice ``name`` (0 when absent)."""
        return self.sizes[SLICES.index(name)]

    def has(self, name: str) -> bool:
        """Whether the slice ``name`` is present (non-empty)."""
        return self.size_of(name) > 0

    def unpack(self, vec: np.ndarray) -> dict[str, np.ndarray]:
        """The slices of ``vec`` by name (views); absent slices are omitted."""
        if vec.size != self.size:
            raise ValueError(f"packed vector of {vec.size} values, layout says {self.size}")
        out: dict[str, np.ndarray] = {}
        offset = 0
        for name, n in zip(SLICES, self.sizes, strict=True):
            if n:
                out[name] = vec[offset:offset + n]
            offset += n
        return out
