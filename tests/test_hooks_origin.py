"""NaN origin: non-finite values injected at a known module, depth and pass; compared with detect_anomaly."""

from __future__ import annotations

import inspect
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch

D = 8


class LogNeg(nn.Module):
    """log of a negative number: NaN in the forward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(-x.abs() - 1e-3)


class Overflow(nn.Module):
    """float32 overflow: +-Inf (no NaN) in the forward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e30 * 1e30


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g.sign() * float("inf") + 1.0  # +-Inf where g != 0, finite where g == 0: no NaN


class NaNBackward(nn.Module):
    """Identity forward, NaN gradient for its input: finite forward, NaN only in the backward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NaNGrad.apply(x)


class InfBackward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _InfGrad.apply(x)


class Block(nn.Module):
    """Pre-norm transformer block; ``act`` is the FFN's activation module."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(D)
        self.ffn = nn.Sequential(nn.Linear(D, 2 * D), act, nn.Linear(2 * D, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


class LSTMLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(D, D, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


def build(arch: str, depth: int, bad: nn.Module, n: int = 4) -> tuple[nn.Module, torch.Tensor, str]:
    """A model of ``n`` blocks with ``bad`` at block ``depth``; returns (model, input, the bad module's name)."""
    torch.manual_seed(depth)
    if arch == "mlp":
        mods: list[nn.Module] = []
        for i in range(n):
            mods += [nn.Linear(D, D), bad if i == depth else nn.ReLU()]
        return nn.Sequential(*mods, nn.Linear(D, 1)), torch.randn(16, D), str(2 * depth + 1)
    if arch == "cnn":
        mods = []
        for i in range(n):
            mods += [nn.Conv2d(1 if i == 0 else 4, 4, 3, padding=1), bad if i == depth else nn.ReLU()]
        return (nn.Sequential(*mods, nn.Flatten(), nn.Linear(4 * 6 * 6, 1)), torch.randn(4, 1, 6, 6),
                str(2 * depth + 1))
    if arch == "transformer":
        model = nn.Sequential(*[Block(bad if i == depth else nn.GELU()) for i in range(n)])
        return model, torch.randn(4, 5, D), f"{depth}.ffn.1"
    if arch == "lstm":
        mods = []
        for i in range(n):
            mods += [LSTMLayer()] + ([bad] if i == depth else [])
        return nn.Sequential(*mods), torch.randn(4, 5, D), str(depth + 1)
    raise AssertionError(arch)


def run_watched(model: nn.Module, x: torch.Tensor, **kw: object) -> gradwatch.StepReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradwatch.watch(model, nan_origin="every_step", on_nonfinite="ignore", **kw) as w:
            out = model(x)
            F.mse_loss(out, torch.zeros_like(out)).backward()
            report = w.step()
            report.symptoms  # materialise before close
    return report


def origins(report: gradwatch.StepReport) -> set[tuple[str, str] | None]:
    return {s.origin for s in report.symptoms if s.kind == "nonfinite"}


def anomaly_module(model: nn.Module, x: torch.Tensor) -> str | None:
    """The module ``detect_anomaly`` points at: the innermost frame of its forward traceback that lies in the forward
    of a model module whose class occurs once in the model; ``None`` when it points at no module (the loss)."""
    by_class: dict[type, list[str]] = {}
    for name, m in model.named_modules():
        by_class.setdefault(type(m), []).append(name)
    spans = {}
    for cls in by_class:
        lines, start = inspect.getsourcelines(cls.forward)
        spans[cls] = (inspect.getsourcefile(cls.forward), start, start + len(lines))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autograd.detect_anomaly():
            out = model(x)  # under anomaly mode, which records the forward traceback
            with pytest.raises(RuntimeError, match="returned nan"):
                F.mse_loss(out, torch.zeros_like(out)).backward()
    trace = "\n".join(str(w.message) for w in caught if "Traceback of forward call" in str(w.message))
    assert trace, "detect_anomaly gave no forward traceback"
    for path, line in reversed(re.findall(r'File "([^"]+)", line (\d+)', trace)):
        for cls, (file, lo, hi) in spans.items():
            if file == path and lo <= int(line) < hi:
                return by_class[cls][0] if len(by_class[cls]) == 1 else f"<{cls.__name__}>"
    return None


ARCHS = ["mlp", "cnn", "transformer", "lstm"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("depth", [0, 2, 3])
def test_forward_nan_names_the_module(arch: str, depth: int) -> None:
    model, x, name = build(arch, depth, LogNeg())
    report = run_watched(model, x)
    nonfinite = [s for s in report.symptoms if s.kind == "nonfinite"]
    assert nonfinite
    assert all(s.step == 0 for s in nonfinite)
    assert origins(report) == {(name, "forward")}
    assert "the NaN first appeared in the forward pass" in nonfinite[0].message
    assert anomaly_module(model, x) in (None, name)  # it points at the loss here, downstream of every module


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("depth", [0, 3])
def test_forward_overflow_is_inf_and_names_the_module(arch: str, depth: int) -> None:
    model, x, name = build(arch, depth, Overflow())
    report = run_watched(model, x)
    assert origins(report) == {(name, "forward")}
    message = next(s.message for s in report.symptoms if s.kind == "nonfinite")
    assert "the Inf first appeared in the forward pass" in message


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_backward_nan_names_the_module_and_agrees_with_detect_anomaly(arch: str, depth: int) -> None:
    model, x, name = build(arch, depth, NaNBackward())
    report = run_watched(model, x)
    out = model(x)
    assert torch.isfinite(out).all()  # the forward pass is clean
    assert origins(report) == {(name, "backward")}
    message = next(s.message for s in report.symptoms if s.kind == "nonfinite")
    assert "NaN first appeared in the backward pass" in message
    assert anomaly_module(model, x) == name


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_backward_inf_is_told_apart(arch: str) -> None:
    model, x, name = build(arch, 2, InfBackward())
    report = run_watched(model, x)
    assert origins(report) == {(name, "backward")}
    assert "the Inf first appeared in the backward pass" in next(s.message for s in report.symptoms
                                                                 if s.kind == "nonfinite")


def test_innermost_module_inside_lstm_layer() -> None:
    model, x, _ = build("lstm", -1, nn.Identity())
    with torch.no_grad():
        model[2].lstm.weight_hh_l0[0, 0] = float("nan")
    report = run_watched(model, x)
    assert origins(report) == {("2.lstm", "forward")}  # the nn.LSTM, not the LSTMLayer around it
    assert "parameters were already non-finite" in next(s.message for s in report.symptoms if s.kind == "nonfinite")


class FunctionalLog(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, D), nn.Linear(D, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.log(self.fc1(x) - 100.0))  # the op is in this module's own forward


def test_functional_op_is_blamed_on_the_enclosing_module() -> None:
    model = nn.Sequential(nn.Linear(D, D), FunctionalLog())
    report = run_watched(model, torch.randn(4, D))
    assert origins(report) == {("1", "forward")}


def test_bad_inputs_have_no_module_origin() -> None:
    model = nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, 1))
    x = torch.randn(4, D)
    x[1, 2] = float("nan")
    report = run_watched(model, x)
    nonfinite = [s for s in report.symptoms if s.kind == "nonfinite"]
    assert nonfinite
    assert origins(report) == {None}
    assert "already in the inputs of module '0'" in nonfinite[0].message


class Switch(nn.Module):
    """Identity until ``bad`` is set, then log of a negative number."""

    bad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(-x.abs() - 1e-3) if self.bad else x


def test_every_step_catches_a_nan_between_samples_and_raise_names_it() -> None:
    model, x, name = build("mlp", 2, Switch())
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, activations=True, activation_every_n_steps=10, nan_origin="every_step",
                         on_nonfinite="raise", sinks=[sink]) as w:
        for step in range(4):
            model[int(name)].bad = step == 3  # the NaN starts at step 3, not a sampled step
            out = model(x)
            F.mse_loss(out, torch.zeros_like(out)).backward()
            if step < 3:
                w.step()
            else:
                with pytest.raises(gradwatch.NonFiniteGradientError, match=rf"module '{name}', forward pass"):
                    w.step()
            model.zero_grad()
    assert sorted({s for s, _ in sink.series(f"gradwatch/act_mean/{name}")}) == [0]  # activations: step 0 only


def test_sampled_mode_checks_only_sampled_steps() -> None:
    model = nn.Sequential(nn.Linear(D, D), LogNeg(), nn.Linear(D, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradwatch.watch(model, activations=True, activation_every_n_steps=2, on_nonfinite="ignore") as w:
            found = []
            for _ in range(3):
                out = model(torch.randn(4, D))
                F.mse_loss(out, torch.zeros_like(out)).backward()
                found.append({s.origin for s in w.step().symptoms if s.kind == "nonfinite"})
                model.zero_grad()
    assert found == [{("1", "forward")}, {None}, {("1", "forward")}]
