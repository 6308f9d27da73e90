"""Glorot & Bengio (2010): standard vs normalised (Xavier) initialisation of a deep tanh network, seen by gradwatch.

"Understanding the difficulty of training deep feedforward neural networks" trains deep tanh networks and looks at the
gradient back-propagated to each layer. With the then-standard initialisation ``W ~ U[-1/sqrt(n), 1/sqrt(n)]``
(``n``: the layer's fan-in) each layer scales the back-propagated gradient by about ``sqrt(n Var W) = sqrt(1/3)``, so
it shrinks layer by layer toward the input; with their *normalised* initialisation
``W ~ U[-sqrt(6/(n_in+n_out)), +sqrt(6/(n_in+n_out))]`` (``nn.init.xavier_uniform_``) it stays about level. They also
note that the gradients of the *weights* need not shrink the same way (a weight's gradient is its layer's input times
the back-propagated gradient, and the inputs grow toward the input side as the gradients shrink).

gradwatch's hooks (``watch(model, activations=True)``) record the norm of the gradient flowing out of every module,
``gradwatch/grad_out_norm/<module>``; for a ``Linear`` layer that is the gradient with respect to its pre-activations,
the quantity of the paper's figure. This script trains a tanh MLP with 5 hidden layers of width 256 (the paper's depth)
on 8x8 inputs with pixels in [0, 1], with each initialisation, and prints that per-layer profile (averaged over the
first 10 steps) next to the weight-gradient norms (``gradwatch/grad_norm/<layer>``):

    python examples/glorot_init.py [--steps 50] [--log-dir runs/glorot] [--figure docs/glorot.png]
    tensorboard --logdir runs/glorot

Neither run is *sick* by gradwatch's rules (a 10x fall over 5 layers is far from the ``vanishing`` floor of 3e-4): the
profile is the diagnosis here, and the script checks the paper's two claims: monotonic decrease toward the input with
the standard initialisation, less than a factor of 2 across layers with the normalised one.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch

DEPTH, WIDTH, INPUTS, CLASSES, PROFILE_STEPS = 5, 256, 64, 10, 10
HIDDEN = [f"fc{i}" for i in range(1, DEPTH + 1)]


def tanh_mlp(init: str, seed: int = 0) -> nn.Sequential:
    """``DEPTH`` hidden ``Linear + Tanh`` layers and a linear output; ``init``: ``"standard"`` or ``"normalised"``."""
    torch.manual_seed(seed)
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    d = INPUTS
    for i, name in enumerate([*HIDDEN, "out"]):
        lin = nn.Linear(d, CLASSES if name == "out" else WIDTH)
        if init == "standard":
            bound = 1 / math.sqrt(lin.in_features)  # U[-1/sqrt(n), 1/sqrt(n)], n = fan-in
            nn.init.uniform_(lin.weight, -bound, bound)
        else:
            nn.init.xavier_uniform_(lin.weight)  # U[-sqrt(6/(n_in+n_out)), +sqrt(6/(n_in+n_out))]
        nn.init.zeros_(lin.bias)
        mods[name] = lin
        if name != "out":
            mods[f"tanh{i + 1}"] = nn.Tanh()
        d = lin.out_features
    return nn.Sequential(mods)


def mean_over_first_steps(sink: gradwatch.MemorySink, tag: str) -> float:
    values = [v for step, v in sink.series(tag) if step < PROFILE_STEPS]
    return sum(values) / len(values)


def train(init: str, steps: int, log_dir: str | None) -> dict[str, list[float]]:
    """Train one initialisation; return the per-layer profiles ``backprop`` and ``weight_grad`` (fc1 first)."""
    model = tanh_mlp(init)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(INPUTS, CLASSES, generator=g)
    sink = gradwatch.MemorySink()  # the numbers, in memory, besides the TensorBoard files
    with gradwatch.watch(model, log_dir=log_dir, activations=True, sinks=[sink]) as watcher:
        for _ in range(steps):
            x = torch.rand(128, INPUTS, generator=g)  # 8x8 "images" with pixels in [0, 1]
            loss = F.cross_entropy(model(x), ((x - 0.5) @ teacher).argmax(dim=1))
            loss.backward()
            watcher.step(loss=loss)
            optimizer.step()
            optimizer.zero_grad()
    profile = {"backprop": [mean_over_first_steps(sink, f"gradwatch/grad_out_norm/{n}") for n in HIDDEN],
               "weight_grad": [mean_over_first_steps(sink, f"gradwatch/grad_norm/{n}") for n in HIDDEN]}
    ratio = max(profile["backprop"]) / min(profile["backprop"])
    print(f"=== {init} initialisation: final loss {loss.item():.3f}")
    print(f"{'layer':<6} {'|dL/d(pre-activation)|':>23} {'|dL/dW|':>10}")
    for name, bp, wg in zip(HIDDEN, profile["backprop"], profile["weight_grad"], strict=True):
        print(f"{name:<6} {bp:>23.3e} {wg:>10.3e}")
    monotonic = all(a < b for a, b in itertools.pairwise(profile["backprop"]))
    print(f"back-propagated gradient: {'decreases monotonically toward the input' if monotonic else 'not monotonic'}; "
          f"largest / smallest across layers: {ratio:.2f}")
    print(watcher.summary(), end="\n\n")
    return profile


def plot(profiles: dict[str, dict[str, list[float]]], path: str) -> None:
    """The two profiles side by side, as a small PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=90, sharey=True)
    layers = range(1, DEPTH + 1)
    for ax, key, title in zip(axes, ("backprop", "weight_grad"),
                              ("back-propagated gradient (grad_out_norm)", "weight gradient (grad_norm)"), strict=True):
        for init, style in (("standard", "o-"), ("normalised", "s-")):
            ax.plot(layers, profiles[init][key], style, label=f"{init} init")
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = input side)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("L2 norm, mean of steps 0-9")
    axes[0].legend(fontsize=8)
    fig.suptitle("tanh MLP, 5 hidden layers of width 256: standard vs normalised (Xavier) initialisation", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"figure: {path}")


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--log-dir", default="runs/glorot")
    parser.add_argument("--figure", default=None, help="write the profile figure (PNG) there")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("gradwatch").setLevel(logging.ERROR)
    profiles = {init: train(init, max(args.steps, PROFILE_STEPS), f"{args.log_dir}/{init}")
                for init in ("standard", "normalised")}
    if args.figure:
        plot(profiles, args.figure)
    print(f"tensorboard --logdir {args.log_dir}")
    return profiles


if __name__ == "__main__":
    main()
