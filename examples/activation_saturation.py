"""Deep sigmoid vs deep ReLU, and a ReLU net whose units die: what gradwatch's activation hooks diagnose.

The gradient that reaches an early layer is a product of per-layer derivatives. A sigmoid's derivative is at most
0.25 and almost 0 once its input is large (saturation); a ReLU's is exactly 1 or 0, and 0 for a unit whose input is
negative for every sample (a dead unit). Four 10-layer MLPs, trained on the same regression task:

1. sigmoid, weights drawn N(0, 2^2) (far too large): most units saturate       -> ``saturated``
2. sigmoid, PyTorch's default init: small pre-activations, no saturation, but
   ten factors <= 0.25 still starve the first layers                          -> ``vanishing`` only
3. ReLU, He initialisation                                                     -> silent
4. ReLU with biases of -3: every unit is negative for every input              -> ``dead`` (and ``vanishing``)

Run: ``python examples/activation_saturation.py`` (CPU, a few seconds). Add ``--log-dir runs/act`` to write TensorBoard
files (``gradwatch/act_saturated_frac/<module>``, ``gradwatch/act_dead_frac/<module>``,
``gradwatch/grad_out_norm/...``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch


def deep_mlp(act: type[nn.Module], *, std: float | None = None, bias: float | None = None, depth: int = 10,
             width: int = 32, seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    d = 16
    for _ in range(depth):
        lin = nn.Linear(d, width)
        if std is not None:
            nn.init.normal_(lin.weight, std=std)
        if bias is not None:
            nn.init.constant_(lin.bias, bias)
        mods += [lin, act()]
        d = width
    return nn.Sequential(*mods, nn.Linear(d, 1))


CASES = {
    "sigmoid, N(0, 2^2) weights": lambda: deep_mlp(nn.Sigmoid, std=2.0),
    "sigmoid, default init": lambda: deep_mlp(nn.Sigmoid),
    "ReLU, He init": lambda: deep_mlp(nn.ReLU, std=math.sqrt(2 / 32)),
    "ReLU, biases -3": lambda: deep_mlp(nn.ReLU, bias=-3.0),
}


def run(label: str, model: nn.Module, steps: int, log_dir: str | None) -> list:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 1, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out_dir = os.path.join(log_dir, label.replace(" ", "_").replace(",", "")) if log_dir else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradwatch.watch(model, activations=True, log_dir=out_dir) as watcher:
            for _ in range(steps):
                x = torch.randn(64, 16, generator=g)
                loss = F.mse_loss(model(x), torch.sin(x @ teacher))
                loss.backward()
                watcher.step(loss=loss)
                opt.step()
                opt.zero_grad()
            summaries = watcher.history.summaries()
    print(f"\n=== {label}: final loss {loss.item():.3f}")
    if not summaries:
        print("gradwatch: no symptoms.")
    for kind in ("saturated", "dead", "vanishing"):
        layers = [s.layer for s in summaries if s.kind == kind]
        if layers:
            first = next(s for s in summaries if s.kind == kind)
            print(f"{kind}: {len(layers)} module(s), {', '.join(layers[:6])}{' ...' if len(layers) > 6 else ''}")
            print(f"  {first.message}")
    return summaries


def main(argv: Sequence[str] | None = None) -> dict[str, list]:
    """Run every case; return each case's symptom summaries (``SymptomSummary`` list) by label."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)  # vanishing needs 50 steps in a row
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("gradwatch").setLevel(logging.ERROR)  # the summaries below say it once per case
    return {label: run(label, make(), args.steps, args.log_dir) for label, make in CASES.items()}


if __name__ == "__main__":
    main()
