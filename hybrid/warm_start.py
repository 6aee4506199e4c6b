"""Warm start: earlier campaigns' results as prior data for this one (``campaign.warm_start``).

``campaign.warm_start=[gpt-hybrid-s0, ...]`` names earlier campaigns of the same target and search
space (other hardware is fine). Their finished experiments are read, read-only, from their
``state.sqlite`` and join the *decision* history only: what the proposers and the ranker see, so
the GP fits them (hardware as a task), TPE/local/grid/LLM learn from them, and configurations
already tried there are not proposed again. They are not this campaign's experiments: they never
enter its store, budget, progress, failure rate, spend, results.tsv, summary, MLflow mirror,
best/baseline reporting or resume bookkeeping, and the baseline still runs first.

Semantics chosen:
- A name resolves to a sibling of this campaign's directory (``runs/<name>``); an entry with a
  ``/`` (or an existing directory that is not a sibling campaign) is a path to a campaign dir.
- The earlier campaign is read by ``hybrid.reports.reader.read_campaign`` (``Store.open_read_only``,
  SQLite ``mode=ro``): never claimed, never written; it may still be running (then a later resume of this campaign sees the
  results it has added since).
- Used: every finished experiment except the cancelled ones and those the orchestrator lost
  (re-queued there). Successes are GP data; crashes/timeouts/OOMs feed the feasibility model and
  the LLM's failure statistics. Results whose params no longer fit this space (a narrower range,
  a dropped choice) are skipped, and counted.
- Each prior keeps its earlier campaign's order, gets the id ``"<campaign>/<id>"``, the source
  label ``"prior"`` (so per-source counters such as the LLM's share, Sobol's index or the grid's
  turn count only this campaign's own experiments), ``prior=Prior(<campaign>, <its id there>,
  <the source label it had there>)`` (``hybrid.history.is_prior`` tells them apart), its
  ``ended`` time, and a negative ``seq`` (-n..-1 over all of them: they come before experiment 1).
- Transitive data is not followed: if B was warm-started from A, list both A and B to use both.
- The GP predicts on ``campaign.target_hardware`` when it has results, else on the most frequent
  hardware among all successes, priors included: set it when the priors ran elsewhere. Its
  expected improvement is over the best result priors included, so cost-aware stopping (after
  ``stopping.min_experiments`` of this campaign's own) comes sooner when an earlier campaign
  already found the optimum; ``validate_top_k`` may re-run the priors' best on the target hardware.
- Refused with a ConfigError before anything starts: an unknown campaign, this campaign itself,
  another objective (metric or direction), another target (``target.name``/``target.command``),
  other parameter names or types.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hybrid.errors import ConfigError, InvalidCandidateError, StoreError
from hybrid.reports.reader import STORE_FILE, read_campaign
from hybrid.space import CategoricalParam, FloatParam, SearchSpace
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, Experiment, ExperimentState, Prior

__all__ = ["PRIOR_SOURCE", "PriorCampaign", "identity", "load_priors", "warm_start_entries"]

PRIOR_SOURCE = "prior"  # the Candidate.source of every prior experiment
WHERE = "campaign.warm_start"


def identity(target: TargetSpec, space: SearchSpace) -> dict[str, Any]:
    """What a warm start must match, stored in each campaign's meta (``identity``)."""
    return {
        "target": {"name": target.name, "command": target.command},
        "objective": {"metric": target.objective.metric, "direction": target.objective.direction},
        "space": {p.name: _kind(p) for p in space},
    }


def _kind(p: Any) -> str:
    if isinstance(p, CategoricalParam):
        return "categorical"
    return "float" if isinstance(p, FloatParam) else "int"


def warm_start_entries(value: Any) -> list[str]:
    """``campaign.warm_start`` as a list of names/paths (one name alone is accepted)."""
    if value is None:
        return []
    if isinstance(value, str | Path):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, bytes):
        raise ConfigError(f"{WHERE}: expected a list of earlier campaigns' names, got {value!r}")
    out = []
    for v in value:
        if not isinstance(v, str | Path) or not str(v).strip():
            raise ConfigError(f"{WHERE}: {v!r} is not a campaign name or directory; give e.g. [gpt-hybrid-s0]")
        out.append(str(v).strip())
    return out


@dataclass(frozen=True)
class PriorCampaign:
    """One earlier campaign's results, as loaded."""

    name: str  # the earlier campaign's name (as its store holds it)
    dir: Path
    experiments: list[Experiment]  # the results used, in that campaign's order
    skipped: int  # finished results whose params fall outside this space

    def record(self) -> dict[str, Any]:
        """The entry of the store's ``warm_start`` meta (read by the findings report)."""
        return {"name": self.name, "dir": str(self.dir), "n": len(self.experiments), "skipped": self.skipped}

    def message(self) -> str:
        ok = sum(1 for e in self.experiments if e.state is ExperimentState.DONE)
        n_fail = len(self.experiments) - ok
        skipped = f"; {self.skipped} outside this space, not used" if self.skipped else ""
        return (f"warm start: {len(self.experiments)} results from {self.name} as prior data "
                f"({ok} succeeded, {n_fail} failed{skipped})")


def resolve(entry: str, campaign_dir: Path) -> Path:
    """The directory of a ``campaign.warm_start`` entry (see the module docstring)."""
    sibling = campaign_dir.parent / entry
    as_path = Path(entry).expanduser()
    if "/" in entry:
        where = as_path
    elif (sibling / "state.sqlite").is_file() or not as_path.is_dir():
        where = sibling
    else:
        where = as_path
    if not (where / "state.sqlite").is_file():
        raise ConfigError(f"{WHERE}: no campaign {entry!r} at {where} (no state.sqlite); give the name of an "
                          "earlier campaign or its directory")
    return where.resolve()


def load_priors(entries: Sequence[str], *, campaign_name: str, campaign_dir: Path, target: TargetSpec,
                space: SearchSpace) -> list[PriorCampaign]:
    """Resolve, check and read every earlier campaign; raise ConfigError on the first mismatch."""
    own = identity(target, space)
    out: list[PriorCampaign] = []
    seen: set[Path] = set()
    for entry in entries:
        where = resolve(entry, campaign_dir)
        if where == Path(campaign_dir).resolve():
            raise ConfigError(f"{WHERE}: {entry!r} is this campaign ({campaign_name}) itself; list earlier "
                              "campaigns only")
        if where in seen:
            continue  # listed twice: loaded once
        seen.add(where)
        out.append(_load_one(entry, where, own, space, {p.name for p in out}))
    every = [e for p in out for e in p.experiments]
    for i, e in enumerate(every):
        e.seq = i - len(every)  # before this campaign's experiment 1, in the order listed
    return out


def _load_one(entry: str, where: Path, own: Mapping[str, Any], space: SearchSpace,
              taken_names: set[str]) -> PriorCampaign:
    path = where / STORE_FILE
    try:
        record = read_campaign(where)
    except StoreError as e:
        raise ConfigError(f"{WHERE}: {e}; drop {entry!r}") from None
    except sqlite3.Error as e:
        raise ConfigError(f"{WHERE}: {path} is not a readable campaign store ({e}); drop {entry!r}") from None
    name, theirs, exps = record.name, record.identity, record.experiments
    if name is None:
        raise ConfigError(f"{WHERE}: {where} holds no campaign yet (its state.sqlite is empty); give the name "
                          "of an earlier campaign or its directory")
    if not theirs["space"]:  # a store of before identities, without its config: the params it used
        theirs["space"] = {k: None for e in exps for k in e.params}
    _check(str(name), own, theirs)
    label = str(name) if name not in taken_names else f"{name}@{where}"
    used: list[Experiment] = []
    skipped = 0
    for e in exps:
        if e.result is None or e.state is ExperimentState.CANCELLED or e.requeued:
            continue  # unfinished, cancelled, or lost by its orchestrator: nothing learned
        try:
            params = space.validate(e.params)
        except InvalidCandidateError:
            skipped += 1
            continue
        used.append(_as_prior(e, params, label))
    return PriorCampaign(label, where, used, skipped)


def _as_prior(e: Experiment, params: Mapping[str, Any], label: str) -> Experiment:
    exp_id = f"{label}/{e.id}"
    result = replace(e.result, experiment_id=exp_id) if e.result is not None else None
    return Experiment(exp_id, Candidate(dict(params), PRIOR_SOURCE, e.candidate.rationale), e.worker, e.hardware,
                      0, e.state, None, e.started, 0, e.workdir, result, ended=e.ended,
                      prior=Prior(label, e.id, e.source))


def _check(name: str, own: Mapping[str, Any], theirs: Mapping[str, Any]) -> None:
    mine, other = own["objective"], theirs["objective"]
    if (other.get("metric") not in (None, mine["metric"])
            or other.get("direction") not in (None, mine["direction"])):
        raise ConfigError(
            f"{WHERE}: campaign {name!r} optimized {other.get('metric')} ({other.get('direction') or '?'}), this "
            f"campaign {mine['metric']} ({mine['direction']}); warm start needs the same target.metric and "
            f"target.direction: drop {name!r}")
    mine, other = own["target"], theirs["target"]
    if other and (other.get("name") != mine["name"] or other.get("command") != mine["command"]):
        raise ConfigError(
            f"{WHERE}: campaign {name!r} ran target {other.get('name')!r} ({other.get('command')!r}), this campaign "
            f"{mine['name']!r} ({mine['command']!r}); warm start needs the same target (other hardware is "
            f"fine): drop {name!r} or run its target")
    mine, other = own["space"], theirs["space"]
    problems = [f"{p} is not in this space" for p in other if p not in mine]
    problems += [f"{p} is not in {name}'s space" for p in mine if p not in other]
    problems += [f"{p} is {other[p]} there but {mine[p]} here" for p in mine
                 if other.get(p) is not None and other[p] != mine[p]]
    if problems:
        raise ConfigError(f"{WHERE}: campaign {name!r} has another search space ({'; '.join(problems)}); warm "
                          f"start needs the same parameter names and types (ranges may differ): drop {name!r}")
