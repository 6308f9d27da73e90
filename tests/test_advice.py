"""Advice that fits the model (issue 16, item 6): :class:`gradwatch._advice.ModelTraits` learns what the model has
(residual connections, normalisation, activations, recurrent layers, post-LN or pre-LN transformer layers, the
optimizer), and the remedies say the evidence first and never advise what the model already does.

Models come from ``transformers`` configs (tiny widths, random init; skipped without ``transformers``) and from
hand-built modules. No model is run: the traits are read from the modules alone.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwatch._advice import ModelTraits, OptimizerTraits, Remedy, activation_name, ln_position_of_family
from gradwatch._demo import XorNet
from gradwatch._layers import discover_layers

# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


def _transformers() -> Any:
    t = pytest.importorskip("transformers")
    t.logging.set_verbosity_error()
    return t


def gpt2() -> nn.Module:
    t = _transformers()
    return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=128, n_positions=32, n_embd=16, n_layer=2, n_head=2))


def bert() -> nn.Module:
    t = _transformers()
    return t.BertForMaskedLM(t.BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=32))


def bert_with_pooler() -> nn.Module:
    t = _transformers()
    return t.BertModel(t.BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=32))


def llama() -> nn.Module:
    t = _transformers()
    return t.LlamaForCausalLM(t.LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=2,
                                            max_position_embeddings=32))


def vit() -> nn.Module:
    t = _transformers()
    return t.ViTForImageClassification(t.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=32, num_labels=3))


def resnet() -> nn.Module:
    t = _transformers()
    return t.ResNetForImageClassification(t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                         layer_type="basic", num_labels=3))


def xor_sigmoid() -> nn.Module:
    return XorNet(residual=False)


def xor_residual() -> nn.Module:
    return XorNet(residual=True)


class SigmoidCNN(nn.Module):
    """A deep plain CNN: 8 convs with sigmoid, no normalisation, no skips."""

    def __init__(self) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(8):
            mods += [nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), nn.Sigmoid()]
        self.features = nn.Sequential(*mods)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class ResBlock(nn.Module):
    """Conv-BN-ReLU-Conv-BN plus the input (the common hand-written name)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResCNN(nn.Module):
    """A CNN with BatchNorm and residual blocks; its ReLUs are functional (``F.relu`` in ``forward``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.blocks = nn.Sequential(*(ResBlock(8) for _ in range(4)))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(F.relu(self.stem(x))).mean(dim=(2, 3)))


class Unit(nn.Module):
    """A residual unit recognised only by its child named ``shortcut``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(2, c), nn.ReLU())
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def shortcut_cnn() -> nn.Module:
    return nn.Sequential(*(Unit(8) for _ in range(6)))


def _encoder(norm_first: bool) -> nn.Module:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # enable_nested_tensor is False with norm_first: a warning, not our business
        return nn.TransformerEncoder(layer, num_layers=12)


def post_ln() -> nn.Module:
    return _encoder(norm_first=False)


def pre_ln() -> nn.Module:
    return _encoder(norm_first=True)


class RNNNet(nn.Module):
    def __init__(self, kind: type[nn.Module], **kwargs: Any) -> None:
        super().__init__()
        self.rnn = kind(4, 16, batch_first=True, **kwargs)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def vanilla_rnn() -> nn.Module:
    return RNNNet(nn.RNN, nonlinearity="tanh")


def lstm() -> nn.Module:
    return RNNNet(nn.LSTM)


def gru() -> nn.Module:
    return RNNNet(nn.GRU)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "gpt2": gpt2, "bert": bert, "llama": llama, "vit": vit, "resnet": resnet,
    "xor_sigmoid": xor_sigmoid, "xor_residual": xor_residual, "sigmoid_cnn": SigmoidCNN, "res_cnn": ResCNN,
    "shortcut_cnn": shortcut_cnn, "post_ln": post_ln, "pre_ln": pre_ln, "rnn": vanilla_rnn, "lstm": lstm, "gru": gru,
}


def traits(model: nn.Module, **kwargs: Any) -> ModelTraits:
    return ModelTraits.of(model, depth=len(discover_layers(model, None)), **kwargs)


def remedies(t: ModelTraits) -> dict[str, Remedy]:
    return {
        "vanishing": t.vanishing_remedy(),
        "exploding": t.exploding_remedy(),
        "exploding_clipped": t.exploding_remedy(clipping=True),
        "exploding_updates": t.exploding_remedy(updates=True),
        "nonfinite": t.nonfinite_remedy(),
        "divergence": t.divergence_remedy(),
    }


def all_advice(t: ModelTraits) -> str:
    return " | ".join(r.advice for r in remedies(t).values())


# ---------------------------------------------------------------------------------------------------------------------
# What is detected
# ---------------------------------------------------------------------------------------------------------------------

# name -> (residual, norm kinds, ln position, activation families, recurrent)
EXPECTED: dict[str, tuple[bool, set[str], str | None, set[str], tuple[str, ...]]] = {
    "gpt2": (True, {"layer"}, "pre", {"smooth"}, ()),
    "bert": (True, {"layer"}, "post", {"smooth"}, ()),
    "llama": (True, {"rms"}, "pre", {"smooth"}, ()),
    "vit": (True, {"layer"}, "pre", {"smooth"}, ()),
    "resnet": (True, {"batch"}, None, {"relu"}, ()),
    "xor_sigmoid": (False, set(), None, {"saturating"}, ()),
    "xor_residual": (True, set(), None, {"saturating"}, ()),
    "sigmoid_cnn": (False, set(), None, {"saturating"}, ()),
    "res_cnn": (True, {"batch"}, None, {"relu"}, ()),
    "shortcut_cnn": (True, {"group"}, None, {"relu"}, ()),
    "post_ln": (True, {"layer"}, "post", {"relu"}, ()),
    "pre_ln": (True, {"layer"}, "pre", {"relu"}, ()),
    "rnn": (False, set(), None, set(), ("RNN (tanh)",)),
    "lstm": (False, set(), None, set(), ("LSTM",)),
    "gru": (False, set(), None, set(), ("GRU",)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_traits_detected(name):
    t = traits(MODELS[name]())
    residual, norms, position, families, recurrent = EXPECTED[name]
    assert t.has_residual is residual, t
    assert set(t.norm_kinds) == norms, t
    assert t.normalization is bool(norms)
    assert t.ln_position == position, t
    assert set(t.activation_families) == families, t
    assert t.recurrent == recurrent, t
    assert t.vanilla_rnn is (name == "rnn")
    assert t.gated_rnn is (name in ("lstm", "gru"))


def test_transformer_layers_are_counted_and_named():
    for build, cls, n in ((gpt2, "GPT2Block", 2), (bert, "BertLayer", 2), (llama, "LlamaDecoderLayer", 2),
                          (vit, "ViTLayer", 2), (post_ln, "TransformerEncoderLayer", 12)):
        t = traits(build())
        assert (t.transformer_layer, t.transformer_layers) == (cls, n)
        assert cls in t.residual
    assert traits(resnet()).transformer_layers == 0


def test_llama_rmsnorm_and_torch_rmsnorm_are_normalisation():
    t = traits(llama())
    assert "LlamaRMSNorm" in t.norms
    assert t.norm_kinds == {"rms"}
    assert traits(nn.Sequential(nn.Linear(4, 4), nn.RMSNorm(4))).norm_kinds == {"rms"}


def test_a_norm_known_by_its_class_name_only():
    class MyRMSNorm(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

    class ScoreNorm(nn.Module):  # ends with "Norm" but holds neither weight nor epsilon: not normalisation
        pass

    assert traits(nn.Sequential(nn.Linear(4, 4), MyRMSNorm(4))).norms == ("MyRMSNorm",)
    assert traits(nn.Sequential(nn.Linear(4, 4), ScoreNorm())).normalization is False


def test_the_pooler_tanh_is_not_a_hidden_activation():
    t = traits(bert_with_pooler())
    assert t.saturating == ()
    assert "tanh" not in t.vanishing_remedy().cause.lower()


def test_activations_of_poolers_heads_and_gates_are_not_hidden_activations():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
            self.pooler_activation = nn.Tanh()  # ALBERT's spelling
            self.head = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())

    t = traits(Net())
    assert (t.activations, t.saturating) == (("ReLU",), ())


def test_activation_from_the_hf_config_and_the_forward_source():
    t = _transformers()
    cfg = t.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, hidden_act="relu")
    assert "ReLU" in traits(t.BertForMaskedLM(cfg)).activations

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # torch.sigmoid( in a comment is no evidence
            return torch.tanh(self.b(F.leaky_relu(self.a(x))))

    assert set(traits(Functional()).activations) == {"LeakyReLU", "Tanh"}


def test_relu6_is_not_saturating_and_torch_layers_report_their_activation():
    assert traits(nn.Sequential(nn.Linear(2, 2), nn.ReLU6())).activation_families == {"relu"}
    layer = nn.TransformerEncoderLayer(8, 2, 16, activation="gelu")
    assert traits(nn.ModuleList([layer])).activations == ("GELU",)


def test_residual_flags_and_their_withdrawal():
    class Net(nn.Module):
        def __init__(self, residual: bool) -> None:
            super().__init__()
            self.residual = residual
            self.fc = nn.Linear(2, 2)

    class InvertedResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.use_res_connect = False
            self.conv = nn.Conv2d(2, 2, 1)

    assert traits(Net(True)).residual == ("Net.residual=True",)
    assert traits(Net(False)).residual == ()
    assert traits(nn.Sequential(InvertedResidual())).residual == ()


@pytest.mark.parametrize(("text", "expected"), [
    ("BertLayer", "post"), ("RobertaLayer", "post"), ("xlm-roberta", "post"), ("distilbert", "post"),
    ("BartEncoderLayer", "post"), ("GPT2Block", "pre"), ("LlamaDecoderLayer", "pre"), ("ViTLayer", "pre"),
    ("T5Block", "pre"), ("RobertaPreLayerNormLayer", "pre"), ("XLMRobertaXLLayer", "pre"),
    ("Wav2Vec2EncoderLayerStableLayerNorm", "pre"), ("MegatronBertLayer", "pre"), ("MyBlock", None),
])
def test_ln_position_of_family(text, expected):
    assert ln_position_of_family(text) == expected


def test_opt_reads_do_layer_norm_before():
    t = _transformers()
    kw = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
              word_embed_proj_dim=16)
    assert traits(t.OPTModel(t.OPTConfig(**kw))).ln_position == "pre"
    assert traits(t.OPTModel(t.OPTConfig(**kw, do_layer_norm_before=False))).ln_position == "post"


@pytest.mark.parametrize(("text", "name"), [
    ("gelu_new", "GELU"), ("gelu_pytorch_tanh", "GELU"), ("NewGELUActivation", "GELU"), ("swish", "SiLU"),
    ("silu", "SiLU"), ("SiLUActivation", "SiLU"), ("relu", "ReLU"), ("leaky_relu", "LeakyReLU"), ("tanh", "Tanh"),
    ("sigmoid", "Sigmoid"), ("gated-gelu", "GELU"), ("selu", "SELU"), ("Linear", None),
])
def test_activation_names(text, name):
    assert activation_name(text) == name


# ---------------------------------------------------------------------------------------------------------------------
# The advice
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_remedies_are_bare_clauses_with_the_evidence_first(name):
    t = traits(MODELS[name]())
    for kind, r in remedies(t).items():
        assert isinstance(r, Remedy)
        cause, advice = r  # unpacks as before
        for text in (cause, advice):
            assert text, kind
            assert text == text.strip(), (kind, text)
            assert not text.endswith("."), (kind, text)
        assert not cause.lower().startswith("likely cause"), cause
        assert not advice.lower().startswith("try "), advice
        if kind != "nonfinite":
            assert cause.startswith("the model has"), (kind, cause)


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "vit", "resnet", "res_cnn", "shortcut_cnn", "post_ln",
                                  "pre_ln", "xor_residual"])
def test_residual_models_are_never_told_to_add_residual_connections(name):
    t = traits(MODELS[name]())
    assert "residual" not in all_advice(t).lower()
    assert "without skip" not in t.vanishing_remedy().cause
    assert "no residual connections" not in t.vanishing_remedy().cause


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "vit", "resnet", "res_cnn", "shortcut_cnn", "post_ln",
                                  "pre_ln"])
def test_normalised_models_are_never_told_to_add_normalisation(name):
    t = traits(MODELS[name]())
    advice = all_advice(t).lower()
    assert "normalisation" not in advice  # "batch normalisation", "layer normalisation", "normalisation layers"
    assert "batchnorm" not in advice
    assert "rmsnorm" not in advice
    assert "layernorm" not in advice.replace("a pre-ln variant (layernorm before each sublayer)", "")


@pytest.mark.parametrize("name", ["gpt2", "llama", "vit", "pre_ln"])
def test_pre_ln_models_are_never_told_to_go_pre_ln(name):
    assert "pre-ln" not in all_advice(traits(MODELS[name]())).lower()


@pytest.mark.parametrize("name", ["bert", "post_ln"])
def test_post_ln_transformers_are_told_warm_up_and_pre_ln(name):
    t = traits(MODELS[name]())
    v = t.vanishing_remedy()
    assert "post-LN" in v.cause
    assert "warm-up" in v.advice
    assert "pre-LN" in v.advice
    for r in (t.exploding_remedy(), t.divergence_remedy()):
        assert "warm-up" in r.advice
        assert "pre-LN" in r.advice
    if name == "post_ln":
        assert "norm_first=True" in v.advice
        assert v.cause.startswith("the model has 12 transformer layers (TransformerEncoderLayer: residual, post-LN)")


def test_bert_evidence_names_its_layers():
    cause = traits(bert()).vanishing_remedy().cause
    assert cause.startswith("the model has 2 transformer layers (BertLayer: residual, post-LN), LayerNorm and GELU "
                            "activations; ")


@pytest.mark.parametrize("name", ["xor_sigmoid", "sigmoid_cnn"])
def test_deep_sigmoid_nets_are_told_of_the_sigmoid_and_the_missing_skips(name):
    t = traits(MODELS[name]())
    v = t.vanishing_remedy()
    assert v.cause.startswith("the model has sigmoid activations, and no residual connections or normalisation layers")
    assert "sigmoid" in v.advice
    assert "ReLU" in v.advice
    assert "residual connections" in v.advice
    assert ("batch normalisation" if name == "sigmoid_cnn" else "batch or layer normalisation") in v.advice


def test_relu_models_are_not_told_to_use_relu():
    for name in ("resnet", "res_cnn", "post_ln", "gpt2", "llama"):
        assert "ReLU-family" not in all_advice(traits(MODELS[name]()))


def test_vanilla_rnn_is_told_lstm_or_gru_and_gated_ones_are_not():
    t = traits(vanilla_rnn())
    assert "LSTM or GRU" in t.vanishing_remedy().advice
    exploding = t.exploding_remedy()
    assert "LSTM or GRU" in exploding.advice
    assert "clipping" in exploding.advice
    assert "recurrent weights" in exploding.cause
    for build in (lstm, gru):
        assert "LSTM or GRU" not in all_advice(traits(build()))


def test_a_plain_deep_cnn_with_batch_norm_is_told_residual_connections_only():
    class PlainBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*(m for _ in range(8) for m in (nn.Conv2d(4, 4, 3, padding=1),
                                                                       nn.BatchNorm2d(4), nn.ReLU())))

    v = traits(PlainBN()).vanishing_remedy()
    assert v.advice == "residual connections"
    assert "no residual connections" in v.cause


def test_nothing_architectural_to_blame_says_so():
    v = traits(gpt2()).vanishing_remedy()
    assert "no architectural cause found" in v.cause
    assert "attention query/key" in v.cause
    assert "warm-up" in v.advice


# ---------------------------------------------------------------------------------------------------------------------
# The optimizer, clipping
# ---------------------------------------------------------------------------------------------------------------------


def test_optimizer_class_and_learning_rate():
    model = gpt2()
    t = traits(model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.6))
    assert t.optimizer is not None
    assert (t.optimizer.name, t.optimizer.adaptive) == ("AdamW", True)
    d = t.divergence_remedy()
    assert "the optimizer is AdamW (adaptive) at learning rate 0.6" in d.cause
    assert "a lower learning rate (than 0.6)" in d.advice
    assert "warm-up" in d.advice
    assert "check of the data" in d.advice
    sgd = traits(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)).optimizer
    assert sgd is not None
    assert (sgd.name, sgd.adaptive, sgd.describe()) == ("SGD", False, "SGD at learning rate 0.1")
    for cls in (torch.optim.Adam, torch.optim.RMSprop, torch.optim.Adagrad):
        assert OptimizerTraits.of(cls(model.parameters(), lr=1e-3)).adaptive


def test_the_learning_rate_is_read_when_the_remedy_is_written():
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))  # warm-up
    t = traits(model, optimizer=opt)
    assert t.optimizer is not None
    assert t.optimizer.scheduled
    assert "learning rate 0.0001" in t.divergence_remedy().cause
    assert "if your schedule has none" in t.divergence_remedy().advice
    for _ in range(20):
        opt.step()
        sched.step()
    assert "learning rate 0.001" in t.divergence_remedy().cause
    del opt, sched  # a dead optimizer falls back to the learning rate seen at first
    gc.collect()
    assert "learning rate 0.0001" in t.divergence_remedy().cause


def test_several_learning_rates_and_a_wrapper():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": a.parameters(), "lr": 1e-3}, {"params": b.parameters(), "lr": 1e-1}])

    class Wrapped:  # Lightning's LightningOptimizer, accelerate's AcceleratedOptimizer
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

    o = OptimizerTraits.of(Wrapped(opt))
    assert (o.name, o.lrs, o.lr_text()) == ("SGD", (1e-3, 1e-1), "learning rates 0.001 to 0.1")


def test_a_sequence_of_optimizers():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    adam, sgd = torch.optim.Adam(a.parameters(), lr=2e-4), torch.optim.SGD(b.parameters(), lr=0.05)
    o = OptimizerTraits.of((adam, sgd))
    assert (o.name, o.adaptive, o.lrs) == ("Adam and SGD", False, (2e-4, 0.05))
    assert OptimizerTraits.of([adam]).adaptive
    assert traits(a, optimizer=()).optimizer is None
    assert traits(a, optimizer=[adam]).adaptive


def test_adaptive_update_explosion_is_not_told_to_clip():
    model = gpt2()
    adam = traits(model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.6)).exploding_remedy(updates=True)
    assert "clip" not in adam.advice
    assert "AdamW normalises each gradient entry" in adam.cause
    assert adam.advice.startswith("a lower learning rate (than 0.6), learning-rate warm-up")
    sgd = traits(model, optimizer=torch.optim.SGD(model.parameters(), lr=5.0)).exploding_remedy(updates=True)
    assert "gradient clipping" in sgd.advice


def test_clipping_already_on_is_not_advised_again():
    t = traits(xor_sigmoid(), clips=True)
    assert "a lower clipping threshold" in t.exploding_remedy().advice
    assert "clip=1.0" not in t.divergence_remedy().advice
    assert "clip" not in t.nonfinite_remedy().advice
    assert "a lower clipping threshold" in traits(xor_sigmoid()).exploding_remedy(clipping=True).advice
    assert "gradient clipping (watch(..., clip=1.0))" in traits(xor_sigmoid()).exploding_remedy().advice


def test_with_optimizer_adds_one_later():
    model = nn.Linear(2, 2)
    t = traits(model).with_optimizer(torch.optim.Adam(model.parameters(), lr=3e-4))
    assert t.adaptive
    assert "Adam (adaptive) at learning rate 0.0003" in t.divergence_remedy().cause


# ---------------------------------------------------------------------------------------------------------------------
# Compatibility with the rules' calls
# ---------------------------------------------------------------------------------------------------------------------


def test_default_traits_still_give_every_remedy():
    t = ModelTraits()
    for r in remedies(t).values():
        assert r.cause
        assert r.advice
    assert t.nonfinite_remedy().advice.endswith("and check this layer's inputs")
    assert ModelTraits(saturating=("Sigmoid",), depth=12).activation_families == {"saturating"}


def test_traits_of_a_large_model_are_cheap():
    import time

    model = nn.Sequential(*(nn.TransformerEncoderLayer(8, 2, 16) for _ in range(64)))
    start = time.perf_counter()
    ModelTraits.of(model, depth=64 * 6)
    assert time.perf_counter() - start < 2.0
