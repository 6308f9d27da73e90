"""A vanilla RNN on long sequences whose gradients explode, cured by an LSTM, a GRU, or by gradient clipping.

Backpropagation through time multiplies the gradient by one recurrent Jacobian per time step, so over long sequences it
vanishes or explodes (Hochreiter 1991; Bengio, Simard and Frasconi 1994; Pascanu, Mikolov and Bengio 2013); gated cells
(LSTM, GRU) carry it through their additive cell state, and clipping caps the update when it explodes. The task: read
100 numbers and output the mean of the first 10 (the answer lies 90 steps back). Four plain-PyTorch runs, SGD at the
same rate:

1. ``nn.RNN`` (tanh) with its recurrent matrix in the chaotic regime (spectral radius ~4) -> ``exploding`` at ``rnn``
   from step 0, then at the head too, and a loss that runs away (later its tanh units saturate, so the RNN's own
   gradient also becomes ``vanishing``: the hidden state is stuck at +-1)
2. the same RNN with ``clip=1.0``  -> no ``exploding``: that rule judges the gradient the optimizer receives, and the
   clipper holds it at norm 1. The summary says how often clipping acted and how large the norm was before it, and
   TensorBoard keeps both norms, so the cause stays visible. The weights stay finite and the loss falls. (Over the
   default 60 steps one ``spike`` appears, at step 30: spikes are events of the raw norm, judged before clipping.)
3. ``nn.LSTM`` with its default initialisation -> silent
4. ``nn.GRU`` with its default initialisation  -> silent

    python examples/rnn_long_sequences.py [--steps 60] [--log-dir runs/rnn_long]
    tensorboard --logdir runs/rnn_long    # gradwatch/global/grad_norm vs gradwatch/global/grad_norm_clipped

Default thresholds. ``examples/lightning_rnn_clipping.py`` is the Lightning version of runs 1 and 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch

SEQ_LEN, HIDDEN, GAIN = 100, 32, 4.0
CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class SequenceMean(nn.Module):
    """A recurrent layer ``rnn`` and a linear read-out ``head`` of its last state."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = CELLS[cell](1, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)
        if cell == "rnn":  # Gaussian recurrent matrix with spectral radius ~GAIN: the chaotic regime
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(torch.randn(HIDDEN, HIDDEN) * (GAIN / math.sqrt(HIDDEN)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def train(name: str, cell: str, clip: float | None, steps: int, log_dir: str) -> gradwatch.Watcher:
    """Train one variant; print the diagnosis; return the (closed) watcher."""
    model = SequenceMean(cell)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    # on_nonfinite="ignore": a NaN would still be a symptom and be logged, without a Python warning per step.
    with gradwatch.watch(model, log_dir=log_dir, clip=clip, on_nonfinite="ignore", every_n_steps=5) as watcher:
        for _ in range(steps):
            x = torch.randn(16, SEQ_LEN, 1, generator=g)
            loss = F.mse_loss(model(x), x[:, :10, 0].mean(dim=1, keepdim=True))
            loss.backward()
            watcher.step(loss=loss)  # records the unclipped norms, then clips (clip=1.0)
            optimizer.step()
            optimizer.zero_grad()
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    print(f"=== {name}: final loss {loss.item():.4g} (predicting 0: ~0.1); weights finite: {finite}")
    print(watcher.summary())
    for s in watcher.history.summaries()[:1]:
        print(f"first alert: {s.first_message}")
    print()
    return watcher


def main(argv: Sequence[str] | None = None) -> dict[str, gradwatch.Watcher]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-dir", default="runs/rnn_long")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small recurrent ops: threads only fight over the cores
    logging.getLogger("gradwatch").setLevel(logging.ERROR)  # the summaries below say it once per run
    warnings.simplefilter("ignore", gradwatch.GradWatchWarning)  # (the runaway loss is a spike at every step)
    runs = {"rnn": ("rnn", None), "rnn_clipped": ("rnn", 1.0), "lstm": ("lstm", None), "gru": ("gru", None)}
    out = {name: train(name, cell, clip, args.steps, f"{args.log_dir}/{name}") for name, (cell, clip) in runs.items()}
    print(f"tensorboard --logdir {args.log_dir}")
    return out


if __name__ == "__main__":
    main()
