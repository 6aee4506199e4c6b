"""A campaign mirrored into a real ``mlflow server``, checked through the server's REST API.

What the MLflow UI shows comes from these endpoints (experiments/get-by-name, runs/search,
metrics/get-history, artifacts/list, get-artifact): one parent run per campaign with its summary
and stop reason, one child run per experiment with the params, metrics and tags of results.tsv,
and the campaign's report files as artifacts. A resume of the finished campaign re-finalizes it
without duplicating any run. The server is started once for the module (tests/mlflow_server.py).
"""

from __future__ import annotations

import getpass
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mlflow_server import (
    MLflowServer,
    metrics,
    module_server,
    params,
    parent_and_children,
    results_tsv,
    tags,
    tsv_params,
)

NAME = "rest-sobol"
N_EXPERIMENTS = 5
ARGS = ["proposer=sobol", f"budget.max_experiments={N_EXPERIMENTS}", "backend.workers=2"]
STOP_REASON = f"budget.max_experiments reached ({N_EXPERIMENTS})"
# the parent run's artifacts: the report files and the plots
EXPECTED_ARTIFACTS = ("results.tsv", "summary.txt", "findings.md", "plots/progress.png", "plots/effects.png")
# the child run's tags that mirror a results.tsv column of the same name
TSV_TAGS = ("wave", "hardware", "source", "status")


@dataclass
class Mirrored:
    dir: Path  # the campaign dir
    stdout: str
    experiment: dict[str, Any]
    parent: dict[str, Any]
    children: list[dict[str, Any]]
    tsv: dict[str, dict[str, str]]  # experiment_id -> results.tsv row


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    yield from module_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def mirrored(server: MLflowServer) -> Mirrored:
    p = server.run_campaign(NAME, ARGS)
    assert f"stopped: {STOP_REASON}" in p.stdout, p.stdout
    assert "TrackingWarning" not in p.stderr, p.stderr  # nothing failed to mirror
    experiment = server.experiment(NAME)
    parents, children = parent_and_children(server.search_runs(experiment["experiment_id"]))
    assert len(parents) == 1, [r["info"]["run_name"] for r in parents]
    return Mirrored(server.root / "runs" / NAME, p.stdout, experiment, parents[0], children,
                    results_tsv(server.root / "runs" / NAME))


def test_the_campaign_is_an_mlflow_experiment_found_by_name(server: MLflowServer, mirrored: Mirrored) -> None:
    exp = mirrored.experiment
    assert exp["name"] == NAME and exp["lifecycle_stage"] == "active"
    # an http(s) tracking URI leaves the artifact root to the server: proxied, served by it
    assert exp["artifact_location"].startswith("mlflow-artifacts:"), exp


def test_one_parent_run_and_one_child_run_per_experiment(mirrored: Mirrored) -> None:
    parent = mirrored.parent
    assert parent["info"]["run_name"] == NAME
    assert parent["info"]["status"] == "FINISHED"
    assert len(mirrored.tsv) == N_EXPERIMENTS
    assert [r["info"]["run_name"] for r in mirrored.children] == sorted(mirrored.tsv)
    for child in mirrored.children:
        assert tags(child)["mlflow.parentRunId"] == parent["info"]["run_id"]
        assert tags(child)["experiment_id"] == child["info"]["run_name"]
        assert child["info"]["status"] == "FINISHED"
        assert child["info"]["end_time"] >= child["info"]["start_time"]


def test_child_runs_carry_the_params_metrics_and_tags_of_results_tsv(mirrored: Mirrored) -> None:
    for child in mirrored.children:
        row = mirrored.tsv[child["info"]["run_name"]]
        assert params(child) == tsv_params(row)
        m = metrics(child)
        assert math.isclose(m["val_bpb"], float(row["val_bpb"]), abs_tol=5e-7), (m, row)  # tsv: 6 decimals
        assert m["duration_s"] > 0 and "cost_usd" in m
        t = tags(child)
        assert {k: t[k] for k in TSV_TAGS} == {k: row[k] for k in TSV_TAGS}
        assert t["hybrid.campaign"] == NAME
        assert t["mlflow.runName"] == child["info"]["run_name"]
        assert t["mlflow.note.content"] == row["description"]  # the run's description in the UI
        assert t["mlflow.user"] == getpass.getuser() and t["mlflow.source.name"] == "hybrid"  # UI: User, Source


def test_parent_run_has_the_summary_the_stop_reason_and_the_config(server: MLflowServer, mirrored: Mirrored) -> None:
    parent = mirrored.parent
    values = [float(row["val_bpb"]) for row in mirrored.tsv.values()]
    best_id = min(mirrored.tsv, key=lambda e: float(mirrored.tsv[e]["val_bpb"]))
    m, t, p = metrics(parent), tags(parent), params(parent)
    assert m["n_experiments"] == N_EXPERIMENTS and m["n_done"] == N_EXPERIMENTS and m["n_failed"] == 0
    assert math.isclose(m["best_val_bpb"], min(values), abs_tol=5e-7)
    # the baseline is the mean of its runs (it runs twice: campaign.replicates=1), the answer the recommendation
    base = [float(r["val_bpb"]) for r in mirrored.tsv.values() if r["params"] == mirrored.tsv["e0001"]["params"]]
    assert len(base) >= 2 and math.isclose(m["baseline_val_bpb"], sum(base) / len(base), abs_tol=5e-7)
    rec = t["recommended_experiments"].split(",")
    assert m["recommended_n"] == len(rec) >= 2 and m["recommended_confirmed"] == 1
    assert math.isclose(m["recommended_val_bpb"], sum(float(mirrored.tsv[e]["val_bpb"]) for e in rec) / len(rec),
                        abs_tol=5e-7)
    assert m["noise_sd_cpu"] > 0
    assert "improvement_pct" in m and "spend_usd" in m and "elapsed_s" in m
    assert t["stop_reason"] == STOP_REASON
    assert t["status"] == "finished"
    assert t["best_experiment"] == best_id
    assert t["mlflow.user"] == getpass.getuser() and t["mlflow.source.name"] == "hybrid"
    assert (t["hybrid.campaign"], t["hybrid.campaign_dir"]) == (NAME, str(mirrored.dir))
    assert (t["hybrid.objective.metric"], t["hybrid.objective.direction"]) == ("val_bpb", "minimize")
    # the resolved config, flattened
    assert p["budget.max_experiments"] == str(N_EXPERIMENTS)
    assert p["proposer.name"] == "sobol"
    assert p["tracking.uri"] == server.url
    # the best-so-far curve on the campaign run: one point per update, step = experiments finished
    history = server.get("metrics/get-history", run_id=parent["info"]["run_id"], metric_key="best_val_bpb")
    points = sorted(history["metrics"], key=lambda x: (x["step"], x["timestamp"]))
    assert points and points[-1]["step"] == N_EXPERIMENTS
    assert math.isclose(points[-1]["value"], min(values), abs_tol=5e-7)
    assert all(a["value"] >= b["value"] for a, b in itertools.pairwise(points))


def test_report_files_and_log_tails_are_served_as_artifacts(server: MLflowServer, mirrored: Mirrored) -> None:
    parent_id = mirrored.parent["info"]["run_id"]
    listed = server.artifacts(parent_id)
    missing = [a for a in EXPECTED_ARTIFACTS if a not in listed]
    assert not missing, f"artifacts {missing} missing from {listed}"
    for name in EXPECTED_ARTIFACTS:
        assert server.download(parent_id, name) == (mirrored.dir / name).read_bytes(), name
    # the same bytes through the artifact proxy that MLflow clients download from
    root = mirrored.parent["info"]["artifact_uri"].removeprefix("mlflow-artifacts:").lstrip("/")
    r = server.http.get(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{root}/summary.txt", timeout=30)
    assert r.status_code == 200 and r.content == (mirrored.dir / "summary.txt").read_bytes()
    assert f"stopped: {STOP_REASON}" in r.text
    for child in mirrored.children:
        run_id = child["info"]["run_id"]
        assert server.artifacts(run_id) == ["log_tail.txt"]
        assert b"val_bpb:" in server.download(run_id, "log_tail.txt")


def test_resuming_the_finished_campaign_refinalizes_without_duplicating_runs(
    server: MLflowServer, mirrored: Mirrored
) -> None:
    exp_id = mirrored.experiment["experiment_id"]
    before = server.search_runs(exp_id)
    p = server.run_campaign(NAME, ARGS)  # the same command again
    assert "resumed campaign" in p.stdout and f"stopped: {STOP_REASON}" in p.stdout, p.stdout
    assert "TrackingWarning" not in p.stderr, p.stderr
    after = server.search_runs(exp_id)  # deleted runs included: nothing was redone either
    assert sorted(r["info"]["run_id"] for r in after) == sorted(r["info"]["run_id"] for r in before)
    parents, children = parent_and_children(after)
    assert [r["info"]["run_id"] for r in parents] == [mirrored.parent["info"]["run_id"]]
    assert [r["info"]["run_id"] for r in children] == [r["info"]["run_id"] for r in mirrored.children]
    parent = parents[0]
    assert parent["info"]["status"] == "FINISHED"
    assert parent["info"]["end_time"] >= mirrored.parent["info"]["end_time"]
    assert metrics(parent)["n_experiments"] == N_EXPERIMENTS
    assert tags(parent)["stop_reason"] == STOP_REASON
    assert [metrics(c)["val_bpb"] for c in children] == [metrics(c)["val_bpb"] for c in mirrored.children]
    assert all(a in server.artifacts(parent["info"]["run_id"]) for a in EXPECTED_ARTIFACTS)
