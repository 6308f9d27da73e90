"""The seed experiment behind ``gradwatch demo``: XOR through 10 hidden sigmoid layers, with and without skips.

A stack of 10 sigmoid layers of width 4 cannot learn XOR with plain SGD: each layer multiplies the back-propagated
gradient by the sigmoid's derivative (at most 0.25) and by small weights, so the early layers receive almost nothing
and the outputs stay at 0.5. The same depth with residual connections (``x + sigmoid(W x + b)``) learns it, because
the skip path carries the gradient through unchanged. gradwatch watches both and says which layers starve.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._history import SymptomHistory, SymptomSummary
from ._watcher import watch

__all__ = ["XorNet", "XorResult", "run_xor", "xor_data"]


class ResidualSigmoid(nn.Module):
    """``x + sigmoid(dense(x))``: the skip connection of the seed's residual variant."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sigmoid(self.dense(x))


class XorNet(nn.Module):
    """Input layer, ``depth`` hidden sigmoid layers of ``width`` units, sigmoid output.

    Examples:
        >>> [name for name, _ in XorNet(depth=2).named_children()]
        ['input', 'hidden', 'out', 'act']
    """

    def __init__(self, *, residual: bool = False, depth: int = 10, width: int = 4) -> None:
        super().__init__()
        self.residual = residual
        self.input = nn.Linear(2, width)
        self.hidden = nn.ModuleList(ResidualSigmoid(width) if residual else nn.Linear(width, width)
                                    for _ in range(depth))
        self.out = nn.Linear(width, 1)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.input(x))
        for layer in self.hidden:
            x = layer(x) if self.residual else self.act(layer(x))
        out: torch.Tensor = self.act(self.out(x))
        return out


def xor_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The four XOR points and their labels."""
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    return x, torch.tensor([[0.0], [1.0], [1.0], [0.0]])


@dataclass
class XorResult:
    residual: bool
    loss: float
    outputs: list[float]
    history: SymptomHistory
    log_dir: str | None


def run_xor(*, residual: bool, steps: int = 1500, lr: float = 1.0, seed: int = 0,
            log_dir: str | os.PathLike[str] | None = None, every_n_steps: int = 10) -> XorResult:
    """Train one XOR network with plain SGD on the MSE loss while gradwatch watches it."""
    torch.manual_seed(seed)
    model = XorNet(residual=residual)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = xor_data()
    with watch(model, log_dir=log_dir, every_n_steps=every_n_steps) as watcher:
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            watcher.step(loss=loss)
            optimizer.step()
        history = watcher.history
    with torch.no_grad():
        outputs = model(x).view(-1).tolist()
    return XorResult(residual, loss.item(), outputs, history, os.fspath(log_dir) if log_dir is not None else None)


def describe(result: XorResult) -> str:
    """A few lines saying what gradwatch found in one run."""
    name = "residual" if result.residual else "plain"
    outs = " ".join(f"{o:.2f}" for o in result.outputs)
    lines = [f"{name:>8}: final loss {result.loss:.4f}, outputs for (00, 01, 10, 11): {outs}"]
    lines += _vanishing_lines(result.history.summaries("vanishing"))
    for s in result.history.summaries():
        if s.kind != "vanishing":
            lines.append(f"{_INDENT}gradwatch: {s.kind} at {s.layer or 'model'}, steps {s.first_step}-{s.last_step}")
    if not result.history:
        lines.append(f"{_INDENT}gradwatch: no symptoms: the gradient reaches every layer.")
    return "\n".join(lines)


_INDENT = " " * 10


def _vanishing_lines(vanishing: Sequence[SymptomSummary]) -> list[str]:
    """The layers that starved first, those that followed, and the first alert's text."""
    if not vanishing:
        return []
    first = min(s.first_step for s in vanishing)
    early = [s.layer for s in vanishing if s.layer and s.first_step == first]
    later = [s.layer for s in vanishing if s.layer and s.first_step != first]
    lines = [f"{_INDENT}gradwatch: VANISHING gradients from step {first} at {len(early)} layers: {', '.join(early)}."]
    if later:
        lines.append(f"{_INDENT}Later also at {', '.join(later)} (the whole stack stalled).")
    lines.append(_INDENT + vanishing[0].first_message)
    return lines
