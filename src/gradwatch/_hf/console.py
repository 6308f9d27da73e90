"""gradwatch's console lines while the ``transformers.Trainer`` shows its tqdm progress bar.

A line written to stderr in the middle of a tqdm bar breaks it in two. While training runs with the bar on, the
``gradwatch`` logger gets a handler that writes through ``tqdm.write`` (which clears the bar, writes the line and draws
the bar again), unless the application has logging handlers of its own: then the lines go there, as always.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .._console import LOGGER, ConsoleHandler, ancestors_handle

__all__ = ["ProgressBarHandler", "route_around_progress_bar", "write_line"]


class ProgressBarHandler(logging.Handler):
    """Writes ``gradwatch: <line>`` through ``tqdm.write``, above the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(f"gradwatch: {record.getMessage()}", file=sys.stderr)
        except Exception:  # a closed stream must not stop training
            self.handleError(record)


def write_line(text: str, file: Any = None) -> None:
    """Write ``text`` above the tqdm progress bars (``tqdm.write``): the bar is cleared and drawn again below it."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]  # a dependency of transformers

    tqdm.write(text, file=file)


def route_around_progress_bar() -> ProgressBarHandler | None:
    """Add a ``ProgressBarHandler`` to the ``gradwatch`` logger, unless someone else handles its lines (a handler of
    its own other than gradwatch's console one, or the application's through propagation); remove it with
    ``LOGGER.removeHandler``. gradwatch's console handler is quiet while another handler is on the logger."""
    if any(not isinstance(h, ConsoleHandler) for h in LOGGER.handlers) or ancestors_handle():
        return None
    handler = ProgressBarHandler()
    LOGGER.addHandler(handler)
    return handler
