"""What a module's output is (a saturating activation, a ReLU-family one, anything else) and the statistics of one
output computed on the device. Nothing here reads a device value on the host.

A unit is *saturated* where the activation's local derivative is below 10% of its peak, read from the output alone:

=============  ==================================  =====================
module         saturated where                     derivative there
=============  ==================================  =====================
Sigmoid        y <= 0.0257 or y >= 0.9743          y(1-y) < 0.025
Tanh           abs(y) >= 0.9487                    1-y^2 < 0.1
Softsign       abs(y) >= 0.6838                    (1-abs(y))^2 < 0.1
Hardtanh       y at min_val or max_val             0
Hardsigmoid    y at 0 or 1                         0
LogSigmoid     y >= log(0.9)                       1-exp(y) < 0.1
=============  ==================================  =====================

A ReLU-family unit (ReLU, ReLU6, Threshold, Hardswish) is *dead* at a step when it outputs exactly zero for every
sample of the batch; dimension 0 of the output is taken as the batch (a 0-d or 1-d output is one sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._tensors import LOW_PRECISION

__all__ = ["OutputKind", "classify", "flag", "output_stats"]

_RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.Threshold, nn.Hardswish)
_SIGMOID_LO = (1.0 - math.sqrt(0.9)) / 2.0  # y(1-y) = 0.025


@dataclass(frozen=True)
class OutputKind:
    """How a module's output is summarised: a saturation band ``(lo, hi)`` (saturated where ``y <= lo`` or
    ``y >= hi``; ``None``: not a saturating activation) and whether units can die (ReLU family)."""

    band: tuple[float, float] | None = None
    relu_like: bool = False

    @property
    def activation(self) -> str | None:
        return "saturating" if self.band is not None else "relu" if self.relu_like else None


def classify(module: nn.Module) -> OutputKind:
    """The kind of a module's output.

    >>> classify(nn.Tanh()).band
    (-0.9486832980505138, 0.9486832980505138)
    >>> classify(nn.ReLU()).relu_like, classify(nn.Linear(2, 2)).activation
    (True, None)
    """
    if isinstance(module, _RELU_FAMILY):  # before Hardtanh: ReLU6 is a Hardtanh whose 0 side is the dead side
        return OutputKind(relu_like=True)
    if isinstance(module, nn.Sigmoid):
        return OutputKind(band=(_SIGMOID_LO, 1.0 - _SIGMOID_LO))
    if isinstance(module, nn.Tanh):
        return OutputKind(band=(-math.sqrt(0.9), math.sqrt(0.9)))
    if isinstance(module, nn.Softsign):
        return OutputKind(band=(-(1.0 - math.sqrt(0.1)), 1.0 - math.sqrt(0.1)))
    if isinstance(module, nn.Hardtanh):
        return OutputKind(band=(float(module.min_val), float(module.max_val)))
    if isinstance(module, nn.Hardsigmoid):
        return OutputKind(band=(0.0, 1.0))
    if isinstance(module, nn.LogSigmoid):
        return OutputKind(band=(-math.inf, math.log(0.9)))
    return OutputKind()


def output_stats(y: Tensor, kind: OutputKind) -> list[Tensor]:
    """0-d device tensors: ``[sum, l2 norm, centred l2 norm, nonzero count, (saturated count), (alive units)]``.

    The L2 norm doubles as the output's finiteness flag (NaN if any NaN, else Inf if any Inf). The std comes from the
    norm of ``y - mean``: ``E[y^2] - E[y]^2`` from float32 sums would leave about ``3e-4 * abs(mean)`` of noise on
    near-constant outputs (saturated units), and float64 accumulation is many times slower on the CPU. Everything else
    is a single reduction or an in-place elementwise op, the cheapest forms measured on the CPU.
    """
    y = y.detach()
    acc = torch.float32 if y.dtype in LOW_PRECISION else None
    total = y.sum(dtype=acc)
    out = [total, torch.linalg.vector_norm(y, dtype=acc),
           torch.linalg.vector_norm(y - total / y.numel(), dtype=acc)]
    mag = y.abs()
    alive = torch.count_nonzero(mag.amax(0) if y.dim() >= 2 else mag) if kind.relu_like else None
    out.append(mag.sign_().sum(dtype=acc))  # nonzero count; sign_ reuses the buffer
    if kind.band is not None:
        lo, hi = kind.band
        # Float 0/1 masks built in place: on the CPU about 3x faster than boolean masks and count_nonzero.
        if math.isinf(lo):
            out.append(y.ge(hi).sum(dtype=acc))
        else:
            out.append((y - (lo + hi) / 2).abs_().ge_((hi - lo) / 2).sum(dtype=acc))
    if alive is not None:
        out.append(alive)
    return out


def flag(t: Tensor) -> Tensor:
    """Finiteness flag of a tensor: its L2 norm (NaN if any NaN, else Inf if any Inf; finite otherwise)."""
    norm: Tensor = torch.linalg.vector_norm(t.detach(), dtype=torch.float32 if t.dtype in LOW_PRECISION else None)
    return norm
