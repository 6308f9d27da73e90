"""Layers grouped by role along the depth: block 0's query projection with block 11's, not with the embeddings.

A layer's *role* is its name with every number replaced by ``*``
(``encoder.layer.3.attention.self.query`` → ``encoder.layer.*.attention.self.query``, ``conv2`` → ``conv*``).
Layers of one role are *peers*; their registration order is their depth. Comparing a layer only with its peers is
what keeps the vanishing rule silent on healthy transformers, whose query/key gradients are small next to the
embeddings' by nature.

A plain stack (``input``, ``hidden.0`` … ``hidden.9``, ``out``) has layers of its own at both ends: a layer without
peers joins the chain of the role next to it in registration order when it is the same kind of module (a ``Linear``
beside ``Linear`` layers), so that the input layer of a deep MLP is judged with the stack it feeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Chains", "role_of"]


def role_of(name: str) -> str:
    """The role template of a layer name: numbers, and numbers ending a name part, become ``*``.

    >>> role_of("model.layers.11.self_attn.q_proj"), role_of("hidden.0"), role_of("layer2.1.conv3"), role_of("out")
    ('model.layers.*.self_attn.q_proj', 'hidden.*', 'layer*.*.conv*', 'out')
    """
    return ".".join(_part_role(part) for part in name.split("."))


def _part_role(part: str) -> str:
    stem = part.rstrip("0123456789")
    return part if stem == part else stem + "*"


@dataclass(frozen=True)
class Chains:
    """Layer indices grouped into depth chains (input side first), each of at least ``min_len`` layers.

    Examples:
        >>> names = ["input", "hidden.0", "hidden.1", "hidden.2", "out", "norm"]
        >>> kinds = ["Linear"] * 5 + ["LayerNorm"]
        >>> [c.tolist() for c in Chains.of(names, kinds).chains]
        [[0, 1, 2, 3, 4]]
    """

    chains: tuple[np.ndarray, ...]
    #: The chains as rows of one matrix (padded on the right with index 0), ``mask`` saying which entries are layers,
    #: and ``members`` (``grid[mask]``): what lets ``gradwatch._vanishing.deeper_peer_max()`` treat every chain in
    #: one vectorised pass.
    grid: np.ndarray = field(init=False, repr=False, compare=False)
    mask: np.ndarray = field(init=False, repr=False, compare=False)
    members: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        width = max((len(c) for c in self.chains), default=0)
        grid = np.zeros((len(self.chains), width), dtype=np.int64)
        mask = np.zeros((len(self.chains), width), dtype=bool)
        for row, chain in enumerate(self.chains):
            grid[row, :len(chain)] = chain
            mask[row, :len(chain)] = True
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "members", grid[mask])

    @classmethod
    def of(cls, names: Sequence[str], kinds: Sequence[str] | None = None, min_len: int = 3) -> Chains:
        roles = [role_of(n) for n in names]
        members: dict[str, list[int]] = {}
        for i, role in enumerate(roles):
            members.setdefault(role, []).append(i)
        if kinds is not None:
            _join_lone_layers(roles, list(kinds), members)
        chains = tuple(np.asarray(sorted(ids), dtype=np.int64) for ids in members.values() if len(ids) >= min_len)
        return cls(chains)


def _join_lone_layers(roles: list[str], kinds: list[str], members: dict[str, list[int]]) -> None:
    """A layer alone in its role joins the role of its neighbour in registration order when both are the same kind
    of module and that role has peers (the input and output layers of a plain stack)."""
    n = len(roles)
    for i in range(n):
        if len(members.get(roles[i], ())) != 1:
            continue
        for j in (i + 1, i - 1):
            if 0 <= j < n and kinds[j] == kinds[i] and len(members.get(roles[j], ())) > 1:
                members[roles[j]].append(i)
                del members[roles[i]]
                break
