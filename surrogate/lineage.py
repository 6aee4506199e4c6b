"""Code variants as a tree rooted at the unchanged code, as the surrogate's models see them.

A variant's *chain* is its own id and its ancestors' (nearest first), without the unchanged code
(None), which is every chain's root. Two configurations share as much of their code as their
chains share: a variant stacked on A shares A's edits with A, and nothing but the unchanged code
with an unrelated variant B. The GP (``surrogate.gp.LineageKernel``) and the feasibility model
(``surrogate.feasibility.VariantSuccessModel``) read the tree through this class; plain Python,
so the feasibility model stays free of torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["Lineage"]


class Lineage:
    """``parents``: variant id -> the id it is stacked on (None: built on the unchanged code). An
    id the mapping does not name counts as built on the unchanged code, so a ranker told nothing
    treats every variant as a sibling of the others."""

    def __init__(self, parents: Mapping[str, str | None] | None = None) -> None:
        self.parents: dict[str, str | None] = dict(parents or {})

    def chain(self, variant: str | None) -> tuple[str, ...]:
        """``variant`` and its ancestors, nearest first; () for the unchanged code. A cycle (a
        corrupt mapping: ids are hashes of their parent, so it cannot come from real variants)
        ends the chain at the repeat."""
        out: list[str] = []
        v = variant
        while v is not None and v not in out:
            out.append(v)
            v = self.parents.get(v)
        return tuple(out)

    def levels(self, variants: Iterable[str | None]) -> list[str | None]:
        """The levels of the variant dimension for these variants: None first, then every id in
        their chains (ancestors included, so a parent is a level even before it has results),
        sorted for a stable order."""
        ids = {u for v in variants for u in self.chain(v)}
        return [None, *sorted(ids)]

    def shared(self, levels: list[str | None]) -> np.ndarray:
        """(V, V) array: how many edits (chain entries) levels i and j have in common; the
        diagonal holds each level's depth (0 for the unchanged code)."""
        chains = [set(self.chain(v)) for v in levels]
        return np.array([[len(a & b) for b in chains] for a in chains], dtype=float)
