"""What gradwatch shows in a notebook: the summary and the report as HTML tables, the gradient-flow figure inline.

``Watcher.summary()`` returns a ``Summary``: the same text as before (a ``str``), which Jupyter shows as a table
through ``_repr_html_``. ``report(log_dir)`` is ``gradwatch report`` for Python: a ``Report`` that prints as the
command's text, shows as tables, and gives the command's JSON. ``flow_figure_of()`` draws ``Watcher.plot()``'s figure.
Every text that comes from the user's model or run (layer names, run names, paths) is escaped.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ._episodes import COLUMNS, Episode, advice_lines, group_layers
from ._errors import GradWatchError
from ._flowplot import flow_figure
from ._history import ClipTally, SymptomHistory
from ._report import diagnose_runs, episodes_of, format_text, run_header, select_runs, summary_lines, verdict

__all__ = ["Report", "Summary", "episodes_html", "flow_figure_of", "report", "summary_of"]

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:0.9em"
_CELL = "border:1px solid #ccc;padding:2px 6px;text-align:{}"
_KIND_COLORS = {"nonfinite": "#b00020", "exploding": "#d62728", "vanishing": "#1f5fa8"}
_RIGHT = ("since", "detected", "last", "ended", "steps", "peak")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def episodes_html(episodes: Sequence[Episode], advice: Mapping[str, str] | None = None) -> str:
    """The episodes as an HTML table (``COLUMNS``, as in the text summary), then the advice per kind.

    Examples:
        >>> from gradwatch import Symptom
        >>> e = Episode.begin(4, [Symptom("nonfinite", "fc<1>", 4, float("nan"), 0.0, "error", "...", since=4)])
        >>> table = episodes_html([e])
        >>> "<td" in table and "fc&lt;1&gt;" in table and "fc<1>" not in table
        True
    """
    head = "".join(f'<th style="{_CELL.format("left")}">{_e(c)}</th>' for c in COLUMNS)
    rows = []
    for ep in episodes:
        row = ep.row()
        color = _KIND_COLORS.get(ep.kind, "inherit")
        cells = [f'<td style="{_CELL.format("left")};color:{color};font-weight:bold">{_e(row["kind"])}</td>']
        cells += [f'<td style="{_CELL.format("right" if c in _RIGHT else "left")}">{_e(row[c])}</td>'
                  for c in COLUMNS[1:]]
        rows.append(f"<tr>{''.join(cells)}</tr>")
        if ep.later:
            rows.append(f'<tr><td></td><td colspan="{len(COLUMNS) - 1}" style="{_CELL.format("left")}">later: '
                        f"{_e(group_layers([x for x, _ in ep.later]))} from step {_e(ep.later[0][1])}</td></tr>")
    out = f'<table style="{_STYLE}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    items = "".join(f"<li><b>{_e(kind)}</b>: {_e(text)}</li>" for kind, text in (advice or {}).items())
    return out + (f"<ul>{items}</ul>" if items else "")


class Summary(str):
    """What ``Watcher.summary()`` returns: its text (a ``str``: print it, compare it, search it), shown in a notebook
    as a table of the symptom episodes, the advice and the clipping line.

    Attributes:
        episodes: the symptom episodes, in the order of the table.
        clipping: the clipper's line (how often it acted), or ``None`` without a clipper.

    Examples:
        >>> s = Summary("gradwatch: no symptoms.")
        >>> s == "gradwatch: no symptoms." and isinstance(s, str)
        True
        >>> s._repr_html_()
        '<p><b>gradwatch</b>: no symptoms.</p>'
    """

    episodes: tuple[Episode, ...]
    clipping: str | None

    def __new__(cls, text: str, episodes: Sequence[Episode] = (), clipping: str | None = None) -> Summary:
        self = super().__new__(cls, text)
        self.episodes = tuple(episodes)
        self.clipping = clipping
        return self

    def _repr_html_(self) -> str:
        clip = f"<p>{_e(self.clipping)}</p>" if self.clipping else ""
        if not self.episodes:
            return "<p><b>gradwatch</b>: no symptoms.</p>" + clip
        n = len(self.episodes)
        title = f"<p><b>gradwatch</b>: {n} symptom episode{'s' if n != 1 else ''}</p>"
        return title + episodes_html(self.episodes, advice_lines(list(self.episodes))) + clip


def summary_of(history: SymptomHistory, clip_tally: ClipTally | None) -> Summary:
    """``Watcher.summary()``: the history's table, and the clipper's line when it has seen a step.

    Examples:
        >>> print(summary_of(SymptomHistory(), None))
        gradwatch: no symptoms.
    """
    text = history.format()
    clipping = str(clip_tally) if clip_tally is not None and clip_tally.steps else None
    return Summary(text + f"\n{clipping}" if clipping else text, history.episodes(), clipping)


class Report:
    """The diagnosis of logged runs, as ``gradwatch report`` gives it: ``print()`` it for the command's text; in a
    notebook it shows as tables; ``to_json()`` is the command's ``--json`` output.

    Attributes:
        log_dir: the directory read.
        runs: one report per run (a dict: ``name``, ``path``, ``steps``, ``episodes``, ``global_norm``, ``advice``...,
            as ``gradwatch report --json`` prints it).

    Examples:
        >>> r = Report("runs", [])
        >>> print(r), r.to_json()
        <BLANKLINE>
        (None, '{"logdir": "runs", "runs": []}')
    """

    def __init__(self, log_dir: str, runs: Sequence[dict[str, Any]]) -> None:
        self.log_dir = log_dir
        self.runs = list(runs)

    def __str__(self) -> str:
        return format_text(self.runs)

    def __repr__(self) -> str:
        return str(self)

    def to_json(self, **dumps: Any) -> str:
        """The report as JSON (``json.dumps`` options such as ``indent=2`` pass through)."""
        return json.dumps({"logdir": self.log_dir, "runs": self.runs}, **dumps)

    def _repr_html_(self) -> str:
        return "".join(_run_html(r) for r in self.runs) or f"<p>No runs under {_e(self.log_dir)}.</p>"


def _run_html(r: Mapping[str, Any]) -> str:
    episodes = episodes_of(r)
    items = "".join(f"<li>{_e(line)}</li>" for line in summary_lines(r))
    return (f'<h4 style="margin-bottom:0.2em">{_e(run_header(r))}</h4><p>{_e(verdict(r))}</p>'
            + (episodes_html(episodes) if episodes else "") + (f"<ul>{items}</ul>" if items else ""))


def report(log_dir: str | os.PathLike[str], run: str | None = None) -> Report:
    """Diagnose the runs logged under ``log_dir`` (TensorBoard event files written by gradwatch), as
    ``gradwatch report`` does: each run's symptom episodes, the course of the global gradient norm, clipping and
    advice. In a notebook the result shows as tables.

    Args:
        log_dir: a run's directory, or a directory of runs (``runs/``, ``lightning_logs/``).
        run: the name of one run under ``log_dir`` (as the report lists them); default: every run with gradwatch
            data.

    Returns:
        A ``Report``: ``print()`` it, show it in a notebook, or read ``report.runs`` / ``report.to_json()``.

    Raises:
        GradWatchError: when there is no event file under ``log_dir``, or no run named ``run``.

    Examples:
        >>> import tempfile, torch, gradwatch
        >>> from gradwatch import report
        >>> log_dir = tempfile.mkdtemp()
        >>> model = torch.nn.Linear(3, 1)
        >>> with gradwatch.watch(model, log_dir=log_dir) as watcher:
        ...     model(torch.ones(2, 3)).sum().backward()
        ...     _ = watcher.step()
        >>> r = report(log_dir)
        >>> r.runs[0]["steps"], r.runs[0]["episodes"]
        ([0, 0], [])
    """
    from ._report import NoRunsError

    try:
        runs = select_runs(log_dir, run)
    except NoRunsError as exc:
        raise GradWatchError(str(exc)) from None
    return Report(os.fspath(log_dir), diagnose_runs(runs, chosen=run is not None))


def flow_figure_of(stats: Any, symptoms: Sequence[Any], episodes: Sequence[Episode]) -> Any:
    """``Watcher.plot()``'s figure from a step's host statistics: each layer's RMS and max ``|grad|``, the layers of
    the step's symptoms and of the episodes still open marked by kind.

    Raises:
        GradWatchError: before any step has logged (there is nothing to draw yet).
    """
    if stats is None:
        raise GradWatchError("Nothing to plot yet: plot() draws the last logged step; call it after a step() that "
                             "logged (every step while the run is young, then every_n_steps).")
    bars = [_layer_bars(stats, i) for i in range(len(stats.names))]
    return flow_figure(list(stats.names), [rms for rms, _ in bars], [top for _, top in bars],
                       flagged=_flagged(symptoms, episodes), step=int(stats.step))


def _layer_bars(stats: Any, i: int) -> tuple[float | None, float | None]:
    """Layer ``i``'s RMS gradient entry and max ``|grad|`` (``None``: no gradient, or the max not measured)."""
    size = int(stats.numel[i])
    if not bool(stats.has_grad[i]) or size <= 0:
        return None, None
    top = float(stats.grad_max[i])
    measured = not math.isnan(top) or getattr(stats, "measured_max", True)  # NaN on a step that skipped it
    return float(stats.grad_norm[i]) / math.sqrt(size), top if measured else None


def _flagged(symptoms: Sequence[Any], episodes: Sequence[Episode]) -> dict[str, str]:
    """Layer -> kind to mark: the open episodes' layers, then the step's symptoms (non-finite wins)."""
    flagged: dict[str, str] = {}
    open_layers = [(layer, e.kind) for e in episodes if e.end is None for layer in e.named_layers]
    for layer, kind in [*open_layers, *((s.layer, s.kind) for s in symptoms)]:
        if layer is not None and (layer not in flagged or kind == "nonfinite"):
            flagged[layer] = kind
    return flagged
