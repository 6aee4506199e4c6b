"""Proposers suggest configurations. Classical ones here; the LLM proposer joins later."""

from hybrid.proposers.base import Proposer, completed, incumbent, seen_keys

__all__ = ["Proposer", "completed", "incumbent", "seen_keys"]
