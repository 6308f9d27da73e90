"""An out-of-memory error inside the statistics propagates out of ``watcher.step()`` at once (issue 19, #15): nothing
catches it to retry tensor by tensor (sparse gradients are recognised up front, not by catching errors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch


class _OutOfMemory:
    """Stands in for a torch op: raises ``torch.OutOfMemoryError`` at every call, and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def _model(sparse: bool) -> nn.Module:
    # Tiny and small tensors (fused ops, the CPU's flat copy) and large ones (the per-tensor path), several layers.
    return nn.Sequential(nn.Embedding(40, 8, sparse=sparse), nn.Linear(8, 100), nn.Linear(100, 100),
                         nn.Linear(100, 3))


def _backward(model: nn.Module) -> None:
    model(torch.tensor([[1, 2, 3]])).sum().backward()


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("op", [("torch", "_foreach_norm"), ("torch.linalg", "vector_norm"), ("torch", "aminmax"),
                                ("torch", "stack")])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_out_of_memory_in_the_statistics_propagates_from_step(monkeypatch, sparse, op, clip):
    if op[1] == "vector_norm" and not sparse:
        pytest.skip("dense CPU gradients are measured by the fused norm alone: vector_norm is on the sparse path")
    model = _model(sparse)
    _backward(model)
    watcher = gradwatch.watch(model, clip=clip)
    target = {"torch": torch, "torch.linalg": torch.linalg}[op[0]]
    oom = _OutOfMemory()
    monkeypatch.setattr(target, op[1], oom)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        watcher.step()
    assert oom.calls == 1  # raised at the first call: not caught and retried tensor by tensor
    monkeypatch.undo()
    watcher.close()


def test_the_statistics_do_call_the_ops_patched_above(monkeypatch):
    """Each op of the test above is on the path of a step of that model: the test cannot pass by missing them."""
    seen: dict[str, int] = {}
    for owner, name in [(torch, "_foreach_norm"), (torch.linalg, "vector_norm"), (torch, "aminmax"), (torch, "stack")]:
        original = getattr(owner, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            seen[_name] = seen.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)
    for sparse in (False, True):
        model = _model(sparse)
        _backward(model)
        with gradwatch.watch(model) as watcher:
            watcher.step()
    assert set(seen) == {"_foreach_norm", "vector_norm", "aminmax", "stack"}
