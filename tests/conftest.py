from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch._layers import discover_layers


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)


def reference_layer_stats(model: nn.Module) -> dict[str, tuple[float | None, float | None]]:
    """float64 (L2 norm, max |g|) per layer, computed independently of gradwatch's fused path."""
    out = {}
    for layer in discover_layers(model):
        grads = [p.grad for p in layer.params if p.grad is not None]
        if not grads:
            out[layer.name] = (None, None)
            continue
        dense = [g.coalesce().to_dense() if g.is_sparse else g for g in grads]
        sq = sum(float(g.double().pow(2).sum()) for g in dense)
        mx = max(float(g.double().abs().max()) for g in dense)
        out[layer.name] = (math.sqrt(sq), mx)
    return out


def rel_close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)
