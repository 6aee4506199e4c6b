"""A union of proposers, each filling its share of every batch."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hybrid.errors import ConfigError
from hybrid.proposers.base import Proposer, ProposerEvent
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment, Objective
from hybrid.variants import VariantChecker, spread

DEFAULT_SOURCES: dict[str, float] = {"tpe": 0.5, "sobol": 0.25, "grid": 0.25}
BUILTIN_SOURCES = ("tpe", "cmaes", "random", "sobol", "grid", "local")


def largest_remainder(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split n into integers proportional to ``shares`` (Hamilton's method).

    Each name gets the floor of its exact quota; what is left goes one by one to the largest
    fractional parts, earlier names first on ties. Zero shares get zero.
    """
    total = sum(shares.values())
    if n <= 0 or total <= 0:
        return dict.fromkeys(shares, 0)
    exact = {k: n * s / total for k, s in shares.items()}
    out = {k: math.floor(q) for k, q in exact.items()}
    order = sorted(shares, key=lambda k: -(exact[k] - out[k]))  # stable sort keeps earlier first
    for k in order[: n - sum(out.values())]:
        out[k] += 1
    return out


def _check_share(where: str, share: Any) -> float:
    if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share) or share < 0:
        raise ConfigError(f"{where}: expected a share >= 0, got {share!r}")
    return float(share)


class HybridProposer(Proposer):
    """Asks several proposers for their share of each batch and merges the answers.

    ``propose(history, n)`` splits n by largest-remainder quotas over the shares, asks each
    source for its quota, and when a source comes up short (a grid design used up, a discrete
    space nearly exhausted) or two sources propose the same configuration, fills the gap from
    the others. Every candidate keeps the label its own proposer gave it. Sources with share 0
    are never asked.

    Args:
        sources: name -> share (shares are normalised). Built-in names: tpe, cmaes, random
            (OptunaProposer with that sampler), sobol, grid, local (LocalProposer: perturbations
            of the incumbents, a trust region).
        pool_factor: each source is asked for ceil(quota x pool_factor) candidates; the extra
            ones are a reserve that fills shortfalls before any source is asked again.
        options: name -> keyword arguments for that source's constructor,
            e.g. ``{"grid": {"span": 0.2}, "tpe": {"n_startup_trials": 12}}``.
        max_per_call: name -> at most this many candidates from that source per call; what a
            capped source cannot give goes to the others. For sources that are slow per
            candidate (a TPE ask costs milliseconds) when a surrogate asks for a large pool.
        llm_share: the LLM proposer's share of all candidates (e.g. 0.3; 0: no LLM). Active only
            with ``ANTHROPIC_API_KEY`` set: without it the classical sources run alone (said once).
        llm: the LLM proposer's settings (``conf/proposer/llm.yaml``, under ``proposer.llm``): a
            mapping of LLMProposer options, or a callable ``(space=, objective=, seed=) -> Proposer``
            (what Hydra builds from that node).
        name: the config node's short name; accepted and ignored.

    ``add_source(name, proposer, share)`` plugs in more sources (the LLM, GP-driven ones).
    """

    name = "hybrid"

    def __init__(
        self,
        space: SearchSpace,
        objective: Objective,
        seed: int = 0,
        sources: Mapping[str, float] | None = None,
        pool_factor: float = 1.0,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        max_per_call: Mapping[str, int] | None = None,
        llm_share: float = 0.0,
        llm: Callable[..., Proposer] | Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(space, objective, seed)
        self._notices: list[ProposerEvent] = []
        self._checker: VariantChecker | None = None
        if isinstance(pool_factor, bool) or not isinstance(pool_factor, int | float) or not pool_factor >= 1:
            raise ConfigError(f"proposer.pool_factor: expected a number >= 1, got {pool_factor!r}")
        self.pool_factor = float(pool_factor)
        sources = dict(DEFAULT_SOURCES if sources is None else sources)
        options = {str(k): dict(v) for k, v in (options or {}).items()}
        for src in options:
            # options of an unused built-in source are harmless defaults (a YAML override that
            # switches tpe off leaves its options behind); anything else is most likely a typo
            if src not in sources and src not in BUILTIN_SOURCES:
                raise ConfigError(f"proposer.options.{src}: not one of the sources ({', '.join(sources)})")
        self._sources: dict[str, tuple[Proposer, float]] = {}
        for src, share in sources.items():
            share = _check_share(f"proposer.sources.{src}", share)
            self.add_source(src, self._builtin(str(src), options.get(src, {})), share)
        if not any(share > 0 for _, share in self._sources.values()):
            raise ConfigError("proposer.sources: give at least one source a share > 0")
        self.max_per_call: dict[str, int] = {}
        for src, cap in (max_per_call or {}).items():
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ConfigError(f"proposer.max_per_call.{src}: expected an integer >= 1, got {cap!r}")
            self.max_per_call[str(src)] = cap
        self._add_llm(llm_share, llm)

    def _add_llm(self, share: Any, llm: Callable[..., Proposer] | Mapping[str, Any] | None) -> None:
        """The LLM source: ``share`` of all candidates (the classical shares scaled to the rest),
        built only when an API key is there; without one the campaign says so once and goes on."""
        share = _check_share("proposer.llm_share", share)
        if share == 0 or llm is None:
            return
        if share >= 1:
            raise ConfigError(f"proposer.llm_share: expected a share in [0, 1), got {share!r}; "
                              "use proposer=llm for LLM proposals only")
        from hybrid.proposers.llm import KEY_ENV

        options = dict(llm) if isinstance(llm, Mapping) else {}
        if not options.get("api_key") and not os.environ.get(KEY_ENV):
            self._notices.append(ProposerEvent("llm", message=f"no {KEY_ENV}: running the classical proposers "
                                               "only (export the key to add the LLM; proposer.llm_share=0 "
                                               "silences this)"))
            return
        if isinstance(llm, Mapping):
            from hybrid.proposers.llm import LLMProposer

            for hydra_key in ("_target_", "_partial_"):
                options.pop(hydra_key, None)
            proposer = LLMProposer(self.space, self.objective, self.seed, **options)
        else:
            proposer = llm(space=self.space, objective=self.objective, seed=self.seed)
        others = sum(self.sources.values())
        self.add_source("llm", proposer, share / (1 - share) * others)

    def _builtin(self, src: str, opts: dict[str, Any]) -> Proposer:
        from hybrid.proposers.grid import GridProposer
        from hybrid.proposers.local import LocalProposer
        from hybrid.proposers.optuna import OptunaProposer
        from hybrid.proposers.sobol import SobolProposer

        args = (self.space, self.objective, self.seed)
        try:
            if src in ("tpe", "cmaes", "random"):
                if "sampler" in opts:
                    raise ConfigError(f"proposer.options.{src}.sampler: the source name sets the sampler")
                return OptunaProposer(*args, sampler=src, **opts)
            if src == "sobol":
                return SobolProposer(*args, **opts)
            if src == "grid":
                return GridProposer(*args, **opts)
            if src == "local":
                return LocalProposer(*args, **opts)
        except TypeError as e:  # an unknown option name
            raise ConfigError(f"proposer.options.{src}: {e}") from None
        raise ConfigError(f"proposer.sources: {src!r} is not one of {', '.join(BUILTIN_SOURCES)}")

    @property
    def wave_shares(self) -> dict[str, float]:
        """Sources whose share holds for the experiments run, not only for the candidates
        offered: the LLM's (a ranker that picks from the pool honours it, see GPRanker)."""
        if "llm" not in self._sources or self._sources["llm"][1] <= 0:
            return {}
        return {"llm": self._sources["llm"][1] / sum(self.sources.values())}

    @property
    def sources(self) -> dict[str, float]:
        """name -> share, as given (not normalised)."""
        return {k: share for k, (_, share) in self._sources.items()}

    def add_source(self, name: str, proposer: Proposer, share: float) -> None:
        """Add a source (or replace the one of that name) with its share of every batch."""
        share = _check_share(f"proposer.sources.{name}", share)
        if self._checker is not None:
            proposer.use_variants(self._checker)
        self._sources[name] = (proposer, share)

    def quotas(self, n: int, history: Sequence[Experiment] = ()) -> dict[str, int]:
        """How many of n candidates each source is asked for.

        Shares hold over the whole campaign, not per call: each of the n slots goes to the
        source furthest below its share of everything these sources proposed so far (counted
        from ``history`` by source label). An async campaign asks for one candidate at a time;
        per-call rounding would then give every slot to the largest share.
        """
        shares = self.sources
        total_share = sum(shares.values())
        if n <= 0 or total_share <= 0:
            return dict.fromkeys(shares, 0)
        counts = {k: 0 for k in shares}
        for e in history:
            if e.source in counts:
                counts[e.source] += 1
        base = sum(counts.values())
        out = dict.fromkeys(shares, 0)
        for i in range(n):
            def deficit(k: str, i: int = i) -> float:
                return shares[k] / total_share * (base + i + 1) - counts[k] - out[k]

            best = max((k for k in shares if shares[k] > 0), key=deficit)  # max keeps the first on ties
            out[best] += 1
        return out

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        if n <= 0:
            return []
        seen = {(e.variant, self.space.key(e.params)) for e in history}  # the same params on other code: another experiment
        taken: dict[str, list[Candidate]] = {k: [] for k in self._sources}
        reserve: list[tuple[str, Candidate]] = []  # beyond a quota, kept to fill gaps
        asked: dict[str, int] = {}
        # with code variants, the classical sources' candidates run in turn on the codes worth exploring
        codes = self._checker.explore() if self._checker is not None else [None]

        def ask(src: str, k: int) -> list[Candidate]:
            got = self._sources[src][0].propose(history, k)
            return got if src == "llm" else spread(got, codes)

        def accept(src: str, cands: Sequence[Candidate], limit: int, spill: list | None) -> None:
            for c in cands:
                key = (c.variant, self.space.key(c.params))
                if key in seen:
                    continue  # another source proposed it first
                if len(taken[src]) < limit:
                    seen.add(key)
                    taken[src].append(c)
                elif spill is not None:
                    seen.add(key)
                    spill.append((src, c))

        quotas = self.quotas(n, history)
        for src, cap in self.max_per_call.items():
            if src in quotas:
                quotas[src] = min(quotas[src], cap)
        for src, quota in quotas.items():
            if quota == 0:
                continue
            asked[src] = min(math.ceil(quota * self.pool_factor), self.max_per_call.get(src, n * 2 + 1))
            got = ask(src, asked[src])
            if len(got) < asked[src]:
                asked[src] = -1  # exhausted for this history: asking again would bring nothing new
            accept(src, got, quota, reserve)

        short = n - sum(len(c) for c in taken.values())
        # 1) the reserve (costs no call), in source order
        for src, c in reserve[: max(short, 0)]:
            taken[src].append(c)
        short -= min(short, len(reserve))
        # 2) ask again the sources that may have more: first those short of their own quota
        #    (their offer collided with another source's), then the others, largest share first
        def order(k: str) -> tuple[bool, float]:
            return (len(taken[k]) >= quotas[k], -self._sources[k][1])

        for src in sorted(self._sources, key=order):
            if short <= 0:
                break
            share = self._sources[src][1]
            if share <= 0 or asked.get(src, 0) < 0:
                continue
            before = len(taken[src])
            room = self.max_per_call.get(src, n) - before
            if room <= 0:
                continue
            got = ask(src, asked.get(src, 0) + min(short, room))
            accept(src, got, before + min(short, room), None)
            short -= len(taken[src]) - before
        return [c for cands in taken.values() for c in cands]

    def use_variants(self, checker: VariantChecker) -> None:
        """Every source gets the checker (those that never change code ignore it), sources added later too."""
        self._checker = checker
        for proposer, _ in self._sources.values():
            proposer.use_variants(checker)

    def events(self) -> list[ProposerEvent]:
        out, self._notices = self._notices, []
        for proposer, _ in self._sources.values():
            out.extend(proposer.events())
        return out

    def waiting(self) -> bool:
        return any(share > 0 and proposer.waiting() for proposer, share in self._sources.values())

    def close(self) -> None:
        for proposer, _ in self._sources.values():
            proposer.close()
