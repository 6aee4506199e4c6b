"""Proposers suggest configurations. Classical ones here; the LLM proposer joins later.

Importing this package stays cheap: optuna and scipy are imported inside the methods that use
them, not by these modules.
"""

from hybrid.proposers.base import Proposer, completed, incumbent, seen_keys
from hybrid.proposers.grid import GridProposer
from hybrid.proposers.hybrid import HybridProposer
from hybrid.proposers.local import LocalProposer
from hybrid.proposers.optuna import OptunaProposer
from hybrid.proposers.sobol import SobolProposer

__all__ = [
    "GridProposer",
    "HybridProposer",
    "LocalProposer",
    "OptunaProposer",
    "Proposer",
    "SobolProposer",
    "completed",
    "incumbent",
    "seen_keys",
]
