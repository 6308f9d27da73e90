"""fnmatch globs over names, validated: every pattern must match something, or the error lists what there is."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from ._errors import ConfigurationError

__all__ = ["match_globs", "shown_names"]


def shown_names(names: Sequence[str], limit: int = 12) -> str:
    """The first ``limit`` names, comma-separated, with ``...`` when there are more."""
    return ", ".join(list(names)[:limit]) + (", ..." if len(names) > limit else "")


def match_globs(names: Sequence[str], patterns: Sequence[str], *, what: str) -> list[bool]:
    """One flag per name: whether any of ``patterns`` matches it.

    Raises:
        ConfigurationError: when a pattern matches no name; the message starts with ``what`` (for example
            ``"layers pattern 'x*' matches no layer of MLP; its layers are"``) and lists the first 12 names.

    Examples:
        >>> match_globs(["enc.0", "enc.1", "head"], ["enc.*"], what="layers")
        [True, True, False]
    """
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigurationError(f"{what.format(pattern=repr(pattern))}: {shown_names(names)}.")
    return [any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names]
