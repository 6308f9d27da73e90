"""A real TensorBoard server, on a loopback port, shows what gradwatch wrote (plain watcher and Lightning callback):
checked through TensorBoard's HTTP data API. The server is stopped whatever happens; the test is skipped, with the
reason, when TensorBoard cannot start here."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*exists and is not empty.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

WATCH_RUN = "watch"
LIGHTNING_RUN = "lightning/version_0"
STEPS = 6


def _write_logs(root) -> gradwatch.MemorySink:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, log_dir=root / WATCH_RUN, sinks=[sink], clip=0.05, every_n_steps=1,
                         histogram_every_n_steps=2, figure_every_n_steps=3) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = model(torch.randn(16, 3)).pow(2).mean()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    pl = pytest.importorskip("lightning.pytorch")
    from lightning_fit import fit_tiny

    fit_tiny(pl, root, steps=STEPS, log_every_n_steps=1, name="lightning", version=0, histogram_every_n_steps=2,
             figure_every_n_steps=3)
    return sink


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **params: Any) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def _json(base: str, path: str, **params: Any) -> Any:
    return json.loads(_get(base, path, **params))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    sink = _write_logs(root)
    port = _free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1", "--port", str(port),
           "--load_fast", "false", "--reload_interval", "1"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        pytest.skip(f"tensorboard cannot start: {exc}")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        runs: list[str] = []
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace")[-800:] if proc.stdout else ""
                pytest.skip(f"tensorboard exited with status {proc.returncode} before serving: {out}")
            try:
                runs = _json(base, "/data/runs")
                if {WATCH_RUN, LIGHTNING_RUN} <= set(runs) and _json(base, "/data/plugin/images/tags").get(WATCH_RUN):
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            time.sleep(0.3)
        else:
            if not runs:
                pytest.skip("tensorboard did not answer on 127.0.0.1 within 40 s")
        yield base, sink
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_runs_and_the_custom_scalars_layout(server):
    base, _ = server
    assert {WATCH_RUN, LIGHTNING_RUN} <= set(_json(base, "/data/runs"))
    layout = _json(base, "/data/plugin/custom_scalars/layout")
    (category,) = [c for c in layout["category"] if c["title"] == "gradwatch"]
    titles = [c["title"] for c in category["chart"]]
    assert titles[:4] == ["global gradient norm before and after clipping, with the clip threshold",
                          "gradient norm by layer", "max |grad| by layer",
                          "symptoms by kind (layers affected per step)"]
    # a chart's regex, asked of TensorBoard, returns every layer's series with data (the callback's run too)
    by_layer = next(c for c in category["chart"] if c["title"] == "gradient norm by layer")["multiline"]["tag"][0]
    for run, layers in ((WATCH_RUN, ["0", "2"]), (LIGHTNING_RUN, ["net.0", "net.2"])):
        got = _json(base, "/data/plugin/custom_scalars/scalars", run=run, tag=by_layer)
        assert got["regex_valid"]
        assert set(got["tag_to_events"]) == {f"gradwatch/grad_norm/{n}" for n in layers}
        assert all(len(events) == STEPS for events in got["tag_to_events"].values())


def test_scalar_tags_steps_and_values(server):
    base, sink = server
    tags = _json(base, "/data/plugin/scalars/tags")
    for tag in ("gradwatch/grad_norm/0", "gradwatch/global/grad_norm_clipped", "gradwatch/clip/threshold",
                "gradwatch/symptoms/vanishing", "gradwatch/loss"):
        assert tag in tags[WATCH_RUN], tag
    assert "gradwatch/grad_norm/net.2" in tags[LIGHTNING_RUN]
    for tag in ("gradwatch/global/grad_norm", "gradwatch/grad_max/2"):
        events = _json(base, "/data/plugin/scalars/scalars", run=WATCH_RUN, tag=tag)
        assert [e[1] for e in events] == [s for s, _ in sink.series(tag)]
        assert [e[2] for e in events] == pytest.approx([v for _, v in sink.series(tag)], rel=1e-6)
    steps = [e[1] for e in _json(base, "/data/plugin/scalars/scalars", run=LIGHTNING_RUN,
                                 tag="gradwatch/global/grad_norm")]
    assert steps == list(range(STEPS))


def test_histograms(server):
    base, sink = server
    tags = _json(base, "/data/plugin/histograms/tags")
    assert {"gradwatch/grad_hist/0", "gradwatch/grad_hist/2"} <= set(tags[WATCH_RUN])
    assert "gradwatch/grad_hist/net.0" in tags[LIGHTNING_RUN]
    events = _json(base, "/data/plugin/histograms/histograms", run=WATCH_RUN, tag="gradwatch/grad_hist/0")
    assert [e[1] for e in events] == [0, 2, 4]
    for (_, step, buckets), (sink_step, hist) in zip(events, sink.histograms["gradwatch/grad_hist/0"], strict=True):
        assert step == sink_step
        assert sum(b[2] for b in buckets) == pytest.approx(3 * 8 + 8)  # every gradient entry of layer 0
        assert buckets[0][0] == pytest.approx(hist.min)
        assert buckets[-1][1] == pytest.approx(hist.max)


def test_flow_figure_images(server):
    base, _ = server
    for run in (WATCH_RUN, LIGHTNING_RUN):
        assert "gradwatch/flow" in _json(base, "/data/plugin/images/tags")[run]
        images = _json(base, "/data/plugin/images/images", run=run, tag="gradwatch/flow", sample=0)
        assert [i["step"] for i in images] == [0, 3]
        png = _get(base, "/data/plugin/images/individualImage?" + images[-1]["query"])
        assert png[:4] == b"\x89PNG"
