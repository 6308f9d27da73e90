"""Adaptive clippers against float64 references written from the papers' equations, checkpoints, and host syncs."""

from __future__ import annotations

import copy
import io
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._errors import ConfigurationError
from gradwatch._layers import discover_layers
from gradwatch._stats import StatsEngine
from gradwatch.clipping import (
    AGC,
    Clipper,
    LayerNormClip,
    NormClip,
    PercentileClip,
    ValueClip,
    ZScoreClip,
)

RTOL = 1e-6  # fp32 gradients against float64 references


class Net(nn.Module):
    """Conv (4-D units), Linear (rows), LayerNorm (1-D: whole tensor) and a head that AGC can exclude."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 2)


def set_grads(model: nn.Module, seed: int, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * scale


def sgd_step(model: nn.Module, lr: float) -> None:
    """Plain SGD by hand (torch.optim's first step imports torch._dynamo: seconds)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad


def assert_close(got: torch.Tensor, want: torch.Tensor, *, rtol: float, atol: float = 0.0, msg: str = "") -> None:
    """Element-wise ``|got - want| <= atol + rtol * |want|`` (torch.testing imports torch.distributed: seconds)."""
    assert got.shape == want.shape, msg
    err = (got.double() - want.double()).abs() - (atol + rtol * want.double().abs())
    assert bool((err <= 0).all()), f"{msg}: worst excess {float(err.max()):.3g}"


def grads_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def scalar_model(norm: float) -> nn.Module:
    """A model whose only gradient is a fixed direction with global norm ``norm``."""
    model = nn.Linear(3, 1, bias=False)
    model.weight.grad = torch.tensor([[0.6, 0.0, 0.8]]) * norm
    return model


# ------------------------------------------------------------------ ZScoreClip


def zclip_reference(norms, *, alpha, z, warmup, max_norm, mode, eps=1e-6):
    """ZClip (Kumar et al. 2025) in float64: warm-up mean/population variance, z-score, reciprocal or fixed clipping
    level, max_norm ceiling, EMA of mean then variance (new mean) updated with the clipped norm."""
    ceiling = math.inf if max_norm is None else max_norm
    seen: list[float] = []
    mean = var = 0.0
    out = []
    for g in norms:
        if len(seen) < warmup:
            c = min(g, ceiling)
            seen.append(c)
            if len(seen) == warmup:
                mean = sum(seen) / warmup
                var = sum((x - mean) ** 2 for x in seen) / warmup
            out.append((c, ceiling))
            continue
        std = math.sqrt(var)
        zs = (g - mean) / (std + eps)
        bound = math.inf
        if zs > z:
            bound = mean + z * z * std / zs if mode == "zscore" else mean + z * std
        bound = min(bound, ceiling)
        c = min(g, bound)
        trigger = min(mean + z * (std + eps), ceiling)
        mean = alpha * mean + (1 - alpha) * c
        var = alpha * var + (1 - alpha) * (c - mean) ** 2
        out.append((c, trigger))
    return out


NORM_SEQUENCE = [1.0, 1.3, 0.8, 1.1, 0.9, 1.2, 1.0, 0.7, 1.4, 1.05,  # warm-up (10)
                 1.1, 0.95, 50.0, 1.2, 1.0, 3.0, 0.9, 10.0, 10.0, 1.1, 0.2, 1.3, 25.0, 1.0, 0.95]


@pytest.mark.parametrize("mode", ["zscore", "percentile"])
@pytest.mark.parametrize("max_norm", [None, 5.0])
def test_zscore_clip_matches_float64_reference_on_a_fixed_sequence(mode, max_norm):
    clip = ZScoreClip(alpha=0.9, z_threshold=2.5, warmup_steps=10, max_norm=max_norm, mode=mode)
    ref = zclip_reference(NORM_SEQUENCE, alpha=0.9, z=2.5, warmup=10, max_norm=max_norm, mode=mode)
    clipped_steps = 0
    for step, (g, (want, trigger)) in enumerate(zip(NORM_SEQUENCE, ref, strict=True)):
        model = scalar_model(g)
        with gradwatch.watch(model, clip=clip) as w:
            report = w.step()
            got = float(torch.linalg.vector_norm(model.weight.grad.double()))
        assert got == pytest.approx(want, rel=RTOL), step
        assert report.clipped_norm == pytest.approx(want, rel=RTOL), step
        assert report.extras["gradwatch/clip/coef"] == pytest.approx(want / g, rel=RTOL)
        assert report.clipped is (want < g * (1 - 1e-9))
        if step >= 10 or max_norm is not None:
            assert report.extras["gradwatch/clip/threshold"] == pytest.approx(trigger, rel=RTOL)
        clipped_steps += report.clipped
    assert clipped_steps >= 4  # the spikes at 12, 17, 22 (and more) were clipped: the test exercised the rule
    assert clip.steps_seen == len(NORM_SEQUENCE)


def test_zscore_clip_warmup_does_not_clip_and_ema_uses_the_clipped_value():
    clip = ZScoreClip(alpha=0.5, z_threshold=1.0, warmup_steps=2)
    for g in (1.0, 3.0, 100.0):
        model = scalar_model(g)
        with gradwatch.watch(model, clip=clip) as w:
            report = w.step()
        if g < 100:
            assert report.clipped_norm == pytest.approx(g)  # warm-up: nothing clipped, even the 3x step
    # after warm-up: mean 2, var 1; z = 98 / (1 + 1e-6); bound = 2 + 1 / z; EMA fed with the bound, not 100
    z = 98 / (1 + 1e-6)
    bound = 2 + 1 / z
    assert report.clipped_norm == pytest.approx(bound, rel=RTOL)
    state = clip.state_dict()
    mean = 0.5 * 2 + 0.5 * bound
    assert float(state["mean"]) == pytest.approx(mean, rel=RTOL)
    assert float(state["var"]) == pytest.approx(0.5 * 1 + 0.5 * (bound - mean) ** 2, rel=RTOL)


def test_zscore_clip_on_random_gradients_scales_every_gradient_by_one_coefficient():
    model = Net()
    clip = ZScoreClip(warmup_steps=3, z_threshold=2.0)
    norms = []
    with gradwatch.watch(model, clip=clip) as w:
        for step, scale in enumerate([1.0, 1.1, 0.9, 1.0, 40.0]):
            set_grads(model, step, scale)
            before = grads_of(model)
            norms.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in before]).double())))
            report = w.step()
    ref = zclip_reference(norms, alpha=0.97, z=2.0, warmup=3, max_norm=None, mode="zscore")
    coef = ref[-1][0] / norms[-1]
    assert coef < 0.1
    for b, p in zip(before, model.parameters(), strict=True):
        assert_close(p.grad.double(), b.double() * coef, rtol=RTOL, atol=0)
    assert report.clipped_norm == pytest.approx(ref[-1][0], rel=RTOL)


def test_zscore_clip_leaves_non_finite_steps_alone_and_out_of_its_statistics():
    clip = ZScoreClip(warmup_steps=2)
    for g in (1.0, 2.0):
        with gradwatch.watch(scalar_model(g), clip=clip) as w:
            w.step()
    before = {k: v.clone() for k, v in clip.state_dict().items() if k != "seen"}
    model = scalar_model(1.0)
    model.weight.grad[0, 1] = float("inf")
    with gradwatch.watch(model, clip=clip) as w:
        w.step()
    assert torch.isinf(model.weight.grad[0, 1])
    assert model.weight.grad[0, 0] == pytest.approx(0.6)
    after = clip.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# ------------------------------------------------------------------ PercentileClip


@pytest.mark.parametrize("percentile", [10.0, 50.0, 90.0, 100.0, 3.7])
def test_percentile_clip_matches_numpy_percentile_over_the_window(percentile):
    rng = np.random.default_rng(0)
    norms = np.exp(rng.normal(size=60)) * 3
    norms[[20, 41]] *= 50  # spikes
    clip = PercentileClip(percentile=percentile, window=16)
    measured = []  # the norms the clipper saw (fp32 gradients): numpy gets exactly the same window
    for g in norms:
        model = scalar_model(float(g))
        with gradwatch.watch(model, clip=clip) as w:
            report = w.step()
        g = report.global_norm
        measured.append(g)
        want = np.percentile(measured[-16:], percentile)
        assert report.extras["gradwatch/clip/threshold"] == pytest.approx(want, rel=1e-12, abs=0)
        assert report.clipped_norm == pytest.approx(min(g, want), rel=RTOL)
        assert float(torch.linalg.vector_norm(model.weight.grad.double())) == pytest.approx(min(g, want), rel=RTOL)


def _norm_feeder(window: int):
    """A float64 one-parameter model (its measured norm is exactly |g|) and a function feeding it one norm."""
    model = nn.Linear(1, 1, bias=False).double()
    engine = StatsEngine(discover_layers(model))
    model.weight.grad = torch.zeros(1, 1, dtype=torch.float64)
    clip = PercentileClip(percentile=10.0, window=window)

    def feed(g: float):
        model.weight.grad.fill_(g)
        return clip.clip(engine.compute().batch)

    return clip, feed


def test_percentile_clip_memory_is_bounded_and_exact_at_100k_steps():
    """The history is one preallocated ring written in place; at step 100,000 it still holds ``window`` norms and
    the threshold is numpy's percentile of exactly the last ``window`` of them."""
    rng = np.random.default_rng(1)
    norms = rng.uniform(0.5, 2.0, size=100_000)
    clip, feed = _norm_feeder(64)
    storage = clip.state_dict()["buffer"].numel()
    ptr = None
    for t in range(3 * 64 + 5):  # three times round the ring: the buffer is reused, never grown
        result = feed(float(norms[t]))
        ptr = clip._buffer.data_ptr() if ptr is None else ptr
        assert clip._buffer.data_ptr() == ptr
        assert clip._buffer.numel() == 64
    # Fast-forward to step 99,936 (as a checkpoint would), with the ring holding the previous 64 norms in ring order.
    start = 100_000 - 64
    ring = np.empty(64)
    for t in range(start - 64, start):
        ring[t % 64] = norms[t]
    clip.load_state_dict({"seen": start, "window": 64, "buffer": torch.from_numpy(ring)})
    for t in range(start, 100_000):
        result = feed(float(norms[t]))
        want = np.percentile(norms[t - 63:t + 1], 10.0)
        assert float(result.threshold) == pytest.approx(want, rel=1e-12)
    state = clip.state_dict()
    assert state["seen"] == 100_000
    assert state["buffer"].numel() == storage == 64


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GRADWATCH_LONG_TESTS") != "1",
                    reason="100,000 real steps take minutes on a 2-core CPU; set GRADWATCH_LONG_TESTS=1")
def test_percentile_clip_memory_is_bounded_over_100k_real_steps():
    rng = np.random.default_rng(1)
    norms = rng.uniform(0.5, 2.0, size=100_000)
    clip, feed = _norm_feeder(64)
    ptr = clip._buffer.data_ptr()
    for t, g in enumerate(norms):
        result = feed(float(g))
        if t in (10, 63, 64, 50_000, 99_999):
            assert float(result.threshold) == pytest.approx(np.percentile(norms[max(0, t - 63):t + 1], 10.0),
                                                            rel=1e-12)
    assert clip._buffer.numel() == 64
    assert clip.state_dict()["seen"] == 100_000
    assert clip._buffer.data_ptr() == ptr


def test_percentile_clip_skips_non_finite_norms_in_its_history():
    clip = PercentileClip(percentile=50.0, window=8)
    for g in (1.0, 3.0):
        with gradwatch.watch(scalar_model(g), clip=clip) as w:
            w.step()
    model = scalar_model(1.0)
    model.weight.grad[0, 0] = float("nan")
    with gradwatch.watch(model, clip=clip) as w:
        report = w.step()
    assert report.extras["gradwatch/clip/threshold"] == pytest.approx(2.0)  # median of 1 and 3: NaN left out
    assert model.weight.grad[0, 2] == pytest.approx(0.8)  # not scaled


# ------------------------------------------------------------------ AGC


def agc_reference(model: nn.Module, grads: list[torch.Tensor], *, lam: float, eps: float, excluded: set[str]):
    """Brock et al. 2021, eq. 3, unit-wise, in float64."""
    out, clipped_units, units, min_coef = [], 0, 0, 1.0
    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
        w, g = p.detach().double(), g.double()
        if name.split(".")[0] in excluded:
            out.append(g)
            continue
        rows_w = w.reshape(1, -1) if w.ndim <= 1 else w.reshape(w.shape[0], -1)
        rows_g = g.reshape(1, -1) if g.ndim <= 1 else g.reshape(g.shape[0], -1)
        new_rows = []
        for rw, rg in zip(rows_w, rows_g, strict=True):
            wn, gn = float(rw.norm()), float(rg.norm())
            bound = lam * max(wn, eps)
            coef = bound / gn if gn > bound else 1.0
            clipped_units += gn > bound
            units += 1
            min_coef = min(min_coef, coef)
            new_rows.append(rg * coef)
        out.append(torch.stack(new_rows).reshape(g.shape))
    return out, clipped_units / units, min_coef


@pytest.mark.parametrize("exclude", [(), ("head",)])
def test_agc_matches_float64_reference_on_random_gradients(exclude):
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.fc.bias.zero_()  # a zero-initialised parameter: the eps floor decides its bound
    set_grads(model, 3, scale=0.05)
    before = grads_of(model)
    want, frac, min_coef = agc_reference(model, before, lam=0.05, eps=1e-3, excluded=set(exclude))
    with gradwatch.watch(model, clip=AGC(clip_factor=0.05, exclude=exclude)) as w:
        report = w.step()
    for (name, p), ref in zip(model.named_parameters(), want, strict=True):
        assert_close(p.grad.double(), ref, rtol=RTOL, atol=1e-12, msg=name)
    assert 0 < frac < 1  # some units clipped, some not: the comparison exercised both branches
    assert report.extras["gradwatch/clip/active_frac"] == pytest.approx(frac, rel=1e-12)
    assert report.extras["gradwatch/clip/coef"] == pytest.approx(min_coef, rel=RTOL)
    assert report.extras["gradwatch/clip/threshold"] == 0.05
    ref_norm = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in want])))
    assert report.clipped_norm == pytest.approx(ref_norm, rel=RTOL)
    assert report.clipped is True
    if exclude:
        assert_close(model.head.weight.grad, before[-2], rtol=0, atol=0)


def test_agc_eps_floor_lets_a_zero_initialised_parameter_learn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    x, y = torch.randn(8, 4), torch.randn(8, 1) + 5.0
    with gradwatch.watch(model, clip=AGC(clip_factor=0.01, eps=1e-3)) as w:
        for _ in range(3):
            model.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            raw = model[2].bias.grad.clone()
            w.step()
            # the bias gradient is clipped to lambda * eps, not to lambda * 0 = 0
            assert float(model[2].bias.grad.abs()) == pytest.approx(min(float(raw.abs()), 0.01 * 1e-3), rel=RTOL)
            sgd_step(model, 1.0)
    assert float(model[2].bias.detach().abs()) > 0
    assert float(model[2].weight.detach().abs().sum()) > 0


def test_agc_exclude_pattern_that_matches_nothing_is_an_error_when_the_watcher_is_built():
    model = Net()
    set_grads(model, 0)
    with pytest.raises(ConfigurationError, match=r"classifier.*conv, fc, norm, head"):
        gradwatch.watch(model, clip=AGC(exclude="classifier"))  # not at the first step: before any side effect


# ------------------------------------------------------------------ LayerNormClip


def test_layer_norm_clip_matches_clip_grad_norm_per_layer_in_float64():
    model = Net()
    set_grads(model, 5)
    model.norm.weight.grad.mul_(1e-2)  # one layer well under the bound, untouched
    model.norm.bias.grad.mul_(1e-2)
    ref = copy.deepcopy(model).double()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        q.grad = p.grad.double().clone()
    for m in (ref.conv, ref.fc, ref.norm, ref.head):
        torch.nn.utils.clip_grad_norm_(list(m.parameters()), 1.5)
    with gradwatch.watch(model, clip=LayerNormClip(1.5)) as w:
        report = w.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert_close(p.grad.double(), q.grad, rtol=RTOL, atol=0)
    assert report.extras["gradwatch/clip/active_frac"] == pytest.approx(3 / 4)
    layer_norms = [report.layers[n].grad_norm for n in ("conv", "fc", "norm", "head")]
    assert report.extras["gradwatch/clip/coef"] == pytest.approx(1.5 / (max(layer_norms) + 1e-6), rel=RTOL)
    ref_norm = float(torch.linalg.vector_norm(torch.cat([q.grad.flatten() for q in ref.parameters()])))
    assert report.clipped_norm == pytest.approx(ref_norm, rel=RTOL)


# ------------------------------------------------------------------ every clipper

CLIPPERS = {
    "norm": lambda: NormClip(2.0),
    "value": lambda: ValueClip(0.5),
    "agc": lambda: AGC(clip_factor=0.02, exclude="head"),
    "zscore": lambda: ZScoreClip(warmup_steps=10, z_threshold=2.0, max_norm=30.0),
    "percentile": lambda: PercentileClip(percentile=25.0, window=6),
    "layer": lambda: LayerNormClip(1.0),
}
SCALES = [1.0, 1.2, 0.9, 1.1, 1.0, 0.8, 1.3, 1.0, 20.0, 1.1, 0.9, 1.0, 60.0, 1.0, 0.7, 1.2, 1.0, 1.1, 0.9, 15.0]


def run_steps(model: nn.Module, watcher, steps) -> list[tuple]:
    out = []
    for step in steps:
        set_grads(model, 100 + step, SCALES[step])
        report = watcher.step(loss=float(SCALES[step]))
        out.append((grads_of(model), report.clipped_norm, dict(report.extras), [str(s) for s in report.symptoms]))
        sgd_step(model, 0.01)
    return out


@pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning")  # the injected spikes are warned about
@pytest.mark.parametrize("name", sorted(CLIPPERS))
def test_checkpoint_restore_into_a_fresh_watcher_gives_identical_next_10_steps(name):
    torch.manual_seed(0)
    model = Net()
    th = gradwatch.Thresholds(spike_warmup=3)
    a = gradwatch.watch(model, clip=CLIPPERS[name](), thresholds=th)
    run_steps(model, a, range(7))  # mid warm-up for ZScoreClip; the percentile window already wrapped
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "gradwatch": a.state_dict()}, buf)
    uninterrupted = run_steps(model, a, range(7, 17))
    a.close()

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    fresh = Net()
    fresh.load_state_dict(ckpt["model"])
    b = gradwatch.watch(fresh, clip=CLIPPERS[name](), thresholds=th)
    b.load_state_dict(ckpt["gradwatch"])
    resumed = run_steps(fresh, b, range(7, 17))
    b.close()

    for step, (u, r) in enumerate(zip(uninterrupted, resumed, strict=True), start=7):
        for gu, gr in zip(u[0], r[0], strict=True):
            assert torch.equal(gu, gr), (name, step)
        assert u[1:] == r[1:], (name, step)
    if name != "value":
        assert any(extras.get("gradwatch/clip/clipped") for _, _, extras, _ in uninterrupted)
    assert any("spike" in s for *_, symptoms in uninterrupted for s in symptoms)  # rule state was exercised too


@pytest.mark.parametrize("clip", [ZScoreClip(), PercentileClip()])
def test_state_dict_is_a_copy_and_bad_states_are_refused(clip):
    state = clip.state_dict()
    state["seen"] = 99
    assert clip.state_dict()["seen"] == 0
    with pytest.raises(ConfigurationError, match="expects keys"):
        clip.load_state_dict({"seen": 1})


def test_percentile_clip_refuses_a_state_of_another_window():
    with pytest.raises(ConfigurationError, match="window=8"):
        PercentileClip(window=4).load_state_dict(PercentileClip(window=8).state_dict())


@pytest.mark.parametrize(("make", "bad"), [
    (lambda: AGC(clip_factor=0.0), "clip_factor=0.0"),
    (lambda: AGC(eps=-1.0), "eps=-1.0"),
    (lambda: AGC(exclude=[""]), "exclude="),
    (lambda: ZScoreClip(alpha=1.0), "alpha=1.0"),
    (lambda: ZScoreClip(warmup_steps=0), "warmup_steps=0"),
    (lambda: ZScoreClip(mode="median"), "'median'.*'zscore', 'percentile'"),
    (lambda: ZScoreClip(max_norm=float("nan")), "max_norm=nan"),
    (lambda: PercentileClip(percentile=0.0), "percentile=0.0"),
    (lambda: PercentileClip(percentile=101.0), "percentile=101.0"),
    (lambda: PercentileClip(window=0), "window=0"),
    (lambda: LayerNormClip(max_norm=-1.0), "max_norm=-1.0"),
])
def test_invalid_configuration_is_refused_with_the_bad_value(make, bad):
    with pytest.raises(ConfigurationError, match=bad):
        make()


def test_report_says_whether_the_clipper_acted():
    model = scalar_model(3.0)
    with gradwatch.watch(model) as w:
        assert w.step().clipped is None  # no clipper
    with gradwatch.watch(model, clip=ValueClip(0.1)) as w:
        assert w.step().clipped is None  # ValueClip cannot tell without a host read
    for max_norm, acted in ((10.0, False), (1.0, True)):
        with gradwatch.watch(scalar_model(3.0), clip=NormClip(max_norm)) as w:
            assert w.step().clipped is acted


def test_new_clippers_take_keyword_only_options():
    with pytest.raises(TypeError):
        ZScoreClip(0.9)  # type: ignore[misc]
    with pytest.raises(TypeError):
        PercentileClip(10.0, 100)  # type: ignore[misc]
    with pytest.raises(TypeError):
        AGC(0.01, 1e-3)  # type: ignore[misc]


def test_clip_tags_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = Net()
    with gradwatch.watch(model, clip=AGC(clip_factor=0.01), log_dir=tmp_path) as w:
        for step in range(3):
            set_grads(model, step)
            w.step()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("gradwatch/clip/threshold", "gradwatch/clip/coef", "gradwatch/clip/active_frac",
                "gradwatch/clip/clipped", "gradwatch/symptoms/spike"):
        assert tag in tags, tag
    assert [e.value for e in acc.Scalars("gradwatch/clip/threshold")] == pytest.approx([0.01] * 3)
    assert all(0 < e.value <= 1 for e in acc.Scalars("gradwatch/clip/active_frac"))


# ------------------------------------------------------------------ host syncs


class _HostRead(AssertionError):
    pass


@pytest.mark.parametrize("name", sorted(set(CLIPPERS) - {"value"}))
def test_steady_state_clip_reads_nothing_back_from_the_device(name, monkeypatch):
    """CPU proxy for the CUDA sync test: a clipper's steady-state step never converts a tensor to a Python value."""
    model = Net()
    engine = StatsEngine(discover_layers(model))
    clip: Clipper = CLIPPERS[name]()
    for step in range(12):  # past ZScoreClip's warm-up: the steady state
        set_grads(model, step)
        clip.clip(engine.compute().batch)

    def refuse(*args, **kwargs):
        raise _HostRead("a device value was read on the host")

    for step in range(12, 15):
        set_grads(model, step, SCALES[step])
        # The engine's CPU path reduces small tensors through a numpy view of its own CPU copy (never a device
        # read; the CUDA test covers the engine on a GPU): the statistics are taken before the guard goes up.
        batch = engine.compute().batch
        for attr in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
            monkeypatch.setattr(torch.Tensor, attr, refuse)
        clip.clip(batch)
        monkeypatch.undo()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CLIPPERS))
def test_cuda_steady_state_step_with_any_clipper_makes_no_host_sync(name):
    model = Net().cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    grads = [[torch.randn(p.shape, device="cuda", generator=gen) * SCALES[s] for p in model.parameters()]
             for s in range(16)]
    with gradwatch.watch(model, clip=CLIPPERS[name](), every_n_steps=1000) as w:
        for step in range(16):
            for p, g in zip(model.parameters(), grads[step], strict=True):
                p.grad = g.clone()
            if step >= 12:  # the steady state: past ZScoreClip's warm-up, every cache built
                torch.cuda.set_sync_debug_mode("error")
            try:
                w.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
