"""The MLflow mirror, against a real MLflow SQLite store (no mocks).

One store is shared by the module (a new MLflow SQLite db takes seconds to create its tables); each
test uses its own campaign name, hence its own MLflow experiment.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from omegaconf import OmegaConf

from hybrid.config import TrackingConfig
from hybrid.errors import ConfigError
from hybrid.reports import report_command
from hybrid.store import Store
from hybrid.tracking import (
    REDACTED,
    CampaignInfo,
    MLflowTracker,
    NullTracker,
    Tracker,
    TrackingWarning,
    make_tracker,
)
from hybrid.types import Candidate, Experiment, ExperimentState, Objective, Result
from tests.variant_campaign import write_variant_campaign

CONFIG: dict[str, Any] = {
    "target": {
        "name": "gpt",
        "command": "HF_TOKEN=hf_abc123 {python} -m model.train --api-key sk-live-999",
        "env": {"ANTHROPIC_API_KEY": "sk-ant-secret", "OMP_NUM_THREADS": "4"},
    },
    "backend": {"name": "local", "workers": [{"name": "w0", "hardware": "h100", "hourly_usd": 2.5}]},
    "tracking": {"name": "mlflow", "uri": "http://alice:pa55word@mlflow.example.com"},
    "budget": {"max_experiments": 20, "max_hours": None},
    "db": {"password": "hunter2", "nested": {"token": "tok-1", "host": "db.local"}},
}
SECRETS = ("hf_abc123", "sk-live-999", "sk-ant-secret", "pa55word", "hunter2", "tok-1")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent of the campaign dirs: the default MLflow store lives here."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def client(root: Path) -> MlflowClient:
    # creates the shared store once for the whole module
    MLflowTracker().start(CampaignInfo("warmup", root / "warmup", {}, Objective()))
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def campaign(root: Path, name: str, parent_run_id: str | None = None, **config: Any) -> CampaignInfo:
    return CampaignInfo(name, root / name, config or CONFIG, Objective("val_bpb", "minimize"), parent_run_id)


def finished(
    exp_id: str,
    state: ExperimentState = ExperimentState.DONE,
    metrics: dict[str, float] | None = None,
    reason: str = "",
    started: float = 1_700_000_000.0,
) -> tuple[Experiment, Result]:
    params = {"lr": 0.02, "depth": 8, "act": "relu", "batch_tokens": 524288}
    cand = Candidate(params, "llm", "deeper nets help at this budget")
    exp = Experiment(exp_id, cand, "w0", "h100", wave=2, state=state, job_id="1234", started=started)
    metrics = {"val_bpb": 0.9912, "peak_vram_mb": 45060.2} if metrics is None else metrics
    log = f"step 100 | loss 3.2\nval_bpb: {metrics.get('val_bpb')}\n"
    return exp, Result(exp_id, state, metrics, "h100", 300.0, 0.21, log, reason)


def children(client: MlflowClient, parent: str) -> list[Run]:
    experiment_id = client.get_run(parent).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def test_parent_run_has_config_params_with_secrets_redacted(root: Path, client: MlflowClient) -> None:
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-parent"))
    assert parent is not None
    run = client.get_run(parent)
    assert run.info.run_name == "c-parent" and run.info.status == "RUNNING"
    assert client.get_experiment(run.info.experiment_id).name == "c-parent"
    # the default store: next to the campaign dirs, artifacts included
    assert (root / "mlflow.db").is_file()
    assert client.get_experiment(run.info.experiment_id).artifact_location == (root / "mlartifacts").as_uri()
    params = run.data.params
    assert params["budget.max_experiments"] == "20"
    assert params["budget.max_hours"] == "None"
    assert params["target.env.OMP_NUM_THREADS"] == "4"
    assert params["target.env.ANTHROPIC_API_KEY"] == REDACTED
    assert params["db.password"] == REDACTED
    assert params["db.nested.token"] == REDACTED
    assert params["db.nested.host"] == "db.local"
    assert "{python} -m model.train" in params["target.command"]
    assert "mlflow.example.com" in params["tracking.uri"]
    assert '"hourly_usd": 2.5' in params["backend.workers"]
    everything = " ".join([*params.values(), *run.data.tags.values()])
    for secret in SECRETS:
        assert secret not in everything
    assert run.data.tags["hybrid.campaign"] == "c-parent"
    assert run.data.tags["hybrid.objective.metric"] == "val_bpb"
    assert run.data.tags["hybrid.objective.direction"] == "minimize"


def test_secret_valued_environment_variables_are_never_logged(
    root: Path, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "wandb-0123456789")
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-env", target={"command": "train --logger wandb-0123456789"}))
    assert parent is not None
    assert client.get_run(parent).data.params["target.command"] == f"train --logger {REDACTED}"


def test_child_run_mirrors_the_experiment(root: Path, client: MlflowClient, tmp_path: Path) -> None:
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-child"))
    assert parent is not None
    exp, result = finished("e0003", metrics={"val_bpb": 0.9912, "peak_vram_mb": 45060.2, "bad": float("nan")})
    tracker.log(exp, result)

    (run,) = children(client, parent)
    assert run.info.run_name == "e0003"
    assert run.info.status == "FINISHED"
    assert run.info.start_time == 1_700_000_000_000
    assert run.info.end_time == 1_700_000_300_000
    # hyperparameters are shown as they are, even with a secret-looking name
    assert run.data.params == {"lr": "0.02", "depth": "8", "act": "relu", "batch_tokens": "524288"}
    assert run.data.metrics == {"val_bpb": 0.9912, "peak_vram_mb": 45060.2, "duration_s": 300.0, "cost_usd": 0.21}
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert (tags["wave"], tags["hardware"], tags["source"], tags["status"]) == ("2", "h100", "llm", "done")
    assert (tags["experiment_id"], tags["worker"]) == ("e0003", "w0")
    assert tags["rationale"] == "deeper nets help at this budget"
    assert "reason" not in tags
    assert "variant" not in tags  # the unchanged code
    path = client.download_artifacts(run.info.run_id, "log_tail.txt", str(tmp_path))
    assert Path(path).read_text() == result.log_tail


def test_failed_and_cancelled_experiments_get_mlflow_status_and_reason(root: Path, client: MlflowClient) -> None:
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-failures"))
    assert parent is not None
    rationale = "x" * 10_000
    crashed = finished("e1", ExperimentState.CRASHED, {"num_steps": 12.0}, "out of memory")
    crashed[0].candidate = Candidate({"lr": 0.5}, "sobol", rationale)
    tracker.log(*crashed)
    tracker.log(*finished("e2", ExperimentState.TIMEOUT, {}, "timeout after 900 s"))
    tracker.log(*finished("e3", ExperimentState.CANCELLED, {}, "cancelled by the user"))

    runs = {r.info.run_name: r for r in children(client, parent)}
    assert {k: r.info.status for k, r in runs.items()} == {"e1": "FAILED", "e2": "FAILED", "e3": "KILLED"}
    assert runs["e1"].data.tags["status"] == "crashed"
    assert runs["e1"].data.tags["reason"] == "out of memory"
    assert runs["e1"].data.metrics == {"num_steps": 12.0, "duration_s": 300.0, "cost_usd": 0.21}
    assert 0 < len(runs["e1"].data.tags["rationale"]) < len(rationale)
    assert runs["e2"].data.tags["status"] == "timeout"
    assert runs["e3"].data.tags["reason"] == "cancelled by the user"


def test_logging_an_experiment_again_keeps_one_child_run(root: Path, client: MlflowClient) -> None:
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-idem"))
    exp, result = finished("e0001")
    tracker.log(exp, result)
    tracker.log(exp, result)
    # a resumed campaign (a new process) re-mirrors everything it is not sure about
    again = MLflowTracker()
    assert again.start(campaign(root, "c-idem", parent_run_id=parent)) == parent
    # from a background thread, as the campaign's mirror calls it
    mirror = threading.Thread(target=lambda: [again.log(exp, result), again.log(*finished("e0002"))])
    mirror.start()
    mirror.join()
    assert sorted(r.info.run_name for r in children(client, parent)) == ["e0001", "e0002"]


def test_a_child_run_interrupted_halfway_is_mirrored_again(root: Path, client: MlflowClient) -> None:
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-halfway"))
    assert parent is not None
    experiment_id = client.get_run(parent).info.experiment_id
    # what a kill between create_run and set_terminated leaves behind
    client.create_run(experiment_id, run_name="e7", tags={"mlflow.parentRunId": parent, "experiment_id": "e7"})
    tracker.log(*finished("e7"))
    (run,) = children(client, parent)
    assert run.info.status == "FINISHED" and run.data.metrics["val_bpb"] == 0.9912


def test_resume_reuses_the_parent_run(root: Path, client: MlflowClient) -> None:
    first = MLflowTracker()
    parent = first.start(campaign(root, "c-resume"))
    assert parent is not None
    first.close("interrupted", "interrupted by the user", {"n_finished": 1})
    assert client.get_run(parent).info.status == "KILLED"

    changed = {**CONFIG, "budget": {"max_experiments": 40, "max_hours": 2}}
    second = MLflowTracker()
    assert second.start(campaign(root, "c-resume", parent_run_id=parent, **changed)) == parent
    run = client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.params["budget.max_experiments"] == "20"  # MLflow params are immutable
    assert run.data.tags["hybrid.changed_on_resume"] == "budget.max_experiments, budget.max_hours"
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # a parent run that is gone (e.g. mlflow.db deleted) is replaced by a new one
    other = MLflowTracker().start(campaign(root, "c-resume", parent_run_id="0" * 32))
    assert other is not None and other != parent


def test_update_logs_progress_metrics_by_finished_count(root: Path, client: MlflowClient) -> None:
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-update"))
    assert parent is not None
    tracker.update({"n_finished": 3, "n_done": 2, "best_val_bpb": 1.0, "best_id": "e2", "best_x": None})
    tracker.update({"n_finished": 5, "n_done": 4, "best_val_bpb": 0.98, "best_id": "e5"})
    history = client.get_metric_history(parent, "best_val_bpb")
    assert [(m.step, m.value) for m in history] == [(3, 1.0), (5, 0.98)]
    run = client.get_run(parent)
    assert run.data.metrics["n_done"] == 4
    assert run.data.tags["best_id"] == "e5"


def test_close_logs_artifacts_summary_and_stop_reason(root: Path, client: MlflowClient, tmp_path: Path) -> None:
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-close"))
    assert parent is not None
    report = tmp_path / "results.tsv"
    report.write_text("experiment_id\tstatus\ne0001\tdone\n")
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "progress.png").write_bytes(b"\x89PNG")
    summary = {"n_finished": 8, "spend_usd": 1.5, "best_val_bpb": 0.97}
    stop = "expected gain per USD below 0.001 for 3 decisions"
    tracker.close("finished", stop, summary, [report, plots, tmp_path / "missing.md"])
    tracker.log(*finished("late"))  # after close: nothing, and no error

    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.tags["stop_reason"] == stop and run.data.tags["status"] == "finished"
    assert run.data.metrics["spend_usd"] == 1.5
    assert sorted(a.path for a in client.list_artifacts(parent)) == ["plots", "results.tsv"]
    assert [a.path for a in client.list_artifacts(parent, "plots")] == ["plots/progress.png"]
    got = client.download_artifacts(parent, "results.tsv", str(tmp_path / "dl"))
    assert Path(got).read_text() == report.read_text()
    assert children(client, parent) == []


def test_a_variants_run_is_tagged_and_the_diffs_go_to_the_parent_run_at_close(
    root: Path, client: MlflowClient, tmp_path: Path
) -> None:
    tracker = MLflowTracker()
    info = campaign(root, "c-variants")
    parent = tracker.start(info)
    assert parent is not None
    exp, result = finished("e0002")
    exp.candidate = Candidate(exp.params, "llm", "GELU instead of relu squared", "v3f2a9c1d0b")
    tracker.log(exp, result)
    (run,) = children(client, parent)
    assert run.data.tags["variant"] == "v3f2a9c1d0b"
    # the campaign's diffs, written as it goes; its smoke-test scratch space is not a diff
    diff = "diff --git a/model/gpt.py b/model/gpt.py\n--- a/model/gpt.py\n+++ b/model/gpt.py\n"
    (info.dir / "variants" / ".smoke" / "v3f2a9c1d0b").mkdir(parents=True)
    (info.dir / "variants" / "v3f2a9c1d0b.diff").write_text(diff)
    (info.dir / "findings.md").write_text("# Findings\n")
    tracker.close("finished", "budget reached", {"n_finished": 1}, [info.dir / "findings.md"])
    assert sorted(a.path for a in client.list_artifacts(parent)) == ["findings.md", "variants"]
    assert [a.path for a in client.list_artifacts(parent, "variants")] == ["variants/v3f2a9c1d0b.diff"]
    got = client.download_artifacts(parent, "variants/v3f2a9c1d0b.diff", str(tmp_path))
    assert Path(got).read_text() == diff


def test_hybrid_report_uploads_the_variants_diffs_again(root: Path, client: MlflowClient,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{root / 'mlflow.db'}"  # the module's store (the campaign dir is one level further down)
    c = write_variant_campaign(root / "c-report-variants", "c-report", tracking={"name": "mlflow", "uri": uri})
    parent = MLflowTracker(uri=uri).start(CampaignInfo("c-report", c.dir, {}, Objective()))
    assert parent is not None
    store = Store(c.dir / "state.sqlite")
    store.set_meta("mlflow_parent_run_id", parent)
    store.close()
    report_command({"campaign": {"dir": str(c.dir)}}, make_tracker=make_tracker)
    assert f"uploaded to MLflow run {parent}" in capsys.readouterr().out
    ids = sorted(b.variant.id for b in (c.gelu, c.softcap, c.broken, c.neutral))
    assert sorted(a.path for a in client.list_artifacts(parent, "variants")) == [f"variants/{v}.diff" for v in ids]
    assert "findings.md" in [a.path for a in client.list_artifacts(parent)]


def test_an_explicit_experiment_name_and_sqlite_uri(root: Path, client: MlflowClient, tmp_path: Path) -> None:
    # the campaign dir is elsewhere: the store (and its artifacts) follow the URI, not the campaign
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for name in ("c-explicit-1", "c-explicit-2"):
        tracker = MLflowTracker(uri=uri, experiment="shared")
        assert tracker.start(campaign(tmp_path, name)) is not None
        tracker.log(*finished("e1"))
    exp = client.get_experiment_by_name("shared")
    assert exp is not None and exp.artifact_location == (root / "mlartifacts").as_uri()
    runs = client.search_runs([exp.experiment_id], filter_string="tags.experiment_id = 'e1'")
    assert sorted(r.data.tags["hybrid.campaign"] for r in runs) == ["c-explicit-1", "c-explicit-2"]
    assert not (tmp_path / "mlflow.db").exists()


def test_an_unreachable_server_warns_once_and_never_raises(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker = MLflowTracker(uri="http://127.0.0.1:9")
    t0 = time.monotonic()
    with pytest.warns(TrackingWarning) as caught:
        assert tracker.start(campaign(root, "c-offline")) is None
        for i in range(3):
            tracker.log(*finished(f"e{i}"))
        tracker.update({"n_finished": 3})
        tracker.close("finished", "budget", {}, [root / "mlflow.db"])
    assert time.monotonic() - t0 < 15
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "127.0.0.1:9" in message and "tracking=none" in message


def test_failures_after_start_warn_once_then_mirroring_stops(root: Path, client: MlflowClient) -> None:
    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-breaks"))
    assert parent is not None
    # someone deletes the experiment in the UI: MLflow refuses new runs in it
    client.delete_experiment(client.get_run(parent).info.experiment_id)
    with pytest.warns(TrackingWarning) as caught:
        for i in range(5):
            tracker.log(*finished(f"e{i}"))
        tracker.close("finished", "budget", {})
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "mirroring experiment e0 failed" in messages[0]
    assert "off for the rest of campaign 'c-breaks'" in messages[1]


def test_make_tracker_from_the_config_node() -> None:
    node = OmegaConf.structured(TrackingConfig)
    tracker = make_tracker(node)
    assert isinstance(tracker, MLflowTracker) and tracker.uri is None and tracker.experiment is None
    tracker = make_tracker({"name": "mlflow", "uri": "http://mlflow:5000", "experiment": "gpt"})
    assert isinstance(tracker, MLflowTracker)
    assert (tracker.uri, tracker.experiment) == ("http://mlflow:5000", "gpt")
    none = make_tracker({"name": "none"})
    assert isinstance(none, NullTracker) and isinstance(none, Tracker)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert none.start(CampaignInfo("x", Path("runs/x"), {}, Objective())) is None
        none.log(*finished("e1"))
        none.update({"n_finished": 1})
        none.close("finished", "budget", {})


@pytest.mark.parametrize(
    ("node", "match"),
    [
        ({"name": "wandb"}, r"^tracking\.name: unknown tracker 'wandb'"),
        ({"name": "mlflow", "uri": 5000}, r"^tracking\.uri: expected a string"),
        ({"name": "mlflow", "experiment": ["a"]}, r"^tracking\.experiment: expected a string"),
    ],
)
def test_make_tracker_rejects_bad_config(node: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_tracker(node)


def test_importing_the_module_does_not_import_mlflow() -> None:
    code = "import sys, hybrid.tracking; sys.exit('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_learning_curve_becomes_step_metrics_and_a_pruned_run_is_killed(root: Path, client: MlflowClient) -> None:
    from hybrid.types import ProgressPoint

    tracker = MLflowTracker()
    parent = tracker.start(campaign(root, "c-curve"))
    assert parent is not None
    exp, result = finished("e1", ExperimentState.PRUNED, {}, "pruned at 50%: hopeless")
    exp.curve = [ProgressPoint(0.25, {"train_loss": 3.5}), ProgressPoint(0.5, {"train_loss": 3.4, "lr": 0.02})]
    assert tracker.log(exp, result)
    (run,) = children(client, parent)
    assert run.info.status == "KILLED" and run.data.tags["status"] == "pruned"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(250, 3.5), (500, 3.4)]
