"""The MLflow sink, against a real local file store: values are read back with ``MlflowClient`` and compared with
gradients set by hand and with what the TensorBoard sink wrote beside it."""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import gradwatch
from gradwatch import ConfigurationError, MLflowSink
from gradwatch._sinks import read_records
from sink_grads import set_grads, three_steps, two_layers

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A file store (MLflow 3 refuses one without MLFLOW_ALLOW_FILE_STORE) and a client on it."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    return uri, mlflow.MlflowClient(uri)


@pytest.fixture
def run_id(store):
    _, client = store
    return client.create_run(client.create_experiment("gradwatch-tests")).info.run_id


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)]


def test_known_gradients_and_a_nan_step_reach_mlflow_as_tensorboard_gets_them(store, run_id, tmp_path, monkeypatch):
    uri, client = store
    model = two_layers()
    sink = MLflowSink(run_id, tracking_uri=uri)
    batches = []
    log_batch = sink.client.log_batch

    def counting(*args, **kwargs):  # passes every call through to the real client
        batches.append(len(kwargs["metrics"]))
        return log_batch(*args, **kwargs)

    monkeypatch.setattr(sink.client, "log_batch", counting)
    tb = tmp_path / "tb"
    with warnings.catch_warnings(), gradwatch.watch(model, sinks=[sink], log_dir=tb) as watcher:
        warnings.simplefilter("ignore")
        for step in range(4):
            set_grads(model, nan=step == 2)
            watcher.step()

    assert len(batches) == 4  # one log_batch per step, with every tag of the step
    assert history(client, run_id, "gradwatch/grad_norm/0") == [(0, 5.0), (1, 5.0), (2, 5.0), (3, 5.0)]
    norms = history(client, run_id, "gradwatch/grad_norm/1")
    assert [s for s, _ in norms] == [0, 1, 2, 3]
    assert [v for s, v in norms if s != 2] == [13.0, 13.0, 13.0]
    assert math.isnan(dict(norms)[2])
    assert history(client, run_id, "gradwatch/global/grad_norm")[0] == (0, pytest.approx(math.sqrt(25 + 169)))
    assert history(client, run_id, "gradwatch/symptoms/nonfinite") == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 0.0)]

    # the same tags as the TensorBoard sink, with the same values (TensorBoard keeps float32)
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    events.Reload()
    keys = set(client.get_run(run_id).data.metrics)
    assert keys == {t for t in events.Tags()["scalars"] if t.startswith("gradwatch/")}
    assert sum(batches) == sum(len(events.Scalars(k)) for k in keys)
    for key in keys:
        tb_values = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in tb_values] == [s for s, _ in history(client, run_id, key)], key
        for (_, a), (_, b) in zip(tb_values, history(client, run_id, key), strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6), key

    # the episodes: a markdown artifact at the step the NaN starts (2) and at the step it ends (3), with records
    arts = sorted(f.path for f in client.list_artifacts(run_id, "gradwatch/alerts"))
    assert arts == ["gradwatch/alerts/step_000000002.md", "gradwatch/alerts/step_000000003.md"]
    start = mlflow.artifacts.load_text(f"{client.get_run(run_id).info.artifact_uri}/{arts[0]}")
    assert "**nonfinite** (error)" in start
    assert [(r["state"], r["kind"], r["where"], r["onset"]) for r in read_records(start)] == [
        ("start", "nonfinite", "1", 2)]
    assert client.get_run(run_id).data.tags["gradwatch/symptoms"] == "nonfinite"
    layers = mlflow.artifacts.load_text(f"{client.get_run(run_id).info.artifact_uri}/gradwatch/layers.md")
    assert "| 1 | `1` | Linear | 3 |" in layers


def test_steps_out_of_order_and_keys_mlflow_refuses(store, run_id):
    uri, client = store
    sink = MLflowSink(run_id, tracking_uri=uri)
    sink.write_scalars(5, {"gradwatch/grad_norm/blocks[0]:attn": 1.5})
    sink.write_scalars(3, {"gradwatch/grad_norm/blocks[0]:attn": 2.5})
    assert history(client, run_id, "gradwatch/grad_norm/blocks_0__attn") == [(5, 1.5), (3, 2.5)]


def test_a_module_name_mlflow_refuses_is_written_under_an_allowed_key(store, run_id):
    uri, client = store
    model = nn.ModuleDict({"in:proj": nn.Linear(2, 1)})
    model["in:proj"].weight.grad = torch.tensor([[3.0, 4.0]])
    model["in:proj"].bias.grad = torch.tensor([0.0])
    with gradwatch.watch(model, sinks=[MLflowSink(run_id, tracking_uri=uri)]) as watcher:
        watcher.step()
    assert history(client, run_id, "gradwatch/grad_norm/in_proj") == [(0, 5.0)]


def test_the_active_run_is_the_default_and_stays_open(store, monkeypatch):
    uri, client = store
    # Through the environment, not mlflow.set_tracking_uri(): restoring that with get_tracking_uri()'s answer would
    # pin MLflow 3's default (a sqlite file in the working directory) over every later test's MLFLOW_TRACKING_URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with mlflow.start_run() as active:
        model = two_layers()
        with gradwatch.watch(model, sinks=[MLflowSink()]) as watcher:
            set_grads(model)
            watcher.step()
        assert mlflow.active_run() is not None  # close() left it open
    run_id = active.info.run_id
    assert history(client, run_id, "gradwatch/grad_norm/1") == [(0, 13.0)]


def test_a_failing_store_disables_the_sink_and_training_goes_on(store, tmp_path):
    uri, _ = store
    model = two_layers()
    sink = MLflowSink("0" * 32, tracking_uri=uri)  # no such run: every write fails
    with gradwatch.watch(model, sinks=[sink], log_dir=tmp_path / "tb") as watcher, \
            pytest.warns(gradwatch.GradWatchWarning, match=r"MLflowSink.*disabled"):
        reports = three_steps(model, watcher)
    report = reports[-1]
    assert report.layers["1"].grad_norm == pytest.approx(13.0)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("gradwatch/grad_norm/1")] == [0, 1, 2]


def test_bad_arguments_name_the_way_out(store, monkeypatch):
    assert mlflow.active_run() is None
    with pytest.raises(ConfigurationError, match=r"mlflow.start_run"):
        MLflowSink()
    with pytest.raises(ConfigurationError, match="give a run id"):
        MLflowSink(42)
    with pytest.raises(ConfigurationError, match="tracking_uri"):
        MLflowSink("abc", tracking_uri=3)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install '\.\[mlflow\]'"):
        MLflowSink("abc")


def test_the_figure_is_an_artifact(store, run_id, tmp_path):
    pytest.importorskip("matplotlib")
    uri, client = store
    model = two_layers()
    with gradwatch.watch(model, sinks=[MLflowSink(run_id, tracking_uri=uri)], figure_every_n_steps=1) as watcher:
        set_grads(model)
        watcher.step()
    (art,) = client.list_artifacts(run_id, "gradwatch/figures")
    assert art.path == "gradwatch/figures/flow_step_000000000.png"
    local = client.download_artifacts(run_id, art.path, str(tmp_path))
    with open(local, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
