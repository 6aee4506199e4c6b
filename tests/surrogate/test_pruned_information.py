"""A pruned run is partial information for every model: the GP learns its bound, TPE sees a pruned
trial, the feasibility model does not count it as a failure, and the LLM reads that it was stopped
early with what its curve predicted (never a success, never a crash)."""

from __future__ import annotations

from hybrid.proposers.llm_context import PromptInputs, build_prompt, tool_definition
from hybrid.proposers.optuna import OptunaProposer
from hybrid.types import PRUNED_BOUND, ExperimentState
from surrogate.feasibility import feasibility_data
from surrogate.gp import GPSurrogate, OneHotEncoder, training_data

from ..proposers.suite import MINIMIZE, cube_space
from .test_gp import history_of, run


def pruned(seq: int, params: dict, bound: float, printed: float | None = None):
    metrics = {PRUNED_BOUND: bound}
    if printed is not None:
        metrics["val_bpb"] = printed  # a metric it printed while it was killed: not a result
    return run(seq, params, state=ExperimentState.PRUNED, metrics=metrics,
               reason="pruned at 40% of its budget ...", duration_s=20.0)


def test_the_gp_learns_a_pruned_run_at_its_bound_and_never_a_crash():
    space = cube_space(2)
    enc = OneHotEncoder(space)
    hist = [run(1, {"x0": 0.1, "x1": 0.1}, 0.5), pruned(2, {"x0": 0.9, "x1": 0.9}, 2.5, printed=0.01),
            run(3, {"x0": 0.5, "x1": 0.5}, 0.01, state=ExperimentState.CRASHED, reason="exit code 1")]
    data = training_data(hist, MINIMIZE, enc)
    assert data.y.tolist() == [-0.5, -2.5]  # the bound, not the 0.01 it printed; the crash is left out


def test_a_region_of_pruned_runs_looks_bad_to_the_gp():
    space = cube_space(2)
    grid = [{"x0": a, "x1": b} for a in (0.1, 0.3, 0.5) for b in (0.1, 0.3, 0.5)]
    hist = history_of(grid)
    corner = [{"x0": 0.9, "x1": 0.9}, {"x0": 0.95, "x1": 0.85}, {"x0": 0.85, "x1": 0.95}]
    with_pruned = hist + [pruned(20 + i, c, 3.0) for i, c in enumerate(corner)]
    probe = [{"x0": 0.9, "x1": 0.9}]

    def mean_at(h):
        import torch

        fitted = GPSurrogate(space, MINIMIZE, seed=0).update(h)
        with torch.no_grad():
            return float(fitted.model.posterior(torch.tensor(fitted.inputs(probe))).mean.squeeze())

    assert mean_at(with_pruned) < mean_at(hist)  # y is maximized: lower is worse


def test_the_feasibility_model_does_not_count_a_pruned_run_as_a_failure():
    space = cube_space(2)
    enc = OneHotEncoder(space)
    hist = [run(1, {"x0": 0.1, "x1": 0.1}, 0.5), pruned(2, {"x0": 0.9, "x1": 0.9}, 2.5),
            run(3, {"x0": 0.5, "x1": 0.5}, None, state=ExperimentState.CRASHED, reason="exit code 1")]
    data = feasibility_data(hist, enc.encode_many)
    assert data["success"].tolist() == [True, False]  # the crash only: a pruned run is no evidence of failure
    assert data["duration_s"].tolist() == [60.0, 60.0]  # nor of a full run's duration


def test_tpe_sees_a_pruned_trial_with_its_bound():
    from optuna.trial import TrialState

    space = cube_space(2)
    p = OptunaProposer(space, MINIMIZE, seed=0, sampler="tpe", n_startup_trials=2)
    hist = [run(1, {"x0": 0.1, "x1": 0.1}, 0.5), pruned(2, {"x0": 0.9, "x1": 0.9}, 2.5)]
    trials = p._trials(hist, p._distributions())
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[1].intermediate_values == {0: 2.5}
    assert len(p.propose(hist, 3)) == 3


def test_the_llm_reads_a_pruned_run_as_stopped_early_with_its_prediction():
    space = cube_space(2)
    hist = [run(1, {"x0": 0.1, "x1": 0.1}, 0.5), pruned(2, {"x0": 0.9, "x1": 0.9}, 2.5)]
    prompt = build_prompt(PromptInputs(space, MINIMIZE, "find the optimum", hist), tool_definition(space, 4), 50_000)
    assert "e0002 pruned (its curve predicted ≥ 2.500000)" in prompt.user
    assert "crash" not in prompt.user
