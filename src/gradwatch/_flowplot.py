"""The gradient-flow figure: per-layer RMS and max |grad| by depth, log scale, flagged layers marked.

matplotlib is an optional extra (``pip install matplotlib``; from a gradwatch clone ``pip install '.[plot]'``). It is
imported only when a figure is drawn, and drawn through the Agg canvas directly (no ``pyplot``, no global backend
switch), so it works headless and leaves a notebook's or a GUI's backend alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import GradWatchError

__all__ = ["MissingExtraError", "flow_figure", "flow_figure_png", "matplotlib_available", "png_size",
           "require_matplotlib"]

_INSTALL = "pip install matplotlib (from a gradwatch clone: pip install '.[plot]')"
_KIND_COLORS = {"nonfinite": "#000000", "exploding": "#d62728", "vanishing": "#1f77b4"}
_OTHER_KIND_COLOR = "#9467bd"
_RMS_COLOR, _RMS_LABEL = "#4c72b0", "RMS |grad| (mean entry)"
_MAX_COLOR, _MAX_LABEL = "#dd8452", "max |grad|"


class MissingExtraError(GradWatchError, ImportError):
    """An optional dependency of gradwatch is not installed; the message says which extra to install."""


def matplotlib_available() -> bool:
    """Whether the ``plot`` extra (matplotlib) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> None:
    """Raise ``MissingExtraError`` naming the ``plot`` extra when matplotlib is missing."""
    if not matplotlib_available():
        raise MissingExtraError(f"The gradient-flow figure needs matplotlib, gradwatch's 'plot' extra: {_INSTALL}")


def flow_figure_png(
    names: Sequence[str],
    rms: Sequence[float | None],
    maxabs: Sequence[float | None],
    *,
    flagged: Mapping[str, str] | None = None,
    step: int | None = None,
    title: str | None = None,
    dpi: int = 80,
) -> bytes:
    """Draw the gradient flow across depth as a PNG (``flow_figure()``, saved).

    Returns:
        The PNG file's bytes.

    Raises:
        MissingExtraError: without matplotlib.

    Examples:
        >>> png = flow_figure_png(["in", "out"], [1e-3, 0.5], [1e-2, 2.0], flagged={"in": "vanishing"}, step=3)
        >>> png[:4] == b"\\x89PNG"
        True
    """
    fig = flow_figure(names, rms, maxabs, flagged=flagged, step=step, title=title, dpi=dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def flow_figure(
    names: Sequence[str],
    rms: Sequence[float | None],
    maxabs: Sequence[float | None],
    *,
    flagged: Mapping[str, str] | None = None,
    step: int | None = None,
    title: str | None = None,
    dpi: int = 80,
) -> Any:
    """Draw the gradient flow across depth: a matplotlib ``Figure`` (not registered with ``pyplot``).

    Args:
        names: layer names, in depth order (the order the watcher lists them).
        rms: each layer's RMS gradient entry (``grad_norm / sqrt(numel)``, "mean |grad|"), ``None`` without one.
        maxabs: each layer's largest absolute gradient entry, ``None`` without one.
        flagged: layer name -> symptom kind, for the layers to mark (a coloured label and a marker above the bars).
        step: the step shown in the title.
        title: overrides the title.
        dpi: resolution.

    Returns:
        The ``matplotlib.figure.Figure``: one pair of bars per layer (RMS, then max ``|grad|``).

    Raises:
        MissingExtraError: without matplotlib.

    Examples:
        >>> fig = flow_figure(["in", "out"], [1e-3, 0.5], [1e-2, 2.0], step=3)
        >>> len(fig.axes[0].patches)
        4
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    flagged = dict(flagged or {})
    n = len(names)
    fig = Figure(figsize=(min(24.0, max(6.0, 1.5 + 0.32 * n)), 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _draw_bars(ax, rms, maxabs, n)
    _label_layers(ax, names, flagged)
    ax.set_xlabel("layer (input side left, output side right)")
    ax.set_ylabel("|gradient| (log scale)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(handles=_legend_handles(flagged), fontsize=8, loc="upper left", framealpha=0.85)
    ax.set_title(_default_title(step, flagged) if title is None else title, fontsize=10, pad=12)
    fig.tight_layout()
    return fig


def _draw_bars(ax: Any, rms: Sequence[float | None], maxabs: Sequence[float | None], n: int) -> None:
    """The RMS and max |grad| bars of each layer side by side, on a log axis starting below the smallest value."""
    floor = _floor(list(rms) + list(maxabs))
    xs = list(range(n))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [_bar(v, floor) for v in rms], width, bottom=floor, color=_RMS_COLOR,
           label=_RMS_LABEL)
    ax.bar([x + width / 2 for x in xs], [_bar(v, floor) for v in maxabs], width, bottom=floor, color=_MAX_COLOR,
           label=_MAX_LABEL)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xticks(xs)


def _label_layers(ax: Any, names: Sequence[str], flagged: Mapping[str, str]) -> None:
    """Layer names under the bars (one in ``stride`` past 60 layers, every flagged one), flagged ones coloured by
    kind with a marker above the plot."""
    n = len(names)
    stride = max(1, math.ceil(n / 60))
    ax.set_xticklabels([name if i % stride == 0 or name in flagged else "" for i, name in enumerate(names)],
                       rotation=90 if n > 8 else 0, fontsize=8)
    for i, name in enumerate(names):
        kind = flagged.get(name)
        if kind is None:
            continue
        color = _KIND_COLORS.get(kind, _OTHER_KIND_COLOR)
        ax.get_xticklabels()[i].set_color(color)
        ax.plot([i], [1.0], marker="v", color=color, markersize=9, clip_on=False, transform=ax.get_xaxis_transform())


def _legend_handles(flagged: Mapping[str, str]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=_RMS_COLOR, label=_RMS_LABEL), Patch(color=_MAX_COLOR, label=_MAX_LABEL)]
    for kind in sorted(set(flagged.values())):
        handles.append(Line2D([], [], marker="v", linestyle="", color=_KIND_COLORS.get(kind, _OTHER_KIND_COLOR),
                              label=kind))
    return handles


def _default_title(step: int | None, flagged: Mapping[str, str]) -> str:
    title = "gradwatch: gradient flow by layer" + (f", step {step}" if step is not None else "")
    if flagged:
        title += f" ({len(flagged)} layer{'s' if len(flagged) != 1 else ''} flagged)"
    return title


def png_size(png: bytes) -> tuple[int, int]:
    """``(height, width)`` read from a PNG's header.

    Examples:
        >>> png_size(flow_figure_png(["a"], [1.0], [1.0], dpi=10))[0] > 0
        True
    """
    return int.from_bytes(png[20:24], "big"), int.from_bytes(png[16:20], "big")


def _floor(values: Sequence[Any]) -> float:
    """A power of ten below the smallest positive finite value: where the bars start on the log axis."""
    positive = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not positive:
        return 1e-12
    return 10.0 ** (math.floor(math.log10(min(positive))) - 1)


def _bar(value: float | None, floor: float) -> float:
    """Bar height above ``floor`` (0 for a missing, zero or non-finite value)."""
    if value is None or not math.isfinite(value) or value <= floor:
        return 0.0
    return value - floor
