"""Factorial designs around the incumbent: the 2^3 and 3x4 waves a researcher would run by hand.

Levels live in the space's encoded unit cube, so "span" means the same thing for a log-scale
learning rate, a stepped int and a plain float. For a parameter whose incumbent value encodes to u:

- 2 levels: u - span/2 and u + span/2;
- k >= 3 levels: k points evenly over [u - span, u + span] (3 levels: -span, 0, +span);
- a window that sticks out of [0, 1] is shifted back inside (not squashed), so a parameter at
  its bound still gets k distinct levels;
- ints snap to their grid; when snapping merges levels the window widens until there are k
  distinct values (or the whole range is used); a categorical takes the incumbent's choice and
  the next k-1 choices of its list;
- when every design point around the incumbent has been tried (or is in flight), the discrete
  factors (ints, categoricals) take one more level at a time, until there are enough new points
  or every value of theirs is in the design: a grid over discrete parameters reports "search space
  exhausted" only once all their values were tried, not after the first k. Floats keep theirs.

``design="fractional"``: with at least three factors, one factor is derived from the others
(the defining relation) so the design keeps 1/L of the runs and stays balanced:

- all factors with 2 levels: the half fraction 2^(k-1) with I = +AB...K (resolution k >= III);
- all factors with q levels: x_last = (x_1 + ... + x_{k-1}) mod q, a Latin-square-like
  q^(k-1) fraction (an orthogonal array of strength 2: resolution III);
- mixed levels: the factor with the most levels L whose count divides another factor's count is
  derived as the sum of the others mod L. Every factor's levels appear equally often; pairs
  involving the derived factor are balanced only where the level counts allow.

With fewer than three factors, or no factor that can be derived, the full factorial is used
(a fraction of a 2x2 or a 3x4 design would alias main effects) and the rationale says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from hybrid.errors import ConfigError, InvalidCandidateError
from hybrid.proposers.base import Proposer, incumbent, seen_keys
from hybrid.space import CategoricalParam, FloatParam, IntParam, Param, SearchSpace
from hybrid.types import Candidate, Experiment, Objective

DESIGNS = ("full", "fractional")


def fractional_runs(counts: Sequence[int]) -> list[tuple[int, ...]] | None:
    """Level-index runs of a balanced fraction of the ``counts`` factorial, or None if none fits."""
    k = len(counts)
    if k < 3:
        return None
    derivable = [j for j in range(k) if any(counts[i] % counts[j] == 0 for i in range(k) if i != j)]
    if not derivable:
        return None
    j = max(derivable, key=lambda i: (counts[i], i))  # most levels; ties: the last factor
    base = [c for i, c in enumerate(counts) if i != j]
    all_two = all(c == 2 for c in counts)
    runs = []
    for combo in itertools.product(*(range(c) for c in base)):
        s = sum(combo)
        # Two levels (0 = low, 1 = high): high iff an even number of the others are low, i.e. the
        # +/-1 product of the others; so I = +AB...K. Otherwise the Latin rule: sum mod L.
        level = (s + k) % 2 if all_two else s % counts[j]
        runs.append((*combo[:j], level, *combo[j:]))
    return runs


def design_runs(counts: Sequence[int], fractional: bool) -> tuple[list[tuple[int, ...]], str]:
    """The runs (one level index per factor, in design order) and the design's name."""
    k = len(counts)
    same = len(set(counts)) == 1
    if k == 1:
        label = f"{counts[0]}-level sweep"
    else:
        label = f"{counts[0]}^{k} factorial" if same else "x".join(map(str, counts)) + " factorial"
    full = list(itertools.product(*(range(c) for c in counts)))
    if not fractional:
        return full, label
    runs = fractional_runs(counts)
    if runs is None:
        return full, f"{label} (no balanced fraction for {k} factor{'s' * (k > 1)}: full design)"
    if same:
        return runs, f"{counts[0]}^({k}-1) fractional factorial"
    return runs, f"{'x'.join(map(str, counts))} fractional factorial ({len(runs)} of {len(full)} runs)"


def _unit_levels(u: float, width: float, k: int) -> np.ndarray:
    """k evenly spaced points over a window of ``width`` centred on u, shifted inside [0, 1]."""
    if width >= 1.0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = u - width / 2, u + width / 2
        if lo < 0.0:
            lo, hi = 0.0, width
        elif hi > 1.0:
            lo, hi = 1.0 - width, 1.0
    return np.linspace(lo, hi, k)


def _value_key(v: Any) -> Any:
    return float(f"{v:.10g}") if isinstance(v, float) else v


class GridProposer(Proposer):
    """Factorial designs over a few parameters, centred on the best result so far.

    The incumbent is the best DONE experiment; before any, the baseline (or the space's defaults
    when the history is empty). Every design point not already tried or in flight is proposed, in
    design order. The seed is unused: designs are deterministic.

    Args:
        params: names to vary together in one design. None: the space's parameters in groups of
            ``max_params``, in space order; each group gets one design's worth of grid
            experiments, then the next group's turn comes (counted from the history, so a
            resumed campaign picks up the same group).
        levels: levels per parameter, an int for all or ``{name: k}`` (others get 2).
        design: ``full`` factorial or ``fractional`` (see the module docstring).
        span: distance between the outer levels in unit-cube coordinates for 2 levels; for 3+
            levels the levels reach ``span`` either side. In (0, 0.5].
        max_params: group size when ``params`` is None.
        name: the config node's short name; accepted and ignored.
    """

    name = "grid"

    def __init__(
        self,
        space: SearchSpace,
        objective: Objective,
        seed: int = 0,
        params: Sequence[str] | str | None = None,
        levels: int | Mapping[str, int] = 2,
        design: str = "full",
        span: float = 0.25,
        max_params: int = 3,
        name: str | None = None,
    ) -> None:
        super().__init__(space, objective, seed)
        if design not in DESIGNS:
            raise ConfigError(f"proposer.design: {design!r} is not one of {', '.join(DESIGNS)}")
        if isinstance(span, bool) or not isinstance(span, int | float) or not 0 < span <= 0.5:
            raise ConfigError(f"proposer.span: expected a number in (0, 0.5] (unit-cube distance), got {span!r}")
        if isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 1:
            raise ConfigError(f"proposer.max_params: expected an integer >= 1, got {max_params!r}")
        self.design = design
        self.span = float(span)
        self.max_params = max_params
        self.levels = self._check_levels(levels)
        self.groups = self._check_groups(params)

    def _check_groups(self, params: Sequence[str] | str | None) -> list[list[str]]:
        names = self.space.names
        if params is None:
            return [names[i : i + self.max_params] for i in range(0, len(names), self.max_params)]
        chosen = [params] if isinstance(params, str) else list(params)
        if not chosen:
            raise ConfigError("proposer.params: give at least one parameter name, or null to cycle through all")
        for p in chosen:
            if p not in self.space.params:
                raise ConfigError(f"proposer.params: {p!r} is not a parameter of the space; known: {', '.join(names)}")
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"proposer.params: a parameter is listed twice in {chosen}")
        return [chosen]

    def _check_levels(self, levels: int | Mapping[str, int]) -> dict[str, int]:
        def check(where: str, k: Any) -> int:
            if isinstance(k, bool) or not isinstance(k, int) or k < 2:
                raise ConfigError(f"{where}: expected an integer >= 2, got {k!r}")
            return k

        if isinstance(levels, Mapping):
            for name in levels:
                if name not in self.space.params:
                    raise ConfigError(
                        f"proposer.levels.{name}: not a parameter of the space; known: {', '.join(self.space.names)}"
                    )
            return {n: check(f"proposer.levels.{n}", levels.get(n, 2)) for n in self.space.names}
        k = check("proposer.levels", levels)
        return dict.fromkeys(self.space.names, k)

    # -- levels and designs -----------------------------------------------------------------------

    @staticmethod
    def _n_values(p: Param) -> int | None:
        """How many distinct values the parameter has (None: continuous)."""
        if isinstance(p, CategoricalParam):
            return len(p.choices)
        if isinstance(p, IntParam):
            return (p.high - p.low) // p.step + 1
        return None

    def _nominal_levels(self, name: str) -> int:
        k = self.levels[name]
        n_values = self._n_values(self.space.params[name])
        return k if n_values is None else min(k, n_values)

    def level_values(self, name: str, value: Any, extra: int = 0) -> list[Any]:
        """The values parameter ``name`` takes in a design around ``value``, in design order;
        ``extra`` more levels than configured for a discrete parameter (a widened design)."""
        p = self.space.params[name]
        n_values = self._n_values(p)
        k = self.levels[name] + (extra if n_values is not None else 0)
        if isinstance(p, CategoricalParam):
            i = p.index(value)
            return [p.choices[(i + j) % len(p.choices)] for j in range(min(k, len(p.choices)))]
        want = k if n_values is None else min(k, n_values)
        u = p.encode(value)
        width = self.span if k == 2 else 2 * self.span
        while True:
            out: dict[Any, Any] = {}
            for x in _unit_levels(u, width, k):
                # the incumbent's own level keeps its exact value (no decode round-off)
                v = value if abs(x - u) < 1e-12 else p.decode(x)
                out.setdefault(_value_key(v), float(v) if isinstance(p, FloatParam) else v)
            if len(out) >= want or width >= 1.0:
                return list(out.values())
            width = min(1.0, width * 1.5)  # snapping merged levels: widen the window

    def _nominal_size(self, group: Sequence[str]) -> int:
        counts = [c for c in (self._nominal_levels(n) for n in group) if c >= 2]
        return len(design_runs(counts, self.design == "fractional")[0]) if counts else 0

    def _most_extra_levels(self) -> int:
        """How far a design can widen: until the discrete parameter with the most values left
        beyond its configured levels has all of them."""
        extras = [n - self.levels[name] for name, p in self.space.params.items() if (n := self._n_values(p)) is not None]
        return max([0, *extras])

    def _can_widen(self, group: Sequence[str], extra: int) -> bool:
        """Whether ``extra`` more levels add a value to some discrete factor of ``group``."""
        for name in group:
            n_values = self._n_values(self.space.params[name])
            if n_values is not None and self.levels[name] + extra <= n_values:
                return True
        return False

    def design_points(
        self, group: Sequence[str], center: Mapping[str, Any], label: str, extra: int = 0
    ) -> Iterator[tuple[dict, str]]:
        """(params, rationale) of every run of the design over ``group`` around ``center``, its
        discrete factors widened by ``extra`` levels."""
        factors = [(n, self.level_values(n, center[n], extra)) for n in group]
        factors = [(n, vals) for n, vals in factors if len(vals) >= 2]
        if not factors:
            return
        runs, kind = design_runs([len(v) for _, v in factors], self.design == "fractional")
        names = ", ".join(n for n, _ in factors)
        for i, run in enumerate(runs, start=1):
            params = dict(center)
            for (n, vals), level in zip(factors, run, strict=True):
                params[n] = vals[level]
            yield self.space.validate(params), f"{kind} around {label} over {names} (run {i}/{len(runs)})"

    # -- proposing ----------------------------------------------------------------------------------

    def _center(self, history: Sequence[Experiment]) -> tuple[dict[str, Any], str]:
        best = incumbent(history, self.objective)
        if best is None:
            best = next((e for e in history if e.source == "baseline"), None)
        if best is not None:
            try:
                return self.space.validate(best.params), best.id
            except InvalidCandidateError:
                pass  # the space changed since: fall back to its defaults
        return self.space.defaults(), "the defaults"

    def _first_group(self, history: Sequence[Experiment]) -> int:
        """Whose turn it is: each group gets one design's worth of grid experiments in turn."""
        sizes = [self._nominal_size(g) for g in self.groups]
        if sum(sizes) == 0:
            return 0
        count = sum(1 for e in history if e.source == self.name) % sum(sizes)
        for g, size in enumerate(sizes):
            if count < size:
                return g
            count -= size
        return 0  # unreachable: count < sum(sizes)

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        if n <= 0:
            return []
        center, label = self._center(history)
        seen = seen_keys(self.space, history)
        first = self._first_group(history)
        out: list[Candidate] = []
        groups = [self.groups[(first + step) % len(self.groups)] for step in range(len(self.groups))]
        # Start with the group whose turn it is; when its design around the incumbent is used up,
        # go on with the next groups so a call still fills its quota. Only when every group's
        # design has nothing new left, widen them by one level of each discrete factor, and
        # again, until the quota is filled or no discrete value is left to add (floats don't widen).
        for extra in range(self._most_extra_levels() + 1):
            for group in groups if extra == 0 else [g for g in groups if self._can_widen(g, extra)]:
                for params, rationale in self.design_points(group, center, label, extra):
                    key = self.space.key(params)
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(Candidate(params=params, source=self.name, rationale=rationale))
                    if len(out) == n:
                        return out
            if out and extra == 0:
                return out  # the designs' own runs: a wave of its own, as before any widening
        return out
