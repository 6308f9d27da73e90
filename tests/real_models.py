"""Real architectures, healthy and sick, for calibrating gradwatch's diagnoses (issue 16).

Models are built from ``transformers`` configs (GPT-2, BERT-MLM, LLaMA, ViT, ResNet) with random init and the real
vocabularies, or by hand (LSTM LM, deep post-LN / pre-LN encoder stacks, vanilla tanh RNN, deep sigmoid VGG-style CNN,
VGG-style CNN with BatchNorm). Widths are small so that a training step takes tens of milliseconds on one CPU core.

Every case ``name`` in :data:`CASES` gives

* ``build(name, seed=0) -> (model, make_batch, loss_fn)``: ``make_batch(step)`` draws a deterministic synthetic batch
  (seeded by ``seed`` and ``step``) of a learnable task; ``loss_fn(model, inputs)`` returns the scalar loss;
* ``standard_recipe(name, model, steps=None) -> (optimizer, scheduler)``: the recipe of the case (the scheduler, a
  ``LambdaLR``, is stepped once per optimizer step; sick cases carry their sickness here or in ``build``).

The synthetic tasks:

* tokens: each sequence repeats a short pattern (period 3-8) whose tokens follow a fixed random bigram map over 128
  ids of the real vocabulary (``build(..., tokens=N)``) with probability 0.75, or are random among them: the unigram,
  bigram and copy structure can be learnt in turn, so the loss falls from ln(vocab) over hundreds of steps;
* images: 10 classes, each a fixed smooth random 3x32x32 prototype; an image is its class's prototype, randomly
  shifted (circularly, up to 8 px) and scaled, plus Gaussian noise.

Importing this module is cheap: ``transformers`` is imported inside the builders that need it, and a builder whose
library is missing raises :class:`unittest.SkipTest` (a skip under pytest).
"""

from __future__ import annotations

import importlib.util
import math
import unittest
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CASES",
    "HAS_TRANSFORMERS",
    "Case",
    "build",
    "layer_role",
    "param_groups_by_layer",
    "standard_recipe",
]

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None

Inputs = Any
MakeBatch = Callable[[int], Inputs]
LossFn = Callable[[nn.Module, Inputs], torch.Tensor]


class Case(NamedTuple):
    """One calibration case.

    Attributes:
        family: the builder (``gpt2``, ``bert``, ...).
        healthy: whether the run is healthy (gradwatch should stay silent).
        steps: steps to train (healthy: >= 200; sick: long enough to show the symptom).
        expect: for a sick case, the symptom kind(s) gradwatch should report; ``()`` for healthy ones.
        region: where the symptom should be (``"input"`` side, ``"model"``-wide, ...), or ``None``.
        transformers: whether the case needs ``transformers``.
        note: what the case is.
    """

    family: str
    healthy: bool
    steps: int
    expect: tuple[str, ...] = ()
    region: str | None = None
    transformers: bool = False
    note: str = ""


CASES: dict[str, Case] = {
    # healthy, from transformers configs
    "gpt2": Case("gpt2", True, 240, transformers=True, note="GPT2LMHeadModel, 4x64, AdamW 6e-4, warm-up + cosine"),
    "gpt2_frozen": Case("gpt2", True, 240, transformers=True, note="gpt2 with blocks h.0, h.1 frozen"),
    "bert": Case("bert", True, 240, transformers=True, note="BertForMaskedLM, 4x64, AdamW 5e-4, warm-up + linear"),
    "llama": Case("llama", True, 240, transformers=True, note="LlamaForCausalLM, 4x64, AdamW 1e-3, warm-up + cosine"),
    "vit": Case("vit", True, 240, transformers=True, note="ViTForImageClassification 32px/8px patches, AdamW 1e-3"),
    "resnet": Case("resnet", True, 240, transformers=True, note="ResNetForImageClassification, basic [2,2,2,2]"),
    "resnet_frozen": Case("resnet", True, 240, transformers=True, note="resnet with the stem and stage 1 frozen"),
    # healthy, hand-built
    "lstm": Case("lstm", True, 240, note="2-layer LSTM LM, vocab 10000, Adam 1e-3"),
    "postln": Case("postln", True, 240, note="18-layer post-LN encoder LM, AdamW 3e-4 with warm-up"),
    "preln": Case("preln", True, 240, note="18-layer pre-LN encoder LM, AdamW 1e-3 with warm-up"),
    "preln_nowarmup": Case("preln", True, 240, note="control: preln at postln_nowarmup's constant 2e-3, no warm-up"),
    "rnn": Case("rnn", True, 240, note="tanh RNN LM (default init), Adam 1e-3"),
    "cnn_bn": Case("cnn_bn", True, 240, note="VGG-style 10-conv CNN with BatchNorm + ReLU, SGD 0.1 momentum 0.9"),
    # sick
    "gpt2_lr1000x": Case("gpt2", False, 60, ("divergence", "exploding"), "model", True,
                         "gpt2 with AdamW at 1000x its learning rate (0.6)"),
    "postln_nowarmup": Case("postln", False, 240, ("vanishing",), "input", False,
                            "18-layer post-LN at constant AdamW 2e-3, no warm-up"),
    "rnn_large_recurrent": Case("rnn", False, 120, ("exploding",), "model", False,
                                "tanh RNN, weight_hh scaled to spectral radius 3"),
    "sigmoid_vgg": Case("sigmoid_vgg", False, 240, ("vanishing",), "input", False,
                        "VGG-style 10-conv + 2 FC, sigmoid everywhere, no BN, SGD 0.01 momentum 0.9"),
    "cnn_bn_high_lr": Case("cnn_bn", False, 80, ("divergence", "exploding"), "model", False,
                           "cnn_bn at SGD lr 5 (50x)"),
}


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------------------------------


def _gen(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt * 104_729) % (2**62))


def _const_gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + 15_485_863 * salt + 12_345) % (2**62))


@dataclass(frozen=True)
class TokenTask:
    """Repeated patterns of bigram-map tokens over ``n_used`` ids of a vocabulary of ``vocab``."""

    vocab: int
    seed: int = 0
    n_used: int = 128
    low: int = 1000  # ids below are left alone (special tokens of the real vocabularies live there)
    p_bigram: float = 0.75

    def __post_init__(self) -> None:
        g = _const_gen(self.seed, 1)
        low = self.low if self.vocab - self.low >= self.n_used else 0
        ids = low + torch.randperm(self.vocab - low, generator=g)[: self.n_used]
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "succ", torch.randperm(self.n_used, generator=g))

    def batch(self, step: int, batch: int, length: int) -> torch.Tensor:
        """``(batch, length)`` token ids (int64)."""
        g = _gen(self.seed, step, 2)
        n = self.n_used
        period = torch.randint(3, 9, (batch,), generator=g)
        pat = torch.empty(batch, 8, dtype=torch.long)
        pat[:, 0] = torch.randint(0, n, (batch,), generator=g)
        for i in range(1, 8):
            follow = torch.rand(batch, generator=g) < self.p_bigram
            pat[:, i] = torch.where(follow, self.succ[pat[:, i - 1]], torch.randint(0, n, (batch,), generator=g))
        pos = torch.arange(length).unsqueeze(0) % period.unsqueeze(1)
        return self.ids[pat.gather(1, pos)]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ImageTask:
    """10 classes of smooth random prototypes (3x``size``x``size``), randomly shifted and scaled, plus noise."""

    seed: int = 0
    size: int = 32
    classes: int = 10
    noise: float = 3.0
    shift: int = 8  # random circular shift of the prototype, in pixels, along each axis

    def __post_init__(self) -> None:
        g = _const_gen(self.seed, 2)
        low = torch.randn(self.classes, 3, 4, 4, generator=g)
        proto = F.interpolate(low, size=(self.size, self.size), mode="bilinear", align_corners=False)
        proto = proto / proto.flatten(1).std(dim=1).view(-1, 1, 1, 1)
        object.__setattr__(self, "proto", proto)

    def batch(self, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = _gen(self.seed, step, 3)
        y = torch.randint(0, self.classes, (batch,), generator=g)
        scale = 0.5 + torch.rand(batch, 1, 1, 1, generator=g)
        shift = torch.randint(-self.shift, self.shift + 1, (batch, 2), generator=g).tolist()
        x = torch.stack([self.proto[c].roll((dy, dx), dims=(1, 2))  # type: ignore[attr-defined]
                         for c, (dy, dx) in zip(y.tolist(), shift, strict=True)])
        x = x * scale + self.noise * torch.randn(batch, 3, self.size, self.size, generator=g)
        return x, y


def _image_loss(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = inputs
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits, y)


def _lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy for the hand-built LMs (``model(tokens) -> logits``)."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def _hf_lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, labels=tokens).loss


# ---------------------------------------------------------------------------------------------------------------------
# transformers models
# ---------------------------------------------------------------------------------------------------------------------


def _transformers() -> Any:
    if not HAS_TRANSFORMERS:
        raise unittest.SkipTest("transformers is not installed")
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _gpt2(seed: int, tokens: int = 128) -> tuple[nn.Module, MakeBatch, LossFn]:
    t = _transformers()
    cfg = t.GPT2Config(vocab_size=50257, n_positions=64, n_embd=64, n_layer=4, n_head=4)
    model = t.GPT2LMHeadModel(cfg)
    task = TokenTask(cfg.vocab_size, seed, n_used=tokens)
    return model, lambda step: task.batch(step, 4, 32), _hf_lm_loss


def _bert(seed: int, tokens: int = 128) -> tuple[nn.Module, MakeBatch, LossFn]:
    t = _transformers()
    cfg = t.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=256, max_position_embeddings=64)
    model = t.BertForMaskedLM(cfg)
    task = TokenTask(cfg.vocab_size, seed, n_used=tokens)
    mask_id = 103  # [MASK] in bert-base-uncased

    def make_batch(step: int) -> dict[str, torch.Tensor]:
        tokens = task.batch(step, 8, 32)
        g = _gen(seed, step, 4)
        masked = torch.rand(tokens.shape, generator=g) < 0.15
        masked[:, 0] |= ~masked.any(dim=1)  # at least one target per sequence
        labels = torch.where(masked, tokens, torch.full_like(tokens, -100))
        return {"input_ids": torch.where(masked, torch.full_like(tokens, mask_id), tokens), "labels": labels}

    return model, make_batch, lambda m, b: m(**b).loss


def _llama(seed: int, tokens: int = 128) -> tuple[nn.Module, MakeBatch, LossFn]:
    t = _transformers()
    cfg = t.LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = t.LlamaForCausalLM(cfg)
    task = TokenTask(cfg.vocab_size, seed, n_used=tokens)
    return model, lambda step: task.batch(step, 4, 32), _hf_lm_loss


def _vit(seed: int) -> tuple[nn.Module, MakeBatch, LossFn]:
    t = _transformers()
    cfg = t.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=4,
                      num_attention_heads=4, intermediate_size=128, num_labels=10)
    model = t.ViTForImageClassification(cfg)
    task = ImageTask(seed)
    return model, lambda step: task.batch(step, 32), _image_loss


def _resnet(seed: int) -> tuple[nn.Module, MakeBatch, LossFn]:
    t = _transformers()
    cfg = t.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                         layer_type="basic", num_labels=10)
    model = t.ResNetForImageClassification(cfg)
    task = ImageTask(seed)
    return model, lambda step: task.batch(step, 32), _image_loss


# ---------------------------------------------------------------------------------------------------------------------
# Hand-built models
# ---------------------------------------------------------------------------------------------------------------------


class LSTMLM(nn.Module):
    def __init__(self, vocab: int = 10000, dim: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


class RNNLM(nn.Module):
    def __init__(self, vocab: int = 1024, dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.RNN(dim, hidden, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


class EncoderLM(nn.Module):
    """A causal LM made of ``depth`` independently initialised ``nn.TransformerEncoderLayer`` (post-LN, or pre-LN with
    a final LayerNorm)."""

    def __init__(self, vocab: int = 2048, dim: int = 64, depth: int = 18, heads: int = 4, ff: int = 256,
                 length: int = 64, norm_first: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.1, batch_first=True, norm_first=norm_first)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.embed(tokens) + self.pos(torch.arange(n, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(n, device=tokens.device)
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x))


_VGG = (16, 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, 64, 64, "M")  # 10 convs; 32px -> 2px


class VGG(nn.Module):
    """VGG-style CNN: 10 3x3 convs (``features``), then ``fc`` (256 -> 64) and ``head`` (64 -> 10). With
    ``batch_norm``: Conv-BN-ReLU; without: Conv-``act``."""

    def __init__(self, batch_norm: bool, act: type[nn.Module] = nn.ReLU, classes: int = 10) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c_in = 3
        for v in _VGG:
            if v == "M":
                mods.append(nn.MaxPool2d(2))
                continue
            assert isinstance(v, int)
            mods.append(nn.Conv2d(c_in, v, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                mods.append(nn.BatchNorm2d(v))
            mods.append(act())
            c_in = v
        self.features = nn.Sequential(*mods)
        self.fc = nn.Linear(c_in * 2 * 2, 64)
        self.act = act()
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(self.features(x).flatten(1))))


def _lstm(seed: int, tokens: int = 128) -> tuple[nn.Module, MakeBatch, LossFn]:
    model = LSTMLM()
    task = TokenTask(10000, seed, n_used=tokens)
    return model, lambda step: task.batch(step, 16, 33), _lm_loss


def _rnn(seed: int, radius: float | None = None, tokens: int = 128) -> tuple[nn.Module, MakeBatch, LossFn]:
    model = RNNLM()
    if radius is not None:
        with torch.no_grad():
            w = torch.randn(128, 128, generator=_const_gen(seed, 7)) / math.sqrt(128)
            w *= radius / torch.linalg.eigvals(w).abs().max()
            model.rnn.weight_hh_l0.copy_(w)
    task = TokenTask(1024, seed, n_used=tokens, low=0)
    return model, lambda step: task.batch(step, 16, 65), _lm_loss


def _encoder(seed: int, norm_first: bool, tokens: int = 128) -> tuple[nn.Module, MakeBatch, LossFn]:
    model = EncoderLM(norm_first=norm_first)
    task = TokenTask(2048, seed, n_used=tokens, low=0)
    return model, lambda step: task.batch(step, 8, 33), _lm_loss


def _vgg(seed: int, batch_norm: bool, act: type[nn.Module]) -> tuple[nn.Module, MakeBatch, LossFn]:
    model = VGG(batch_norm, act)
    task = ImageTask(seed)
    return model, lambda step: task.batch(step, 32), _image_loss


def build(name: str, seed: int = 0, *, tokens: int = 128) -> tuple[nn.Module, MakeBatch, LossFn]:
    """``(model, make_batch, loss_fn)`` of case ``name`` (random init seeded with ``seed``; train mode).

    ``tokens``: how many ids of the vocabulary the token tasks use. The default 128 lets the small LMs go through the
    unigram, bigram and copy phases within 240 steps (GPT-2 10.8 -> 5.1); with 1024 they learn about the unigram level
    only (GPT-2 10.9 -> 7.8), a slower regime where attention stays near-uniform for longer.

    Raises:
        unittest.SkipTest: when the case needs ``transformers`` and it is not installed.
        KeyError: for an unknown name.
    """
    case = CASES[name]
    if case.transformers:
        _transformers()
    torch.manual_seed(seed)
    builders: dict[str, Callable[[], tuple[nn.Module, MakeBatch, LossFn]]] = {
        "gpt2": lambda: _gpt2(seed, tokens),
        "bert": lambda: _bert(seed, tokens),
        "llama": lambda: _llama(seed, tokens),
        "vit": lambda: _vit(seed),
        "resnet": lambda: _resnet(seed),
        "lstm": lambda: _lstm(seed, tokens),
        "rnn": lambda: _rnn(seed, 3.0 if name == "rnn_large_recurrent" else None, tokens),
        "postln": lambda: _encoder(seed, norm_first=False, tokens=tokens),
        "preln": lambda: _encoder(seed, norm_first=True, tokens=tokens),
        "cnn_bn": lambda: _vgg(seed, True, nn.ReLU),
        "sigmoid_vgg": lambda: _vgg(seed, False, nn.Sigmoid),
    }
    model, make_batch, loss_fn = builders[case.family]()
    if name == "gpt2_frozen":
        for block in model.transformer.h[:2]:  # type: ignore[union-attr,index]
            block.requires_grad_(False)
    elif name == "resnet_frozen":
        model.resnet.embedder.requires_grad_(False)  # type: ignore[union-attr]
        model.resnet.encoder.stages[0].requires_grad_(False)  # type: ignore[union-attr,index]
    torch.manual_seed(seed + 1)  # dropout and the like: the same stream whatever the builder drew
    model.train()
    return model, make_batch, loss_fn


# ---------------------------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------------------------


def _schedule(steps: int, warmup: int, decay: str) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then ``cosine`` to 10 %, ``linear`` to 0, or ``const``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        if decay == "cosine":
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
        if decay == "linear":
            return max(0.0, 1.0 - t)
        return 1.0

    return f


def _adamw_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The usual split: weight decay on matrices (dim >= 2), none on biases, norm gains and 1-d parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


HORIZON = 240  # the schedules' default length: the healthy runs' steps; sick runs are cut short of it


def standard_recipe(name: str, model: nn.Module,
                    steps: int | None = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """``(optimizer, scheduler)`` of case ``name``, its schedule laid over ``steps`` steps (default :data:`HORIZON`,
    also for the sick cases trained for fewer steps: they follow the healthy schedule, cut short). Warm-up: 20 steps
    (a tenth of shorter horizons). Step the scheduler once after each ``optimizer.step()``.

    * transformers (GPT-2, BERT, LLaMA, ViT, encoder stacks): AdamW, lr 3e-4 to 1e-3, warm-up, then cosine (BERT:
      linear);
    * ResNet and the BatchNorm CNN: SGD, momentum 0.9, lr 0.1, weight decay 5e-4, cosine;
    * LSTM and RNN: Adam 1e-3, constant; the sigmoid CNN: SGD 0.01 momentum 0.9, constant.

    Sick recipes: ``gpt2_lr1000x`` multiplies GPT-2's lr by 1000; ``postln_nowarmup`` (and its control
    ``preln_nowarmup``) use a constant 2e-3 without warm-up; ``cnn_bn_high_lr`` uses lr 5.
    """
    case = CASES[name]
    steps = steps if steps is not None else HORIZON
    warm = max(1, min(20, steps // 10))
    family = case.family
    opt: torch.optim.Optimizer
    if family in ("gpt2", "llama", "bert", "vit", "postln", "preln"):
        lr, betas, wd, decay = {
            "gpt2": (6e-4, (0.9, 0.95), 0.1, "cosine"),
            "llama": (1e-3, (0.9, 0.95), 0.1, "cosine"),
            "bert": (5e-4, (0.9, 0.999), 0.01, "linear"),
            "vit": (1e-3, (0.9, 0.999), 0.05, "cosine"),
            "postln": (3e-4, (0.9, 0.98), 0.01, "cosine"),
            "preln": (1e-3, (0.9, 0.98), 0.01, "cosine"),
        }[family]
        if name == "gpt2_lr1000x":
            lr *= 1000
        if name in ("postln_nowarmup", "preln_nowarmup"):
            lr, warm, decay = 2e-3, 0, "const"
        opt = torch.optim.AdamW(_adamw_groups(model, wd), lr=lr, betas=betas)
        f = _schedule(steps, warm, decay) if warm else (lambda step: 1.0)
    elif family in ("resnet", "cnn_bn"):
        lr = 5.0 if name == "cnn_bn_high_lr" else 0.1
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                              weight_decay=5e-4)
        f = _schedule(steps, 0, "cosine")
    elif family in ("lstm", "rnn"):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        f = _schedule(steps, 0, "const")
    elif family == "sigmoid_vgg":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        f = _schedule(steps, 0, "const")
    else:  # pragma: no cover
        raise KeyError(name)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, f)


# ---------------------------------------------------------------------------------------------------------------------
# Layers: grouping and roles
# ---------------------------------------------------------------------------------------------------------------------


def param_groups_by_layer(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by gradwatch layer: the qualified name of the module that registers them (``"__root__"`` for the
    root's own), tied parameters with their first owner, in registration order."""
    seen: set[int] = set()
    out: dict[str, list[nn.Parameter]] = {}
    for path, module in model.named_modules():
        own = [p for _, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            out[path or "__root__"] = own
    return out


_NORM_KINDS = ("Norm",)  # LayerNorm, BatchNorm2d, LlamaRMSNorm, RMSNorm, GroupNorm...


def layer_role(name: str, kind: str) -> str:
    """A coarse role of a layer from its name and module class: ``attn_q``, ``attn_k``, ``attn_v``, ``attn_qkv``
    (fused), ``attn_o``, ``mlp``, ``embed``, ``norm``, ``conv``, ``rnn``, ``head`` or ``other``."""
    n = name.lower()
    last = n.rsplit(".", 1)[-1]
    if any(k in kind for k in _NORM_KINDS):
        return "norm"
    if kind in ("RNN", "LSTM", "GRU"):
        return "rnn"
    if last in ("query", "q_proj"):
        return "attn_q"
    if last in ("key", "k_proj"):
        return "attn_k"
    if last in ("value", "v_proj"):
        return "attn_v"
    if last == "c_attn" or kind == "MultiheadAttention":
        return "attn_qkv"
    if last in ("o_proj", "out_proj") or n.endswith(("attn.c_proj", "attention.output.dense")):
        return "attn_o"
    if kind == "Conv2d":
        return "embed" if "patch" in n else "conv"
    if kind == "Embedding" or "embed" in n or last in ("wte", "wpe"):
        return "embed"
    if (last in ("gate_proj", "up_proj", "down_proj", "c_fc", "c_proj", "linear1", "linear2")
            or ".mlp." in n or "intermediate" in n or n.endswith("output.dense")):
        return "mlp"
    if last == "fc":
        return "mlp"
    if any(k in n for k in ("head", "classifier", "cls.", "decoder")):
        return "head"
    return "other"


def fused_qkv(model: nn.Module, name: str) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """For a fused q/k/v layer (GPT-2's ``c_attn``, ``nn.MultiheadAttention``), ``("q"|"k"|"v", [weight grad slice,
    bias grad slice])``; nothing for other layers or without gradients."""
    module = model.get_submodule(name) if name != "__root__" else model
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        w, b, dim = module.in_proj_weight, module.in_proj_bias, 0
    elif name.endswith("c_attn") and hasattr(module, "weight"):
        w, b, dim = module.weight, getattr(module, "bias", None), 1  # transformers' Conv1D: (in, 3 * out)
    else:
        return
    if w.grad is None:
        return
    d = w.shape[dim] // 3
    for i, part in enumerate("qkv"):
        grads = [w.grad.narrow(dim, i * d, d)]
        if b is not None and b.grad is not None:
            grads.append(b.grad.narrow(0, i * d, d))
        yield part, grads
