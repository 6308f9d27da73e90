"""A tiny GPT-2 fine-tuned with ``transformers.Trainer`` and ``GradWatchTrainerCallback``, on the CPU in seconds.

    python examples/hf_trainer.py --output-dir runs/hf_trainer
    tensorboard --logdir runs/hf_trainer/runs

The callback takes over the Trainer's clipping (``max_grad_norm=1.0``, the Trainer's default) so that
``gradwatch/global/grad_norm`` is the norm before clipping, logs on the Trainer's logging steps into the Trainer's own
TensorBoard run, and keeps its state in the checkpoints. ``--nan-at N`` writes NaN into one layer's gradient at
optimizer step N, to show ``on_nonfinite="skip"`` (the step changes nothing, training goes on) or ``"stop"``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch


class RandomTokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Random token sequences; the labels are the inputs (causal language modelling)."""

    def __init__(self, n: int = 256, length: int = 32, vocab: int = 1000) -> None:
        self.x = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps (max_steps)")
    parser.add_argument("--output-dir", default="runs/hf_trainer")
    parser.add_argument("--nan-at", type=int, default=None, help="inject NaN at this optimizer step (1-based)")
    parser.add_argument("--on-nonfinite", default="skip", choices=["warn", "skip", "stop", "raise"])
    args = parser.parse_args(argv)

    import transformers

    from gradwatch.transformers import GradWatchTrainerCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    training = transformers.TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        learning_rate=1e-3, logging_steps=5, save_steps=20, report_to=["tensorboard"], use_cpu=True,
        disable_tqdm=True, seed=0)
    callback = GradWatchTrainerCallback(on_nonfinite=args.on_nonfinite)
    trainer = transformers.Trainer(model=model, args=training, train_dataset=RandomTokens(), callbacks=[callback])
    if args.nan_at is not None:
        trainer.add_callback(nan_at(args.nan_at, "transformer.h.1.mlp.c_fc"))
    trainer.train()
    return {"watcher": callback.watcher, "trainer": trainer}


def nan_at(step: int, layer: str) -> Any:
    """A Trainer callback that writes NaN into ``layer``'s weight gradient during optimizer step ``step`` (1-based)."""
    import transformers

    class NaNAt(transformers.TrainerCallback):  # type: ignore[misc]
        active = False

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            model.get_submodule(layer).weight.register_hook(
                lambda g: torch.full_like(g, float("nan")) if self.active else g)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.active = state.global_step + 1 == step

    return NaNAt()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
