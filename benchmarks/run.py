"""gradwatch's benchmark suite: overhead against the bare training step and against the peers, on CPU or GPU.

One process per run; every variant is measured on every workload, interleaved round by round (the variants' order
rotates each round), so that drift and other load on the machine hit them alike. Each round runs a block of steps
per variant (forward, backward, what the variant does, AdamW step); a variant's overhead is the median over rounds of
its per-step time minus the bare step's in the same round, also given as a multiple of ``clip_grad_norm_``'s.

Under the default cadence a run logs every step at first and few steps later: the suite times a logged step and a
step that logs nothing, and derives the default's cost over a run of 100,000 steps from the schedule. It also
measures the TensorBoard bytes a logged and an unlogged step write, per workload and for a 200-layer GPT-2, and
extrapolates them to a run by the same schedule.

    python benchmarks/run.py                 # the full suite on the best device (./dev bench)
    python benchmarks/run.py --quick         # a smoke run (seconds)
    python benchmarks/run.py --device cuda --out benchmarks/results-gpu.json

Prints markdown tables (paste them into docs/performance.md) and writes everything to JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from workloads import WORKLOADS, Workload, gpt2_deep

import gradwatch

try:  # the default cadence (issue 21): how many steps of a run log
    from gradwatch._cadence import WINDOW, WINDOW_CAPACITY, WINDOW_REFILL, scheduled_count
except ImportError:  # an older gradwatch: every step logs
    WINDOW = WINDOW_CAPACITY = 0
    WINDOW_REFILL = 1

    def scheduled_count(steps: int) -> int:
        return steps

#: The workloads the "default within +5% of the bare step" goal is for (the MLP's bare step is too short for a
#: percentage of it to mean much: its goal is the multiple of clip_grad_norm_'s).
DEFAULT_PCT_WORKLOADS = ("cnn", "transformer", "gpt2", "resnet")
#: A run of this many steps is what the default configuration's derived cost and event bytes are for.
RUN_STEPS = 100_000
#: The share of a healthy run's steps that log under the default cadence (no symptom episode).
LOGGED_SHARE = scheduled_count(RUN_STEPS) / RUN_STEPS
#: At most this many window steps per run: the budget's capacity and its refill (gradwatch._cadence).
WINDOW_STEPS_MAX = WINDOW_CAPACITY + RUN_STEPS // WINDOW_REFILL if WINDOW_CAPACITY else 0
#: The late step the "a step that logs nothing" variants start from: one the default cadence does not log.
LATE_STEP = 1_000_001

GOALS = {
    "cpu_default_pct": 5.0,  # CPU, default configuration over a run: <= +5% over the bare step
    "cpu_unlogged_vs_clip": 1.2,  # CPU, a step that logs nothing: <= 1.2x clip_grad_norm_'s overhead
    "cpu_default_vs_clip": 1.5,  # CPU, default configuration over a run: <= 1.5x clip_grad_norm_'s overhead
    "event_mb_per_100k_200_layers": 50.0,  # event files of a 200-layer model, default options, per 100,000 steps
    "gpu_default_pct": 2.0,
    "gpu_clip_pct": 2.5,
    "gpu_nan_origin_pct": 10.0,
    "gpu_activations_pct": 3.0,  # activation statistics every 10 steps
    "host_ms_at_1000": 2.0,  # host-side step() at 1,000 parameter tensors
    "memory_pct": 1.0,  # extra memory <= 1% of the gradient bytes
}


# ----------------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """One way of running the step. ``make(model, log_dir, optimizer)`` returns ``(after_backward, close)`` or raises
    ``Unavailable``; ``context`` wraps forward and backward (``detect_anomaly``)."""

    name: str
    label: str
    make: Callable[[nn.Module, str, torch.optim.Optimizer], tuple[Callable[[], None], Callable[[], None]]]
    context: Callable[[], Any] = contextlib.nullcontext
    kind: str = "gradwatch"  # "bare", "gradwatch" or "peer"


class Unavailable(Exception):
    """The feature this variant measures is not in this gradwatch (another issue's work)."""


def _nothing() -> None:
    return None


Hooks = tuple[Callable[[], None], Callable[[], None]]  # (after_backward, close)
Make = Callable[[nn.Module, str, torch.optim.Optimizer], Hooks]


def _bare(model: nn.Module, log_dir: str, opt: torch.optim.Optimizer) -> Hooks:
    return _nothing, _nothing


def _gradwatch(*, late: bool = False, ratios: bool = False, **kwargs: Any) -> Make:
    """A watcher with ``kwargs``. Each block starts a fresh one at step 0, which the default cadence logs (the first
    200 steps log, as an episode's window does); ``late``: its steps are numbered from ``LATE_STEP``, steps of a
    long run that the default cadence does not log. ``ratios``: the update ratios of the benchmark's optimizer."""
    def make(model: nn.Module, log_dir: str, opt: torch.optim.Optimizer) -> Hooks:
        params = inspect.signature(gradwatch.watch).parameters
        missing = set(kwargs) - set(params)
        if ratios and "optimizer" not in params:
            missing.add("optimizer")
        if late and "every_n_steps" in params and params["every_n_steps"].default is not None:
            missing.add("a default cadence (every_n_steps=None)")
        if missing:  # an option this gradwatch does not have yet
            raise Unavailable(f"watch() has no {sorted(missing)}")
        options = {k: (v() if callable(v) else v) for k, v in kwargs.items()}
        watcher = gradwatch.watch(model, log_dir=log_dir, **options, **({"optimizer": opt} if ratios else {}))
        count = iter(range(LATE_STEP, LATE_STEP + 10**6))

        def after_backward() -> None:
            watcher.step(global_step=next(count)) if late else watcher.step()

        return after_backward, watcher.close
    return make


def _clipper(name: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        cls = getattr(gradwatch.clipping, name, None)
        if cls is None:
            raise Unavailable(f"gradwatch.clipping.{name} does not exist here")
        return cls(*args, **kwargs)
    return build


def _item_loop(model: nn.Module, log_dir: str, opt: torch.optim.Optimizer) -> Hooks:
    params = [p for p in model.parameters() if p.requires_grad]

    def after_backward() -> None:
        [p.grad.norm().item() for p in params if p.grad is not None]  # one host sync per tensor

    return after_backward, _nothing


def _lightning_grad_norm(model: nn.Module, log_dir: str, opt: torch.optim.Optimizer) -> Hooks:
    try:
        from lightning.pytorch.utilities import grad_norm
    except ImportError:
        try:
            from pytorch_lightning.utilities import grad_norm
        except ImportError:
            raise Unavailable("neither lightning nor pytorch_lightning is installed") from None

    def after_backward() -> None:
        {k: float(v) for k, v in grad_norm(model, norm_type=2).items()}

    return after_backward, _nothing


def _clip_grad_norm(model: nn.Module, log_dir: str, opt: torch.optim.Optimizer) -> Hooks:
    params = [p for p in model.parameters() if p.requires_grad]

    def after_backward() -> None:
        nn.utils.clip_grad_norm_(params, 1.0)  # the returned norm stays on the device: no host sync

    return after_backward, _nothing


VARIANTS: list[Variant] = [
    Variant("bare", "bare step", _bare, kind="bare"),
    # "default": a step that logs (the default cadence's first 200 steps, an episode's window; every_n_steps=1)
    Variant("default", "gradwatch, a logged step (TensorBoard; first 200 steps, episode windows)", _gradwatch()),
    Variant("unlogged", "gradwatch default, a step that logs nothing (late in a run)", _gradwatch(late=True)),
    Variant("ratios", "+ update ratios (optimizer=), a logged step", _gradwatch(ratios=True)),
    Variant("ratios_unlogged", "+ update ratios, a step that logs nothing", _gradwatch(ratios=True, late=True)),
    Variant("clip", "+ norm clipping (clip=1.0)", _gradwatch(clip=1.0)),
    Variant("hist_every_step", "+ histograms every step", _gradwatch(histogram_every_n_steps=1)),
    Variant("activations", "+ activations (activations=True)", _gradwatch(activations=True)),
    # Hooks between samples: step 0 samples (in the untimed warm-up), the timed steps do not.
    Variant("activations_idle", "+ activations, a step that does not sample",
            _gradwatch(activations=True, activation_every_n_steps=10**9)),
    Variant("nan_origin", "+ NaN origin (nan_origin='every_step')", _gradwatch(nan_origin="every_step")),
    Variant("agc", "+ AGC clipper", _gradwatch(clip=_clipper("AGC"))),
    # warmup_steps=1: each block builds a fresh clipper, and its adaptive branch is what is timed
    Variant("zscore", "+ ZScoreClip", _gradwatch(clip=_clipper("ZScoreClip", warmup_steps=1))),
    Variant("percentile", "+ PercentileClip", _gradwatch(clip=_clipper("PercentileClip"))),
    Variant("layernorm", "+ LayerNormClip(1.0)", _gradwatch(clip=_clipper("LayerNormClip", 1.0))),
    Variant("item_loop", "peer: per-tensor .item() loop", _item_loop, kind="peer"),
    Variant("lightning", "peer: Lightning grad_norm -> floats", _lightning_grad_norm, kind="peer"),
    Variant("clip_grad_norm", "peer: clip_grad_norm_ alone", _clip_grad_norm, kind="peer"),
    Variant("detect_anomaly", "peer: torch.autograd.detect_anomaly", _bare,
            context=lambda: torch.autograd.detect_anomaly(check_nan=True), kind="peer"),
]
# Derived, not measured: histograms every 100 steps cost the default plus 1/100 of a histogram step's extra.
HIST_100 = "hist_every_100"
# Derived likewise: the default configuration over a healthy run of RUN_STEPS steps, LOGGED_SHARE of them logged.
DEFAULT_RUN = "default_run"
RATIOS_RUN = "ratios_run"
# Derived likewise: activations sampled every 10 steps cost the idle hooks 9 steps in 10 and a sampling step 1 in 10.
ACT_10 = "activations_every_10"


# ----------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # benchmark only: the timed block must include the device's work


def _train_step(w: Workload, opt: torch.optim.Optimizer, device: torch.device, variant: Variant,
                after_backward: Callable[[], None]) -> None:
    opt.zero_grad(set_to_none=True)
    with variant.context():
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                    else contextlib.nullcontext())
        with autocast:
            loss = w.loss(w.model, w.batch)
        loss.backward()
    after_backward()
    opt.step()


@dataclass
class Samples:
    per_step_ms: list[float] = field(default_factory=list)
    call_ms: list[float] = field(default_factory=list)  # the variant's own call inside the loop (median per block)
    peak_bytes: list[int] = field(default_factory=list)  # CUDA: the timed steps' peak
    own_bytes: list[int] = field(default_factory=list)  # CUDA: the peak inside after_backward() over what was live
    status: str = "ok"


def _own_peak(device: torch.device, after_backward: Callable[[], None], into: list[int]) -> Callable[[], None]:
    """``after_backward`` measured on CUDA: the peak it allocates over what is live after backward (the activations
    are freed by then, so the step's own peak may not show in the whole step's peak)."""
    def measured() -> None:
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        after_backward()
        _sync(device)
        into.append(torch.cuda.max_memory_allocated(device) - base)
    return measured


def _timed(after_backward: Callable[[], None], into: list[float]) -> Callable[[], None]:
    """``after_backward`` with its own wall time recorded (host time: on CUDA the device's work is not waited for)."""
    def timed() -> None:
        start = time.perf_counter()
        after_backward()
        into.append(time.perf_counter() - start)
    return timed


def _block(w: Workload, opt: torch.optim.Optimizer, device: torch.device, variant: Variant, steps: int,
           warmup: int, log_root: str) -> tuple[float, int | None, int | None, float]:
    """Per-step ms of a block, its peak memory (CUDA), the variant's own peak (CUDA) and the median ms of the
    variant's own call inside the loop."""
    log_dir = tempfile.mkdtemp(dir=log_root)
    after_backward, close = variant.make(w.model, log_dir, opt)
    own: list[int] = []
    calls: list[float] = []
    try:
        for i in range(warmup):
            last_warmup = device.type == "cuda" and i == warmup - 1
            _train_step(w, opt, device, variant, _own_peak(device, after_backward, own) if last_warmup
                        else after_backward)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timed = _timed(after_backward, calls)
        start = time.perf_counter()
        for _ in range(steps):
            _train_step(w, opt, device, variant, timed)
        _sync(device)
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    finally:
        close()
    return elapsed / steps * 1e3, peak, own[0] if own else None, statistics.median(calls) * 1e3


def run_workload(w: Workload, device: torch.device, variants: list[Variant], rounds: int, steps: int, warmup: int,
                 log_root: str, progress: Callable[[str], None]) -> dict[str, Samples]:
    opt = torch.optim.AdamW(w.model.parameters(), lr=1e-4)
    samples = {v.name: Samples() for v in variants}
    live = list(variants)
    def failed(v: Variant, exc: Exception) -> None:  # one variant's failure costs that variant, not the run
        if v.kind == "bare":
            raise exc
        samples[v.name].status = f"error ({type(exc).__name__}: {exc})"[:300]
        live.remove(v)
        progress(f"  {w.name}: {v.name} failed: {samples[v.name].status}")

    for v in variants:  # one untimed block each: imports, first allocations, and which features exist
        try:
            _block(w, opt, device, v, 1, 1, log_root)
        except Unavailable as exc:
            samples[v.name].status = f"n/a ({exc})"
            live.remove(v)
        except Exception as exc:  # any failure is recorded in the table and the JSON
            failed(v, exc)
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)]  # rotate: no variant always runs first
        for v in order:
            try:
                ms, peak, own, call = _block(w, opt, device, v, steps, warmup, log_root)
            except Exception as exc:
                failed(v, exc)
                continue
            samples[v.name].per_step_ms.append(ms)
            samples[v.name].call_ms.append(call)
            if peak is not None:
                samples[v.name].peak_bytes.append(peak)
            if own is not None:
                samples[v.name].own_bytes.append(own)
        progress(f"  {w.name}: round {r + 1}/{rounds}, bare {samples['bare'].per_step_ms[-1]:.1f} ms/step")
    return samples


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarise(samples: dict[str, Samples], grad_bytes: int) -> dict[str, dict[str, Any]]:
    bare = samples["bare"].per_step_ms
    out: dict[str, dict[str, Any]] = {}
    for name, s in samples.items():
        if s.status != "ok":
            out[name] = {"status": s.status}
            continue
        diffs = [a - b for a, b in zip(s.per_step_ms, bare, strict=True)]  # paired by round
        rel = [100.0 * (a - b) / b for a, b in zip(s.per_step_ms, bare, strict=True)]
        row: dict[str, Any] = {
            "status": "ok", "median_ms": statistics.median(s.per_step_ms),
            "p25_ms": _quantile(s.per_step_ms, 0.25), "p75_ms": _quantile(s.per_step_ms, 0.75),
            "overhead_ms": statistics.median(diffs), "overhead_pct": statistics.median(rel),
            "overhead_pct_p25": _quantile(rel, 0.25), "overhead_pct_p75": _quantile(rel, 0.75),
            "rounds": len(s.per_step_ms),
            # the variant's own call inside the training loop: its direct cost, free of the whole step's noise
            "call_ms": statistics.median(s.call_ms), "call_p25_ms": _quantile(s.call_ms, 0.25),
            "call_p75_ms": _quantile(s.call_ms, 0.75),
            "call_pct": 100.0 * statistics.median(s.call_ms) / statistics.median(bare),
        }
        if s.peak_bytes and samples["bare"].peak_bytes:
            extra = statistics.median([a - b for a, b in zip(s.peak_bytes, samples["bare"].peak_bytes, strict=True)])
            own = statistics.median(s.own_bytes) if s.own_bytes else 0
            row["peak_extra_bytes"] = extra  # the whole step's peak over the bare step's, same round
            row["own_peak_bytes"] = own  # the peak inside the variant's own work, over what was live before it
            # the goal reads the larger of the two: memory gradwatch adds whether or not it raises the step's peak
            row["peak_extra_pct_of_grads"] = 100.0 * max(extra, own) / grad_bytes
        out[name] = row
    for derived, every, often, rest in ((HIST_100, 100, "hist_every_step", "default"),
                                        (ACT_10, 10, "activations", "activations_idle"),
                                        (DEFAULT_RUN, 1 / LOGGED_SHARE, "default", "unlogged"),
                                        (RATIOS_RUN, 1 / LOGGED_SHARE, "ratios", "ratios_unlogged")):
        # One step in `every` costs what `often` costs every step, the others what `rest` costs.
        if out.get(often, {}).get("status") == "ok" and out.get(rest, {}).get("status") == "ok":
            o, r = out[often], out[rest]
            out[derived] = {"status": "derived", **{k: r[k] + (o[k] - r[k]) / every
                                                    for k in ("overhead_ms", "overhead_pct", "median_ms", "call_ms",
                                                              "call_pct")}}
    clip = out.get("clip_grad_norm", {})
    if clip.get("status") == "ok" and clip["overhead_ms"] > 0:
        for row in out.values():
            if row.get("status") in ("ok", "derived"):
                row["vs_clip_grad_norm"] = row["overhead_ms"] / clip["overhead_ms"]
    if clip.get("status") == "ok" and clip["call_ms"] > 0:
        for row in out.values():
            if row.get("status") in ("ok", "derived"):
                row["call_vs_clip_grad_norm"] = row["call_ms"] / clip["call_ms"]
    return out


# ----------------------------------------------------------------------------------------------- memory (CPU)
def cpu_step_allocations(w: Workload, kwargs: dict[str, Any]) -> int:
    """Bytes of every tensor that ops inside ``watcher.step()`` allocate (views and in-place results excluded).

    An upper bound on the extra peak memory of a step: it counts temporaries as if all were alive at once.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kw: Any = None) -> Any:
            out = func(*args, **(kw or {}))
            inputs = {a.untyped_storage().data_ptr() for a in _tensors((args, kw)) if a.layout == torch.strided}
            for t in _tensors(out):
                if t.layout == torch.strided and t.untyped_storage().data_ptr() not in inputs:
                    Count.total += t.untyped_storage().nbytes()
            return out

    with tempfile.TemporaryDirectory() as log_dir:
        watcher = gradwatch.watch(w.model, log_dir=log_dir, **kwargs)
        try:
            for _ in range(2):
                w.model.zero_grad(set_to_none=True)
                w.loss(w.model, w.batch).backward()
                if _ == 0:
                    watcher.step()  # the first step builds caches
            with Count():
                watcher.step()
        finally:
            watcher.close()
    return Count.total


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


# ----------------------------------------------------------------------------------------------- host-side scaling
def host_scaling(device: torch.device, sizes: list[int], steps: int) -> list[dict[str, Any]]:
    """Host time of ``watcher.step()`` against the number of parameter tensors (Linear(4, 4) layers: 2 each).

    Two configurations: the default (every step logged to TensorBoard) and a step that logs nothing
    (``every_n_steps`` large). Wall time and this thread's CPU time (less sensitive to other load on the machine).
    On CUDA the device work is not waited for: this is the host's share of the step.
    """
    rows = []
    for n in sizes:
        model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(max(n // 2, 1))]).to(device)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        row: dict[str, Any] = {"tensors": sum(1 for _ in model.parameters()), "layers": len(model)}
        for config, every in (("logged", 1), ("not_logged", 10**9)):
            with tempfile.TemporaryDirectory() as log_dir:
                watcher = gradwatch.watch(model, log_dir=log_dir, every_n_steps=every)
                for _ in range(3):
                    watcher.step()
                _sync(device)
                wall, cpu = [], []
                for _ in range(steps):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    watcher.step()
                    cpu.append((time.thread_time() - c0) * 1e3)
                    wall.append((time.perf_counter() - t0) * 1e3)
                _sync(device)
                watcher.close()
            row[f"{config}_wall_ms"] = statistics.median(wall)
            row[f"{config}_cpu_ms"] = statistics.median(cpu)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------- event bytes
def _dir_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def event_bytes(w: Workload, device: torch.device, logged: int = 20) -> dict[str, Any]:
    """Bytes the default options write to TensorBoard, measured from a real event file and extrapolated to a run of
    ``RUN_STEPS`` steps by the schedule.

    A fresh watcher (default options, ``log_dir``) trains ``logged + 2`` steps (all logged: the dense start); the
    event file's growth over the last ``logged`` of them (after the first step's one-off run info and layout) is the
    bytes of a logged step. Then ``logged`` steps late in a run (``global_step`` from ``LATE_STEP``, not logged)
    give the bytes of an unlogged step. Per run: the schedule's logged steps, the unlogged ones, and the first step's
    one-off bytes; ``windows_max`` adds the most the episode windows may write (their budget, all spent).
    """
    opt = torch.optim.SGD(w.model.parameters(), lr=0.0)  # the weights do not move: the same healthy step throughout
    with tempfile.TemporaryDirectory() as log_dir:
        watcher = gradwatch.watch(w.model, log_dir=log_dir)
        sizes = []
        for i in range(2 * logged + 2):
            opt.zero_grad(set_to_none=True)
            w.loss(w.model, w.batch).backward()
            if i < logged + 2:
                watcher.step()
            else:
                watcher.step(global_step=LATE_STEP + i)
            opt.step()
            if i in (1, logged + 1, 2 * logged + 1):
                watcher.flush()
                sizes.append(_dir_bytes(log_dir))
        layers = len(watcher.layer_names)
        watcher.close()
    per_logged = (sizes[1] - sizes[0]) / logged
    per_unlogged = (sizes[2] - sizes[1]) / logged
    first = sizes[0] - 2 * per_logged
    n_logged = scheduled_count(RUN_STEPS)
    run = first + n_logged * per_logged + (RUN_STEPS - n_logged) * per_unlogged
    return {"layers": layers, "per_logged_step": per_logged, "per_unlogged_step": per_unlogged,
            "logged_steps_per_run": n_logged, "run_bytes": run,
            "windows_max_bytes": WINDOW_STEPS_MAX * per_logged, "every_step_run_bytes": first + RUN_STEPS * per_logged}


def bytes_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"| workload | layers | bytes per logged step | per unlogged step | default options, {RUN_STEPS:,} steps "
             f"| + episode windows (at most) | every step logged (`every_n_steps=1`) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['layers']} | {_fmt_bytes(r['per_logged_step'])} | "
                     f"{_fmt_bytes(r['per_unlogged_step'])} | {_fmt_bytes(r['run_bytes'])} | "
                     f"+ {_fmt_bytes(r['windows_max_bytes'])} | {_fmt_bytes(r['every_step_run_bytes'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    from gradwatch import _tb_crc

    # tensorboard's own pure-Python record checksum (without google-crc32c's C one) costs 0.3 ms per KiB logged
    info["tensorboard_crc"] = "C (google-crc32c)" if _tb_crc.install() else "pure Python (tensorboard's)"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(Exception):
        import importlib.metadata as md
        info["gradwatch"] = md.version("gradwatch")
    return info


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def workload_table(result: dict[str, Any]) -> str:
    lines = [f"#### {result['name']}: {result['description']}",
             f"{result['params'] / 1e6:.2f}M parameters in {result['tensors']} tensors; gradients "
             f"{_fmt_bytes(result['grad_bytes'])}", "",
             "| variant | median ms/step | spread (p25–p75) | overhead ms | overhead % (p25–p75) | "
             "× clip_grad_norm_ | the call itself: ms, % of the bare step, × clip_grad_norm_'s | peak extra memory |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    share = f"{100 * LOGGED_SHARE:.2f}%"
    labels = {v.name: v.label for v in VARIANTS} | {
        HIST_100: "+ histograms every 100 steps (derived)", ACT_10: "+ activations every 10 steps (derived)",
        DEFAULT_RUN: f"**gradwatch default over {RUN_STEPS:,} steps** (derived: {share} of steps logged)",
        RATIOS_RUN: f"+ update ratios over {RUN_STEPS:,} steps (derived)"}
    order = [v.name for v in VARIANTS]
    order.insert(order.index("unlogged") + 1, DEFAULT_RUN)
    order.insert(order.index("ratios_unlogged") + 1, RATIOS_RUN)
    order.insert(order.index("hist_every_step") + 1, HIST_100)
    order.insert(order.index("activations_idle") + 1, ACT_10)
    for name in order:
        row = result["variants"].get(name)
        if row is None:
            continue
        if row["status"].startswith(("n/a", "error")):
            lines.append(f"| {labels[name]} | {row['status']} | | | | | | |")
            continue
        vs = f"{row['vs_clip_grad_norm']:.2f}×" if "vs_clip_grad_norm" in row and name != "bare" else ""
        call = "" if name == "bare" or "call_ms" not in row else (
            f"{row['call_ms']:.2f}, {row['call_pct']:.1f}%" + (f", {row['call_vs_clip_grad_norm']:.2f}×"
                                                              if "call_vs_clip_grad_norm" in row else ""))
        if row["status"] == "derived":
            lines.append(f"| {labels[name]} | {row['median_ms']:.2f} | | {row['overhead_ms']:+.2f} | "
                         f"{row['overhead_pct']:+.1f}% | {vs} | {call} | |")
            continue
        mem = ""
        if "peak_extra_bytes" in row:
            mem = (f"{_fmt_bytes(row['peak_extra_bytes'])} step peak, {_fmt_bytes(row['own_peak_bytes'])} own "
                   f"({row['peak_extra_pct_of_grads']:.2f}% of grads)²")
        elif name == "default" and "cpu_step_alloc_bytes" in result:
            b = result["cpu_step_alloc_bytes"]
            mem = f"≤ {_fmt_bytes(b)} ({100 * b / result['grad_bytes']:.2f}% of grads)¹"
        over = "—" if name == "bare" else f"{row['overhead_ms']:+.2f}"
        pct = "—" if name == "bare" else (f"{row['overhead_pct']:+.1f}% ({row['overhead_pct_p25']:+.1f}…"
                                           f"{row['overhead_pct_p75']:+.1f})")
        lines.append(f"| {labels[name]} | {row['median_ms']:.2f} | {row['p25_ms']:.2f}–{row['p75_ms']:.2f} | "
                     f"{over} | {pct} | {vs} | {call} | {mem} |")
    return "\n".join(lines)


def scaling_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| parameter tensors | layers | step() logged: wall ms | CPU ms | step() not logged: wall ms | CPU ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tensors']} | {r['layers']} | {r['logged_wall_ms']:.2f} | {r['logged_cpu_ms']:.2f} | "
                     f"{r['not_logged_wall_ms']:.2f} | {r['not_logged_cpu_ms']:.2f} |")
    return "\n".join(lines)


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 7 that this run measured, with the measured value and met / not met."""
    out = []
    dev = report["device"]
    for res in report["workloads"]:
        v = res["variants"]
        default = DEFAULT_RUN if DEFAULT_RUN in v else "default"
        if dev == "cpu" and v.get(default, {}).get("status") in ("ok", "derived"):
            out += _cpu_goals(res["name"], v, default)
        if dev == "cuda":
            for key, goal, label in (("default", "gpu_default_pct", "default"), ("clip", "gpu_clip_pct", "+ clipping"),
                                     ("nan_origin", "gpu_nan_origin_pct", "NaN origin"),
                                     (ACT_10, "gpu_activations_pct", "activations every 10 steps (derived)")):
                if v.get(key, {}).get("status") in ("ok", "derived") and res["name"] in ("transformer", "cnn"):
                    pct = v[key]["overhead_pct"]
                    out.append({"goal": f"GPU {label} ≤ +{GOALS[goal]:g}% ({res['name']})", "value": f"{pct:+.1f}%",
                                "met": pct <= GOALS[goal]})
            if v.get("default", {}).get("peak_extra_pct_of_grads") is not None:
                pct = v["default"]["peak_extra_pct_of_grads"]
                out.append({"goal": f"extra memory ≤ {GOALS['memory_pct']:g}% of gradient bytes ({res['name']})",
                            "value": f"{pct:.2f}%", "met": pct <= GOALS["memory_pct"]})
        if dev == "cpu" and "cpu_step_alloc_bytes" in res:
            pct = 100 * res["cpu_step_alloc_bytes"] / res["grad_bytes"]
            goal = f"extra memory ≤ {GOALS['memory_pct']:g}% of gradient bytes ({res['name']}, upper bound)"
            out.append({"goal": goal, "value": f"{pct:.2f}%", "met": pct <= GOALS["memory_pct"]})
    deep = report.get("event_bytes_200_layers")
    if deep:
        mb = (deep["run_bytes"] + deep["windows_max_bytes"]) / 1e6
        out.append({"goal": f"event files ≤ {GOALS['event_mb_per_100k_200_layers']:g} MB per {RUN_STEPS:,} steps, "
                            f"{deep['layers']} layers, default options (episode windows at most)",
                    "value": f"{mb:.1f} MB", "met": mb <= GOALS["event_mb_per_100k_200_layers"]})
    rows = {r["tensors"]: r for r in report.get("scaling", [])}
    if 1000 in rows:
        for config in ("not_logged", "logged"):
            ms = rows[1000][f"{config}_cpu_ms"]
            out.append({"goal": f"host step() ≤ {GOALS['host_ms_at_1000']:g} ms at 1,000 tensors ({config}, CPU time)",
                        "value": f"{ms:.2f} ms", "met": ms <= GOALS["host_ms_at_1000"]})
        if 5000 in rows:
            ratio = rows[5000]["not_logged_cpu_ms"] / rows[1000]["not_logged_cpu_ms"]
            out.append({"goal": "host step() grows linearly (5,000 vs 1,000 tensors: ≤ 6x)",
                        "value": f"{ratio:.1f}x", "met": ratio <= 6.0})
    return out


def _cpu_goals(name: str, v: dict[str, Any], default: str) -> list[dict[str, Any]]:
    """The CPU goals of one workload. Each is judged on the call's own time inside the loop (its direct cost, which
    the suite resolves to a few microseconds), the whole step's difference given beside it: on a shared machine that
    one varies by more than the overheads measured."""
    out = []
    row = v[default]
    whole = f"; whole step {row['overhead_pct']:+.1f}%"
    if "call_pct" in row and name in DEFAULT_PCT_WORKLOADS:
        out.append({"goal": f"CPU default ≤ +{GOALS['cpu_default_pct']:g}% ({name}, over a run)",
                    "value": f"{row['call_pct']:+.1f}% (the call itself{whole})",
                    "met": row["call_pct"] <= GOALS["cpu_default_pct"]})
    for key, goal, label in (("unlogged", "cpu_unlogged_vs_clip", "a step that logs nothing"),
                             (default, "cpu_default_vs_clip", "default over a run")):
        r = v.get(key, {})
        if "call_vs_clip_grad_norm" in r:
            ratio = r["call_vs_clip_grad_norm"]
            whole = f"; whole step {r['vs_clip_grad_norm']:.2f}×" if "vs_clip_grad_norm" in r else \
                "; whole step: clip_grad_norm_ within the noise"
            out.append({"goal": f"CPU {label} ≤ {GOALS[goal]:g}× clip_grad_norm_'s overhead ({name})",
                        "value": f"{ratio:.2f}× (the calls themselves{whole})", "met": ratio <= GOALS[goal]})
    return out


def select_device(arg: str) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; ``cuda:N`` becomes the
    current device, so that every stream and event is N's (``set_device`` refuses a device without an index)."""
    device = torch.device("cuda" if arg == "auto" and torch.cuda.is_available() else ("cpu" if arg == "auto" else arg))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    ap.add_argument("--workloads", default="mlp,cnn,transformer,gpt2,resnet",
                    help="comma-separated: mlp, cnn, transformer, gpt2, resnet (the last two need transformers)")
    ap.add_argument("--bytes", choices=("on", "off"), default="on", help="measure the event-file bytes per run of "
                    "each workload and of a 200-layer GPT-2 (default on)")
    ap.add_argument("--variants", default=None, help="comma-separated variant names (bare is always included): "
                    + ", ".join(v.name for v in VARIANTS))
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10 GPU, 12 CPU, quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant per round (default 10 GPU, 4 CPU)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per block (default 2: the first step's "
                    "one-off work, such as the dashboard layout, is processed by the second, untimed too)")
    ap.add_argument("--size", choices=("auto", "tiny", "cpu", "gpu"), default="auto",
                    help="workload sizes (auto: gpu sizes on CUDA, cpu sizes on the CPU; tiny for smoke tests)")
    ap.add_argument("--scaling", default=None, help="comma-separated tensor counts for the host-side step() scaling "
                    "(default 10,100,1000,5000; quick 10,100; 'none' to skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU (default 1: less noise "
                    "on a shared machine; 0 keeps torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 2 rounds, 1 step, small scaling")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results-<device>.json)")
    args = ap.parse_args(argv)

    device = select_device(args.device)
    size = args.size if args.size != "auto" else ("tiny" if args.quick else ("gpu" if device.type == "cuda" else "cpu"))
    rounds = args.rounds or (2 if args.quick else (10 if device.type == "cuda" else 12))
    steps = args.steps or (1 if args.quick else (10 if device.type == "cuda" else 4))
    threads = args.threads if args.threads is not None else 1
    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    scaling_sizes = ([] if args.scaling == "none" else
                     [int(x) for x in (args.scaling or ("10,100" if args.quick else "10,100,1000,5000")).split(",")])
    wanted = None if args.variants is None else {"bare", *args.variants.split(",")}
    variants = [v for v in VARIANTS if wanted is None or v.name in wanted]
    unknown = (wanted or set()) - {v.name for v in VARIANTS}
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {[v.name for v in VARIANTS]}")
    names = args.workloads.split(",")
    if any(n not in WORKLOADS for n in names):
        ap.error(f"unknown workload in {names}; choose from {list(WORKLOADS)}")

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    import warnings
    warnings.filterwarnings("ignore", category=gradwatch.GradWatchWarning)
    warnings.filterwarnings("ignore", message=".*[Aa]nomaly.*")
    import logging
    logging.getLogger("gradwatch").setLevel(logging.ERROR)

    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": device.type, "size": size, "rounds": rounds, "steps_per_round": steps, "warmup": args.warmup,
        "machine": machine(), "device_name": str(device), "workloads": [], "scaling": [],
    }
    out = Path(args.out or Path(__file__).resolve().parent / f"results-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each part: a run cut short (a time limit, a crash) keeps what it measured
        report["goals"] = goals(report)
        report["seconds"] = time.perf_counter() - started
        out.write_text(json.dumps(report, indent=1, default=str))

    with tempfile.TemporaryDirectory(prefix="gradwatch-bench-") as log_root:
        for name in names:
            torch.manual_seed(0)
            w = WORKLOADS[name](size, device)  # type: ignore[arg-type]
            params = [p for p in w.model.parameters() if p.requires_grad]
            grad_bytes = sum(p.numel() * p.element_size() for p in params)
            progress(f"{name}: {w.description}")
            samples = run_workload(w, device, variants, rounds, steps, args.warmup, log_root, progress)
            res: dict[str, Any] = {"name": name, "description": w.description, "params": sum(p.numel() for p in params),
                                   "tensors": len(params), "grad_bytes": grad_bytes,
                                   "variants": summarise(samples, grad_bytes),
                                   "raw_ms": {k: s.per_step_ms for k, s in samples.items()}}
            if device.type == "cpu":
                res["cpu_step_alloc_bytes"] = cpu_step_allocations(w, {})
            if args.bytes == "on":
                res["event_bytes"] = {"name": name, **event_bytes(w, device)}
            report["workloads"].append(res)
            save()
            del w
        if args.bytes == "on":
            with contextlib.suppress(RuntimeError):  # without transformers: no 200-layer GPT-2
                torch.manual_seed(0)
                deep = gpt2_deep(33, device)
                report["event_bytes_200_layers"] = {"name": "GPT-2, 33 blocks, d=16", **event_bytes(deep, device)}
                save()
        if scaling_sizes:
            progress(f"host-side step() scaling: {scaling_sizes} tensors")
            report["scaling"] = host_scaling(device, scaling_sizes, steps=10 if args.quick else 30)
    save()

    m = report["machine"]
    print(f"## gradwatch benchmarks: {device}, {m.get('gpu') or m.get('cpu_model', '?')} "
          f"({m['cpus']} CPUs, torch {m['torch']}, {m['torch_threads']} torch threads, TensorBoard checksum "
          f"{m['tensorboard_crc']})")
    print(f"`{report['command']}`: {rounds} interleaved rounds × {steps} timed steps per variant, medians; "
          f"overhead paired by round against the bare step; {report['seconds']:.0f} s in all.\n")
    for res in report["workloads"]:
        print(workload_table(res) + "\n")
    if device.type == "cpu" and report["workloads"]:
        print("¹ CPU: bytes allocated by the ops inside one `watcher.step()` (an upper bound on its extra peak memory);"
              " peak memory of the other variants is measured on CUDA only.\n")
    if device.type == "cuda" and report["workloads"]:
        print("² CUDA: the timed steps' peak over the bare step's in the same round, and the peak inside the variant's "
              "own work over what was live before it (one step); the % reads the larger.\n")
    byte_rows = [r["event_bytes"] for r in report["workloads"] if "event_bytes" in r]
    if report.get("event_bytes_200_layers"):
        byte_rows.append(report["event_bytes_200_layers"])
    if byte_rows:
        print(f"#### TensorBoard event bytes per {RUN_STEPS:,} steps (default options; measured per step, extrapolated "
              "by the schedule)\n")
        print(bytes_table(byte_rows) + "\n")
    if report["scaling"]:
        print("#### host-side `watcher.step()` against the number of parameter tensors (Linear(4, 4) layers)\n")
        print(scaling_table(report["scaling"]) + "\n")
    if report["goals"]:
        print("#### goals\n\n| goal | measured | |\n|---|---:|---|")
        for g in report["goals"]:
            print(f"| {g['goal']} | {g['value']} | {'met' if g['met'] else 'NOT met'} |")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
