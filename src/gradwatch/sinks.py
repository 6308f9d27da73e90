"""Where statistics and alerts go. Sinks receive Python floats and symptoms, never tensors."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .symptoms import Symptom

__all__ = ["ALERTS_TAG", "MemorySink", "Sink", "TensorBoardSink", "alerts_markdown"]

#: TensorBoard text tag under which every alert is written.
ALERTS_TAG = "gradwatch/alerts"


@runtime_checkable
class Sink(Protocol):
    """Receives what the watcher measured. Implement it to send gradwatch's numbers anywhere."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Scalars of one step, keyed by tag (``gradwatch/grad_norm/<layer>``...)."""

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        """Symptoms that start at this step."""

    def flush(self) -> None:
        """Make everything written so far durable."""

    def close(self) -> None:
        """Flush and release what the sink opened."""


class MemorySink:
    """Keeps everything in memory: for tests, notebooks, and users who want the numbers.

    Attributes:
        scalars: ``tag -> [(step, value), ...]``.
        alerts: every alerted symptom, in order.

    >>> sink = MemorySink()
    >>> sink.write_scalars(0, {"gradwatch/global/grad_norm": 1.5})
    >>> sink.scalars["gradwatch/global/grad_norm"]
    [(0, 1.5)]
    """

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.alerts: list[Symptom] = []
        self.flushes = 0
        self.closed = False

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.scalars[tag].append((step, value))

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        self.alerts.extend(symptoms)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    def series(self, tag: str) -> list[tuple[int, float]]:
        return list(self.scalars.get(tag, []))


def alerts_markdown(symptoms: Sequence[Symptom]) -> str:
    """One markdown list item per symptom, for TensorBoard's text dashboard."""
    lines = []
    for s in symptoms:
        where = f"`{s.layer}`" if s.layer else "model"
        lines.append(f"- **{s.kind}** ({s.severity}) at {where}, step {s.step}: {s.message}")
    return "\n".join(lines)


class TensorBoardSink:
    """Writes to a TensorBoard event file through a ``torch.utils.tensorboard.SummaryWriter``.

    All of a step's scalars travel in one event (one ``Summary`` with many values), which is much cheaper than one
    ``add_scalar`` call per tag. A writer the user passed in is flushed but never closed.

    Args:
        log_dir: directory for a new writer (created by this sink, closed by :meth:`close`).
        writer: an existing ``SummaryWriter`` (or any object with ``add_scalar`` and ``add_text``).
    """

    def __init__(self, *, log_dir: str | os.PathLike[str] | None = None, writer: Any = None) -> None:
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=os.fspath(log_dir) if log_dir is not None else None)
            self._owns = True
        else:
            self._owns = False
        self.writer = writer

    @property
    def log_dir(self) -> str | None:
        getter = getattr(self.writer, "get_logdir", None)
        return getter() if callable(getter) else getattr(self.writer, "log_dir", None)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not scalars:
            return
        file_writer = _file_writer(self.writer)
        if file_writer is None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items()])
        file_writer.add_summary(summary, step)

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        if not symptoms:
            return
        file_writer = _file_writer(self.writer)
        if file_writer is None:
            self.writer.add_text(ALERTS_TAG, alerts_markdown(symptoms), step)
        else:  # exactly under ALERTS_TAG (SummaryWriter.add_text would append "/text_summary")
            file_writer.add_summary(text_summary(ALERTS_TAG, alerts_markdown(symptoms)), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        if self._owns:
            self.writer.close()


def text_summary(tag: str, text: str) -> Any:
    """A TensorBoard text-plugin summary under exactly ``tag``."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor)])


def _file_writer(writer: Any) -> Any:
    """The event-file writer behind a ``torch.utils.tensorboard.SummaryWriter``, or ``None`` for other writers."""
    getter = getattr(writer, "_get_file_writer", None)
    if getter is None or not type(writer).__module__.startswith("torch.utils.tensorboard"):
        return None
    return getter()
