"""Activation statistics and gradient flow: equal to references computed by hand from the module outputs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None, int, torch.Tensor]:
        return x * 2.0, None, 3, torch.arange(3)


class DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, object]:
        return {"idx": x.argmax(-1), "y": x - 1.0, "note": "text"}


class NoneOut(nn.Module):
    def forward(self, x: torch.Tensor) -> None:
        return None


class Net(nn.Module):
    """Every kind of output, and one ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.tanh = nn.Tanh()
        self.fc2 = nn.Linear(12, 12)
        self.sig = nn.Sigmoid()
        self.relu = nn.ReLU()
        self.hard = nn.Hardtanh(-1.0, 1.5)
        self.tup = TupleOut()
        self.dct = DictOut()
        self.none = NoneOut()
        self.head = nn.Linear(12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tanh(self.fc1(x) * 3.0)
        h = self.relu(self.fc2(h) - 0.3)
        h = self.sig(h * 12.0 - 2.0) + self.relu(-h + 0.2)
        h = self.hard(self.tup(h)[0])
        self.none(h)
        return self.head(self.dct(h)["y"])


def reference(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """Each module's primary outputs (float64 copies) and the gradients of its outputs, captured independently."""
    outs: dict[str, list[torch.Tensor]] = {}
    kept: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, m in model.named_modules():
        name = name or "__root__"

        def hook(mod: nn.Module, args: object, out: object, name: str = name) -> None:
            tensors = [t for t in (out if isinstance(out, tuple) else out.values() if isinstance(out, dict) else [out])
                       if isinstance(t, torch.Tensor) and t.is_floating_point()]
            if tensors:
                outs.setdefault(name, []).append(tensors[0].detach().double().clone())
                for t in tensors:
                    if t.requires_grad:
                        t.retain_grad()
                        kept.setdefault(name, []).append(t)

        handles.append(m.register_forward_hook(hook))
    out = model(x)
    F.mse_loss(out, torch.ones_like(out)).backward()
    for h in handles:
        h.remove()
    grads = {k: [t.grad.double() for t in v if t.grad is not None] for k, v in kept.items()}
    model.zero_grad()
    return outs, grads


def test_statistics_equal_a_hand_reference() -> None:
    torch.manual_seed(0)
    model, x = Net(), torch.randn(32, 6)
    outs, grads = reference(model, x)
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, activations=True, sinks=[sink]) as w:
        out = model(x)
        F.mse_loss(out, torch.ones_like(out)).backward()
        w.step()

    def got(kind: str, name: str) -> float:
        (step, value), = sink.series(f"gradwatch/{kind}/{name}")
        assert step == 0
        assert isinstance(value, float)
        return value

    for name, ys in outs.items():
        y = torch.cat([t.reshape(-1) for t in ys])
        assert got("act_mean", name) == pytest.approx(y.mean().item(), rel=1e-5, abs=1e-6), name
        assert got("act_std", name) == pytest.approx(y.std(unbiased=False).item(), rel=1e-5, abs=1e-7), name
        assert got("act_zero_frac", name) == pytest.approx((y == 0).double().mean().item()), name
    assert outs["relu"].__len__() == 2  # called twice: pooled
    # Saturated: local derivative below 10% of its peak, computed from the definition.
    sig = outs["sig"][0]
    assert got("act_saturated_frac", "sig") == pytest.approx((sig * (1 - sig) < 0.025).double().mean().item())
    tanh = outs["tanh"][0]
    assert got("act_saturated_frac", "tanh") == pytest.approx((1 - tanh ** 2 < 0.1).double().mean().item())
    hard = outs["hard"][0]
    assert got("act_saturated_frac", "hard") == pytest.approx(((hard <= -1.0) | (hard >= 1.5)).double().mean().item())
    for act in ("sig", "tanh", "hard"):  # the references are not trivially 0 or 1
        assert 0.05 < got("act_saturated_frac", act) < 0.95, act
    # Dead: units zero for the whole batch, over both calls of the shared ReLU.
    dead = sum(int((y == 0).all(0).sum()) for y in outs["relu"]) / sum(y[0].numel() for y in outs["relu"])
    assert got("act_dead_frac", "relu") == pytest.approx(dead)
    assert 0 < dead < 1
    assert not sink.series("gradwatch/act_saturated_frac/fc1")
    assert not sink.series("gradwatch/act_dead_frac/fc1")
    # Gradient flowing out of each module: norm over all its outputs and calls.
    for name, gs in grads.items():
        want = math.sqrt(sum(float(g.pow(2).sum()) for g in gs))
        assert got("grad_out_norm", name) == pytest.approx(want, rel=1e-5), name
    assert got("grad_out_norm", "relu") > 0
    # Modules without a floating-point output record nothing.
    assert not sink.series("gradwatch/act_mean/none")
    assert report_has_no_symptoms(sink)


def report_has_no_symptoms(sink: gradwatch.MemorySink) -> bool:
    return not sink.alerts


def test_enclosing_module_reports_functional_activations() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.fc(x))  # invisible to hooks; the block's output carries it

    torch.manual_seed(1)
    model, x = nn.Sequential(Block()), torch.randn(64, 4)
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, activations=True, sinks=[sink]) as w:
        model(x).sum().backward()
        w.step()
    y = F.relu(model[0].fc(x))
    assert sink.series("gradwatch/act_zero_frac/0")[0][1] == pytest.approx((y == 0).double().mean().item())
    assert sink.series("gradwatch/act_zero_frac/0.fc")[0][1] == 0.0


def test_tensorboard_tags_read_back(tmp_path: object) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 1))
    x = torch.randn(8, 3)
    with gradwatch.watch(model, activations=True, log_dir=str(tmp_path)) as w:
        for _ in range(2):
            model(x).sum().backward()
            w.step()
            model.zero_grad()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("act_mean/1", "act_std/1", "act_zero_frac/1", "act_saturated_frac/1", "grad_out_norm/1",
                "grad_out_norm/0", "act_mean/2", "symptoms/saturated", "symptoms/dead"):
        assert f"gradwatch/{tag}" in tags, tag
    want = torch.sigmoid(model[0](x)).mean().item()
    assert [e.step for e in acc.Scalars("gradwatch/act_mean/1")] == [0, 1]
    assert acc.Scalars("gradwatch/act_mean/1")[0].value == pytest.approx(want, rel=1e-5)


def test_hooks_attached_on_sampled_steps_only() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    sink = gradwatch.MemorySink()
    attached = []
    with gradwatch.watch(model, activations=True, activation_every_n_steps=3, sinks=[sink]) as w:
        for _ in range(7):
            attached.append(len(model[1]._forward_hooks))
            model(torch.randn(4, 3)).sum().backward()
            w.step()
    assert attached == [1, 0, 0, 1, 0, 0, 1]
    assert [s for s, _ in sink.series("gradwatch/act_mean/1")] == [0, 3, 6]
    assert [s for s, _ in sink.series("gradwatch/grad_out_norm/1")] == [0, 3, 6]


def test_activation_globs_choose_modules() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, activations="1", nan_origin="off", sinks=[sink]) as w:
        assert [len(m._forward_hooks) for m in model] == [0, 1, 0]
        model(torch.randn(4, 3)).sum().backward()
        w.step()
    assert {t.split("/")[-1] for t in sink.scalars if t.startswith("gradwatch/act_")} == {"1"}
    with pytest.raises(gradwatch.ConfigurationError, match="'nope' matches no module"):
        gradwatch.watch(model, activations="nope")


def test_inplace_activation_gets_its_own_output_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 1))
    x = torch.randn(16, 4)
    h = model[0](x)
    h.retain_grad()
    a = torch.relu(h)
    a.retain_grad()
    model[2](a).pow(2).mean().backward()
    want_lin, want_relu = h.grad.norm().item(), a.grad.norm().item()
    assert want_lin != pytest.approx(want_relu)  # ReLU zeroes some of the gradient
    model.zero_grad()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, activations=True, nan_origin="every_step", sinks=[sink]) as w:
        model(x).pow(2).mean().backward()
        w.step()
    assert sink.series("gradwatch/grad_out_norm/0")[0][1] == pytest.approx(want_lin, rel=1e-5)
    assert sink.series("gradwatch/grad_out_norm/1")[0][1] == pytest.approx(want_relu, rel=1e-5)
    assert sink.series("gradwatch/act_zero_frac/0")[0][1] == 0.0  # measured before the in-place ReLU ran


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_records_each_module_once(monkeypatch: pytest.MonkeyPatch, reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    import gradwatch._hooks.probe as hooks_module

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU())
            self.head = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(checkpoint(self.block, x, use_reentrant=reentrant))

    measured: list[int] = []
    real = hooks_module.output_stats

    def counting(t: torch.Tensor, kind: Any) -> Any:
        measured.append(t.numel())
        return real(t, kind)

    monkeypatch.setattr(hooks_module, "output_stats", counting)
    values, counts = {}, {}
    for use_checkpoint in (True, False):
        torch.manual_seed(0)
        model = Checkpointed()
        if not use_checkpoint:
            model.forward = lambda x, m=model: m.head(m.block(x))  # type: ignore[method-assign]
        sink = gradwatch.MemorySink()
        measured.clear()
        with gradwatch.watch(model, activations=True, sinks=[sink]) as watcher:
            x = torch.randn(5, 4, requires_grad=True)
            model(x).sum().backward()
            watcher.step()
        values[use_checkpoint] = {t: v[0][1] for t, v in sink.scalars.items() if t.startswith("gradwatch/act_")}
        counts[use_checkpoint] = sorted(measured)
    # the root, head, block and its four children: one measurement each, checkpointed (recomputed in backward) or not
    assert counts[True] == counts[False]
    assert len(counts[False]) == 7
    assert values[True] == pytest.approx(values[False])
    assert values[True]["gradwatch/act_mean/block.1"] != 0
