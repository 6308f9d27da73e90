"""A two-layer model with gradients of known norms, shared by the tests of the W&B and MLflow sinks."""

from __future__ import annotations

import torch
from torch import nn

import gradwatch


def two_layers() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))


def three_steps(model: nn.Module, watcher: gradwatch.Watcher) -> list[gradwatch.StepReport]:
    out = []
    for _ in range(3):
        set_grads(model)
        out.append(watcher.step())
    return out


def set_grads(model: nn.Module, *, nan: bool = False) -> None:
    """Layer ``0``: weight (3, 0; 0, 0), bias (0, 4): norm 5. Layer ``1``: weight (0, 12), bias (5): norm 13; with
    ``nan``, its first weight entry is NaN."""
    first, second = model[0], model[1]
    first.weight.grad = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    first.bias.grad = torch.tensor([0.0, 4.0])
    second.weight.grad = torch.tensor([[float("nan") if nan else 0.0, 12.0]])
    second.bias.grad = torch.tensor([5.0])
