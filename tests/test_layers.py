import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._layers import ROOT_LAYER, discover_layers


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


class _TextModel(nn.Module):
    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(4, 4)  # trainable, never called: no gradient, same parameters
        self.head = nn.Linear(4, 2)

    def forward(self, tokens):
        return self.head(self.frozen(self.emb(tokens)))


def _train(model, watcher, steps, vocab):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.randint(0, vocab, (3, 5))).sum().backward()
        watcher.step()
        opt.step()
        opt.zero_grad()


def test_parameters_replaced_after_watch_are_reported_once_and_nothing_else_is():
    import warnings

    torch.manual_seed(0)
    model = _TextModel()
    with gradwatch.watch(model) as watcher:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a frozen layer and an unused one are no reason to warn
            _train(model, watcher, 3, 10)
        model.emb = nn.Embedding(12, 4)  # what resize_token_embeddings() does: a new module, a new parameter
        with pytest.warns(gradwatch.GradWatchWarning) as caught:
            _train(model, watcher, 4, 12)
    messages = [str(w.message) for w in caught if "replaced" in str(w.message)]
    assert len(messages) == 1  # once, not at every step
    assert "layer 'emb'" in messages[0]
    assert "emb.weight" in messages[0]
    assert "watch() again" in messages[0]
    assert "frozen" not in messages[0]
    assert "unused" not in messages[0]


def test_replaced_parameters_names_the_paths_that_changed_inside_wrappers():
    from gradwatch._layers import replaced_parameters

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    layers = discover_layers(model)
    assert [layer.paths for layer in layers] == [("0.weight", "0.bias"), ("1.weight", "1.bias")]
    model[1].bias = nn.Parameter(torch.zeros(1))
    wrapped = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(wrapped)
    wrapped.module = model  # what unwrap_model() sees through
    assert [replaced_parameters(wrapped, layer) for layer in layers] == [[], ["1.bias"]]
    del model[1].bias  # no longer a parameter there: nothing to say
    model[1].register_buffer("bias", torch.zeros(1))
    assert replaced_parameters(model, layers[1]) == []
