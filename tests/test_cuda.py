"""CUDA-only checks of the sync budget (skipped without a GPU).

The documented budget (docs/quickstart.md#host-syncs): a non-logging step with on_nonfinite="warn" makes no host
sync; a logging step makes one non-blocking device-to-host copy and no sync.
"""

import pytest
import torch
from torch import nn

import gradwatch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).cuda()


def _backward(model):
    model.zero_grad(set_to_none=False)
    model(torch.randn(32, 64, device="cuda")).pow(2).mean().backward()


@pytest.mark.parametrize("clip", [None, 1.0, gradwatch.clipping.ValueClip(0.1)])
def test_non_logging_steps_make_no_host_sync(clip):
    model = _model()
    with gradwatch.watch(model, every_n_steps=1000, clip=clip) as watcher:
        _backward(model)
        watcher.step()  # step 0 logs; caches index tensors
        torch.cuda.synchronize()
        for _ in range(5):
            _backward(model)
            torch.cuda.set_sync_debug_mode("error")
            try:
                watcher.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")


def test_logging_steps_make_only_the_non_blocking_copy():
    model = _model()
    with gradwatch.watch(model, every_n_steps=1, clip=1.0) as watcher:
        _backward(model)
        watcher.step()
        torch.cuda.synchronize()
        for _ in range(5):
            _backward(model)
            torch.cuda.set_sync_debug_mode("error")
            try:
                watcher.step()  # sends this step's vector, reads the previous one once its event has landed
            finally:
                torch.cuda.set_sync_debug_mode("default")
        report = watcher.step()
    assert report.global_norm > 0


def test_cuda_statistics_match_the_cpu_reference():
    model = _model()
    _backward(model)
    cpu = [(p.grad.double().norm().item()) for p in model.parameters()]
    with gradwatch.watch(model) as watcher:
        r = watcher.step()
    expected = (cpu[0] ** 2 + cpu[1] ** 2) ** 0.5
    assert r.layers["0"].grad_norm == pytest.approx(expected, rel=1e-6)


def test_nonfinite_detected_on_cuda_at_its_step():
    model = _model()
    with gradwatch.watch(model, every_n_steps=10) as watcher:
        for step in range(4):
            _backward(model)
            if step == 2:
                model[2].weight.grad[0, 0] = float("nan")
            watcher.step()
    assert [(s.layer, s.first_step) for s in watcher.history.summaries("nonfinite")] == [("2", 2)]
