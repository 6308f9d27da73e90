"""Per-layer statistics against a float64 reference, with gradients set by hand or from random data."""

import math

import pytest
import torch
from torch import nn

import gradwatch
from conftest import reference_layer_stats, rel_close
from gradwatch._layers import ROOT_LAYER


class Zoo(nn.Module):
    """One of each layer type the issue names, plus a root-owned parameter and tied weights."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.emb = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, tokens):
        x = self.emb(tokens) * self.scale
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        x, _ = self.lstm(self.norm(x))
        return self.head(torch.relu(self.fc(x)))


def _backward(model):
    tokens = torch.randint(0, 20, (4, 6))
    model(tokens).logsumexp(-1).mean().backward()


def test_layer_norms_and_maxima_match_float64_reference_on_random_gradients():
    model = Zoo()
    _backward(model)
    with gradwatch.watch(model) as watcher:
        report = watcher.step()
        ref = reference_layer_stats(model)
        assert list(report.layers) == [ROOT_LAYER, "emb", "conv", "norm", "lstm", "fc"]
        for name, (norm, mx) in ref.items():
            stats = report.layers[name]
            assert rel_close(stats.grad_norm, norm, 1e-6), name
            assert rel_close(stats.grad_max, mx, 1e-6), name
            assert stats.nonfinite is None
        expected_numel = {layer: sum(p.numel() for p in ps.params) for layer, ps in
                          zip(watcher.layer_names, watcher._layers, strict=True)}
        assert {k: v.numel for k, v in report.layers.items()} == expected_numel


def test_hand_set_gradients_give_known_norms():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    for p in model[0].parameters():
        p.grad = torch.full_like(p, 3.0)  # 6 entries of 3 -> norm sqrt(54)
    model[1].weight.grad = torch.tensor([[0.0, -4.0], [0.0, 0.0]])
    model[1].bias.grad = torch.tensor([3.0, 0.0])  # layer norm 5, max 4
    with gradwatch.watch(model) as watcher:
        r = watcher.step()
    assert r.layers["0"].grad_norm == pytest.approx(math.sqrt(54), rel=1e-6)
    assert r.layers["0"].grad_max == 3.0
    assert r.layers["1"].grad_norm == pytest.approx(5.0, rel=1e-6)
    assert r.layers["1"].grad_max == 4.0
    assert r.global_norm == pytest.approx(math.sqrt(54 + 25), rel=1e-6)
    assert r.clipped_norm == r.global_norm
    param_norm = float(torch.cat([p.detach().flatten() for p in model[1].parameters()]).norm())
    assert r.layers["1"].param_norm == pytest.approx(param_norm, rel=1e-6)


def test_global_norm_equals_get_total_norm():
    model = Zoo()
    _backward(model)
    expected = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    with gradwatch.watch(model) as watcher:
        assert rel_close(watcher.step().global_norm, expected, 1e-6)


def test_none_gradients_are_reported_as_no_gradient_never_vanishing():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].requires_grad_(False)  # frozen
    th = gradwatch.Thresholds(vanishing_patience=1)
    with gradwatch.watch(model, thresholds=th) as watcher:
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            model(torch.randn(4, 2)).sum().backward()
            r = watcher.step()
            assert r.layers["1"].grad_norm is None
            assert r.layers["1"].grad_max is None
            assert not r.layers["1"].has_grad
            assert r.layers["0"].has_grad
            assert not any(s.layer == "1" for s in r.symptoms)


def test_partially_missing_gradients_count_only_present_tensors():
    model = nn.Sequential(nn.Linear(3, 2))
    model[0].weight.grad = torch.ones(2, 3)  # bias grad stays None
    with gradwatch.watch(model) as watcher:
        r = watcher.step()
    assert r.layers["0"].grad_norm == pytest.approx(math.sqrt(6))
    assert r.layers["0"].numel == 6


def test_bf16_gradients_at_bf16_tolerance():
    model = Zoo().to(torch.bfloat16)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    ref = reference_layer_stats(model)
    with gradwatch.watch(model) as watcher:
        r = watcher.step()
    for name, (norm, mx) in ref.items():
        assert rel_close(r.layers[name].grad_norm, norm, 1e-2), name
        assert r.layers[name].grad_max == mx, name  # max of bf16 values is exact


def test_fp16_gradients_with_large_norm_do_not_overflow_the_report():
    model = nn.Linear(256, 256).half()
    model.weight.grad = torch.full_like(model.weight, 1000.0)  # norm 256000 > fp16 max 65504
    model.bias.grad = torch.zeros_like(model.bias)
    with gradwatch.watch(model) as watcher:
        r = watcher.step()
    assert r.layers[ROOT_LAYER].grad_norm == pytest.approx(256_000.0, rel=1e-3)
    assert r.layers[ROOT_LAYER].nonfinite is None


def test_huge_finite_gradients_are_not_mistaken_for_inf():
    model = nn.Linear(2, 1, bias=False)
    model.weight.grad = torch.tensor([[1e30, 1e30]])  # the fp32 norm overflows; no entry is infinite
    with gradwatch.watch(model) as watcher:
        r = watcher.step()
    assert r.layers[ROOT_LAYER].nonfinite is None
    assert r.layers[ROOT_LAYER].grad_max == pytest.approx(1e30, rel=1e-6)


def test_sparse_embedding_gradient_uses_its_coalesced_values():
    model = nn.ModuleDict({"emb": nn.Embedding(50, 4, sparse=True), "fc": nn.Linear(4, 1)})
    tokens = torch.tensor([1, 1, 7, 3])  # a repeated index: uncoalesced values would double count
    model["fc"](model["emb"](tokens)).sum().backward()
    ref = reference_layer_stats(model)
    with gradwatch.watch(model) as watcher:
        r = watcher.step()
    assert rel_close(r.layers["emb"].grad_norm, ref["emb"][0], 1e-6)
    assert rel_close(r.layers["emb"].grad_max, ref["emb"][1], 1e-6)


def test_large_cpu_tensors_use_the_aminmax_path_and_agree():
    model = nn.Linear(512, 256)  # 131072 entries: above the small-tensor cut
    model.weight.grad = torch.randn_like(model.weight)
    model.weight.grad[3, 4] = -17.0
    model.bias.grad = torch.randn_like(model.bias)
    with gradwatch.watch(model) as watcher:
        r = watcher.step()
    assert r.layers[ROOT_LAYER].grad_max == 17.0


def test_model_moved_after_watch_is_regrouped():
    model = nn.Sequential(nn.Linear(2, 2))
    with gradwatch.watch(model) as watcher:
        model.double()
        model(torch.randn(3, 2, dtype=torch.float64)).sum().backward()
        r = watcher.step()
        ref = reference_layer_stats(model)
        assert rel_close(r.layers["0"].grad_norm, ref["0"][0], 1e-12)


def test_report_values_materialise_lazily_and_stay_available_after_close():
    model = nn.Linear(2, 1)
    model(torch.randn(3, 2)).sum().backward()
    watcher = gradwatch.watch(model, every_n_steps=5)
    reports = [watcher.step() for _ in range(7)]
    watcher.close()
    assert [r.step for r in reports] == list(range(7))
    assert [r.logged for r in reports] == [True, False, False, False, False, True, False]
    assert reports[3].layers[ROOT_LAYER].param_norm is None  # parameters are measured on logged steps only
    assert reports[5].layers[ROOT_LAYER].param_norm is not None
    assert all(r.global_norm == reports[0].global_norm for r in reports)


@pytest.mark.parametrize("width", [3, 100])  # small tensors only (the flat copy) and large ones (fused norms)
def test_gradients_that_require_grad_after_create_graph_are_measured_and_left_untouched(width):
    torch.manual_seed(0)
    model = nn.Linear(width, width)
    x = torch.randn(4, width)
    model(x).pow(2).sum().backward(create_graph=True)  # the gradients carry a graph (second-order methods)
    assert model.weight.grad.requires_grad
    expected = torch.sqrt(sum(p.grad.detach().double().pow(2).sum() for p in model.parameters())).item()
    before = [p.grad.detach().clone() for p in model.parameters()]
    with gradwatch.watch(model, clip=1e9) as watcher:
        report = watcher.step()
        assert report.global_norm == pytest.approx(expected, rel=1e-6)
    assert all(torch.equal(p.grad.detach(), b) for p, b in zip(model.parameters(), before, strict=True))
    assert model.weight.grad.requires_grad  # still the user's graph-carrying gradient
