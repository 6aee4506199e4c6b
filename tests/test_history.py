"""hybrid.history: the one definition of best, baseline, priors and how values are shown."""

from __future__ import annotations

import pytest

from hybrid import history
from hybrid.store import Store
from hybrid.types import (
    Candidate,
    Experiment,
    ExperimentState,
    FailureKind,
    JobState,
    Objective,
    Prior,
    Result,
)

MIN = Objective("val_bpb", "minimize")
MAX = Objective("acc", "maximize")


def exp(seq: int, value: float | None, hardware: str = "h100", source: str = "sobol", prior: Prior | None = None,
        metric: str = "val_bpb") -> Experiment:
    e = Experiment(f"e{seq:04d}", Candidate({"lr": 0.01 * seq}, source), "w0", hardware, 1, seq=seq, prior=prior)
    if value is None:
        e.state = ExperimentState.CRASHED
        e.result = Result(e.id, e.state, {}, hardware, 1.0, 0.0, "", "exit code 1", FailureKind.CRASH)
    else:
        e.state = ExperimentState.DONE
        e.result = Result(e.id, e.state, {metric: value}, hardware, 1.0, 0.0)
    return e


def test_best_is_judged_on_the_target_hardware_when_it_has_a_success():
    exps = [exp(1, 1.0, "h100"), exp(2, 0.5, "h200"), exp(3, 0.9, "h100")]
    assert history.best(exps, MIN, "h100").id == "e0003"
    assert history.best(exps, MIN, "h200").id == "e0002"


def test_without_a_target_best_is_judged_on_the_label_with_most_successes():
    """One stated fallback, shared by the GP, the summary, findings and compare: the most frequent
    label among successes, not the luckiest run on any hardware."""
    exps = [exp(1, 1.0, "h100"), exp(2, 0.5, "h200"), exp(3, 0.9, "h100"), exp(4, None, "h200"), exp(5, None, "h200")]
    assert history.judged_hardware(exps, MIN) == "h100"
    assert history.best(exps, MIN).id == "e0003"
    # a target without any success yet falls back the same way
    assert history.best(exps, MIN, "a100").id == "e0003"
    assert history.best_on(exps, MIN, None).id == "e0002"  # every label: only where a caller asks for it


def test_ties_go_to_the_earliest_and_direction_is_respected():
    exps = [exp(1, 0.8), exp(2, 0.8), exp(3, 0.7, metric="acc"), exp(4, 0.9, metric="acc")]
    assert history.best(exps, MIN).id == "e0001"
    assert history.best(exps, MAX).id == "e0004"
    assert [e.id for e in history.ranked(exps, MIN)] == ["e0001", "e0002"]
    assert history.best([exp(1, None)], MIN) is None and history.judged_hardware([], MIN) is None


def test_baseline_is_the_campaigns_own_and_priors_are_not_own():
    prior = exp(1, 0.5, source="baseline", prior=Prior("old", "e0001", "baseline"))
    mine = exp(2, 1.0, source="baseline")
    assert history.baseline([prior, mine]) is mine
    assert history.is_prior(prior) and not history.is_prior(mine)
    assert history.own([prior, mine]) == [mine]
    assert history.improvement_pct(0.9, 1.0, MIN) == pytest.approx(10.0)
    assert history.improvement_pct(1.1, 1.0, MAX) == pytest.approx(10.0)


def test_values_print_cleanly_and_rounding_noise_is_not_a_change():
    assert history.fmt_value(0.010000000000000004) == "0.01"
    assert history.fmt_value(True) == "true" and history.fmt_value(8) == "8"
    assert history.fmt_value(1.2345678, 4) == "1.235"
    assert history.changed_params({"lr": 0.010000000000000004, "depth": 8}, {"lr": 0.01, "depth": 6}) == {"depth": 8}
    assert history.fmt_params({"lr": 0.010000000000000004}, {"lr": 0.01}) == "(same as the baseline)"


@pytest.mark.parametrize(
    ("job", "code", "log", "kind"),
    [
        (JobState.EXITED, 1, "RuntimeError: CUDA out of memory", FailureKind.OOM),
        (JobState.EXITED, 137, "", FailureKind.OOM),
        (JobState.EXITED, 2, "Traceback ...", FailureKind.CRASH),
        (JobState.EXITED, 0, "nothing", FailureKind.NO_METRIC),
        (JobState.EXITED, 0, "val_bpb: nan", FailureKind.NO_METRIC),
        (JobState.TIMEOUT, None, "out of memory", FailureKind.TIMEOUT),
        (JobState.LOST, None, "", FailureKind.LOST),
        (JobState.CANCELLED, None, "", FailureKind.CANCELLED),
        (JobState.EXITED, 0, "val_bpb: 0.99", None),
    ],
)
def test_classify_sets_the_failure_kind_once(job, code, log, kind):
    from hybrid.targets import parse_metrics

    state, failure, _ = history.classify(job, code, log, parse_metrics(log), MIN, timeout_s=10)
    assert failure is kind
    assert (state is ExperimentState.DONE) == (kind is None)


def test_an_old_store_gets_its_failure_kinds_once(tmp_path):
    """A store written before the failure column: migrated on open, kinds derived from the stored reasons."""
    import sqlite3

    store = Store(tmp_path / "state.sqlite")
    store.claim("c", "val_bpb")
    e = store.create(Candidate({}, "sobol"), "w0", "h100", 1, tmp_path)
    store.record(Result(e.id, ExperimentState.CRASHED, {}, "h100", 1.0, 0.0, "", "exit code 1 (out of memory)",
                        FailureKind.OOM))
    store.close()
    with sqlite3.connect(tmp_path / "state.sqlite") as c:  # make it look like an old store
        c.execute("ALTER TABLE experiments DROP COLUMN failure")
    ro = Store.open_read_only(tmp_path / "state.sqlite")
    assert ro.experiments()[0].result.failure is FailureKind.OOM
    ro.close()
    again = Store(tmp_path / "state.sqlite")
    assert again.experiments()[0].result.failure is FailureKind.OOM
    assert again._has_failure_column()


def test_throughput_per_hardware_is_the_median_of_successes():
    a, b, c = exp(1, 1.0, "h100"), exp(2, 1.0, "h100"), exp(3, 1.0, "h200")
    for e, steps in ((a, 100.0), (b, 300.0), (c, 50.0)):
        e.result = Result(e.id, e.state, {"val_bpb": 1.0, "num_steps": steps, "training_seconds": 10.0}, e.hardware,
                          1.0, 0.0)
    assert history.throughput_by_hardware([a, b, c], MIN) == {"h100": (20.0, "steps/s"), "h200": (5.0, "steps/s")}
