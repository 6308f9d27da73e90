"""The benchmark workloads: a deep MLP, a ResNet-style CNN with batch norm, a GPT-style transformer LM, and two real
architectures built by ``transformers`` from their configs: GPT-2 and a ResNet-18-shaped ResNet.

Each has a CPU size (small: the suite must run in minutes on 2 cores) and a GPU size (the transformer is GPT-2-small
shaped: 12 layers, d=768, 12 heads, vocab 50257), and a ``tiny`` size for the smoke test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

Size = Literal["tiny", "cpu", "gpu"]


@dataclass
class Workload:
    name: str
    model: nn.Module
    batch: tuple[Tensor, ...]
    loss: Callable[[nn.Module, tuple[Tensor, ...]], Tensor]
    description: str


def mlp(size: Size, device: torch.device) -> Workload:
    width, depth, batch = {"tiny": (32, 4, 8), "cpu": (512, 8, 32), "gpu": (2048, 32, 512)}[size]
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10)).to(device)
    x = torch.randn(batch, width, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return Workload("mlp", model, (x, y), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                    f"MLP {depth}x{width}, batch {batch}")


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                      if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                stages.append(_Block(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def cnn(size: Size, device: torch.device) -> Workload:
    widths, blocks, batch, hw = {"tiny": ((8, 16), 1, 4, 8), "cpu": ((16, 32, 64), 1, 16, 32),
                                 "gpu": ((64, 128, 256, 512), 2, 256, 64)}[size]
    model = ResNet(widths, blocks).to(device)
    x = torch.randn(batch, 3, hw, hw, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return Workload("cnn", model, (x, y), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                    f"ResNet-style CNN widths {widths}, {blocks} blocks/stage, batch {batch} at {hw}x{hw}")


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        x = self.blocks(x, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(x))


def transformer(size: Size, device: torch.device) -> Workload:
    vocab, d, layers, heads, seq, batch = {"tiny": (64, 16, 2, 2, 8, 2), "cpu": (2048, 128, 2, 4, 64, 4),
                                           "gpu": (50257, 768, 12, 12, 512, 8)}[size]
    model = GPT(vocab, d, layers, heads, seq).to(device)
    tokens = torch.randint(0, vocab, (batch, seq + 1), device=device)

    def loss(m: nn.Module, b: tuple[Tensor, ...]) -> Tensor:
        logits = m(b[0][:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b[0][:, 1:].reshape(-1))

    return Workload("transformer", model, (tokens,), loss,
                    f"GPT-style LM {layers} layers, d={d}, {heads} heads, vocab {vocab}, seq {seq}, batch {batch}")


WORKLOADS: dict[str, Callable[[Size, torch.device], Workload]] = {"mlp": mlp, "cnn": cnn, "transformer": transformer}


# ----------------------------------------------------------------------------------------------- real architectures
def _transformers() -> object:
    try:
        import transformers
    except ImportError as exc:  # the suite still runs the hand-built workloads
        raise RuntimeError("the real-architecture workloads need transformers (pip install transformers)") from exc
    transformers.logging.set_verbosity_error()
    return transformers


def gpt2(size: Size, device: torch.device) -> Workload:
    """GPT-2 as ``transformers`` builds it (``GPT2LMHeadModel``, tied head, real vocabulary), narrower on the CPU."""
    t: Any = _transformers()
    d, layers, heads, seq, batch, vocab = {"tiny": (16, 2, 2, 8, 2, 256), "cpu": (128, 4, 4, 64, 4, 50257),
                                           "gpu": (768, 12, 12, 512, 8, 50257)}[size]
    cfg = t.GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=d, n_layer=layers, n_head=heads)
    model = t.GPT2LMHeadModel(cfg).to(device)
    tokens = torch.randint(0, vocab, (batch, seq), device=device)
    return Workload("gpt2", model, (tokens,), lambda m, b: m(input_ids=b[0], labels=b[0]).loss,
                    f"transformers GPT2LMHeadModel {layers} layers, d={d}, {heads} heads, vocab {vocab}, seq {seq}, "
                    f"batch {batch}")


def gpt2_deep(layers: int, device: torch.device) -> Workload:
    """A narrow GPT-2 of ``layers`` blocks: 6 watched layers per block (the event-file size of a deep model)."""
    t: Any = _transformers()
    cfg = t.GPT2Config(vocab_size=256, n_positions=8, n_embd=16, n_layer=layers, n_head=2)
    model = t.GPT2LMHeadModel(cfg).to(device)
    tokens = torch.randint(0, 256, (2, 8), device=device)
    return Workload("gpt2_deep", model, (tokens,), lambda m, b: m(input_ids=b[0], labels=b[0]).loss,
                    f"transformers GPT2LMHeadModel {layers} layers, d=16")


def resnet(size: Size, device: torch.device) -> Workload:
    """ResNet-18's layout as ``transformers`` builds it (``ResNetForImageClassification``, basic blocks [2, 2, 2, 2]),
    narrower on the CPU."""
    t: Any = _transformers()
    widths, batch, hw = {"tiny": ([8, 8, 16, 16], 2, 16), "cpu": ([16, 32, 64, 128], 16, 32),
                         "gpu": ([64, 128, 256, 512], 128, 64)}[size]
    cfg = t.ResNetConfig(num_channels=3, embedding_size=widths[0], hidden_sizes=widths, depths=[2, 2, 2, 2],
                         layer_type="basic", num_labels=10)
    model = t.ResNetForImageClassification(cfg).to(device)
    x = torch.randn(batch, 3, hw, hw, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return Workload("resnet", model, (x, y),
                    lambda m, b: nn.functional.cross_entropy(m(pixel_values=b[0]).logits, b[1]),
                    f"transformers ResNetForImageClassification (ResNet-18 layout), widths {widths}, batch {batch} "
                    f"at {hw}x{hw}")


WORKLOADS.update({"gpt2": gpt2, "resnet": resnet})
