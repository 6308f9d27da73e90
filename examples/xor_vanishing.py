"""XOR through 10 hidden sigmoid layers of width 4, without and with residual connections, watched by gradwatch.

The classic vanishing-gradient experiment (Hochreiter 1991; Bengio, Simard and Frasconi 1994): the plain stack stalls
at outputs of 0.5 because its early layers get almost no gradient (ten sigmoid derivatives of at most 0.25 multiply);
the residual stack (He et al. 2016) learns XOR. gradwatch says which layers starve, since when, and why.

    python examples/xor_vanishing.py [--steps 1500] [--log-dir runs/xor]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn

import gradwatch
from gradwatch._demo import XorNet, xor_data


def train(residual: bool, steps: int, log_dir: str) -> gradwatch.Watcher:
    torch.manual_seed(0)
    model = XorNet(residual=residual)  # input -> 10 x (Linear(4, 4) + sigmoid) -> out
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = xor_data()
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=10) as watcher:
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            watcher.step(loss=loss)  # after backward, before optimizer.step()
            optimizer.step()
    print(f"{'residual' if residual else 'plain'}: loss {loss.item():.4f}, "
          f"outputs {[round(v, 2) for v in model(x).view(-1).tolist()]}")
    print(watcher.summary(), end="\n\n")
    return watcher


def main(argv: Sequence[str] | None = None) -> dict[str, gradwatch.Watcher]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--log-dir", default="runs/xor")
    args = parser.parse_args(argv)
    plain = train(False, args.steps, f"{args.log_dir}/plain")
    residual = train(True, args.steps, f"{args.log_dir}/residual")
    print("vanishing (plain):   ", plain.history.layers("vanishing"))
    print("vanishing (residual):", residual.history.layers("vanishing"))
    print(f"tensorboard --logdir {args.log_dir}")
    return {"plain": plain, "residual": residual}


if __name__ == "__main__":
    main()
