"""Take the screenshot of gradwatch's TensorBoard dashboard used in docs/dashboards.md.

It trains the demo's two XOR networks (10 sigmoid layers, without and with residual connections; the residual one
clipped at 0.3) under gradwatch, starts a real TensorBoard server on a loopback port, and photographs its
custom-scalars page with headless Chromium (Debian's ``chromium`` package: ``apt-get install -y chromium``).

usage:
    python scripts/screenshot_dashboard.py [--out docs/dashboard.png] [--log-dir DIR] [--page custom_scalars]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import torch
from torch import nn

import gradwatch
from gradwatch._demo import XorNet, xor_data


def train(log_dir: str, *, residual: bool, clip: float | None, steps: int = 1500) -> None:
    torch.manual_seed(0)
    model = XorNet(residual=residual)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = xor_data()
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=10, clip=clip, histogram_every_n_steps=100,
                         figure_every_n_steps=500) as watcher:
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            watcher.step(loss=loss)
            opt.step()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join("docs", "dashboard.png"))
    parser.add_argument("--log-dir", help="write the runs there (default: a temporary directory)")
    parser.add_argument("--page", default="custom_scalars", help="TensorBoard page (custom_scalars, images, ...)")
    parser.add_argument("--size", default="1400,1420", help="window size WIDTH,HEIGHT")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("headless Chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="gradwatch-dashboard-")
    train(os.path.join(log_dir, "plain"), residual=False, clip=None)
    train(os.path.join(log_dir, "residual-clip0.3"), residual=True, clip=0.3)
    port = free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", log_dir, "--host", "127.0.0.1",
                           "--port", str(port), "--load_fast", "false"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/data/runs", timeout=2) as r:
                    if len(json.loads(r.read())) >= 2:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        time.sleep(2)  # let the multiplexer finish reading
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={profile}", f"--window-size={args.size}",
                            "--virtual-time-budget=20000", f"--screenshot={os.path.abspath(args.out)}",
                            f"{base}/#{args.page}"], check=True, timeout=120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        tb.terminate()
        tb.wait(timeout=10)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KiB) from the runs in {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
