"""The experiment behind ``gradwatch demo``: XOR through 10 hidden sigmoid layers, with and without skips.

A stack of 10 sigmoid layers of width 4 cannot learn XOR with plain SGD: each layer multiplies the back-propagated
gradient by the sigmoid's derivative (at most 0.25) and by small weights, so the early layers receive almost nothing
and the outputs stay at 0.5. The same depth with residual connections (``x + sigmoid(W x + b)``) learns it, because
the skip path carries the gradient through unchanged. gradwatch watches both and says which layers starve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ._episodes import fmt_number, group_layers, kind_label
from ._history import SymptomHistory
from ._watcher import watch

__all__ = ["XorNet", "XorResult", "conclusion", "describe", "learned", "run_xor", "xor_data"]


class ResidualSigmoid(nn.Module):
    """``x + sigmoid(dense(x))``: the skip connection of the demo's residual variant."""

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
    steps: int = 0


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
    return XorResult(residual, loss.item(), outputs, history, os.fspath(log_dir) if log_dir is not None else None,
                     steps)


#: An output counts as right when it is within this distance of its label (0 or 1).
TOLERANCE = 0.25


def learned(result: XorResult) -> bool:
    """Whether the network computes XOR: every output within ``TOLERANCE`` of its label.

    Examples:
        >>> learned(XorResult(False, 0.01, [0.1, 0.9, 0.8, 0.2], SymptomHistory(), None))
        True
        >>> learned(XorResult(True, 0.257, [0.40, 0.42, 0.41, 0.42], SymptomHistory(), None))
        False
    """
    labels = xor_data()[1].view(-1).tolist()
    return all(abs(o - t) < TOLERANCE for o, t in zip(result.outputs, labels, strict=True))


def _name(result: XorResult) -> str:
    return "residual" if result.residual else "plain"


def describe(result: XorResult) -> str:
    """What one run measured and what gradwatch found: its result, then one line per episode (at most two, and a
    line saying how many more): at most four lines."""
    outs = " ".join(f"{o:.2f}" for o in result.outputs)
    verdict = "XOR learned" if learned(result) else "XOR not learned"
    lines = [f"{_name(result):>8}: final loss {result.loss:.4f}, outputs {outs} for (00, 01, 10, 11): {verdict}"]
    episodes = result.history.episodes()
    for e in episodes[:_SHOWN]:
        later = f"; later also {group_layers([x for x, _ in e.later])}" if e.later else ""
        detected = f" (detected at step {e.detected})" if e.detected != e.onset else ""
        lines.append(f"{_INDENT}{kind_label(e.kind)} {e.place} since step {e.onset}{detected}{later}")
    if len(episodes) > _SHOWN:
        lines.append(f"{_INDENT}and {len(episodes) - _SHOWN} more episodes (gradwatch report shows them all)")
    if not episodes:
        lines.append(f"{_INDENT}no symptoms: the gradient reaches every layer")
    return "\n".join(lines)


_INDENT = " " * 10
_SHOWN = 2  # episodes shown per network: the demo prints at most 12 lines in all


def conclusion(plain: XorResult, residual: XorResult) -> str:
    """The diagnosis, from what the two runs measured: whether each learned XOR, and whether its layers starved.

    Examples:
        >>> fed = XorResult(True, 0.257, [0.40, 0.42, 0.41, 0.42], SymptomHistory(), None, steps=300)
        >>> print(conclusion(XorResult(False, 0.25, [0.5] * 4, SymptomHistory(), None, steps=300), fed))
        Diagnosis: neither network learned XOR in 300 steps: the plain stack gets the gradient to every layer \
(loss 0.25); the residual stack gets the gradient to every layer (loss 0.257). More steps may help: \
gradwatch demo --steps 1500.
    """
    either = learned(plain) or learned(residual)
    text = "; ".join(_about(r, say_learned=either) for r in (plain, residual))
    if not either:
        text = f"neither network learned XOR in {max(plain.steps, residual.steps)} steps: {text}"
    if not learned(residual) and not residual.history.episodes("vanishing"):
        text += f". More steps may help: gradwatch demo --steps {max(1500, 5 * residual.steps)}"
    return f"Diagnosis: {text}."


def _about(result: XorResult, *, say_learned: bool) -> str:
    """``the plain stack starves its layers and does not learn XOR (vanishing gradients since step 0, loss 0.25)``."""
    vanishing = result.history.episodes("vanishing")
    gradient = "starves its layers" if vanishing else "gets the gradient to every layer"
    outcome = (" and learns XOR" if learned(result) else " and does not learn XOR") if say_learned else ""
    facts = [f"vanishing gradients since step {vanishing[0].onset}"] if vanishing else []
    facts.append(f"loss {fmt_number(result.loss)}")
    return f"the {_name(result)} stack {gradient}{outcome} ({', '.join(facts)})"
