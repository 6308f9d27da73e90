"""A sink for Weights & Biases: gradwatch's numbers in a W&B run, for hand-written loops.

``wandb`` is imported when a ``WandbSink`` is made, never by ``import gradwatch``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._episodes import EpisodeEvent
from ._errors import ConfigurationError
from ._sinks import RECORDS_MARKER, alerts_markdown, episodes_markdown
from ._symptoms import Symptom

__all__ = ["ALERT_COLUMNS", "STEP_KEY", "WandbSink"]

#: The W&B key that carries gradwatch's step: the x axis of every ``gradwatch/*`` chart.
STEP_KEY = "gradwatch/step"

#: The columns of the ``gradwatch/alerts`` table.
ALERT_COLUMNS = ("step", "state", "kind", "severity", "where", "onset", "text")

_INSTALL = "pip install wandb (from a gradwatch clone: pip install '.[wandb]')"


class WandbSink:
    """Writes gradwatch's scalars, episodes, histograms and figures to a Weights & Biases run.

    The keys are TensorBoard's tags (``gradwatch/grad_norm/<layer>``, ``gradwatch/global/grad_norm`` ... see
    ``docs/tags.md``). Every ``gradwatch/*`` chart is drawn against ``gradwatch/step`` (``run.define_metric``), and
    gradwatch logs without ``step=``: W&B drops a ``step=`` lower than the run's current one, and gradwatch may write
    a step after a later one (an episode that ends, the episodes still open at ``close()``). So your own
    ``wandb.log(..., step=...)`` calls keep their steps; gradwatch's values land in the rows after them.

    The watched layers go to the table ``gradwatch/layers`` once; the symptom episodes (one row per episode that
    starts, ends, or is still open at the end) to the table ``gradwatch/alerts``, logged again with all rows so far
    whenever one changes: the newest is the whole story.
    Histograms are ``wandb.Histogram``s; the gradient-flow figure is a ``wandb.Image`` (needs Pillow, which the
    figure's matplotlib brings). ``close()`` leaves the run open: ``run.finish()`` is yours.

    Args:
        run: the W&B run to write to; ``None`` for the active one (``wandb.run``, from ``wandb.init()``).

    Raises:
        ConfigurationError: wandb is not installed, there is no active run, or ``run`` is not a W&B run or is
            finished.

    Examples:
        >>> import tempfile, torch, wandb, gradwatch
        >>> run = wandb.init(project="demo", mode="offline", dir=tempfile.mkdtemp(),
        ...                  settings=wandb.Settings(silent=True))
        >>> model = torch.nn.Linear(3, 1)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> with gradwatch.watch(model, sinks=[gradwatch.WandbSink(run)]) as watcher:
        ...     _ = watcher.step()
        >>> round(float(run.summary["gradwatch/global/grad_norm"]), 6)
        4.0
        >>> run.finish()
    """

    def __init__(self, run: Any = None) -> None:
        wandb = _import_wandb()
        if run is None:
            run = wandb.run
            if run is None:
                raise ConfigurationError("WandbSink(run=None) writes to the active W&B run, and there is none: "
                                         "call wandb.init(...) first, or pass run=wandb.init(...).")
        if not all(callable(getattr(run, name, None)) for name in ("log", "define_metric")):
            raise ConfigurationError(f"WandbSink(run={run!r:.80}): not a W&B run (wandb.init() returns one; "
                                     "None takes the active run).")
        try:
            run.define_metric(STEP_KEY)
            run.define_metric("gradwatch/*", step_metric=STEP_KEY)
        except Exception as exc:  # a finished run: wandb.errors.UsageError
            raise ConfigurationError(f"WandbSink(run={run!r:.80}): W&B refused it ({exc}); pass a run that is not "
                                     "finished.") from exc
        self.run = run
        self._alert_rows: list[list[Any]] = []

    def __repr__(self) -> str:
        return f"WandbSink(run={getattr(self.run, 'id', '?')!r})"

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if scalars:
            self.run.log({**scalars, STEP_KEY: step})

    def write_episodes(self, step: int, events: Sequence[EpisodeEvent]) -> None:
        """One row per event in the ``gradwatch/alerts`` table, which is logged again with every row so far."""
        for event in events:
            e = event.episode
            line = episodes_markdown([event]).partition(RECORDS_MARKER)[0].strip().removeprefix("- ")
            self._alert_rows.append([event.step, event.what, e.kind, e.severity, e.where, e.onset, line])
        self._log_alerts(step)

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        """For callers of the plain ``Sink`` protocol: one ``start`` row per symptom."""
        for s in symptoms:
            line = alerts_markdown([s]).partition(RECORDS_MARKER)[0].strip().removeprefix("- ")
            self._alert_rows.append([step, "start", s.kind, s.severity, s.layer, s.since, line])
        self._log_alerts(step)

    def _log_alerts(self, step: int) -> None:
        import wandb

        if self._alert_rows:
            table = wandb.Table(columns=list(ALERT_COLUMNS), data=[list(r) for r in self._alert_rows])
            self.run.log({"gradwatch/alerts": table, STEP_KEY: step})

    def write_run_info(self, step: int, info: Any) -> None:
        """The watched layers as the table ``gradwatch/layers`` (depth, layer, type, parameters), once per run."""
        import wandb

        rows = [[i, layer.name, layer.kind, layer.numel] for i, layer in enumerate(info.layers)]
        self.run.log({"gradwatch/layers": wandb.Table(columns=["depth", "layer", "type", "parameters"], data=rows),
                      STEP_KEY: step})

    def write_histograms(self, step: int, histograms: Mapping[str, Any]) -> None:
        """Per-layer histograms (``gradwatch._histograms.Histogram``: right bucket edges and ``min``)."""
        import wandb

        if histograms:
            out: dict[str, Any] = {tag: wandb.Histogram(np_histogram=(h.counts, np.concatenate([[h.min], h.limits])))
                                   for tag, h in histograms.items()}
            self.run.log({**out, STEP_KEY: step})

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        """PNG images (the gradient-flow figure)."""
        if not images:
            return
        try:
            from PIL import Image  # matplotlib, which draws the figure, brings Pillow
        except ImportError:
            return
        import wandb

        self.run.log({**{tag: wandb.Image(Image.open(io.BytesIO(png))) for tag, png in images.items()},
                      STEP_KEY: step})

    def flush(self) -> None:
        """Nothing to do: the W&B run sends what it is given in the background."""

    def close(self) -> None:
        """Leaves the run open (``run.finish()`` is the caller's)."""


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise ConfigurationError(f"WandbSink needs the wandb package, which is not installed: {_INSTALL}.") from exc
    return wandb
