"""Fixed, z-score (ZClip) and percentile (AutoClip) clipping side by side on a run with an injected gradient spike.

Three identical runs of a small residual MLP, each with a 50x gradient spike injected at the same step (a stand-in for
a bad batch), each clipped by another rule, each logging to its own TensorBoard run::

    python examples/spike_clipping.py --log-dir runs/spike
    tensorboard --logdir runs/spike

In TensorBoard, compare ``gradwatch/global/grad_norm`` (before clipping) with ``gradwatch/global/grad_norm_clipped``
(after), and ``gradwatch/clip/threshold``: the fixed threshold is a guess; the z-score threshold follows the norm's
EMA; the percentile threshold follows its recent distribution. The spike rule reports the spike
(``gradwatch/symptoms/spike``, and the text under ``gradwatch/alerts``) in every run.
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch
from gradwatch.clipping import NormClip, PercentileClip, ZScoreClip


class ResidualMLP(nn.Module):
    def __init__(self, d: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(16, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
                                    for _ in range(depth))
        self.out = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


def run(name: str, clip: gradwatch.clipping.Clipper, *, log_dir: str, steps: int, spike_at: int) -> dict[str, float]:
    """Train one run; return what happened at the spike and at the end."""
    torch.manual_seed(0)
    model = ResidualMLP()
    teacher = torch.randn(16, 1, generator=torch.Generator().manual_seed(1)) / 4
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    out: dict[str, float] = {"steps clipped": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradwatch.GradWatchWarning)  # the spike is reported in the summary below
        with gradwatch.watch(model, log_dir=f"{log_dir}/{name}", clip=clip, every_n_steps=1) as watcher:
            for step in range(steps):
                gen = torch.Generator().manual_seed(step)
                x = torch.randn(64, 16, generator=gen)
                loss = F.mse_loss(model(x), torch.sin(3 * x @ teacher))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if step == spike_at:
                    for p in model.parameters():
                        p.grad.mul_(50.0)  # the injected spike
                report = watcher.step(loss=loss.detach())
                opt.step()
                out["steps clipped"] += bool(report.clipped)  # reading the report waits for the device: fine here
                if step == spike_at:
                    out["norm at spike"] = report.global_norm
                    out["after clipping"] = report.clipped_norm
                    out["spike reported"] = float(any(s.kind == "spike" for s in report.symptoms))
            out["final loss"] = float(loss.detach())
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-dir", default="runs/spike_clipping")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--spike-at", type=int, default=200)
    args = parser.parse_args(argv)
    rules = {
        "fixed": NormClip(1.0),
        "zscore": ZScoreClip(),  # ZClip defaults: alpha 0.97, z 2.5, 25 warm-up steps
        "percentile": PercentileClip(percentile=10.0, window=200),  # AutoClip's p = 10, bounded history
    }
    results = {name: run(name, clip, log_dir=args.log_dir, steps=args.steps, spike_at=args.spike_at)
               for name, clip in rules.items()}
    print(f"50x gradient spike injected at step {args.spike_at}; TensorBoard runs under {args.log_dir}/")
    print(f"{'rule':<12}{'norm at spike':>15}{'after clipping':>16}{'spike reported':>16}{'steps clipped':>15}"
          f"{'final loss':>12}")
    for name, r in results.items():
        reported = "yes" if r["spike reported"] else "no"
        print(f"{name:<12}{r['norm at spike']:>15.3g}{r['after clipping']:>16.3g}{reported:>16}"
              f"{r['steps clipped']:>15.0f}{r['final loss']:>12.4f}")
    assert all(math.isfinite(r["final loss"]) for r in results.values())
    return results


if __name__ == "__main__":
    main()
