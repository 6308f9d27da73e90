"""``gradwatch report``: the diagnosis of finished (or crashed) runs, read back from their TensorBoard event files.

Reading (:func:`find_runs`, :func:`load_run`) and diagnosing (:func:`diagnose`, a pure function of the loaded run)
are separate; rendering is plain text (:func:`format_text`) or a rich table when ``rich`` is installed
(``gradwatch[report]``). Event files are read record by record with TensorBoard's own loader, which stops at the last
complete record: a file cut mid-record by a crash still yields everything written before the cut.

Where the numbers come from: symptom counts per step from ``gradwatch/symptoms/<kind>``; which layers, when and why
from the alert records under ``gradwatch/alerts`` (the JSON that :func:`gradwatch._sinks.alerts_markdown` writes beside
the markdown, read by :func:`gradwatch._sinks.read_records`: the fields of each symptom, never its message's words);
the depth order and layer sizes from ``gradwatch/layers``; the global norm and clipping from ``gradwatch/global/*`` and
``gradwatch/clip/*``.
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
from ._sinks import ALERTS_TAG, read_records
from ._symptoms import Symptom

__all__ = [
    "NoRunsError",
    "RunData",
    "diagnose",
    "find_runs",
    "flow_data",
    "format_text",
    "load_run",
    "parse_alerts",
    "print_rich",
    "should_fail",
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
    alerts: list[Symptom] = field(default_factory=list)  # the symptoms of the gradwatch/alerts records
    layers: list[LayerInfo] = field(default_factory=list)  # depth order, from gradwatch/layers
    tag_order: list[str] = field(default_factory=list)  # scalar tags in the order first written
    notes: list[str] = field(default_factory=list)  # truncated files and the like
    legacy_alerts: int = 0  # alerts read from text written before records existed (no onset, cause or advice)

    def series(self, tag: str) -> list[tuple[int, float]]:
        return sorted(self.scalars.get(tag, {}).items())

    @property
    def has_gradwatch(self) -> bool:
        return bool(self.alerts or self.layers or any(t.startswith("gradwatch/") for t in self.scalars))

    def layer_names(self) -> list[str]:
        """Layers in depth order: from the layers table, else in the order their grad_norm tags were first written."""
        if self.layers:
            return [layer.name for layer in self.layers]
        prefix = "gradwatch/grad_norm/"
        return [t[len(prefix):] for t in self.tag_order if t.startswith(prefix)]


def parse_alerts(text: str) -> list[Symptom]:
    """The alerts of one ``gradwatch/alerts`` text: the symptoms of its records (:func:`gradwatch._sinks.read_records`).

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
            run.alerts.extend(_from_records(records))
        else:
            legacy = _legacy_alerts(text)
            run.legacy_alerts += len(legacy)
            run.alerts.extend(legacy)
    elif tag == LAYERS_TAG or tag.startswith(LAYERS_TAG + "/"):
        run.layers = parse_layers_markdown(text) or run.layers


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
    ``layers`` (per kind and layer: alerts, severity, first and last step, first message), ``starved_layers`` (the
    vanishing ones, in depth order), ``global_norm`` (first, last, min, max, median, trend, non-finite count),
    ``clipping``, ``advice`` (per kind), ``notes``.

    Everything about an alert comes from its record's fields (:meth:`Symptom.to_record`): the onset from ``since``,
    the advice from ``cause``, ``advice`` and ``origin_note``; never from the message's words.

    Examples:
        >>> run = RunData("r", "/tmp/r", scalars={"gradwatch/global/grad_norm": {0: 4.0, 10: 1.0}})
        >>> diagnose(run)["global_norm"]["trend"]
        'falling'
    """
    kinds = _symptom_spans(run)
    order = {name: i for i, name in enumerate(run.layer_names())}
    by_layer = sorted(_layer_entries(run.alerts, kinds).values(),
                      key=lambda e: (e["kind"], order.get(e["layer"], len(order)), e["first_step"]))
    steps = sorted({s for t, vals in run.scalars.items() if t.startswith("gradwatch/") for s in vals})
    return {
        "name": run.name,
        "path": run.path,
        "gradwatch": run.has_gradwatch,
        "steps": [steps[0], steps[-1]] if steps else None,
        "logged_steps": len(run.scalars.get("gradwatch/global/grad_norm", {})),
        "symptoms": kinds,
        "layers": by_layer,
        "starved_layers": [e["layer"] for e in by_layer if e["kind"] == "vanishing" and e["layer"] is not None],
        "global_norm": _trend(run.series("gradwatch/global/grad_norm")),
        "clipping": _clipping(run),
        "advice": _advice(run.alerts),
        "notes": list(run.notes),
    }


def _symptom_spans(run: RunData) -> dict[str, dict[str, Any]]:
    """Per kind: steps with at least one symptom, the first and last of them, most symptoms at once. From the
    ``gradwatch/symptoms/<kind>`` counts; from the alerts for a kind without counts (or whose counts were cut off)."""
    kinds: dict[str, dict[str, Any]] = {}
    for tag in sorted(t for t in run.scalars if t.startswith(_SYMPTOMS)):
        active = [(s, v) for s, v in run.series(tag) if v > 0]
        kinds[tag[len(_SYMPTOMS):]] = {"steps": len(active), "first_step": active[0][0] if active else None,
                                       "last_step": active[-1][0] if active else None,
                                       "max_layers": int(max((v for _, v in active), default=0))}
    for kind in sorted({a.kind for a in run.alerts}):
        if kinds.get(kind, {}).get("steps", 0) == 0:
            per_step = Counter(a.step for a in run.alerts if a.kind == kind)
            kinds[kind] = {"steps": len(per_step), "first_step": min(per_step), "last_step": max(per_step),
                           "max_layers": max(per_step.values())}
    return kinds


def _onset(a: Symptom) -> int:
    """The first step of an alert's episode: a sustained symptom is alerted when it fires, after its patience, and
    its record's ``since`` says when it began; a non-finite gradient is an event of its own step."""
    if a.since is None or a.kind == "nonfinite":
        return a.step
    return min(a.step, a.since)


def _layer_entries(alerts: Sequence[Symptom], kinds: Mapping[str, Mapping[str, Any]]
                   ) -> dict[tuple[str, str | None], dict[str, Any]]:
    """One entry per (kind, layer): alerts, the worst severity, first and last step, the first message."""
    layers: dict[tuple[str, str | None], dict[str, Any]] = {}
    for a in sorted(alerts, key=lambda a: a.step):
        start = _onset(a)
        entry = layers.setdefault((a.kind, a.layer), {
            "kind": a.kind, "layer": a.layer, "severity": a.severity, "alerts": 0, "first_step": start,
            "last_step": a.step, "message": a.message})
        entry["first_step"] = min(entry["first_step"], start)
        entry["alerts"] += 1
        entry["last_step"] = max(entry["last_step"], a.step)
        if a.severity == "error":
            entry["severity"] = "error"
    for entry in layers.values():  # a sustained symptom is alerted once: it lasted while its kind was counted
        last = kinds.get(entry["kind"], {}).get("last_step")
        if entry["kind"] != "nonfinite" and last is not None:
            entry["last_step"] = max(entry["last_step"], last)
    return layers


def _advice(alerts: Sequence[Symptom]) -> dict[str, str]:
    """Per kind, the first alert's likely cause and what to try (with where a non-finite value first appeared)."""
    advice: dict[str, str] = {}
    for a in sorted(alerts, key=lambda a: a.step):
        if a.remedy is not None and a.kind not in advice and a.kind not in _NO_ADVICE_LINE:
            advice[a.kind] = " ".join(p for p in (a.remedy, a.origin_note) if p)
    return advice


def _trend(series: Sequence[tuple[int, float]]) -> dict[str, Any] | None:
    if not series:
        return None
    finite = [v for _, v in series if math.isfinite(v)]
    out: dict[str, Any] = {"first": series[0][1], "last": series[-1][1], "nonfinite": len(series) - len(finite)}
    if finite:
        k = max(1, len(finite) // 10)
        head, tail = statistics.median(finite[:k]), statistics.median(finite[-k:])
        ratio = tail / head if head > 0 else math.inf if tail > 0 else 1.0
        out.update(min=min(finite), max=max(finite), median=statistics.median(finite), start_to_end=ratio,
                   trend="rising" if ratio > 2 else "falling" if ratio < 0.5 else "steady")
    return _finite_json(out)


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
    """Layer -> kind of the alerts whose episode still holds at step ``at`` (a non-finite one only at its step)."""
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
def _span(first: int | None, last: int | None) -> str:
    if first is None:
        return "-"
    return f"step {first}" if first == last else f"steps {first}-{last}"


def _summary_lines(r: Mapping[str, Any]) -> list[str]:
    lines = []
    g = r["global_norm"]
    if g is not None:
        if "median" in g:
            lines.append(f"global grad norm: {g['trend']} (x{g['start_to_end']:.3g} from the first to the last tenth "
                         f"of the logged steps; median {g['median']:.3g}, range {g['min']:.3g}-{g['max']:.3g}"
                         + (f"; {g['nonfinite']} non-finite" if g["nonfinite"] else "") + ")")
        else:
            lines.append(f"global grad norm: every logged value is non-finite ({g['nonfinite']})")
    c = r["clipping"]
    if c is not None:
        lines.append(f"clipping: acted on {c['acted']} of {c['of_steps']} logged steps ({100 * c['fraction']:.0f}%)"
                     + (f", threshold {c['last_threshold']:.3g}" if isinstance(c["last_threshold"], float) else ""))
    elif r["logged_steps"]:
        lines.append("clipping: none")
    if r["starved_layers"]:
        lines.append(f"starved layers (vanishing gradients): {', '.join(r['starved_layers'])}")
    for kind, text in r["advice"].items():
        lines.append(f"advice ({kind}): {text}")
    lines += [f"note: {n}" for n in r["notes"]]
    return lines


def _header(r: Mapping[str, Any]) -> str:
    steps = f"steps {r['steps'][0]}-{r['steps'][1]}" if r["steps"] else "no steps"
    return f"run {r['name']} ({steps}, {r['logged_steps']} logged)"


def _verdict(r: Mapping[str, Any]) -> str:
    if not r["gradwatch"]:
        return "no gradwatch tags in this run (was it written by gradwatch.watch or GradWatchCallback?)"
    active = {k: v for k, v in r["symptoms"].items() if v["steps"] > 0}
    if not active:
        return "no symptoms: the gradient reached every watched layer and stayed finite."
    return "symptoms: " + ", ".join(f"{k} on {v['steps']} step(s), {_span(v['first_step'], v['last_step'])}"
                                     for k, v in active.items())


def format_text(reports: Sequence[Mapping[str, Any]]) -> str:
    """The report as plain text (the fallback without ``rich``).

    Examples:
        >>> print(format_text([diagnose(RunData("r", "/tmp/r"))]))
        run r (no steps, 0 logged)
          no gradwatch tags in this run (was it written by gradwatch.watch or GradWatchCallback?)
    """
    out = []
    for r in reports:
        out.append(_header(r))
        out.append("  " + _verdict(r))
        if r["layers"]:
            rows = [(e["kind"], e["layer"] or "(model)", e["severity"], str(e["alerts"]),
                     _span(e["first_step"], e["last_step"])) for e in r["layers"]]
            head = ("kind", "layer", "severity", "alerts", "steps")
            widths = [max(len(x[i]) for x in [head, *rows]) for i in range(5)]
            for row in [head, *rows]:
                out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        out += ["  " + line for line in _summary_lines(r)]
        out.append("")
    return "\n".join(out).rstrip()


def print_rich(reports: Sequence[Mapping[str, Any]], file: Any = None) -> None:
    """The report as rich tables (``pip install 'gradwatch[report]'``)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False, soft_wrap=False)
    colors = {"nonfinite": "bold red", "exploding": "red", "vanishing": "yellow"}
    for r in reports:
        console.rule(f"[bold]{_header(r)}")
        console.print(_verdict(r), markup=False)
        if r["layers"]:
            table = Table(show_header=True, header_style="bold")
            for col in ("kind", "layer", "severity", "alerts", "steps"):
                table.add_column(col, justify="right" if col == "alerts" else "left")
            for e in r["layers"]:
                table.add_row(f"[{colors.get(e['kind'], 'white')}]{e['kind']}[/]", e["layer"] or "(model)",
                              e["severity"], str(e["alerts"]), _span(e["first_step"], e["last_step"]))
            console.print(table)
        for line in _summary_lines(r):
            console.print(line, markup=False)
        console.print()
