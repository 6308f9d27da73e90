"""gradwatch's TensorBoard plugin: the GRADWATCH tab.

TensorBoard finds it through the ``tensorboard_plugins`` entry point (``gradwatch._tbplugin:GradWatchLoader``) once
gradwatch is installed; ``tensorboard --logdir runs/`` then shows a GRADWATCH tab. The tab reads the scalars and texts
gradwatch already logs, through TensorBoard's data provider: it costs training nothing.
"""

from __future__ import annotations

from typing import Any

from tensorboard.plugins import base_plugin

__all__ = ["GradWatchLoader"]


class GradWatchLoader(base_plugin.TBLoader):  # type: ignore[misc]
    """Makes the plugin for TensorBoard (the entry point's target). The plugin module is imported only here, so a
    TensorBoard without gradwatch's dependencies skips the tab instead of failing to start."""

    def load(self, context: Any) -> Any:
        from ._plugin import GradWatchPlugin

        return GradWatchPlugin(context)
