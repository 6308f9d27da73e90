"""How fast the GRADWATCH tab's heat-map route answers for a big run (a benchmark, not a test: it prints a table).

Writes a synthetic run of ``--layers`` layers over ``--steps`` training steps, logged every ``--every`` steps (the
per-layer gradient norm, max |grad| and update ratio, the global norm: what ``gradwatch.watch`` writes, through
gradwatch's own ``TensorBoardSink``, without training), starts ``tensorboard`` with the plugin on a free loopback
port, waits until it has loaded the run, and times ``/data/plugin/gradwatch/heatmap``: the first request (cold: the
plugin reads the scalars through TensorBoard's data provider) and the next ones (warm: its cache), plus a zoomed step
range and the depth profile. Goal: under 1 s.

    python benchmarks/plugin_route.py                      # 300 layers x 20,000 steps, logged every 10
    python benchmarks/plugin_route.py --every 1 --load-fast false

TensorBoard keeps 1,000 points per scalar tag by default (``--samples_per_plugin scalars=1000``); the table says how
many the route saw.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np


def write_run(root: Path, layers: int, steps: int, every: int) -> float:
    """The synthetic run: a vanishing input side (log10 RMS from -7 to -1 along the depth), an exploding stretch in
    layers 100-120 between 40% and 45% of the run; returns the seconds it took."""
    from gradwatch._dashboard import LayerInfo, RunInfo
    from gradwatch._sinks import TensorBoardSink

    start = time.perf_counter()
    names = [f"blocks.{i // 4}.fc{i % 4}" for i in range(layers)]
    sink = TensorBoardSink(log_dir=root / "big")
    rng = np.random.default_rng(0)
    depth = np.linspace(-7, -1, layers)
    logged = range(0, steps, every)
    for n, step in enumerate(logged):
        level = depth + 0.3 * rng.standard_normal(layers) + 0.5 * np.sin(step / steps * 6)
        if 0.40 * steps <= step < 0.45 * steps:
            level[100:120] += 4
        norms = 10.0 ** level * 32
        scalars = {f"gradwatch/grad_norm/{x}": float(v) for x, v in zip(names, norms, strict=True)}
        scalars.update({f"gradwatch/grad_max/{x}": float(v) * 3 for x, v in zip(names, norms, strict=True)})
        scalars.update({f"gradwatch/update_ratio/{x}": float(v) * 1e-2 for x, v in zip(names, norms, strict=True)})
        scalars["gradwatch/global/grad_norm"] = float(np.sqrt((norms ** 2).sum()))
        sink.write_scalars(step, scalars)
        if n == 0:
            sink.write_run_info(step, RunInfo(tuple(LayerInfo(x, "Linear", 1024) for x in names), tuple(scalars)))
    sink.close()
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        body = r.read()
    return time.perf_counter() - start, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=10, help="log every N steps (default 10)")
    parser.add_argument("--repeat", type=int, default=7, help="warm requests per route (default 7)")
    parser.add_argument("--load-fast", default="auto", choices=("auto", "true", "false"),
                        help="tensorboard --load_fast (default auto: the Rust data server when installed)")
    parser.add_argument("--samples", type=int, default=1000, help="--samples_per_plugin scalars=N (default 1000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        took = write_run(root, args.layers, args.steps, args.every)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"wrote {args.layers} layers x {args.steps:,} steps (logged every {args.every}: "
              f"{len(range(0, args.steps, args.every)):,} events, {size / 2**20:.0f} MiB) in {took:.1f} s")
        port = free_port()
        base = f"http://127.0.0.1:{port}/data/plugin/gradwatch"
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1", "--port",
               str(port), "--load_fast", args.load_fast, "--samples_per_plugin", f"scalars={args.samples}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            started = time.perf_counter()
            last_step = len(range(0, args.steps, args.every)) * args.every - args.every
            while True:
                try:
                    runs = json.loads(fetch(f"{base}/runs")[1])["runs"]
                    if runs and runs[0]["last_step"] >= last_step:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.perf_counter() - started > 1200:
                    raise SystemExit("tensorboard did not load the run")
                time.sleep(1)
            print(f"tensorboard (--load_fast {args.load_fast}) loaded it in {time.perf_counter() - started:.0f} s")
            rows = []
            routes = [("heatmap, whole run", "heatmap?run=big&metric=grad_rms&columns=1000"),
                      ("heatmap, update ratio", "heatmap?run=big&metric=update_ratio&columns=1000"),
                      ("heatmap, zoomed 40-46%", f"heatmap?run=big&metric=grad_rms&columns=1000"
                                                 f"&start={int(args.steps * 0.4)}&end={int(args.steps * 0.46)}"),
                      ("depth profile", f"profile?run=big&metric=grad_rms&step={args.steps // 2}"),
                      ("episodes", "episodes?run=big")]
            for name, route in routes:
                cold, body = fetch(f"{base}/{route}")
                warm = sorted(fetch(f"{base}/{route}")[0] for _ in range(args.repeat))
                data = json.loads(body)
                shape = (f"{len(data['rows'])} x {len(data['edges']) - 1}, {data['points_per_layer']} points/layer"
                         if "cells" in data else "")
                p90 = warm[min(len(warm) - 1, round(0.9 * (len(warm) - 1)))]
                rows.append((name, cold, statistics.median(warm), p90, len(body), shape))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{'route':<24} {'cold s':>7} {'warm median s':>14} {'warm p90 s':>11} {'bytes':>10}  "
          f"{'goal < 1 s':<10} cells")
    for name, cold, median, p90, nbytes, shape in rows:
        verdict = "met" if max(cold, p90) < 1 else "MISSED"
        print(f"{name:<24} {cold:>7.3f} {median:>14.3f} {p90:>11.3f} {nbytes:>10,}  {verdict:<10} {shape}")


if __name__ == "__main__":
    main()
