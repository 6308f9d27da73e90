"""The GRADWATCH tab in a real browser: Debian's chromium, headless, loads the tab from a TensorBoard server started
with the plugin, runs its ES module, and the DOM it leaves holds a heat map with one row per watched layer of the
run shown, in depth order, and the run's episodes. Skipped, with the reason, where no chromium can be had."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch
from test_tbplugin_server import TensorBoard

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
DEPTHS = {"shallow": 3, "deep": 9}  # hidden sigmoid layers: 4 and 10 Linear layers


def chromium() -> str:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium here (looked for /usr/bin/chromium, chromium, chromium-browser, google-chrome): "
                "install Debian's chromium (apt-get install chromium) to run the browser test")


def dump_dom(browser: str, url: str) -> str:
    """The DOM after the page's scripts ran (chromium's own headless mode, a fresh profile)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=90, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"chromium could not run here: {exc}")
    if done.returncode != 0 or not done.stdout:
        pytest.skip(f"chromium exited with status {done.returncode}: {done.stderr.decode(errors='replace')[-600:]}")
    return done.stdout.decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    browser = chromium()
    root: Path = tmp_path_factory.mktemp("tbbrowser")
    for run, depth in DEPTHS.items():
        torch.manual_seed(0)
        mods: list[nn.Module] = [nn.Linear(2, 4), nn.Sigmoid()]
        for _ in range(depth - 1):
            mods += [nn.Linear(4, 4), nn.Sigmoid()]
        model = nn.Sequential(*mods, nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        with gradwatch.watch(model, log_dir=root / run, optimizer=opt, every_n_steps=1, verbose=False,
                             thresholds=gradwatch.Thresholds(vanishing_patience=2)) as watcher:
            for step in range(12):
                opt.zero_grad()
                x = torch.randn(8, 2, generator=torch.Generator().manual_seed(step))
                model(x).pow(2).mean().backward()
                watcher.step()
                opt.step()
    with TensorBoard(root) as tb:  # TensorBoard's default data loading, as a user runs it
        yield browser, tb.base


def _rows(dom: str) -> list[str]:
    match = re.search(r'<ol class="gw-rows" data-count="(\d+)">(.*?)</ol>', dom, re.S)
    assert match, "no heat-map row list in the tab's DOM: " + dom[-1500:]
    rows = [html.unescape(x) for x in re.findall(r'<li data-layer="([^"]*)"', match.group(2))]
    assert len(rows) == int(match.group(1))
    return rows


@pytest.mark.parametrize("run", list(DEPTHS))
def test_the_tab_renders_one_heatmap_row_per_layer(server, run):
    browser, base = server
    dom = dump_dom(browser, f"{base}/data/plugin_entry.html?name=gradwatch&run={run}")
    depth = DEPTHS[run]
    expected = [str(2 * i) for i in range(depth + 1)]  # Sequential indices of the Linear layers, input side first
    assert _rows(dom) == expected
    heat = re.search(r'<section class="gw-heat"([^>]*)>', dom)
    assert heat
    assert f'data-run="{run}"' in heat.group(1)
    assert f'data-rows="{depth + 1}"' in heat.group(1)
    assert 'data-columns="12"' in heat.group(1)  # 12 logged steps, one column each
    assert 'class="gw-msg"></div>' in dom  # no error message
    assert '<option value="grad_rms">gradient RMS</option>' in dom
    # the depth profile draws one line per run
    assert len(re.findall(r"<polyline[^>]*data-run=", dom)) == len(DEPTHS)


def test_the_deep_run_lists_its_vanishing_episode(server):
    browser, base = server
    dom = dump_dom(browser, f"{base}/data/plugin_entry.html?name=gradwatch&run=deep")
    body = re.search(r'<section class="gw-episodes">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert body, dom[-1500:]
    kinds = re.findall(r'<span class="gw-kind">([^<]*)</span>', body.group(1))
    assert "vanishing" in kinds
