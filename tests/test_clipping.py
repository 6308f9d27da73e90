"""NormClip / float clipping against clip_grad_norm_, ValueClip against clip_grad_value_."""

import copy
import math

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.clipping import NormClip, ValueClip


def _model_with_grads(scale=10.0, dtype=torch.float32):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


def _clone(model):
    ref = copy.deepcopy(model)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        q.grad = p.grad.clone()
    return ref


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("clip", [1.0, NormClip(1.0), NormClip(3.0, norm_type=1.0), NormClip(0.5, norm_type=math.inf)])
def test_norm_clipping_equals_clip_grad_norm(clip):
    model = _model_with_grads()
    ref = _clone(model)
    max_norm = clip if isinstance(clip, float) else clip.max_norm
    norm_type = 2.0 if isinstance(clip, float) else clip.norm_type
    total = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type=norm_type)
    with gradwatch.watch(model, clip=clip) as watcher:
        r = watcher.step()
    for got, want in zip(_grads(model), _grads(ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    if norm_type == 2.0:
        assert r.global_norm == pytest.approx(float(total), rel=1e-6)
        assert r.clipped_norm == pytest.approx(max_norm, rel=1e-5)
        assert r.extras["gradwatch/clip/coef"] == pytest.approx(max_norm / (float(total) + 1e-6), rel=1e-6)
    else:
        after = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
        assert r.clipped_norm == pytest.approx(after, rel=1e-5)


def test_norm_clipping_below_the_threshold_leaves_gradients_unchanged():
    model = _model_with_grads(scale=1e-3)
    before = _grads(model)
    with gradwatch.watch(model, clip=100.0) as watcher:
        r = watcher.step()
    for got, want in zip(_grads(model), before, strict=True):
        assert torch.equal(got, want)
    assert r.extras["gradwatch/clip/coef"] == 1.0
    assert r.clipped_norm == pytest.approx(r.global_norm)


def test_norm_clipping_bf16_matches_torch():
    model = _model_with_grads(dtype=torch.bfloat16)
    ref = _clone(model)
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    with gradwatch.watch(model, clip=1.0) as watcher:
        watcher.step()
    for got, want in zip(_grads(model), _grads(ref), strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-3)


def test_value_clipping_equals_clip_grad_value():
    model = _model_with_grads()
    ref = _clone(model)
    torch.nn.utils.clip_grad_value_(ref.parameters(), 0.7)
    with gradwatch.watch(model, clip=ValueClip(0.7)) as watcher:
        r = watcher.step()
    for got, want in zip(_grads(model), _grads(ref), strict=True):
        assert torch.equal(got, want)
    after = float(torch.nn.utils.get_total_norm(_grads(ref)))
    assert r.clipped_norm == pytest.approx(after, rel=1e-6)
    assert r.global_norm > r.clipped_norm


def test_clipping_covers_only_watched_layers():
    model = _model_with_grads()
    untouched = model[0].weight.grad.clone()
    ref = _clone(model)
    torch.nn.utils.clip_grad_norm_(ref[2].parameters(), 1.0)
    with gradwatch.watch(model, clip=1.0, layers="2") as watcher:
        watcher.step()
    assert torch.equal(model[0].weight.grad, untouched)
    torch.testing.assert_close(model[2].weight.grad, ref[2].weight.grad, rtol=1e-6, atol=0)


def test_stateless_clippers_have_empty_state():
    assert NormClip(1.0).state_dict() == {}
    assert ValueClip(1.0).state_dict() == {}
    with pytest.raises(gradwatch.ConfigurationError, match="keeps no state"):
        NormClip(1.0).load_state_dict({"x": 1})


def _sparse_model():
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(50, 4, sparse=True), "fc": nn.Linear(4, 1)})
    model["fc"](model["emb"](torch.tensor([1, 1, 7]))).sum().mul(10).backward()  # index 1 twice: uncoalesced
    dense = [p.grad.to_dense().clone() if p.grad.is_sparse else p.grad.clone() for p in model.parameters()]
    return model, dense


def test_norm_clipping_of_sparse_gradients_scales_them_like_dense_ones():
    model, dense = _sparse_model()
    total = float(torch.nn.utils.get_total_norm(dense))
    coef = 1.0 / (total + 1e-6)
    with gradwatch.watch(model, clip=1.0) as watcher:
        r = watcher.step()
    assert r.global_norm == pytest.approx(total, rel=1e-6)
    for p, want in zip(model.parameters(), dense, strict=True):
        torch.testing.assert_close(p.grad.to_dense(), want * coef, rtol=1e-6, atol=0)


def test_value_clipping_of_sparse_gradients_clamps_the_coalesced_values():
    model, dense = _sparse_model()
    with gradwatch.watch(model, clip=ValueClip(0.5)) as watcher:
        watcher.step()
    assert model["emb"].weight.grad.is_sparse
    for p, want in zip(model.parameters(), dense, strict=True):
        torch.testing.assert_close(p.grad.to_dense(), want.clamp(-0.5, 0.5), rtol=0, atol=0)


def test_import_gradwatch_pulls_no_optional_dependency():
    import subprocess
    import sys

    code = ("import sys, gradwatch, gradwatch.clipping; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'matplotlib', 'rich', 'tensorboard') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_clip_tally_counts_the_steps_the_clipper_acted_and_survives_a_checkpoint():
    model = nn.Linear(4, 1, bias=False)
    norms = [10.0, 0.5, 300.0, 2.0]  # clip=1.0 acts on three of them; the largest held back is 300 at step 2
    with gradwatch.watch(model, clip=1.0) as watcher:
        for n in norms:
            model.weight.grad = torch.tensor([[n, 0.0, 0.0, 0.0]])
            watcher.step()
        state = watcher.state_dict()
        summary = watcher.summary()
    tally = watcher.clip_tally
    assert (tally.steps, tally.active, tally.max_norm, tally.max_step) == (4, 3, 300.0, 2)
    assert summary.endswith("clipping: active on 3 of 4 steps; the norm before clipping reached 300 (step 2)")
    with gradwatch.watch(model, clip=1.0) as resumed:
        resumed.load_state_dict(state)
        assert (resumed.clip_tally.steps, resumed.clip_tally.active, resumed.clip_tally.max_norm) == (4, 3, 300.0)
        del state["clip_tally"]  # a checkpoint written before the tally existed
        resumed.load_state_dict(state)
    with gradwatch.watch(model) as plain:
        assert plain.clip_tally is None
        assert "clipping" not in plain.summary()


@pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning")
def test_clip_tally_leaves_out_the_steps_that_were_dropped():
    model = nn.Linear(4, 1, bias=False)
    with gradwatch.watch(model, clip=1.0, on_nonfinite="skip") as watcher:
        for n in (10.0, math.nan, 20.0):
            model.weight.grad = torch.tensor([[n, 0.0, 0.0, 0.0]])
            watcher.step()
    assert (watcher.clip_tally.steps, watcher.clip_tally.active, watcher.clip_tally.max_norm) == (2, 2, 20.0)
    th = gradwatch.Thresholds(spike_warmup=5)
    with gradwatch.watch(model, clip=1.0, on_spike="skip", thresholds=th) as watcher:
        for step in range(12):
            n = 1e6 if step == 10 else 2.0 + 0.01 * step  # step 10: a spike, skipped
            model.weight.grad = torch.tensor([[n, 0.0, 0.0, 0.0]])
            report = watcher.step()
            assert report.skipped == (step == 10)
    tally = watcher.clip_tally
    assert (tally.steps, tally.active) == (11, 11)
    assert tally.max_norm == pytest.approx(2.11)
    assert tally.max_step == 11
