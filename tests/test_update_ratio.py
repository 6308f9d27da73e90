"""Per-layer update-to-weight ratios (``watch(optimizer=...)``, issue 16): exact against a parameter snapshot, the
memory they cost, the skipped and partial cases, the TensorBoard tag and the Lightning callback.

The reference of every test is the same: copy the watched parameters before ``optimizer.step()``, and after it take
``||w_after - w_before|| / ||w_before||`` per layer over the parameters that had a gradient (the ones the step
updated). The ratio that ``watcher.step()`` number ``s`` reports is that of the optimizer step before it. Models are
float64, so that "exact" means within 1e-5 relative with room to spare.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import ConfigurationError

REL = 1e-5
DT = torch.float64


def mlp(seed: int = 0, dtype: torch.dtype = DT) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def batch(model: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(12, 6, generator=g, dtype=DT)
    return (model(x) - x[:, :3]).pow(2).mean()


class Snapshot:
    """The reference: per layer, ``||Δw|| / ||w_before||`` of one optimizer step, over the parameters with a
    gradient."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.layers = {name: list(model.get_submodule(name).parameters(recurse=False)) for name in names}
        self.before: dict[str, list[tuple[nn.Parameter, torch.Tensor]]] = {}

    def take(self) -> None:
        self.before = {name: [(p, p.detach().clone()) for p in ps if p.grad is not None]
                       for name, ps in self.layers.items()}

    def ratios(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, pairs in self.before.items():
            if not pairs:
                out[name] = None
                continue
            dw = math.sqrt(sum(float((p.detach() - b).abs().pow(2).sum()) for p, b in pairs))
            w = math.sqrt(sum(float(b.abs().pow(2).sum()) for _, b in pairs))
            out[name] = dw / w
        return out


def assert_ratios(report: gradwatch.StepReport, expected: dict[str, float | None]) -> None:
    got = {name: report.layers[name].update_ratio for name in expected}
    for name, want in expected.items():
        if want is None:
            assert got[name] is None, (name, got)
        else:
            assert got[name] is not None, (name, got)
            assert got[name] == pytest.approx(want, rel=REL), (name, got[name], want)


def train(model: nn.Module, opt: torch.optim.Optimizer, *, steps: int = 5, names: list[str] | None = None,
          skip: Callable[[int], bool] = lambda s: False, **options: Any) -> Iterator[tuple[int, gradwatch.StepReport,
                                                                                         dict[str, float | None]]]:
    """Train ``steps`` steps under ``watch(model, optimizer=opt, **options)``; yield (step, report, the reference of
    the optimizer step before it). ``skip(s)``: no ``opt.step()`` at step ``s``."""
    with gradwatch.watch(model, optimizer=opt, **options) as watcher:
        names = names or watcher.layer_names
        snap = Snapshot(model, names)
        reference: dict[str, float | None] = dict.fromkeys(names)
        for s in range(steps):
            opt.zero_grad(set_to_none=True)
            batch(model, s).backward()
            report = watcher.step()
            yield s, report, reference
            if skip(s):
                reference = dict.fromkeys(names, 0.0)
                continue
            snap.take()
            opt.step()
            reference = snap.ratios()


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd weight decay": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.2),
    "sgd momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "sgd momentum dampening weight decay": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3,
                                                                     weight_decay=0.05),
    "sgd nesterov weight decay": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.1),
    "sgd nesterov maximize foreach": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True,
                                                               weight_decay=0.1, maximize=True, foreach=True),
    "sgd maximize single-tensor": lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.1, maximize=True,
                                                            foreach=False),
    "sgd fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, fused=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam l2 single-tensor": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, foreach=False),
    "adam amsgrad maximize foreach": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, maximize=True,
                                                                foreach=True),
    "adam decoupled": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.2, decoupled_weight_decay=True),
    "adamw foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2, foreach=True),
    "adamw single-tensor": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2, foreach=False),
    "adamw amsgrad foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2, amsgrad=True, foreach=True),
    "adamw amsgrad single-tensor": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2, amsgrad=True,
                                                               foreach=False),
    "adamw fused": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2, fused=True),
    "adamw tensor lr": lambda p: torch.optim.AdamW(p, lr=torch.tensor(1e-2, dtype=DT), weight_decay=0.2,
                                                   foreach=False),
    "rmsprop (generic)": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5),
    "adagrad (generic)": lambda p: torch.optim.Adagrad(p, lr=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_ratio_equals_the_snapshot_reference(name: str) -> None:
    model = mlp()
    checked = 0
    for s, report, expected in train(model, OPTIMIZERS[name](model.parameters()), steps=5):
        if s == 0:
            assert all(v.update_ratio is None for v in report.layers.values())  # no optimizer step yet
            continue
        assert_ratios(report, expected)
        checked += 1
    assert checked == 4


def test_two_parameter_groups_with_their_own_lr_and_weight_decay() -> None:
    model = mlp()
    opt = torch.optim.AdamW([
        {"params": model[0].parameters(), "lr": 3e-2, "weight_decay": 0.5},
        {"params": [*model[2].parameters(), *model[4].parameters()], "lr": 1e-3, "weight_decay": 0.0},
    ])
    ratios = []
    for s, report, expected in train(model, opt):
        if s:
            assert_ratios(report, expected)
            ratios.append(report.layers["0"].update_ratio / report.layers["2"].update_ratio)
    assert min(ratios) > 3  # the first group's larger lr shows


def test_a_layer_split_across_groups_and_optimizers_is_one_ratio() -> None:
    model = mlp()
    sgd = torch.optim.SGD([{"params": [model[0].weight], "lr": 0.1},
                           {"params": [model[0].bias, model[2].weight], "lr": 0.01, "momentum": 0.9}])
    adam = torch.optim.Adam([model[2].bias, *model[4].parameters()], lr=1e-2)
    with gradwatch.watch(model, optimizer=[sgd, adam]) as watcher:
        snap = Snapshot(model, watcher.layer_names)
        expected: dict[str, float | None] = {}
        for s in range(4):
            sgd.zero_grad()
            adam.zero_grad()
            batch(model, s).backward()
            report = watcher.step()
            if s:
                assert_ratios(report, expected)
            snap.take()
            sgd.step()
            adam.step()
            expected = snap.ratios()


def test_a_skipped_optimizer_step_gives_zero_not_nan() -> None:
    model = mlp()
    seen = {}
    for s, report, expected in train(model, torch.optim.AdamW(model.parameters(), lr=1e-2), steps=6,
                                     skip=lambda s: s == 2):
        if s:
            assert_ratios(report, expected)
            seen[s] = report.layers["2"].update_ratio
    assert seen[3] == 0.0
    assert seen[4] > 0


def test_a_grad_scaler_that_skips_the_step_gives_zero_and_no_symptom() -> None:
    model = mlp(dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    seen = {}
    with gradwatch.watch(model, optimizer=opt) as watcher:
        for s in range(5):
            opt.zero_grad()
            scaler.scale(_loss32(model, s)).backward()
            if s == 2:
                model[2].weight.grad[0, 0] = float("inf")  # an overflow: the scaler skips this optimizer step
            scaler.unscale_(opt)
            report = watcher.step(loss_scale=scaler.get_scale())
            seen[s] = (report.layers["2"].update_ratio, report.symptoms)
            scaler.step(opt)
            scaler.update()
    assert seen[0][0] is None
    assert seen[2][1] == []  # the overflow is the scaler's business
    assert seen[3] == (0.0, [])
    assert seen[4][0] > 0


def _loss32(model: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(12, 6, generator=g)
    return (model(x) - x[:, :3]).pow(2).mean()


def test_a_fused_optimizer_that_skips_on_the_scalers_found_inf_gives_zero() -> None:
    model = mlp(dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)  # steps under found_inf
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    snap = Snapshot(model, ["0", "2", "4"])
    seen, expected = {}, {}
    with gradwatch.watch(model, optimizer=opt) as watcher:
        for s in range(5):
            opt.zero_grad()
            scaler.scale(_loss32(model, s)).backward()
            if s == 2:
                model[0].bias.grad[0] = float("inf")
            scaler.unscale_(opt)
            report = watcher.step(loss_scale=scaler.get_scale())
            seen[s] = {name: report.layers[name].update_ratio for name in ("0", "2", "4")}
            if s in (2, 4):
                expected[s] = snap.ratios()  # the previous step's
            snap.take()
            scaler.step(opt)
            scaler.update()
    assert seen[3] == {"0": 0.0, "2": 0.0, "4": 0.0}
    for name in ("0", "2", "4"):  # float32 parameters: their rounding is in the reference
        assert seen[2][name] == pytest.approx(expected[2][name], rel=1e-4)
        assert seen[4][name] == pytest.approx(expected[4][name], rel=1e-4)


def test_on_nonfinite_skip_gives_zero_at_the_next_step() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = {}
    with warnings.catch_warnings(), gradwatch.watch(model, optimizer=opt, on_nonfinite="skip") as watcher:
        warnings.simplefilter("ignore")
        for s in range(4):
            opt.zero_grad()
            batch(model, s).backward()
            if s == 1:
                model[4].bias.grad[0] = float("nan")
            seen[s] = watcher.step().layers["4"].update_ratio
            opt.step()  # changes nothing at step 1: every gradient was set to None
    assert seen[1] > 0
    assert seen[2] == 0.0
    assert seen[3] > 0


def test_parameters_optimised_but_not_watched_and_watched_but_not_optimised() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # every layer optimised, two watched
    for s, report, expected in train(model, opt, layers=["0", "2"]):
        assert set(report.layers) == {"0", "2"}
        if s:
            assert_ratios(report, expected)
    model = mlp()
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1)  # every layer watched, one optimised
    for s, report, expected in train(model, opt):
        if s:
            assert_ratios(report, {"0": None, "2": expected["2"], "4": None})


def test_a_frozen_layer_in_the_optimizer_has_no_ratio() -> None:
    model = mlp()
    model[2].requires_grad_(False)
    for s, report, expected in train(model, torch.optim.AdamW(model.parameters(), lr=1e-2)):
        if s:
            assert expected["2"] is None
            assert expected["0"] is not None
            assert_ratios(report, expected)


def test_gradient_accumulation_one_watcher_step_per_optimizer_step() -> None:
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with gradwatch.watch(model, optimizer=opt) as watcher:
        snap = Snapshot(model, watcher.layer_names)
        expected: dict[str, float | None] = {}
        for s in range(4):
            opt.zero_grad()
            for micro in range(3):
                (batch(model, 10 * s + micro) / 3).backward()
            report = watcher.step()
            if s:
                assert_ratios(report, expected)
            snap.take()
            opt.step()
            expected = snap.ratios()


def test_optimizers_that_take_turns_report_the_layers_they_stepped() -> None:
    model = mlp()
    first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    second = torch.optim.Adam([*model[2].parameters(), *model[4].parameters()], lr=1e-2)
    with gradwatch.watch(model, optimizer=[first, second]) as watcher:
        for s in range(5):
            model.zero_grad()
            batch(model, s).backward()
            report = watcher.step()
            if s:
                stepped = second if s % 2 == 0 else first  # the one that stepped after the previous watcher.step
                ratios = {name: report.layers[name].update_ratio for name in watcher.layer_names}
                assert (ratios["0"] is not None) == (stepped is first)
                assert (ratios["2"] is not None) == (ratios["4"] is not None) == (stepped is second)
            (first if s % 2 == 0 else second).step()


def test_sparse_gradients_under_sgd() -> None:
    for kwargs in ({"momentum": 0.9}, {}):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(20, 4, sparse=True), nn.Linear(4, 2)).to(DT)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, **kwargs)
        with gradwatch.watch(model, optimizer=opt) as watcher:
            snap = Snapshot(model, watcher.layer_names)
            expected: dict[str, float | None] = {}
            for s in range(3):
                opt.zero_grad()
                model(torch.tensor([[1, 2, 2], [5, 1, 7]])).sum(dim=1).pow(2).mean().backward()
                report = watcher.step()
                if s:
                    assert_ratios(report, expected)
                snap.take()
                opt.step()
                expected = snap.ratios()


def test_complex_parameters_under_adam() -> None:
    class Complex(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, dtype=torch.complex128))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.w * x).abs().pow(2).sum()

    torch.manual_seed(0)
    model = Complex()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    with gradwatch.watch(model, optimizer=opt) as watcher:
        snap = Snapshot(model, [""])
        for s in range(3):
            opt.zero_grad()
            model(torch.randn(5, dtype=torch.complex128)).backward()
            report = watcher.step()
            if s:
                assert report.layers["__root__"].update_ratio == pytest.approx(snap.ratios()[""], rel=REL)
            snap.take()
            opt.step()


def test_hyper_parameters_held_on_the_device_are_used_as_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``lr`` or beta on a GPU is never read on the host: the same arithmetic runs on 0-d tensors. Emulated on the
    CPU by keeping tensor hyper-parameters as tensors (on the CPU they are read as floats, which costs no sync)."""
    import gradwatch._updates as updates

    monkeypatch.setattr(updates, "_host", lambda x: x.detach() if isinstance(x, torch.Tensor) else float(x))
    t = lambda v: torch.tensor(v, dtype=DT)  # noqa: E731
    for make in (lambda p: torch.optim.AdamW(p, lr=t(1e-2), betas=(t(0.8), t(0.99)), weight_decay=0.2, foreach=False),
                 lambda p: torch.optim.Adam(p, lr=t(1e-2), amsgrad=True, foreach=False),
                 lambda p: torch.optim.SGD(p, lr=t(0.1), momentum=0.9, nesterov=True, weight_decay=0.1),
                 lambda p: torch.optim.SGD(p, lr=t(0.1), weight_decay=0.1, maximize=True)):
        model = mlp()
        for s, report, expected in train(model, make(model.parameters()), steps=4):
            if s:
                assert_ratios(report, expected)


# ---------------------------------------------------------------------------------------------------------------------
# Memory: the exact paths stay under 5% of the parameters' bytes (allocations counted by the CPU profiler)
# ---------------------------------------------------------------------------------------------------------------------

MARK_START, MARK_END = 1_000_003, 1_000_033  # odd byte counts no tensor of the model has


def _mark(nbytes: int) -> Callable[..., None]:
    def hook(*args: Any) -> None:
        torch.empty(nbytes, dtype=torch.uint8)  # allocated and freed at once: a marker in the allocation stream
    return hook


def _peaks(events: list[Any]) -> list[int]:
    """The peak of live bytes above each window's start, between every pair of markers, in allocation order."""
    peaks, live, inside, start = [], 0, False, 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        n = e.nbytes()
        if abs(n) in (MARK_START, MARK_END):
            if n == MARK_START:
                inside, start, peak = True, live, live
            elif n == MARK_END and inside:
                inside = False
                peaks.append(peak - start)
            continue
        live += n
        if inside:
            peak = max(peak, live)
    return peaks


@pytest.mark.parametrize("name", ["adamw foreach", "adamw single-tensor", "sgd nesterov weight decay",
                                  "sgd momentum", "adam amsgrad maximize foreach"])
def test_the_extra_memory_stays_under_five_percent_of_the_parameters(name: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 768), nn.Tanh(), nn.Linear(768, 512), nn.Tanh(), nn.Linear(512, 8)).to(DT)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # 6.3 MB
    opt = OPTIMIZERS[name](model.parameters())
    # markers around gradwatch's hooks: hooks run in the order they were registered
    opt.register_step_pre_hook(_mark(MARK_START))
    opt.register_step_post_hook(_mark(MARK_START))
    x = torch.randn(16, 512, dtype=DT, generator=torch.Generator().manual_seed(1))
    with gradwatch.watch(model, optimizer=opt) as watcher:
        opt.register_step_pre_hook(_mark(MARK_END))
        opt.register_step_post_hook(_mark(MARK_END))
        snap = Snapshot(model, watcher.layer_names)
        expected: dict[str, float | None] = {}
        for s in range(4):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            report = watcher.step()
            if s == 3:
                assert_ratios(report, expected)  # exact through the chunked path too
            snap.take()
            if s == 2:
                with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                    opt.step()
            else:
                opt.step()
            expected = snap.ratios()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    pre, post = _peaks(events)
    assert post > 0  # the profiler saw the temporaries of the post-hook
    assert pre <= 0.05 * param_bytes, (pre, param_bytes)
    assert post <= 0.05 * param_bytes, (post, param_bytes)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs, configuration, lifecycle
# ---------------------------------------------------------------------------------------------------------------------


def test_the_tag_is_written_to_tensorboard_from_the_second_step(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    reported = {}
    for s, report, _ in train(model, opt, steps=5, log_dir=tmp_path, every_n_steps=2):
        reported[s] = report.layers["2"].update_ratio
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert {f"gradwatch/update_ratio/{n}" for n in ("0", "2", "4")} <= set(acc.Tags()["scalars"])
    events = acc.Scalars("gradwatch/update_ratio/2")
    assert [e.step for e in events] == [2, 4]  # logged steps; none at step 0 (no optimizer step yet)
    for e in events:
        assert e.value == pytest.approx(reported[e.step], rel=1e-6)  # float32 in the event file
    layout = acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    assert b"gradwatch/update_ratio/" in layout
    assert b"update-to-weight ratio by layer" in layout


def test_without_an_optimizer_nothing_changes() -> None:
    model = mlp()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, sinks=[sink]) as watcher:
        for s in range(2):
            batch(model, s).backward()
            report = watcher.step()
        assert all(v.update_ratio is None for v in report.layers.values())
    assert not any("update_ratio" in tag for tag in sink.scalars)
    assert not any("update_ratio" in tag for tag in sink.run_info.tags)


def test_the_hooks_are_removed_on_close_and_a_wrapper_is_unwrapped() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Wrapper:  # as Lightning's LightningOptimizer
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

    watcher = gradwatch.watch(model, optimizer=Wrapper(opt))
    assert watcher.config.optimizer == (opt,)
    assert len(opt._optimizer_step_pre_hooks) == 1
    assert len(opt._optimizer_step_post_hooks) == 1
    watcher.close()
    assert not opt._optimizer_step_pre_hooks
    assert not opt._optimizer_step_post_hooks


def test_bad_optimizers_are_refused_before_any_side_effect(tmp_path: Path) -> None:
    model = mlp()
    other = torch.optim.SGD(mlp(seed=1).parameters(), lr=0.1)
    with pytest.raises(ConfigurationError, match="holds none of the watched parameters"):
        gradwatch.watch(model, optimizer=other, log_dir=tmp_path / "run", activations=True)
    assert not (tmp_path / "run").exists()
    assert not other._optimizer_step_pre_hooks
    assert not model[0]._forward_hooks
    with pytest.raises(ConfigurationError, match=r"optimizer=\{'lr': 0.1\}"):
        gradwatch.WatchConfig(optimizer={"lr": 0.1})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigurationError, match="more than once"):
        gradwatch.WatchConfig(optimizer=[opt, opt])
    with pytest.raises(ConfigurationError, match="holds none of the watched parameters"):
        gradwatch.watch(model, optimizer=torch.optim.SGD(model[4].parameters(), lr=0.1), layers="0")


# ---------------------------------------------------------------------------------------------------------------------
# Lightning: the callback passes the Trainer's optimizers
# ---------------------------------------------------------------------------------------------------------------------


def test_the_lightning_callback_passes_the_trainers_optimizers(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradwatch.lightning import GradWatchCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            (x,) = batch
            return (self.net(x) - x[:, :3]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)

    class Reference(pl.Callback):
        """Before each optimizer step (where the watcher runs), the ratio of the previous one from a snapshot."""

        def __init__(self) -> None:
            self.before: list[torch.Tensor] | None = None
            self.ratios: dict[int, float] = {}

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            now = [p.detach().clone() for p in pl_module.net[2].parameters()]
            if self.before is not None:
                dw = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(now, self.before, strict=True)))
                self.ratios[trainer.global_step] = dw / math.sqrt(sum(float(b.pow(2).sum()) for b in self.before))
            self.before = now

    sink = gradwatch.MemorySink()
    reference = Reference()
    callback = GradWatchCallback(every_n_steps=1, sinks=[sink], summary=False)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 6, dtype=DT)), batch_size=8)
    trainer = pl.Trainer(max_steps=5, callbacks=[reference, callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accelerator="cpu", precision="64-true")
    trainer.fit(Module(), data)
    series = dict(sink.series("gradwatch/update_ratio/net.2"))
    assert sorted(series) == [1, 2, 3, 4]
    for step, value in series.items():
        assert value == pytest.approx(reference.ratios[step], rel=REL)


# ---------------------------------------------------------------------------------------------------------------------
# CUDA: the device paths (fused and capturable optimizers keep their step counts on the GPU), and no host sync
# ---------------------------------------------------------------------------------------------------------------------

CUDA_OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adamw fused": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2, fused=True),
    "adam capturable foreach": lambda p: torch.optim.Adam(p, lr=1e-2, capturable=True, foreach=True),
    "adamw capturable tensor lr": lambda p: torch.optim.AdamW(p, lr=torch.tensor(1e-2, dtype=DT, device="cuda"),
                                                              weight_decay=0.1, capturable=True, foreach=False),
    "adamw foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.2, foreach=True),
    "sgd nesterov fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1,
                                                    fused=True),
}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CUDA_OPTIMIZERS))
def test_cuda_ratios_are_exact_and_make_no_host_sync(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10)).to("cuda", DT)
    opt = CUDA_OPTIMIZERS[name](model.parameters())
    armed = [False]

    def strict(on: bool) -> Callable[..., None]:
        def hook(*args: Any) -> None:
            if armed[0]:
                torch.cuda.set_sync_debug_mode("error" if on else "default")
        return hook

    # around gradwatch's hooks only (torch's own step is not gradwatch's business): hooks run in registration order
    opt.register_step_pre_hook(strict(True))
    opt.register_step_post_hook(strict(True))
    x = torch.randn(32, 64, dtype=DT, device="cuda")
    with gradwatch.watch(model, optimizer=opt, every_n_steps=1000) as watcher:
        opt.register_step_pre_hook(strict(False))
        opt.register_step_post_hook(strict(False))
        snap = Snapshot(model, watcher.layer_names)
        expected: dict[str, float | None] = {}
        for s in range(6):
            opt.zero_grad()
            model(x * (1 + s)).pow(2).mean().backward()
            snap.take()  # device copies
            torch.cuda.synchronize()
            armed[0] = s >= 2  # after the first steps: caches built, optimizer state created
            try:
                if armed[0]:
                    torch.cuda.set_sync_debug_mode("error")
                report = watcher.step()  # a non-logging step with the update ratios: no sync
                torch.cuda.set_sync_debug_mode("default")
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
                armed[0] = False
            if s:
                assert_ratios(report, expected)  # reading the report syncs, by design
            expected = snap.ratios()
