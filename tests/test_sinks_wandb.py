"""The W&B sink, on real offline runs: values are read back from the run's own ``.wandb`` file (its records), and
compared with gradients set by hand and with what the TensorBoard sink wrote beside it."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradwatch
from gradwatch import ConfigurationError, WandbSink
from sink_grads import set_grads, three_steps, two_layers

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402  (after the skip: wandb is an optional dependency)

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc32c, length, type) framed records


def wandb_records(path: Path):
    """The ``Record`` protobufs of a ``.wandb`` file, in order (FULL, or FIRST + MIDDLE... + LAST fragments)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""  # the 7-byte file header: ":W&B", magic, version
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):  # still being written
            return
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield wandb_internal_pb2.Record.FromString(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        else:
            yield wandb_internal_pb2.Record.FromString(pending + chunk)
            pending = b""


def history(run_dir: Path) -> list[dict]:
    """Every history row the run wrote, as ``{key: value}`` (NaN and Inf as floats)."""
    (path,) = run_dir.glob("run-*.wandb")
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            row: dict = {}
            for item in record.history.item:
                *outer, last = [item.key] if item.key else list(item.nested_key)
                node = row
                for key in outer:  # a table's reference arrives as nested keys (gradwatch/alerts, path)
                    node = node.setdefault(key, {})
                node[last] = json.loads(item.value_json)
            rows.append(row)
    return rows


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(row["gradwatch/step"], float(row[key])) for row in rows if key in row]


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="gradwatch-tests", dir=tmp_path)
    yield run
    run.finish()


def finished_dir(run) -> Path:
    """The run's folder once the run is finished and its ``.wandb`` file complete: ``finish()`` can return before the
    wandb-core service has written the file (seen with wandb 0.31), so wait for its ``exit`` record."""
    run_dir = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>/files
    run.finish()
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path)):
        assert time.monotonic() < deadline, f"{path} has no exit record a minute after run.finish()"
        time.sleep(0.05)
    return run_dir


def test_known_gradients_and_a_nan_step_reach_wandb_as_tensorboard_gets_them(run, tmp_path):
    model = two_layers()
    tb = tmp_path / "tb"
    with warnings.catch_warnings(), gradwatch.watch(model, sinks=[WandbSink(run)], log_dir=tb) as watcher:
        warnings.simplefilter("ignore")
        for step in range(4):
            set_grads(model, nan=step == 2)
            watcher.step()
    rows = history(finished_dir(run))

    assert series(rows, "gradwatch/grad_norm/0") == [(0, 5.0), (1, 5.0), (2, 5.0), (3, 5.0)]
    norms = series(rows, "gradwatch/grad_norm/1")
    assert [s for s, _ in norms] == [0, 1, 2, 3]
    assert [v for s, v in norms if s != 2] == [13.0, 13.0, 13.0]
    assert math.isnan(dict(norms)[2])
    assert series(rows, "gradwatch/global/grad_norm")[0] == (0, pytest.approx(math.sqrt(25 + 169)))
    assert series(rows, "gradwatch/symptoms/nonfinite") == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 0.0)]

    # the same tags as the TensorBoard sink, with the same values (TensorBoard keeps float32)
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    events.Reload()
    wandb_tags = {k for row in rows for k in row if k.startswith("gradwatch/")} - {"gradwatch/step"}
    scalar_tags = {k for k in wandb_tags if isinstance(next(r[k] for r in rows if k in r), (int, float, str))}
    assert scalar_tags == {t for t in events.Tags()["scalars"] if t.startswith("gradwatch/")}
    for tag in scalar_tags:
        tb_values = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in tb_values] == [s for s, _ in series(rows, tag)], tag
        for (_, a), (_, b) in zip(tb_values, series(rows, tag), strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6), tag

    # the episode table: the NaN starts at step 2 in layer 1 and ends at step 3
    (alerts,) = [row["gradwatch/alerts"] for row in rows if "gradwatch/alerts" in row][-1:]
    run_dir = next(tmp_path.glob("wandb/offline-run-*"))
    table = json.loads((run_dir / "files" / alerts["path"]).read_text())
    assert table["columns"] == ["step", "state", "kind", "severity", "where", "onset", "text"]
    assert [row[:6] for row in table["data"]] == [[2, "start", "nonfinite", "error", "1", 2],
                                                   [3, "end", "nonfinite", "error", "1", 2]]
    assert "NaN" in table["data"][0][6]
    layers = [row["gradwatch/layers"] for row in rows if "gradwatch/layers" in row]
    assert len(layers) == 1
    assert json.loads((run_dir / "files" / layers[0]["path"]).read_text())["data"] == [
        [0, "0", "Linear", 6], [1, "1", "Linear", 3]]


def test_a_step_written_after_a_later_one_is_kept(run):
    sink = WandbSink(run)
    sink.write_scalars(5, {"gradwatch/global/grad_norm": 1.5})
    sink.write_scalars(3, {"gradwatch/global/grad_norm": 2.5})  # W&B would drop log(..., step=3) after step 5
    run.log({"loss": 0.25}, step=10)  # the user's own explicit steps still work after gradwatch's rows
    sink.write_scalars(7, {"gradwatch/global/grad_norm": 3.5})
    rows = history(finished_dir(run))
    assert series(rows, "gradwatch/global/grad_norm") == [(5, 1.5), (3, 2.5), (7, 3.5)], rows
    assert [row["loss"] for row in rows if "loss" in row] == [0.25]


def test_a_finished_run_disables_the_sink_and_training_goes_on(run, tmp_path):
    model = two_layers()
    sink = WandbSink(run)
    run.finish()  # logging to it now raises
    with gradwatch.watch(model, sinks=[sink], log_dir=tmp_path / "tb") as watcher, \
            pytest.warns(gradwatch.GradWatchWarning, match="WandbSink.*disabled"):
        reports = three_steps(model, watcher)
    report = reports[-1]
    assert report.layers["1"].grad_norm == pytest.approx(13.0)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("gradwatch/grad_norm/1")] == [0, 1, 2]


def test_without_an_active_run_or_with_a_wrong_or_finished_run_the_error_says_what_to_do(run):
    run.finish()
    assert wandb.run is None
    with pytest.raises(ConfigurationError, match=r"wandb.init"):
        WandbSink()
    with pytest.raises(ConfigurationError, match="not a W&B run"):
        WandbSink("my-run")
    with pytest.raises(ConfigurationError, match=r"W&B refused .*finished"):
        WandbSink(run)


def test_without_wandb_installed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install '\.\[wandb\]'"):
        WandbSink()


def test_import_gradwatch_imports_neither_wandb_nor_mlflow():
    code = ("import sys, gradwatch; gradwatch.WandbSink, gradwatch.MLflowSink; "
            "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_histograms_and_the_figure_reach_wandb(run):
    pytest.importorskip("matplotlib")
    model = two_layers()
    with gradwatch.watch(model, sinks=[WandbSink(run)], histogram_every_n_steps=1, figure_every_n_steps=1) as watcher:
        set_grads(model)
        watcher.step()
    rows = history(finished_dir(run))
    (hist,) = [row["gradwatch/grad_hist/0"] for row in rows if "gradwatch/grad_hist/0" in row]
    assert hist["_type"] == "histogram"
    assert sum(hist["values"]) == 6  # layer 0's six gradient entries: 3, 0, 0, 0 (weight) and 0, 4 (bias)
    assert len(hist["bins"]) == len(hist["values"]) + 1
    assert hist["bins"][0] <= 0.0
    assert hist["bins"][-1] >= 4.0
    (flow,) = [row["gradwatch/flow"] for row in rows if "gradwatch/flow" in row]
    assert flow["_type"] == "image-file"
    assert flow["width"] > 0
    assert flow["height"] > 0
