"""Parameters replaced after ``watch()``: found when a trainable layer has no gradient, reported once a layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from ._errors import warn_user
from ._layers import Layer, replaced_parameters

__all__ = ["ReplacedCheck"]


class ReplacedCheck:
    """Says once per layer that a layer holds other parameters than when it was watched.

    Runs only when the set of layers without a gradient changes: frozen layers cost nothing step after step.
    ``active=False`` (FSDP, tensor parallelism: their wrappers swap parameter objects by design) turns it off.
    """

    def __init__(self, layers: Sequence[Layer], *, active: bool = True) -> None:
        self.layers = layers
        self.active = active
        self._without_grad = b""  # which layers had no gradient at the last check
        self._warned: set[str] = set()

    def check(self, model: nn.Module, has_grad: np.ndarray) -> None:
        key = has_grad.tobytes()
        if not self.active or key == self._without_grad:
            return
        self._without_grad = key
        for layer in (self.layers[int(i)] for i in np.flatnonzero(~has_grad)):
            if layer.name in self._warned or not any(p.requires_grad for p in layer.params):
                continue
            paths = replaced_parameters(model, layer)
            if paths:
                self._warned.add(layer.name)
                warn_user(
                    f"gradwatch: layer '{layer.name}' now holds other parameters than when watch() was called "
                    f"({', '.join(paths)} replaced, by resize_token_embeddings() or a module swapped for a new one, "
                    "say). gradwatch still watches the old ones, which get no gradient: close this watcher and call "
                    "gradwatch.watch() again once the model is final.")
