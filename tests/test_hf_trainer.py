"""GradWatchTrainerCallback in a real transformers.Trainer: a tiny GPT-2 trained on the CPU.

Each test trains a 2-layer GPT-2 (n_embd=32, vocabulary 1000) on random tokens for a handful of optimizer steps, with
gradient accumulation. NaN is injected at a known optimizer step through a hook on one parameter's gradient.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import gradwatch  # noqa: E402
from gradwatch import ConfigurationError, MemorySink, NonFiniteGradientError  # noqa: E402
from gradwatch._config import watch_options  # noqa: E402
from gradwatch._hf.flow import logs_at, steps_per_epoch  # noqa: E402
from gradwatch.transformers import GradWatchTrainerCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAN_LAYER = "transformer.h.1.mlp.c_fc"


from accelerate_state import _one_thread_and_fresh_accelerate_state  # noqa: E402, F401  (autouse)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 96, length: int = 16) -> None:
        self.x = torch.randint(0, 1000, (n, length), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=1000, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def arguments(tmp_path: Path, **changes) -> transformers.TrainingArguments:
    options = {"output_dir": str(tmp_path / "out"), "max_steps": 6, "per_device_train_batch_size": 4,
               "gradient_accumulation_steps": 2, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
               "use_cpu": True, "disable_tqdm": True, "seed": 0, "data_seed": 0, "max_grad_norm": 0.5}
    return transformers.TrainingArguments(**{**options, **changes})


def trainer(tmp_path: Path, callbacks: list, model: torch.nn.Module | None = None, **changes):
    return transformers.Trainer(model=model if model is not None else gpt2(), args=arguments(tmp_path, **changes),
                                train_dataset=Tokens(), callbacks=callbacks)


class Grads(transformers.TrainerCallback):
    """Copies every gradient in on_pre_optimizer_step (placed before or after gradwatch's callback)."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}
        self.max_grad_norm: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.max_grad_norm.append(args.max_grad_norm)
        self.by_step[state.global_step + 1] = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                                               if p.grad is not None}


class InjectNaN(transformers.TrainerCallback):
    """Writes NaN into one weight's gradient during the backward passes of optimizer step ``at`` (1-based); records
    the parameters before and after that step."""

    def __init__(self, at: int) -> None:
        self.at, self.active, self.handle = at, False, None
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        weight = model.get_submodule(NAN_LAYER).weight
        self.handle = weight.register_hook(lambda g: torch.full_like(g, float("nan")) if self.active else g)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.active = state.global_step + 1 == self.at
        if self.active:
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.active:
            self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.active = False

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()


def event_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ---------------------------------------------------------------------------------------------------------------------
# clipping
# ---------------------------------------------------------------------------------------------------------------------
def test_the_measured_norm_is_the_unclipped_one_and_the_clipping_equals_the_trainers(tmp_path):
    sink = MemorySink()
    before, after = Grads(), Grads()
    cb = GradWatchTrainerCallback(sinks=[sink])
    run = trainer(tmp_path / "a", [before, cb, after])
    run.train()
    steps = sorted(before.by_step)
    assert steps == [1, 2, 3, 4, 5, 6]
    assert before.max_grad_norm == [0.0] * 6  # the Trainer only measures during a step...
    assert run.args.max_grad_norm == 0.5  # ...and gets its clipping back at its end
    assert cb.watcher is not None
    assert isinstance(cb.watcher.clipper, gradwatch.clipping.NormClip)
    assert cb.watcher.clipper.max_norm == 0.5
    measured = dict(sink.series("gradwatch/global/grad_norm"))
    trainer_norms = {e["step"]: e["grad_norm"] for e in run.state.log_history if "grad_norm" in e}
    for step in steps:
        raw = list(before.by_step[step].values())
        norm = torch.nn.utils.get_total_norm(raw).item()
        assert norm > 0.5  # clipping acts on every step
        assert measured[step] == pytest.approx(norm, rel=1e-5)  # gradwatch measured before clipping
        assert trainer_norms[step] == pytest.approx(norm, rel=1e-5)  # the Trainer's grad_norm log is kept, unclipped
        reference = {name: torch.nn.Parameter(torch.zeros_like(g)) for name, g in before.by_step[step].items()}
        for name, p in reference.items():
            p.grad = before.by_step[step][name].clone()
        torch.nn.utils.clip_grad_norm_(reference.values(), 0.5)  # what the Trainer's clipping does
        for name, g in after.by_step[step].items():
            assert torch.allclose(g, reference[name].grad, rtol=1e-5, atol=1e-9), (step, name)
        clipped = torch.nn.utils.get_total_norm(list(after.by_step[step].values())).item()
        assert clipped == pytest.approx(0.5, rel=1e-5)

    # A second run, without gradwatch: the Trainer clips the same gradients itself.
    own = Grads()
    reference_run = trainer(tmp_path / "b", [own])
    reference_run.train()
    for name, g in own.by_step[1].items():  # same model, data and seed: the same first step
        assert torch.allclose(after.by_step[1][name], g, rtol=1e-5, atol=1e-9), name
    for (name, p), (_, q) in zip(run.model.named_parameters(), reference_run.model.named_parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name  # six steps later, still the same training


def test_clip_given_replaces_the_trainers_threshold_and_layers_without_clip_is_refused(tmp_path):
    before, after = Grads(), Grads()
    run = trainer(tmp_path / "a", [before, GradWatchTrainerCallback(clip=0.25), after], max_steps=2)
    run.train()
    for step in (1, 2):
        assert torch.nn.utils.get_total_norm(list(after.by_step[step].values())).item() == pytest.approx(0.25, rel=1e-5)
    assert run.args.max_grad_norm == 0.5

    cb = GradWatchTrainerCallback(layers="transformer.h.*")
    refused = trainer(tmp_path / "b", [cb], max_steps=2)
    with pytest.raises(ConfigurationError, match=r"layers='transformer.h.\*'.*max_grad_norm=0.5"):
        refused.train()
    assert refused.args.max_grad_norm == 0.5
    assert cb.watcher is None
    assert not (tmp_path / "b" / "out" / "runs").exists()


# ---------------------------------------------------------------------------------------------------------------------
# non-finite gradients
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["skip", "stop"])
def test_an_injected_nan_is_a_symptom_and_skip_and_stop_leave_the_weights_as_they_were(tmp_path, action):
    nan = InjectNaN(at=3)
    cb = GradWatchTrainerCallback(on_nonfinite=action, summary=False)
    run = trainer(tmp_path, [nan, cb])
    run.train()
    assert nan.before
    assert nan.after
    for name, p in nan.before.items():
        assert torch.equal(nan.after[name], p), name  # the optimizer step changed nothing
    assert cb.watcher is not None
    summaries = cb.watcher.history.summaries("nonfinite")
    assert {(s.first_step, s.last_step) for s in summaries} == {(3, 3)}
    # The Trainer computes the gradient norm with clip_grad_norm_ before any callback runs, and a NaN norm multiplies
    # every gradient by NaN: the injected layer is among the NaN ones, but so is every other layer.
    assert NAN_LAYER in cb.watcher.history.layers("nonfinite")
    assert run.state.global_step == (6 if action == "skip" else 3)
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert run.args.max_grad_norm == 0.5


def test_raise_propagates_out_of_train_with_the_trainers_clipping_given_back(tmp_path):
    cb = GradWatchTrainerCallback(on_nonfinite="raise", summary=False)
    run = trainer(tmp_path, [InjectNaN(at=2), cb])
    with pytest.raises(NonFiniteGradientError, match="step 2"):
        run.train()
    assert run.args.max_grad_norm == 0.5
    assert cb.watcher is not None
    assert cb.watcher.model is None
    assert not run.model._forward_hooks


# ---------------------------------------------------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------------------------------------------------
def test_event_files_share_the_trainers_tensorboard_run_and_its_logging_steps(tmp_path):
    cb = GradWatchTrainerCallback(summary=False)
    run = trainer(tmp_path, [cb], report_to=["tensorboard"], logging_steps=3, logging_first_step=True, max_steps=9)
    run.train()
    (folder,) = (tmp_path / "out" / "runs").iterdir()  # one run: the Trainer's and gradwatch's files together
    assert cb.watcher is not None
    assert cb.watcher.log_dir == str(folder)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    scalars = event_scalars(folder)
    trainer_steps = [s for s, _ in scalars["train/loss"]]
    assert trainer_steps == [1, 3, 6, 9]
    assert [s for s, _ in scalars["gradwatch/global/grad_norm"]] == trainer_steps
    assert [s for s, _ in scalars[f"gradwatch/grad_norm/{NAN_LAYER}"]] == trainer_steps
    assert [s for s, _ in scalars["gradwatch/loss"]] == trainer_steps
    # train/grad_norm is the last step's norm, as gradwatch's
    for (s, trainer_norm), (_, norm) in zip(scalars["train/grad_norm"], scalars["gradwatch/global/grad_norm"],
                                            strict=True):
        assert norm == pytest.approx(trainer_norm, rel=1e-5), s


def test_the_loss_is_the_one_the_trainer_logs_with_accumulation(tmp_path):
    sink = MemorySink()
    run = trainer(tmp_path, [GradWatchTrainerCallback(sinks=[sink], summary=False)], gradient_accumulation_steps=3)
    run.train()
    trainer_loss = {e["step"]: e["loss"] for e in run.state.log_history if "loss" in e}
    loss = dict(sink.series("gradwatch/loss"))
    assert sorted(loss) == sorted(trainer_loss) == [1, 2, 3, 4, 5, 6]
    for step, value in trainer_loss.items():
        assert loss[step] == pytest.approx(value, rel=1e-5), step
    assert not [h for h in run.model._forward_hooks.values()]  # the loss hook is gone with the watcher


def test_every_n_steps_overrides_the_trainers_cadence(tmp_path):
    sink = MemorySink()
    trainer(tmp_path, [GradWatchTrainerCallback(sinks=[sink], every_n_steps=4, summary=False)], max_steps=8).train()
    assert [s for s, _ in sink.series("gradwatch/global/grad_norm")] == [4, 8]


@pytest.mark.parametrize(("strategy", "first", "expected"), [
    ("steps", False, [5, 10, 15, 20]),
    ("steps", True, [1, 5, 10, 15, 20]),
    ("epoch", False, [7, 14, 20]),
    ("no", True, [1]),
    ("no", False, []),
])
def test_logging_steps_follow_the_trainers_rule(strategy, first, expected):
    epoch = steps_per_epoch(27, 4)
    assert epoch == 7
    assert [s for s in range(1, 21) if logs_at(s, strategy=strategy, logging_steps=5, first_step=first,
                                               epoch_steps=epoch, max_steps=20)] == expected


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def test_a_resumed_run_restores_the_callbacks_state_from_the_checkpoint(tmp_path):
    first = GradWatchTrainerCallback(on_nonfinite="skip", summary=False)
    trainer(tmp_path, [InjectNaN(at=2), first], save_strategy="steps", save_steps=3).train()
    checkpoint = tmp_path / "out" / "checkpoint-3"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["gradwatch"]
    assert saved["step"] == 4  # the watcher's next step: steps 1..3 done (numbered from 1, as the Trainer's logs)
    assert saved["history"]["summaries"][0][0] == "nonfinite"
    final = json.loads((tmp_path / "out" / "checkpoint-6" / "trainer_state.json").read_text())
    assert final["stateful_callbacks"]["gradwatch"]["step"] == 7

    loaded: dict = {}

    class Loaded(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            loaded.update(second.watcher.state_dict())

    second = GradWatchTrainerCallback(on_nonfinite="skip", summary=False)
    resumed = trainer(tmp_path, [second, Loaded()], save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert json.dumps(loaded, sort_keys=True) == json.dumps(saved, sort_keys=True)
    assert second.watcher is not None
    # seen before the checkpoint, kept
    assert {s.first_step for s in second.watcher.history.summaries("nonfinite")} == {2}
    assert second.watcher.steps_taken == 7


def test_a_checkpoint_without_gradwatch_state_starts_afresh(tmp_path):
    trainer(tmp_path, [], save_strategy="steps", save_steps=3, max_steps=3).train()
    cb = GradWatchTrainerCallback(summary=False)
    trainer(tmp_path, [cb], max_steps=5).train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert cb.watcher is not None
    assert cb.watcher.steps_taken == 6


# ---------------------------------------------------------------------------------------------------------------------
# ranks (faked: the TrainerState says which process this is; no process group)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank_zero", [True, False])
def test_only_world_process_zero_writes(tmp_path, rank_zero):
    model = gpt2()
    args = arguments(tmp_path)
    state = transformers.TrainerState(is_world_process_zero=rank_zero, is_local_process_zero=rank_zero,
                                      logging_steps=1, max_steps=2)
    control = transformers.TrainerControl()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sink = MemorySink()
    cb = GradWatchTrainerCallback(sinks=[sink], summary=False)
    cb.on_train_begin(args, state, control, model=model, optimizer=optimizer, train_dataloader=None)
    for _ in range(2):
        cb.on_step_begin(args, state, control)
        model(**Tokens()[slice(0, 4)]).loss.backward()
        cb.on_pre_optimizer_step(args, state, control)
        optimizer.step()
        optimizer.zero_grad()
        state.global_step += 1
        cb.on_step_end(args, state, control)
    cb.on_train_end(args, state, control)
    assert cb.watcher is not None
    assert cb.watcher.steps_taken == 3
    assert (tmp_path / "out" / "runs").exists() == rank_zero
    assert bool(sink.series("gradwatch/global/grad_norm")) == rank_zero
    assert args.max_grad_norm == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# configuration, imports, docs
# ---------------------------------------------------------------------------------------------------------------------
def _keyword_defaults(fn) -> dict[str, object]:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


def test_the_callback_takes_watchs_options_minus_the_trainers_own_with_the_same_defaults():
    callback, watch = _keyword_defaults(GradWatchTrainerCallback), _keyword_defaults(gradwatch.watch)
    own = {"amp_overflow_patience", "summary"}
    # the Trainer supplies the optimizer, the GradScaler and the process group
    assert [n for n in callback if n not in own] == [n for n in watch_options()
                                                     if n not in {"distributed", "optimizer", "scaler"}]
    assert {n: v for n, v in callback.items() if n not in own | {"every_n_steps"}} == \
        {n: watch[n] for n in callback if n not in own | {"every_n_steps"}}
    assert callback["every_n_steps"] is None  # follows the Trainer's logging steps
    fields = {f.name: f.default for f in dataclasses.fields(gradwatch.WatchConfig)}
    assert callback["amp_overflow_patience"] == fields["amp_overflow_patience"]


def test_the_docs_table_lists_every_argument_with_its_default():
    lines = (ROOT / "docs" / "transformers.md").read_text().splitlines()
    start = lines.index("| argument | meaning |")
    table: dict[str, str] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        m = re.fullmatch(r"`(\w+)=(.*)`", line.strip("|").split("|")[0].strip())
        assert m, line
        table[m.group(1)] = m.group(2)
    defaults = _keyword_defaults(GradWatchTrainerCallback)
    assert list(table) == list(defaults)
    for name, stated in table.items():
        assert stated == repr(defaults[name]).replace("'", '"'), name


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(ConfigurationError, match="'warn', 'raise', 'skip', 'stop', 'ignore'"):
        GradWatchTrainerCallback(on_nonfinite="explode")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="every_n_steps=0"):
        GradWatchTrainerCallback(every_n_steps=0)
    with pytest.raises(ConfigurationError, match="summary='yes'"):
        GradWatchTrainerCallback(summary="yes")  # type: ignore[arg-type]


def test_deepspeed_is_refused_before_training(tmp_path):
    cb = GradWatchTrainerCallback()
    args = arguments(tmp_path)
    object.__setattr__(args, "deepspeed", "ds_config.json")
    with pytest.raises(ConfigurationError, match="does not support DeepSpeed"):
        cb.on_train_begin(args, transformers.TrainerState(), transformers.TrainerControl(), model=gpt2())
    assert cb.watcher is None


def test_import_gradwatch_imports_neither_transformers_nor_accelerate():
    code = ("import sys, gradwatch, gradwatch.accelerate; "
            "print(sorted(m for m in ('transformers', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_summary_and_stop_line_do_not_break_the_progress_bar(tmp_path, capfd, monkeypatch):
    import logging

    logger = logging.getLogger("gradwatch")
    monkeypatch.setattr(logger, "propagate", False)  # as in a script: no application handler (pytest adds its own)
    handlers = list(logger.handlers)
    cb = GradWatchTrainerCallback(on_nonfinite="stop")
    trainer(tmp_path, [InjectNaN(at=2), cb], disable_tqdm=False).train()
    captured = capfd.readouterr()
    # tqdm.write clears the bar (a carriage return) and writes the line: it starts a line of its own
    assert re.search(r"[\r\n]gradwatch: non-finite gradients at step 2: the step was skipped", captured.err)
    assert re.search(r"[\r\n]gradwatch: 1 symptom episode\n\s+kind", captured.out), captured.out
    assert list(logger.handlers) == handlers  # the bar's handler is gone after training


# ---------------------------------------------------------------------------------------------------------------------
# the Trainer's own W&B and MLflow integrations
# ---------------------------------------------------------------------------------------------------------------------
def test_report_to_mlflow_writes_gradwatch_into_the_run_the_trainer_started(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "gradwatch-hf")
    sink = MemorySink()
    cb = GradWatchTrainerCallback(sinks=[sink], summary=False)
    run = trainer(tmp_path, [cb], report_to=["mlflow"], logging_steps=2, max_steps=4)
    try:
        run.train()
    finally:  # the Trainer's MLflowCallback set this process's active experiment: later tests use other stores
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.tracking.fluent._active_experiment_id = None  # no public way to unset it
        for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):  # mlflow.set_experiment() exports the id
            os.environ.pop(name, None)
    client = mlflow.MlflowClient(f"file:{tmp_path / 'mlruns'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "gradwatch-hf"]
    (found,) = client.search_runs([experiment.experiment_id])
    logged = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "gradwatch/global/grad_norm")}
    assert sorted(logged) == [2, 4]  # the Trainer's logging steps, as in TensorBoard
    for step, value in sink.series("gradwatch/global/grad_norm"):
        assert logged[step] == pytest.approx(value, rel=1e-6)
    assert "train_loss" in found.data.metrics or "loss" in found.data.metrics  # the Trainer's own run, not another


def test_report_to_wandb_adds_a_sink_on_the_run_the_trainer_started(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = []

    class Spy(transformers.TrainerCallback):  # after gradwatch's: its watcher exists, the W&B run is still open
        def on_step_end(self, args, state, control, **kwargs):
            seen.append([type(s).__name__ for s in cb.watcher.sinks] + [wandb.run is not None])

    cb = GradWatchTrainerCallback(summary=False)
    run = trainer(tmp_path, [cb, Spy()], report_to=["wandb"], logging_steps=2, max_steps=2)
    try:
        run.train()
    finally:
        if wandb.run is not None:
            wandb.run.finish()
    assert seen
    assert seen[-1] == ["TensorBoardSink", "WandbSink", True]


def test_no_integration_sink_without_report_to(tmp_path):
    from gradwatch._hf.flow import integration_sinks

    assert integration_sinks(["tensorboard"], []) == []
    assert integration_sinks([], []) == []


# ---------------------------------------------------------------------------------------------------------------------
# console lines around the Trainer's progress bar
# ---------------------------------------------------------------------------------------------------------------------
def test_lines_go_through_tqdm_unless_the_application_handles_them(capsys, monkeypatch):
    import logging

    from gradwatch._console import LOGGER
    from gradwatch._hf.console import ProgressBarHandler, route_around_progress_bar

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # no application logging
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)  # whatever verbose= an earlier watcher set (setLevel also clears its cache)
    handler = route_around_progress_bar()
    try:
        assert isinstance(handler, ProgressBarHandler)
        LOGGER.warning("vanishing gradients in h.0")
        assert "gradwatch: vanishing gradients in h.0" in capsys.readouterr().err
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])  # the application's own logging
    assert route_around_progress_bar() is None
    LOGGER.addHandler(mine := logging.NullHandler())
    try:
        monkeypatch.setattr(logging.getLogger(), "handlers", [])
        assert route_around_progress_bar() is None  # a handler of the user's on gradwatch's logger
    finally:
        LOGGER.removeHandler(mine)
