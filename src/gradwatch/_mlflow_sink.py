"""A sink for MLflow: gradwatch's numbers in an MLflow run, for hand-written loops.

``mlflow`` is imported when an ``MLflowSink`` is made, never by ``import gradwatch``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._episodes import EpisodeEvent
from ._errors import ConfigurationError
from ._sinks import alerts_markdown, episodes_markdown
from ._symptoms import Symptom

__all__ = ["ALERTS_DIR", "SYMPTOMS_TAG", "MLflowSink", "mlflow_key"]

#: The run's artifact folder for the episode texts (``step_000000042.md``) and the layers table (``layers.md``).
ALERTS_DIR = "gradwatch/alerts"

#: The run tag that lists the symptom kinds seen so far (``"nonfinite, vanishing"``).
SYMPTOMS_TAG = "gradwatch/symptoms"

_INSTALL = "pip install mlflow-skinny (from a gradwatch clone: pip install '.[mlflow]')"
_BAD = re.compile(r"[^/\w.\- ]")  # what MLflow allows in a metric key on every platform (a colon not on Windows)
_MAX_KEY = 250  # MLflow's longest metric key


def mlflow_key(tag: str) -> str:
    """The MLflow metric key of a gradwatch tag: the tag itself, unless MLflow refuses it. MLflow keeps letters,
    digits, ``_ - . /`` and spaces, and keys that read as normalised paths of at most 250 characters; any other
    character becomes ``_``, empty or dot-only path parts become ``_``, and a longer key keeps its end and a hash.

    Examples:
        >>> mlflow_key("gradwatch/grad_norm/encoder.0")
        'gradwatch/grad_norm/encoder.0'
        >>> mlflow_key("gradwatch/grad_norm/blocks[0]:attn")
        'gradwatch/grad_norm/blocks_0__attn'
        >>> len(mlflow_key("gradwatch/grad_norm/" + "x" * 300))
        250
    """
    key = _BAD.sub("_", tag)
    key = "/".join(p if p.strip(".") else "_" for p in key.split("/"))
    if len(key) > _MAX_KEY:
        digest = hashlib.sha1(tag.encode("utf-8")).hexdigest()[:10]
        key = f"{key[:_MAX_KEY - 52]}_{digest}_{key[-40:]}"  # 198 + 1 + 10 + 1 + 40 characters
    return key


class MLflowSink:
    """Writes gradwatch's scalars, episodes and figures to an MLflow run.

    A step's scalars are one ``log_batch`` call (MLflow splits batches of more than 1,000), keyed by TensorBoard's
    tags (``gradwatch/grad_norm/<layer>`` ... see ``docs/tags.md``) wherever MLflow allows the characters
    (``mlflow_key()``), at gradwatch's step; MLflow keeps steps in any order. The symptom episodes go to markdown
    artifacts, one per step that starts or ends one (``gradwatch/alerts/step_000000042.md``, with machine-readable
    records for ``gradwatch._sinks.read_records``), and the kinds seen so far to the run tag ``gradwatch/symptoms``;
    the gradient-flow figure to ``gradwatch/figures/``. Histograms are not written (MLflow has no histogram
    chart). ``close()`` leaves the run open: ``mlflow.end_run()`` is yours.

    MLflow 3 refuses the plain-file tracking store (``file:./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE=true`` is
    set; a tracking server, or ``sqlite:///mlflow.db`` (which needs the full ``mlflow`` package), works as it is.

    Args:
        run: the run to write to: its id, an ``mlflow.entities.Run`` or the ``ActiveRun`` of ``mlflow.start_run()``;
            ``None`` for the active run.
        tracking_uri: the tracking server or store of that run; ``None`` for MLflow's current one
            (``mlflow.set_tracking_uri``, ``MLFLOW_TRACKING_URI``).

    Raises:
        ConfigurationError: mlflow is not installed, there is no active run, or ``run`` is not a run.

    Examples:
        >>> import os, tempfile, torch, mlflow, gradwatch
        >>> os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3: the plain-file store is opt-in
        >>> uri = "file:" + tempfile.mkdtemp()
        >>> client = mlflow.MlflowClient(uri)
        >>> run_id = client.create_run(client.create_experiment("demo")).info.run_id
        >>> model = torch.nn.Linear(3, 1)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> with gradwatch.watch(model, sinks=[gradwatch.MLflowSink(run_id, tracking_uri=uri)]) as watcher:
        ...     _ = watcher.step()
        >>> [(m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, "gradwatch/global/grad_norm")]
        [(0, 4.0)]
        >>> del os.environ["MLFLOW_ALLOW_FILE_STORE"]
    """

    def __init__(self, run: Any = None, *, tracking_uri: str | None = None) -> None:
        mlflow = _import_mlflow()
        if tracking_uri is not None and not isinstance(tracking_uri, str):
            raise ConfigurationError(f"MLflowSink(tracking_uri={tracking_uri!r:.80}) must be a string "
                                     "(\"http://host:5000\", \"sqlite:///mlflow.db\", \"file:./mlruns\") or None.")
        if run is None:
            run = mlflow.active_run()
            if run is None:
                raise ConfigurationError("MLflowSink(run=None) writes to the active MLflow run, and there is none: "
                                         "call mlflow.start_run() first, or pass run=<a run id>.")
        run_id = run if isinstance(run, str) else getattr(getattr(run, "info", None), "run_id", None)
        if not isinstance(run_id, str) or not run_id:
            raise ConfigurationError(f"MLflowSink(run={run!r:.80}): give a run id (str), an mlflow Run or "
                                     "ActiveRun, or None for the active run.")
        self.run_id = run_id
        self.client = mlflow.MlflowClient(tracking_uri)
        from mlflow.entities import Metric

        self._metric = Metric
        self._keys: dict[str, str] = {}
        self._kinds: list[str] = []

    def __repr__(self) -> str:
        return f"MLflowSink(run={self.run_id!r})"

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not scalars:
            return
        now = int(time.time() * 1000)
        keys = self._keys
        metrics = []
        for tag, value in scalars.items():
            key = keys.get(tag)
            if key is None:
                key = keys[tag] = mlflow_key(tag)
            metrics.append(self._metric(key, value, now, step))
        self.client.log_batch(self.run_id, metrics=metrics)

    def write_episodes(self, step: int, events: Sequence[EpisodeEvent]) -> None:
        """The events as one markdown artifact (``episodes_markdown()``); new kinds into the run's tag."""
        if events:
            self._write_text(step, episodes_markdown(events), [e.episode.kind for e in events])

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        """For callers of the plain ``Sink`` protocol: the symptoms as one markdown artifact (``alerts_markdown()``)."""
        if symptoms:
            self._write_text(step, alerts_markdown(symptoms), [s.kind for s in symptoms])

    def _write_text(self, step: int, text: str, kinds: list[str]) -> None:
        self.client.log_text(self.run_id, text, f"{ALERTS_DIR}/step_{step:09d}.md")
        new = [k for k in dict.fromkeys(kinds) if k not in self._kinds]
        if new:
            self._kinds += new
            self.client.set_tag(self.run_id, SYMPTOMS_TAG, ", ".join(self._kinds))

    def write_run_info(self, step: int, info: Any) -> None:
        """The watched layers as a markdown table (``gradwatch/layers.md``), once per run."""
        from ._dashboard import layers_markdown

        self.client.log_text(self.run_id, layers_markdown(info.layers), "gradwatch/layers.md")

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        """PNG images (the gradient-flow figure) as artifacts under ``gradwatch/figures/``."""
        with tempfile.TemporaryDirectory(prefix="gradwatch-") as tmp:
            for tag, png in images.items():
                path = os.path.join(tmp, f"{tag.rsplit('/', 1)[-1]}_step_{step:09d}.png")
                with open(path, "wb") as f:
                    f.write(png)
                self.client.log_artifact(self.run_id, path, "gradwatch/figures")

    def flush(self) -> None:
        """Nothing to do: every call above has reached the tracking store when it returns."""

    def close(self) -> None:
        """Leaves the run open (``mlflow.end_run()`` is the caller's)."""


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise ConfigurationError(f"MLflowSink needs the mlflow package, which is not installed: {_INSTALL}.") from exc
    return mlflow
