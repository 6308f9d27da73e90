"""``gradwatch report``: the diagnosis of finished (or crashed) runs, read back from their TensorBoard event files.

Reading (``find_runs()``, ``load_run()``) and diagnosing (``diagnose()``, a pure function of the loaded run)
are separate; rendering is plain text (``format_text()``) or a rich table when ``rich`` is installed
(the ``report`` extra: ``pip install rich``). Event files are read record by record with TensorBoard's own
loader, which stops at the last complete record: a file cut mid-record by a crash still yields everything written
before the cut.

Where the numbers come from: symptom counts per step from ``gradwatch/symptoms/<kind>``; the episodes (which layers,
from which step, until which, why) from the records under ``gradwatch/alerts`` (the JSON that
``gradwatch._sinks.episodes_markdown()`` writes beside the markdown when an episode starts, ends, or is still open at
close, read by ``gradwatch._sinks.read_records()``: the fields of each episode, never a message's words; the
per-symptom records of older logs likewise); the depth order and layer sizes from ``gradwatch/layers``; the global
norm and clipping from ``gradwatch/global/*`` and ``gradwatch/clip/*``.
"""

from __future__ import annotations

import math
import os
import statistics
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._dashboard import LAYERS_TAG, LayerInfo, parse_layers_markdown
from ._episodes import COLUMNS, Episode, advice_lines, episode_table, fmt_number, group_layers, plural
from ._sinks import ALERTS_TAG, read_records
from ._symptoms import Symptom, json_float

__all__ = [
    "NoRunsError",
    "RunData",
    "diagnose",
    "diagnose_runs",
    "episodes_of",
    "find_runs",
    "flow_data",
    "format_text",
    "load_run",
    "parse_alerts",
    "print_rich",
    "run_header",
    "select_runs",
    "should_fail",
    "summary_lines",
    "verdict",
]

_SYMPTOMS = "gradwatch/symptoms/"


class NoRunsError(Exception):
    """No event file (or no run of that name) under the log directory; the message says what was looked for."""


@dataclass
class RunData:
    """What one run's event files hold that the report needs."""

    name: str
    path: str
    scalars: dict[str, dict[int, float]] = field(default_factory=dict)  # tag -> step -> value
    alerts: list[Symptom] = field(default_factory=list)  # symptoms of alerts written before episodes existed
    episodes: dict[str, Episode] = field(default_factory=dict)  # by key: the latest record of each episode
    layers: list[LayerInfo] = field(default_factory=list)  # depth order, from gradwatch/layers
    tag_order: list[str] = field(default_factory=list)  # scalar tags in the order first written
    notes: list[str] = field(default_factory=list)  # truncated files and the like
    legacy_alerts: int = 0  # alerts read from text written before records existed (no onset, cause or advice)

    def series(self, tag: str) -> list[tuple[int, float]]:
        return sorted(self.scalars.get(tag, {}).items())

    @property
    def has_gradwatch(self) -> bool:
        return bool(self.alerts or self.episodes or self.layers
                    or any(t.startswith("gradwatch/") for t in self.scalars))

    def layer_names(self) -> list[str]:
        """Layers in depth order: from the layers table, else in the order their grad_norm tags were first written."""
        if self.layers:
            return [layer.name for layer in self.layers]
        prefix = "gradwatch/grad_norm/"
        return [t[len(prefix):] for t in self.tag_order if t.startswith(prefix)]


def parse_alerts(text: str) -> list[Symptom]:
    """The alerts of one ``gradwatch/alerts`` text: the symptoms of its records (``gradwatch._sinks.read_records()``).

    A text written before records existed has only its markdown lines; each gives what the line's fixed layout
    (``- **kind** (severity) at `layer`, step N: message``) holds, and nothing read from the message's prose: no onset
    (``since``), cause or advice.

    Examples:
        >>> parse_alerts("- **vanishing** (warning) at `hidden.0`, step 12: Vanishing gradients.")[0].layer
        'hidden.0'
    """
    records = read_records(text)
    return _from_records(records) if records else _legacy_alerts(text)


def _from_records(records: Sequence[Mapping[str, Any]]) -> list[Symptom]:
    out = []
    for record in records:
        try:
            out.append(Symptom.from_record(record))
        except (KeyError, TypeError, ValueError, IndexError):
            continue  # a record without a kind or a step says nothing the report can place
    return out


def _legacy_alerts(text: str) -> list[Symptom]:
    return [a for a in map(_legacy_alert, text.splitlines()) if a is not None]


def _legacy_alert(line: str) -> Symptom | None:
    """The symptom of one markdown line written by gradwatch before alert records existed, else ``None``."""
    head, found, rest = line.strip().partition("- **")
    kind, found_kind, rest = rest.partition("** (")
    severity, found_severity, rest = rest.partition(") at ")
    if head or not (found and found_kind and found_severity):
        return None
    layer: str | None = None
    if rest.startswith("`"):
        layer, found, rest = rest[1:].partition("`, step ")
    else:
        found = "model, step " if rest.startswith("model, step ") else ""
        rest = rest[len(found):]
    step, found_step, message = rest.partition(": ")
    if not (found and found_step and step.isdigit()):
        return None
    return Symptom(kind, layer, int(step), math.nan, math.nan, "error" if severity == "error" else "warning", message)


def find_runs(logdir: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(name, directory)`` of every directory under ``logdir`` holding an event file; the name is the relative path.

    Raises:
        NoRunsError: when ``logdir`` does not exist or holds no event file.
    """
    root = os.fspath(logdir)
    if not os.path.isdir(root):
        raise NoRunsError(f"{root!r} is not a directory.")
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if any("tfevents" in f for f in filenames):
            rel = os.path.relpath(dirpath, root)
            runs.append((rel.replace(os.sep, "/") if rel != "." else ".", dirpath))
    if not runs:
        raise NoRunsError(f"No TensorBoard event files (events.out.tfevents.*) under {root!r}. Point gradwatch report "
                          "at the log_dir given to gradwatch.watch(), or the Lightning logger's save_dir.")
    return runs


def select_runs(logdir: str | os.PathLike[str], run: str | None = None) -> list[tuple[str, str]]:
    """``find_runs(logdir)``, or the one named ``run`` (a trailing ``/`` ignored).

    Raises:
        NoRunsError: when there is no run, or none of that name (the message lists the runs found).
    """
    runs = find_runs(logdir)
    if run is None:
        return runs
    chosen = [r for r in runs if r[0] == run or r[0].rstrip("/") == run.rstrip("/")]
    if not chosen:
        raise NoRunsError(f"No run named {run!r} under {os.fspath(logdir)!r}; runs found: "
                          f"{', '.join(n for n, _ in runs)}.")
    return chosen


def diagnose_runs(runs: Sequence[tuple[str, str]], *, chosen: bool) -> list[dict[str, Any]]:
    """The reports of ``runs``; of those with gradwatch data only (if any) when several were found, none chosen."""
    reports = [diagnose(load_run(name, path)) for name, path in runs]
    if not chosen and len(reports) > 1:  # other TensorBoard runs in the same tree are not ours to report
        reports = [r for r in reports if r["gradwatch"]] or reports
    return reports


def load_run(name: str, directory: str) -> RunData:
    """Read every event file of one run directory (oldest first; a step written twice keeps its last value)."""
    from tensorboard.backend.event_processing.event_file_loader import (
        LegacyEventFileLoader,
    )

    run = RunData(name=name, path=directory)
    files = sorted(f for f in os.listdir(directory) if "tfevents" in f)
    seen_tags: set[str] = set()
    for fname in files:
        path = os.path.join(directory, fname)
        cut = _truncated_at(path)
        if cut is not None:
            run.notes.append(f"{fname} ends mid-record (a crashed or still-running writer?): read up to byte {cut}.")
        try:
            for event in LegacyEventFileLoader(path).Load():
                if event.HasField("summary"):
                    _take_summary(run, event.summary, int(event.step), seen_tags)
        except Exception as exc:  # a damaged file must not hide the others
            run.notes.append(f"{fname}: stopped reading at a damaged record ({exc.__class__.__name__}: {exc}).")
    if run.legacy_alerts:
        run.notes.append(f"{run.legacy_alerts} alert(s) written by a gradwatch without alert records: their steps are "
                         "those of the alerts, not of the episodes' onsets, and they give no advice.")
    return run


def _take_summary(run: RunData, summary: Any, step: int, seen: set[str]) -> None:
    for value in summary.value:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
            _scalar(run, value.tag, step, float(value.simple_value), seen)
        elif kind == "tensor":
            _take_tensor(run, value, step, seen)


def _take_tensor(run: RunData, value: Any, step: int, seen: set[str]) -> None:
    tag = value.tag
    plugin = value.metadata.plugin_data.plugin_name
    if tag in (ALERTS_TAG, LAYERS_TAG) or plugin == "text":
        _take_text(run, tag, b"\n".join(value.tensor.string_val).decode("utf-8", "replace"))
    elif plugin == "scalars" and (value.tensor.float_val or value.tensor.double_val):
        vals = list(value.tensor.float_val) or list(value.tensor.double_val)
        _scalar(run, tag, step, float(vals[0]), seen)


def _take_text(run: RunData, tag: str, text: str) -> None:
    """``SummaryWriter.add_text`` writes under ``<tag>/text_summary``: both spellings are ours."""
    if tag == ALERTS_TAG or tag.startswith(ALERTS_TAG + "/"):
        records = read_records(text)
        if records:
            _take_episodes(run, [r for r in records if "episode" in r])
            run.alerts.extend(_from_records([r for r in records if "episode" not in r]))
        else:
            legacy = _legacy_alerts(text)
            run.legacy_alerts += len(legacy)
            run.alerts.extend(legacy)
    elif tag == LAYERS_TAG or tag.startswith(LAYERS_TAG + "/"):
        run.layers = parse_layers_markdown(text) or run.layers


def _take_episodes(run: RunData, records: Sequence[Mapping[str, Any]]) -> None:
    """Episode records (start, end, still open at close): the latest of each episode is kept."""
    for record in records:
        try:
            episode = Episode.from_record(record)
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        run.episodes[str(record["episode"])] = episode


def _scalar(run: RunData, tag: str, step: int, v: float, seen: set[str]) -> None:
    run.scalars.setdefault(tag, {})[step] = v
    if tag not in seen:
        seen.add(tag)
        run.tag_order.append(tag)


def _truncated_at(path: str) -> int | None:
    """The offset after the last complete record when a TFRecord file ends mid-record, else ``None``."""
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(8)
            if len(header) < 8:
                return offset
            (length,) = struct.unpack("<Q", header)
            end = offset + 12 + length + 4  # length, its crc, data, data crc
            if end > size:
                return offset
            f.seek(end)
            offset = end
    return None


# ---------------------------------------------------------------------------------------------------- diagnosis
#: Kinds whose alerts name gradwatch's own remedy in their sentence (``ZScoreClip``, ``on_spike="skip"``): the report
#: gives no advice line for them, as it never has.
_NO_ADVICE_LINE = frozenset({"spike"})


def diagnose(run: RunData) -> dict[str, Any]:
    """The report of one run, as JSON-ready data (what ``--json`` prints for each run).

    Keys: ``name``, ``path``, ``gradwatch`` (whether any gradwatch tag was found), ``steps`` (first and last),
    ``logged_steps``, ``symptoms`` (per kind: steps with at least one, first and last such step, most layers at once),
    ``episodes`` (one per symptom episode: kind, severity, ``where`` and ``layers`` at detection, ``later`` layers,
    ``onset``, ``detected``, ``last`` and ``end`` step, ``steps``, ``peak``, cause and advice), ``starved_layers`` (the
    vanishing ones, in depth order), ``global_norm`` (first, last, min, max, median, peak, trend, non-finite count),
    ``clipping``, ``advice`` (per kind), ``notes``.

    Everything about an episode comes from its records' fields (``Episode.to_record()``), never from a message's
    words. Runs written before episodes existed are read from their symptom records: one episode per kind and layer.

    Examples:
        >>> run = RunData("r", "/tmp/r", scalars={"gradwatch/global/grad_norm": {0: 4.0, 10: 1.0}})
        >>> diagnose(run)["global_norm"]["trend"]
        'falling'
    """
    kinds = _symptom_spans(run)
    episodes = run_episodes(run, kinds)
    order = {name: i for i, name in enumerate(run.layer_names())}
    starved = {x for e in episodes if e.kind == "vanishing" for x in e.named_layers}
    steps = sorted({s for t, vals in run.scalars.items() if t.startswith("gradwatch/") for s in vals})
    return {
        "name": run.name,
        "path": run.path,
        "gradwatch": run.has_gradwatch,
        "steps": [steps[0], steps[-1]] if steps else None,
        "logged_steps": len(run.scalars.get("gradwatch/global/grad_norm", {})),
        "symptoms": kinds,
        "episodes": [episode_json(e) for e in episodes],
        "starved_layers": sorted(starved, key=lambda x: order.get(x, len(order))),
        "global_norm": _trend(run.series("gradwatch/global/grad_norm")),
        "clipping": _clipping(run),
        "advice": advice_lines(episodes, skip=_NO_ADVICE_LINE),
        "notes": list(run.notes),
    }


def run_episodes(run: RunData, kinds: Mapping[str, Mapping[str, Any]] | None = None) -> list[Episode]:
    """The run's episodes in the order detected: from their records; an episode whose run stopped before it ended
    (a crash: no end record, no record at close) lasts while its kind was counted. Runs written before episodes
    existed: one per kind and layer, from the symptom records."""
    if not run.episodes:
        return _legacy_episodes(run.alerts, kinds if kinds is not None else _symptom_spans(run))
    out = []
    for e in sorted(run.episodes.values(), key=lambda e: (e.detected, e.kind)):
        out.append(_extend_open(run, e.copy()) if e.end is None else e)
    return out


def _extend_open(run: RunData, e: Episode) -> Episode:
    """An open episode's last step (and end, when a count of zero says it) from ``gradwatch/symptoms/<kind>``."""
    for step, count in run.series(_SYMPTOMS + e.kind):
        if step <= e.last:
            continue
        if count <= 0:
            break
        e.last = step
    return e


def episode_json(e: Episode) -> dict[str, Any]:
    """An episode as the report's JSON gives it (numbers rounded to 4 significant digits; NaN as ``"nan"``)."""
    return {
        "kind": e.kind, "severity": e.severity, "where": e.where, "layers": list(e.layers),
        "later": [{"layer": x, "step": s} for x, s in e.later], "onset": e.onset, "detected": e.detected,
        "last": e.last, "end": e.end, "steps": e.steps, "repeats": e.repeats, "peak": _rounded(e.peak),
        "peak_step": e.peak_step, "evidence": e.evidence, "cause": e.cause, "advice": e.advice,
        "origin_note": e.origin_note,
    }


def _rounded(x: float) -> float | str:
    v = json_float(x)
    return float(f"{v:.4g}") if isinstance(v, float) else v


def _symptom_spans(run: RunData) -> dict[str, dict[str, Any]]:
    """Per kind: steps with at least one symptom, the first and last of them, most symptoms at once. From the
    ``gradwatch/symptoms/<kind>`` counts; from the alerts for a kind without counts (or whose counts were cut off)."""
    kinds: dict[str, dict[str, Any]] = {}
    for tag in sorted(t for t in run.scalars if t.startswith(_SYMPTOMS)):
        active = [(s, v) for s, v in run.series(tag) if v > 0]
        kinds[tag[len(_SYMPTOMS):]] = {"steps": len(active), "first_step": active[0][0] if active else None,
                                       "last_step": active[-1][0] if active else None,
                                       "max_layers": int(max((v for _, v in active), default=0))}
    for kind in sorted({a.kind for a in run.alerts} | {e.kind for e in run.episodes.values()}):
        if kinds.get(kind, {}).get("steps", 0) == 0:
            kinds[kind] = _alerted_span(run, kind)
    return kinds


def _alerted_span(run: RunData, kind: str) -> dict[str, Any]:
    """What the alerts of a kind say of its steps, when its counts do not."""
    per_step = Counter(a.step for a in run.alerts if a.kind == kind)
    for e in (e for e in run.episodes.values() if e.kind == kind):
        per_step[e.detected] = max(per_step[e.detected], len(e.layers))
    return {"steps": len(per_step), "first_step": min(per_step), "last_step": max(per_step),
            "max_layers": max(per_step.values())}


def _onset(a: Symptom) -> int:
    """The first step of an alert's episode: a sustained symptom is alerted when it fires, after its patience, and
    its record's ``since`` says when it began; a non-finite gradient is an event of its own step."""
    if a.since is None or a.kind == "nonfinite":
        return a.step
    return min(a.step, a.since)


def _legacy_episodes(alerts: Sequence[Symptom], kinds: Mapping[str, Mapping[str, Any]]) -> list[Episode]:
    """Alerts written before episodes existed: one episode per (kind, layer), lasting while its kind was counted."""
    by_key: dict[tuple[str, str | None], Episode] = {}
    for a in sorted(alerts, key=lambda a: a.step):
        e = by_key.get((a.kind, a.layer))
        if e is None:
            by_key[(a.kind, a.layer)] = Episode(a.kind, a.severity, [a.layer], _onset(a), a.step, a.step, steps=0,
                                                peak=a.value, peak_step=a.step, threshold=a.threshold,
                                                evidence=a.evidence or a.message, cause=a.cause, advice=a.advice,
                                                detail=a.detail, origin=a.origin, origin_note=a.origin_note)
            e = by_key[(a.kind, a.layer)]
        e.onset, e.last, e.steps = min(e.onset, _onset(a)), max(e.last, a.step), e.steps + 1
        if a.severity == "error":
            e.severity = "error"
    for e in by_key.values():  # a sustained symptom is alerted once: it lasted while its kind was counted
        last = kinds.get(e.kind, {}).get("last_step")
        if e.kind != "nonfinite" and last is not None:
            e.last = max(e.last, last)
    return sorted(by_key.values(), key=lambda e: (e.detected, e.kind))


def _trend(series: Sequence[tuple[int, float]]) -> dict[str, Any] | None:
    """The global norm's course: the median of the last tenth of the logged values against the first tenth, the
    peak, and the non-finite values; its ``trend`` in one word: ``went non-finite``, ``exploded`` (the peak or the
    last tenth over 100x the first tenth), ``collapsed`` (the last tenth under 1/100 of the first), ``rising``,
    ``falling`` (2x), ``steady``."""
    if not series:
        return None
    finite = [(s, v) for s, v in series if math.isfinite(v)]
    bad = [s for s, v in series if not math.isfinite(v)]
    out: dict[str, Any] = {"first": series[0][1], "last": series[-1][1], "nonfinite": len(bad),
                           "first_nonfinite_step": bad[0] if bad else None, "trend": "went non-finite"}
    if finite:
        values = [v for _, v in finite]
        k = max(1, len(values) // 10)
        head, tail = statistics.median(values[:k]), statistics.median(values[-k:])
        ratio = tail / head if head > 0 else math.inf if tail > 0 else 1.0
        peak_step, peak = max(finite, key=lambda sv: sv[1])
        out.update(min=min(values), max=peak, peak_step=peak_step, median=statistics.median(values),
                   start=head, end=tail, start_to_end=ratio, trend=_trend_word(head, tail, peak, bool(bad)))
    return {k: _rounded(v) if isinstance(v, float) else v for k, v in out.items()}


def _trend_word(head: float, tail: float, peak: float, nonfinite: bool) -> str:
    if nonfinite:
        return "went non-finite"
    if (head > 0 and (peak > 100 * head or tail > 100 * head)) or (head == 0 < tail):
        return "exploded"
    if tail < head / 100:
        return "collapsed"
    if tail > 2 * head:
        return "rising"
    return "falling" if tail < head / 2 else "steady"


def _clipping(run: RunData) -> dict[str, Any] | None:
    coef = run.series("gradwatch/clip/coef")
    before, after = run.scalars.get("gradwatch/global/grad_norm", {}), run.scalars.get(
        "gradwatch/global/grad_norm_clipped", {})
    if coef:
        acted = sum(1 for _, c in coef if c < 1 - 1e-6)
        total = len(coef)
    elif "gradwatch/clip/threshold" in run.scalars:
        common = [s for s in before if s in after]
        acted = sum(1 for s in common if after[s] < before[s] * (1 - 1e-6))
        total = len(common)
    else:
        return None
    threshold = run.series("gradwatch/clip/threshold")
    return _finite_json({"acted": acted, "of_steps": total, "fraction": acted / total if total else 0.0,
                         "last_threshold": threshold[-1][1] if threshold else None})


def _finite_json(d: dict[str, Any]) -> dict[str, Any]:
    """NaN and Inf as strings, so that ``--json`` output is strict JSON."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def should_fail(reports: Iterable[Mapping[str, Any]], kinds: Sequence[str]) -> list[str]:
    """The ``run: kind`` pairs that ``--fail-on kinds`` fails on (``"any"`` matches every kind).

    Examples:
        >>> runs = [{"name": "a", "symptoms": {"nonfinite": {"steps": 2}, "vanishing": {"steps": 0}}}]
        >>> should_fail(runs, ["nonfinite"])
        ['a: nonfinite']
    """
    hits = []
    for r in reports:
        for kind, entry in r["symptoms"].items():
            if entry["steps"] > 0 and ("any" in kinds or kind in kinds):
                hits.append(f"{r['name']}: {kind}")
    return hits


def flow_data(run: RunData, step: int | None = None) -> dict[str, Any]:
    """What the gradient-flow figure of ``run`` shows at the last logged step at or before ``step`` (default: last).

    Returns:
        ``names`` (depth order), ``rms`` (``grad_norm / sqrt(parameters)``; the L2 norm itself when the layer sizes
        are not in the logs), ``maxabs``, ``flagged`` (layer -> kind holding at that step), ``step``, ``rms_known``.

    Raises:
        NoRunsError: when the run has no per-layer gradient norms (at or before ``step``).
    """
    names = run.layer_names()
    at = _flow_step(run, names, step)
    numel = {layer.name: layer.numel for layer in run.layers}
    rms: list[float | None] = []
    maxabs: list[float | None] = []
    for n in names:
        norm = run.scalars.get(f"gradwatch/grad_norm/{n}", {}).get(at)
        size = numel.get(n)
        rms.append(None if norm is None else norm / math.sqrt(size) if size else norm)
        maxabs.append(run.scalars.get(f"gradwatch/grad_max/{n}", {}).get(at))
    return {"names": names, "rms": rms, "maxabs": maxabs, "flagged": _flagged(run, at), "step": at,
            "rms_known": bool(numel)}


def _flow_step(run: RunData, names: Sequence[str], step: int | None) -> int:
    """The last step at or before ``step`` with a logged per-layer gradient norm."""
    logged = sorted({s for n in names for s in run.scalars.get(f"gradwatch/grad_norm/{n}", {})})
    chosen = [s for s in logged if step is None or s <= step]
    if not chosen:
        where = f" at or before step {step}" if step is not None else ""
        raise NoRunsError(f"Run {run.name!r} has no per-layer gradient norms (gradwatch/grad_norm/*){where}.")
    return chosen[-1]


def _flagged(run: RunData, at: int) -> dict[str, str]:
    """Layer -> kind of the episodes that hold at step ``at`` (from detection to their last step; a layer that joined
    later from its step on); for runs written before episodes existed, the alerts (a non-finite one only at its step).
    """
    if not run.episodes:
        return _flagged_alerts(run, at)
    flagged: dict[str, str] = {}
    for e in run_episodes(run):
        if not e.detected <= at <= e.last:
            continue
        for layer in [*e.layers, *(x for x, s in e.later if s <= at)]:
            if layer is not None and (layer not in flagged or e.kind == "nonfinite"):
                flagged[layer] = e.kind
    return flagged


def _flagged_alerts(run: RunData, at: int) -> dict[str, str]:
    flagged: dict[str, str] = {}
    for a in run.alerts:
        if a.layer is None or a.step > at:
            continue
        if a.kind == "nonfinite":
            if a.step == at:
                flagged[a.layer] = a.kind
        elif _holds(run, a, at):
            flagged.setdefault(a.layer, a.kind)
    return flagged


def _holds(run: RunData, a: Symptom, at: int) -> bool:
    """Whether the episode of ``a`` has not ended by step ``at``: its kind was counted at every logged step since."""
    counts = [(s, v) for s, v in run.series(_SYMPTOMS + a.kind) if a.step <= s <= at]
    return bool(counts) and counts[-1][1] > 0 and all(v > 0 for _, v in counts)


# ---------------------------------------------------------------------------------------------------- rendering
def episodes_of(r: Mapping[str, Any]) -> list[Episode]:
    """The episodes of a ``diagnose()`` report, back as ``Episode`` objects (for the table)."""
    out = []
    for j in r["episodes"]:
        e = Episode(j["kind"], j["severity"], list(j["layers"]), j["onset"], j["detected"], j["last"], end=j["end"],
                    steps=j["steps"], peak=float(j["peak"]), peak_step=j["peak_step"], evidence=j["evidence"],
                    cause=j["cause"], advice=j["advice"], origin_note=j["origin_note"],
                    later=[(x["layer"], x["step"]) for x in j["later"]], repeats=j["repeats"])
        out.append(e)
    return out


def _norm_line(g: Mapping[str, Any]) -> str:
    """The global norm's course in one honest line."""
    if "median" not in g:
        return f"global grad norm: every logged value is non-finite ({g['nonfinite']})"
    course = (f"from {fmt_number(g['start'])} to {fmt_number(g['end'])} (median of the first and the last tenth of "
              f"the logged steps); peak {fmt_number(g['max'])} at step {g['peak_step']}")
    if g["trend"] == "went non-finite":
        return (f"global grad norm: went non-finite at step {g['first_nonfinite_step']} ({g['nonfinite']} of the "
                f"logged values); the finite ones went {course}")
    return f"global grad norm: {g['trend']}, {course}"


def summary_lines(r: Mapping[str, Any]) -> list[str]:
    lines = []
    g = r["global_norm"]
    if g is not None:
        lines.append(_norm_line(g))
    c = r["clipping"]
    if c is not None:
        lines.append(f"clipping: acted on {c['acted']} of {c['of_steps']} logged steps ({100 * c['fraction']:.0f}%)"
                     + (f", threshold {fmt_number(c['last_threshold'])}" if isinstance(c["last_threshold"], float)
                        else ""))
    elif r["logged_steps"]:
        lines.append("clipping: none")
    if r["starved_layers"]:
        lines.append(f"starved layers (vanishing gradients): {', '.join(r['starved_layers'])}")
    for kind, text in r["advice"].items():
        lines.append(f"advice ({kind}): {text}")
    lines += [f"note: {n}" for n in r["notes"]]
    return lines


def run_header(r: Mapping[str, Any]) -> str:
    steps = f"steps {r['steps'][0]}-{r['steps'][1]}" if r["steps"] else "no steps"
    return f"run {r['name']} ({steps}, {r['logged_steps']} logged)"


def verdict(r: Mapping[str, Any]) -> str:
    if not r["gradwatch"]:
        return "no gradwatch tags in this run (was it written by gradwatch.watch or GradWatchCallback?)"
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for e in r["episodes"]:
        by_kind.setdefault(e["kind"], []).append(e)
    for kind, v in r["symptoms"].items():  # a kind counted but never alerted (alerts cut off)
        if v["steps"] > 0 and kind not in by_kind:
            by_kind[kind] = [{"onset": v["first_step"]}]
    if not by_kind:
        return "no symptoms: the gradient reached every watched layer and stayed finite."
    parts = []
    for kind, group in by_kind.items():
        counted = r["symptoms"].get(kind, {}).get("steps", 0)
        parts.append(f"{kind} since step {min(e['onset'] for e in group)} ({plural(len(group), 'episode')}"
                     + (f", on {plural(counted, 'step')})" if counted else ")"))
    return "symptoms: " + ", ".join(parts)


def format_text(reports: Sequence[Mapping[str, Any]]) -> str:
    """The report as plain text (the fallback without ``rich``).

    Examples:
        >>> print(format_text([diagnose(RunData("r", "/tmp/r"))]))
        run r (no steps, 0 logged)
          no gradwatch tags in this run (was it written by gradwatch.watch or GradWatchCallback?)
    """
    out = []
    for r in reports:
        out.append(run_header(r))
        out.append("  " + verdict(r))
        if r["episodes"]:
            out += episode_table(episodes_of(r))
        out += ["  " + line for line in summary_lines(r)]
        out.append("")
    return "\n".join(out).rstrip()


def print_rich(reports: Sequence[Mapping[str, Any]], file: Any = None) -> None:
    """The report as rich tables (``pip install rich``; from a gradwatch clone ``pip install '.[report]'``)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False, soft_wrap=False)
    colors = {"nonfinite": "bold red", "exploding": "red", "vanishing": "yellow"}
    for r in reports:
        console.rule(f"[bold]{run_header(r)}")
        console.print(verdict(r), markup=False)
        if r["episodes"]:
            table = Table(show_header=True, header_style="bold")
            for col in COLUMNS:
                table.add_column(col, justify="right" if col in ("since", "detected", "last", "steps") else "left")
            for e in episodes_of(r):
                row = e.row()
                table.add_row(f"[{colors.get(e.kind, 'white')}]{row['kind']}[/]",
                              *(row[c] for c in COLUMNS[1:]))
                if e.later:
                    table.add_row("", f"later: {group_layers([x for x, _ in e.later])} from step {e.later[0][1]}",
                                  *([""] * (len(COLUMNS) - 2)))
            console.print(table)
        for line in summary_lines(r):
            console.print(line, markup=False)
        console.print()
