"""Per-layer update-to-weight ratios: ``||Δw|| / ||w||`` of each watched layer's last optimizer step.

``watch(model, optimizer=opt)`` gives each optimizer a pair of step hooks (``UpdateTracker``):

* the **pre-hook** measures ``||w||²`` of every watched parameter the optimizer holds, before the step (one fused
  ``torch._foreach_norm`` per parameter group, device and dtype; no copy);
* the **post-hook** measures ``||Δw||²`` of every such parameter the step updated (those with a gradient), and adds
  both up per layer. For ``torch.optim.SGD``, ``Adam`` and ``AdamW`` (foreach, single-tensor or fused) it needs no copy
  of the parameters: the update is rebuilt from what the step left behind (the gradient, the momentum buffer or Adam's
  moments, the parameters after the step and the group's hyper-parameters). Every case is
  ``Δw = -(c·w_new + u) / (1 - c)``, exact algebra (the parameters before the step solve the step's equation):

  ======================================  ===============================================  =============
  optimizer                               ``u``                                            ``c``
  ======================================  ===============================================  =============
  SGD with momentum, not Nesterov         ``lr·buf``                                       0
  SGD without momentum                    ``±lr·g``                                        ``lr·wd``
  SGD, Nesterov                           ``lr·(±g + momentum·buf)``                       ``lr·wd``
  Adam (L2 weight decay, in the moments)  ``lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)``       0
  AdamW, ``Adam(decoupled_weight_decay)``  the same                                         ``lr·wd``
  ======================================  ===============================================  =============

  ``±`` is ``-`` with ``maximize=True``; ``buf`` the momentum buffer after the step (dampening is inside it); ``m``,
  ``v`` Adam's moments after the step (``v`` is ``max_exp_avg_sq`` with ``amsgrad``), ``bc1 = 1 - beta1**t``,
  ``bc2 = 1 - beta2**t`` with ``t`` the parameter's step count. ``lr`` (and the betas, the weight decay) may be
  tensors. Half-precision parameters give the update the optimizer computed, before it was rounded into them.
  Any other optimizer goes through the **generic** path: a copy of its watched parameters that require a gradient,
  taken in the pre-hook and subtracted in the post-hook (extra memory: those parameters' size, while it steps). A
  sparse gradient under SGD is densified (one dense copy of that gradient).

**Memory.** The exact paths cut big tensors into views (``pieces()``) and run the fused ops on batches of views, in
place as far as they can: one batch-sized temporary (the update being rebuilt), two when a hyper-parameter is a
device tensor, none for momentum SGD or SGD without weight decay (a norm times ``lr``), plus a float32 copy for the
norm of a half-precision batch. Batches are sized so that these temporaries stay under ``MEMORY_FRACTION`` of
the optimised watched parameters' bytes, or under ``MIN_BUDGET`` bytes for models so small (under about 5 MB)
that 5% would make the batches uselessly small. Between steps the tracker holds one number per parameter and two per
layer.

**Synchronisation.** None: every value stays on the device until the step's packed vector travels (one transfer per
logged step). Which parameters have a gradient, the step counts of ``torch.optim`` optimizers that keep them on the
CPU, and ``lr`` given as a float or a CPU tensor are host facts; a ``lr``, beta or step count held on the device
(``capturable=True``, ``fused=True``) is used as a device tensor, never read.

**Timing.** ``collect()`` (called by every ``watcher.step()``) hands over the updates committed since the previous
call: the ratio of step ``s`` is the last optimizer step before ``watcher.step()`` number ``s``. Only the optimizer
steps before a step that logs are measured (``UpdateTracker.armed``, set by the watcher from its cadence): the others
cost nothing, and their watcher steps carry no ratio. No optimizer step in
between (a ``GradScaler`` that skipped it, ``on_nonfinite="skip"``), or a fused optimizer that skipped it on the
scaler's ``found_inf``: 0. Before any optimizer step, and for a layer that no optimizer holds or that the steps since
the previous call did not update (no gradient; another optimizer's turn): NaN.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import SGD, Adam, AdamW, Optimizer

from ._errors import ConfigurationError
from ._layers import Layer
from ._reductions import LayerTotals, foreach_norms
from ._tensors import BoundedCache, accumulate_dtype, long_tensor, to_device

__all__ = ["MEMORY_FRACTION", "MIN_BUDGET", "UpdateTracker", "check_optimizers", "optimizer_kind", "pieces"]

#: The exact paths' temporaries stay under this fraction of the optimised watched parameters' bytes ...
MEMORY_FRACTION = 0.05
#: ... or under this many bytes, for models so small that the fraction would be less.
MIN_BUDGET = 256 * 1024

#: A hyper-parameter: a host number, or a 0-d tensor on the device (never read on the host).
Scalar = float | Tensor


def optimizer_kind(optimizer: Optimizer) -> str:
    """``"sgd"``, ``"adam"`` (Adam and AdamW) or ``"generic"``: how the updates of ``optimizer`` are measured.

    Subclasses go through the generic path: their ``step`` may compute something else.

    Examples:
        >>> p = [torch.nn.Parameter(torch.zeros(1))]
        >>> optimizer_kind(torch.optim.AdamW(p)), optimizer_kind(torch.optim.RMSprop(p))
        ('adam', 'generic')
    """
    kind = type(optimizer)
    return "sgd" if kind is SGD else "adam" if kind in (Adam, AdamW) else "generic"


def pieces(t: Tensor, limit: int) -> list[Tensor]:
    """``t`` cut into views of at most ``limit`` elements (along its leading dimensions: any strides work), the same
    way for every tensor of the same shape.

    Examples:
        >>> [tuple(v.shape) for v in pieces(torch.zeros(5, 4), 8)]
        [(2, 4), (2, 4), (1, 4)]
        >>> [v.numel() for v in pieces(torch.zeros(2, 10), 4)]
        [4, 4, 2, 4, 4, 2]
    """
    n = t.numel()
    if n <= limit or t.dim() == 0:
        return [t]
    row = n // t.shape[0]
    if row <= limit:
        return list(torch.split(t, limit // row, dim=0))
    return [v for r in t.unbind(0) for v in pieces(r, limit)]


def _limit(budget: int, dtype: torch.dtype, temporaries: int) -> int:
    """Elements per batch: ``temporaries`` batch-sized tensors of ``dtype`` (and the float32 copy a half-precision
    norm may make) within ``budget`` bytes."""
    real = dtype.to_real() if dtype.is_complex else dtype
    per_element = temporaries * real.itemsize + (4 if real.itemsize < 4 else 0)
    return max(1, budget // per_element) if per_element else 1 << 62


def _host(x: Any) -> Scalar:
    """A hyper-parameter as a float when the host has it (a number, a CPU tensor: no device sync), else the device
    tensor itself."""
    if isinstance(x, Tensor):
        return float(x) if x.device.type == "cpu" else x.detach()
    return float(x)


def _zero(x: Scalar) -> bool:
    """Whether ``x`` is a host zero (a device tensor is taken as non-zero: reading it would sync)."""
    return isinstance(x, float) and x == 0.0


def _decay(lr: Scalar, weight_decay: Scalar) -> Scalar:
    """``c = lr · weight_decay``; a host 0.0 when the decay is (a tensor ``lr`` times no decay is no decay)."""
    return 0.0 if _zero(weight_decay) else lr * weight_decay


_GRAD = operator.attrgetter("grad")


def _real(tensors: Sequence[Any]) -> list[Tensor]:
    """Tensors of one dtype, complex ones as real pairs (``torch.optim`` steps them so); others unchanged."""
    if tensors and tensors[0].is_complex():
        return [torch.view_as_real(t) for t in tensors]
    return list(tensors)


def _grads(params: Sequence[nn.Parameter]) -> list[Tensor]:
    """The gradients of ``params`` (all present), a sparse one densified (one dense copy of it)."""
    return _real([g.to_dense() if g.is_sparse else g for g in map(_GRAD, params)])


# ---------------------------------------------------------------------------------------------- the parameters
class _Slot:
    """The watched parameters of one parameter group on one device and dtype."""

    def __init__(self, group: int, params: list[nn.Parameter], layer_of: list[int]) -> None:
        self.group = group
        self.params = params
        self.layer_of = layer_of
        self.device, self.dtype = params[0].device, params[0].dtype
        self._index: BoundedCache[tuple[int, ...] | None, tuple[Tensor, Tensor | None]] = BoundedCache()
        self._plans: BoundedCache[tuple[tuple[int, ...] | None, int], _Plan] = BoundedCache()

    def stale(self) -> bool:
        return self.params[0].device != self.device or self.params[0].dtype != self.dtype

    def present(self) -> tuple[int, ...] | None:
        """Positions of the parameters with a gradient (``None``: every one); what the step updated."""
        grads = list(map(_GRAD, self.params))
        if not any(map(operator.is_, grads, repeat(None))):  # C-level loop: no Python frame per tensor
            return None
        return tuple(i for i, g in enumerate(grads) if g is not None)

    def chosen(self, kept: tuple[int, ...] | None) -> list[nn.Parameter]:
        return self.params if kept is None else [self.params[i] for i in kept]

    def index(self, kept: tuple[int, ...] | None) -> tuple[Tensor, Tensor | None]:
        """(layer of each kept parameter, positions of the kept parameters or ``None`` for all), on the device."""
        return self._index.get(kept, lambda: (
            long_tensor([self.layer_of[i] for i in (kept if kept is not None else range(len(self.params)))],
                        self.device),
            None if kept is None else long_tensor(kept, self.device)))

    def plan(self, kept: tuple[int, ...] | None, limit: int) -> _Plan:
        return self._plans.get((kept, limit), lambda: _Plan.of(_real(self.chosen(kept)), limit,
                                                                self.device))


@dataclass
class _Plan:
    """How the kept parameters of a slot are cut into views (``pieces()``) and batched."""

    owner: list[int]  # per view, in stream order: the position of its parameter among the kept ones
    owner_t: Tensor | None  # the same on the device; None when every parameter is one view
    batches: list[tuple[int, int]]  # [start, end) of each batch in the view stream
    limit: int

    @classmethod
    def of(cls, tensors: Sequence[Tensor], limit: int, device: torch.device) -> _Plan:
        owner: list[int] = []
        sizes: list[int] = []
        for k, t in enumerate(tensors):
            cut = pieces(t, limit)
            owner += [k] * len(cut)
            sizes += [v.numel() for v in cut]
        batches: list[tuple[int, int]] = []
        start, total = 0, 0
        for i, n in enumerate(sizes):
            if i > start and total + n > limit:
                batches.append((start, i))
                start, total = i, 0
            total += n
        if sizes:
            batches.append((start, len(sizes)))
        whole = len(owner) == len(tensors)
        return cls(owner, None if whole else long_tensor(owner, device), batches, limit)

    def cut(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The view stream of ``tensors`` (aligned with the kept parameters)."""
        if self.owner_t is None:  # nothing to cut
            return list(tensors)
        return [v for t in tensors for v in pieces(t, self.limit)]

    def per_view(self, values: Sequence[Scalar]) -> list[Scalar]:
        return list(values) if self.owner_t is None else [values[k] for k in self.owner]


# ---------------------------------------------------------------------------------------------- the recipes
@dataclass
class _Recipe:
    """How one slot's updates are rebuilt: ``Δw·(1 - c) = -(c·w + Σ scale·x + adam)`` per parameter.

    ``terms`` hold tensors aligned with the kept parameters and a uniform scale; ``adam`` (m, v, per-parameter
    ``lr/bc1`` and ``sqrt(bc2)``, eps) adds ``lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)``.
    """

    weights: list[Tensor]
    terms: list[tuple[list[Tensor], Scalar]]
    c: Scalar = 0.0
    adam: tuple[list[Tensor], list[Tensor], list[Scalar], list[Scalar], float] | None = None

    def temporaries(self) -> int:
        """Batch-sized temporaries ``_Streams.norms()`` holds at once: none for one term without ``c`` (a norm
        times the scale), one for the sum being built, two when a term is added with a device-tensor scale."""
        if self.adam is None and len(self.terms) == 1 and _zero(self.c):
            return 0
        added = [scale for _, scale in self.terms[1:]] + ([self.c] if not _zero(self.c) else [])
        return 2 if any(isinstance(x, Tensor) for x in added) else 1


def _sgd_recipe(opt: Optimizer, group: dict[str, Any], params: list[nn.Parameter]) -> _Recipe | None:
    lr, wd, momentum = _host(group["lr"]), _host(group["weight_decay"]), _host(group["momentum"])
    sign = -1.0 if group["maximize"] else 1.0
    scale = getattr(opt, "grad_scale", None)  # a fused step under a GradScaler, gradients not unscaled
    g_coef: Scalar = lr * sign if scale is None else lr * sign / scale
    weights = _real(params)
    if _zero(momentum):
        return _Recipe(weights, [(_grads(params), g_coef)], _decay(lr, wd))
    bufs = [opt.state[p].get("momentum_buffer") for p in params]
    if any(b is None for b in bufs):
        return None
    buf_term = (_real(bufs), lr * momentum if group["nesterov"] else lr)
    if not group["nesterov"]:
        return _Recipe(weights, [buf_term])
    return _Recipe(weights, [(_grads(params), g_coef), buf_term], _decay(lr, wd))


def _adam_recipe(opt: Optimizer, group: dict[str, Any], params: list[nn.Parameter]) -> _Recipe | None:
    states = [opt.state.get(p) for p in params]
    v_key = "max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"
    if any(not s or v_key not in s or "exp_avg" not in s for s in states):
        return None
    decoupled = group.get("decoupled_weight_decay", isinstance(opt, AdamW))
    lr = _host(group["lr"])
    step_size, bc2_sqrt = _adam_scalars(lr, _host(group["betas"][0]), _host(group["betas"][1]),
                                        [s["step"] for s in states], params[0].device)  # type: ignore[index]
    adam = (_real([s["exp_avg"] for s in states]), _real([s[v_key] for s in states]),  # type: ignore[index]
            step_size, bc2_sqrt, float(group["eps"]))
    c = _decay(lr, _host(group["weight_decay"])) if decoupled else 0.0
    return _Recipe(_real(params), [], c, adam)


def _adam_scalars(lr: Scalar, beta1: Scalar, beta2: Scalar, steps: Sequence[Any],
                  device: torch.device) -> tuple[list[Scalar], list[Scalar]]:
    """Per parameter ``lr / (1 - beta1**t)`` and ``sqrt(1 - beta2**t)``: floats when every input is on the host (the
    step counts of non-capturable, non-fused optimizers are CPU tensors), else 0-d device tensors."""
    if isinstance(lr, float) and isinstance(beta1, float) and isinstance(beta2, float) and all(
            not isinstance(s, Tensor) or s.device.type == "cpu" for s in steps):
        counts = [float(s) for s in steps]  # CPU tensors: a host read, no device sync
        done: dict[float, tuple[float, float]] = {}
        for t in counts:
            if t not in done:
                done[t] = (lr / (1.0 - beta1 ** t), (1.0 - beta2 ** t) ** 0.5)
        return [done[t][0] for t in counts], [done[t][1] for t in counts]
    acc = accumulate_dtype(device)
    st = torch.stack([s.to(device, acc, non_blocking=True) if isinstance(s, Tensor)
                      else torch.tensor(float(s), dtype=acc, device=device) for s in steps])
    size: Tensor = lr / (1 - beta1 ** st)
    corr: Tensor = (1 - beta2 ** st).sqrt()
    return list(size.unbind()), list(corr.unbind())


_RECIPES: dict[str, Callable[[Optimizer, dict[str, Any], list[nn.Parameter]], _Recipe | None]] = {
    "sgd": _sgd_recipe, "adam": _adam_recipe}


class _Streams:
    """A recipe's tensors as view streams, cut once per slot and step (``_Plan.cut()``)."""

    def __init__(self, r: _Recipe, plan: _Plan) -> None:
        self.c = r.c
        self.terms = [(plan.cut(x), scale) for x, scale in r.terms]
        self.weights = plan.cut(r.weights) if not _zero(r.c) else []
        self.adam: tuple[list[Tensor], list[Tensor], list[Scalar], list[Scalar], float] | None = None
        if r.adam is not None:
            m, v, size, corr, eps = r.adam
            self.adam = (plan.cut(m), plan.cut(v), plan.per_view(size), plan.per_view(corr), eps)

    def norms(self, s: int, e: int, dtype: torch.dtype) -> Tensor:
        """Per view of the batch ``[s, e)``: ``||c·w + Σ scale·x + adam||``, built in place in one temporary (see
        ``_Recipe.temporaries()``)."""
        acc: Any  # a list of tensors (torch's stubs do not know every foreach overload)
        if self.adam is not None:
            m, v, size, corr, eps = self.adam
            acc = torch._foreach_sqrt(v[s:e])  # torch's denominator: sqrt(v) / sqrt(bc2) + eps
            torch._foreach_div_(acc, corr[s:e])  # type: ignore[arg-type]
            torch._foreach_add_(acc, eps)
            torch._foreach_reciprocal_(acc)
            torch._foreach_mul_(acc, m[s:e])
            torch._foreach_mul_(acc, size[s:e])  # type: ignore[arg-type]
        else:
            (x, a), *rest = self.terms
            if not rest and _zero(self.c):  # one term: its norm times |scale|, no temporary
                norms: Tensor = foreach_norms(x[s:e], dtype) * abs(a)  # type: ignore[operator]
                return norms
            acc = torch._foreach_mul(x[s:e], a)
            for y, b in rest:
                _add_scaled(acc, y[s:e], b)
        if not _zero(self.c):
            _add_scaled(acc, self.weights[s:e], self.c)
        return foreach_norms(acc, dtype)


def _add_scaled(acc: list[Tensor], views: list[Tensor], scale: Scalar) -> None:
    """``acc += scale · views``: in place for a host scale, through one more temporary for a device tensor."""
    if isinstance(scale, float):
        torch._foreach_add_(acc, views, alpha=scale)
    else:
        torch._foreach_add_(acc, torch._foreach_mul(views, scale))


# ---------------------------------------------------------------------------------------------- one optimizer
@dataclass
class _Result:
    """One optimizer step's per-layer sums (on the tracker's home) and the layers it updated (host-known)."""

    update_sq: Tensor
    weight_sq: Tensor
    touched: tuple[bool, ...]


class _OptimizerWatch:
    """The hooks on one optimizer and its last committed step."""

    def __init__(self, tracker: UpdateTracker, optimizer: Optimizer) -> None:
        self.tracker = tracker
        self.opt = optimizer
        self.kind = optimizer_kind(optimizer)
        self.slots: list[_Slot] = []
        self.owned: tuple[bool, ...] = (False,) * tracker.n_layers
        self.budget = 0  # bytes of batch temporaries allowed
        self._signature: tuple[int, ...] | None = None
        self._w_old: dict[int, Tensor] = {}  # slot -> per-parameter ||w||² before the step
        self._snapshots: dict[int, tuple[tuple[int, ...], list[Tensor]]] = {}  # the generic path's copies
        self.result: _Result | None = None
        self.fresh = False  # a step was committed since the last collect
        self.handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]
        self._replan()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.slots, self.result = [], [], None
        self._w_old.clear()
        self._snapshots.clear()

    def _replan(self) -> None:
        layer_of = self.tracker.layer_of
        slots: list[_Slot] = []
        owned = [False] * self.tracker.n_layers
        for gi, group in enumerate(self.opt.param_groups):
            by_kind: dict[tuple[torch.device, torch.dtype], tuple[list[nn.Parameter], list[int]]] = {}
            for p in group["params"]:
                li = layer_of.get(id(p))
                if li is not None:
                    ps, ls = by_kind.setdefault((p.device, p.dtype), ([], []))
                    ps.append(p)
                    ls.append(li)
                    owned[li] = True
            slots += [_Slot(gi, ps, ls) for ps, ls in by_kind.values()]
        self.slots, self.owned = slots, tuple(owned)
        self._signature = tuple(len(g["params"]) for g in self.opt.param_groups)
        # 90% of the bound for the batches' temporaries: the rest covers their small outputs (a norm per view)
        self.budget = max(MIN_BUDGET, int(0.9 * MEMORY_FRACTION * sum(p.numel() * p.element_size()
                                                                       for s in slots for p in s.params)))

    @torch.no_grad()
    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._w_old.clear()
        self._snapshots.clear()
        if not self.tracker.armed:  # the next watcher step logs nothing: this optimizer step is not measured
            return
        if (tuple(len(g["params"]) for g in self.opt.param_groups) != self._signature
                or any(s.stale() for s in self.slots)):
            self._replan()
        for si, slot in enumerate(self.slots):
            self._w_old[si] = foreach_norms(_real(slot.params), slot.dtype).to(
                accumulate_dtype(slot.device)).square()
            if self.kind == "generic":  # the parameters the step may change (the gradients may not exist yet)
                keep = tuple(i for i, p in enumerate(slot.params) if p.requires_grad)
                self._snapshots[si] = (keep, [slot.params[i].detach().clone() for i in keep])

    @torch.no_grad()
    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._w_old:  # not measured (see _pre)
            return
        home, n = self.tracker.home, self.tracker.n_layers
        acc = accumulate_dtype(home)
        update = LayerTotals(n, acc, home, direct=False)
        weight = LayerTotals(n, acc, home, direct=False)
        touched = [False] * n
        for si, slot in enumerate(self.slots):
            w_old = self._w_old.get(si)
            kept = slot.present()
            if w_old is None or kept == ():
                continue
            found = self._update_sq(si, slot, kept)
            if found is None:
                continue
            kept, sq = found
            layers, positions = slot.index(kept)
            weight.add_sumsq(layers, w_old if positions is None else w_old[positions], slot.device)
            update.add_sumsq(layers, sq, slot.device)
            for i in (kept if kept is not None else range(len(slot.params))):
                touched[slot.layer_of[i]] = True
        self._w_old.clear()
        self._snapshots.clear()
        if not any(touched):  # nothing updated (every gradient None: on_nonfinite="skip"): a skipped step
            return
        found_inf = getattr(self.opt, "found_inf", None)  # a fused step under a GradScaler: skipped on the device
        usq = update.sumsq
        if isinstance(found_inf, Tensor):
            usq = torch.where(to_device(found_inf, home).reshape(()) > 0, torch.zeros_like(usq), usq)
        self.result, self.fresh = _Result(usq, weight.sumsq, tuple(touched)), True

    def _update_sq(self, si: int, slot: _Slot,
                   kept: tuple[int, ...] | None) -> tuple[tuple[int, ...] | None, Tensor] | None:
        """(the kept positions, per kept parameter ``||Δw||²`` in the accumulation dtype), or ``None``."""
        if self.kind == "generic":
            return self._generic_sq(si, slot, kept)
        acc = accumulate_dtype(slot.device)
        params = slot.chosen(kept)
        recipe = _RECIPES[self.kind](self.opt, self.opt.param_groups[slot.group], params)
        if recipe is None:
            return None
        plan = slot.plan(kept, _limit(self.budget, slot.dtype, recipe.temporaries()))
        streams = _Streams(recipe, plan)
        norms = torch.cat([streams.norms(s, e, slot.dtype) for s, e in plan.batches])
        sq = norms.to(acc).square()
        if plan.owner_t is not None:
            sq = torch.zeros(len(params), dtype=acc, device=slot.device).index_add_(0, plan.owner_t, sq)
        if not _zero(recipe.c):  # lr·wd = 1 leaves w_new = -u whatever w_old was: the update is unknown (NaN)
            sq = sq / (math.nan if isinstance(recipe.c, float) and recipe.c == 1.0 else (1 - recipe.c) ** 2)
        return kept, sq

    def _generic_sq(self, si: int, slot: _Slot,
                    kept: tuple[int, ...] | None) -> tuple[tuple[int, ...] | None, Tensor] | None:
        """The generic path: ``||w_old - w_new||²`` from the pre-hook's copies, of the kept parameters copied."""
        snap = self._snapshots.get(si)
        if snap is None:
            return None
        positions, copies = snap
        wanted = set(range(len(slot.params)) if kept is None else kept)
        pairs = [(i, c) for i, c in zip(positions, copies, strict=True) if i in wanted]
        if not pairs:
            return None
        diffs = [c for _, c in pairs]
        torch._foreach_sub_(diffs, [slot.params[i].detach() for i, _ in pairs])  # in place: w_old - w_new
        sq = foreach_norms(_real(diffs), slot.dtype).to(accumulate_dtype(slot.device)).square()
        chosen = tuple(i for i, _ in pairs)
        return (None if kept is None and len(chosen) == len(slot.params) else chosen), sq


# ---------------------------------------------------------------------------------------------- the tracker
class UpdateTracker:
    """Hooks on one or more optimizers; per watched layer, the update-to-weight ratio of their last steps.

    Args:
        layers: the watched layers (parameters of an optimizer outside them are ignored).
        optimizers: the optimizers to hook.

    Examples:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> from gradwatch._layers import discover_layers
        >>> tracker = UpdateTracker(discover_layers(model), [torch.optim.SGD(model.parameters(), lr=0.1)])
        >>> model.weight.data.fill_(1.0)
        tensor([[1., 1.]])
        >>> model.weight.grad = torch.tensor([[3.0, 4.0]])
        >>> tracker.collect(torch.device("cpu"), torch.float64)  # no optimizer step yet
        tensor([nan], dtype=torch.float64)
        >>> tracker.optimizers[0].step()
        >>> tracker.collect(torch.device("cpu"), torch.float64)  # ||0.1 * (3, 4)|| / ||(1, 1)||
        tensor([0.3536], dtype=torch.float64)
        >>> tracker.collect(torch.device("cpu"), torch.float64)  # no optimizer step since: nothing changed
        tensor([0.], dtype=torch.float64)
        >>> tracker.remove()
    """

    def __init__(self, layers: Sequence[Layer], optimizers: Sequence[Optimizer]) -> None:
        self.n_layers = len(layers)
        self.layer_of = {id(p): li for li, layer in enumerate(layers) for p in layer.params}
        self._first = next((p for layer in layers for p in layer.params), None)
        self._calls = 0
        #: Whether the optimizer steps before the next ``collect()`` are measured: the watcher sets it after each of
        #: its steps, from its cadence (the next step logs). Unarmed, the hooks do nothing and ``collect()`` says
        #: ``None``.
        self.armed = True
        self._masks: BoundedCache[tuple[Any, ...], tuple[Tensor, Tensor]] = BoundedCache()
        self._watches = [_OptimizerWatch(self, opt) for opt in optimizers]

    @property
    def home(self) -> torch.device:
        """Where the per-layer sums are kept: the first watched parameter's device (followed when the model moves)."""
        return self._first.device if self._first is not None else torch.device("cpu")

    @property
    def optimizers(self) -> list[Optimizer]:
        return [w.opt for w in self._watches]

    def remove(self) -> None:
        """Remove the hooks and drop every reference to the optimizers and the parameters."""
        for w in self._watches:
            w.remove()
        self._watches = []
        self.layer_of = {}
        self._first = None

    def collect(self, home: torch.device, dtype: torch.dtype) -> Tensor | None:
        """The ratios of the optimizer steps since the previous call, per layer, on ``home`` (no wait); ``None`` when
        the tracker was not ``armed`` for them (not measured).

        A layer that none of those steps updated: NaN. No optimizer step at all since the previous call (a skipped
        step): 0 for the layers of every optimizer's last step (those it holds, before its first), NaN before the first
        call."""
        self._calls += 1
        results = [w.result for w in self._watches if w.fresh and w.result is not None]
        for w in self._watches:
            w.fresh = False
        if not self.armed:
            return None
        where, fill = self._fill(results, home, dtype)
        if not results:
            return fill
        update = torch.stack([to_device(r.update_sq, home) for r in results]).sum(0)
        weight = torch.stack([to_device(r.weight_sq, home) for r in results]).sum(0)
        return torch.where(where, (update / weight).sqrt().to(dtype), fill)

    def _fill(self, results: list[_Result], home: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(the layers ``results`` updated, the value of the others: NaN, or 0 after a skipped step), on ``home``."""
        touched = tuple(any(r.touched[i] for r in results) for i in range(self.n_layers))
        zero = [False] * self.n_layers
        if not results and self._calls > 1:  # the optimizers did not step: their layers did not change
            for w in self._watches:
                mask = w.result.touched if w.result is not None else w.owned
                zero = [z or m for z, m in zip(zero, mask, strict=True)]
        return self._masks.get((home, dtype, touched, tuple(zero)), lambda: (
            torch.tensor(touched, dtype=torch.bool).to(home, non_blocking=True),
            torch.tensor([0.0 if z else float("nan") for z in zero], dtype=dtype).to(home, non_blocking=True)))


def check_optimizers(layers: Sequence[Layer], optimizers: Sequence[Optimizer]) -> None:
    """Raise ``ConfigurationError`` when optimizers are given but none holds a watched parameter
    (a different model's optimizer, or ``layers=`` globs that leave out everything it optimises).

    Examples:
        >>> from gradwatch._layers import discover_layers
        >>> layers = discover_layers(torch.nn.Linear(2, 1))
        >>> try:
        ...     check_optimizers(layers, [torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)])
        ... except ConfigurationError as error:
        ...     print(error)
        optimizer: SGD holds none of the watched parameters (layers '__root__'); pass the watched model's optimizer.
    """
    if not optimizers:
        return
    watched = {id(p) for layer in layers for p in layer.params}
    if any(id(p) in watched for o in optimizers for g in o.param_groups for p in g["params"]):
        return
    names = ", ".join(type(o).__name__ for o in optimizers)
    shown = ", ".join(repr(layer.name) for layer in layers[:8]) + (", ..." if len(layers) > 8 else "")
    raise ConfigurationError(f"optimizer: {names} holds none of the watched parameters (layers {shown}); pass the "
                             "watched model's optimizer.")
