"""What a *layer* is: a module that directly owns parameters, named by its qualified name."""

from __future__ import annotations

import dataclasses
import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ._errors import ConfigurationError
from ._globs import match_globs

__all__ = ["ROOT_LAYER", "Layer", "discover_layers", "follow_layers", "registrations", "replaced_parameters",
           "unwrap_model"]

#: Name of the layer formed by parameters that the root module owns directly
#: (for example a positional-embedding ``nn.Parameter`` assigned in ``__init__``).
ROOT_LAYER = "__root__"
"""Name of the layer formed by the parameters the root module owns directly (``"__root__"``)."""

#: Name segments that wrappers insert inside a model (FSDP1 units, activation checkpointing, a compiled submodule):
#: dropped from layer names, so that names are those of the unwrapped model.
_WRAPPER_SEGMENTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


@dataclass(frozen=True)
class Layer:
    """One watched layer: its name, its module's class name and the parameters it owns (tied ones once)."""

    name: str
    kind: str
    params: tuple[nn.Parameter, ...]
    #: Where each parameter sits in the unwrapped model (``model.get_parameter(path)``), wrapper segments included.
    paths: tuple[str, ...] = ()
    #: The module that owns the parameters (held weakly), and each parameter's name on it: how
    #: ``follow_layers()`` finds a parameter assigned anew (``layer.weight = nn.Parameter(...)``).
    owner: weakref.ref[nn.Module] | None = field(default=None, compare=False, repr=False)
    attrs: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Peel off wrappers that add a prefix to names (DDP/DataParallel ``module.``, ``torch.compile``'s
    ``_orig_mod.``)."""
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        break
    return model


def replaced_parameters(model: nn.Module, layer: Layer) -> list[str]:
    """The paths of ``layer``'s parameters that ``model`` now holds as *another* parameter object: replaced after
    ``discover_layers()`` (``resize_token_embeddings``, a module swapped for a new one). A path that no longer leads
    to a parameter (a wrapper that flattened it, an attribute deleted) is not reported: nothing can be said of it.

    Examples:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> (layer,) = discover_layers(model)
        >>> replaced_parameters(model, layer)
        []
        >>> model[0] = nn.Linear(2, 2)
        >>> replaced_parameters(model, layer)
        ['0.weight', '0.bias']
    """
    root = unwrap_model(model)
    out = []
    for path, p in zip(layer.paths, layer.params, strict=False):  # a Layer made without paths: nothing to check
        try:
            now = root.get_parameter(path)
        except AttributeError:
            continue
        if now is not p:
            out.append(path)
    return out


def discover_layers(model: nn.Module, patterns: str | Sequence[str] | None = None) -> list[Layer]:
    """List the layers of ``model`` in registration order, keeping those whose name matches ``patterns``.

    A parameter shared by several modules (tied weights) belongs to the first module that registers it. A layer whose
    parameters are all tied to an earlier layer disappears. Parameters owned by the root module form the layer
    ``ROOT_LAYER``.

    Raises:
        ConfigurationError: when a pattern matches no layer, or the model has no parameter at all.

    Examples:
        >>> [layer.name for layer in discover_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))]
        ['0', '2']
    """
    model = unwrap_model(model)
    _watch_registrations()
    layers = _all_layers(model)
    if not layers:
        some = next(model.parameters(), None) is not None  # integer or bool ones only, which have no gradient
        raise ConfigurationError(f"{type(model).__name__} has no {'floating-point ' if some else ''}parameters: there "
                                 "is nothing for gradwatch to watch.")
    if patterns is None:
        return layers
    model_name = type(model).__name__.replace("{", "{{").replace("}", "}}")  # literal text in match_globs' template
    keep = match_globs([layer.name for layer in layers], _layer_patterns(patterns),
                       what=f"layers pattern {{pattern}} matches no layer of {model_name}; its layers are")
    return [layer for layer, kept in zip(layers, keep, strict=True) if kept]


def _all_layers(model: nn.Module) -> list[Layer]:
    """Every layer of ``model`` (unwrapped already), in registration order; tied parameters go to the first owner."""
    seen: set[int] = set()
    layers: list[Layer] = []
    for path, module in model.named_modules():
        own, attrs = _own_parameters(module, seen)
        if own:
            layers.append(Layer(name=_layer_name(path), kind=_kind(module), params=tuple(own),
                                paths=tuple(f"{path}.{a}" if path else a for a in attrs),
                                owner=weakref.ref(module), attrs=tuple(attrs)))
    return layers


def _own_parameters(module: nn.Module, seen: set[int]) -> tuple[list[nn.Parameter], list[str]]:
    """The floating-point parameters ``module`` registers itself that no module before it did (``seen``, updated),
    and their names on it. An integer or bool parameter (a counter kept as ``nn.Parameter(..., requires_grad=False)``)
    can have no gradient: it is left out."""
    own, attrs = [], []
    for attr, p in module.named_parameters(recurse=False):
        if id(p) in seen or not is_floating(p):
            continue
        seen.add(id(p))
        own.append(p)
        attrs.append(attr)
    return own, attrs


# ---------------------------------------------------------------------------------------------- following parameters
#: How many parameters were registered on any module of this process (``module.weight = nn.Parameter(...)``,
#: ``register_parameter``) since gradwatch first watched a model: a watcher compares it with the count it last saw,
#: one integer comparison a step, and looks for replaced parameters only when it moved.
_REGISTRATIONS = [0]
_HOOK: list[object] = []


def _count_registration(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _REGISTRATIONS[0] += 1


def _watch_registrations() -> None:
    """Count parameter registrations from now on (one global torch hook, installed once, that adds 1 to an int)."""
    if not _HOOK:
        _HOOK.append(nn.modules.module.register_module_parameter_registration_hook(_count_registration))


def registrations() -> int:
    """How many parameters were registered on any module since gradwatch first watched a model (see
    ``follow_layers()``)."""
    return _REGISTRATIONS[0]


def follow_layers(layers: Sequence[Layer]) -> list[Layer] | None:
    """``layers`` with the parameters their modules hold now under the same names, or ``None`` if none changed.

    A parameter assigned anew on its module after ``discover_layers()`` (``model[0].weight = nn.Parameter(...)``)
    takes the old one's place; a name that no longer holds a floating-point parameter keeps the old one (nothing can be
    said of it), and a module that was collected keeps its layer as it was. A new parameter that an earlier layer
    already holds (weights tied after ``watch()``) is left to that layer, as ``discover_layers()`` would.

    Examples:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> layers = discover_layers(model)
        >>> follow_layers(layers) is None
        True
        >>> model[0].bias = nn.Parameter(torch.ones(2))
        >>> followed = follow_layers(layers)
        >>> followed[0].params[1] is model[0].bias, followed[0].paths
        (True, ('0.weight', '0.bias'))
    """
    out: list[Layer] = []
    seen: set[int] = set()
    for layer in layers:
        now = _current(layer)
        keep = [i for i, p in enumerate(now) if id(p) not in seen]  # a parameter goes to its first layer only
        seen.update(map(id, now))
        if len(keep) == len(layer.params) and all(map(operator.is_, now, layer.params)):
            out.append(layer)
        else:
            out.append(dataclasses.replace(layer, params=tuple(now[i] for i in keep),
                                           paths=_pick(layer.paths, keep), attrs=_pick(layer.attrs, keep)))
    return out if any(map(operator.is_not, out, layers)) else None


def _pick(items: tuple[str, ...], keep: Sequence[int]) -> tuple[str, ...]:
    """``items`` at the positions ``keep`` (a Layer made by hand may have no paths or attribute names)."""
    return tuple(items[i] for i in keep if i < len(items))


def _current(layer: Layer) -> tuple[nn.Parameter, ...]:
    """The parameters ``layer``'s module holds now under its parameters' names (the old one where none is)."""
    owner = layer.owner() if layer.owner is not None else None
    if owner is None or len(layer.attrs) != len(layer.params):
        return layer.params
    held = owner._parameters
    return tuple(p if isinstance(p, nn.Parameter) and is_floating(p) else old
                 for p, old in zip((held.get(a) for a in layer.attrs), layer.params, strict=True))


def _layer_name(path: str) -> str:
    """The layer name of the module at ``path``: the path without wrapper segments, ``ROOT_LAYER`` if empty."""
    name = ".".join(part for part in path.split(".") if part not in _WRAPPER_SEGMENTS) if path else path
    return name or ROOT_LAYER


def _layer_patterns(patterns: str | Sequence[str]) -> list[str]:
    """``layers=`` as a list of globs; raises ConfigurationError unless it is one non-empty glob or several."""
    listed = [patterns] if isinstance(patterns, str) else list(patterns)
    if not listed or not all(isinstance(p, str) and p for p in listed):
        raise ConfigurationError(f"layers={listed!r} must be a non-empty glob string or a sequence of them.")
    return listed


def _kind(module: nn.Module) -> str:
    """The module's class name; FSDP2's ``fully_shard`` subclasses (``FSDPLinear``) give their original's."""
    for cls in type(module).__mro__:
        if not cls.__module__.startswith("torch.distributed.fsdp"):
            return cls.__name__
    return type(module).__name__  # pragma: no cover


def is_floating(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()
