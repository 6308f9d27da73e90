"""Wiring: the stages of one watcher, built from a model, a :class:`~gradwatch.WatchConfig` and the adapter's sinks.

Kept apart from :mod:`gradwatch._watcher`, which runs the stages; here they are only made and connected. Everything
that could be invalid was checked by the config, or is checked here before any side effect (the ``layers`` and
``activations`` globs against the model) — hooks are attached and files opened last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ._actions import AmpState
from ._advice import ModelTraits
from ._buffers import NormBuffers
from ._config import WatchConfig
from ._dashboard import DashboardLogger
from ._distributed import DistributedContext, detect
from ._evaluate import Evaluator
from ._fanout import Fanout
from ._hooks.probe import ActivationProbe
from ._layers import Layer, discover_layers, unwrap_model
from ._measure import Measure
from ._replaced import ReplacedCheck
from ._sinks import Sink, TensorBoardSink
from ._stats import StatsEngine
from ._updates import UpdateTracker, check_optimizers

__all__ = ["Stages", "assemble"]


@dataclass
class Stages:
    """The parts of one watcher (see :mod:`gradwatch._watcher` for how a step flows through them)."""

    layers: list[Layer]
    dist: DistributedContext | None  # None in one process
    probe: ActivationProbe | None  # None without activations or NaN-origin hooks
    engine: StatsEngine
    measure: Measure
    evaluate: Evaluator
    fanout: Fanout
    replaced: ReplacedCheck
    amp: AmpState
    updates: UpdateTracker | None = None  # None without an optimizer (or with sharded parameters)
    buffers: NormBuffers | None = None  # kept for skipped steps (on_nonfinite or on_spike "skip"), else None
    cleanups: list[Any] = field(default_factory=list)  # what the watcher removes on close (the optimizer hooks)


def assemble(model: nn.Module, c: WatchConfig, sinks: Sequence[Sink]) -> Stages:
    layers = _checked_layers(model, c)
    optimizers: tuple[Optimizer, ...] = c.optimizer or ()  # type: ignore[assignment]  # a tuple once validated
    check_optimizers(layers, optimizers)  # before any side effect, as the layers globs
    dist = _distributed(model, layers, c)
    writes = dist is None or dist.rank == 0
    probe = ActivationProbe(model, activations=c.activations, nan_origin=c.origin,
                            every_n_steps=c.every_n_steps if c.activation_every_n_steps is None
                            else c.activation_every_n_steps, thresholds=c.rules)
    track = _tracks_updates(optimizers, dist)
    later = _update_tags(layers, track)  # written from the second step on: the dashboard knows them first
    dashboard = DashboardLogger(layers, histogram_every_n_steps=c.histogram_every_n_steps, histograms=c.histograms,
                                figure_every_n_steps=c.figure_every_n_steps, later_tags=later)
    hooks = probe if probe.enabled else None
    engine = StatsEngine(layers, dist=dist)
    traits = ModelTraits.of(unwrap_model(model), depth=len(layers), optimizer=list(optimizers) or None,
                            clips=c.clipper is not None)
    amp = AmpState(patience=c.amp_overflow_patience)
    updates = _tracker(layers, optimizers, track)  # hooks on the optimizers: attached last
    return Stages(
        layers=layers, dist=dist, probe=hooks, engine=engine,
        measure=Measure(layers, engine, c.clipper, dashboard, hooks, updates),
        evaluate=Evaluator([layer.name for layer in layers], c.rules, traits, hooks, amp,
                           kinds=[layer.kind for layer in layers]),
        fanout=Fanout(_outputs(c, sinks, writes), dashboard, on_nonfinite=c.on_nonfinite, on_spike=c.on_spike,
                      speaks=writes),
        # FSDP and tensor parallelism swap parameter objects by design (sharded, unsharded): no check there.
        replaced=ReplacedCheck(engine.layers, active=dist is None or dist.kinds == ("replicated",)), amp=amp,
        updates=updates, cleanups=_removable(updates), buffers=_norm_buffers(model, c),
    )


def _checked_layers(model: nn.Module, c: WatchConfig) -> list[Layer]:
    """The watched layers; the clipper's layer globs (``AGC(exclude=...)``) checked against them, before any side
    effect."""
    layers = discover_layers(model, c.layers)
    if c.clipper is not None:
        c.clipper.check_layers([layer.name for layer in layers])
    return layers


def _distributed(model: nn.Module, layers: list[Layer], c: WatchConfig) -> DistributedContext | None:
    """Several processes (gradwatch._distributed): statistics reduced across ranks, rank zero writes alone."""
    dist = detect(model, layers) if c.distributed == "auto" else None
    if dist is not None:
        dist.check_config(clipper=c.clipper, histograms=c.histogram_every_n_steps is not None)
        dist.agree_on_layers([layer.name for layer in layers])
    return dist


def _outputs(c: WatchConfig, sinks: Sequence[Sink], writes: bool) -> list[Sink]:
    """The adapter's sinks, the configured ones, and a TensorBoard sink for ``log_dir``/``writer`` (rank zero only)."""
    if not writes:
        return []
    outputs = [*sinks, *c.sinks]
    if c.log_dir is not None or c.writer is not None:
        outputs.insert(0, TensorBoardSink(log_dir=c.log_dir, writer=c.writer))
    return outputs


def _norm_buffers(model: nn.Module, c: WatchConfig) -> NormBuffers | None:
    """The normalisation layers' running statistics, kept when a step may be skipped (so that a skipped step leaves
    the model exactly as before it); ``None`` otherwise or without such layers."""
    if "skip" not in (c.on_nonfinite, c.on_spike):
        return None
    buffers = NormBuffers(model)
    return buffers if buffers.enabled else None


def _tracks_updates(optimizers: Sequence[Optimizer], dist: DistributedContext | None) -> bool:
    """Whether the update ratios are measured. Replicated parameters (one process, DDP) step alike on every rank:
    each measures its own updates. Sharded ones (FSDP, tensor parallel) hold a piece per rank, whose update norms
    would need a reduction: not measured."""
    return bool(optimizers) and (dist is None or set(dist.kinds) <= {"ddp", "replicated"})


def _tracker(layers: Sequence[Layer], optimizers: Sequence[Optimizer], track: bool) -> UpdateTracker | None:
    return UpdateTracker(layers, optimizers) if track else None


def _update_tags(layers: Sequence[Layer], track: bool) -> list[str]:
    return [f"gradwatch/update_ratio/{layer.name}" for layer in layers] if track else []


def _removable(*parts: Any) -> list[Any]:
    """The stages that attach something the watcher removes on close."""
    return [p for p in parts if p is not None]
