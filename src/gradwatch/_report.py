"""``gradwatch report``: the diagnosis of finished (or crashed) runs, read back from their TensorBoard event files.

Reading (:func:`find_runs`, :func:`load_run`) and diagnosing (:func:`diagnose`, a pure function of the loaded run)
are separate; rendering is plain text (:func:`format_text`) or a rich table when ``rich`` is installed
(``gradwatch[report]``). Event files are read record by record with TensorBoard's own loader, which stops at the last
complete record: a file cut mid-record by a crash still yields everything written before the cut.

Where the numbers come from: symptom counts per step from ``gradwatch/symptoms/<kind>``; which layers, when and why
from the alert lines under ``gradwatch/alerts`` (written by :func:`gradwatch._sinks.alerts_markdown`); the depth order
and layer sizes from ``gradwatch/layers``; the global norm and clipping from ``gradwatch/global/*`` and
``gradwatch/clip/*``.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._dashboard import LAYERS_TAG, LayerInfo, parse_layers_markdown
from ._sinks import ALERTS_TAG

__all__ = [
    "Alert",
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


@dataclass(frozen=True)
class Alert:
    """One line of ``gradwatch/alerts``."""

    kind: str
    severity: str
    layer: str | None
    step: int
    message: str


@dataclass
class RunData:
    """What one run's event files hold that the report needs."""

    name: str
    path: str
    scalars: dict[str, dict[int, float]] = field(default_factory=dict)  # tag -> step -> value
    alerts: list[Alert] = field(default_factory=list)
    layers: list[LayerInfo] = field(default_factory=list)  # depth order, from gradwatch/layers
    tag_order: list[str] = field(default_factory=list)  # scalar tags in the order first written
    notes: list[str] = field(default_factory=list)  # truncated files and the like

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


_ALERT = re.compile(r"^- \*\*(?P<kind>[^*]+)\*\* \((?P<severity>[^)]*)\) at (?:`(?P<layer>[^`]*)`|model), "
                    r"step (?P<step>\d+): (?P<message>.*)$")


def parse_alerts(text: str) -> list[Alert]:
    """The alerts of one ``gradwatch/alerts`` text (the lines :func:`gradwatch._sinks.alerts_markdown` writes).

    Examples:
        >>> parse_alerts("- **vanishing** (warning) at `hidden.0`, step 12: Vanishing gradients.")
        [Alert(kind='vanishing', severity='warning', layer='hidden.0', step=12, message='Vanishing gradients.')]
    """
    out = []
    for line in text.splitlines():
        m = _ALERT.match(line.strip())
        if m:
            out.append(Alert(m["kind"], m["severity"], m["layer"], int(m["step"]), m["message"]))
    return out


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
        raise NoRunsError(f"No TensorBoard event files (events.out.tfevents.*) under {root!r}. Point gradwatch report at "
                          "the log_dir given to gradwatch.watch(), or the Lightning logger's save_dir.")
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
        except Exception as exc:  # noqa: BLE001 - a damaged file must not hide the others
            run.notes.append(f"{fname}: stopped reading at a damaged record ({exc.__class__.__name__}: {exc}).")
    return run


def _take_summary(run: RunData, summary: Any, step: int, seen: set[str]) -> None:
    for value in summary.value:
        tag = value.tag
        kind = value.WhichOneof("value")
        if kind == "simple_value":
            _scalar(run, tag, step, float(value.simple_value), seen)
        elif kind == "tensor":
            plugin = value.metadata.plugin_data.plugin_name
            if tag == ALERTS_TAG or tag == LAYERS_TAG or plugin == "text":
                text = b"\n".join(value.tensor.string_val).decode("utf-8", "replace")
                if tag == ALERTS_TAG or tag.startswith(ALERTS_TAG + "/"):
                    run.alerts.extend(parse_alerts(text))
                elif tag == LAYERS_TAG or tag.startswith(LAYERS_TAG + "/"):
                    run.layers = parse_layers_markdown(text) or run.layers
            elif plugin == "scalars" and (value.tensor.float_val or value.tensor.double_val):
                vals = list(value.tensor.float_val) or list(value.tensor.double_val)
                _scalar(run, tag, step, float(vals[0]), seen)


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
def diagnose(run: RunData) -> dict[str, Any]:
    """The report of one run, as JSON-ready data (what ``--json`` prints for each run).

    Keys: ``name``, ``path``, ``gradwatch`` (whether any gradwatch tag was found), ``steps`` (first and last),
    ``logged_steps``, ``symptoms`` (per kind: steps with at least one, first and last such step, most layers at once),
    ``layers`` (per kind and layer: alerts, severity, first and last step, first message), ``starved_layers`` (the
    vanishing ones, in depth order), ``global_norm`` (first, last, min, max, median, trend, non-finite count),
    ``clipping``, ``advice`` (per kind), ``notes``.

    Examples:
        >>> run = RunData("r", "/tmp/r", scalars={"gradwatch/global/grad_norm": {0: 4.0, 10: 1.0}})
        >>> diagnose(run)["global_norm"]["trend"]
        'falling'
    """
    order = {name: i for i, name in enumerate(run.layer_names())}
    kinds: dict[str, dict[str, Any]] = {}
    for tag in sorted(t for t in run.scalars if t.startswith(_SYMPTOMS)):
        active = [(s, v) for s, v in run.series(tag) if v > 0]
        kind = tag[len(_SYMPTOMS):]
        kinds[kind] = {"steps": len(active), "first_step": active[0][0] if active else None,
                       "last_step": active[-1][0] if active else None,
                       "max_layers": int(max((v for _, v in active), default=0))}
    for kind in sorted({a.kind for a in run.alerts}):
        if kinds.get(kind, {}).get("steps", 0) == 0:  # no count tag for this kind, or the counts were cut off
            per_step: dict[int, int] = {}
            for a in run.alerts:
                if a.kind == kind:
                    per_step[a.step] = per_step.get(a.step, 0) + 1
            kinds[kind] = {"steps": len(per_step), "first_step": min(per_step), "last_step": max(per_step),
                           "max_layers": max(per_step.values())}
    layers: dict[tuple[str, str | None], dict[str, Any]] = {}
    advice: dict[str, str] = {}
    for a in sorted(run.alerts, key=lambda a: a.step):
        key = (a.kind, a.layer)
        since = _SINCE.search(a.message)  # a sustained symptom is alerted when it fires, after its patience
        start = min(a.step, int(since.group(1))) if since else a.step
        entry = layers.get(key)
        if entry is None:
            entry = layers[key] = {"kind": a.kind, "layer": a.layer, "severity": a.severity, "alerts": 0,
                                   "first_step": start, "last_step": a.step, "message": a.message}
        entry["first_step"] = min(entry["first_step"], start)
        entry["alerts"] += 1
        entry["last_step"] = max(entry["last_step"], a.step)
        if a.severity == "error":
            entry["severity"] = "error"
        cause = a.message.find("Likely cause:")
        if cause >= 0 and a.kind not in advice:
            advice[a.kind] = a.message[cause:]
    for entry in layers.values():  # a sustained symptom is alerted once: it lasted while its kind was counted
        span = kinds.get(entry["kind"], {})
        if entry["kind"] != "nonfinite" and span.get("last_step") is not None:
            entry["last_step"] = max(entry["last_step"], span["last_step"])
    by_layer = sorted(layers.values(), key=lambda e: (e["kind"], order.get(e["layer"], len(order)), e["first_step"]))
    starved = [e["layer"] for e in by_layer if e["kind"] == "vanishing" and e["layer"] is not None]
    steps = sorted({s for t, vals in run.scalars.items() if t.startswith("gradwatch/") for s in vals})
    return {
        "name": run.name,
        "path": run.path,
        "gradwatch": run.has_gradwatch,
        "steps": [steps[0], steps[-1]] if steps else None,
        "logged_steps": len(run.scalars.get("gradwatch/global/grad_norm", {})),
        "symptoms": kinds,
        "layers": by_layer,
        "starved_layers": starved,
        "global_norm": _trend(run.series("gradwatch/global/grad_norm")),
        "clipping": _clipping(run),
        "advice": advice,
        "notes": list(run.notes),
    }


_SINCE = re.compile(r"\bsince step (\d+)")


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
        >>> should_fail([{"name": "a", "symptoms": {"nonfinite": {"steps": 2}, "vanishing": {"steps": 0}}}], ["nonfinite"])
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
    logged = sorted({s for n in names for s in run.scalars.get(f"gradwatch/grad_norm/{n}", {})})
    chosen = [s for s in logged if step is None or s <= step]
    if not chosen:
        where = f" at or before step {step}" if step is not None else ""
        raise NoRunsError(f"Run {run.name!r} has no per-layer gradient norms (gradwatch/grad_norm/*){where}.")
    at = chosen[-1]
    numel = {layer.name: layer.numel for layer in run.layers}
    rms: list[float | None] = []
    maxabs: list[float | None] = []
    for n in names:
        norm = run.scalars.get(f"gradwatch/grad_norm/{n}", {}).get(at)
        size = numel.get(n)
        rms.append(None if norm is None else norm / math.sqrt(size) if size else norm)
        maxabs.append(run.scalars.get(f"gradwatch/grad_max/{n}", {}).get(at))
    flagged: dict[str, str] = {}
    for a in run.alerts:
        if a.layer is None or a.step > at:
            continue
        if a.kind == "nonfinite":
            if a.step == at:
                flagged[a.layer] = a.kind
            continue
        counts = [(s, v) for s, v in run.series(_SYMPTOMS + a.kind) if a.step <= s <= at]
        if counts and counts[-1][1] > 0 and all(v > 0 for _, v in counts):  # the episode has not ended by `at`
            flagged.setdefault(a.layer, a.kind)
    return {"names": names, "rms": rms, "maxabs": maxabs, "flagged": flagged, "step": at,
            "rms_known": bool(numel)}


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
                out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
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
