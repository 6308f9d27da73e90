"""The benchmark suite runs end to end (tiny sizes, one round) and writes its JSON, so that it cannot rot.

No timing is asserted: only that every variant was measured or marked n/a, and that the numbers are consistent.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _load_run():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gradwatch_bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_tables_and_writes_json(tmp_path, capsys):
    run = _load_run()
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        code = run.main(["--quick", "--device", "cpu", "--workloads", "mlp", "--rounds", "1", "--scaling", "10,40",
                         "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    assert "| bare step |" in printed
    assert f"| {next(v.label for v in run.VARIANTS if v.name == 'default')} |" in printed
    report = json.loads(out.read_text())
    (mlp,) = report["workloads"]
    assert mlp["tensors"] == sum(1 for _ in run.WORKLOADS["mlp"]("tiny", torch.device("cpu")).model.parameters())
    variants = mlp["variants"]
    assert set(variants) >= {v.name for v in run.VARIANTS}
    for name, row in variants.items():
        assert row["status"] in ("ok", "derived") or row["status"].startswith("n/a"), (name, row)
    bare, default = variants["bare"], variants["default"]
    assert bare["overhead_ms"] == 0.0
    assert default["overhead_ms"] == pytest.approx(default["median_ms"] - bare["median_ms"])  # one round: paired
    assert mlp["cpu_step_alloc_bytes"] > 0
    # each variant's own call, timed inside the loop: the bare step's is empty
    assert 0 <= bare["call_ms"] < default["call_ms"]
    assert variants["clip_grad_norm"]["call_vs_clip_grad_norm"] == pytest.approx(1.0)
    assert variants["default_run"]["call_ms"] == pytest.approx(
        variants["unlogged"]["call_ms"] + (default["call_ms"] - variants["unlogged"]["call_ms"]) * run.LOGGED_SHARE)
    # derived rows: one step in N costs the frequent variant's overhead, the others the rest's
    act, idle, act10 = variants["activations"], variants["activations_idle"], variants["activations_every_10"]
    assert act10["status"] == "derived"
    assert act10["overhead_ms"] == pytest.approx(idle["overhead_ms"] + (act["overhead_ms"] - idle["overhead_ms"]) / 10)
    hist, hist100 = variants["hist_every_step"], variants["hist_every_100"]
    assert hist100["overhead_pct"] == pytest.approx(
        default["overhead_pct"] + (hist["overhead_pct"] - default["overhead_pct"]) / 100)
    assert [r["tensors"] for r in report["scaling"]] == [10, 40]
    assert all(r["logged_wall_ms"] > 0 and r["not_logged_cpu_ms"] >= 0 for r in report["scaling"])
    assert any(g["goal"].startswith("CPU default") for g in report["goals"])


def test_step_allocation_count_sees_the_engine_temporaries():
    run = _load_run()
    torch.manual_seed(0)
    w = run.WORKLOADS["mlp"]("tiny", torch.device("cpu"))
    n_layers = sum(1 for m in w.model.modules() if isinstance(m, nn.Linear))
    # At least the two per-layer float64 vectors (sum of squares, max) of the engine are counted.
    assert run.cpu_step_allocations(w, {}) >= 2 * 8 * n_layers


def test_a_failing_variant_is_recorded_and_the_rest_of_the_run_goes_on(tmp_path, capsys, monkeypatch):
    run = _load_run()
    calls = {"n": 0}

    def flaky(model, log_dir, optimizer):  # works for the untimed first block, then breaks in the first timed round
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("CUDA error: out of memory (simulated)")
        return run._nothing, run._nothing

    broken = run.Variant("broken", "a variant that breaks", flaky, kind="peer")
    monkeypatch.setattr(run, "VARIANTS", [*run.VARIANTS, broken])
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        code = run.main(["--quick", "--device", "cpu", "--workloads", "mlp", "--rounds", "2", "--variants",
                         "default,broken", "--scaling", "none", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    variants = json.loads(out.read_text())["workloads"][0]["variants"]
    assert variants["broken"]["status"].startswith("error (RuntimeError: CUDA error: out of memory")
    assert variants["default"]["status"] == "ok"
    assert variants["default"]["rounds"] == 2
    assert "| a variant that breaks | error (RuntimeError" in capsys.readouterr().out


def test_device_selection_sets_only_an_indexed_cuda_device_as_current(monkeypatch):
    run = _load_run()
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run.select_device("auto") == torch.device("cuda")
    assert calls == []  # set_device("cuda") would raise
    assert run.select_device("cuda") == torch.device("cuda")
    assert calls == []
    assert run.select_device("cuda:1") == torch.device("cuda:1")
    assert calls == [torch.device("cuda:1")]
    assert run.select_device("cpu") == torch.device("cpu")
    assert len(calls) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run.select_device("auto") == torch.device("cpu")


def test_the_cuda_bookkeeping_runs_end_to_end_on_a_faked_cuda(tmp_path, capsys, monkeypatch):
    """No GPU here: torch.cuda's clock, memory and name calls are faked and the workloads stay on the CPU, so that the
    suite's CUDA-only branches (memory columns, own peak, GPU goals, footnote) run before a real GPU first sees them."""
    run = _load_run()
    allocated = {"now": 1000, "peak": 1000}

    def fake_allocated(device=None):
        allocated["now"] += 64  # something stays allocated after each call: a visible, growing own peak
        allocated["peak"] = max(allocated["peak"], allocated["now"])
        return allocated["now"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", fake_allocated)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: allocated.update(peak=0))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated["peak"] + 4096)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    if hasattr(torch, "accelerator"):
        # The tensors stay on the CPU, so no accelerator takes part. Under a CUDA build of torch the optimizers'
        # graph-capture check would otherwise see CUDA (the faked is_available) and initialise it for real
        # (torch.accelerator.current_stream()), which fails on a machine without a GPU.
        monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)

    def built_on_the_cpu(make):  # binds each workload's own factory
        return lambda size, device: make(size, torch.device("cpu"))

    on_cpu = {name: built_on_the_cpu(make) for name, make in run.WORKLOADS.items()}
    monkeypatch.setattr(run, "WORKLOADS", on_cpu)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = run.main(["--device", "cuda", "--size", "tiny", "--workloads", "cnn", "--rounds", "2", "--steps", "1",
                         "--variants", "default,clip,activations,activations_idle,nan_origin", "--scaling", "none",
                         "--bytes", "off", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cuda"
    assert report["machine"]["gpu"] == "Fake GPU"
    (cnn,) = report["workloads"]
    default = cnn["variants"]["default"]
    assert default["status"] == "ok"
    assert default["own_peak_bytes"] > 0
    assert "peak_extra_bytes" in default
    assert "cpu_step_alloc_bytes" not in cnn
    goals = {g["goal"] for g in report["goals"]}
    assert {"GPU default ≤ +2% (cnn)", "GPU + clipping ≤ +2.5% (cnn)", "GPU NaN origin ≤ +10% (cnn)",
            "GPU activations every 10 steps (derived) ≤ +3% (cnn)"} <= goals
    assert any(g.startswith("extra memory ≤ 1% of gradient bytes (cnn)") for g in goals)
    printed = capsys.readouterr().out
    assert "## gradwatch benchmarks: cuda, Fake GPU" in printed
    assert "own (" in printed
    assert "² CUDA" in printed
