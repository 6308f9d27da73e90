"""The GRADWATCH tab's HTTP routes, on a real TensorBoard server started with the plugin on a loopback port: the heat
map, the depth profile and the episodes it serves match the event files gradwatch wrote (read back with TensorBoard's
``EventAccumulator``). The empty log directory, an unknown run or metric and a file cut mid-record are answered with a
message, never a server error. The server is stopped whatever happens; the test is skipped, with the reason, when
TensorBoard cannot start here."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._sinks import read_records

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS = 20
NAN_STEP, NAN_LAYER = 7, "4"
RUNS = ("plain", "wide")
LAYERS = ["0", "2", "4", "6", "8", "10", "12"]  # the Linear layers of the sigmoid stack, input side first


def sigmoid_stack(width: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(6):
        mods += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*mods, nn.Linear(width, 1))


def write_logs(root: Path) -> None:
    """Two gradwatch runs of a 7-layer sigmoid stack (every step, 20 steps, update ratios, activations), a NaN
    planted in layer '4' of run 'plain' at step 7; and a run of someone else's scalars."""
    for run, width in zip(RUNS, (4, 6), strict=True):
        torch.manual_seed(0)
        model = sigmoid_stack(width)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        thresholds = gradwatch.Thresholds(vanishing_patience=2)
        with gradwatch.watch(model, log_dir=root / run, optimizer=opt, every_n_steps=1, thresholds=thresholds,
                             activations=True, on_nonfinite="warn", verbose=False) as watcher:
            for step in range(STEPS):
                opt.zero_grad()
                x = torch.randn(16, width, generator=torch.Generator().manual_seed(step))
                loss = (model(x) - x[:, :1]).pow(2).mean()
                loss.backward()
                planted = run == "plain" and step == NAN_STEP
                if planted:
                    model[int(NAN_LAYER)].weight.grad[0, 0] = float("nan")
                watcher.step(loss=loss)
                if not planted:
                    opt.step()
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(root / "not_gradwatch")) as writer:
        for step in range(3):
            writer.add_scalar("loss", 1.0 / (step + 1), step)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(base: str, path: str, **params: Any) -> tuple[int, Any]:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class TensorBoard:
    """``tensorboard --logdir ROOT`` on a free loopback port, as a context manager; ``skip`` when it cannot start."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1",
                    "--port", str(self.port), "--reload_interval", "1", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TensorBoard:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            pytest.skip(f"tensorboard cannot start: {exc}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace")[-800:] if self.proc.stdout else ""
                self.__exit__()
                pytest.skip(f"tensorboard exited with status {self.proc.returncode} before serving: {out}")
            try:
                status, runs = get(self.base, "/data/plugin/gradwatch/runs")
                if status == 200 and runs["runs"]:
                    return self
            except (urllib.error.URLError, ConnectionError, ValueError):
                pass
            time.sleep(0.3)
        self.__exit__()
        pytest.skip("tensorboard did not list the gradwatch runs on 127.0.0.1 within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tbplugin")
    write_logs(root)
    return root


@pytest.fixture(scope="module")
def server(logs):
    with TensorBoard(logs, "--load_fast", "false") as tb:
        yield tb.base


def event_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def event_alerts(run_dir: Path) -> list[dict[str, Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    out = []
    for e in acc.Tensors("gradwatch/alerts"):
        out.extend(read_records(tensor_util.make_ndarray(e.tensor_proto).reshape(-1)[0].decode()))
    return out


def log_rms(norm: float, numel: int) -> float | str:
    if math.isnan(norm):
        return "nan"
    return round(math.log10(norm / math.sqrt(numel)), 3)


def test_the_tab_is_listed_as_an_iframed_es_module(server):
    status, listing = get(server, "/data/plugins_listing")
    assert status == 200
    assert listing["gradwatch"]["enabled"] is True
    assert listing["gradwatch"]["loading_mechanism"] == {"type": "IFRAME",
                                                         "module_path": "/data/plugin/gradwatch/index.js"}
    with urllib.request.urlopen(f"{server}/data/plugin/gradwatch/index.js", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert b"export async function render()" in r.read()


def test_runs_lists_the_gradwatch_runs_only(server):
    status, body = get(server, "/data/plugin/gradwatch/runs")
    assert status == 200
    assert body["message"] is None
    assert [r["name"] for r in body["runs"]] == list(RUNS)  # not 'not_gradwatch'
    plain = body["runs"][0]
    assert plain["layers"] == 7
    assert plain["sizes"] is True
    assert plain["last_step"] == STEPS - 1
    assert {"grad_rms", "grad_max", "update_ratio", "param_rms", "act_mean", "act_saturated_frac"} <= set(
        plain["metrics"])


def test_heatmap_cells_are_the_logged_values_in_depth_order(server, logs):
    scalars = event_scalars(logs / "plain")
    numel = {name: 4 * 4 + 4 for name in LAYERS[:-1]} | {LAYERS[-1]: 4 + 1}
    status, hm = get(server, "/data/plugin/gradwatch/heatmap", run="plain", metric="grad_rms", columns=1000)
    assert status == 200
    assert hm["rows"] == LAYERS
    assert hm["depth_order"] is True
    assert hm["edges"] == list(range(STEPS + 1))  # one column per logged step
    assert hm["label"].startswith("log10 gradient RMS")
    for r, name in enumerate(LAYERS):
        expected = [log_rms(scalars[f"gradwatch/grad_norm/{name}"][s], numel[name]) for s in range(STEPS)]
        got = hm["cells"][r]
        for s in range(STEPS):
            if expected[s] == "nan":
                assert got[s] == "nan", (name, s)
            else:
                assert got[s] == pytest.approx(expected[s], abs=1.5e-3), (name, s)
    assert hm["cells"][LAYERS.index(NAN_LAYER)][NAN_STEP] == "nan"


def test_heatmap_downsamples_to_the_largest_value_of_each_column(server, logs):
    scalars = event_scalars(logs / "wide")
    status, hm = get(server, "/data/plugin/gradwatch/heatmap", run="wide", metric="grad_max", columns=4)
    assert status == 200
    assert hm["edges"] == [0, 5, 10, 15, 20]
    for r, name in enumerate(LAYERS):
        series = scalars[f"gradwatch/grad_max/{name}"]
        for c in range(4):
            top = max(series[s] for s in range(5 * c, 5 * c + 5))
            assert hm["cells"][r][c] == pytest.approx(math.log10(top), abs=1.5e-3)
    # a zoomed step range: one column per step of it
    status, zoom = get(server, "/data/plugin/gradwatch/heatmap", run="wide", metric="grad_max", start=5, end=9)
    assert zoom["edges"] == [5, 6, 7, 8, 9, 10]
    assert zoom["cells"][0][0] == pytest.approx(math.log10(scalars["gradwatch/grad_max/0"][5]), abs=1.5e-3)


def test_linear_metrics_and_module_rows(server, logs):
    scalars = event_scalars(logs / "plain")
    status, hm = get(server, "/data/plugin/gradwatch/heatmap", run="plain", metric="act_saturated_frac")
    assert status == 200
    assert hm["rows"] == ["1", "3", "5", "7", "9", "11"]  # the Sigmoid modules, between the layers
    assert hm["log"] is False
    assert hm["cells"][0][0] == pytest.approx(scalars["gradwatch/act_saturated_frac/1"][0], abs=1e-4)


def test_profile_is_the_depth_profile_at_a_step(server, logs):
    scalars = event_scalars(logs / "wide")
    status, p = get(server, "/data/plugin/gradwatch/profile", run="wide", metric="update_ratio", step=10)
    assert status == 200
    assert p["step"] == 10
    assert p["rows"] == LAYERS
    expected = [math.log10(scalars[f"gradwatch/update_ratio/{name}"][10]) for name in LAYERS]
    assert p["values"] == pytest.approx(expected, abs=1.5e-3)
    assert np.argmin(p["values"]) < np.argmax(p["values"])  # the sigmoid stack starves its input side


def test_episodes_match_the_alert_records(server, logs):
    records = [r for r in event_alerts(logs / "plain") if "episode" in r]
    status, body = get(server, "/data/plugin/gradwatch/episodes", run="plain")
    assert status == 200
    latest = {r["episode"]: r for r in records}
    assert len(body["episodes"]) == len(latest) >= 2
    nonfinite = [e for e in body["episodes"] if e["kind"] == "nonfinite"]
    assert [(e["layers"], e["onset"]) for e in nonfinite] == [([NAN_LAYER], NAN_STEP)]
    assert {(e["kind"], e["onset"], e["end"]) for e in body["episodes"]} == {
        (r["kind"], r["onset"], r["end"]) for r in latest.values()}
    assert all(e["advice"] for e in body["episodes"] if e["kind"] == "vanishing")


@pytest.mark.parametrize(("params", "needle"), [
    ({"run": "nope"}, "no run 'nope'"),
    ({"run": "plain", "metric": "bogus"}, "unknown metric 'bogus'"),
    ({}, "missing query parameter 'run'"),
    ({"run": "plain", "start": "x"}, "start='x' is not a number"),
])
def test_bad_requests_are_answered_with_the_reason(server, params, needle):
    status, body = get(server, "/data/plugin/gradwatch/heatmap", **params)
    assert status == 400
    assert needle in body["error"]


def test_a_run_without_that_metric_gives_an_empty_map(server):
    status, hm = get(server, "/data/plugin/gradwatch/heatmap", run="not_gradwatch", metric="grad_rms")
    assert status == 200
    assert hm["rows"] == []
    assert hm["edges"] == []


# --- without a server: the same routes over TensorBoard's own data provider ----------------------------------------


def _client(logdir: Path) -> Any:
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from werkzeug import Response, test
    from werkzeug.routing import Map

    from gradwatch._tbplugin import GradWatchLoader

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    plugin = GradWatchLoader().load(base_plugin.TBContext(data_provider=provider, logdir=str(logdir)))
    apps = plugin.get_plugin_apps()
    del Map

    def app(environ: Any, start_response: Any) -> Any:
        handler = apps.get(environ["PATH_INFO"])
        return (handler or Response("not found", 404))(environ, start_response)

    return plugin, test.Client(app)


def test_an_empty_logdir_is_a_message_not_an_error(tmp_path):
    plugin, client = _client(tmp_path)
    assert plugin.is_active() is False
    response = client.get("/runs")
    assert response.status_code == 200
    body = json.loads(response.data)
    assert body["runs"] == []
    assert "No gradwatch data" in body["message"]


def test_a_run_cut_mid_record_is_read_up_to_the_cut(logs, tmp_path):
    (run,) = [p for p in (logs / "plain").iterdir() if p.name.startswith("events")]
    data = run.read_bytes()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / run.name).write_bytes(data[: len(data) * 2 // 3] + b"\x07\x00")  # a torn last record
    plugin, client = _client(tmp_path)
    assert plugin.is_active() is True
    response = client.get("/heatmap?run=plain&metric=grad_rms")
    assert response.status_code == 200
    hm = json.loads(response.data)
    assert hm["rows"] == LAYERS
    assert 0 < len(hm["edges"]) - 1 < STEPS
