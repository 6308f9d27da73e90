"""A C implementation of the checksum TensorBoard's event writer computes for every record.

``tensorboard``'s own event writer (used by ``torch.utils.tensorboard.SummaryWriter``, hence by gradwatch and by
Lightning's ``TensorBoardLogger``) checksums each record with a CRC-32C written in pure Python: about 0.3 ms per KiB,
on the writer's background thread but holding the GIL. A logged step of a 500-layer model is a 60 KiB record: 18 ms
of Python per step, which stalls the training thread (docs/performance.md). ``google-crc32c`` (a gradwatch
dependency) computes the same checksum in C in microseconds.

``install()`` swaps it in, once per process, only when the C implementation is present and gives the same value
as tensorboard's on a test record, and only if the function is still tensorboard's own (nobody else replaced it).
Files written are byte for byte the same. ``GRADWATCH_FAST_CRC=0`` in the environment leaves tensorboard untouched.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

__all__ = ["install"]

_installed: bool | None = None  # None: not tried yet


def _fast_masked_crc32c(value: Callable[[bytes], int]) -> Callable[[bytes], int]:
    def masked_crc32c(data: bytes) -> int:
        x = value(bytes(data))
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # tensorboard's masking, on 32 bits

    return masked_crc32c


def install() -> bool:
    """Use the C checksum in tensorboard's record writer. Returns whether it is in use; never raises."""
    global _installed
    if _installed is not None:
        return _installed
    _installed = False
    if os.environ.get("GRADWATCH_FAST_CRC", "1") == "0":
        return False
    try:
        with warnings.catch_warnings():  # google_crc32c warns on import when its C extension is missing
            warnings.simplefilter("ignore")
            import google_crc32c
        from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
        from tensorboard.summary.writer import record_writer
    except Exception:
        return False
    if getattr(google_crc32c, "implementation", None) != "c":
        return False  # its pure-Python fallback is no faster than tensorboard's
    if record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c:
        return False  # already replaced by someone else: leave it
    fast = _fast_masked_crc32c(google_crc32c.value)
    probe = bytes(range(256)) * 3 + b"gradwatch"
    if any(fast(d) != pywrap_tensorflow.masked_crc32c(d) for d in (b"", probe, probe[:7])):
        return False
    record_writer.masked_crc32c = fast
    _installed = True
    return True
