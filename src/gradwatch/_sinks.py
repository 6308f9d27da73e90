"""Where statistics and alerts go. Sinks receive Python floats and symptoms, never tensors."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from . import _tb_crc
from ._episodes import EpisodeEvent, fmt_number, plural
from ._symptoms import Symptom

__all__ = [
    "ALERTS_TAG",
    "RECORDS_END",
    "RECORDS_MARKER",
    "MemorySink",
    "Sink",
    "TensorBoardSink",
    "alerts_markdown",
    "episodes_markdown",
    "read_records",
    "records_comment",
]

#: TensorBoard text tag under which every alert is written.
ALERTS_TAG = "gradwatch/alerts"
"""TensorBoard text tag under which every alert is written."""

#: Opens the HTML comment that holds a ``gradwatch/alerts`` text's records (see ``alerts_markdown()``).
RECORDS_MARKER = "<!-- gradwatch-records "
"""Opens the HTML comment that holds a ``gradwatch/alerts`` text's records (see ``alerts_markdown()``)."""

#: Closes that comment.
RECORDS_END = " -->"
"""Closes that comment."""


@runtime_checkable
class Sink(Protocol):
    """Receives what the watcher measured. Implement it to send gradwatch's numbers anywhere.

    Optional methods, called only on sinks that define them (see ``gradwatch._dashboard``):
    ``write_run_info(step, info: RunInfo)`` once per run, ``write_histograms(step, {tag: Histogram})`` on histogram
    steps (numpy arrays and floats), ``write_images(step, {tag: png_bytes})`` on figure steps, and
    ``write_episodes(step, events)``: the symptom episodes (``gradwatch._episodes``) that start or end at ``step``,
    and those still open when the run closes; a sink that defines it receives them instead of ``write_alerts``.

    Examples:
        >>> import torch, gradwatch
        >>> class PrintGlobalNorm:  # any object with these four methods is a Sink
        ...     def write_scalars(self, step, scalars):
        ...         print(step, round(scalars["gradwatch/global/grad_norm"], 3))
        ...     def write_alerts(self, step, symptoms): pass
        ...     def flush(self): pass
        ...     def close(self): pass
        >>> isinstance(PrintGlobalNorm(), Sink)
        True
        >>> model = torch.nn.Linear(3, 1)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> with gradwatch.watch(model, sinks=[PrintGlobalNorm()]) as watcher:
        ...     _ = watcher.step()
        0 4.0
    """

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Scalars of one step, keyed by tag (``gradwatch/grad_norm/<layer>``...)."""

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        """The symptoms of the episodes that start at this step (a NaN in 41 layers: 41 symptoms, once)."""

    def flush(self) -> None:
        """Make everything written so far durable."""

    def close(self) -> None:
        """Flush and release what the sink opened."""


class MemorySink:
    """Keeps everything in memory: for tests, notebooks, and users who want the numbers.

    Attributes:
        scalars: ``tag -> [(step, value), ...]``.
        alerts: the symptoms that started an episode, in order.
        episodes: every episode event (start, end, still open at close), in order.

    Examples:
        >>> sink = MemorySink()
        >>> sink.write_scalars(0, {"gradwatch/global/grad_norm": 1.5})
        >>> sink.scalars["gradwatch/global/grad_norm"]
        [(0, 1.5)]
    """

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.alerts: list[Symptom] = []
        self.episodes: list[EpisodeEvent] = []
        self.run_info: Any = None
        self.histograms: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        self.images: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        self.flushes = 0
        self.closed = False

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.scalars[tag].append((step, value))

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        self.alerts.extend(symptoms)

    def write_episodes(self, step: int, events: Sequence[EpisodeEvent]) -> None:
        self.episodes.extend(events)
        self.alerts.extend(s for e in events for s in e.symptoms)

    def write_run_info(self, step: int, info: Any) -> None:
        self.run_info = info

    def write_histograms(self, step: int, histograms: Mapping[str, Any]) -> None:
        for tag, hist in histograms.items():
            self.histograms[tag].append((step, hist))

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        for tag, png in images.items():
            self.images[tag].append((step, png))

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    def series(self, tag: str) -> list[tuple[int, float]]:
        return list(self.scalars.get(tag, []))


def alerts_markdown(symptoms: Sequence[Symptom]) -> str:
    """The text written under ``gradwatch/alerts``: one markdown list item per symptom, for TensorBoard's text
    dashboard, then the symptoms' records (``Symptom.to_record()``) as JSON in an HTML comment, for programs
    (``read_records()``). TensorBoard's sanitizer drops the comment: the dashboard shows the list only.

    Examples:
        >>> from gradwatch import Symptom
        >>> text = alerts_markdown([Symptom("nonfinite", "fc", 7, float("nan"), 0.0, "error", "NaN in 'fc'.")])
        >>> print(text.partition(RECORDS_MARKER)[0].rstrip())
        - **nonfinite** (error) at `fc`, step 7: NaN in 'fc'.
        >>> [(r["kind"], r["layer"], r["step"], r["value"]) for r in read_records(text)]
        [('nonfinite', 'fc', 7, 'nan')]
    """
    lines = []
    for s in symptoms:
        where = f"`{s.layer}`" if s.layer else "model"
        lines.append(f"- **{s.kind}** ({s.severity}) at {where}, step {s.step}: {s.message}")
    return "\n".join(lines) + "\n\n" + records_comment(symptoms)


def episodes_markdown(events: Sequence[EpisodeEvent]) -> str:
    """The text written under ``gradwatch/alerts`` for episode events: one markdown list item per episode that
    starts, ends, or is still open when the run closes, then their records
    (``Episode.to_record()``) in an HTML comment (``read_records()``).

    Examples:
        >>> from gradwatch import Symptom
        >>> from gradwatch._episodes import EpisodeTracker
        >>> t = EpisodeTracker()
        >>> nan = [Symptom.described("nonfinite", f"conv.{i}", 7, float("nan"), 0.0, "error", since=7,
        ...        evidence="NaN.", cause="a bad batch", advice="a check of the data") for i in range(3)]
        >>> start = t.observe(nan, 7).events()
        >>> print(episodes_markdown(start).partition(RECORDS_MARKER)[0].rstrip())
        - **nonfinite** (error) in conv.0–2 (3 layers), since step 7: NaN in the gradients of 3 layers at step 7. \
Likely cause: a bad batch. Try a check of the data.
        >>> print(episodes_markdown(t.observe([], 8).events()).partition(RECORDS_MARKER)[0].rstrip())
        - **nonfinite** (error) in conv.0–2 (3 layers), since step 7: ended at step 8 (seen on 1 step; peak NaN).
        >>> [(r["episode"], r["state"], r["onset"], r["where"]) for r in read_records(episodes_markdown(start))]
        [('nonfinite@7', 'start', 7, 'conv.0–2 (3 layers)')]
    """
    lines = []
    for event in events:
        e = event.episode
        head = f"- **{e.kind}** ({e.severity}) {e.place}, since step {e.onset}"
        if event.what == "start":
            detected = f" (detected at step {e.detected})" if e.detected != e.onset else ""
            note = f" {e.origin_note}" if e.origin_note else ""
            lines.append(f"{head}{detected}: {e.message}{note}")
        elif event.what == "end":
            lines.append(f"{head}: ended at step {e.end} (seen on {plural(e.steps, 'step')}; peak "
                         f"{fmt_number(e.peak)}).")
        else:
            lines.append(f"{head}: still holding at step {e.last} when the run closed (seen on "
                         f"{plural(e.steps, 'step')}; peak {fmt_number(e.peak)}).")
    return "\n".join(lines) + "\n\n" + records_text([event.record() for event in events])


def records_comment(symptoms: Sequence[Symptom]) -> str:
    """The symptoms' records as one HTML comment: ``RECORDS_MARKER``, a JSON list, ``RECORDS_END``.

    ``<`` and ``>`` inside the JSON's strings are written as ``\\u003c`` and ``\\u003e``, so no layer name or message
    can end the comment early.
    """
    return records_text([s.to_record() for s in symptoms])


def records_text(records: Sequence[Mapping[str, Any]]) -> str:
    """Records (JSON-ready dicts) as one HTML comment, as ``records_comment()`` writes them."""
    data = json.dumps(list(records), default=str)
    return RECORDS_MARKER + data.replace("<", "\\u003c").replace(">", "\\u003e") + RECORDS_END


def read_records(text: str) -> list[dict[str, Any]]:
    """The alert records (``Symptom.to_record()`` dicts) of a ``gradwatch/alerts`` text, in order; ``[]`` for a
    text written before records existed. A comment whose JSON does not parse is skipped.

    Examples:
        >>> read_records("- **vanishing** (warning) at `fc`, step 3: old text, no records")
        []
    """
    out: list[dict[str, Any]] = []
    for chunk in text.split(RECORDS_MARKER)[1:]:
        body, found, _ = chunk.partition(RECORDS_END)
        if not found:
            continue
        try:
            records = json.loads(body)
        except ValueError:
            continue
        if isinstance(records, list):
            out.extend(r for r in records if isinstance(r, dict))
    return out


class TensorBoardSink:
    """Writes to a TensorBoard event file through a ``torch.utils.tensorboard.SummaryWriter``.

    All of a step's scalars travel in one event (one ``Summary`` with many values), which is much cheaper than one
    ``add_scalar`` call per tag. A writer the user passed in is flushed but never closed.

    Args:
        log_dir: directory for a new writer (created by this sink, closed by ``close()``).
        writer: an existing ``SummaryWriter`` (or any object with ``add_scalar`` and ``add_text``).

    Examples:
        >>> import tempfile
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> log_dir = tempfile.mkdtemp()
        >>> sink = TensorBoardSink(log_dir=log_dir)  # watch(model, log_dir=...) makes one for you
        >>> sink.write_scalars(0, {"gradwatch/global/grad_norm": 1.5})
        >>> sink.close()
        >>> events = EventAccumulator(log_dir)
        >>> _ = events.Reload()
        >>> [(e.step, e.value) for e in events.Scalars("gradwatch/global/grad_norm")]
        [(0, 1.5)]
    """

    def __init__(self, *, log_dir: str | os.PathLike[str] | None = None, writer: Any = None) -> None:
        _tb_crc.install()  # tensorboard's pure-Python record checksum costs more than all of gradwatch's step
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=os.fspath(log_dir) if log_dir is not None else None)
            self._owns = True
        else:
            self._owns = False
        self.writer = writer
        self._scalars_event = _ScalarSummary()
        from ._dashboard import Overview

        self._overview = Overview()
        self._before_sizes: tuple[int, dict[str, float]] | None = None  # a step written before the layer sizes

    @property
    def log_dir(self) -> str | None:
        getter = getattr(self.writer, "get_logdir", None)
        return getter() if callable(getter) else getattr(self.writer, "log_dir", None)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """The step's scalars and its model-wide overview (``gradwatch._dashboard.Overview``), in one event."""
        if not scalars:
            return
        overview = self._overview.scalars(scalars)
        if not self._overview.sizes:
            self._before_sizes = (step, dict(scalars))
        self._write_values(step, {**scalars, **overview} if overview else scalars)

    def _write_values(self, step: int, scalars: Mapping[str, float]) -> None:
        file_writer = _file_writer(self.writer)
        if file_writer is None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            return
        file_writer.add_event(self._scalars_event.event(scalars), step)

    def write_alerts(self, step: int, symptoms: Sequence[Symptom]) -> None:
        if symptoms:
            self._write_text(step, alerts_markdown(symptoms))

    def write_episodes(self, step: int, events: Sequence[EpisodeEvent]) -> None:
        """One text under ``gradwatch/alerts`` for the episodes that start or end at ``step`` (or are still open when
        the run closes): ``episodes_markdown()``."""
        if events:
            self._write_text(step, episodes_markdown(events))

    def _write_text(self, step: int, text: str) -> None:
        file_writer = _file_writer(self.writer)
        if file_writer is None:
            self.writer.add_text(ALERTS_TAG, text, step)
        else:  # exactly under ALERTS_TAG (SummaryWriter.add_text would append "/text_summary")
            file_writer.add_summary(text_summary(ALERTS_TAG, text), step)

    def write_run_info(self, step: int, info: Any) -> None:
        """The custom-scalars dashboard and the ``gradwatch/layers`` table, once per run; and the layer sizes, which
        turn the overview's gradient norms into RMS entries (for the step already written, in an event of its own)."""
        from ._dashboard import LAYERS_TAG, OVERVIEW, build_layout, layers_markdown, layout_summary

        self._overview.sizes = {layer.name: layer.numel for layer in info.layers}
        if self._before_sizes is not None and self._before_sizes[0] == step:
            rms = {k: v for k, v in self._overview.scalars(self._before_sizes[1]).items()
                   if k.startswith(OVERVIEW + "grad_rms")}
            if rms:
                self._write_values(step, rms)
        self._before_sizes = None
        file_writer = _file_writer(self.writer)
        if file_writer is None:  # another writer (tensorboardX...): the layers table only
            self.writer.add_text(LAYERS_TAG, layers_markdown(info.layers), step)
            return
        file_writer.add_summary(layout_summary(build_layout(info.tags, info.layers)), step)
        file_writer.add_summary(text_summary(LAYERS_TAG, layers_markdown(info.layers)), step)

    def write_histograms(self, step: int, histograms: Mapping[str, Any]) -> None:
        """Per-layer histograms (``gradwatch._histograms.Histogram``), all in one event."""
        if not histograms:
            return
        file_writer = _file_writer(self.writer)
        if file_writer is None:
            for tag, h in histograms.items():
                self.writer.add_histogram_raw(tag, h.min, h.max, h.num, h.sum, h.sum_squares, h.limits.tolist(),
                                              h.counts.tolist(), step)
            return
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

        summary = Summary(value=[Summary.Value(tag=tag, histo=HistogramProto(
            min=h.min, max=h.max, num=h.num, sum=h.sum, sum_squares=h.sum_squares,
            bucket_limit=h.limits.tolist(), bucket=h.counts.tolist())) for tag, h in histograms.items()])
        file_writer.add_summary(summary, step)

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        """PNG images (the gradient-flow figure); skipped for writers other than torch's ``SummaryWriter``."""
        file_writer = _file_writer(self.writer)
        if file_writer is None or not images:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        from ._flowplot import png_size

        values = []
        for tag, png in images.items():
            height, width = png_size(png)
            values.append(Summary.Value(tag=tag, image=Summary.Image(
                height=height, width=width, colorspace=4, encoded_image_string=png)))
        file_writer.add_summary(Summary(value=values), step)

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


class _ScalarSummary:
    """Builds the ``Event`` of a step's simple values from a cached byte template: the tags of a run's logged steps
    rarely change, and serialising them once saves building one protobuf object per scalar at every step. The event
    is parsed from bytes once (not built as a ``Summary`` then copied into an ``Event``: 40% less time at 1,500
    values); ``FileWriter.add_event`` sets its step and wall time.

    >>> from tensorboard.compat.proto.summary_pb2 import Summary
    >>> _ScalarSummary().event({"a": 1.5, "b/c": -2.0}).summary == Summary(value=[
    ...     Summary.Value(tag="a", simple_value=1.5), Summary.Value(tag="b/c", simple_value=-2.0)])
    True
    """

    def __init__(self) -> None:
        self._tags: tuple[str, ...] = ()
        self._template: Any = None
        self._positions: Any = None

    def event(self, scalars: Mapping[str, float]) -> Any:
        import numpy as np
        from tensorboard.compat.proto.event_pb2 import Event

        tags = tuple(scalars)
        if tags != self._tags:
            self._build(tags)
        with np.errstate(over="ignore"):  # float32 overflow is Inf, as protobuf's own conversion gives
            values = np.fromiter(scalars.values(), dtype=np.float64, count=len(tags)).astype("<f4")
        buf = self._template.copy()
        buf[self._positions] = values.view(np.uint8).reshape(-1, 4)
        return Event.FromString(buf.tobytes())

    def _build(self, tags: tuple[str, ...]) -> None:
        import numpy as np

        parts, positions, size = [], [], 0
        for tag in tags:  # Summary.value (field 1) = Value{tag (field 1, string), simple_value (field 2, float)}
            name = tag.encode("utf-8")
            inner = b"\x0a" + _varint(len(name)) + name + b"\x15"
            record = b"\x0a" + _varint(len(inner) + 4) + inner
            positions.append(size + len(record))
            parts.append(record + b"\x00\x00\x00\x00")
            size += len(record) + 4
        header = b"\x2a" + _varint(size)  # Event.summary (field 5, a message) around the values
        self._template = np.frombuffer(header + b"".join(parts), dtype=np.uint8).copy()
        self._positions = np.asarray(positions, dtype=np.int64).reshape(-1, 1) + np.arange(4) + len(header)
        self._tags = tags


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _file_writer(writer: Any) -> Any:
    """The event-file writer behind a ``torch.utils.tensorboard.SummaryWriter``, or ``None`` for other writers."""
    getter = getattr(writer, "_get_file_writer", None)
    if getter is None or not type(writer).__module__.startswith("torch.utils.tensorboard"):
        return None
    return getter()
