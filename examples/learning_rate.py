"""Too large a learning rate: the gradients explode, then turn NaN; a lower rate, or clipping, keeps the run healthy.

Plain SGD on a small ReLU MLP (regression). At ``lr=1.0`` every step overshoots the minimum by more than it corrects,
so the weights and the gradients grow geometrically: gradwatch reports ``exploding`` at every layer a few steps in, and
``nonfinite`` (NaN) at every layer from the next step on: the weights have overflowed. Three runs:

1. ``lr=1.0``               -> ``exploding`` at layers 0, 2, 4 (and the model), then ``nonfinite`` at all three
2. ``lr=0.05``              -> silent, and it learns
3. ``lr=1.0``, ``clip=1.0``  -> silent: each update is at most ``lr * 1.0`` long, so the weights stay finite

    python examples/learning_rate.py [--steps 100] [--log-dir runs/lr]
    tensorboard --logdir runs/lr    # gradwatch/global/grad_norm, gradwatch/symptoms/*, text gradwatch/alerts

Default thresholds. ``on_nonfinite="ignore"`` records the NaN steps (symptoms, TensorBoard) without a Python warning
per step; the default ``"warn"`` warns, ``"raise"`` stops at the first NaN step, ``"skip"`` drops its update.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def train(name: str, lr: float, clip: float | None, steps: int, log_dir: str) -> gradwatch.Watcher:
    """Train one variant; print the diagnosis; return the (closed) watcher."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(16, 1, generator=g)
    with gradwatch.watch(model, log_dir=log_dir, clip=clip, on_nonfinite="ignore") as watcher:
        for _ in range(steps):
            x = torch.randn(64, 16, generator=g)
            t = x @ teacher
            loss = F.mse_loss(model(x), torch.sin(t) + 0.5 * t)
            loss.backward()
            watcher.step(loss=loss)
            optimizer.step()
            optimizer.zero_grad()
    print(f"=== {name}: lr={lr}, clip={clip}: final loss {loss.item():.4g}")
    print(watcher.summary())
    for s in watcher.history.summaries()[:1]:
        print(f"first alert: {s.first_message}")
    print()
    return watcher


def main(argv: Sequence[str] | None = None) -> dict[str, gradwatch.Watcher]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--log-dir", default="runs/lr")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("gradwatch").setLevel(logging.ERROR)  # the summaries below say it once per run
    runs = {"too_large": (1.0, None), "lower": (0.05, None), "clipped": (1.0, 1.0)}
    out = {name: train(name, lr, clip, args.steps, f"{args.log_dir}/{name}") for name, (lr, clip) in runs.items()}
    print(f"tensorboard --logdir {args.log_dir}")
    return out


if __name__ == "__main__":
    main()
