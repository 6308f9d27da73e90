"""Pure decisions of the ``transformers.Trainer`` callback: which steps log, who clips, where TensorBoard writes.

Each takes the Trainer's values (``TrainingArguments``, ``TrainerState``) as plain arguments or duck-typed objects, so
that it is tested without a Trainer.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError
from .._mlflow_sink import MLflowSink
from .._sinks import Sink
from .._wandb_sink import WandbSink
from ..clipping import Clipper, NormClip

__all__ = ["STATE_KEY", "clip_for", "integration_sinks", "logs_at", "refuse_unsupported", "steps_per_epoch",
           "strategy_name", "tensorboard_dir"]

#: The key of the watcher's state in ``TrainerState.stateful_callbacks`` (``trainer_state.json`` of a checkpoint). Not
#: a class name, so that ``restore_callback_states_from_checkpoint=True`` never rebuilds the callback from it.
STATE_KEY = "gradwatch"


def strategy_name(strategy: Any) -> str:
    """``"steps"``, ``"epoch"`` or ``"no"`` from an ``IntervalStrategy`` (or its string).

    >>> strategy_name("steps")
    'steps'
    """
    return str(getattr(strategy, "value", strategy))


def steps_per_epoch(batches: int | None, accumulation: int) -> int | None:
    """Optimizer steps in an epoch of ``batches`` micro-batches, as the Trainer counts them; ``None`` without a length.

    >>> steps_per_epoch(10, 4), steps_per_epoch(None, 4)
    (3, None)
    """
    if batches is None:
        return None
    return max(batches // accumulation + int(batches % accumulation > 0), 1)


def logs_at(step: int, *, strategy: str, logging_steps: int, first_step: bool, epoch_steps: int | None,
            max_steps: int) -> bool:
    """Whether the Trainer logs its ``loss`` at ``step`` (1-based: the optimizer step about to finish).

    The rule of ``DefaultFlowCallback``: step 1 with ``logging_first_step``; every ``logging_steps``-th step with
    ``logging_strategy="steps"``; the last step of each epoch (and ``max_steps``) with ``"epoch"``; none with ``"no"``.

    >>> [s for s in range(1, 13) if logs_at(s, strategy="steps", logging_steps=4, first_step=True,
    ...                                        epoch_steps=None, max_steps=12)]
    [1, 4, 8, 12]
    >>> [s for s in range(1, 8) if logs_at(s, strategy="epoch", logging_steps=500, first_step=False,
    ...                                       epoch_steps=3, max_steps=7)]
    [3, 6, 7]
    """
    if step == 1 and first_step:
        return True
    if strategy == "steps":
        return logging_steps > 0 and step % logging_steps == 0
    if strategy == "epoch":
        return epoch_steps is not None and (step % epoch_steps == 0 or step >= max_steps)
    return False


def clip_for(clip: Clipper | None, max_grad_norm: float, layers: str | Sequence[str] | None) -> Clipper | None:
    """The clipper of the watcher: ``clip`` when given, else the Trainer's own ``max_grad_norm`` clipping, taken over.

    Raises:
        ConfigurationError: the Trainer clips (``max_grad_norm > 0``), no ``clip`` is given and ``layers`` narrows what
            is watched: the Trainer clips every parameter, gradwatch would clip the watched ones only.

    >>> clip_for(None, 1.0, None)
    NormClip(max_norm=1.0, norm_type=2.0)
    >>> clip_for(None, 0.0, None) is None
    True
    """
    if clip is not None:
        return clip
    if max_grad_norm is None or max_grad_norm <= 0:
        return None
    if layers is not None:
        raise ConfigurationError(
            f"GradWatchTrainerCallback(layers={layers!r}) with TrainingArguments(max_grad_norm={max_grad_norm!r}): "
            "the callback takes over the Trainer's clipping, which covers every parameter, but it would clip the "
            "watched layers only. Pass clip=... to clip the watched layers, set max_grad_norm=0 to clip nothing, or "
            "leave layers=None.")
    return NormClip(max_grad_norm)


def refuse_unsupported(args: Any) -> None:
    """Raise ``ConfigurationError`` for a set-up whose gradients gradwatch cannot measure (DeepSpeed)."""
    if getattr(args, "deepspeed", None):
        raise ConfigurationError(
            "GradWatchTrainerCallback does not support DeepSpeed "
            f"(TrainingArguments(deepspeed={args.deepspeed!r:.60})): ZeRO partitions the gradients outside the "
            "parameters' .grad and clips them itself, so per-layer norms would be silently wrong. Use DDP or FSDP "
            "(fsdp=...), or remove the callback.")


def tensorboard_dir(output_dir: str, report_to: Sequence[str], trial_name: str | None = None) -> str:
    """The directory of the Trainer's TensorBoard run, for gradwatch's event file.

    With ``report_to`` holding ``"tensorboard"``, the ``TensorBoardCallback`` has created its writer (its
    ``on_train_begin`` runs before the callbacks the user adds): gradwatch writes into that folder, the newest one this
    process wrote an event file to, so that one TensorBoard run holds both the Trainer's and gradwatch's scalars. Else
    (or when it cannot be found) the folder that ``TensorBoardCallback`` would choose: ``$TENSORBOARD_LOGGING_DIR``, or
    ``output_dir/runs/<date>_<host>``.

    >>> tensorboard_dir("out", [], None).startswith(os.path.join("out", "runs", ""))
    True
    """
    env = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if env and not trial_name:
        return os.path.expanduser(env)
    if "tensorboard" in report_to:
        found = _writer_dir(Path(output_dir) / "runs")
        if found is not None:
            return found
    folder = os.path.join(output_dir, "runs", datetime.now().strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname())
    return os.path.join(folder, trial_name) if trial_name else folder


def _writer_dir(root: Path) -> str | None:
    """The folder under ``root`` (one or two levels down) of the newest event file this process wrote."""
    pid = str(os.getpid())
    files = [f for pattern in ("*/events.out.tfevents.*", "*/*/events.out.tfevents.*") for f in root.glob(pattern)
             if pid in f.name.split(".")[4:]]  # events.out.tfevents.<time>.<host>.<pid>.<n>
    if not files:
        return None
    return str(max(files, key=lambda f: f.stat().st_mtime_ns).parent)


def integration_sinks(report_to: Sequence[str], sinks: Sequence[Sink]) -> list[Sink]:
    """Sinks into the runs of the Trainer's own W&B and MLflow integrations, when ``report_to`` names them.

    Their callbacks start the run in their ``on_train_begin``, which runs before the callbacks the user adds, so the
    run is there when gradwatch's watcher is built. Nothing is imported here: a package the Trainer's integration
    did not import is not in use. A sink of the same kind given in ``sinks=`` wins.

    >>> integration_sinks(["tensorboard"], [])
    []
    """
    out: list[Sink] = []
    wandb = sys.modules.get("wandb")
    if ("wandb" in report_to and wandb is not None and getattr(wandb, "run", None) is not None
            and not any(isinstance(s, WandbSink) for s in sinks)):
        out.append(WandbSink(wandb.run))
    mlflow = sys.modules.get("mlflow")
    if ("mlflow" in report_to and mlflow is not None and mlflow.active_run() is not None
            and not any(isinstance(s, MLflowSink) for s in sinks)):
        out.append(MLflowSink(mlflow.active_run()))
    return out
