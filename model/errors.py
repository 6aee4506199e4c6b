"""The target's own errors. ``model/`` imports nothing from ``hybrid/``: a target must run on a
cluster node that has only this folder, not the orchestrator. The names match the orchestrator's
(``ConfigError: <field>: <what and the fix>`` on one line, exit 2) so both read the same."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error model/ raises on purpose (e.g. a download that keeps failing)."""


class ConfigError(ModelError):
    """A ``key=value`` setting or the prepared data is unusable; the message names the fix."""
