"""A deep plain CNN whose early layers starve, and the same CNN with batch norm and residual connections.

A very deep stack of plain convolutions (VGG has more than ten) can starve its early layers, because the gradient that
reaches them is a product of one factor per layer; batch normalisation (Ioffe and Szegedy 2015) keeps every layer's
scale in check and residual connections (He et al. 2016) give the gradient a path that skips the convolutions. Two CNNs
with 16 convolutional blocks of 8 channels (3x3, ReLU, PyTorch's default initialisation), trained with SGD on 8x8 noisy
templates of 10 classes:

1. plain: ``conv -> ReLU`` per block                      -> ``vanishing`` at the stem and the first ~11 blocks
2. cured: ``x + ReLU(BN(conv(x)))`` per block               -> silent, and it learns

    python examples/cnn_batchnorm_residual.py [--steps 80] [--log-dir runs/cnn]
    tensorboard --logdir runs/cnn  # gradwatch/grad_norm/<layer>: the plain net's early layers sit ~1e-8 below the head

Default thresholds; ``vanishing`` needs ``vanishing_patience`` (50) starved steps in a row, so ``--steps`` >= 50.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch


class Block(nn.Module):
    """``conv -> ReLU``; with ``cured=True``: ``x + ReLU(BN(conv(x)))``."""

    def __init__(self, channels: int, cured: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=not cured)
        self.bn = nn.BatchNorm2d(channels) if cured else nn.Identity()
        self.act = nn.ReLU()
        self.residual = cured

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        return x + y if self.residual else y


class DeepCNN(nn.Module):
    """A stem convolution, ``depth`` blocks, global average pooling and a linear head over 10 classes."""

    def __init__(self, *, cured: bool, depth: int = 16, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(channels, cured) for _ in range(depth)])
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def train(cured: bool, steps: int, log_dir: str) -> gradwatch.Watcher:
    """Train one variant for ``steps`` steps; print the diagnosis; return the (closed) watcher."""
    torch.manual_seed(0)
    model = DeepCNN(cured=cured)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(10, 1, 8, 8, generator=g)  # one 8x8 pattern per class; samples are noisy copies
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=5) as watcher:
        for _ in range(steps):
            y = torch.randint(0, 10, (32,), generator=g)
            x = templates[y] + 0.5 * torch.randn(32, 1, 8, 8, generator=g)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            watcher.step(loss=loss)  # after backward, before optimizer.step()
            optimizer.step()
            optimizer.zero_grad()
    name = "batch norm + residual" if cured else "plain"
    print(f"=== {name}: final loss {loss.item():.3f} (chance: {torch.log(torch.tensor(10.0)).item():.3f})")
    print(watcher.summary())
    for s in watcher.history.summaries()[:1]:
        print(f"first alert: {s.first_message}")
    print()
    return watcher


def main(argv: Sequence[str] | None = None) -> dict[str, gradwatch.Watcher]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--log-dir", default="runs/cnn")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small convolutions: threads only fight over the cores
    logging.getLogger("gradwatch").setLevel(logging.ERROR)  # the summaries below say it once per run
    out = {"plain": train(False, args.steps, f"{args.log_dir}/plain"),
           "cured": train(True, args.steps, f"{args.log_dir}/cured")}
    print(f"tensorboard --logdir {args.log_dir}")
    return out


if __name__ == "__main__":
    main()
