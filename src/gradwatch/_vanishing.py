"""The ``vanishing`` rule: a layer whose learning stalls next to its deeper peers of the same role, for long.

What is compared:
- **the learning signal**: the layer's update-to-weight ratio when an optimizer is attached (``watch(optimizer=)``),
  which is what the layer actually learns under any optimizer (Adam normalises each entry, so a small gradient is not
  a small update); without one, the gradient RMS (``grad_norm / sqrt(numel)``);
- **with its peers**: layers of the same role along the depth (``gradwatch._roles``): block 0's query projection
  with block 11's, never the embeddings with a norm gain. A layer is starved when its signal is below
  ``vanishing_ratio`` times the strongest of its *deeper* peers: the decay runs toward the input, as the gradient
  fades on its way back through the stack;
- **and sustained**: ``vanishing_patience`` starved steps in a row.

An absolute floor (``vanishing_rms`` on the gradient RMS) catches a network whose every layer has stalled, where no
peer is left to compare with. Layers without a gradient (frozen, unused) are never vanishing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._advice import ModelTraits
from ._roles import Chains
from ._symptoms import Symptom
from ._thresholds import Thresholds

__all__ = ["VanishingState", "vanishing_symptoms"]


@dataclass
class VanishingState:
    """Per layer: starved steps in a row and the step the run began (-1: not starved)."""

    n_layers: int
    count: np.ndarray = field(init=False)
    since: np.ndarray = field(init=False)
    #: Whether any count may be nonzero (a plain flag: the common step resets nothing, without a numpy call).
    counting: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.count = np.zeros(self.n_layers, dtype=np.int64)
        self.since = np.full(self.n_layers, -1, dtype=np.int64)

    def reset(self) -> None:
        if self.counting:
            self.count.fill(0)
            self.since.fill(-1)
            self.counting = False

    def state_dict(self) -> dict[str, Any]:
        return {"vanish_count": self.count.tolist(), "vanish_since": self.since.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = np.asarray(state["vanish_count"], dtype=np.int64)
        self.since = np.asarray(state["vanish_since"], dtype=np.int64)
        self.counting = True


def deeper_peer_max(signal: np.ndarray, usable: np.ndarray, chains: Chains) -> np.ndarray:
    """Per layer: the strongest usable signal among its deeper peers (NaN without one).

    >>> import numpy as np
    >>> deeper_peer_max(np.array([1.0, 5.0, 2.0]), np.array([True, True, True]), Chains((np.array([0, 1, 2]),)))
    array([ 5.,  2., nan])
    """
    value = np.full(signal.shape, np.nan)
    if not chains.chains:
        return value
    # Every chain at once: one row each, padded on the right (padding reads -inf, after every layer of its row).
    grid, mask = chains.grid, chains.mask
    s = np.where(usable[grid] & mask, signal[grid], -np.inf)
    best = np.maximum.accumulate(s[:, ::-1], axis=1)[:, ::-1]  # best of positions k .. end
    deeper = np.full(s.shape, -np.inf)
    deeper[:, :-1] = best[:, 1:]  # best of positions k+1 .. end
    found = deeper[mask]
    value[chains.members] = np.where(np.isfinite(found), found, np.nan)
    return value


def _none_starved(rms: np.ndarray, th: Thresholds, chains: Chains) -> bool:
    """A sufficient condition for no starved layer when the signal is the gradient RMS: every RMS (NaN: no gradient,
    ignored) is over the floor, and within the chains the weakest is over ``vanishing_ratio`` times the strongest,
    which bounds every layer's deeper peers. False (the full rule decides) otherwise, and when the RMS is not finite.

    >>> chains = Chains((np.array([0, 1, 2]),))
    >>> th = Thresholds()
    >>> healthy, floored = np.array([1e-3, np.nan, 2e-3, 5.0]), np.array([1e-9, 1.0, 1.0])
    >>> _none_starved(healthy, th, chains), _none_starved(floored, th, chains)
    (True, False)
    """
    if not np.fmin.reduce(rms) >= th.vanishing_rms:  # NaN-ignoring; NaN (no gradient at all) fails the test
        return False
    if not chains.members.size:
        return True
    peers = rms[chains.members]
    return bool(np.fmin.reduce(peers) >= th.vanishing_ratio * np.fmax.reduce(peers))


def _strongest_deeper(i: int, signal: np.ndarray, usable: np.ndarray, chains: Chains) -> int:
    """The index of layer ``i``'s strongest deeper peer (for the message), or -1."""
    for chain in chains.chains:
        pos = np.flatnonzero(chain == i)
        if pos.size:
            rest = chain[int(pos[0]) + 1:]
            rest = rest[usable[rest]]
            return int(rest[np.argmax(signal[rest])]) if rest.size else -1
    return -1


def learning_signal(stats: Any, rms: np.ndarray) -> tuple[np.ndarray, str]:
    """The per-layer signal the rule compares, and its name for the message."""
    ratio = getattr(stats, "update_ratio", None)
    if ratio is not None and np.isfinite(ratio).any():
        return np.asarray(ratio, dtype=np.float64), "update ratio"
    return rms, "gradient RMS"


def vanishing_symptoms(stats: Any, th: Thresholds, state: VanishingState, chains: Chains,
                       traits: ModelTraits) -> list[Symptom]:
    """``stats`` is a ``gradwatch._rules.HostStats``."""
    rms = stats.rms()
    signal, measure = learning_signal(stats, rms)
    if signal is rms and _none_starved(rms, th, chains):  # the common step, in a few calls
        state.reset()
        return []
    usable = np.isfinite(rms) & (np.isfinite(signal) | (rms < th.vanishing_rms))
    if not usable.any():
        state.reset()
        return []
    # The comparison with peers says nothing while the model explodes (the strong layers are the sick ones).
    relative = stats.global_norm <= th.exploding_norm
    comparable = usable & np.isfinite(signal)
    peers = deeper_peer_max(signal, comparable, chains)
    with np.errstate(invalid="ignore"):
        below_peers = relative & (signal < th.vanishing_ratio * peers)  # NaN (no peer) compares False
    starved = usable & ((rms < th.vanishing_rms) | below_peers)
    if not starved.any():  # the common step: nothing starved, nothing to count
        state.reset()
        return []
    state.count, state.counting = np.where(starved, state.count + 1, 0), True
    state.since = np.where(starved, np.where(state.since < 0, stats.step, state.since), -1)
    firing = np.flatnonzero(state.count >= th.vanishing_patience)
    if firing.size == 0:
        return []
    remedy = traits.vanishing_remedy()
    detail = _depth_profile(stats.names, rms, firing, chains)
    out = []
    for i in firing:
        peer = _strongest_deeper(int(i), signal, comparable, chains) if below_peers[i] else -1
        evidence, value, threshold = _evidence(stats, int(i), int(state.since[i]), rms, (signal, measure), peer, th)
        out.append(Symptom.described(
            "vanishing", stats.names[int(i)], stats.step, value, threshold, "warning", since=int(state.since[i]),
            evidence=evidence, detail=detail, cause=remedy.cause, advice=remedy.advice))
    return out


def _evidence(stats: Any, i: int, since: int, rms: np.ndarray, measured: tuple[np.ndarray, str], j: int,
              th: Thresholds) -> tuple[str, float, float]:
    name = stats.names[i]
    signal, measure = measured
    if j >= 0:
        peer = float(signal[j])
        return (f"Vanishing gradients at layer '{name}' since step {since}: its {measure} {float(signal[i]):.2e} is "
                f"{float(signal[i]) / peer:.1e}x that of its deeper peer '{stats.names[j]}' ({peer:.2e}).",
                float(signal[i]), th.vanishing_ratio * peer)
    return (f"Vanishing gradients at layer '{name}' since step {since}: gradient RMS {float(rms[i]):.2e} is under "
            f"the floor {th.vanishing_rms:.0e}.", float(rms[i]), th.vanishing_rms)


def _depth_profile(names: Any, rms: np.ndarray, firing: np.ndarray, chains: Chains) -> str:
    n = len(names)
    if firing.size == n:
        return f"Depth profile: all {n} layers starved: the whole network has stalled."
    first, last = names[int(firing[0])], names[int(firing[-1])]
    span = f"'{first}'" if firing.size == 1 else f"'{first}' to '{last}'"
    in_chain = [c for c in chains.chains if np.isin(firing, c).any()]
    if not in_chain:
        return f"Depth profile: {firing.size} of {n} layers starved ({span})."
    chain = max(in_chain, key=lambda c: int(np.isin(firing, c).sum()))
    starved = np.isin(chain, firing)
    side = "input" if np.flatnonzero(starved).mean() < (len(chain) - 1) / 2 else "output"
    finite = rms[chain][np.isfinite(rms[chain])]
    fall = ""
    if finite.size and finite.min() > 0:
        fall = f"; the gradient RMS along it spans {finite.max() / finite.min():.1e}x"
    return (f"Depth profile: {firing.size} of {n} layers starved ({span}), on the {side} side of a stack of "
            f"{len(chain)} peers{fall}.")
