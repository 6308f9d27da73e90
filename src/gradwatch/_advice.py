"""Likely causes and remedies, chosen from what the model is made of (see docs/rules.md for the reasoning).

``ModelTraits.of()`` looks at the model once, when it is watched: module types, class names and attribute names,
the ``config`` of Hugging Face models, and the ``forward`` source of the user's own classes (for activations called
as functions). No forward pass is run. The remedies then say what was found first, and never advise what the model
already does (residual connections to a ResNet, normalisation to a LLaMA).

What counts as evidence:

* **Residual connections**: a transformer layer (below); a module whose class name contains ``Residual``,
  ``Bottleneck``, ``BasicBlock``, ``ShortCut``/``Shortcut`` or ``Skip`` (torchvision's and timm's ``BasicBlock`` and
  ``Bottleneck``, transformers' ``ResNetShortCut``, MobileNet's ``InvertedResidual``), that matches ``ResBlock``,
  ``ResNetBlock``, ``ResUnit``, ``PreActResBlock``..., or that starts with ``ConvNext``/``CNBlock`` and ends with
  ``Layer``/``Block`` (ConvNeXt blocks); a child module named ``shortcut``, ``residual`` or ``skip...``; a
  boolean attribute such as ``residual=True`` or ``use_res_connect=True`` (an explicit ``False`` on a module whose
  class name matched withdraws that module). A residual connection written as a bare ``x + f(x)`` in a class with
  none of these names is not seen.
* **Transformer layers**: ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``, and the innermost module
  whose class name ends with ``Layer`` or ``Block`` (or ``LayerStableLayerNorm``...) and that contains an attention
  module (``nn.MultiheadAttention`` or a class whose name contains ``Attention``): ``BertLayer``, ``GPT2Block``,
  ``LlamaDecoderLayer``, ``ViTLayer``, ``T5Block``... Every such layer is taken as residual.
* **Post-LN or pre-LN**: ``norm_first`` for torch's layers; for the others, the class name (``...StableLayerNorm``,
  ``...PreLayerNorm``: pre-LN), then the architecture family, from the layer's class-name prefix or the
  ``config.model_type`` (``_POST_LN``, ``_PRE_LN``; OPT reads ``config.do_layer_norm_before``). BERT,
  RoBERTa, ALBERT, ELECTRA, DeBERTa, BART are post-LN; GPT-2, LLaMA, Mistral, Qwen, ViT, T5, Whisper are pre-LN. An
  unknown family is left unknown.
* **Normalisation**: ``BatchNorm*``, ``SyncBatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm*``,
  ``nn.RMSNorm``, and any class whose name ends with ``Norm`` (or ``Norm1d``/``2d``/``3d``, ``Normalization``) and that
  holds a ``weight`` or an epsilon: ``LlamaRMSNorm``, ``T5LayerNorm``, ``FrozenBatchNorm2d``.
* **Activations**: torch's activation modules; leaf modules whose class name ends with ``Activation`` (transformers'
  ``GELUActivation``, ``SiLUActivation``...); ``config.hidden_act`` / ``activation_function`` / ``hidden_activation``
  / ``activation`` / ``feed_forward_proj`` of Hugging Face configs; the activation of ``nn.TransformerEncoderLayer``;
  and calls such as ``torch.sigmoid(``, ``F.relu(`` in the ``forward`` source of classes defined outside torch,
  torchvision, timm and transformers. Activations under a module whose attribute name has the word (or whose class
  name ends with) ``pooler``, ``head``, ``classifier`` or ``gate`` are left out: BERT's pooler ``tanh`` is not a
  hidden activation. Families: saturating (sigmoid, tanh, hardtanh, softsign...), ReLU (ReLU, LeakyReLU, PReLU, ELU,
  SELU...), smooth (GELU, SiLU, Mish...).
* **Recurrent layers**: ``nn.RNN`` / ``nn.RNNCell`` (vanilla, with its ``tanh`` or ``relu``), ``nn.LSTM``, ``nn.GRU``
  and their cells.
* **The optimizer** (``optimizer=``): its class (SGD-like, or adaptive: Adam, AdamW, RMSprop, Adagrad, Adafactor,
  Lion...), its learning rate (read again when a remedy is written, so a schedule's current value is quoted) and
  whether a scheduler set ``initial_lr``. Whether the schedule warms up cannot be known: the advice says "if you do
  not use it".
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from torch import nn

__all__ = ["ModelTraits", "OptimizerTraits", "Remedy"]

LNPosition = Literal["pre", "post", "mixed"]


class Remedy(NamedTuple):
    """The likely cause and what to try, as a ``Symptom`` carries them (``cause``,
    ``advice``): the message says ``"Likely cause: <cause>. Try <advice>."``."""

    cause: str
    advice: str


# ---------------------------------------------------------------------------------------------------------------------
# Vocabulary: activations, normalisation, architecture families
# ---------------------------------------------------------------------------------------------------------------------

_SATURATING_NAMES = ("Sigmoid", "Tanh", "Hardtanh", "Softsign", "Hardsigmoid", "LogSigmoid", "Tanhshrink")
_RELU_NAMES = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU")
_SMOOTH_NAMES = ("GELU", "SiLU", "Mish", "Hardswish", "Softplus")
_FAMILY = {**dict.fromkeys(_SATURATING_NAMES, "saturating"), **dict.fromkeys(_RELU_NAMES, "relu"),
           **dict.fromkeys(_SMOOTH_NAMES, "smooth")}
_TORCH_ACTIVATIONS: dict[type[nn.Module], str] = {getattr(nn, n): n for n in _FAMILY}

# Spellings of activations in class names, config strings and functional calls, most specific first.
_ACTIVATION_SPELLINGS = (
    ("gelu", "GELU"), ("hardswish", "Hardswish"), ("silu", "SiLU"), ("swish", "SiLU"), ("mish", "Mish"),
    ("leaky", "LeakyReLU"), ("prelu", "PReLU"), ("rrelu", "RReLU"), ("relu6", "ReLU6"), ("relu", "ReLU"),
    ("selu", "SELU"), ("celu", "CELU"), ("elu", "ELU"), ("softplus", "Softplus"), ("hardsigmoid", "Hardsigmoid"),
    ("logsigmoid", "LogSigmoid"), ("sigmoid", "Sigmoid"), ("hardtanh", "Hardtanh"), ("tanhshrink", "Tanhshrink"),
    ("tanh", "Tanh"), ("softsign", "Softsign"),
)

_HF_ACTIVATION_KEYS = ("hidden_act", "activation_function", "hidden_activation", "activation", "feed_forward_proj",
                       "afn")

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_TORCH_NORMS = (*_BATCH_NORMS, *_INSTANCE_NORMS, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_NORM_NAME = re.compile(r"(Norm|Normalization)(\d+d)?$")

_RECURRENT = (nn.RNN, nn.RNNCell, nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

_RESIDUAL_WORDS = ("residual", "bottleneck", "basicblock", "shortcut", "skip")
_RESIDUAL_PREFIXES = ("convnext", "cnblock")
_RES_BLOCK = re.compile(r"(?:^|(?<=[a-z0-9]))(?:PreAct)?Res(?:Net|NeXt)?(?:Block|Unit)")
_RESIDUAL_FLAGS = ("residual", "use_residual", "use_res_connect", "has_skip", "has_residual", "skip_connection",
                   "residual_connection", "use_skip")
_RESIDUAL_CHILD = re.compile(r"^(shortcut|residual|skip)", re.IGNORECASE)

#: Architecture families (lower-case, without ``-``/``_``) whose transformer layers normalise after the residual
#: addition (post-LN), as in the original Transformer.
_POST_LN = (
    "bert", "roberta", "xlmroberta", "camembert", "albert", "electra", "deberta", "debertav2", "distilbert", "mpnet",
    "ernie", "layoutlm", "layoutlmv2", "layoutlmv3", "longformer", "bigbird", "squeezebert", "mobilebert", "funnel",
    "xlnet", "bart", "marian", "fsmt", "roformer", "convbert", "rembert", "tapas", "nezha", "xlm", "flaubert",
    "splinter", "canine", "luke", "wav2vec2", "hubert", "sew", "data2vecaudio", "data2vectext",
)
#: Families whose layers normalise the input of each sublayer (pre-LN): GPT-2 onwards, LLaMA and its kin, ViT, T5.
_PRE_LN = (
    "gpt2", "gptneo", "gptj", "gptneox", "gptbigcode", "codegen", "llama", "mistral", "mixtral", "qwen", "gemma",
    "phi", "falcon", "bloom", "mpt", "olmo", "stablelm", "starcoder", "persimmon", "cohere", "granite", "deepseek",
    "internlm", "vit", "deit", "beit", "swin", "swinv2", "dinov2", "clip", "siglip", "whisper", "mbart", "pegasus",
    "blenderbot", "m2m100", "nllbmoe", "t5", "mt5", "umt5", "megatronbert", "robertaprelayernorm", "xlmrobertaxl",
    "xglm", "biogpt", "yolos", "vitmae", "videomae", "opt",
)
_PRE_LN_WORDS = ("stablelayernorm", "prelayernorm", "prenorm")
_LAYER_NAME = re.compile(r"(Layer|Block)(StableLayerNorm|PreLayerNorm)?$")
#: Activations under a module whose attribute name has one of these words, or whose class name ends with one, are not
#: the network's hidden activations (BERT's pooler tanh, a classifier's output sigmoid, a gate).
_AUX_ATTR = re.compile(r"(?:^|_)(?:pooler|classifier|heads?|gate)(?:_|$)")  # pooler_activation, lm_head, gate
_AUX_CLASS = re.compile(r"(?:Pooler|Classifier|Heads?|Gate)$")  # BertPooler, RobertaClassificationHead

_ADAPTIVE = ("adam", "rmsprop", "adagrad", "adadelta", "adafactor", "lamb", "lion", "sophia", "shampoo", "lars",
             "novograd", "prodigy", "schedulefree")

_LIBRARY_ROOTS = frozenset({"torch", "torchvision", "torchaudio", "timm", "transformers", "lightning",
                            "pytorch_lightning", "accelerate", "peft"})
_FUNCTIONAL = re.compile(
    r"(?:\b(?:torch|F|functional|nn\.functional)\.(\w+)\s*\(|\.(sigmoid|tanh|relu|gelu|silu)_?\(\s*\))")
_COMMENT = re.compile(r"#[^\n]*")


def activation_name(text: str) -> str | None:
    """The canonical activation named in a class name, config string or function name, ``None`` for none.

    Examples:
        >>> activation_name("NewGELUActivation"), activation_name("gelu_pytorch_tanh"), activation_name("swish")
        ('GELU', 'GELU', 'SiLU')
        >>> activation_name("leaky_relu"), activation_name("Linear")
        ('LeakyReLU', None)
    """
    low = text.lower()
    return next((name for spelling, name in _ACTIVATION_SPELLINGS if spelling in low), None)


def activation_family(name: str) -> str | None:
    """``"saturating"``, ``"relu"`` or ``"smooth"`` for a canonical activation name; ``None`` for an unknown one."""
    return _FAMILY.get(name)


def _norm_kind(name: str) -> str:
    low = name.lower()
    for word, kind in (("batchnorm", "batch"), ("rmsnorm", "rms"), ("groupnorm", "group"),
                       ("instancenorm", "instance"), ("layernorm", "layer")):
        if word in low:
            return kind
    return "other"


def _family_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _longest_prefix(key: str, families: Iterable[str]) -> str:
    return max((f for f in families if key.startswith(f)), key=len, default="")


def ln_position_of_family(text: str) -> Literal["pre", "post"] | None:
    """Post-LN or pre-LN for a layer class name or a ``model_type``, by the longest known family prefix.

    Examples:
        >>> ln_position_of_family("BertLayer"), ln_position_of_family("GPT2Block"), ln_position_of_family("xlm-roberta")
        ('post', 'pre', 'post')
        >>> ln_position_of_family("RobertaPreLayerNormLayer"), ln_position_of_family("MyLayer") is None
        ('pre', True)
    """
    key = _family_key(text)
    if any(w in key for w in _PRE_LN_WORDS):
        return "pre"
    post, pre = _longest_prefix(key, _POST_LN), _longest_prefix(key, _PRE_LN)
    if not post and not pre:
        return None
    return "post" if len(post) > len(pre) else "pre"


# ---------------------------------------------------------------------------------------------------------------------
# The optimizer
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerTraits:
    """What the advice needs of the optimizer: its class name, whether it is adaptive (Adam-like: each entry's step
    is normalised, so a step is about the learning rate whatever the gradient), its learning rates when it was seen,
    and whether a scheduler set ``initial_lr`` in its parameter groups.

    The learning rate is read again from the live optimizer (held by a weak reference) when a remedy is written.

    Examples:
        >>> import torch
        >>> w = torch.zeros(2, requires_grad=True)
        >>> o = OptimizerTraits.of(torch.optim.AdamW([w], lr=6e-4))
        >>> o.name, o.adaptive, o.describe()
        ('AdamW', True, 'AdamW (adaptive) at learning rate 0.0006')
    """

    name: str
    adaptive: bool
    lrs: tuple[float, ...] = ()
    scheduled: bool = False
    refs: tuple[Callable[[], Any], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, optimizer: Any) -> OptimizerTraits:
        """The traits of an optimizer, a wrapper of one (an ``optimizer`` or ``optim`` attribute: Lightning,
        accelerate, ``ZeroRedundancyOptimizer``), or a sequence of them (a GAN's two: ``"Adam and SGD"``, adaptive
        only if all are)."""
        opts = [_unwrap_optimizer(o) for o in (optimizer if isinstance(optimizer, (list, tuple)) else [optimizer])]
        names: list[str] = []
        for o in opts:
            _add(names, type(o).__name__)
        groups = [g for o in opts for g in _param_groups(o)]
        return cls(name=" and ".join(names), adaptive=bool(opts) and all(_is_adaptive(o) for o in opts),
                   lrs=_lrs(groups), scheduled=any("initial_lr" in g for g in groups),
                   refs=tuple(r for r in map(_weak, opts) if r is not None))

    def current_lrs(self) -> tuple[float, ...]:
        """The learning rates now (from the live optimizers), else those seen when they were attached."""
        live = [o for o in (r() for r in self.refs) if o is not None]
        return _lrs([g for o in live for g in _param_groups(o)]) or self.lrs

    def lr_text(self) -> str:
        """``"learning rate 0.0006"``, ``"learning rates 1e-05 to 0.001"``, or ``""`` when unknown."""
        lrs = self.current_lrs()
        if not lrs:
            return ""
        if len(lrs) == 1:
            return f"learning rate {lrs[0]:.3g}"
        return f"learning rates {lrs[0]:.3g} to {lrs[-1]:.3g}"

    def describe(self) -> str:
        """``"AdamW (adaptive) at learning rate 0.0006"``, ``"SGD at learning rate 0.1"``."""
        lr = self.lr_text()
        return self.name + (" (adaptive)" if self.adaptive else "") + (f" at {lr}" if lr else "")


def _unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer inside Lightning's and accelerate's wrappers (an ``optimizer`` attribute), a few levels deep."""
    for _ in range(4):
        inner = next((i for i in (getattr(optimizer, a, None) for a in ("optimizer", "optim"))
                      if i is not None and i is not optimizer and hasattr(i, "param_groups")), None)
        if inner is None:
            break
        optimizer = inner
    return optimizer


def _is_adaptive(optimizer: Any) -> bool:
    low = type(optimizer).__name__.lower()
    return any(a in low for a in _ADAPTIVE)


def _weak(optimizer: Any) -> Callable[[], Any] | None:
    try:
        return weakref.ref(optimizer)
    except TypeError:
        return None


def _param_groups(optimizer: Any) -> list[dict[str, Any]]:
    groups = getattr(optimizer, "param_groups", None)
    return [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []


def _lrs(groups: Sequence[dict[str, Any]]) -> tuple[float, ...]:
    out = set()
    for g in groups:
        try:
            out.add(float(g["lr"]))
        except (KeyError, TypeError, ValueError, RuntimeError):
            continue
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------------------------------
# Looking at the model
# ---------------------------------------------------------------------------------------------------------------------


def _add(items: list[str], item: str | None) -> None:
    if item is not None and item not in items:
        items.append(item)


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__


def _attention_layer_candidate(m: nn.Module) -> bool:
    if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return True
    name = type(m).__name__
    return _LAYER_NAME.search(name) is not None and "Attention" not in name


def _norm_name(m: nn.Module) -> str | None:
    if isinstance(m, _TORCH_NORMS):
        return type(m).__name__
    name = type(m).__name__
    if not _NORM_NAME.search(name) or "Attention" in name:
        return None
    has_weight = getattr(m, "weight", None) is not None
    has_eps = any(hasattr(m, a) for a in ("eps", "variance_epsilon", "epsilon"))
    return name if has_weight or has_eps else None


def _module_activation(m: nn.Module) -> str | None:
    exact = _TORCH_ACTIVATIONS.get(type(m))  # exact first: ReLU6 is a subclass of Hardtanh
    if exact is not None:
        return exact
    for cls, name in _TORCH_ACTIVATIONS.items():
        if isinstance(m, cls):
            return name
    cls_name = type(m).__name__
    if cls_name.endswith("Activation") and next(m.children(), None) is None:
        return activation_name(cls_name)
    return None


def _layer_activation(m: nn.Module) -> str | None:
    """The activation of torch's transformer layers, a function (``F.relu``) unless given as a module."""
    if not isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return None
    act = getattr(m, "activation", None)
    if act is None or isinstance(act, nn.Module):
        return None  # a module is seen on its own
    return activation_name(getattr(act, "__name__", ""))


def _residual_name(name: str) -> bool:
    """A class name that says residual block (``BasicBlock``, ``ResBlock``, ``ResNetShortCut``, ``ConvNextLayer``)."""
    low = name.lower()
    return (any(w in low for w in _RESIDUAL_WORDS) or _RES_BLOCK.search(name) is not None
            or (low.startswith(_RESIDUAL_PREFIXES) and _LAYER_NAME.search(name) is not None))


def _residual_evidence(m: nn.Module) -> str | None:
    name = type(m).__name__
    named = _residual_name(name)
    flags = {f: getattr(m, f, None) for f in _RESIDUAL_FLAGS}
    if named and not any(v is False for v in flags.values()):
        return name
    flag = next((f for f, v in flags.items() if v is True), None)
    if flag is not None:
        return f"{name}.{flag}=True"
    child = next((c for c, _ in m.named_children() if _RESIDUAL_CHILD.match(c)), None)
    return f"{name}.{child}" if child is not None else None


def _recurrent(m: nn.Module) -> str | None:
    if isinstance(m, (nn.RNN, nn.RNNCell)):
        return f"RNN ({getattr(m, 'nonlinearity', 'tanh')})"
    if isinstance(m, (nn.LSTM, nn.LSTMCell)):
        return "LSTM"
    if isinstance(m, (nn.GRU, nn.GRUCell)):
        return "GRU"
    return None


_forward_cache: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _forward_activations(m: nn.Module) -> tuple[str, ...]:
    """Activations called as functions in the ``forward`` of a user-defined class (``torch.sigmoid(x)``,
    ``F.relu(x)``, ``x.tanh()``); classes of torch and the model libraries are known by their modules instead."""
    cls = type(m)
    if cls.__module__.split(".")[0] in _LIBRARY_ROOTS:
        return ()
    if cls not in _forward_cache:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        found: list[str] = []
        for fn, method in _FUNCTIONAL.findall(_COMMENT.sub("", source)):
            name = activation_name(fn or method)
            if name is not None and (fn or method).lower().replace("_", "") in _SPELLED:
                _add(found, name)
        _forward_cache[cls] = tuple(found)
    return _forward_cache[cls]


_SPELLED = frozenset(s for s, _ in _ACTIVATION_SPELLINGS) | {"leakyrelu", "relu6"}


class _Scan:
    """One pass over the model's modules, collecting the evidence ``ModelTraits`` is made of."""

    def __init__(self) -> None:
        self.activations: list[str] = []
        self.norms: list[str] = []
        self.residual: list[str] = []
        self.recurrent: list[str] = []
        self.layers: list[nn.Module] = []
        self.configs: list[Any] = []
        self.conv = False
        self._aux_roots: list[str] = []

    def auxiliary(self, qualified: str, m: nn.Module) -> bool:
        """Whether module ``qualified`` sits in a pooler, a head, a classifier or a gate (the model itself never
        does). Modules come parents first (``named_modules``)."""
        if any(qualified.startswith(r) for r in self._aux_roots):
            return True
        leaf = qualified.rsplit(".", 1)[-1].lower()
        if qualified and (_AUX_ATTR.search(leaf) is not None or _AUX_CLASS.search(type(m).__name__) is not None):
            self._aux_roots.append(qualified + ".")
            return True
        return False

    def visit(self, m: nn.Module, auxiliary: bool = False) -> None:
        if not auxiliary:
            for name in (_module_activation(m), _layer_activation(m), *_forward_activations(m)):
                _add(self.activations, name)
        _add(self.norms, _norm_name(m))
        _add(self.residual, _residual_evidence(m))
        _add(self.recurrent, _recurrent(m))
        self.conv = self.conv or isinstance(m, _CONVS)
        config = getattr(m, "config", None)
        if isinstance(getattr(config, "model_type", None), str) and all(config is not c for c in self.configs):
            self.configs.append(config)
            for key in _HF_ACTIVATION_KEYS:
                value = getattr(config, key, None)
                if isinstance(value, str):
                    _add(self.activations, activation_name(value))
        if _attention_layer_candidate(m) and any(_is_attention(d) for d in _descendants(m)):
            self.layers.append(m)

    def transformer_layers(self) -> list[nn.Module]:
        """The innermost attention layers: a ``Block`` wrapping ``Layer`` s is not counted."""
        ids = {id(m) for m in self.layers}
        return [m for m in self.layers if not any(id(d) in ids for d in _descendants(m))]

    def ln_position(self, layers: Sequence[nn.Module]) -> LNPosition | None:
        found = {p for p in (self._position(m) for m in layers) if p is not None}
        if not found:
            return None
        return found.pop() if len(found) == 1 else "mixed"

    def _position(self, m: nn.Module) -> Literal["pre", "post"] | None:
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            return "pre" if m.norm_first else "post"
        by_class = ln_position_of_family(type(m).__name__)
        for config in self.configs:
            flag = getattr(config, "do_layer_norm_before", None)  # OPT
            if isinstance(flag, bool) and _family_key(type(m).__name__).startswith(_family_key(config.model_type)):
                return "pre" if flag else "post"
        if by_class is not None or len(self.configs) != 1 or not type(m).__module__.startswith("transformers."):
            return by_class
        return ln_position_of_family(self.configs[0].model_type)


def _descendants(m: nn.Module) -> Iterable[nn.Module]:
    it = m.modules()
    next(it)  # the module itself
    return it


# ---------------------------------------------------------------------------------------------------------------------
# The traits and the remedies
# ---------------------------------------------------------------------------------------------------------------------


def _join(items: Sequence[str], conj: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conj} {items[-1]}"


_DISPLAY = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Hardtanh": "hardtanh", "Softsign": "softsign",
            "Hardsigmoid": "hard sigmoid", "LogSigmoid": "log-sigmoid", "Tanhshrink": "tanhshrink"}
_NORM_LABEL = {"batch": "BatchNorm", "layer": "LayerNorm", "rms": "RMSNorm", "group": "GroupNorm",
               "instance": "InstanceNorm"}
_CLIP = "gradient clipping (watch(..., clip=1.0))"
_LOWER_CLIP = "a lower clipping threshold (max_norm under the exploding ceiling)"


@dataclass(frozen=True)
class ModelTraits:
    """What the model contains that bears on the advice (see the module's docstring for the evidence behind each).

    Attributes:
        saturating: saturating activations found (``"Sigmoid"``, ``"Tanh"``...).
        vanilla_rnn: a vanilla ``nn.RNN`` / ``nn.RNNCell``.
        gated_rnn: an LSTM or GRU.
        normalization: any normalisation layer.
        depth: number of parameterised layers watched.
        activations: every activation found, canonical names in the order found (``"GELU"``, ``"ReLU"``).
        norms: the normalisation layers' class names (``"LayerNorm"``, ``"LlamaRMSNorm"``, ``"BatchNorm2d"``).
        residual: the evidence of residual connections (class names such as ``"BertLayer"``, ``"ResNetShortCut"``;
            ``"Net.residual=True"``); empty when none was found.
        transformer_layers: number of transformer layers; ``transformer_layer`` the class name of the first.
        ln_position: ``"post"``, ``"pre"`` or ``"mixed"`` for the transformer layers; ``None`` if unknown or none.
        recurrent: ``"RNN (tanh)"``, ``"RNN (relu)"``, ``"LSTM"``, ``"GRU"``, those present.
        convolutional: the model has convolutions.
        optimizer: the optimizer's traits, when given.
        clips: the watcher clips the gradients (``clip=``).
    """

    saturating: tuple[str, ...] = ()
    vanilla_rnn: bool = False
    gated_rnn: bool = False
    normalization: bool = False
    depth: int = 0
    activations: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()
    residual: tuple[str, ...] = ()
    transformer_layers: int = 0
    transformer_layer: str | None = None
    ln_position: LNPosition | None = None
    recurrent: tuple[str, ...] = ()
    convolutional: bool = False
    optimizer: OptimizerTraits | None = None
    clips: bool = False

    @classmethod
    def of(cls, model: nn.Module, depth: int, optimizer: Any = None, clips: bool = False) -> ModelTraits:
        """The traits of ``model`` (one pass over its modules; no forward pass). ``optimizer``: the training
        optimizer, a wrapper of one or a sequence of them (``OptimizerTraits.of()``), ``None`` (or empty) when
        unknown; ``clips``: the watcher clips the gradients."""
        scan = _Scan()
        for qualified, m in model.named_modules():
            scan.visit(m, scan.auxiliary(qualified, m))
        layers = scan.transformer_layers()
        acts = tuple(scan.activations)
        residual = [*scan.residual]
        _add(residual, type(layers[0]).__name__ if layers else None)
        return cls(
            saturating=tuple(a for a in acts if _FAMILY.get(a) == "saturating"),
            vanilla_rnn=any(r.startswith("RNN") for r in scan.recurrent),
            gated_rnn=any(r in ("LSTM", "GRU") for r in scan.recurrent),
            normalization=bool(scan.norms), depth=depth, activations=acts, norms=tuple(scan.norms),
            residual=tuple(residual), transformer_layers=len(layers),
            transformer_layer=type(layers[0]).__name__ if layers else None, ln_position=scan.ln_position(layers),
            recurrent=tuple(scan.recurrent), convolutional=scan.conv,
            optimizer=_optimizer_traits(optimizer), clips=clips,
        )

    def with_optimizer(self, optimizer: Any) -> ModelTraits:
        """These traits with ``optimizer`` (an adapter that learns the optimizer after ``watch()``)."""
        return replace(self, optimizer=_optimizer_traits(optimizer))

    # -- derived facts -------------------------------------------------------------------------------------------------

    @property
    def has_residual(self) -> bool:
        return bool(self.residual) or self.transformer_layers > 0

    @property
    def norm_kinds(self) -> frozenset[str]:
        """``{"batch", "layer", "rms", "group", "instance", "other"}``, those present."""
        kinds = frozenset(_norm_kind(n) for n in self.norms)
        return kinds or (frozenset({"other"}) if self.normalization else frozenset())

    @property
    def activation_families(self) -> frozenset[str]:
        """``{"saturating", "relu", "smooth"}``, those present."""
        return frozenset(f for f in (_FAMILY.get(a) for a in (*self.activations, *self.saturating)) if f)

    @property
    def post_ln(self) -> bool:
        return self.ln_position in ("post", "mixed")

    @property
    def adaptive(self) -> bool:
        return self.optimizer is not None and self.optimizer.adaptive

    # -- evidence ------------------------------------------------------------------------------------------------------

    def describe(self, missing: Sequence[str] = ()) -> str:
        """What the model has, as the first clause of a cause (``missing``: absences worth saying).

        Examples:
            >>> ModelTraits(activations=("Sigmoid",), saturating=("Sigmoid",), depth=12).describe(
            ...     ["residual connections", "normalisation layers"])
            'the model has sigmoid activations, and no residual connections or normalisation layers'
        """
        has = self._has()
        if not has and not missing:
            return ""
        if not has:
            return f"the model has no {_join(missing, 'or')}"
        tail = f", and no {_join(missing, 'or')}" if missing else ""
        return f"the model has {_join(has)}{tail}"

    def _transformer_text(self) -> str:
        n = self.transformer_layers
        pos = {"post": "post-LN", "pre": "pre-LN", "mixed": "post-LN and pre-LN"}.get(self.ln_position or "")
        what = ", ".join(p for p in ("residual", pos) if p)
        return f"{n} transformer layer{'s' if n > 1 else ''} ({self.transformer_layer}: {what})"

    def _has(self) -> list[str]:
        has = [self._transformer_text()] if self.transformer_layers else []
        other = [r for r in self.residual if r != self.transformer_layer]
        if other:
            has.append(f"residual connections ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''})")
        if self.norms or self.normalization:
            has.append(self._norm_text())
        acts = [_DISPLAY.get(a, a) for a in self.activations] or [_DISPLAY.get(s, s) for s in self.saturating]
        if acts:
            has.append(f"{'/'.join(acts)} activations")
        if self.recurrent:
            has.append(_join([_recurrent_text(r) for r in self.recurrent]))
        return has

    def _norm_text(self) -> str:
        if not self.norms:
            return "normalisation layers"
        parts = []
        for kind in sorted({_norm_kind(n) for n in self.norms}):
            names = [n for n in self.norms if _norm_kind(n) == kind]
            label = _NORM_LABEL.get(kind, "normalisation")
            parts.append(label if names == [label] else f"{label} ({', '.join(names)})")
        return _join(parts)

    def _optimizer_clause(self) -> str:
        return f"the optimizer is {self.optimizer.describe()}" if self.optimizer is not None else ""

    def _lower_lr(self) -> str:
        lrs = self.optimizer.current_lrs() if self.optimizer is not None else ()
        return f"a lower learning rate (than {lrs[-1]:.3g})" if lrs and lrs[-1] > 0 else "a lower learning rate"

    def _warmup(self) -> str:
        if self.optimizer is not None and self.optimizer.scheduled:
            return "learning-rate warm-up (if your schedule has none)"
        return "learning-rate warm-up (if you do not use it)"

    def _norm_advice(self) -> str:
        if self.convolutional and not self.transformer_layers:
            return "batch normalisation"
        if self.transformer_layers or self.recurrent:
            return "layer normalisation"
        return "batch or layer normalisation"

    def _init_advice(self) -> str | None:
        fams = self.activation_families
        if "saturating" in fams:
            return "Xavier initialisation (for the " + "/".join(_DISPLAY.get(s, s) for s in self.saturating) + ")"
        if not fams:
            return "He (ReLU) or Xavier (tanh/sigmoid) initialisation"
        if "relu" in fams and not self.normalization:
            return "He initialisation (for the ReLU family)"
        return None

    def _pre_ln_advice(self) -> str:
        if self.transformer_layer in ("TransformerEncoderLayer", "TransformerDecoderLayer"):
            return "pre-LN layers (norm_first=True)"
        return "a pre-LN variant (LayerNorm before each sublayer)"

    # -- remedies ------------------------------------------------------------------------------------------------------

    def vanishing_remedy(self) -> Remedy:
        mechanisms: list[str] = []
        tries: list[str] = []
        missing: list[str] = []
        if self.saturating:
            acts = "/".join(_DISPLAY.get(s, s) for s in self.saturating)
            mechanisms.append(_saturation_text(self.saturating))
            tries.append(f"ReLU-family activations (ReLU, LeakyReLU, GELU) instead of {acts}")
        if self.vanilla_rnn:
            mechanisms.append("back-propagation through many time steps multiplies by the recurrent weights and "
                              "the activation's derivative at each step")
            tries.append("an LSTM or GRU")
        if self.post_ln:
            mechanisms.append("post-LN layers normalise after each residual addition, which shrinks the gradient "
                              "reaching the early layers, most early in training and at a high learning rate")
            tries += [self._warmup(), self._pre_ln_advice(), self._lower_lr()]
        if not self.has_residual and self.depth >= 6:
            missing.append("residual connections")
            mechanisms.append(f"a deep stack ({self.depth} layers) with no skip path for the gradient")
            tries.append("residual connections")
        if not self.normalization and not (self.recurrent and not self.convolutional):
            missing.append("normalisation layers")
            tries.append(self._norm_advice())
        init = self._init_advice()
        if init is not None:
            tries.append(init)
        if not mechanisms:
            mechanisms.append(self._no_architectural_cause())
            tries += self._fallback_vanishing_tries(init is None)
        return Remedy(self._cause(missing, mechanisms), ", ".join(tries))

    def _no_architectural_cause(self) -> str:
        if not self.has_residual and self.depth < 6 and not self.activations:
            return "a long product of small per-layer derivatives (depth, initialisation or activations)"
        small = ("attention query/key projections while attention is near-uniform, embeddings, normalisation gains"
                 if self.transformer_layers else "normalisation gains, biases, rarely used embeddings")
        return (f"no architectural cause found: some layers' gradients are small by nature ({small}), or the "
                "learning rate does not suit them")

    def _fallback_vanishing_tries(self, init: bool) -> list[str]:
        tries = []
        if self.transformer_layers or self.adaptive:
            tries.append(self._warmup())
        if self.optimizer is None:
            tries.append("watch(..., optimizer=opt) to judge the layer by its updates")
        if init:
            tries.append("initialisation matched to the activations (He for ReLU, Xavier for tanh/sigmoid)")
        return tries

    def exploding_remedy(self, clipping: bool = False, updates: bool = False) -> Remedy:
        """``clipping``: a clipper acted on this step and the clipped norm is still over the ceiling. ``updates``: the
        optimizer's updates explode (the update-to-weight ratio), not (only) the gradient."""
        mechanisms: list[str] = []
        tries: list[str] = []
        adaptive_updates = updates and self.adaptive
        if self.vanilla_rnn:
            mechanisms.append("recurrent weights whose repeated product grows over long sequences")
        if adaptive_updates:
            name = self.optimizer.name if self.optimizer is not None else "the optimizer"
            mechanisms.append(f"{name} normalises each gradient entry, so its step is set by the "
                              "learning rate, not by the gradient: steps this large mean a learning rate too high "
                              "for this point of training")
        elif updates:
            mechanisms.append("a learning rate too large for the gradient at this point of training")
        else:
            mechanisms.append("a learning rate too large for this point of training, or a bad batch")
        if self.post_ln:
            mechanisms.append("post-LN layers are unstable early in training without warm-up")
        if not adaptive_updates:
            tries.append(_LOWER_CLIP if clipping or self.clips else _CLIP)
        if self.vanilla_rnn:
            tries.append("an LSTM or GRU")
        tries += [self._lower_lr(), self._warmup()]
        if self.post_ln:
            tries.append(self._pre_ln_advice())
        missing = []
        if not self.normalization and not self.recurrent:
            missing.append("normalisation layers")
            tries.append(self._norm_advice())
        return Remedy(self._cause(missing, mechanisms, optimizer=True), ", ".join(tries))

    def nonfinite_remedy(self) -> Remedy:
        cause = ("an overflow after exploding gradients or too large a learning rate, fp16 overflow, or a NaN/Inf "
                 "produced in the forward pass (log, sqrt or division of a bad value, bad input data)")
        tries = [self._lower_lr()]
        if not self.clips:
            tries.append("clipping (clip=1.0)")
        tries += ["on_nonfinite='skip' to drop bad steps", "and check this layer's inputs"]
        opt = self._optimizer_clause()
        return Remedy(f"{opt}; {cause}" if opt else cause, ", ".join(tries))

    def divergence_remedy(self) -> Remedy:
        """The loss rising far above its running minimum or its start."""
        opt_name = self.optimizer.name if self.optimizer is not None else "the optimizer"
        mechanisms = [f"a learning rate too high for {opt_name} at this point of training, so the steps overshoot, "
                      "or bad data (wrong labels, unscaled inputs, a corrupt batch)"]
        if self.post_ln:
            mechanisms.append("post-LN layers are unstable early in training without warm-up")
        tries = [self._lower_lr(), self._warmup()]
        if not self.clips:
            tries.append(_CLIP)
        if self.post_ln:
            tries.append(self._pre_ln_advice())
        tries.append("a check of the data (labels, input scale, non-finite values)")
        return Remedy(self._cause([], mechanisms, optimizer=True), ", ".join(tries))

    def _cause(self, missing: Sequence[str], mechanisms: Sequence[str], optimizer: bool = False) -> str:
        """Evidence first (what the model has, the optimizer), then the mechanisms."""
        parts = [self.describe(missing)]
        if optimizer:
            parts.append(self._optimizer_clause())
        return "; ".join(p for p in (*parts, *mechanisms) if p)


def _optimizer_traits(optimizer: Any) -> OptimizerTraits | None:
    if optimizer is None or (isinstance(optimizer, (list, tuple)) and not optimizer):
        return None
    return OptimizerTraits.of(optimizer)


def _recurrent_text(r: str) -> str:
    return {"LSTM": "an LSTM", "GRU": "a GRU"}.get(r, f"a vanilla {r}")


def _saturation_text(saturating: Sequence[str]) -> str:
    acts = "/".join(_DISPLAY.get(s, s) for s in saturating)
    if tuple(saturating) == ("Sigmoid",):
        bound = "at most 0.25"
    elif tuple(saturating) == ("Tanh",):
        bound = "at most 1"
    else:
        bound = "at most 0.25 (sigmoid) or 1 (tanh)"
    return f"the {acts}'s derivative is {bound} and near 0 when saturated, multiplied layer after layer"
