"""The campaign event loop: keep every worker busy, record every result, stop for a reason.

    restore (re-attach RUNNING jobs) -> loop { poll -> record -> mirror; dispatch to free
    workers: proposers -> ranker -> store.create -> snapshot -> submit -> mark_running } -> finalize

Store before side effects: an experiment row exists before its job is submitted and a result
is committed before anything else hears of it, so ``kill -9`` at any point loses nothing and
duplicates nothing. MLflow is fed from a background thread (a mirror never slows dispatch).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from backends.base import Backend, Finished, RunSpec, Worker
from backends.workdir import snapshot
from hybrid import targets
from hybrid.errors import BackendError, ConfigError, InvalidCandidateError
from hybrid.findings import write_reports
from hybrid.mirror import TrackerMirror
from hybrid.pool import PoolPrefetcher
from hybrid.progress import Progress, View
from hybrid.proposers.base import Proposer
from hybrid.report import (
    Summary,
    baseline_experiment,
    best_experiment,
    summarize,
    write_hypotheses_md,
    write_results_tsv,
)
from hybrid.space import SearchSpace
from hybrid.stopping import Budget, CampaignProgress, CostAwareStop, failure_reason, money_saved
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.tracking import CampaignInfo, NullTracker, Tracker
from hybrid.types import Candidate, Experiment, ExperimentState, Result
from hybrid.warm_start import PriorCampaign, identity, load_priors, warm_start_entries
from surrogate.acquisition import InOrderRanker, Ranker

LOST = "orchestrator lost the job"
NEVER_SUBMITTED = "never submitted (the orchestrator stopped before submitting it)"


@contextmanager
def _deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until the block ends, so that a job is never started without its id
    reaching the store and the backend's bookkeeping (it could not be cancelled otherwise)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            raise KeyboardInterrupt


class Campaign:
    def __init__(
        self,
        *,
        name: str,
        dir: Path,
        space: SearchSpace,
        target: TargetSpec,
        backend: Backend,
        proposer: Proposer,
        ranker: Ranker | None = None,
        budget: Budget | None = None,
        tracker: Tracker | None = None,
        mode: str = "async",
        poll_interval_s: float = 0.1,
        max_failure_rate: float = 0.5,
        on_interrupt: str = "cancel",
        progress: Progress | None = None,
        config: Mapping[str, Any] | None = None,
        target_hardware: str | None = None,
        cost_stop: CostAwareStop | None = None,
        prefetch_pool: bool | str = True,
        warm_start: Sequence[str | Path] = (),
        findings: bool | str = True,
    ) -> None:
        if mode not in ("async", "sync"):
            raise ConfigError(f"campaign.mode: {mode!r} is not async or sync")
        if on_interrupt not in ("cancel", "detach"):
            raise ConfigError(f"campaign.on_interrupt: {on_interrupt!r} is not cancel or detach")
        if not 0 <= max_failure_rate <= 1:
            raise ConfigError(f"campaign.max_failure_rate: {max_failure_rate} must be within [0, 1]")
        self.name, self.dir, self.space, self.target = name, Path(dir), space, target
        self.objective = target.objective
        self.backend, self.proposer = backend, proposer
        self.ranker = ranker or InOrderRanker()
        self.budget = budget or Budget()
        self.tracker = tracker or NullTracker()
        self.mode, self.poll_interval_s = mode, poll_interval_s
        self.max_failure_rate, self.on_interrupt = max_failure_rate, on_interrupt
        self.progress = progress or Progress("none")
        self.config = dict(config or {})
        self.target_hardware = target_hardware
        self.cost_stop = cost_stop
        # earlier campaigns whose results are prior data (hybrid/warm_start.py): loaded by run()
        self.warm_start = warm_start_entries(warm_start)
        self.warm: list[PriorCampaign] = []
        self.priors: list[Experiment] = []  # their experiments: in the decision history only
        if findings not in (True, False, "no_gp"):
            raise ConfigError(f"campaign.findings: {findings!r} is not true, false or no_gp")
        self.findings = findings
        if prefetch_pool not in (True, False, "inline"):
            raise ConfigError(f"campaign.prefetch_pool: {prefetch_pool!r} is not true, false or inline")
        # A ranker that chooses from a pool larger than the free workers (the GP) gets its next
        # pool generated off the dispatch path (hybrid/pool.py); the classical in-order path is
        # left exactly as it was.
        if hasattr(self.ranker, "wave_shares"):  # e.g. the LLM's share of each wave (proposer.llm_share)
            self.ranker.wave_shares = dict(getattr(proposer, "wave_shares", {}) or {})
        self._prefetch = (PoolPrefetcher(proposer, background=prefetch_pool is True)
                          if prefetch_pool and self.ranker.pool_size(1) > 1 else None)
        self.exps: dict[str, Experiment] = {}
        self.requeue: list[Candidate] = []
        self.stop_reason: str | None = None
        self.status = "new"  # then finished | interrupted | failed
        self.wave = 0
        self._free_since: dict[str, float] = {}
        self._session_start = time.time()
        self._active_before = 0.0
        self._last_tsv = 0.0
        self._proposer_usd = 0.0  # the proposers' own spend (LLM tokens), all sessions
        self._proposer_calls = 0

    # ---- public ---------------------------------------------------------------------------
    def run(self) -> Summary:
        # read (and check) the warm-start campaigns first: a bad campaign.warm_start starts nothing
        self.warm = load_priors(self.warm_start, campaign_name=self.name, campaign_dir=self.dir,
                                target=self.target, space=self.space)
        self.priors = [e for w in self.warm for e in w.experiments]
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = self._lock()
        try:
            return self._run()
        finally:
            lock.close()

    def _run(self) -> Summary:
        self.store = Store(self.dir / "state.sqlite")
        resumed = self.store.claim(self.name, self.objective.metric)
        self.store.set_meta("config", self.config)
        self.store.set_meta("identity", identity(self.target, self.space))  # what a warm start from it must match
        self.store.event("resume" if resumed else "start", f"pid {os.getpid()}")
        if self.warm_start:  # loaded again on every resume: the same campaigns give the same priors
            records = [w.record() for w in self.warm]
            self.store.set_meta("warm_start", records)
            self.store.event("warm_start", json.dumps(records))
            for w in self.warm:
                self.progress.message(w.message())
        self._active_before = float(self.store.get_meta("active_s", 0.0))
        for _, _, detail in self.store.events("proposer_call"):  # earlier sessions' LLM spend
            self._proposer_usd += float(json.loads(detail).get("cost_usd", 0.0))
            self._proposer_calls += 1
        parent = self.tracker.start(CampaignInfo(self.name, self.dir, self.config, self.objective,
                                                 self.store.get_meta("mlflow_parent_run_id")))
        if parent:
            self.store.set_meta("mlflow_parent_run_id", parent)
        self.mirror = TrackerMirror(self.tracker, self.store)
        self.mirror.start()
        try:
            self._restore(resumed)
            self.progress.start(self._view())
            reason = self._loop()
            self.status = "finished"
        except KeyboardInterrupt:
            reason = self._interrupt()
            self.status = "interrupted"
        except BaseException:
            # A bug or an unusable backend: leave running jobs alone, a resume re-attaches them.
            if self._prefetch is not None:
                self._prefetch.close()
            self.backend.detach()
            self.progress.stop()
            self.mirror.stop()
            self.store.event("error")
            self.store.set_meta("active_s", self._progress().elapsed_s)
            self.store.close()
            raise
        return self._finalize(reason, self.status)

    def experiments(self) -> list[Experiment]:
        """Every experiment recorded so far, read from the store (works after ``run``)."""
        store = Store(self.dir / "state.sqlite")
        try:
            return store.experiments()
        finally:
            store.close()

    # ---- startup --------------------------------------------------------------------------
    def _lock(self):
        f = open(self.dir / ".lock", "a+")  # noqa: SIM115 - held for the whole session
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ConfigError(f"campaign.name: campaign {self.name!r} is already running in another process "
                              f"({self.dir}); wait for it, or pick another campaign.name") from None
        return f

    def _restore(self, resumed: bool) -> None:
        for e in self.store.experiments():
            self.exps[e.id] = e
            self.wave = max(self.wave, e.wave)
        if not resumed:
            return
        n_attached = 0
        for e in list(self.exps.values()):
            if e.state is ExperimentState.RUNNING and e.job_id:
                if self.backend.attach(e.job_id, e) is not None:
                    n_attached += 1
                else:
                    self._lose(e, LOST, ExperimentState.CRASHED)
            elif e.state is ExperimentState.PENDING:
                handle = self.backend.recover(e)
                if handle is not None:
                    self.store.mark_running(e.id, handle.job_id, handle.started)
                    e.state, e.job_id, e.started = ExperimentState.RUNNING, handle.job_id, handle.started
                    n_attached += 1
                else:
                    self._lose(e, NEVER_SUBMITTED, ExperimentState.CANCELLED)
        # Lost experiments are re-run once; derived from the store, so a lost config whose re-run
        # never got dispatched (another kill) is still re-queued on the next resume.
        exps = list(self.exps.values())
        for i, e in enumerate(exps):
            key = self.space.key(e.params)
            if e.extra.get("requeued") and not any(self.space.key(x.params) == key for x in exps[i + 1:]):
                reason = e.result.reason if e.result else LOST
                self.requeue.append(replace(e.candidate, rationale=f"re-run of {e.id} ({reason}). "
                                            f"{e.candidate.rationale}".strip()))
        for e in self.exps.values():
            if e.result is not None and not e.extra.get("_mirrored"):
                self.mirror.q.put((e, e.result))
        n_done = sum(1 for e in self.exps.values() if e.result is not None)
        self.progress.message(f"resumed campaign {self.name}: {n_done} results kept, {n_attached} running jobs "
                              f"re-attached, {len(self.requeue)} lost experiments re-queued")

    def _lose(self, e: Experiment, reason: str, state: ExperimentState) -> None:
        """Record an experiment the orchestrator lost track of (``_restore`` queues it again)."""
        result = Result(e.id, state, {}, e.hardware, 0.0, 0.0, "", reason)
        self.store.record(result, extra={"requeued": True})
        e.state, e.result = state, result
        e.extra["requeued"] = True

    # ---- the loop -------------------------------------------------------------------------
    def _loop(self) -> str:
        while True:
            busy = self._collect()
            self._proposer_events()
            if self.stop_reason is None:
                self.stop_reason = self._check_stop()
            running = self.backend.running()
            if self.stop_reason is not None and not running:
                return self.stop_reason
            if self.stop_reason is None:
                dispatched = self._dispatch()
                busy = dispatched or busy
                if (not dispatched and not self.backend.running() and self.stop_reason is None
                        and not self.proposer.waiting()):  # an LLM still thinking may bring candidates
                    self.stop_reason = "search space exhausted: the proposers have no new configuration"
                    self.progress.message(f"stopping: {self.stop_reason}")
            self.progress.tick(self._view())
            if not busy:
                time.sleep(self.poll_interval_s)

    def _collect(self) -> bool:
        """Poll the backend; record each finished job (durable first), then mirror it."""
        finished: list[Finished] = self.backend.poll()
        for f in finished:
            exp = self.exps[f.experiment_id]
            result = targets.to_result(f, self.objective, f.worker.hardware, f.worker.hourly_usd,
                                       self.target.timeout_s)
            if self.store.record(result, ended=f.ended):
                exp.state, exp.result, exp.hardware = result.state, result, result.hardware
                exp.extra["_ended"] = f.ended
                self.mirror.q.put((exp, result))
                self.progress.finished(exp, result, self._view())
            self._free_since[f.worker.name] = f.ended
        if finished:
            self._write_tsv()
            self.mirror.q.put(("update", self._summary_metrics()))
        return bool(finished)

    def _proposer_events(self) -> None:
        """Notices from the proposers (shown once), and their paid calls: stored durably, added to
        the spend, mirrored to MLflow with one step per call."""
        for ev in self.proposer.events():
            if ev.kind != "call":
                if ev.message:
                    self.store.event("proposer", f"{ev.source}: {ev.message}")
                    self.progress.message(f"{ev.source}: {ev.message}")
                continue
            self._proposer_usd += ev.cost_usd
            self._proposer_calls += 1
            self.store.event("proposer_call", json.dumps({"source": ev.source, "cost_usd": ev.cost_usd,
                                                          "message": ev.message, **ev.metrics}))
            if ev.message:
                self.progress.message(f"{ev.source}: {ev.message}")
            metrics = {f"{ev.source}.{k}": v for k, v in ev.metrics.items()}
            metrics["proposer_usd_total"] = self._proposer_usd
            self.mirror.q.put(("metrics", metrics, self._proposer_calls))

    def _progress(self) -> CampaignProgress:
        counted = [e for e in self.exps.values() if not e.extra.get("requeued")]
        now = time.time()
        spend = self._proposer_usd
        for e in self.exps.values():
            if e.result is not None:
                spend += e.result.cost_usd
        hourly = {w.name: w.hourly_usd for w in self.backend.workers()}
        for h in self.backend.running():
            spend += (now - h.started) / 3600.0 * hourly.get(h.worker.name, h.worker.hourly_usd)
        return CampaignProgress(
            n_created=len(counted),
            n_finished=sum(1 for e in counted if e.result is not None),
            n_failed=sum(1 for e in counted if e.state.is_failure()),
            elapsed_s=self._active_before + (now - self._session_start),
            spend_usd=spend,
        )

    def _check_stop(self) -> str | None:
        p = self._progress()
        reason = self.budget.reason(p) or failure_reason(p, self.max_failure_rate)
        if reason:
            self.progress.message(f"stopping: {reason}")
        return reason

    # ---- dispatch -------------------------------------------------------------------------
    def _dispatch(self) -> bool:
        free = self.backend.free_workers()
        if not free or (self.mode == "sync" and self.backend.running()):
            return False
        remaining = self.budget.remaining_experiments(self._progress().n_created)
        n = len(free) if remaining is None else min(len(free), remaining)
        if n <= 0:
            return False
        own = list(self.exps.values())
        history = self._history()
        fixed: list[Candidate] = []
        if not own:  # experiment 1 is always the baseline (the target's defaults), warm start or not
            fixed.append(Candidate(self.space.defaults(), "baseline", "the target's default configuration"))
        while self.requeue and len(fixed) < n:
            fixed.append(self.requeue.pop(0))
        wave = list(zip(fixed, free, strict=False))
        rest = free[len(fixed):n]
        pool = self._pool(history, len(rest), fixed) if rest else []
        if pool:  # (proposer=llm may have nothing yet: no ranking, no stopping decision on an empty pool)
            running = [e for e in own if e.state is ExperimentState.RUNNING]
            wave += self.ranker.rank(pool, history, running, rest)[: len(rest)]
            if self._cost_stop_fires():
                return False
        if not wave:
            return False
        self.wave += 1
        for cand, worker in wave:
            with _deferred_interrupts():
                self._submit(cand, worker, self.wave)
        if self._prefetch is not None:
            self._prefetch.prepare(self._history(), self.ranker.pool_size(1))
        return True

    def _history(self) -> list[Experiment]:
        """What the proposers and the ranker decide from: the warm-start priors (earlier campaigns'
        results, ids ``<campaign>/e0003``), then this campaign's own experiments. Everything else
        (budget, progress, reports, the mirror) counts ``self.exps`` only."""
        return [*self.priors, *self.exps.values()]

    def _cost_stop_fires(self) -> bool:
        """Feed the ranker's decision to the cost-aware rule; True when it says stop."""
        if self.cost_stop is None:
            return False
        decision = getattr(self.ranker, "last_decision", None)
        gain = decision.best_gain_per_usd if decision is not None and decision.fitted else None
        p = self._progress()
        reason = self.cost_stop.observe(gain, p.n_finished)
        if reason is None:
            return False
        fleet_hourly = sum(w.hourly_usd for w in self.backend.workers())
        saved = money_saved(self.budget, p, fleet_hourly)
        if saved is not None and fleet_hourly > 0:
            reason += f"; about ${saved:.2f} of the budget left unspent"
        left = self.budget.remaining_experiments(p.n_created)
        if left:
            reason += f"; {left} of budget.max_experiments={self.budget.max_experiments} not run"
        self.stop_reason = reason
        self.store.event("cost_stop", reason)
        self.progress.message(f"stopping: {reason}")
        return True

    def _pool(self, history: Sequence[Experiment], n_free: int, taken: Sequence[Candidate]) -> list[Candidate]:
        """The candidates the ranker chooses from: the prefetched pool when there is one (less
        what was tried or started since), topped up now if fewer than ``n_free`` are left."""
        n = self.ranker.pool_size(n_free)
        ready = self._prefetch.take() if self._prefetch is not None else None
        if ready is None:
            return self._propose(history, n, taken)
        pool = self._usable(ready, history, taken)
        if len(pool) < n_free:
            pool += self._propose(history, n - len(pool), [*taken, *pool])
        return pool

    def _propose(self, history: Sequence[Experiment], n: int, taken: Sequence[Candidate]) -> list[Candidate]:
        ask = self._prefetch.propose if self._prefetch is not None else self.proposer.propose
        return self._usable(ask(history, n), history, taken)

    def _usable(self, cands: Sequence[Candidate], history: Sequence[Experiment],
                taken: Sequence[Candidate]) -> list[Candidate]:
        """Valid candidates, each new: not in the history, not taken, not twice."""
        seen = {self.space.key(e.params) for e in history} | {self.space.key(c.params) for c in taken}
        out: list[Candidate] = []
        for cand in cands:
            try:
                params = self.space.validate(cand.params)
            except InvalidCandidateError as e:
                self.progress.message(f"dropped an invalid {cand.source} proposal: {e}")
                continue
            key = self.space.key(params)
            if key not in seen:
                seen.add(key)
                out.append(replace(cand, params=params))
        return out

    def _submit(self, cand: Candidate, worker: Worker, wave: int) -> None:
        exp = self.store.create(cand, worker.name, worker.hardware, wave, self.dir / "experiments")
        self.exps[exp.id] = exp
        workdir = Path(exp.workdir)
        try:
            snapshot(self.target.workdir, workdir, self.target.exclude)
            targets.write_params(workdir, cand.params)
            spec = RunSpec(
                command=targets.build_command(self.target.command, cand.params, exp.id, worker.hardware),
                workdir=workdir,
                env=targets.build_env(self.target.env, exp.id, worker.hardware, cand.params),
                timeout_s=self.target.timeout_s,
            )
            handle = self.backend.submit(exp, spec)
        except (BackendError, OSError) as err:
            result = Result(exp.id, ExperimentState.CRASHED, {}, worker.hardware, 0.0, 0.0, "", f"submit failed: {err}")
            self.store.record(result)
            exp.state, exp.result = result.state, result
            self.mirror.q.put((exp, result))
            self.progress.message(f"{exp.id}: submit to {worker.name} failed: {err}")
            return
        idle = max(0.0, handle.started - self._free_since.get(worker.name, self._session_start))
        self.store.mark_running(exp.id, handle.job_id, handle.started, {"idle_before_s": idle})
        exp.state, exp.job_id, exp.started = ExperimentState.RUNNING, handle.job_id, handle.started
        exp.extra["idle_before_s"] = idle
        self.progress.submitted(exp)

    # ---- shutdown -------------------------------------------------------------------------
    def _interrupt(self) -> str:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() else None
        try:
            if self.on_interrupt == "detach":
                n = len(self.backend.running())
                self.backend.detach()
                return f"interrupted: {n} running experiments left running; re-run the same command to resume"
            n = len(self.backend.running())
            self.backend.cancel_all()
            deadline = time.monotonic() + 30
            while self.backend.running() and time.monotonic() < deadline:
                self._collect()
                time.sleep(0.05)
            self._collect()
            left = len(self.backend.running())
            self.backend.detach()
            extra = f" ({left} could not be confirmed stopped; a resume re-checks them)" if left else ""
            return f"interrupted: {n} running experiments cancelled{extra}"
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)

    def _view(self) -> View:
        exps = list(self.exps.values())
        p = self._progress()
        base = baseline_experiment(exps)
        return View(
            name=self.name, objective=self.objective,
            workers=[(w.name, w.hardware) for w in self.backend.workers()],
            running={e.worker: e for e in exps if e.state is ExperimentState.RUNNING},
            best=best_experiment(exps, self.objective, self.target_hardware) or best_experiment(exps, self.objective),
            baseline=base.value(self.objective.metric) if base else None,
            n_created=p.n_created, n_done=sum(1 for e in exps if e.state is ExperimentState.DONE),
            n_failed=p.n_failed, spend_usd=p.spend_usd, elapsed_s=p.elapsed_s, stopping=self.stop_reason,
        )

    def _summary_metrics(self) -> dict[str, Any]:
        return summarize(self.name, list(self.exps.values()), self.objective, self.stop_reason or "",
                         self._progress().elapsed_s, self.target_hardware, self._proposer_usd).as_metrics()

    def _write_tsv(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_tsv > 2.0:
            write_results_tsv(self.dir / "results.tsv", list(self.exps.values()), self.objective)
            self._last_tsv = now

    def _finalize(self, reason: str, status: str) -> Summary:
        elapsed = self._progress().elapsed_s
        self.store.set_meta("active_s", elapsed)
        self.store.set_meta("stop_reason", reason)
        self.store.set_meta("status", status)
        self.store.event("stop", reason)
        self._write_tsv(force=True)
        self._proposer_events()
        exps = self.store.experiments()
        summary = summarize(self.name, exps, self.objective, reason, elapsed, self.target_hardware,
                            self._proposer_usd)
        (self.dir / "summary.txt").write_text(summary.text() + "\n")
        artifacts = [self.dir / "results.tsv", self.dir / "summary.txt"]
        if write_hypotheses_md(self.dir / "hypotheses.md", exps, self.objective):
            artifacts.append(self.dir / "hypotheses.md")
        if self.findings:  # findings.md + plots/*.png (hybrid/findings.py); never raises on the data
            written = write_reports(self.dir, elapsed_s=elapsed, objective=self.objective, space=self.space,
                                    gp=self.findings != "no_gp")
            artifacts.append(written[0])
            if len(written) > 1:
                artifacts.append(self.dir / "plots")  # uploaded as the folder plots/
        self.progress.stop(self._view())
        self.mirror.q.put(("update", summary.as_metrics()))
        self.mirror.stop()
        self.tracker.close(status, reason, summary.as_metrics(), artifacts)
        if self._prefetch is not None:
            self._prefetch.close()
        self.proposer.close()
        self.backend.close()
        self.store.close()
        return summary

