"""The exception hierarchy. Every message names what is wrong and how to fix it."""

from __future__ import annotations


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
