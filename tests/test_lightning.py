"""GradWatchCallback inside real Lightning Trainers, under both namespaces (lightning.pytorch, pytorch_lightning).

Tiny models, a few steps each; numbers are checked against float64 references computed by hand.
"""

from __future__ import annotations

import copy
import csv
import glob
import importlib
import math
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradwatch import MemorySink, NonFiniteGradientError, Thresholds
from gradwatch._errors import ConfigurationError
from gradwatch.clipping import ClipResult, NormClip
from gradwatch.lightning import GradWatchCallback

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
    pytest.mark.filterwarnings("ignore:.*is smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning"),
]

NAMESPACES = ["lightning.pytorch", "pytorch_lightning"]
BATCH = 4
LAYERS = ["net.0", "net.2"]


def ns(name: str) -> Any:
    return pytest.importorskip(name)


def data(n_batches: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * BATCH, 4, generator=g)
    y = torch.randn(n_batches * BATCH, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def module_class(pl: Any) -> type:
    class Tiny(pl.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
            self.lr = lr

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    return Tiny


def trainer(pl: Any, tmp_path: Any, callbacks: list[Any], **kw: Any) -> Any:
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, **kw)


def hand_norms(module: nn.Module) -> dict[str, float]:
    out = {}
    for name in LAYERS:
        sub = module.get_submodule(name)
        out[name] = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in sub.parameters()))
    return out


def closed(cb: GradWatchCallback, model: nn.Module | None = None) -> bool:
    """The callback's watcher is closed and holds the model no more."""
    w = cb.watcher
    return w is not None and repr(w).startswith("Watcher(closed") and (model is None or w.model is not model)


class Probe:
    """Mixin body for a probe callback: records hand norms and weights; injects NaN at a given step."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.nan_at = nan_at
        self.norms: dict[int, dict[str, float]] = {}
        self.weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # step -> (before, after)
        self._before: torch.Tensor | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._before = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()])

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if trainer.global_step == self.nan_at:
            pl_module.net[0].weight.grad[0, 0] = float("nan")
        self.norms[trainer.global_step] = hand_norms(pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        after = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()])
        self.weights[trainer.global_step - 1] = (self._before, after)  # type: ignore[assignment]


def probe(pl: Any, **kw: Any) -> Any:
    return type("ProbeCallback", (Probe, pl.Callback), {})(**kw)


# ---------------------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_norms_equal_hand_norms_and_accumulation_records_stepping_batches_only(namespace: str, tmp_path: Any) -> None:
    pl = ns(namespace)
    sink = MemorySink()
    p = probe(pl)
    cb = GradWatchCallback(every_n_steps=1, sinks=[sink])
    model = module_class(pl)()
    reference = copy.deepcopy(model.net).double()
    trainer(pl, tmp_path, [p, cb], max_steps=2, accumulate_grad_batches=4).fit(model, data(8))

    series = sink.series("gradwatch/grad_norm/net.0")
    assert [step for step, _ in series] == [0, 1]  # 8 micro-batches, 4 per step: two steps, at global_step 0 and 1
    for name in LAYERS:
        for step, value in sink.series(f"gradwatch/grad_norm/{name}"):
            assert value == pytest.approx(p.norms[step][name], rel=1e-6)
    # Independent float64 reference for step 0: the gradient of the mean of the 4 micro-batch losses.
    ref_loss = 0.0
    for x, y in list(data(8))[:4]:
        micro = nn.functional.mse_loss(reference(x.double()), y.double()) / 4
        micro.backward()
        ref_loss += float(micro.detach())
    for name, idx in (("net.0", 0), ("net.2", 2)):
        expected = math.sqrt(sum(float(q.grad.pow(2).sum()) for q in reference[idx].parameters()))
        assert sink.series(f"gradwatch/grad_norm/{name}")[0][1] == pytest.approx(expected, rel=1e-5)
    assert sink.series("gradwatch/loss")[0] == (0, pytest.approx(ref_loss, rel=1e-5))  # mean of the micro-batches
    assert closed(cb, model)  # at teardown


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_tensorboard_and_csv_loggers_receive_the_scalars(namespace: str, tmp_path: Any) -> None:
    pl = ns(namespace)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = importlib.import_module(f"{namespace}.loggers").TensorBoardLogger(save_dir=tmp_path, name="tb")
    csv_logger = importlib.import_module(f"{namespace}.loggers").CSVLogger(save_dir=tmp_path, name="csv")
    cb = GradWatchCallback(progress_bar=True)  # on the Trainer's logging steps: log_every_n_steps=2
    t = trainer(pl, tmp_path, [cb], max_steps=5, logger=[tb, csv_logger], log_every_n_steps=2)
    t.fit(module_class(pl)(), data(5))

    events = glob.glob(os.path.join(tb.log_dir, "events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    for name in LAYERS:
        assert [e.step for e in acc.Scalars(f"gradwatch/grad_norm/{name}")] == [1, 3]
        assert [e.step for e in acc.Scalars(f"gradwatch/param_norm/{name}")] == [1, 3]
    assert [e.step for e in acc.Scalars("gradwatch/global/grad_norm")] == [1, 3]
    assert all(e.value > 0 for e in acc.Scalars("gradwatch/global/grad_norm"))

    with open(os.path.join(csv_logger.log_dir, "metrics.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("gradwatch/grad_norm/net.0")]
    assert [int(r["step"]) for r in rows] == [1, 3]  # where Lightning writes its own step metrics
    tb_values = [e.value for e in acc.Scalars("gradwatch/grad_norm/net.0")]
    assert [float(r["gradwatch/grad_norm/net.0"]) for r in rows] == pytest.approx(tb_values, rel=1e-6)
    assert "grad_norm" in t.progress_bar_metrics


# ---------------------------------------------------------------------------------------------------------- actions
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_skip_leaves_weights_unchanged_at_the_nan_step_and_training_goes_on(namespace: str, tmp_path: Any,
                                                                            capsys: Any) -> None:
    pl = ns(namespace)
    p = probe(pl, nan_at=2)
    sink = MemorySink()
    cb = GradWatchCallback(on_nonfinite="skip", sinks=[sink])
    t = trainer(pl, tmp_path, [p, cb], max_steps=5)
    t.fit(module_class(pl)(), data(5))
    assert t.global_step == 5
    before, after = p.weights[2]
    assert torch.equal(before, after)
    for step in (0, 1, 3, 4):
        assert not torch.equal(*p.weights[step])
    assert all(torch.isfinite(q).all() for q in t.lightning_module.parameters())
    assert [a.step for a in sink.alerts if a.kind == "nonfinite"] == [2]
    out = capsys.readouterr().out
    assert "nonfinite" in out
    assert "net.0" in out
    (episode,) = cb.watcher.history.episodes("nonfinite")  # the summary at the end of fit renders it
    assert (episode.onset, episode.detected, episode.end) == (2, 2, 3)


def test_raise_flushes_the_event_file_before_raising(tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = pl.loggers.TensorBoardLogger(save_dir=tmp_path, name="tb")
    cb = GradWatchCallback(on_nonfinite="raise")  # log_every_n_steps=50: no step of these would be logged...
    with pytest.raises(NonFiniteGradientError) as info:
        trainer(pl, tmp_path, [probe(pl, nan_at=2), cb], max_steps=5, logger=tb).fit(module_class(pl)(), data(5))
    assert info.value.step == 2
    assert info.value.layers == {"net.0": "nan"}
    acc = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("gradwatch/grad_norm/net.0")] == [2]  # ...but the bad one, flushed
    assert math.isnan(acc.Scalars("gradwatch/grad_norm/net.0")[0].value)
    assert [e.step for e in acc.Tensors("gradwatch/alerts")] == [2]
    assert closed(cb)  # on_exception closed it


def test_stop_ends_fit_after_the_nan_step(tmp_path: Any, capsys: Any) -> None:
    pl = ns("lightning.pytorch")
    p = probe(pl, nan_at=2)
    t = trainer(pl, tmp_path, [p, GradWatchCallback(on_nonfinite="stop")], max_steps=10)
    t.fit(module_class(pl)(), data(10))
    assert t.global_step == 3  # steps 0, 1 and the (skipped) step 2
    assert sorted(p.weights) == [0, 1, 2]
    assert torch.equal(*p.weights[2])
    assert "training stops after it" in capsys.readouterr().out


def test_gradient_clip_val_and_clip_together_fail_at_setup(tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")
    t = trainer(pl, tmp_path, [GradWatchCallback(clip=1.0)], max_steps=1, gradient_clip_val=0.5)
    with pytest.raises(ConfigurationError, match=r"Remove gradient_clip_val from the Trainer"):
        t.fit(module_class(pl)(), data(1))


def test_lightning_clipping_alone_is_measured_before_it_clips(tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")
    sink = MemorySink()
    p = probe(pl)
    t = trainer(pl, tmp_path, [p, GradWatchCallback(every_n_steps=1, sinks=[sink])], max_steps=2,
                gradient_clip_val=1e-3)
    t.fit(module_class(pl)(), data(2))
    for step, value in sink.series("gradwatch/global/grad_norm"):
        assert value == pytest.approx(math.sqrt(sum(v * v for v in p.norms[step].values())), rel=1e-6)
        assert value > 1e-2  # unclipped: Lightning clips to 1e-3 after the hook


def test_invalid_configuration_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="'stop'"):
        GradWatchCallback(on_nonfinite="halt")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="every_n_steps"):
        GradWatchCallback(every_n_steps=0)
    with pytest.raises(ConfigurationError, match="clip"):
        GradWatchCallback(clip=-1.0)


# ---------------------------------------------------------------------------------------------------------- state
class CountingClip(NormClip):
    """A stateful clipper: counts steps and keeps the largest norm seen, as tensors."""

    def __init__(self, max_norm: float) -> None:
        super().__init__(max_norm)
        self.calls = torch.zeros((), dtype=torch.long)
        self.peak = torch.zeros((), dtype=torch.float64)

    def clip(self, batch: Any) -> ClipResult:
        self.calls += 1
        self.peak = torch.maximum(self.peak, batch.total_norm.double())
        return super().clip(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls.clone(), "peak": self.peak.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls, self.peak = state["calls"].clone(), state["peak"].clone()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_checkpoint_and_resume_restore_rule_and_clipper_state(tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")
    th = Thresholds(vanishing_rms=1e3, vanishing_patience=100)  # every layer "starved": counters grow each step
    cb = GradWatchCallback(clip=CountingClip(1e3), thresholds=th)
    t = trainer(pl, tmp_path, [cb], max_steps=3)
    t.fit(module_class(pl)(), data(6))
    before = cb.state_dict()
    assert before["rules"]["vanish_count"] == [3, 3]
    assert int(before["clipper"]["calls"]) == 3
    ckpt = str(tmp_path / "step3.ckpt")
    t.save_checkpoint(ckpt)

    seen: dict[str, Any] = {}

    class Peek(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen["state"] = cb2.state_dict()

    sink = MemorySink()
    cb2 = GradWatchCallback(clip=CountingClip(1e3), thresholds=th, sinks=[sink], every_n_steps=1)
    t2 = trainer(pl, tmp_path, [cb2, Peek()], max_steps=5)
    t2.fit(module_class(pl)(), data(6), ckpt_path=ckpt)
    assert _same(seen["state"], before)
    assert [s for s, _ in sink.series("gradwatch/global/grad_norm")] == [3, 4]
    after = cb2.state_dict()
    assert after["rules"]["vanish_count"] == [5, 5]
    assert int(after["clipper"]["calls"]) == 5


# ---------------------------------------------------------------------------------------------------------- loops
def test_manual_optimization_records_every_optimizer_step_once(tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")

    class TwoOpt(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 1)
            self.automatic_optimization = False
            self.hand: list[tuple[int, float, float]] = []

        def training_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            opt_a, opt_b = self.optimizers()
            for opt, loss in ((opt_a, self.a(x).pow(2).mean()), (opt_b, nn.functional.mse_loss(self.b(x), y))):
                opt_a.zero_grad(set_to_none=True)
                opt_b.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                norm = {n: math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in m.parameters()))
                        for n, m in (("a", self.a), ("b", self.b)) if m.weight.grad is not None}
                self.hand.append((self.trainer.global_step, norm.get("a", -1.0), norm.get("b", -1.0)))
                opt.step()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)

    sink = MemorySink()
    model = TwoOpt()
    trainer(pl, tmp_path, [GradWatchCallback(every_n_steps=1, sinks=[sink])], max_steps=6).fit(model, data(3))
    assert [s for s, _ in sink.series("gradwatch/global/grad_norm")] == [0, 1, 2, 3, 4, 5]
    assert [s for s, _ in sink.series("gradwatch/grad_norm/a")] == [0, 2, 4]
    assert [s for s, _ in sink.series("gradwatch/grad_norm/b")] == [1, 3, 5]
    for step, a, b in model.hand:
        layer, expected = ("a", a) if step % 2 == 0 else ("b", b)
        assert dict(sink.series(f"gradwatch/grad_norm/{layer}"))[step] == pytest.approx(expected, rel=1e-6)


def test_bf16_mixed_runs_on_cpu(tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")
    sink = MemorySink()
    p = probe(pl)
    t = trainer(pl, tmp_path, [p, GradWatchCallback(every_n_steps=1, sinks=[sink])], max_steps=3,
                precision="bf16-mixed")
    t.fit(module_class(pl)(), data(3))
    assert [s for s, _ in sink.series("gradwatch/global/grad_norm")] == [0, 1, 2]
    for step, value in sink.series("gradwatch/grad_norm/net.0"):
        assert value == pytest.approx(p.norms[step]["net.0"], rel=1e-6)
    assert "gradwatch/amp/scale" not in sink.scalars  # no scaler under bf16


def test_hooks_registered_on_the_watcher_are_removed_at_teardown_and_on_exception(tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")

    class Attach(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            cb.watcher.add_cleanup(pl_module.net[0].register_forward_hook(lambda *a: None))

    for nan_at, expect_error in ((None, False), (1, True)):
        cb = GradWatchCallback(on_nonfinite="raise")
        model = module_class(pl)()
        t = trainer(pl, tmp_path, [Attach(), probe(pl, nan_at=nan_at), cb], max_steps=3)
        if expect_error:
            with pytest.raises(NonFiniteGradientError):
                t.fit(model, data(3))
        else:
            t.fit(model, data(3))
        assert not model.net[0]._forward_hooks
        assert closed(cb, model)


def test_layers_created_in_configure_model_are_watched(tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")

    class Late(module_class(pl)):  # type: ignore[misc]
        def __init__(self) -> None:
            pl.LightningModule.__init__(self)
            self.lr = 0.1

        def configure_model(self) -> None:
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    sink = MemorySink()
    p = probe(pl)
    trainer(pl, tmp_path, [p, GradWatchCallback(every_n_steps=1, sinks=[sink])], max_steps=2).fit(Late(), data(2))
    assert [s for s, _ in sink.series("gradwatch/grad_norm/net.2")] == [0, 1]
    assert sink.series("gradwatch/grad_norm/net.2")[1][1] == pytest.approx(p.norms[1]["net.2"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------------- AMP (fp16)
def fp16_trainer(pl: Any, tmp_path: Any, device: str, callbacks: list[Any], **kw: Any) -> Any:
    """``precision="16-mixed"`` on the GPU; on the CPU the same plugin with a CPU GradScaler (Lightning's flag would
    turn 16-mixed into bf16-mixed there)."""
    common = dict(default_root_dir=tmp_path, devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **kw)
    if device == "cuda":
        return pl.Trainer(accelerator="gpu", precision="16-mixed", **common)
    plugin = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    return pl.Trainer(accelerator="cpu", plugins=[plugin], **common)


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                     reason="needs a CUDA device")]),
])
def test_16_mixed_scaler_overflow_is_an_event_until_it_persists(device: str, tmp_path: Any) -> None:
    pl = ns("lightning.pytorch")

    class Overflow(pl.Callback):
        """Puts an Inf into the (scaled) gradient at steps 1 and 4..8: the scaler must skip those steps."""

        def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
            if trainer.global_step == 1 or 4 <= trainer.global_step <= 8:
                pl_module.net[0].weight.grad[0, 0] = float("inf")

    sink = MemorySink()
    p = probe(pl)
    cb = GradWatchCallback(every_n_steps=1, sinks=[sink], amp_overflow_patience=3, on_nonfinite="warn")
    t = fp16_trainer(pl, tmp_path, device, [Overflow(), p, cb], max_steps=10)
    t.fit(module_class(pl)(), data(10))

    overflows = dict(sink.series("gradwatch/amp/overflows"))
    assert [overflows[s] for s in range(10)] == [0, 1, 1, 1, 2, 3, 4, 5, 6, 6]
    scales = dict(sink.series("gradwatch/amp/scale"))
    assert scales[0] == 2.0**16
    assert scales[2] == scales[1] / 2  # the scaler halved its scale after the overflow
    assert torch.equal(*p.weights[1])  # the scaler skipped those steps
    assert torch.equal(*p.weights[6])
    assert not torch.equal(*p.weights[2])
    # Steps 1, 4, 5: events only. From the 3rd consecutive overflow (step 6) on: nonfinite symptoms, alerted once.
    nonfinite = dict(sink.series("gradwatch/symptoms/nonfinite"))
    assert [s for s in range(10) if nonfinite.get(s, 0) > 0] == [6, 7, 8]
    assert [(a.step, a.layer) for a in sink.alerts if a.kind == "nonfinite"] == [(6, "net.0")]  # one episode
    assert "3 consecutive steps" in sink.alerts[0].message
    (episode,) = cb.watcher.history.episodes("nonfinite")
    assert (episode.onset, episode.detected, episode.last, episode.end) == (4, 6, 8, 9)  # since the streak began
    assert not [a for a in sink.alerts if a.kind == "exploding"]
    history = {(e.kind, e.layer): e for e in cb.watcher.history.summaries()}
    assert (history[("amp_overflow", None)].count, history[("amp_overflow", None)].first_step) == (3, 1)
    assert history[("nonfinite", "net.0")].first_step == 6
    for step in (0, 2, 3, 9):
        assert dict(sink.series("gradwatch/grad_norm/net.2"))[step] == pytest.approx(p.norms[step]["net.2"], rel=1e-5)
    assert dict(sink.series("gradwatch/loss"))[0] < 10  # the unscaled loss, not loss * 65536


# ---------------------------------------------------------------------------------------------------------- imports
def test_import_gradwatch_does_not_import_lightning() -> None:
    code = "import sys, gradwatch; print(sorted(m for m in sys.modules if 'lightning' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"


def test_missing_lightning_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradwatch._lightning import compat as _lightning_compat

    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    with pytest.raises(ImportError, match=r"pip install lightning` .*'\.\[lightning\]'"):
        _lightning_compat.namespaces()


def test_one_callback_class_is_a_callback_of_both_namespaces() -> None:
    for name in NAMESPACES:
        assert isinstance(GradWatchCallback(), ns(name).Callback)


def test_rnn_clipping_example_keeps_the_weights_finite(tmp_path: Any) -> None:
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "lightning_rnn_clipping.py")
    spec = importlib.util.spec_from_file_location("lightning_rnn_clipping", path)
    example = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(example)  # type: ignore[union-attr]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the RNN's small ops are slower with threads fighting over 2 cores
    try:
        assert example.run("clipped", 1.0, steps=4, lr=0.05, log_dir=str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    assert glob.glob(os.path.join(tmp_path, "clipped", "version_0", "events.out.tfevents.*"))


def test_activation_hooks_through_the_callback(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from gradwatch import MemorySink
    from lightning_fit import fit_tiny

    sink = MemorySink()
    trainer = fit_tiny(pl, tmp_path, steps=4, log_every_n_steps=2, name="tb", sinks=[sink], activations=True)
    assert [s for s, _ in sink.series("gradwatch/act_mean/net.1")] == [0, 2]  # the Tanh, on logging steps
    assert all(-1.0 <= v <= 1.0 for _, v in sink.series("gradwatch/act_mean/net.1"))
    assert sink.series("gradwatch/grad_out_norm/net.0")
    module = trainer.lightning_module
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())  # removed at teardown


def test_callback_rejects_bad_hook_options():
    from gradwatch import ConfigurationError
    from gradwatch.lightning import GradWatchCallback

    with pytest.raises(ConfigurationError, match="nan_origin='always'"):
        GradWatchCallback(nan_origin="always")
    with pytest.raises(ConfigurationError, match="activation_every_n_steps=0"):
        GradWatchCallback(activations=True, activation_every_n_steps=0)
    with pytest.raises(ConfigurationError, match="activations=3"):
        GradWatchCallback(activations=3)
