"""The CPU fast path of the engine (small tensors reduced from one flat copy) against float64 references."""

import contextlib
import math
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import _reductions


def test_a_single_small_float64_gradient_is_measured_and_left_untouched():
    model = nn.Linear(3, 1, bias=False).double()
    model.weight.grad = torch.tensor([[-3.0, 4.0, 0.0]], dtype=torch.float64)
    with gradwatch.watch(model) as watcher:
        report = watcher.step()
    (stats,) = report.layers.values()
    assert stats.grad_norm == 5.0
    assert stats.grad_max == 4.0
    assert model.weight.grad.tolist() == [[-3.0, 4.0, 0.0]]  # the max |g| must not take abs() in place


def test_small_and_large_tensors_mixed_and_channels_last_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(100, 80))  # conv: small; linear weight 8,000 > 4,096
    model[0].to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model[1].weight.grad[3, 7] = -50.0
    with gradwatch.watch(model) as watcher:
        for _ in range(2):  # the second step reuses the cached parameter views
            report = watcher.step()
            for name, module in (("0", model[0]), ("1", model[1])):
                params = list(module.parameters())
                grad = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in params))
                param = math.sqrt(sum(p.detach().double().pow(2).sum().item() for p in params))
                gmax = max(p.grad.abs().max().item() for p in params)
                assert report.layers[name].grad_norm == pytest.approx(grad, rel=1e-6)
                assert report.layers[name].param_norm == pytest.approx(param, rel=1e-6)
                assert report.layers[name].grad_max == pytest.approx(gmax, rel=1e-6)
            with torch.no_grad():
                model[0].bias.mul_(3.0)  # parameters change in place between steps: the views see it
    assert report.layers["1"].grad_max == 50.0


def test_replaced_parameter_data_is_seen_by_the_parameter_norms():
    model = nn.Linear(2, 2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with gradwatch.watch(model) as watcher:
        (before,) = watcher.step().layers.values()
        assert before.param_norm > 0
        model.bias.data = torch.tensor([30.0, 40.0])
        model.weight.data = torch.zeros(2, 2)
        (after,) = watcher.step().layers.values()
        assert after.param_norm == pytest.approx(50.0)


def test_nan_in_a_small_tensor_and_inf_in_another_layer():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[0].bias.grad[1] = float("nan")
    model[1].weight.grad[0, 0] = float("inf")
    with gradwatch.watch(model) as watcher:
        report = watcher.step()
    assert report.layers["0"].nonfinite == "nan"
    assert report.layers["1"].nonfinite == "inf"
    assert math.isnan(report.layers["0"].grad_max)
    assert report.layers["1"].grad_max == math.inf


class _Mixed(nn.Module):
    """Small parameters of many trailing shapes, interleaved across layers, a 0-d one, a sparse-gradient embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)  # (3, 4) and (3,)
        self.conv = nn.Conv1d(2, 3, 5)  # (3, 2, 5) and (3,)
        self.b = nn.Linear(4, 3)  # (3, 4) again, after the conv: same run as a.weight once regrouped
        self.norm = nn.LayerNorm(7)  # (7,) twice
        self.big = nn.Linear(80, 60)  # 4,800 entries: the large path
        self.emb = nn.Embedding(10, 3, sparse=True)  # 30 entries, sparse gradient
        self.temperature = nn.Parameter(torch.tensor(2.0))  # 0-d, owned by the root


def _reference(module: nn.Module) -> tuple[float, float]:
    grads = [p.grad.to_dense().double() if p.grad.is_sparse else p.grad.double()
             for p in module.parameters(recurse=False)]
    return math.sqrt(sum(g.pow(2).sum().item() for g in grads)), max(g.abs().max().item() for g in grads)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_small_tensors_of_many_shapes_cat_by_trailing_shape_against_float64(sparse: bool, flat: bool,
                                                                            monkeypatch: pytest.MonkeyPatch):
    # flat: the small tensors through the flat float64 copy (as with many of them); else every dense tensor through
    # one fused float32 norm (the CPU default below FLAT_MIN_COUNT small tensors)
    monkeypatch.setattr(_reductions, "FLAT_MIN_COUNT", 0 if flat else 10**9)
    torch.manual_seed(0)
    model = _Mixed()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * (1 + torch.rand(()).item() * 10)
    model.emb.weight.grad = None
    if sparse:
        model.emb(torch.tensor([1, 4, 4])).sum().backward()
        for name, p in model.named_parameters():  # the backward above set only the embedding's gradient
            assert (p.grad is not None) or name == "emb.weight"
    model.conv.weight.grad[2, 1, 4] = -77.0  # the max of the conv layer, at the last entry of its run
    layers = {"a": model.a, "conv": model.conv, "b": model.b, "norm": model.norm, "big": model.big}
    with gradwatch.watch(model) as watcher:
        for _ in range(2):
            report = watcher.step()
            for name, module in layers.items():
                norm, gmax = _reference(module)
                # float32 fused norms (large tensors; every tensor once a sparse gradient is in the bucket) vs float64
                rel = 1e-6 if name == "big" or sparse or not flat else 1e-9
                assert report.layers[name].grad_norm == pytest.approx(norm, rel=rel), name
                assert report.layers[name].grad_max == pytest.approx(gmax, rel=rel), name
            root = report.layers[gradwatch.ROOT_LAYER]
            assert root.grad_norm == pytest.approx(abs(model.temperature.grad.item()), rel=1e-9 if flat else 1e-6)
            if sparse:
                norm, gmax = _reference(model.emb)
                assert report.layers["emb"].grad_norm == pytest.approx(norm, rel=1e-6)
                assert report.layers["emb"].grad_max == pytest.approx(gmax, rel=1e-6)
            else:
                assert report.layers["emb"].grad_norm is None
    assert report.layers["conv"].grad_max == 77.0


def test_cpu_max_abs_mixes_tiny_fused_and_aminmax_tensors_in_order_with_nan_empty_and_sparse():
    from gradwatch._reductions import CPU_TINY, foreach_maxabs

    tiny = torch.tensor([1.0, -7.0])  # fused inf-norm
    big = torch.zeros(CPU_TINY * 3)  # aminmax
    big[5] = -9.5
    nan_big = torch.ones(CPU_TINY)
    nan_big[-1] = float("nan")
    empty = torch.zeros(0)
    out = foreach_maxabs([big, tiny, nan_big, empty, torch.tensor([[3.0]])], torch.device("cpu"))
    assert out[[0, 1, 3, 4]].tolist() == [9.5, 7.0, 0.0, 3.0]
    assert math.isnan(out[2].item())
    sparse = torch.sparse_coo_tensor([[0, 3]], [2.0, -4.0], (5,), check_invariants=True)
    assert foreach_maxabs([tiny, sparse, big], torch.device("cpu")).tolist() == [7.0, 4.0, 9.5]


def test_cpu_norm_and_max_run_back_to_back_per_tensor_with_nan_inf_negative_and_half_precision():
    from gradwatch._reductions import CPU_TINY, norms_maxabs

    a = torch.zeros(CPU_TINY * 4)
    a[:2] = torch.tensor([3.0, -4.0])  # norm 5, max |g| 4 from a negative entry
    nan = torch.ones(CPU_TINY)
    nan[7] = float("nan")
    inf = torch.ones(CPU_TINY * 2)
    inf[0] = -float("inf")
    norms, maxabs = norms_maxabs([a, nan, inf], torch.float32, torch.device("cpu"))
    assert norms[0].item() == 5.0
    assert maxabs[0].item() == 4.0
    assert math.isnan(norms[1].item())
    assert math.isnan(maxabs[1].item())
    assert norms[2].item() == math.inf
    assert maxabs[2].item() == math.inf
    half = torch.full((CPU_TINY * 4,), 0.5, dtype=torch.bfloat16)  # norm 0.5 * 64 = 32: accumulated in float32
    norms, maxabs = norms_maxabs([half], torch.bfloat16, torch.device("cpu"))
    assert norms.dtype == torch.float32
    assert norms.item() == 32.0
    assert maxabs.item() == 0.5
    # a tiny or a sparse tensor among them: the two fused calls, same answers
    sparse = torch.sparse_coo_tensor([[0, 3]], [2.0, -4.0], (CPU_TINY * 2,), check_invariants=True)
    norms, maxabs = norms_maxabs([a, torch.tensor([-6.0, 8.0]), sparse], torch.float32, torch.device("cpu"))
    assert norms.tolist() == pytest.approx([5.0, 10.0, math.sqrt(20.0)])
    assert maxabs.tolist() == [4.0, 8.0, 4.0]


def test_a_parameter_without_entries_among_the_small_ones_is_measured_and_its_neighbours_too():
    model = nn.Module()
    model.a = nn.Linear(2, 1, bias=False)
    model.nothing = nn.Linear(0, 3, bias=False)  # a (3, 0) weight: no entries
    model.b = nn.Linear(2, 1, bias=False)
    model.a.weight.grad = torch.tensor([[3.0, -4.0]])
    model.nothing.weight.grad = torch.zeros(3, 0)
    model.b.weight.grad = torch.tensor([[-6.0, 8.0]])
    with gradwatch.watch(model) as watcher:
        report = watcher.step()
    assert (report.layers["a"].grad_norm, report.layers["a"].grad_max) == (5.0, 4.0)
    assert (report.layers["b"].grad_norm, report.layers["b"].grad_max) == (10.0, 8.0)
    assert report.layers["nothing"].grad_norm in (None, 0.0)


def test_huge_float64_gradients_overflow_the_sum_of_squares_silently_and_read_as_inf_not_nan():
    model = nn.Linear(2, 1, bias=False).double()
    model.weight.grad = torch.tensor([[1e200, -1e200]], dtype=torch.float64)  # squares overflow float64
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy must not warn from inside the step
        with gradwatch.watch(model) as watcher:
            report = watcher.step()
    (stats,) = report.layers.values()
    assert stats.grad_norm == math.inf
    assert stats.grad_max == 1e200
    assert stats.nonfinite is None
    assert not [s for s in report.symptoms if s.kind == "nonfinite"]  # huge, finite
    assert model.weight.grad.tolist() == [[1e200, -1e200]]


def test_a_lone_float64_gradient_beside_a_missing_one_is_left_untouched():
    # bias.grad is None: the general flatten path, whose copy of a single float64 tensor may be the tensor itself
    model = nn.Linear(3, 1).double()
    model.weight.grad = torch.tensor([[-3.0, 4.0, 0.0]], dtype=torch.float64)
    with gradwatch.watch(model) as watcher:
        (stats,) = watcher.step().layers.values()
    assert stats.grad_norm == 5.0
    assert stats.grad_max == 4.0
    assert model.weight.grad.tolist() == [[-3.0, 4.0, 0.0]]  # abs_ and square_ work on gradwatch's own copy


@pytest.mark.parametrize("new_bias", [16, 4])
def test_a_small_parameter_resized_after_watch_is_still_measured_right(new_bias: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    with _no_warning(), gradwatch.watch(model) as watcher:
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        watcher.step()
        model[0].bias.data = torch.randn(new_bias) * 3  # grows or shrinks: the cached segment lengths are stale
        model[0].bias.grad = torch.randn(new_bias) * 5
        report = watcher.step()
    params = list(model[0].parameters())
    grad = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in params))
    param = math.sqrt(sum(p.detach().double().pow(2).sum().item() for p in params))
    assert report.layers["0"].grad_norm == pytest.approx(grad, rel=1e-6)
    assert report.layers["0"].param_norm == pytest.approx(param, rel=1e-6)


def test_a_layer_cast_to_float64_after_watch_keeps_its_range():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    with gradwatch.watch(model) as watcher:
        model[1].double()  # the float32 bucket now holds float64 tensors
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        model[1].weight.grad[0, 0] = 1e40  # finite in float64, Inf in float32
        report = watcher.step()
    assert report.layers["1"].grad_norm == pytest.approx(1e40)
    assert report.layers["1"].nonfinite is None
    assert [s.kind for s in report.symptoms] == ["exploding", "exploding"]


@contextlib.contextmanager
def _no_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no "output was resized" warning from gradwatch's copies
        yield


def test_device_and_host_non_finite_codes_agree_case_by_case():
    from gradwatch._stats import DeviceStats, host_nonfinite_codes

    nan, inf = math.nan, math.inf
    # finite; NaN in the sum only (a collective MAX dropped it); NaN in the max; Inf; a sum that overflowed from
    # finite entries; Inf beside NaN (NaN wins)
    sumsq = torch.tensor([4.0, nan, nan, inf, inf, nan], dtype=torch.float64)
    maxabs = torch.tensor([2.0, 3.0, nan, inf, 1e200, inf], dtype=torch.float64)
    dev = DeviceStats(sumsq, maxabs, sumsq.sum().sqrt(), [True] * 6, [1] * 6, batch=None)  # type: ignore[arg-type]
    expected = [0, 1, 1, 2, 0, 1]
    assert dev.nonfinite.tolist() == expected
    assert host_nonfinite_codes(sumsq.numpy(), maxabs.numpy()).tolist() == expected
