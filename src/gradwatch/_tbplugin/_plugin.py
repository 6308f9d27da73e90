"""The GRADWATCH tab's server side: HTTP routes over TensorBoard's data provider.

Every route answers JSON, and never fails with a server error: a run without gradwatch data, an unknown metric or a
file still being written give a ``{"error": ...}`` answer that the tab shows as a message. The scalars of a run are
read once per (run, metric) and kept until TensorBoard has new data for them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import numpy as np
from tensorboard import context as tb_context
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from .._dashboard import LAYERS_TAG, LayerInfo, parse_layers_markdown
from .._sinks import ALERTS_TAG
from ._data import METRICS, Series, available_metrics, episodes_from_texts, heatmap, metric_label, order_rows, profile

__all__ = ["PLUGIN_NAME", "GradWatchPlugin"]

#: The plugin's name: its routes are under ``/data/plugin/gradwatch/``, its tab is ``#gradwatch``.
PLUGIN_NAME = "gradwatch"

_log = logging.getLogger("gradwatch.tbplugin")
_SCALARS = "scalars"  # the TensorBoard plugin that owns gradwatch's scalars (simple values)
_TEXT = "text"
_POINTS = 200_000  # points read per request at most: each tag gets _POINTS / tags of them (100 to 5,000)
_STATIC = {"/index.js": "text/javascript"}

Handler = Callable[..., Any]


class _BadRequest(Exception):
    """A request that names no run, an unknown run or an unknown metric: answered with status 400 and the reason."""


class GradWatchPlugin(base_plugin.TBPlugin):  # type: ignore[misc]
    """gradwatch's TensorBoard tab: a layer x step heat map, the depth profile at a step, and the episodes.

    Args:
        context: TensorBoard's ``TBContext`` (its ``data_provider`` is the only thing used).
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: Any) -> None:
        self._provider = context.data_provider
        hints = context.sampling_hints or {}
        self._text_samples = int(hints.get(_TEXT) or 10)  # TensorBoard keeps 10 texts per tag by default
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], tuple[Any, dict[str, Series]]] = {}

    def get_plugin_apps(self) -> dict[str, Handler]:
        return {
            "/index.js": self._static(),
            "/runs": self._route(self._runs),
            "/heatmap": self._route(self._heatmap),
            "/profile": self._route(self._profile),
            "/episodes": self._route(self._episodes),
        }

    def is_active(self) -> bool:
        """Whether any run holds a gradwatch per-layer scalar."""
        if self._provider is None:
            return False
        try:
            listing = self._provider.list_scalars(tb_context.RequestContext(), experiment_id="",
                                                  plugin_name=_SCALARS)
        except Exception:
            return False
        return any(available_metrics(tags) for tags in listing.values())

    def data_plugin_names(self) -> tuple[str, ...]:
        return ()

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="gradwatch")

    # --- routes ---------------------------------------------------------------------------------------------------

    def _static(self) -> Handler:
        """The WSGI app serving the tab's ES module (``static/index.js``, shipped as package data)."""

        @wrappers.Request.application
        def app(request: wrappers.Request) -> Any:
            name = request.path.rsplit("/", 1)[-1]
            body = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
            return http_util.Respond(request, body, _STATIC["/" + name])

        return app

    def _route(self, compute: Callable[[Any, Any, str], dict[str, Any]]) -> Handler:
        """A WSGI app answering ``compute(request, ctx, experiment_id)`` as JSON: 400 with the reason for a bad
        request, and ``{"error": ...}`` (status 200, shown in the tab) for anything else that goes wrong."""

        @wrappers.Request.application
        def app(request: wrappers.Request) -> Any:
            ctx = plugin_util.context(request.environ)
            eid = plugin_util.experiment_id(request.environ)
            code = 200
            try:
                body = compute(request, ctx, eid)
            except _BadRequest as exc:
                body, code = {"error": str(exc)}, 400
            except Exception as exc:
                _log.exception("gradwatch plugin: %s failed", request.path)
                body = {"error": f"gradwatch could not read this run's data ({type(exc).__name__}: {exc}); "
                                 "reload when the run has written more."}
            return http_util.Respond(request, json.dumps(body, allow_nan=False), "application/json", code=code)

        return app

    def _runs(self, request: Any, ctx: Any, eid: str) -> dict[str, Any]:
        listing = self._provider.list_scalars(ctx, experiment_id=eid, plugin_name=_SCALARS)
        runs = []
        for run in sorted(listing):
            tags = listing[run]
            metrics = available_metrics(tags)
            if not metrics:
                continue
            series = list(tags.values())
            layers = self._layers(ctx, eid, run)
            first_prefix = METRICS[metrics[0]].prefix
            runs.append({
                "name": run, "metrics": metrics, "sizes": bool(layers),
                "layers": len(layers) or sum(1 for t in tags if t.startswith(first_prefix)),
                "last_step": max(int(t.max_step) for t in series),
            })
        message = None
        if not runs:
            message = ("No gradwatch data in this log directory yet. Write some with gradwatch.watch(model, "
                       "log_dir=...) (or GradWatchCallback with a TensorBoardLogger); runs appear here once their "
                       "first logged step is on disk.")
        return {"runs": runs, "message": message, "text_samples": self._text_samples}

    def _heatmap(self, request: Any, ctx: Any, eid: str) -> dict[str, Any]:
        run, metric = _arg(request, "run"), _metric(request)
        series, sizes, rows, ordered = self._rows(ctx, eid, run, metric.key)
        out = heatmap(metric, rows, series, sizes, start=_int_arg(request, "start"), end=_int_arg(request, "end"),
                      columns=_int_arg(request, "columns") or 800)
        points = max((s.steps.size for s in series.values()), default=0)
        out.update(run=run, metric=metric.key, label=metric_label(metric, bool(sizes)), log=metric.log,
                   depth_order=ordered, points_per_layer=points,
                   first_step=min((int(s.steps[0]) for s in series.values() if s.steps.size), default=None),
                   last_step=max((int(s.steps[-1]) for s in series.values() if s.steps.size), default=None))
        return out

    def _profile(self, request: Any, ctx: Any, eid: str) -> dict[str, Any]:
        run, metric = _arg(request, "run"), _metric(request)
        series, sizes, rows, ordered = self._rows(ctx, eid, run, metric.key)
        out = profile(metric, rows, series, sizes, _int_arg(request, "step"))
        out.update(run=run, metric=metric.key, label=metric_label(metric, bool(sizes)), depth_order=ordered)
        return out

    def _episodes(self, request: Any, ctx: Any, eid: str) -> dict[str, Any]:
        run = _arg(request, "run")
        texts = self._texts(ctx, eid, run, ALERTS_TAG)
        return {"run": run, "episodes": episodes_from_texts(texts), "texts": len(texts),
                "text_samples": self._text_samples, "maybe_incomplete": len(texts) >= self._text_samples}

    # --- reading through the data provider ------------------------------------------------------------------------

    def _rows(self, ctx: Any, eid: str, run: str, key: str) -> tuple[dict[str, Series], dict[str, int], list[str],
                                                                   bool]:
        """A metric's series by row name, the layer sizes, the rows in depth order, and whether the order is depth."""
        metric = METRICS[key]
        listing = self._provider.list_scalars(ctx, experiment_id=eid, plugin_name=_SCALARS,
                                              run_tag_filter=provider.RunTagFilter(runs=[run]))
        tags = {t: ts for t, ts in listing.get(run, {}).items() if t.startswith(metric.prefix)}
        if not listing.get(run):
            raise _BadRequest(f"no run {run!r} with scalars in this log directory")
        series = self._series(ctx, eid, run, metric.prefix, tags)
        layers = self._layers(ctx, eid, run)
        rows, ordered = order_rows(series, layers)
        sizes = {layer.name: layer.numel for layer in layers if layer.numel > 0}
        return series, sizes, rows, ordered

    def _series(self, ctx: Any, eid: str, run: str, prefix: str, tags: Mapping[str, Any]) -> dict[str, Series]:
        """The tags' points by row name (the tag without ``prefix``), from the cache while TensorBoard has nothing
        newer for them."""
        version = tuple(sorted((t, int(ts.max_step), float(ts.max_wall_time)) for t, ts in tags.items()))
        key = (eid, run, prefix)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        out: dict[str, Series] = {}
        if tags:
            downsample = max(100, min(5_000, _POINTS // len(tags)))
            data = self._provider.read_scalars(ctx, experiment_id=eid, plugin_name=_SCALARS, downsample=downsample,
                                               run_tag_filter=provider.RunTagFilter(runs=[run], tags=list(tags)))
            for tag, points in data.get(run, {}).items():
                steps = np.fromiter((p.step for p in points), dtype=np.int64, count=len(points))
                values = np.fromiter((p.value for p in points), dtype=np.float64, count=len(points))
                order = np.argsort(steps, kind="stable")
                out[tag[len(prefix):]] = Series(steps[order], values[order])
        with self._lock:
            self._cache[key] = (version, out)
        return out

    def _layers(self, ctx: Any, eid: str, run: str) -> list[LayerInfo]:
        """The run's ``gradwatch/layers`` table (depth order and sizes); ``[]`` for a run without one."""
        for text in reversed(self._texts(ctx, eid, run, LAYERS_TAG)):
            layers = parse_layers_markdown(text)
            if layers:
                return layers
        return []

    def _texts(self, ctx: Any, eid: str, run: str, tag: str) -> list[str]:
        """The texts TensorBoard kept under ``tag`` (or ``tag/text_summary``, as ``add_text`` names it), by step."""
        listing = self._provider.list_tensors(ctx, experiment_id=eid, plugin_name=_TEXT,
                                              run_tag_filter=provider.RunTagFilter(runs=[run]))
        tags = [t for t in listing.get(run, {}) if t == tag or t.startswith(tag + "/")]
        if not tags:
            return []
        data = self._provider.read_tensors(ctx, experiment_id=eid, plugin_name=_TEXT, downsample=10_000,
                                           run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags))
        found = sorted((d.step, i, _text_of(d.numpy)) for t in tags for i, d in enumerate(data.get(run, {}).get(t, [])))
        return [text for _, _, text in found]


def _text_of(array: Any) -> str:
    """The text of a text summary's tensor (a string scalar or a list of strings, joined by lines)."""
    items = np.asarray(array).reshape(-1).tolist()
    return "\n".join(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in items)


def _arg(request: Any, name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise _BadRequest(f"missing query parameter {name!r}")
    return str(value)


def _metric(request: Any) -> Any:
    key = request.args.get("metric") or "grad_rms"
    if key not in METRICS:
        raise _BadRequest(f"unknown metric {key!r}; choose one of {', '.join(METRICS)}")
    return METRICS[key]


def _int_arg(request: Any, name: str) -> int | None:
    value = request.args.get(name)
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except ValueError:
        raise _BadRequest(f"query parameter {name}={value!r} is not a number") from None
