"""A small zoo of models with synthetic data, used to calibrate gradient-health rules.

Every factory ``make_<name>(seed=0)`` returns ``(model, loss_fn)`` where
``loss_fn(model, step)`` draws a deterministic synthetic batch for ``step``
(seeded from ``seed`` and ``step``) and returns a scalar loss.

``HEALTHY`` models train fine with their ``DEFAULT_OPT`` settings;
``PATHOLOGICAL`` ones exhibit a known gradient pathology:

* ``sigmoid_xor``: 12-layer sigmoid MLP on XOR; gradients vanish at the early
  layers and the loss stalls at ~0.25 (outputs ~0.5) with plain SGD.
* ``residual_xor``: the same net with residual hidden layers; it learns.
* ``exploding_rnn``: tanh RNN with a large (chaotic) recurrent matrix on long
  sequences; the gradient norm explodes.

Only depends on torch. Everything runs on CPU in a few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

LossFn = Callable[[nn.Module, int], torch.Tensor]
Factory = Callable[..., "tuple[nn.Module, LossFn]"]

__all__ = [
    "ALL",
    "CONTROLS",
    "DEFAULT_OPT",
    "EXPECTED",
    "HEALTHY",
    "PATHOLOGICAL",
    "XOR_STEPS",
    "make",
    "make_cnn_bn",
    "make_exploding_rnn",
    "make_lstm",
    "make_residual_mlp",
    "make_residual_xor",
    "make_sigmoid_xor",
    "make_transformer",
    "train",
]


def _gen(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """Deterministic generator for (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**62))


def _const_gen(seed: int, salt: int) -> torch.Generator:
    """Generator for per-model constants (teacher weights, prototypes)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + 104729 * salt + 12345) % (2**62))


# ---------------------------------------------------------------------------
# Healthy models
# ---------------------------------------------------------------------------


class CNNBN(nn.Module):
    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.head(x.mean(dim=(2, 3)))


def make_cnn_bn(seed: int = 0) -> tuple[nn.Module, LossFn]:
    """Small CNN with BatchNorm on 1x16x16 noisy class prototypes, 10 classes."""
    torch.manual_seed(seed)
    model = CNNBN()
    # Smooth-ish class prototypes: upsampled 4x4 random patterns.
    g = _const_gen(seed, 1)
    protos = torch.randn(10, 1, 4, 4, generator=g)
    protos = F.interpolate(protos, size=(16, 16), mode="bilinear", align_corners=False)

    def loss_fn(m: nn.Module, step: int) -> torch.Tensor:
        gs = _gen(seed, step, 1)
        y = torch.randint(0, 10, (16,), generator=gs)
        x = protos[y] + 0.8 * torch.randn(16, 1, 16, 16, generator=gs)
        return F.cross_entropy(m(x), y)

    return model, loss_fn


class ResBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    def __init__(self, d_in: int = 16, d: int = 32, n_blocks: int = 6, d_out: int = 1) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(ResBlock(d, 2 * d) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(self.norm(x))


def make_residual_mlp(seed: int = 0) -> tuple[nn.Module, LossFn]:
    """6-block pre-LN residual MLP regressing a smooth random teacher function."""
    torch.manual_seed(seed)
    model = ResidualMLP()
    g = _const_gen(seed, 2)
    w1 = torch.randn(16, 8, generator=g) / 4.0
    w2 = torch.randn(8, 1, generator=g) / math.sqrt(8)

    def loss_fn(m: nn.Module, step: int) -> torch.Tensor:
        gs = _gen(seed, step, 2)
        x = torch.randn(64, 16, generator=gs)
        y = torch.sin(x @ w1) @ w2 * 2.0
        return F.mse_loss(m(x), y)

    return model, loss_fn


class LSTMReg(nn.Module):
    def __init__(self, d_in: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def make_lstm(seed: int = 0) -> tuple[nn.Module, LossFn]:
    """1-layer LSTM(hidden 32), length-24 sequences; target = running mean of
    channel 0 plus a product of early/late inputs."""
    torch.manual_seed(seed)
    model = LSTMReg()
    T = 24

    def loss_fn(m: nn.Module, step: int) -> torch.Tensor:
        gs = _gen(seed, step, 3)
        x = torch.randn(32, T, 4, generator=gs)
        y = x[:, :, 0].mean(dim=1, keepdim=True) * 3.0 + 0.5 * x[:, -1, 1:2]
        return F.mse_loss(m(x), y)

    return model, loss_fn


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 32, seq_len: int = 16, n_layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq_len, d) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
            for _ in range(n_layers)
        )
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.embed(idx) + self.pos[:T]
        mask = self.mask[:T, :T]
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return self.head(x)


def make_transformer(seed: int = 0) -> tuple[nn.Module, LossFn]:
    """Tiny causal transformer LM (vocab 50, d 32, 2 layers) on a periodic copy
    task: each sequence is a random pattern of period 4 repeated 4 times, so
    tokens 4..15 are predictable (loss floor ~= 4/15 * ln(50) ~= 1.0)."""
    torch.manual_seed(seed)
    model = TinyLM()

    def loss_fn(m: nn.Module, step: int) -> torch.Tensor:
        gs = _gen(seed, step, 4)
        pat = torch.randint(0, 50, (16, 4), generator=gs)
        seq = pat.repeat(1, 5)[:, :17]
        logits = m(seq[:, :16])
        return F.cross_entropy(logits.reshape(-1, 50), seq[:, 1:17].reshape(-1))

    return model, loss_fn


# ---------------------------------------------------------------------------
# Pathological models
# ---------------------------------------------------------------------------

_XOR_X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
_XOR_Y = torch.tensor([[0.0], [1.0], [1.0], [0.0]])


class DeepSigmoidXOR(nn.Module):
    """inp: Linear(2,4)+Sigmoid; hidden.0..hidden.{n-1}: Linear(4,4)+Sigmoid
    (optionally residual: x + sigmoid(Linear(x))); out: Linear(4,1)+Sigmoid.
    ``named_modules()`` order is input -> output."""

    def __init__(self, width: int = 4, depth: int = 10, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.inp = nn.Linear(2, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.inp(x))
        for lin in self.hidden:
            h = torch.sigmoid(lin(x))
            x = x + h if self.residual else h
        return torch.sigmoid(self.out(x))


def _xor_loss(m: nn.Module, step: int) -> torch.Tensor:
    return F.mse_loss(m(_XOR_X), _XOR_Y)


def make_sigmoid_xor(seed: int = 0) -> tuple[nn.Module, LossFn]:
    """12-layer plain sigmoid MLP on the 4 XOR points (full batch, MSE).
    With SGD it stalls at loss ~0.25: early-layer gradients vanish."""
    torch.manual_seed(seed)
    return DeepSigmoidXOR(residual=False), _xor_loss


def make_residual_xor(seed: int = 0) -> tuple[nn.Module, LossFn]:
    """Same depth/width as ``sigmoid_xor`` but hidden layers are
    x + sigmoid(Linear(x)); trains to low loss with SGD."""
    torch.manual_seed(seed)
    return DeepSigmoidXOR(residual=True), _xor_loss


class ExplodingRNN(nn.Module):
    def __init__(self, hidden: int = 32, gain: float = 3.0, seed: int = 0) -> None:
        super().__init__()
        self.rnn = nn.RNN(1, hidden, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(hidden, 1)
        g = _const_gen(seed, 7)
        with torch.no_grad():
            # Gaussian recurrent matrix with spectral radius ~= gain (chaotic regime).
            w = torch.randn(hidden, hidden, generator=g) * (gain / math.sqrt(hidden))
            self.rnn.weight_hh_l0.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def make_exploding_rnn(seed: int = 0, *, gain: float = 3.0) -> tuple[nn.Module, LossFn]:
    """Vanilla tanh RNN (hidden 32) whose recurrent matrix is Gaussian with
    spectral radius ~``gain`` (chaotic regime), length-100 sequences, regression
    of the mean of the first 10 inputs from the last hidden state.

    The gradient norm explodes (~1e11-1e12 at gain 3, ~1e16 at gain 4) from
    step 0. With Adam (bounded step size, the default here) the explosion is
    sustained for hundreds of steps; with SGD the first update wrecks the
    weights (saturating the RNN) and later gradients look ordinary."""
    torch.manual_seed(seed)
    model = ExplodingRNN(gain=gain, seed=seed)
    T = 100

    def loss_fn(m: nn.Module, step: int) -> torch.Tensor:
        gs = _gen(seed, step, 5)
        x = torch.randn(16, T, 1, generator=gs)
        y = x[:, :10, 0].mean(dim=1, keepdim=True)
        return F.mse_loss(m(x), y)

    return model, loss_fn


# ---------------------------------------------------------------------------
# Registry and training loop
# ---------------------------------------------------------------------------

HEALTHY: dict[str, Factory] = {
    "cnn_bn": make_cnn_bn,
    "residual_mlp": make_residual_mlp,
    "lstm": make_lstm,
    "transformer": make_transformer,
}

# Models that must trigger a rule (see EXPECTED for which one).
PATHOLOGICAL: dict[str, Factory] = {
    "sigmoid_xor": make_sigmoid_xor,
    "exploding_rnn": make_exploding_rnn,
}

# Healthy controls for a pathological model: same architecture family, must
# stay silent. ``residual_xor`` is ``sigmoid_xor`` with residual hidden layers.
CONTROLS: dict[str, Factory] = {
    "residual_xor": make_residual_xor,
}

ALL: dict[str, Factory] = {**HEALTHY, **PATHOLOGICAL, **CONTROLS}

# name -> the rule expected to fire (None: should stay silent).
EXPECTED: dict[str, str | None] = {
    **{name: None for name in HEALTHY},
    **{name: None for name in CONTROLS},
    "sigmoid_xor": "vanishing",
    "exploding_rnn": "exploding",
}

# name -> (optimizer, lr)
DEFAULT_OPT: dict[str, tuple[str, float]] = {
    "cnn_bn": ("adam", 3e-3),
    "residual_mlp": ("adam", 1e-3),
    "lstm": ("adam", 3e-3),
    "transformer": ("adam", 3e-3),
    "sigmoid_xor": ("sgd", 1.0),
    "residual_xor": ("sgd", 1.0),
    "exploding_rnn": ("adam", 1e-3),
}

# Steps the XOR pair is meant to be trained for: with SGD lr=1.0,
# residual_xor reaches MSE < 0.01 after ~900-1900 steps (seed dependent);
# sigmoid_xor stays at 0.25.
XOR_STEPS = 2000


def make(name: str, seed: int = 0) -> tuple[nn.Module, LossFn]:
    return ALL[name](seed)


def train(
    model: nn.Module,
    loss_fn: LossFn,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    on_grads: Callable[[int, nn.Module], None] | None = None,
) -> list[float]:
    """Plain training loop. ``on_grads(step, model)`` is called after
    ``backward()`` and before ``optimizer.step()``. Returns per-step losses."""
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    model.train()
    losses: list[float] = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, step)
        loss.backward()
        if on_grads is not None:
            on_grads(step, model)
        opt.step()
        losses.append(float(loss.detach()))
    return losses
