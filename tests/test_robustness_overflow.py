"""Overflow-safe norms (issue 19, #13): finite float32 gradients whose sum of squares overflows float32 (entries of
1e19) are measured right, and ``clip=1.0`` scales them to norm 1 where ``clip_grad_norm_`` zeroes every gradient."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._reductions import CPU_TINY, FLAT_NUMEL, finite_norms, foreach_norms, norms_maxabs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _model(device: str = "cpu") -> nn.Module:
    """A large weight (the per-tensor path), a small one and biases (the CPU's flat path)."""
    assert 100 * 100 > FLAT_NUMEL >= CPU_TINY
    return nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 3)).to(device)


def _set_huge_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) * 1e19).to(p.device)
    return {n: p.grad.detach().double().cpu().clone() for n, p in model.named_parameters()}


def _ref_norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def test_the_case_overflows_plain_float32_norms_and_torch_zeroes_the_gradients():
    model = _model()
    _set_huge_grads(model)
    assert math.isinf(float(torch.linalg.vector_norm(model[0].weight.grad)))
    assert math.isinf(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
    assert all(p.grad.abs().max() == 0 for p in model.parameters())  # what gradwatch does better, below


@pytest.mark.parametrize("device", DEVICES)
def test_reported_norms_are_finite_and_exact(device):
    model = _model(device)
    before = _set_huge_grads(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a norm of 1e21 is an exploding gradient: rightly said, not tested here
        with gradwatch.watch(model) as watcher:
            report = watcher.step()
    assert report.global_norm == pytest.approx(_ref_norm(before.values()), rel=1e-6)
    for layer in ("0", "1"):
        ref = _ref_norm([before[f"{layer}.weight"], before[f"{layer}.bias"]])
        assert math.isfinite(report.layers[layer].grad_norm)
        assert report.layers[layer].grad_norm == pytest.approx(ref, rel=1e-6)
        assert report.layers[layer].nonfinite is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("clip", [1.0, gradwatch.clipping.NormClip(1.0)])
def test_norm_clip_scales_overflowing_gradients_to_the_bound_and_keeps_their_direction(device, clip):
    model = _model(device)
    before = _set_huge_grads(model)
    ref = _ref_norm(before.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradwatch.watch(model, clip=clip) as watcher:
            report = watcher.step()
            summary = watcher.summary()
    assert report.global_norm == pytest.approx(ref, rel=1e-6)
    assert report.clipped_norm == pytest.approx(1.0, rel=1e-6)
    after = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters()}
    assert _ref_norm(after.values()) == pytest.approx(1.0, rel=1e-6)
    for name, g in after.items():  # one common factor: every direction kept
        torch.testing.assert_close(g, before[name] / ref, rtol=1e-6, atol=0.0)
    assert "active on 1 of 1 steps" in summary


@pytest.mark.parametrize("clip", [gradwatch.clipping.ZScoreClip(warmup_steps=1, max_norm=1.0),
                                  gradwatch.clipping.PercentileClip(50.0, window=4),
                                  gradwatch.clipping.LayerNormClip(1.0)])
def test_other_norm_clippers_see_a_finite_norm(clip):
    model = _model()
    _set_huge_grads(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradwatch.watch(model, clip=clip) as watcher:
            report = watcher.step()
    assert math.isfinite(report.clipped_norm)
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().max() > 0 for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_tensor_norms_of_every_path(device, dtype):
    tensors = [torch.full((4, 1000), 1e19), torch.full((10,), -3e19), torch.tensor([3.0, 4.0]),
               torch.full((2000,), 2e18)]
    tensors = [t.to(device, dtype) for t in tensors]
    ref = torch.tensor([_ref_norm([t]) for t in tensors], dtype=torch.float64)
    torch.testing.assert_close(foreach_norms(tensors, dtype).double().cpu(), ref, rtol=1e-6, atol=0.0)
    norms, maxabs = norms_maxabs(tensors, dtype, torch.device(device))
    torch.testing.assert_close(norms.double().cpu(), ref, rtol=1e-6, atol=0.0)
    assert maxabs.double().cpu().tolist() == [float(t.double().abs().max()) for t in tensors]
    big = [tensors[0], tensors[3]]  # no tiny tensor: the CPU's back-to-back loop
    norms, _ = norms_maxabs(big, dtype, torch.device(device))
    torch.testing.assert_close(norms.double().cpu(), ref[[0, 3]], rtol=1e-6, atol=0.0)


def test_finite_norms_leaves_true_infinities_and_nans_alone():
    tensors = [torch.tensor([float("inf"), 1.0]), torch.tensor([float("nan"), 1e30]), torch.full((4,), 1e20),
               torch.tensor([1.0])]
    plain = torch.stack([torch.linalg.vector_norm(t) for t in tensors])
    out = finite_norms(tensors, plain)
    assert math.isinf(out[0])
    assert math.isnan(out[1])
    assert out[2] == pytest.approx(2e20, rel=1e-7)
    assert out[3] == 1.0
    same = torch.tensor([1.0, 2.0])
    assert finite_norms([same], same) is same  # the common case: nothing measured again, no copy


def test_a_sparse_overflowing_gradient_is_measured_right():
    emb = nn.Embedding(50, 1000, sparse=True)
    emb(torch.tensor([1, 2, 3])).sum().backward()
    emb.weight.grad = emb.weight.grad * 1e19
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradwatch.watch(emb) as watcher:
            report = watcher.step()
    assert report.global_norm == pytest.approx(math.sqrt(3 * 1000) * 1e19, rel=1e-6)
