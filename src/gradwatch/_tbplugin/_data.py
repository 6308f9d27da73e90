"""Pure functions behind the GRADWATCH tab: which per-layer metrics a run has, the rows' depth order, the heat map's
step buckets, the depth profile at one step, and the episodes of the ``gradwatch/alerts`` records.

Nothing here talks to TensorBoard: ``_plugin.py`` reads the scalars through TensorBoard's data provider and hands
them over as numpy arrays (one ``Series`` per tag).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._dashboard import LayerInfo
from .._episodes import Episode
from .._sinks import read_records

__all__ = [
    "MAX_CELLS",
    "METRICS",
    "Metric",
    "Series",
    "available_metrics",
    "episodes_from_texts",
    "heatmap",
    "metric_label",
    "natural_key",
    "order_rows",
    "profile",
]

#: The most cells one heat-map answer holds (rows x columns): 500 layers get 500 columns, 12 layers 2,000.
MAX_CELLS = 250_000
#: The most columns, whatever the number of rows.
MAX_COLUMNS = 2_000


@dataclass(frozen=True)
class Metric:
    """A per-layer quantity the heat map can show.

    Attributes:
        key: its name in the plugin's routes (``grad_rms``).
        prefix: the tag prefix of its scalars (``gradwatch/grad_norm/``).
        label: what the colour scale says.
        log: shown as log10 (values that span decades); otherwise as is.
        rms: divide by the square root of the layer's parameter count (a norm becomes an RMS entry).
    """

    key: str
    prefix: str
    label: str
    log: bool
    rms: bool = False


METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("grad_rms", "gradwatch/grad_norm/", "log10 gradient RMS (||g|| / sqrt(n))", log=True, rms=True),
    Metric("grad_max", "gradwatch/grad_max/", "log10 max |grad|", log=True),
    Metric("update_ratio", "gradwatch/update_ratio/", "log10 update ratio ||dw|| / ||w||", log=True),
    Metric("param_rms", "gradwatch/param_norm/", "log10 parameter RMS (||w|| / sqrt(n))", log=True, rms=True),
    Metric("act_mean", "gradwatch/act_mean/", "activation mean", log=False),
    Metric("act_std", "gradwatch/act_std/", "log10 activation std", log=True),
    Metric("act_zero_frac", "gradwatch/act_zero_frac/", "fraction of zero activations", log=False),
    Metric("act_saturated_frac", "gradwatch/act_saturated_frac/", "fraction of saturated activations", log=False),
    Metric("act_dead_frac", "gradwatch/act_dead_frac/", "fraction of dead units", log=False),
    Metric("grad_out_norm", "gradwatch/grad_out_norm/", "log10 gradient norm out of the module", log=True),
)}
"""Every metric the heat map knows, in the order the tab offers them."""

# The label of an RMS metric when the run has no layer sizes (written before the ``gradwatch/layers`` table existed).
_NORM_LABELS = {"grad_rms": "log10 gradient norm (no layer sizes logged: not an RMS)",
                "param_rms": "log10 parameter norm (no layer sizes logged: not an RMS)"}


@dataclass(frozen=True)
class Series:
    """One tag's points, as TensorBoard kept them: steps ascending, values as logged (NaN and Inf included)."""

    steps: np.ndarray  # int64
    values: np.ndarray  # float64

    @classmethod
    def of(cls, points: Iterable[tuple[int, float]]) -> Series:
        """From ``(step, value)`` pairs in any order.

        Examples:
            >>> s = Series.of([(3, 0.5), (1, 2.0)])
            >>> s.steps.tolist(), s.values.tolist()
            ([1, 3], [2.0, 0.5])
        """
        pairs = sorted(points)
        return cls(np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.float64))


def available_metrics(tags: Iterable[str]) -> list[str]:
    """The keys of the metrics with at least one tag among ``tags``, in ``METRICS`` order.

    Examples:
        >>> available_metrics(["gradwatch/grad_norm/fc", "gradwatch/update_ratio/fc", "loss"])
        ['grad_rms', 'update_ratio']
    """
    tags = list(tags)
    return [key for key, m in METRICS.items() if any(t.startswith(m.prefix) for t in tags)]


def metric_label(metric: Metric, sizes_known: bool) -> str:
    """The colour scale's label; an RMS metric without the layer sizes says it shows norms."""
    return metric.label if sizes_known or not metric.rms else _NORM_LABELS[metric.key]


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """A sort key that orders the numbers inside names by value (``h.2`` before ``h.10``).

    Examples:
        >>> sorted(["h.10", "h.2", "emb"], key=natural_key)
        ['emb', 'h.2', 'h.10']
    """
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in _DIGITS.split(name) if part)


def order_rows(names: Iterable[str], layers: Sequence[LayerInfo]) -> tuple[list[str], bool]:
    """The rows of a heat map in depth order, and whether that order came from the run's ``gradwatch/layers`` table.

    Names in the table take its depth; a name that is not (an activation module such as a ``Sigmoid`` between two
    layers) goes after the last layer that sorts before it (``natural_key``). Without a table: natural order.

    Examples:
        >>> table = [LayerInfo("fc2", "Linear", 4), LayerInfo("fc1", "Linear", 4)]
        >>> order_rows(["fc1", "fc2"], table)
        (['fc2', 'fc1'], True)
        >>> order_rows(["0", "1", "2"], [LayerInfo("0", "Linear", 4), LayerInfo("2", "Linear", 4)])
        (['0', '1', '2'], True)
        >>> order_rows(["b.10", "b.9"], [])
        (['b.9', 'b.10'], False)
    """
    names = list(dict.fromkeys(names))
    if not layers:
        return sorted(names, key=natural_key), False
    depth = {layer.name: float(i) for i, layer in enumerate(layers)}
    known = sorted(((natural_key(layer.name), i) for i, layer in enumerate(layers)))
    keys = [k for k, _ in known]

    def where(name: str) -> float:
        if name in depth:
            return depth[name]
        at = _bisect(keys, natural_key(name))
        return (known[at - 1][1] if at else -1) + 0.5

    return sorted(names, key=lambda n: (where(n), natural_key(n))), True


def _bisect(keys: Sequence[Any], key: Any) -> int:
    lo, hi = 0, len(keys)
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] <= key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def transform(metric: Metric, values: np.ndarray, numel: float | None) -> np.ndarray:
    """Values as the map shows them: divided by sqrt(numel) for an RMS metric (when the size is known), then log10
    for a log metric (0 becomes -inf; NaN and Inf stay NaN and Inf)."""
    out = np.asarray(values, dtype=np.float64)
    if metric.rms and numel:
        out = out / math.sqrt(numel)
    if metric.log:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(out > 0, np.log10(np.where(out > 0, out, 1.0)), np.where(np.isfinite(out), -np.inf, out))
    return out


def column_edges(steps: np.ndarray, start: int, end: int, columns: int) -> np.ndarray:
    """The heat map's column edges (``columns + 1`` at most): column ``j`` holds steps ``edges[j] <= s < edges[j+1]``.

    When ``[start, end]`` holds no more logged steps than ``columns``, every logged step is a column of its own;
    otherwise the range is cut into ``columns`` equal spans of whole steps.

    Examples:
        >>> column_edges(np.array([0, 5, 10]), 0, 10, 8).tolist()
        [0, 5, 10, 11]
        >>> column_edges(np.arange(100), 0, 99, 4).tolist()
        [0, 25, 50, 75, 100]
    """
    inside = np.unique(steps[(steps >= start) & (steps <= end)])
    if inside.size == 0:
        return np.array([start, end + 1], dtype=np.int64)
    if inside.size <= columns:
        return np.append(inside, inside[-1] + 1).astype(np.int64)
    edges = np.unique(np.round(np.linspace(start, end + 1, columns + 1)).astype(np.int64))
    return edges


def heatmap(
    metric: Metric,
    rows: Sequence[str],
    series: Mapping[str, Series],
    numel: Mapping[str, int],
    *,
    start: int | None = None,
    end: int | None = None,
    columns: int = 800,
) -> dict[str, Any]:
    """The layer x step matrix of one metric, downsampled to at most ``columns`` columns (and ``MAX_CELLS`` cells):
    each cell is the largest value of its layer over the column's steps.

    A cell is a number (rounded to 3 decimals), ``None`` (no point in the column), ``"nan"`` or ``"inf"`` (a
    non-finite value: it wins over the finite ones of its column), or ``"zero"`` (a log metric whose largest value
    was 0).

    Examples:
        >>> m = METRICS["grad_rms"]
        >>> s = {"a": Series.of([(0, 4.0), (1, 0.4)]), "b": Series.of([(0, float("nan")), (1, 0.0)])}
        >>> out = heatmap(m, ["a", "b"], s, {"a": 4, "b": 4})
        >>> out["edges"], out["cells"]
        ([0, 1, 2], [[0.301, -0.699], ['nan', 'zero']])
        >>> heatmap(m, ["a", "b"], s, {"a": 4, "b": 4}, columns=1)["cells"]
        [[0.301], ['nan']]
    """
    all_steps = [s.steps for s in series.values() if s.steps.size]
    if not all_steps or not rows:
        return {"rows": list(rows), "edges": [], "cells": [[] for _ in rows], "range": None}
    steps = np.concatenate(all_steps)
    lo = int(steps.min()) if start is None else int(start)
    hi = int(steps.max()) if end is None else int(end)
    if hi < lo:
        lo, hi = hi, lo
    columns = max(1, min(int(columns), MAX_COLUMNS, MAX_CELLS // max(1, len(rows))))
    edges = column_edges(steps, lo, hi, columns)
    ncol = edges.size - 1
    best = np.full((len(rows), ncol), -np.inf)
    seen = np.zeros((len(rows), ncol), dtype=bool)
    bad = np.zeros((len(rows), ncol), dtype=np.int8)  # 1: NaN, 2: Inf (NaN wins)
    for r, name in enumerate(rows):
        s = series.get(name)
        if s is None or not s.steps.size:
            continue
        keep = (s.steps >= edges[0]) & (s.steps < edges[-1])
        col = np.searchsorted(edges, s.steps[keep], side="right") - 1
        vals = transform(metric, s.values[keep], numel.get(name))
        seen[r, col] = True
        finite = ~np.isnan(vals) & ~np.isposinf(vals)
        np.maximum.at(best[r], col[finite], vals[finite])
        inf = np.isposinf(vals)
        bad[r, col[inf]] = np.maximum(bad[r, col[inf]], 2)
        bad[r, col[np.isnan(vals)]] = 1
    cells = _cells(best, seen, bad, metric.log)
    finite = best[seen & (bad == 0) & np.isfinite(best)]
    value_range = [round(float(finite.min()), 3), round(float(finite.max()), 3)] if finite.size else None
    return {"rows": list(rows), "edges": edges.tolist(), "cells": cells, "range": value_range}


def _cells(best: np.ndarray, seen: np.ndarray, bad: np.ndarray, log: bool) -> list[list[Any]]:
    """The matrix as nested lists, built by numpy (``tolist()``); only the special cells are set one by one."""
    finite = np.isfinite(best)
    out: list[list[Any]] = np.where(finite, np.round(best, 3 if log else 4), 0.0).tolist()
    special = ~seen | (bad > 0) | ~finite
    for r, c in zip(*np.nonzero(special), strict=True):
        out[r][c] = _cell(float(best[r, c]), bool(seen[r, c]), int(bad[r, c]), log)
    return out


def _cell(value: float, seen: bool, bad: int, log: bool) -> float | str | None:
    if not seen:
        return None
    if bad:
        return "nan" if bad == 1 else "inf"
    if value == -np.inf:
        return "zero" if log else None
    return round(float(value), 3 if log else 4)


def profile(
    metric: Metric, rows: Sequence[str], series: Mapping[str, Series], numel: Mapping[str, int], step: int | None,
) -> dict[str, Any]:
    """Each row's value at the last logged step at or before ``step`` (the run's last step when ``None``): the
    depth profile, as the heat map would colour it (``"nan"``, ``"inf"``, ``"zero"``, ``None`` as there).

    Examples:
        >>> m = METRICS["grad_max"]
        >>> p = profile(m, ["a"], {"a": Series.of([(0, 100.0), (10, 0.01)])}, {}, 5)
        >>> p["step"], p["values"]
        (0, [2.0])
    """
    all_steps = np.concatenate([s.steps for s in series.values()]) if series else np.array([], dtype=np.int64)
    if not all_steps.size:
        return {"step": None, "rows": list(rows), "values": [None] * len(rows)}
    candidates = all_steps if step is None else all_steps[all_steps <= step]
    at = int(candidates.max()) if candidates.size else int(all_steps.min())
    values: list[float | str | None] = []
    for name in rows:
        s = series.get(name)
        if s is None:
            values.append(None)
            continue
        hit = np.flatnonzero(s.steps == at)
        if not hit.size:
            values.append(None)
            continue
        v = float(transform(metric, s.values[hit[-1:]], numel.get(name))[0])
        values.append(_cell(v, True, 1 if math.isnan(v) else 2 if v == math.inf else 0, metric.log))
    return {"step": at, "rows": list(rows), "values": values}


def episodes_from_texts(texts: Iterable[str]) -> list[dict[str, Any]]:
    """The episodes recorded in ``gradwatch/alerts`` texts (the latest record of each), in onset order, as the tab
    lists them: kind, severity, layers, onset, end (``None`` while open), last step seen, and the advice.

    Examples:
        >>> from gradwatch._sinks import records_text
        >>> rec = {"episode": "vanishing@3", "state": "start", "kind": "vanishing", "severity": "warning",
        ...        "layers": ["0", "2"], "onset": 3, "detected": 5, "last": 5, "end": None, "where": "0, 2",
        ...        "advice": "residual connections", "message": "Vanishing."}
        >>> [(e["kind"], e["layers"], e["onset"], e["end"]) for e in episodes_from_texts([records_text([rec])])]
        [('vanishing', ['0', '2'], 3, None)]
    """
    latest: dict[str, Episode] = {}
    for text in texts:
        for record in read_records(text):
            if "episode" not in record:
                continue
            try:
                latest[str(record["episode"])] = Episode.from_record(record)
            except (KeyError, TypeError, ValueError, IndexError):
                continue
    out = []
    for e in sorted(latest.values(), key=lambda e: (e.onset, e.detected, e.kind)):
        out.append({
            "kind": e.kind, "severity": e.severity, "layers": [x for x in e.layers if x is not None],
            "where": e.where, "onset": e.onset, "detected": e.detected, "last": e.last, "end": e.end,
            "steps": e.steps, "advice": e.advice, "cause": e.cause, "message": e.message,
        })
    return out
