"""Resume: a campaign re-run under the same name continues from its store.

RUNNING experiments are re-attached by their backend job id; PENDING ones (created, maybe
submitted, id not recorded) are recovered from the backend or recorded as never submitted; an
experiment the orchestrator lost, or cancelled on Ctrl-C, is recorded (``requeued``) and its
configuration run once more.

What is resumed is checked first: a store records the campaign's identity (the target's command
and workdir, the metric and its direction, the search space), and a re-run under the same name
with another identity is refused (its results would be mixed with incompatible ones); changes
that cannot invalidate a result (budget, workers, proposer, surrogate, tracking...) are allowed
and recorded. The store file itself is guarded: a campaign dir holding results without its
store is never started over, and a store deleted or replaced while the campaign runs stops it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from backends.base import Backend
from hybrid.errors import ConfigError, StoreError
from hybrid.secrets import redact_nested
from hybrid.space import SearchSpace
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, Experiment, ExperimentState, FailureKind, Result

LOST = "orchestrator lost the job"
NEVER_SUBMITTED = "never submitted (the orchestrator stopped before submitting it)"
INTERRUPTED = "cancelled by an interrupt (re-run on resume)"
IDENTITY_META = "campaign_identity"
STORE_NAME = "state.sqlite"


# ---- what is resumed ---------------------------------------------------------------------------
def campaign_identity(target: TargetSpec, space: SearchSpace) -> dict[str, str]:
    """What a campaign's results mean, flat by config field: a resume must match all of it."""
    out = {
        "target.command": target.command,
        "target.workdir": str(target.workdir),
        "target.metric": target.objective.metric,
        "target.direction": str(target.objective.direction),
    }
    if target.editable:  # what code variants may change (absent: none, as in stores from before variants)
        out["target.editable"] = ", ".join(target.editable)
    for name, line in zip(space.names, space.describe().splitlines(), strict=True):
        out[f"space.params.{name}"] = line.split(": ", 1)[1]
    return out


def check_identity(store: Store, name: str, identity: Mapping[str, str]) -> None:
    """Refuse to resume a campaign under another identity; a store from before identities were
    recorded gets the current one."""
    held = store.get_meta(IDENTITY_META)
    if held is None:
        store.set_meta(IDENTITY_META, dict(identity))
        return
    changed = [k for k in sorted(set(held) | set(identity)) if held.get(k) != identity.get(k)]
    if not changed:
        return
    what = "; ".join(f"{k}: {_shown(held.get(k))} -> {_shown(identity.get(k))}" for k in changed[:3])
    more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
    raise ConfigError(
        f"campaign.name: campaign {name!r} ({store.path.parent}) holds results of another configuration "
        f"({what}{more}); resuming would mix them. Pick another campaign.name, and add "
        f"campaign.warm_start=[{name}] to reuse its results as priors")


def _shown(value: str | None) -> str:
    return "(none)" if value is None else repr(value)


def record_changes(store: Store, config: Mapping[str, Any]) -> list[str]:
    """Changed config values (the allowed ones: the identity was checked) against the last
    session's, recorded as a ``config_changed`` event; returns them as ``key: old -> new``."""
    old = store.get_meta("config")
    if not isinstance(old, Mapping):
        return []
    before, after = _flat(redact_nested(old)), _flat(config)  # a store from before redaction
    changed = [f"{k}: {_shown_value(before.get(k))} -> {_shown_value(after.get(k))}"
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if changed:
        store.event("config_changed", "; ".join(changed))
    return changed


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _shown_value(value: Any) -> str:
    text = "(unset)" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- the store file ----------------------------------------------------------------------------
def check_store_missing(campaign_dir: Path, name: str) -> None:
    """A campaign dir that holds results but no store is never started over (a new store would
    overwrite results.tsv and reuse the experiments' folders)."""
    if (campaign_dir / STORE_NAME).exists():
        return
    held = [n for n in ("results.tsv", "summary.txt") if (campaign_dir / n).exists()]
    exps = campaign_dir / "experiments"
    if exps.is_dir() and any(exps.iterdir()):
        held.append("experiments/")
    if not held:
        return
    copies = sorted(campaign_dir.glob("state.recovered-*.sqlite"))
    back = f"move {copies[-1].name} back to {STORE_NAME}" if copies else f"put its {STORE_NAME} back"
    raise ConfigError(
        f"campaign.name: {campaign_dir} holds an earlier campaign's results ({', '.join(held)}) but no "
        f"{STORE_NAME}; {back} to resume it, or pick another campaign.name")


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class StoreWatch:
    """Notices a store file deleted or replaced under a running campaign (it would go on writing
    to a file nobody can open): checked from the loop, at most once a second."""

    def __init__(self, store: Store, every_s: float = 1.0) -> None:
        self.store, self.every_s = store, every_s
        self.id = file_id(store.path)
        self._next = time.monotonic() + every_s

    def changed(self, force: bool = False) -> str | None:
        """None while the file is the one the store holds open, else what happened to it."""
        now = time.monotonic()
        if not force and now < self._next:
            return None
        self._next = now + self.every_s
        current = file_id(self.store.path)
        if current == self.id:
            return None
        return "was deleted" if current is None else "was replaced by another file"

    def rescue(self, what: str) -> StoreError:
        """Copy what the open store holds to ``state.recovered-<time>.sqlite`` and return the error
        that stops the campaign (running jobs are left running: a resume re-attaches them)."""
        dest = self.store.path.with_name(f"state.recovered-{time.strftime('%Y%m%d-%H%M%S')}.sqlite")
        try:
            self.store.backup(dest)
        except Exception as e:  # report what could not be saved, never mask the cause
            return StoreError(f"{self.store.path} {what} while the campaign ran, and its contents could not "
                              f"be saved ({e}); stopped")
        return StoreError(
            f"{self.store.path} {what} while the campaign ran; stopped, with everything it held saved to "
            f"{dest}: move that file to {self.store.path} and re-run the same command to resume")


# An orchestrator killed (kill -9) while it started a job leaves the lock held for the moment the
# job's process takes to exec (it shares the lock's open file until then): a resume right after waits that long.
LOCK_WAIT_S = 2.0


def lock_campaign(campaign_dir: Path, name: str) -> IO[str]:
    """Hold ``<dir>/.lock`` for the whole session: two orchestrators never run one campaign."""
    f = open(campaign_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole session
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                raise ConfigError(f"campaign.name: campaign {name!r} is already running in another process "
                                  f"({campaign_dir}); wait for it, or pick another campaign.name") from None
            time.sleep(0.05)


@dataclass
class Restored:
    """What a (re)start found in the store."""

    exps: dict[str, Experiment] = field(default_factory=dict)
    wave: int = 0  # the last wave number used
    requeue: list[Candidate] = field(default_factory=list)  # lost configurations to run again
    n_attached: int = 0  # running jobs re-attached

    def message(self, name: str) -> str:
        n_done = sum(1 for e in self.exps.values() if e.result is not None)
        return (f"resumed campaign {name}: {n_done} results kept, {self.n_attached} running jobs "
                f"re-attached, {len(self.requeue)} lost experiments re-queued")


def lose(store: Store, e: Experiment, reason: str, state: ExperimentState) -> None:
    """Record an experiment the orchestrator lost track of (``restore`` queues it again)."""
    kind = FailureKind.LOST if state is ExperimentState.CRASHED else FailureKind.CANCELLED
    result = Result(e.id, state, {}, e.hardware, 0.0, 0.0, "", reason, kind)
    store.record(result, requeued=True)
    e.state, e.result, e.requeued = state, result, True


def restore(store: Store, backend: Backend, space: SearchSpace, resumed: bool,
            lost_as: Callable[[Experiment], Result | None] = lambda e: None) -> Restored:
    """The store's experiments; on a resume, RUNNING ones re-attached and the rest recorded.
    ``lost_as``: the result of a RUNNING experiment whose job is gone when the campaign itself ended
    it on purpose (a pruned run), instead of recording it lost and running it again."""
    out = Restored()
    for e in store.experiments():
        out.exps[e.id] = e
        out.wave = max(out.wave, e.wave)
    if not resumed:
        return out
    for e in list(out.exps.values()):
        if e.state is ExperimentState.RUNNING and e.job_id:
            if backend.attach(e.job_id, e) is not None:
                out.n_attached += 1
            elif (result := lost_as(e)) is not None:
                store.record(result)
                e.state, e.result = result.state, result
            else:
                lose(store, e, LOST, ExperimentState.CRASHED)
        elif e.state is ExperimentState.PENDING:
            handle = backend.recover(e)
            if handle is not None:
                store.mark_running(e.id, handle.job_id, handle.started)
                e.state, e.job_id, e.started = ExperimentState.RUNNING, handle.job_id, handle.started
                out.n_attached += 1
            else:
                lose(store, e, NEVER_SUBMITTED, ExperimentState.CANCELLED)
    # Lost experiments are re-run once; derived from the store, so a lost config whose re-run
    # never got dispatched (another kill) is still re-queued on the next resume.
    exps = list(out.exps.values())
    for i, e in enumerate(exps):
        key = (e.variant, space.key(e.params))
        if e.requeued and not any((x.variant, space.key(x.params)) == key for x in exps[i + 1:]):
            reason = e.result.reason if e.result else LOST
            out.requeue.append(replace(e.candidate, rationale=f"re-run of {e.id} ({reason}). "
                                       f"{e.candidate.rationale}".strip()))
    return out
