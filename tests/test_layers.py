import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.layers import ROOT_LAYER, discover_layers


class WithRootParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(4))
        self.enc = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    def forward(self, x):
        return self.enc(x + self.pos)


def test_layers_are_modules_owning_parameters_in_registration_order():
    names = [layer.name for layer in discover_layers(WithRootParam())]
    assert names == [ROOT_LAYER, "enc.0", "enc.2"]
    assert ROOT_LAYER == "__root__"


def test_weight_and_bias_form_one_layer():
    (layer,) = discover_layers(nn.Sequential(nn.Linear(3, 2)))
    assert layer.numel == 3 * 2 + 2
    assert len(layer.params) == 2


def test_tied_parameters_count_once_in_the_first_owner():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "mid": nn.Linear(4, 4), "head": head})
    layers = discover_layers(model)
    assert [layer.name for layer in layers] == ["emb", "mid"]  # head owns nothing of its own
    assert sum(len(layer.params) for layer in layers) == len(list(model.parameters()))


def test_glob_patterns_select_layers():
    model = WithRootParam()
    assert [layer.name for layer in discover_layers(model, "enc.*")] == ["enc.0", "enc.2"]
    assert [layer.name for layer in discover_layers(model, ["enc.2", ROOT_LAYER])] == [ROOT_LAYER, "enc.2"]


def test_pattern_matching_nothing_is_rejected_with_the_layer_names():
    with pytest.raises(gradwatch.ConfigurationError, match=r"'decoder\.\*' matches no layer.*enc\.0"):
        discover_layers(WithRootParam(), "decoder.*")


def test_ddp_like_wrappers_do_not_prefix_names():
    inner = nn.Sequential(nn.Linear(2, 2))
    wrapped = nn.DataParallel(inner)  # CPU: a plain wrapper with .module
    assert [layer.name for layer in discover_layers(wrapped)] == ["0"]


def test_compiled_model_names_match_the_original():
    model = nn.Sequential(nn.Linear(2, 2))
    compiled = torch.compile(model)
    assert [layer.name for layer in discover_layers(compiled)] == ["0"]


def test_model_without_parameters_is_rejected():
    with pytest.raises(gradwatch.ConfigurationError, match="no parameters"):
        gradwatch.watch(nn.ReLU())
