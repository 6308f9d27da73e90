"""What gradwatch adds to TensorBoard beyond its scalars: the custom-scalars dashboard, histograms and the flow figure.

Once per run, at the first logging step, the sinks that implement ``write_run_info`` receive a ``RunInfo``: the
watched layers in depth order and the tags logged. ``TensorBoardSink`` turns it into a
custom-scalars layout (category ``"gradwatch"``, built by ``build_layout()``) and the ``gradwatch/layers`` text
table (``layers_markdown()``; ``gradwatch report``/``plot`` read it back). ``DashboardLogger`` is the watcher's
part: per-layer histograms computed on the device (``gradwatch._histograms``) every ``histogram_every_n_steps``, and
the gradient-flow figure (``gradwatch._flowplot``) every ``figure_every_n_steps``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast, get_args

import numpy as np
import torch
from torch import Tensor

from ._errors import ConfigurationError
from ._flowplot import MissingExtraError, flow_figure_png, require_matplotlib
from ._histograms import DEFAULT_BINS, Histogram, device_histograms, unpack_histograms
from ._layers import Layer
from ._validate import check_int

__all__ = [
    "CATEGORY",
    "FLOW_TAG",
    "GLOBAL_CHART",
    "LAYERS_TAG",
    "DashboardLogger",
    "HistogramOf",
    "LayerInfo",
    "RunInfo",
    "build_layout",
    "layers_markdown",
    "layout_summary",
    "parse_layers_markdown",
]

#: Title of gradwatch's category in TensorBoard's custom-scalars dashboard.
CATEGORY = "gradwatch"
#: Text tag holding the watched layers (depth order, type, parameter count), written once per run.
LAYERS_TAG = "gradwatch/layers"
#: Title of the first chart: the global norm before and after clipping, and the clip threshold when one is set.
GLOBAL_CHART = "global gradient norm before and after clipping, with the clip threshold"
#: Image tag of the gradient-flow figure.
FLOW_TAG = "gradwatch/flow"

#: What can be histogrammed: ``"grad"`` (tag ``gradwatch/grad_hist/<layer>``), ``"param"`` (``gradwatch/param_hist/``).
HistogramOf = Literal["grad", "param"]


class LayerInfo(NamedTuple):
    """A watched layer as the logs describe it."""

    name: str
    kind: str  # the module's class name
    numel: int  # parameter entries


@dataclass(frozen=True)
class RunInfo:
    """What a sink learns once per run: the layers in depth order, and the scalar tags of the first logging step
    (with those the run writes from a later step on: the update ratios, which need an optimizer step first)."""

    layers: tuple[LayerInfo, ...]
    tags: tuple[str, ...]


# (title, regexes, needed): the chart is in the layout when a tag of the first logging step starts with ``needed``.
# TensorBoard matches each regex with re.match (anchored at the start) against every scalar tag of the run.
_OPTIONAL_CHARTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("loss", (r"gradwatch/loss$",), "gradwatch/loss"),
    ("clipping: scale applied (1 = not clipped) and fraction of units clipped",
     (r"gradwatch/clip/coef$", r"gradwatch/clip/active_frac$"), "gradwatch/clip/"),
    ("parameter norm by layer", (r"gradwatch/param_norm/",), "gradwatch/param_norm/"),
    # Ratios span decades (healthy around 1e-3): read it with the chart's log-scale y axis.
    ("update-to-weight ratio by layer (||dw|| / ||w|| of the last optimizer step; log scale)",
     (r"gradwatch/update_ratio/",), "gradwatch/update_ratio/"),
    ("activation mean by module", (r"gradwatch/act_mean/",), "gradwatch/act_mean/"),
    ("activation std by module", (r"gradwatch/act_std/",), "gradwatch/act_std/"),
    ("fraction of zero activations by module (dead ReLUs)", (r"gradwatch/act_zero_frac/",), "gradwatch/act_zero_frac/"),
    ("fraction of saturated activations by module", (r"gradwatch/act_saturated_frac/",),
     "gradwatch/act_saturated_frac/"),
    ("gradient norm flowing out of each module (w.r.t. its output)", (r"gradwatch/grad_out_norm/",),
     "gradwatch/grad_out_norm/"),
    ("fp16 loss scale and overflows", (r"gradwatch/amp/",), "gradwatch/amp/"),
)


def build_layout(tags: Sequence[str] = ()) -> Any:
    """The custom-scalars layout of a run whose first logging step wrote ``tags``.

    Always: the global gradient norm before and after clipping (and the clip threshold, when one is logged), every
    layer's gradient norm on one chart, every layer's max |grad|, and the symptom counts by kind. Then the loss,
    clipping, parameter-norm, update-ratio, activation and AMP charts whose tags are present.

    Examples:
        >>> layout = build_layout(["gradwatch/grad_norm/0", "gradwatch/clip/threshold", "gradwatch/act_mean/0"])
        >>> category = layout.category[0]
        >>> category.title
        'gradwatch'
        >>> [chart.title for chart in category.chart][:2]
        ['global gradient norm before and after clipping, with the clip threshold', 'gradient norm by layer']
        >>> list(category.chart[1].multiline.tag)
        ['gradwatch/grad_norm/']
    """
    from tensorboard.plugins.custom_scalar import layout_pb2

    tags = list(tags)
    charts = [  # constant titles: TensorBoard merges the layouts of every run, deduplicating equal charts
        (GLOBAL_CHART,
         (r"gradwatch/global/grad_norm$", r"gradwatch/global/grad_norm_clipped$", r"gradwatch/clip/threshold$")),
        ("gradient norm by layer", (r"gradwatch/grad_norm/",)),
        ("max |grad| by layer", (r"gradwatch/grad_max/",)),
        ("symptoms by kind (layers affected per step)", (r"gradwatch/symptoms/",)),
    ]
    charts += [(title, regexes) for title, regexes, needed in _OPTIONAL_CHARTS
               if any(t.startswith(needed) for t in tags)]
    category = layout_pb2.Category(title=CATEGORY, closed=False, chart=[
        layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(regexes)))
        for title, regexes in charts])
    return layout_pb2.Layout(category=[category])


def layout_summary(layout: Any) -> Any:
    """A TensorBoard ``Summary`` carrying a custom-scalars layout (what ``SummaryWriter.add_custom_scalars`` writes)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import metadata

    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME))
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=TensorShapeProto())
    return Summary(value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=meta)])


def layers_markdown(layers: Sequence[LayerInfo]) -> str:
    """The watched layers as a markdown table (readable in TensorBoard's text tab, parsed back by the report).

    Examples:
        >>> text = layers_markdown([LayerInfo("fc", "Linear", 12)])
        >>> parse_layers_markdown(text)
        [LayerInfo(name='fc', kind='Linear', numel=12)]
    """
    lines = ["| depth | layer | type | parameters |", "|---:|---|---|---:|"]
    lines += [f"| {i} | `{layer.name}` | {layer.kind} | {layer.numel} |" for i, layer in enumerate(layers)]
    return "\n".join(lines)


_ROW = re.compile(r"^\| (\d+) \| `(.*)` \| ([^|]*) \| (\d+) \|$")


def parse_layers_markdown(text: str) -> list[LayerInfo]:
    """Rows of ``layers_markdown()``'s table, in depth order; lines that are not rows are ignored."""
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line.strip())
        if m:
            rows.append((int(m.group(1)), LayerInfo(m.group(2), m.group(3).strip(), int(m.group(4)))))
    return [info for _, info in sorted(rows, key=lambda r: r[0])]


class DashboardLogger:
    """The watcher's dashboard duties: run info once, histograms on the device, the flow figure on the host.

    Args:
        layers: the watched layers (only their names, kinds and sizes are kept).
        histogram_every_n_steps: histogram steps (``step % n == 0``); ``None`` (default) for none.
        histograms: what to histogram on those steps: ``"grad"`` and/or ``"param"``.
        figure_every_n_steps: draw the gradient-flow figure on these steps; ``None`` (default) for never.
        bins: bins per histogram.
        later_tags: scalar tags the run writes from a later step on (the update ratios): the dashboard has their
            charts from the start.

    Raises:
        ConfigurationError: for an invalid value, or a figure asked for without matplotlib installed.

    Examples:
        >>> from torch import nn
        >>> from gradwatch._layers import discover_layers
        >>> logger = DashboardLogger(discover_layers(nn.Linear(2, 1)), histogram_every_n_steps=10)
        >>> logger.histogram_step(20), logger.histogram_step(5)
        (True, False)
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        histogram_every_n_steps: int | None = None,
        histograms: Sequence[HistogramOf] = ("grad",),
        figure_every_n_steps: int | None = None,
        bins: int = DEFAULT_BINS,
        later_tags: Sequence[str] = (),
    ) -> None:
        self.histogram_every_n_steps = _optional_every("histogram_every_n_steps", histogram_every_n_steps)
        self.figure_every_n_steps = _optional_every("figure_every_n_steps", figure_every_n_steps)
        chosen: tuple[str, ...] = (histograms,) if isinstance(histograms, str) else tuple(histograms)
        choices = get_args(HistogramOf)
        if not chosen or any(h not in choices for h in chosen) or len(set(chosen)) != len(chosen):
            raise ConfigurationError(f"histograms={chosen!r} is not valid; give one or both of "
                                     f"{', '.join(repr(c) for c in choices)}, each once.")
        self.histograms = cast("tuple[HistogramOf, ...]", chosen)
        self.bins = check_int("bins", bins, minimum=2)
        if self.figure_every_n_steps is not None:
            try:
                require_matplotlib()
            except MissingExtraError as exc:
                raise ConfigurationError(f"figure_every_n_steps={figure_every_n_steps!r}: {exc} "
                                         "(or leave figure_every_n_steps=None).") from None
        self.layers = tuple(LayerInfo(layer.name, layer.kind, layer.numel) for layer in layers)
        self.later_tags = tuple(later_tags)
        self._info_sent = False

    def _run_tags(self, scalars: Mapping[str, float]) -> tuple[str, ...]:
        """The first logging step's tags, then those written later."""
        return tuple(scalars) + tuple(t for t in self.later_tags if t not in scalars)

    def histogram_step(self, step: int) -> bool:
        return self.histogram_every_n_steps is not None and step % self.histogram_every_n_steps == 0

    def device_part(self, step: int, layers: Sequence[Layer], home: torch.device, dtype: torch.dtype) -> Tensor | None:
        """This step's histograms as one flat tensor on ``home`` (``None`` when it is not a histogram step).

        Called before clipping, so gradient histograms show the gradients as backward produced them.
        """
        if not self.histogram_step(step):
            return None
        parts = []
        for what in self.histograms:
            if what == "grad":
                per_layer = [[p.grad for p in layer.params if p.grad is not None] for layer in layers]
            else:
                per_layer = [list(layer.params) for layer in layers]
            parts.append(device_histograms(per_layer, home=home, bins=self.bins).to(dtype))
        return torch.cat(parts)

    def host_part(
        self,
        step: int,
        tail: np.ndarray | None,
        stats: Any,
        symptoms: Sequence[Any],
        scalars: Mapping[str, float],
        sinks: Sequence[Any],
        call: Callable[..., None],
    ) -> None:
        """Write this step's run info (once), histograms and figure to the sinks that take them.

        Args:
            tail: the host copy of ``device_part()``'s tensor, or ``None``.
            stats: the step's ``HostStats``.
            symptoms: the symptoms holding at this step (their layers are flagged in the figure).
            scalars: the scalars written at this step (the first logging step's tags shape the layout).
            call: ``call(sink, method, *args)`` invokes a sink method safely (the watcher drops failing sinks).
        """
        if not self._info_sent and "gradwatch/global/grad_norm" in scalars:
            self._info_sent = True
            info = RunInfo(self.layers, self._run_tags(scalars))
            for sink in _with(sinks, "write_run_info"):
                call(sink, "write_run_info", step, info)
        if tail is not None:
            names = [layer.name for layer in self.layers]
            size = len(names) * (self.bins + 4)
            out: dict[str, Histogram] = {}
            for i, what in enumerate(self.histograms):
                for name, hist in unpack_histograms(tail[i * size:(i + 1) * size], names, bins=self.bins).items():
                    out[f"gradwatch/{what}_hist/{name}"] = hist
            if out:
                for sink in _with(sinks, "write_histograms"):
                    call(sink, "write_histograms", step, out)
        if self.figure_every_n_steps is not None and step % self.figure_every_n_steps == 0:
            receivers = _with(sinks, "write_images")
            if receivers:
                png = flow_png_from_stats(stats, symptoms, step)
                for sink in receivers:
                    call(sink, "write_images", step, {FLOW_TAG: png})


def flow_png_from_stats(stats: Any, symptoms: Sequence[Any], step: int) -> bytes:
    """The flow figure of one step from the watcher's host statistics."""
    rms: list[float | None] = []
    maxabs: list[float | None] = []
    for i in range(len(stats.names)):
        has = bool(stats.has_grad[i]) and int(stats.numel[i]) > 0
        rms.append(float(stats.grad_norm[i]) / math.sqrt(int(stats.numel[i])) if has else None)
        maxabs.append(float(stats.grad_max[i]) if has else None)
    flagged: dict[str, str] = {}
    for s in symptoms:
        if s.layer is not None and (s.layer not in flagged or s.kind == "nonfinite"):
            flagged[s.layer] = s.kind
    return flow_figure_png(list(stats.names), rms, maxabs, flagged=flagged, step=step)


def _with(sinks: Sequence[Any], method: str) -> list[Any]:
    """The sinks that implement an optional method (sinks without it are skipped)."""
    return [s for s in sinks if callable(getattr(s, method, None))]


def _optional_every(name: str, value: int | None) -> int | None:
    return None if value is None else check_int(name, value, minimum=1)
