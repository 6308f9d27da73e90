"""A skipped step leaves the model exactly as before it: BatchNorm's running statistics included."""

from __future__ import annotations

import warnings

import torch
from torch import nn

import gradwatch


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2),
                         nn.BatchNorm1d(2))


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def _train(model, watcher, opt, batches):
    reports = []
    for x in batches:
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        report = watcher.step()
        if not report.skipped:
            opt.step()
        reports.append(report)
    return reports


def test_a_step_skipped_for_a_nan_batch_leaves_the_batchnorm_buffers_bit_identical():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    good = [torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    bad = good[0].clone()
    bad[3, 1, 2, 2] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watcher = gradwatch.watch(model, on_nonfinite="skip")
        _train(model, watcher, opt, good)
        before = _buffers(model)
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        (report,) = _train(model, watcher, opt, [bad])
    assert report.skipped
    after = _buffers(model)
    assert after.keys() == before.keys()
    for name in before:  # running_mean, running_var and num_batches_tracked, bit for bit
        assert torch.equal(after[name], before[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
    model.eval()
    assert torch.isfinite(model(good[1])).all()  # eval-mode outputs are not NaN
    model.train()
    reports = _train(model, watcher, opt, good[1:])  # training goes on, and moves the buffers again
    assert not any(r.skipped for r in reports)
    assert int(model[1].num_batches_tracked) == int(before["1.num_batches_tracked"]) + 2
    watcher.close()


def test_without_skip_the_buffers_are_not_kept_and_the_nan_reaches_them():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = torch.randn(8, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradwatch.watch(model, on_nonfinite="warn") as watcher:
            _train(model, watcher, opt, [bad])
    assert torch.isnan(model[1].running_mean).any()  # what "skip" protects against
