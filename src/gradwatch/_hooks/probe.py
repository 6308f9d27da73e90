"""Forward and backward hooks: activation statistics, gradient flow through every module, and the NaN origin.

The ``ActivationProbe`` is what ``watch(model, activations=True)`` plugs into the watcher. Each step the watcher
asks it for the device values its hooks recorded (``ActivationProbe.collect()``), ships them with the step's packed
vector (one transfer per logged step, as for the gradient statistics), and hands the host values back
(``ActivationProbe.process()``) to become scalars and symptoms.

Costs and how they are kept down:

* Hooks are attached only for the steps that sample (every ``activation_every_n_steps``), and detached otherwise;
  ``nan_origin="every_step"`` keeps them attached.
* A hook does a few reductions on its module's output and appends the 0-d results to a list: no host sync, ever.
  Finiteness flags are L2 norms (NaN if any NaN, else Inf if any Inf), not ``isfinite(...).all()``.
* The gradient flowing out of a module is seen by a tensor hook registered on its output during the forward pass of
  a sampled step (no full module backward hooks, which break on in-place ops and cost more).
* A tensor that is the output of one module and the input of the next is measured once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import ConfigurationError, warn_user
from .._globs import match_globs
from .._layers import ROOT_LAYER, is_floating, unwrap_model
from .._rules import HostStats
from .._symptoms import Symptom
from .._thresholds import Thresholds
from .._validate import check_choice, check_int
from . import rules
from .activations import OutputKind, classify, flag, output_stats

__all__ = ["ACTIVATION_KINDS", "ActivationProbe", "NanOrigin", "resolve_nan_origin"]

#: ``"off"``; ``"sampled"``: on the steps that sample activations; ``"every_step"``: on every step.
NanOrigin = Literal["off", "sampled", "every_step"]
"""When to record the NaN-origin flags: ``"off"``, ``"sampled"`` (on sampled steps) or ``"every_step"``."""
#: Symptom kinds the probe adds.
ACTIVATION_KINDS: tuple[str, ...] = ("saturated", "dead")
"""Symptom kinds the probe adds: ``("saturated", "dead")``."""
_MAX_CALLS = 100_000  # forward calls recorded between two steps; the first ones are those that matter for the origin


class _Buffer:
    """0-d device tensors in the order they were added, stacked once per step per (device, dtype).

    Only the thread that runs the forward pass adds to it; backward hooks queue their tensors in their own list (one
    atomic append), moved here at ``ActivationProbe.collect()``.
    """

    def __init__(self) -> None:
        self._items: list[Tensor] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, t: Tensor) -> int:
        self._items.append(t)
        return len(self._items) - 1

    def gather(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, np.ndarray]:
        """One vector on ``device`` and the host permutation that puts it back in the order of ``add()``."""
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(self._items):
            groups.setdefault((t.device, t.dtype), []).append(i)
        parts, order = [], []
        for idx in groups.values():
            parts.append(torch.stack([self._items[i] for i in idx]).to(device, dtype, non_blocking=True))
            order += idx
        perm = np.empty(len(order), dtype=np.int64)
        perm[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        return torch.cat(parts), perm


class _Hook:
    """One of the probe's hooks: ``fn(*bound, *args)``. A copy of the model it sits on carries a ``_NoHook`` in
    its place: ``copy.deepcopy(model)`` and ``torch.save(model)`` (pickle) neither copy the probe (whose weak
    references cannot be pickled) nor leave the copy a live hook that records into it after ``close()``."""

    __slots__ = ("bound", "fn")

    def __init__(self, fn: Callable[..., None], *bound: Any) -> None:
        self.fn = fn
        self.bound = bound

    def __call__(self, *args: Any) -> None:
        self.fn(*self.bound, *args)

    def __reduce__(self) -> tuple[type[_NoHook], tuple[()]]:
        return _NoHook, ()

    def __deepcopy__(self, memo: dict[int, Any]) -> _NoHook:
        return _NoHook()


class _NoHook:
    """What a copied or unpickled model holds where the original had a gradwatch hook: it does nothing (a hook returning
    ``None`` leaves the output, or the gradient, as it is)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class _Seen:
    """A tensor met this step: its flag's handle at a version, and its backward slot."""

    ref: weakref.ref[Tensor]
    version: int = -1
    flag: int = -1
    slot: int = -1
    slot_version: int = -1


@dataclass
class _Token:
    step: int
    sampled: bool
    size: int
    perm: np.ndarray
    calls: list[rules.Call]
    events: list[tuple[int, int]]


class ActivationProbe:
    """Hooks on a model's modules for activation statistics, gradient flow and the NaN origin.

    Usually created by ``gradwatch.watch()`` (``activations=``, ``activation_every_n_steps=``, ``nan_origin=``).

    Args:
        model: the model (``torch.compile``'d models get no hooks, with one warning).
        activations: ``True`` for every module, a glob or globs over module names for some, ``False`` for none.
        every_n_steps: sampling interval of activation statistics (and of ``nan_origin="sampled"``).
        nan_origin: when to record the flags that locate the first non-finite value.
        thresholds: the rules' parameters (``saturated_frac``, ``dead_frac``, ``activation_patience``).

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Tanh())  # the probe holds it weakly only
    >>> probe = ActivationProbe(model, activations=True, every_n_steps=1, nan_origin="sampled",
    ...                         thresholds=Thresholds())
    >>> probe.prepare(0)  # attach the hooks for step 0
    >>> probe.names, probe.attached
    (['__root__', '0', '1'], True)
    >>> probe.close()
    """

    kinds = ACTIVATION_KINDS

    def __init__(
        self,
        model: nn.Module,
        *,
        activations: bool | str | Sequence[str],
        every_n_steps: int,
        nan_origin: NanOrigin,
        thresholds: Thresholds,
    ) -> None:
        self.every_n_steps = check_int("activation_every_n_steps", every_n_steps, minimum=1)
        self.nan_origin: NanOrigin = check_choice("nan_origin", nan_origin, get_args(NanOrigin))  # type: ignore[assignment]
        self.thresholds = thresholds
        root = unwrap_model(model)
        named = list(root.named_modules())
        self.names: list[str] = [name or ROOT_LAYER for name, _ in named]
        self._types = [type(m).__name__ for _, m in named]
        self._mods = [weakref.ref(m) for _, m in named]
        self._root = weakref.ref(root)
        selected = _select(self.names, activations)
        self._kinds: list[OutputKind | None] = [classify(m) if keep else None
                                                for (_, m), keep in zip(named, selected, strict=True)]
        self.enabled = any(selected) or self.nan_origin != "off"
        if self.enabled and _is_compiled(model, root):

            warn_user("gradwatch: activations and nan_origin are switched off for a torch.compile'd model "
                          "(hooks would force graph breaks and recompilations); the gradient statistics still work. "
                          "Watch the model before compiling it to keep hooks out of compiled code.")
            self.enabled = False
        self._state = rules.ActivationState()
        self._handles: list[Any] = []
        self._tensor_handles: list[Any] = []
        self._live = True
        self._stats_on = self._flags_on = False
        self._compiling_seen = self._compile_warned = False
        self._silent = 0  # consecutive hooked steps without a single recorded call
        self._reset()

    # ------------------------------------------------------------------ the watcher's side
    def prepare(self, step: int) -> None:
        """Attach the hooks if step ``step`` (the next one) samples, detach them otherwise."""
        if not (self.enabled and self._live):
            return
        sampled = step % self.every_n_steps == 0
        self._stats_on = sampled and any(k is not None for k in self._kinds)
        self._flags_on = self.nan_origin == "every_step" or (self.nan_origin == "sampled" and sampled)
        want = self._stats_on or self._flags_on
        if want and not self._handles:
            self._add_hooks()
        elif not want and self._handles:
            self._remove_hooks()

    def collect(self, step: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor | None, _Token | None]:
        """This step's recorded device values as one vector on ``device`` (or ``None``), and the token to decode it."""
        sampled = self._stats_on
        self._warn_if_silent()
        for h in self._tensor_handles:  # the graph that held them is normally gone; retain_graph=True is not
            h.remove()
        events = [(slot, self._buffer.add(t)) for slot, t in self._grads]
        if not len(self._buffer):
            self._reset()
            return None, None
        vec, perm = self._buffer.gather(device, dtype)
        token = _Token(step, sampled, vec.numel(), perm, self._calls, events)
        self._reset()
        return vec, token

    def process(
        self, token: _Token, values: np.ndarray, symptoms: list[Symptom], onsets: list[Symptom],
        stats: HostStats | None = None,
    ) -> tuple[list[Symptom], list[Symptom], dict[str, float]]:
        """Turn one step's host values into scalars and symptoms (``stats``: the step's gradient statistics).

        Returns ``(symptoms, onsets, scalars)``: the step's symptoms with the origin filled in on non-finite ones and
        the activation symptoms added, the onsets likewise, and the scalars to log.
        """
        v = np.asarray(values, dtype=np.float64)[token.perm]
        scalars: dict[str, float] = {}
        if token.sampled:
            act = rules.module_stats(token.calls, v, self._kinds)
            scalars = self._activation_scalars(act, rules.grad_out_norms(token.calls, token.events, v))
            found, started = rules.activation_symptoms(
                token.step, {self.names[i]: s for i, s in act.items()},
                dict(zip(self.names, self._types, strict=True)), self.thresholds, self._state)
            symptoms = symptoms + found
            onsets = onsets + started
        if any(s.kind == "nonfinite" for s in symptoms):
            origin = rules.locate_origin(token.calls, token.events, v, self.names, self._types,
                                         [s.layer for s in symptoms if s.kind == "nonfinite" and s.layer is not None],
                                         _param_norms(stats))
            if origin is not None:
                symptoms, onsets = _with_origin(symptoms, onsets, origin)
        return symptoms, onsets, scalars

    def state_dict(self) -> dict[str, Any]:
        return self._state.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._state.load_state_dict(state)

    def remove(self) -> None:
        """Remove every hook; the probe records nothing from now on (the watcher calls it on close)."""
        self.close()

    def close(self) -> None:
        self._live = False
        self._remove_hooks()
        for h in self._tensor_handles:
            h.remove()
        self._reset()
        self._mods = []

    # ------------------------------------------------------------------ hooks
    def _on_forward(self, index: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                    output: Any) -> None:
        if not self._records(index):
            return
        outs = _floating(output)
        if not outs:
            return
        kind = self._kinds[index] if self._stats_on else None
        call = rules.Call(index)
        first_flag = self._record_stats(call, outs[0], kind) if kind is not None else -1
        if self._flags_on:
            self._record_flags(call, _inputs(args, kwargs), outs, first_flag)
        elif kind is not None:
            call.out_slots = [self._slot(t) for t in outs if t.requires_grad]
        self._calls.append(call)

    def _records(self, index: int) -> bool:
        """Whether the forward call of module ``index`` that just ran is recorded."""
        if not self._live or len(self._calls) >= _MAX_CALLS or not torch.is_grad_enabled():
            return False
        if torch.compiler.is_compiling():
            self._compiling_seen = True
            return False
        root = self._root()
        if root is None or not root.training:
            return False
        # Activation checkpointing (torch.utils.checkpoint, non-reentrant) runs a module's forward again inside
        # backward to rebuild what it dropped: the same values, not another call. The reentrant variant runs its first
        # forward without grad (skipped above), so its recomputation is the one recorded.
        if _graph_task_id() == -1:
            self._forward_seen.add(index)
            return True
        return index not in self._forward_seen

    def _record_stats(self, call: rules.Call, out: Tensor, kind: OutputKind) -> int:
        """Record the statistics of ``out`` (the call's first output); returns the handle of its finiteness flag."""
        handles = [self._buffer.add(t) for t in output_stats(out, kind)]
        call.stats = handles
        call.numel = out.numel()
        call.units = call.numel // out.shape[0] if out.dim() >= 2 else call.numel
        return handles[1]  # the output's L2 norm is its finiteness flag

    def _record_flags(self, call: rules.Call, inputs: list[Tensor], outs: list[Tensor], first_flag: int) -> None:
        """Record the finiteness flags of the call's inputs and outputs, and hook their gradients."""
        call.inputs = [self._input_flag(t, outs) for t in inputs]
        call.outputs = [self._output_flag(t, first_flag if j == 0 else -1) for j, t in enumerate(outs)]
        # inputs first: an in-place module's input is its output's earlier version
        call.in_slots = [self._slot(t, stale_ok=any(o is t for o in outs)) for t in inputs if t.requires_grad]
        call.out_slots = [self._slot(t) for t in outs if t.requires_grad]

    def _on_grad(self, slot: int, grad: Tensor | None) -> None:
        if self._live and grad is not None:
            self._grads.append((slot, flag(grad)))  # one atomic append: safe from the autograd device threads

    def _seen(self, t: Tensor) -> _Seen:
        seen = self._tensors.get(id(t))
        if seen is None or seen.ref() is not t:
            seen = self._tensors[id(t)] = _Seen(weakref.ref(t))
        return seen

    def _input_flag(self, t: Tensor, outs: list[Tensor]) -> int:
        seen = self._seen(t)
        # An in-place module (ReLU(inplace=True)) bumped its input's version: the flag recorded before still holds.
        if seen.flag >= 0 and (seen.version == t._version or any(o is t for o in outs)):
            return seen.flag
        seen.flag, seen.version = self._buffer.add(flag(t)), t._version
        return seen.flag

    def _output_flag(self, t: Tensor, handle: int) -> int:
        seen = self._seen(t)
        if handle < 0 and seen.flag >= 0 and seen.version == t._version:
            return seen.flag  # a container returning its last child's output: measured already
        seen.flag = handle if handle >= 0 else self._buffer.add(flag(t))
        seen.version = t._version
        return seen.flag

    def _slot(self, t: Tensor, stale_ok: bool = False) -> int:
        """The backward slot of ``t``: one tensor hook per tensor version (an in-place op makes a new version)."""
        seen = self._seen(t)
        if seen.slot < 0 or (seen.slot_version != t._version and not stale_ok):
            seen.slot, seen.slot_version = self._next_slot, t._version
            self._next_slot += 1
            self._tensor_handles.append(
                t.register_hook(_Hook(self._on_grad, seen.slot)))  # type: ignore[no-untyped-call]
        return seen.slot

    # ------------------------------------------------------------------ internals
    def _reset(self) -> None:
        self._buffer = _Buffer()
        self._calls: list[rules.Call] = []
        self._forward_seen: set[int] = set()  # modules called in this step's forward (outside backward)
        self._grads: list[tuple[int, Tensor]] = []
        self._tensors: dict[int, _Seen] = {}
        self._tensor_handles = []
        self._next_slot = 0

    def _add_hooks(self) -> None:
        for i, ref in enumerate(self._mods):
            module = ref()
            if module is not None and (self._flags_on or self._kinds[i] is not None):
                self._handles.append(module.register_forward_hook(_Hook(self._on_forward, i), with_kwargs=True))

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _warn_if_silent(self) -> None:
        """Warn once when the hooks see compiled code, or record nothing for 3 steps in a row."""
        root = self._root()
        # Hooks on, a training-mode model, and not one call: compiled code ran instead (torch.compile does not
        # re-trace when hooks are added after compiling, so the hooks may not even be called).
        self._silent = self._silent + 1 if self._handles and not self._calls and root is not None and root.training \
            else 0
        if (self._compiling_seen or self._silent >= 3) and not self._compile_warned:
            self._compile_warned = True

            warn_user("gradwatch: activations and nan_origin recorded nothing: the model runs under torch.compile "
                          "(compiled code skips gradwatch's hooks), or its forward calls none of the hooked modules. "
                          "The gradient statistics still work.")

    def _activation_scalars(self, act: dict[int, rules.ActStats], grad_out: dict[int, float]) -> dict[str, float]:
        """The scalars of a sampled step: each module's activation statistics and output-gradient norm."""
        scalars: dict[str, float] = {}
        for i, s in act.items():
            name = self.names[i]
            scalars[f"gradwatch/act_mean/{name}"] = s.mean
            scalars[f"gradwatch/act_std/{name}"] = s.std
            scalars[f"gradwatch/act_zero_frac/{name}"] = s.zero_frac
            if s.saturated_frac is not None:
                scalars[f"gradwatch/act_saturated_frac/{name}"] = s.saturated_frac
            if s.dead_frac is not None:
                scalars[f"gradwatch/act_dead_frac/{name}"] = s.dead_frac
        for i, norm in grad_out.items():
            if self._kinds[i] is not None:
                scalars[f"gradwatch/grad_out_norm/{self.names[i]}"] = norm
        return scalars

    @property
    def attached(self) -> bool:
        """Whether forward hooks are on the model now."""
        return bool(self._handles)

    @property
    def compiled_calls_skipped(self) -> bool:
        """Whether a hook was reached inside ``torch.compile`` tracing (and stayed out of it)."""
        return self._compiling_seen


def _with_origin(
    symptoms: list[Symptom], onsets: list[Symptom], origin: rules.Origin
) -> tuple[list[Symptom], list[Symptom]]:
    replaced: dict[int, Symptom] = {}
    out = []
    for s in symptoms:
        if s.kind == "nonfinite":
            new = s.with_origin(origin.where, origin.message)
            replaced[id(s)] = new
            s = new
        out.append(s)
    return out, [replaced.get(id(s), s) for s in onsets]


def _param_norms(stats: HostStats | None) -> dict[str, float] | None:
    """Each layer's parameter norm this step, when the gradient statistics have them."""
    if stats is None or stats.param_norm is None:
        return None
    return dict(zip(stats.names, stats.param_norm.tolist(), strict=True))


def _graph_task_id() -> int:
    """The autograd engine's current graph task, -1 outside backward (a private torch function: -1 if it is gone)."""
    getter = getattr(torch._C, "_current_graph_task_id", None)
    return getter() if getter is not None else -1


def _floating(obj: Any, depth: int = 0) -> list[Tensor]:
    """Floating-point (or complex) dense tensors in ``obj``, depth-first through tuples, lists and dicts."""
    if isinstance(obj, Tensor):
        return [obj] if is_floating(obj) and obj.layout == torch.strided and obj.numel() > 0 else []
    if depth > 4:
        return []
    items = obj if isinstance(obj, (tuple, list)) else obj.values() if isinstance(obj, Mapping) else ()
    return [t for item in items for t in _floating(item, depth + 1)]


def _inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Tensor]:
    """The floating-point tensors a module was called with (a lone tensor argument without the tuple walk)."""
    if not kwargs and len(args) == 1 and isinstance(args[0], Tensor):
        return _floating(args[0])
    return _floating((args, kwargs))


def _select(names: list[str], activations: bool | str | Sequence[str]) -> list[bool]:
    """Which modules ``activations=`` selects: all or none, or those whose name a glob matches."""
    if isinstance(activations, bool):
        return [activations] * len(names)
    return match_globs(names, _activation_patterns(activations),
                       what="activations pattern {pattern} matches no module; the modules are")


def _activation_patterns(activations: str | Sequence[str]) -> list[str]:
    """``activations=`` as a list of globs; raises ConfigurationError unless it is one non-empty glob or a list."""
    patterns = [activations] if isinstance(activations, str) else list(activations) \
        if isinstance(activations, (list, tuple)) else None
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigurationError(f"activations={activations!r} must be True, False, a glob over module names, or a "
                                 "list of globs.")
    return patterns


def _is_compiled(model: nn.Module, root: nn.Module) -> bool:
    return (root is not model and hasattr(model, "_orig_mod")) or getattr(root, "_compiled_call_impl", None) is not None


def resolve_nan_origin(nan_origin: NanOrigin | None, activations: Any) -> NanOrigin:
    """``None`` means ``"sampled"`` with activations on and ``"off"`` without."""
    if nan_origin is None:
        return "sampled" if activations is not False else "off"
    return check_choice("nan_origin", nan_origin, get_args(NanOrigin))  # type: ignore[return-value]
