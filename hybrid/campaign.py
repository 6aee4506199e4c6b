"""The campaign event loop: keep every worker busy, record every result, stop for a reason.

    restore (re-attach RUNNING jobs) -> loop { poll -> record -> mirror; dispatch to free
    workers: proposers -> ranker -> store.create -> snapshot -> submit -> mark_running } -> finalize

Store before side effects: an experiment row exists before its job is submitted and a result
is committed before anything else hears of it, so ``kill -9`` at any point loses nothing and
duplicates nothing. MLflow is fed from a background thread (a mirror never slows dispatch).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from backends.base import Backend, Finished
from hybrid import history, targets
from hybrid.config import Mode, OnInterrupt
from hybrid.confirming import GPEstimates, Repeats
from hybrid.following import INTERVAL_S as FOLLOW_INTERVAL_S
from hybrid.following import Follower
from hybrid.launch import Launcher, deferred_interrupts
from hybrid.mirror import MetricsMsg, ResultMsg, SummaryMsg, TrackerMirror
from hybrid.noise import noise_at_best, recommend
from hybrid.pool import CandidatePool
from hybrid.progress import Progress, View
from hybrid.proposers.base import Proposer
from hybrid.pruner import Pruner
from hybrid.reports import (
    Summary,
    summarize,
    write_hypotheses_md,
    write_reports,
    write_results_tsv,
    write_summary,
)
from hybrid.resume import (
    INTERRUPTED,
    STORE_NAME,
    StoreWatch,
    campaign_identity,
    check_identity,
    check_store_missing,
    lock_campaign,
    record_changes,
    restore,
)
from hybrid.secrets import redact_nested
from hybrid.space import SearchSpace
from hybrid.stopping import Budget, CampaignProgress, CostAwareStop, StopRules
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.tracking import CampaignInfo, NullTracker, Tracker
from hybrid.types import Candidate, Experiment, ExperimentState
from hybrid.variant_book import VariantBook
from hybrid.warm_start import PriorCampaign, identity, load_priors, warm_start_entries
from surrogate.acquisition import GPRanker, InOrderRanker, Ranker
from surrogate.pruning import PruningRule


class _StoreGone(Exception):
    """The store's file was deleted or replaced while the campaign ran (see ``StoreWatch``)."""


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
        follow_interval_s: float = FOLLOW_INTERVAL_S,
        pruning: PruningRule | None = None,
        replicates: int = 0,
        confirm_top_k: int = 0,
    ) -> None:
        self.name, self.dir, self.space, self.target = name, Path(dir), space, target
        self.objective = target.objective
        self.backend, self.proposer = backend, proposer
        self.ranker = ranker or InOrderRanker()
        self.budget = budget or Budget()
        self.stopping = StopRules(self.budget, max_failure_rate, cost_stop)
        self.tracker = tracker or NullTracker()
        # values were checked with the config (hybrid.config); the enums keep a direct caller honest
        self.mode, self.poll_interval_s = Mode(mode), poll_interval_s
        self.on_interrupt = OnInterrupt(on_interrupt)
        self.progress = progress or Progress("none")
        self.config = dict(config or {})
        self.target_hardware = target_hardware
        # earlier campaigns whose results are prior data (hybrid/warm_start.py): loaded by run()
        self.warm_start = warm_start_entries(warm_start)
        self.warm: list[PriorCampaign] = []
        self.priors: list[Experiment] = []  # their experiments: in the decision history only
        self.findings = findings
        self.follow_interval_s = follow_interval_s  # how often running jobs' progress lines are read
        self.pruning = pruning  # None: no run is stopped early (pruning=none)
        # the runs it repeats on its own (hybrid/confirming.py); 0 and 0: none (the CLI's config: 1 and 3)
        estimator = None
        if isinstance(self.ranker, GPRanker):  # surrogate=gp: the GP's estimates rank what to confirm and recommend
            estimator = GPEstimates(space, self.objective, target_hardware,
                                    lambda: self.book.parents() if self.book is not None else None,
                                    getattr(self.ranker, "seed", 0))
        self.repeats = Repeats(self.objective, target_hardware, replicates, confirm_top_k, estimator)
        self._soft_stop = False  # the stop reason ends exploration only: confirmations may still run
        self.ranker.set_wave_shares(proposer.wave_shares)  # e.g. the LLM's share of each wave
        self.pool = CandidatePool(proposer, space, prefetch_pool, self.ranker.pool_size(1), self.progress.message)
        self.exps: dict[str, Experiment] = {}
        self.book: VariantBook | None = None  # the code variants, when target.editable names files
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
        # a space the target does not know fails here, once, not in every experiment (target.check_command)
        targets.check_params(self.target, self.space.defaults())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # the campaign's files are the user's only (logs may hold what a run printed)
        lock = self._lock()
        try:
            check_store_missing(self.dir, self.name)
            return self._run()
        finally:
            lock.close()

    def _run(self) -> Summary:
        self.store = Store(self.dir / STORE_NAME)
        self._watch = StoreWatch(self.store)
        self.follower = Follower(self.store, self.backend, self.progress.message, self.follow_interval_s)
        self.pruner = Pruner(self.pruning, self.store, self.backend, self.objective, self.progress.message)
        config = redact_nested(self.config)  # secrets keep their names, never their values
        try:
            resumed = self.store.claim(self.name, self.objective.metric)
            check_identity(self.store, self.name, campaign_identity(self.target, self.space))
        except BaseException:
            self.store.close()
            raise
        if self.target.editable:  # code variants: checked, recorded and applied by the book
            self.book = VariantBook(self.store, self.target, self.space, self.dir, lambda: list(self.exps.values()),
                                    target_hardware=self.target_hardware, never_copied=self._never_copied())
            self.pool.variants = self.book
            self.proposer.use_variants(self.book)
        if resumed:
            changed = record_changes(self.store, config)
            if changed:
                self.progress.message(f"resumed with changed settings: {'; '.join(changed)}")
        self.store.set_meta("config", config)
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
        self.launcher = Launcher(self.store, self.backend, self.target, self.mirror, self.progress,
                                 self.dir / "experiments", self._never_copied(), self.book)
        try:
            self._restore(resumed)
            self.progress.start(self._view())
            reason = self._loop()
            self.status = "finished"
        except KeyboardInterrupt:
            reason = self._interrupt()
            self.status = "interrupted"
        except BaseException as err:
            # A bug or an unusable backend: leave running jobs alone, a resume re-attaches them.
            self.pool.close()
            self.backend.detach()
            self.progress.stop()
            self.mirror.stop()
            self.store.event("error")
            self.store.set_meta("active_s", self._progress().elapsed_s)
            if isinstance(err, _StoreGone):  # save what the open store holds before it is closed
                rescued = self._watch.rescue(str(err))
                self.store.close()
                raise rescued from None
            self.store.close()
            raise
        return self._finalize(reason, self.status)

    def experiments(self) -> list[Experiment]:
        """Every experiment recorded so far, read from the store (works after ``run``)."""
        store = Store(self.dir / STORE_NAME)
        try:
            return store.experiments()
        finally:
            store.close()

    # ---- startup --------------------------------------------------------------------------
    def _lock(self):
        return lock_campaign(self.dir, self.name)

    def _restore(self, resumed: bool) -> None:
        self.pruner.restore({e.id: e for e in self.store.experiments()})
        hourly = {w.name: w.hourly_usd for w in self.backend.workers()}
        found = restore(self.store, self.backend, self.space, resumed,
                        lost_as=lambda e: self.pruner.lost(e, hourly.get(e.worker, 0.0)))
        self.exps, self.wave, self.requeue = found.exps, found.wave, found.requeue
        for exp_id, curve in self.store.progress().items():  # the learning curves recorded so far
            if exp_id in self.exps:
                self.exps[exp_id].curve = curve
        self.pruner.resume(self.backend.running())  # a decision whose kill may never have been sent
        if not resumed:
            return
        soft = self.store.get_meta("soft_stop")  # set while the confirmations of a soft stop run
        if soft:
            self.stop_reason, self._soft_stop = str(soft), True
        for e in self.exps.values():
            if e.result is not None and not e.mirrored:
                self.mirror.send(ResultMsg(e, e.result))
        self.progress.message(found.message(self.name))

    # ---- the loop -------------------------------------------------------------------------
    def _loop(self) -> str:
        while True:
            self._check_store()
            busy = self._collect()
            running = self.backend.running()
            if self.pruner.consider(self.follower.read(running, self.exps), self.exps, running):
                busy = self._collect() or True  # the freed workers are filled in this same turn
            self._proposer_events()
            if self.stop_reason is None or self._soft_stop:
                hard = self._check_stop()
                if hard is not None:
                    self.stop_reason, self._soft_stop = hard, False
            running = self.backend.running()
            confirming = self._soft_stop and self.repeats.can_confirm(list(self.exps.values()), self.backend.workers())
            if self.stop_reason is not None and not running and not confirming:
                return self.stop_reason
            if self.stop_reason is None or confirming:
                dispatched = self._dispatch()
                busy = dispatched or busy
                if confirming and not dispatched and not self.backend.running():
                    return self.stop_reason  # (no worker took a confirmation: nothing left to wait for)
                if self.stop_reason is None:
                    reason = self.stopping.exhausted(dispatched, bool(self.backend.running()), self.proposer.waiting())
                    if reason:
                        self._stop_softly(reason)
            self.progress.tick(self._view())
            if not busy:
                time.sleep(self.poll_interval_s)

    def _stop_softly(self, reason: str) -> None:
        """Exploration ends (the cost-aware rule, an exhausted space); the top configurations are
        confirmed first, within the budget's caps (hybrid/confirming.py)."""
        self.stop_reason, self._soft_stop = reason, True
        self.store.set_meta("soft_stop", reason)  # a resume in the middle of the confirmations goes on with them
        need = self.repeats.needed(list(self.exps.values()))
        if need and self.repeats.can_confirm(list(self.exps.values()), self.backend.workers()):
            reason += f"; confirming the top {self.repeats.confirm_top_k} configs first ({need} runs)"
        self.progress.message(f"stopping: {reason}")

    def _check_store(self, force: bool = False) -> None:
        what = self._watch.changed(force)
        if what is not None:
            raise _StoreGone(what)

    def _collect(self, interrupted: bool = False) -> bool:
        """Poll the backend; record each finished job (durable first), then mirror it.
        ``interrupted``: the jobs cancelled now were stopped by Ctrl-C, not by their own doing; they
        are recorded as re-queued (a resume runs them again, outside the budget)."""
        finished: list[Finished] = self.backend.poll()
        for f in finished:
            exp = self.exps[f.experiment_id]
            result = targets.to_result(f, self.objective, f.worker.hardware, f.worker.hourly_usd,
                                       self.target.timeout_s, secrets=self.target.secret_values)
            self.follower.finished(exp, f.log, result.state is ExperimentState.DONE)
            result = self.pruner.outcome(exp, result)  # PRUNED when the rule stopped it
            requeued = interrupted and result.state is ExperimentState.CANCELLED
            if requeued:
                result = replace(result, reason=INTERRUPTED)
            if self.store.record(result, ended=f.ended, requeued=requeued):
                exp.state, exp.result, exp.hardware, exp.ended = result.state, result, result.hardware, f.ended
                exp.requeued = exp.requeued or requeued
                self.mirror.send(ResultMsg(exp, result))
                self.progress.finished(exp, result, self._view())
            self._free_since[f.worker.name] = f.ended
        if finished:
            self._write_tsv()
            self.mirror.send(SummaryMsg(self._summary_metrics()))
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
            self.mirror.send(MetricsMsg(metrics, self._proposer_calls))

    def _progress(self) -> CampaignProgress:
        counted = history.counted(list(self.exps.values()))
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
        reason = self.stopping.before_dispatch(self._progress())
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
        seen = self._history()
        fixed: list[Candidate] = []
        if not own:  # experiment 1 is always the baseline (the target's defaults), warm start or not
            fixed.append(Candidate(self.space.defaults(), "baseline", "the target's default configuration"))
        while self.requeue and len(fixed) < n:
            fixed.append(self.requeue.pop(0))
        wave = list(zip(fixed, free, strict=False))
        left = free[len(fixed):]
        if self._soft_stop or self.repeats.reserve_due(own, self.budget, self._progress(), self.backend.workers()):
            # the confirmation phase: what is left of the budget confirms the top configs, nothing new
            wave += self.repeats.confirm_picks(own, left)[: n - len(wave)]
            left = []
        else:
            wave += self.repeats.replicate_picks(own, left)[: n - len(wave)]
            left = [w for w in left if w.name not in {w.name for _, w in wave}]
        rest = left[: n - len(wave)]
        fixed = [c for c, _ in wave]
        pool = self.pool.take(seen, self.ranker.pool_size(len(rest)), len(rest), fixed) if rest else []
        if pool:  # (proposer=llm may have nothing yet: no ranking, no stopping decision on an empty pool)
            if self.book is not None:  # a stacked variant shares its parent's part of the GP
                self.ranker.set_variant_parents(self.book.parents())
            running = [e for e in own if e.state is ExperimentState.RUNNING]
            wave += self.ranker.rank(pool, seen, running, rest)[: len(rest)]
            if self._cost_stop_fires():
                return False
        if not wave:
            return False
        self.wave += 1
        for cand, worker in wave:
            with deferred_interrupts():
                self.launcher.start(cand, worker, self.wave, self.exps, self._idle_since)
        self.pool.prepare(self._history(), self.ranker.pool_size(1))
        return True

    def _history(self) -> list[Experiment]:
        """What the proposers and the ranker decide from: the warm-start priors (earlier campaigns'
        results, ids ``<campaign>/e0003``), then this campaign's own experiments. Everything else
        (budget, progress, reports, the mirror) counts ``self.exps`` only."""
        return [*self.priors, *self.exps.values()]

    def _cost_stop_fires(self) -> bool:
        """Feed the ranker's decision to the cost-aware rule; True when it says stop."""
        fleet_hourly = sum(w.hourly_usd for w in self.backend.workers())
        reason = self.stopping.after_ranking(self.ranker.last_decision, self._progress(), fleet_hourly,
                                             self._measured_noise_high())
        if reason is None:
            return False
        self.store.event("cost_stop", reason)
        self._stop_softly(reason)
        return True

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
                self._collect(interrupted=True)
                time.sleep(0.05)
            self._collect(interrupted=True)
            left = len(self.backend.running())
            self.backend.detach()
            extra = f" ({left} could not be confirmed stopped; a resume re-checks them)" if left else ""
            return f"interrupted: {n} running experiments cancelled{extra}; re-run the same command to resume (they run again)"
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)

    def _view(self) -> View:
        exps = list(self.exps.values())
        p = self._progress()
        base = history.baseline(exps)
        return View(
            name=self.name, objective=self.objective,
            workers=[(w.name, w.hardware) for w in self.backend.workers()],
            running={e.worker: e for e in exps if e.state is ExperimentState.RUNNING},
            best=history.best(exps, self.objective, self.target_hardware),
            baseline=base.value(self.objective.metric) if base else None,
            n_created=p.n_created, n_done=sum(1 for e in exps if e.state is ExperimentState.DONE),
            n_failed=p.n_failed, spend_usd=p.spend_usd, elapsed_s=p.elapsed_s, stopping=self.stop_reason,
            recommended=self._recommended(exps),
        )

    def _recommended(self, exps: Sequence[Experiment]) -> str | None:
        """The live view's recommendation: shown once confirmed (before, it is the best single run)."""
        last = self.repeats.estimator.last if isinstance(self.repeats.estimator, GPEstimates) else None
        rec = recommend(exps, self.objective, self.target_hardware, estimates=last)
        if rec is None or not rec.confirmed:
            return None
        return f"{rec.estimate()} by {', '.join(rec.runs.ids[:3])}{'...' if rec.n > 3 else ''}"

    def _summary_metrics(self) -> dict[str, Any]:
        return summarize(self.name, list(self.exps.values()), self.objective, self.stop_reason or "",
                         self._progress().elapsed_s, self.target_hardware, self._proposer_usd).as_metrics()

    def _write_tsv(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_tsv > 2.0:
            write_results_tsv(self.dir / "results.tsv", list(self.exps.values()), self.objective)
            self._last_tsv = now

    def _idle_since(self, worker: str) -> float:
        return self._free_since.get(worker, self._session_start)

    def _never_copied(self) -> tuple[Path, ...]:
        """What a snapshot of the target leaves out whatever its patterns say: this campaign's dir
        (with ``campaign.dir`` inside the workdir each experiment would copy every earlier one) and
        the tracker's local store (MLflow's default one sits next to the campaign dir)."""
        return (self.dir, *self.tracker.local_paths(self.dir))

    def _measured_noise_high(self) -> float | None:
        """The 95 % upper bound of the run-to-run sd the replicates measured at the best
        configurations on the hardware the GP predicts for (``noise.noise_at_best``; None: not
        measured there)."""
        if self.stopping.cost is None:
            return None
        own = list(self.exps.values())
        hw = history.judged_hardware(own, self.objective, self.target_hardware)
        measured = noise_at_best(own, self.objective, hw) if hw is not None else None
        return measured.high if measured is not None and measured.sd else None

    def _gp_noise(self, exps: Sequence[Experiment]) -> dict[str, float]:
        """The GP's inferred noise sd on the hardware it predicts for (its last decision's), stored
        for ``hybrid report``; {} without a fitted GP."""
        sd = getattr(self.ranker.last_decision, "noise_sd", None)
        hw = history.judged_hardware(exps, self.objective, self.target_hardware)
        if sd is not None and hw is not None:
            self.store.set_meta("gp_noise", {hw: float(sd)})
        stored = self.store.get_meta("gp_noise") or {}
        return {str(k): float(v) for k, v in stored.items()}

    def _finalize(self, reason: str, status: str) -> Summary:
        self._check_store(force=True)
        elapsed = self._progress().elapsed_s
        self.store.set_meta("active_s", elapsed)
        self.store.set_meta("stop_reason", reason)
        self.store.set_meta("status", status)
        if status == "finished":
            self.store.set_meta("soft_stop", None)  # done: a later resume explores again
        self.store.event("stop", reason)
        self._write_tsv(force=True)
        self._proposer_events()
        exps = self.store.experiments()
        gp_noise = self._gp_noise(exps)
        estimates = self.repeats.estimates(exps)  # the GP's posterior means: what the recommendation ranks by
        self.store.set_meta("gp_estimates", dict(estimates or {}))
        summary = summarize(self.name, exps, self.objective, reason, elapsed, self.target_hardware,
                            self._proposer_usd, gp_noise, estimates)
        artifacts = [self.dir / "results.tsv", *write_summary(self.dir, summary)]
        if write_hypotheses_md(self.dir / "hypotheses.md", exps, self.objective):
            artifacts.append(self.dir / "hypotheses.md")
        if self.findings:  # findings.md + plots/*.png (hybrid/reports/); never raises on the data
            gp = None  # the GP of its response slices, handed in: reports do not import the surrogate
            if self.findings != "no_gp":
                from surrogate.gp import GPSurrogate as gp  # type: ignore[assignment]  # torch: at the end only
            written = write_reports(self.dir, elapsed_s=elapsed, objective=self.objective, space=self.space, gp=gp)
            artifacts.append(written[0])
            if len(written) > 1:
                artifacts.append(self.dir / "plots")  # uploaded as the folder plots/
        self.progress.stop(self._view())
        self.mirror.send(SummaryMsg(summary.as_metrics()))
        self.mirror.stop()
        self.tracker.close(status, reason, summary.as_metrics(), artifacts)
        self.pool.close()
        self.proposer.close()
        self.backend.close()
        self.store.close()
        return summary

