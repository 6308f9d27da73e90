"""Likely causes and remedies, chosen from what the model is made of (see docs/rules.md for the reasoning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

__all__ = ["ModelTraits", "Remedy"]

_SATURATING = (nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


class Remedy(NamedTuple):
    """The likely cause and what to try, as a :class:`~gradwatch._symptoms.Symptom` carries them (``cause``,
    ``advice``): the message says ``"Likely cause: <cause>. Try <advice>."``."""

    cause: str
    advice: str


@dataclass(frozen=True)
class ModelTraits:
    """What the model contains that bears on the advice."""

    saturating: tuple[str, ...] = ()  # activation class names (Sigmoid, Tanh, ...)
    vanilla_rnn: bool = False
    gated_rnn: bool = False
    normalization: bool = False
    depth: int = 0  # number of parameterised layers

    @classmethod
    def of(cls, model: nn.Module, depth: int) -> ModelTraits:
        saturating: list[str] = []
        vanilla = gated = norm = False
        for m in model.modules():
            if isinstance(m, _SATURATING) and type(m).__name__ not in saturating:
                saturating.append(type(m).__name__)
            if isinstance(m, (nn.RNN, nn.RNNCell)):
                vanilla = True
            if isinstance(m, (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)):
                gated = True
            if isinstance(m, _NORMS):
                norm = True
        return cls(tuple(saturating), vanilla, gated, norm, depth)

    def vanishing_remedy(self) -> Remedy:
        causes, tries = [], []
        if self.saturating:
            acts = "/".join(s.lower() for s in self.saturating)
            causes.append(f"saturating {acts} activations, whose derivative is at most 0.25 (sigmoid) or 1 (tanh) "
                          "and near 0 when saturated, multiplied layer after layer")
            tries.append("ReLU-family activations (ReLU, LeakyReLU, GELU)")
        if self.vanilla_rnn:
            causes.append("a vanilla RNN back-propagating through many time steps")
            tries.append("an LSTM or GRU")
        if self.depth >= 6:
            causes.append(f"a deep stack ({self.depth} layers) without skip connections")
        if not causes:
            causes.append("a long product of small per-layer derivatives (depth, initialisation or activations)")
        tries.append("residual connections")
        if not self.normalization:
            tries.append("batch or layer normalisation")
        tries.append("He (ReLU) or Xavier (tanh/sigmoid) initialisation")
        return Remedy("; ".join(causes), ", ".join(tries))

    def exploding_remedy(self, clipping: bool = False) -> Remedy:
        """``clipping``: a clipper acted on this step and the clipped norm is still over the ceiling."""
        cause = ("recurrent weights whose repeated product grows over long sequences"
                 if self.vanilla_rnn else "a learning rate too large for this point of training, or a bad batch")
        if clipping:
            tries = ["a lower clipping threshold (max_norm under the exploding ceiling)",
                     "a lower learning rate or a warm-up"]
        else:
            tries = ["gradient clipping (watch(..., clip=1.0))", "a lower learning rate or a warm-up"]
        if self.vanilla_rnn:
            tries.insert(1, "an LSTM or GRU")
        if not self.normalization:
            tries.append("normalisation layers")
        return Remedy(cause, ", ".join(tries))

    def nonfinite_remedy(self) -> Remedy:
        return Remedy(
            "an overflow after exploding gradients or too large a learning rate, fp16 overflow, or a NaN/Inf produced "
            "in the forward pass (log, sqrt or division of a bad value, bad input data)",
            "a lower learning rate, clipping (clip=1.0), on_nonfinite='skip' to drop bad steps, and check this "
            "layer's inputs",
        )
