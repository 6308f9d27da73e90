"""Normalisation layers' running statistics, kept so that a skipped step leaves the model exactly as before it.

A batch holding a NaN poisons BatchNorm's ``running_mean`` and ``running_var`` during its forward pass, long before
gradwatch sees the gradients. Dropping the gradients (``on_nonfinite="skip"``, ``on_spike="skip"``) then leaves the
parameters finite but every eval-mode output NaN. ``NormBuffers`` keeps a copy of those buffers as they were
after the last step that was kept, and puts it back when a step is dropped: a fused device copy per step, of the
normalisation layers' buffers only (a few vectors per layer), with no host sync.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

__all__ = ["NormBuffers"]


class NormBuffers:
    """The running statistics of every normalisation layer of ``model`` (BatchNorm, InstanceNorm with
    ``track_running_stats``, SyncBatchNorm), and their copy as of the last kept step.

    Examples:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> kept = NormBuffers(bn)
        >>> _ = bn(torch.tensor([[float("nan"), 1.0], [0.0, 2.0]]))  # a bad batch poisons running_mean
        >>> kept.restore()
        >>> bn.running_mean.tolist(), int(bn.num_batches_tracked)
        ([0.0, 0.0], 0)
    """

    def __init__(self, model: nn.Module) -> None:
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase):
                for buffer in module.buffers(recurse=False):
                    groups[(buffer.device, buffer.dtype)].append(buffer)
        self._live = [group for group in groups.values() if group]
        self._kept = [[b.detach().clone() for b in group] for group in self._live]

    @property
    def enabled(self) -> bool:
        """Whether the model has any such buffer."""
        return bool(self._live)

    def save(self) -> None:
        """Remember the buffers as they are now (after a step that is kept)."""
        with torch.no_grad():
            for kept, live in zip(self._kept, self._live, strict=True):
                torch._foreach_copy_(kept, live)

    def restore(self) -> None:
        """Put back the buffers of the last kept step (the step being dropped never happened to them)."""
        with torch.no_grad():
            for kept, live in zip(self._kept, self._live, strict=True):
                torch._foreach_copy_(live, kept)

    def release(self) -> None:
        """Drop every reference to the model's buffers."""
        self._live, self._kept = [], []
