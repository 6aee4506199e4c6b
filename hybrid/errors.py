"""The exception hierarchy. Every message names what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class HybridError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(HybridError):
    """A user's configuration is invalid. The CLI prints it on one line and exits 2."""


class InvalidCandidateError(HybridError):
    """A proposed configuration does not fit the search space (unknown param, out of bounds...)."""


class BackendError(HybridError):
    """A backend could not start, query or stop a job."""


class StoreError(HybridError):
    """The campaign store is unusable (corrupt, or belongs to another campaign)."""


def reject_unknown_keys(where: str, keys: Iterable[object], allowed: Sequence[str]) -> None:
    """ConfigError ``<where>.<key>: unknown key; did you mean X? allowed: ...`` for the first key
    not in ``allowed`` (``where`` empty: the top level, ``<key>: ...``)."""
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown key; {hint}allowed: {', '.join(allowed)}")
