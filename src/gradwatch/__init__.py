"""gradwatch: per-layer gradient diagnostics for PyTorch training, nearly free.

Examples:
    >>> import torch, gradwatch
    >>> model = torch.nn.Linear(3, 1)
    >>> model(torch.ones(2, 3)).sum().backward()
    >>> with gradwatch.watch(model) as watcher:
    ...     report = watcher.step()
    >>> round(report.layers["__root__"].grad_norm, 3)
    4.0
"""

from __future__ import annotations

from . import clipping
from ._config import WatchConfig
from ._errors import ConfigurationError, GradWatchError, NonFiniteGradientError
from ._hooks.probe import NanOrigin
from ._layers import ROOT_LAYER
from ._mlflow_sink import MLflowSink
from ._notebook import Report, report
from ._sinks import MemorySink, Sink, TensorBoardSink
from ._symptoms import LayerStats, Symptom
from ._thresholds import Thresholds
from ._wandb_sink import WandbSink
from ._watcher import GradWatchWarning, StepReport, Watcher, watch

__version__ = "0.1.0"
"""The installed version of gradwatch."""

__all__ = [
    "ROOT_LAYER",
    "ConfigurationError",
    "GradWatchError",
    "GradWatchWarning",
    "LayerStats",
    "MLflowSink",
    "MemorySink",
    "NanOrigin",
    "NonFiniteGradientError",
    "Report",
    "Sink",
    "StepReport",
    "Symptom",
    "TensorBoardSink",
    "Thresholds",
    "WandbSink",
    "WatchConfig",
    "Watcher",
    "__version__",
    "clipping",
    "report",
    "watch",
]
