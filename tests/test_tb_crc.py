"""The C checksum swapped into tensorboard's record writer: same values, same files, and it steps aside when asked."""

from __future__ import annotations

import os

import pytest
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer

from gradwatch import TensorBoardSink, _tb_crc


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo whatever an earlier test installed, and restore it afterwards."""
    monkeypatch.setattr(_tb_crc, "_installed", None)
    monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)


def test_a_sink_installs_the_c_checksum_with_tensorboards_values(fresh: None) -> None:
    pytest.importorskip("google_crc32c")
    TensorBoardSink(writer=_NullWriter())
    fast = record_writer.masked_crc32c
    assert fast is not pywrap_tensorflow.masked_crc32c
    for n in (0, 1, 3, 4, 8, 255, 4097):
        data = os.urandom(n)
        assert fast(data) == pywrap_tensorflow.masked_crc32c(data), n
    assert fast(bytearray(b"abc")) == pywrap_tensorflow.masked_crc32c(b"abc")


def test_the_event_file_is_byte_for_byte_the_one_tensorboard_writes(fresh: None, tmp_path) -> None:
    pytest.importorskip("google_crc32c")
    from tensorboard.compat.proto.event_pb2 import Event

    def write(fn: object) -> bytes:
        record_writer.masked_crc32c = fn
        path = tmp_path / f"{id(fn)}"
        with open(path, "wb") as f:
            w = record_writer.RecordWriter(f)
            for step in range(3):
                w.write(Event(step=step, wall_time=1.0, file_version="brain.Event:2").SerializeToString())
        return path.read_bytes()

    assert _tb_crc.install()
    fast = record_writer.masked_crc32c
    assert write(fast) == write(pywrap_tensorflow.masked_crc32c)


def test_opt_out_and_someone_elses_replacement_are_left_alone(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADWATCH_FAST_CRC", "0")
    assert not _tb_crc.install()
    assert record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c
    monkeypatch.delenv("GRADWATCH_FAST_CRC")
    monkeypatch.setattr(_tb_crc, "_installed", None)

    def theirs(data: bytes) -> int:
        return pywrap_tensorflow.masked_crc32c(data)

    monkeypatch.setattr(record_writer, "masked_crc32c", theirs)
    assert not _tb_crc.install()
    assert record_writer.masked_crc32c is theirs


class _NullWriter:
    def add_scalar(self, *a: object) -> None: ...
    def add_text(self, *a: object) -> None: ...
