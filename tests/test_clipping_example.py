"""Smoke test of examples/spike_clipping.py: three TensorBoard runs, the spike clipped and reported in each."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "spike_clipping.py"


@pytest.mark.slow
def test_spike_clipping_example_runs_and_writes_three_runs(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = importlib.util.spec_from_file_location("spike_clipping", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with caplog.at_level(logging.ERROR, logger="gradwatch"):
            results = module.main(["--log-dir", str(tmp_path), "--steps", "40", "--spike-at", "32"])
    finally:
        torch.set_num_threads(threads)
    assert sorted(results) == ["fixed", "percentile", "zscore"]
    for name, r in results.items():
        assert r["spike reported"] == 1.0, name
        assert r["after clipping"] < r["norm at spike"] / 10, name
        acc = EventAccumulator(str(tmp_path / name))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"gradwatch/clip/threshold", "gradwatch/global/grad_norm_clipped", "gradwatch/symptoms/spike"} <= tags
        assert dict((e.step, e.value) for e in acc.Scalars("gradwatch/symptoms/spike"))[32] == 1.0
