"""Proposers suggest configurations: the classical ones and the LLM (Claude).

Importing this package stays cheap: optuna, scipy and anthropic are imported inside the methods
that use them, not by these modules.
"""

from hybrid.proposers.base import Proposer, ProposerEvent, completed, incumbent, seen_keys
from hybrid.proposers.grid import GridProposer
from hybrid.proposers.hybrid import HybridProposer
from hybrid.proposers.llm import LLMProposer
from hybrid.proposers.local import LocalProposer
from hybrid.proposers.optuna import OptunaProposer
from hybrid.proposers.sobol import SobolProposer

__all__ = [
    "GridProposer",
    "HybridProposer",
    "LLMProposer",
    "LocalProposer",
    "OptunaProposer",
    "Proposer",
    "ProposerEvent",
    "SobolProposer",
    "completed",
    "incumbent",
    "seen_keys",
]
