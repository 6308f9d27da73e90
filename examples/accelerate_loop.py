"""A plain training loop with Hugging Face Accelerate, watched by gradwatch: accumulation, mixed precision, clipping.

    python examples/accelerate_loop.py --steps 50 --accumulation 4 --mixed-precision bf16 --log-dir runs/accelerate
    tensorboard --logdir runs/accelerate

The loop is the one from Accelerate's documentation, with one line added after ``accelerator.backward(loss)``:
``gradwatch.accelerate.step(watcher, accelerator, loss)``. On the micro-batch that ends an accumulation window
(``accelerator.sync_gradients``) it runs ``watcher.step()`` once (the gradients are then accumulated and all-reduced),
after unscaling them under fp16; on the others it only adds the loss up, so ``gradwatch/loss`` is the window's mean.
The watcher clips (``clip=max_norm``, identical to ``accelerator.clip_grad_norm_``) after measuring, so the
dashboards show the norm before clipping; do not call ``accelerator.clip_grad_norm_`` as well. Under ``accelerate
launch`` (several processes) the same script works: the statistics are combined across ranks and rank zero writes.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch
import gradwatch.accelerate


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 64), nn.GELU(),
                         nn.Linear(64, 1))


def make_data(n: int = 512) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)).sin()
    return torch.utils.data.TensorDataset(x, y)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps")
    parser.add_argument("--accumulation", type=int, default=4, help="gradient_accumulation_steps")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--log-dir", default="runs/accelerate")
    args = parser.parse_args(argv)

    from accelerate import Accelerator

    torch.manual_seed(0)
    accelerator = Accelerator(gradient_accumulation_steps=args.accumulation, mixed_precision=args.mixed_precision,
                              cpu=not torch.cuda.is_available())
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(make_data(), batch_size=8, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    optimizer_steps = 0

    def count(*_: Any) -> None:
        nonlocal optimizer_steps
        optimizer_steps += 1

    optimizer.optimizer.register_step_post_hook(count)  # the real optimizer: how often it actually stepped

    # The watcher clips (after measuring); accelerator.scaler is the GradScaler under fp16 (None otherwise).
    watcher = gradwatch.watch(model, optimizer=optimizer, scaler=accelerator.scaler, clip=args.max_grad_norm,
                              log_dir=args.log_dir, on_nonfinite="skip")
    micro_batches = 0
    while watcher.steps_taken < args.steps:
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = F.mse_loss(model(x).float(), y)
                accelerator.backward(loss)
                gradwatch.accelerate.step(watcher, accelerator, loss)  # watcher.step() when sync_gradients
                optimizer.step()  # Accelerate steps (and zeroes) only when the window ends
                optimizer.zero_grad()
            micro_batches += 1
            if watcher.steps_taken >= args.steps:
                break
    watcher.close()
    if accelerator.is_main_process:
        print(f"{micro_batches} micro-batches, {optimizer_steps} optimizer steps, gradwatch measured "
              f"{watcher.steps_taken} steps.")
        print(watcher.summary())
    return {"watcher": watcher, "optimizer_steps": optimizer_steps, "micro_batches": micro_batches,
            "model": accelerator.unwrap_model(model)}


if __name__ == "__main__":
    main()
