"""Resume: a campaign re-run under the same name continues from its store.

RUNNING experiments are re-attached by their backend job id; PENDING ones (created, maybe
submitted, id not recorded) are recovered from the backend or recorded as never submitted; an
experiment the orchestrator lost is recorded (``requeued``) and its configuration run once more.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from backends.base import Backend
from hybrid.errors import ConfigError
from hybrid.space import SearchSpace
from hybrid.store import Store
from hybrid.types import Candidate, Experiment, ExperimentState, FailureKind, Result

LOST = "orchestrator lost the job"
NEVER_SUBMITTED = "never submitted (the orchestrator stopped before submitting it)"


def lock_campaign(campaign_dir: Path, name: str) -> IO[str]:
    """Hold ``<dir>/.lock`` for the whole session: two orchestrators never run one campaign."""
    f = open(campaign_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole session
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError(f"campaign.name: campaign {name!r} is already running in another process "
                          f"({campaign_dir}); wait for it, or pick another campaign.name") from None
    return f


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


def restore(store: Store, backend: Backend, space: SearchSpace, resumed: bool) -> Restored:
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
        key = space.key(e.params)
        if e.requeued and not any(space.key(x.params) == key for x in exps[i + 1:]):
            reason = e.result.reason if e.result else LOST
            out.requeue.append(replace(e.candidate, rationale=f"re-run of {e.id} ({reason}). "
                                       f"{e.candidate.rationale}".strip()))
    return out
