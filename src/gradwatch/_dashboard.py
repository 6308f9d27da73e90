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
    "OVERVIEW",
    "DashboardLogger",
    "HistogramOf",
    "LayerInfo",
    "Overview",
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
#: Prefix of the model-wide overview scalars (``Overview``). TensorBoard's TIME SERIES page groups tags by what comes
#: before the first ``/`` and sorts the groups by name, capitals before lower case: ``GradWatch`` opens above the
#: per-layer ``gradwatch`` group.
OVERVIEW = "GradWatch/"

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


#: Up to this many layers, the main category draws one line per layer; above it, log10 summaries across the layers
#: (min, median, max) and one collapsed category per block of layers.
PER_LAYER_MAX = 16
_BLOCK_LAYERS = 24  # the most lines on one per-block chart
_BLOCKS = 48  # the most per-block categories

# Summary charts of the overview scalars (``Overview``), for any number of layers.
_SUMMARY_CHARTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("log10 gradient RMS across layers: min, median, max", (r"GradWatch/grad_rms_log10_",), "gradwatch/grad_norm/"),
    ("log10 update ratio across layers: min, median, max", (r"GradWatch/update_ratio_log10_",),
     "gradwatch/update_ratio/"),
)
# (title, tag prefix) of the charts of each block's category.
_BLOCK_CHARTS = (("gradient norm", "gradwatch/grad_norm/"), ("max |grad|", "gradwatch/grad_max/"),
                 ("update ratio (log scale)", "gradwatch/update_ratio/"), ("parameter norm", "gradwatch/param_norm/"))
_PER_LAYER = ("gradwatch/grad_norm/", "gradwatch/grad_max/", "gradwatch/param_norm/", "gradwatch/update_ratio/",
              "gradwatch/act_", "gradwatch/grad_out_norm/")


def build_layout(tags: Sequence[str] = (), layers: Sequence[LayerInfo] = ()) -> Any:
    """The custom-scalars layout of a run whose first logging step wrote ``tags``, for its watched ``layers``.

    Always: the global gradient norm before and after clipping (and the clip threshold, when one is logged), then,
    for up to ``PER_LAYER_MAX`` layers, every layer's gradient norm and max |grad| (one line each), and the symptom
    counts by kind; then the log10 summaries across layers (min, median, max of the gradient RMS and of the update
    ratio) and the loss, clipping, parameter-norm, update-ratio, activation and AMP charts whose tags are present.
    Above ``PER_LAYER_MAX`` layers the per-layer charts leave the main category: each block of layers (``h.3`` of
    ``transformer.h.3.attn``; runs of 24 layers at most) gets a collapsed category ``gradwatch: <block>`` of its own.

    Examples:
        >>> layout = build_layout(["gradwatch/grad_norm/0", "gradwatch/clip/threshold", "gradwatch/act_mean/0"])
        >>> category = layout.category[0]
        >>> category.title
        'gradwatch'
        >>> [chart.title for chart in category.chart][:2]
        ['global gradient norm before and after clipping, with the clip threshold', 'gradient norm by layer']
        >>> list(category.chart[1].multiline.tag)
        ['gradwatch/grad_norm/']
        >>> big = build_layout(["gradwatch/grad_norm/h.0.fc"], [LayerInfo(f"h.{i}.fc", "Linear", 4) for i in range(40)])
        >>> [c.title for c in big.category][:3]
        ['gradwatch', 'gradwatch: h.0', 'gradwatch: h.1']
        >>> list(big.category[1].chart[0].multiline.tag)
        ['gradwatch/grad_norm/(?:h\\\\.0\\\\.fc)$']
    """
    from tensorboard.plugins.custom_scalar import layout_pb2

    tags = list(tags)
    few = len(layers) <= PER_LAYER_MAX
    categories = [layout_pb2.Category(title=CATEGORY, closed=False, chart=[
        layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(regexes)))
        for title, regexes in _main_charts(tags, few)])]
    if not few:
        categories += _block_categories(tags, layers)
    return layout_pb2.Layout(category=categories)


def _main_charts(tags: Sequence[str], few: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(title, regexes) of the main category's charts."""
    charts: list[tuple[str, tuple[str, ...]]] = [  # constant titles: TensorBoard merges the layouts of every run
        (GLOBAL_CHART,
         (r"gradwatch/global/grad_norm$", r"gradwatch/global/grad_norm_clipped$", r"gradwatch/clip/threshold$")),
    ]
    if few:
        charts += [("gradient norm by layer", (r"gradwatch/grad_norm/",)),
                   ("max |grad| by layer", (r"gradwatch/grad_max/",))]
    charts.append(("symptoms by kind (layers affected per step)", (r"gradwatch/symptoms/",)))
    charts += [(title, regexes) for title, regexes, needed in _SUMMARY_CHARTS
               if any(t.startswith(needed) for t in tags)]
    charts += [(title, regexes) for title, regexes, needed in _OPTIONAL_CHARTS
               if any(t.startswith(needed) for t in tags) and (few or not needed.startswith(_PER_LAYER))]
    return charts


def _block_categories(tags: Sequence[str], layers: Sequence[LayerInfo]) -> list[Any]:
    """One collapsed category per block of layers (``layer_blocks()``), its charts' regexes matching its layers."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    present = [(chart, prefix) for chart, prefix in _BLOCK_CHARTS if any(t.startswith(prefix) for t in tags)]
    categories = []
    for title, names in layer_blocks([layer.name for layer in layers]):
        alternation = "|".join(re.escape(n) for n in names)
        categories.append(layout_pb2.Category(title=f"{CATEGORY}: {title}", closed=True, chart=[
            layout_pb2.Chart(title=f"{chart} ({title})", multiline=layout_pb2.MultilineChartContent(
                tag=[f"{prefix}(?:{alternation})$"]))
            for chart, prefix in present]))
    return categories


def _block_key(name: str) -> str:
    """``transformer.h.3`` for ``transformer.h.3.attn.c_attn`` (up to the first index that is not the last part);
    otherwise the parent (``features`` for ``features.3``; ``""`` for ``fc1`` or ``3``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1])


def layer_blocks(names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The layers (in depth order) cut into blocks for the per-block categories: consecutive layers of the same
    module (``_block_key``), runs of 24 layers at most, and at most 48 blocks (neighbours merged).

    Examples:
        >>> layer_blocks(["emb", "h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp", "head"])
        [('emb', ['emb']), ('h.0', ['h.0.attn', 'h.0.mlp']), ('h.1', ['h.1.attn', 'h.1.mlp']), ('head', ['head'])]
        >>> [title for title, _ in layer_blocks([str(i) for i in range(50)])]
        ['layers 0\u201323', 'layers 24\u201347', 'layers 48\u201349']
    """
    runs: list[tuple[str, list[str]]] = []
    for name in names:
        key = _block_key(name)
        if runs and runs[-1][0] == key and len(runs[-1][1]) < _BLOCK_LAYERS:
            runs[-1][1].append(name)
        else:
            runs.append((key, [name]))
    titles = [key or _span(ns) for key, ns in runs]
    blocks = [(t if titles.count(t) == 1 else f"{t}: {_span(ns)}", ns)
              for t, (_, ns) in zip(titles, runs, strict=True)]
    if len(blocks) <= _BLOCKS:
        return blocks
    k = -(-len(blocks) // _BLOCKS)  # merge neighbours: k blocks per category
    merged = [blocks[i:i + k] for i in range(0, len(blocks), k)]
    return [(g[0][0] if len(g) == 1 else f"{g[0][0]} \u2013 {g[-1][0]}", [n for _, ns in g for n in ns])
            for g in merged]


def _span(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"layers {names[0]}\u2013{names[-1]}"


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


# (overview tag, the step's tag it copies)
_OVERVIEW_COPIES = (
    ("global_grad_norm", "gradwatch/global/grad_norm"),
    ("global_grad_norm_clipped", "gradwatch/global/grad_norm_clipped"),
    ("clip_threshold", "gradwatch/clip/threshold"),
    ("loss", "gradwatch/loss"),
)
_SYMPTOMS = "gradwatch/symptoms/"
_GRAD_NORM = "gradwatch/grad_norm/"
_UPDATE_RATIO = "gradwatch/update_ratio/"


class Overview:
    """The model-wide overview scalars (``GradWatch/...``) of a step, computed on the host from the step's own
    scalars: the global norm before and after clipping, the clip threshold and the loss (copied), the symptom counts
    (``symptoms_<kind>``), and log10 summaries across layers: ``grad_rms_log10_{min,median,max}`` (a layer's gradient
    norm over the square root of its parameter count, once the sizes are known; layers with no or a zero or
    non-finite gradient left out) and ``update_ratio_log10_{min,median,max}``.

    The positions of the per-layer tags are found once per set of tags (a run's logged steps rarely change it), so a
    step costs one pass of numpy over its values: about 30 us at 500 layers.

    Examples:
        >>> o = Overview()
        >>> o.sizes = {"a": 4, "b": 100}
        >>> out = o.scalars({"gradwatch/global/grad_norm": 2.0, "gradwatch/grad_norm/a": 2.0,
        ...                  "gradwatch/grad_norm/b": 0.01, "gradwatch/symptoms/vanishing": 1.0})
        >>> {k: round(v, 3) for k, v in out.items()}  # doctest: +NORMALIZE_WHITESPACE
        {'GradWatch/global_grad_norm': 2.0, 'GradWatch/symptoms_vanishing': 1.0, 'GradWatch/grad_rms_log10_min': -3.0,
         'GradWatch/grad_rms_log10_median': -1.5, 'GradWatch/grad_rms_log10_max': 0.0}
    """

    def __init__(self) -> None:
        self.sizes: Mapping[str, int] = {}
        self._key: tuple[Any, ...] = ()
        self._plan: Any = None

    def _build(self, tags: tuple[str, ...]) -> Any:
        norms = [(i, t[len(_GRAD_NORM):]) for i, t in enumerate(tags) if t.startswith(_GRAD_NORM)]
        sizes = np.array([self.sizes.get(name, 0) for _, name in norms], dtype=np.float64)
        scale = np.where(sizes > 0, 1.0 / np.sqrt(np.where(sizes > 0, sizes, 1.0)), np.nan)
        return (
            [(OVERVIEW + name, tags.index(tag)) for name, tag in _OVERVIEW_COPIES if tag in tags],
            [(OVERVIEW + "symptoms_" + t[len(_SYMPTOMS):], i) for i, t in enumerate(tags) if t.startswith(_SYMPTOMS)],
            np.array([i for i, _ in norms], dtype=np.int64), scale,
            np.array([i for i, t in enumerate(tags) if t.startswith(_UPDATE_RATIO)], dtype=np.int64),
        )

    def scalars(self, scalars: Mapping[str, float]) -> dict[str, float]:
        """The overview scalars of a step whose scalars are ``scalars`` (``{}`` for a step with none of them)."""
        tags = tuple(scalars)
        key = (tags, id(self.sizes), len(self.sizes))
        if key != self._key:
            self._plan, self._key = self._build(tags), key
        copies, symptoms, norm_at, scale, ratio_at = self._plan
        values = np.fromiter(scalars.values(), dtype=np.float64, count=len(tags))
        out = {name: float(values[i]) for name, i in copies}
        out.update({name: float(values[i]) for name, i in symptoms})
        if self.sizes:
            _summary(out, "grad_rms_log10", values[norm_at] * scale)
        _summary(out, "update_ratio_log10", values[ratio_at])
        return out


def _summary(out: dict[str, float], name: str, values: np.ndarray) -> None:
    """log10 of the smallest, median and largest positive finite value, when there is one."""
    good = values[np.isfinite(values) & (values > 0)]
    if good.size:
        logs = np.log10(good)
        out[f"{OVERVIEW}{name}_min"] = float(logs.min())
        out[f"{OVERVIEW}{name}_median"] = float(np.median(logs))
        out[f"{OVERVIEW}{name}_max"] = float(logs.max())


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

    def figure_step(self, step: int) -> bool:
        return self.figure_every_n_steps is not None and step % self.figure_every_n_steps == 0

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
