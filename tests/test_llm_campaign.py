"""A real campaign with proposer=hybrid whose LLM is the anthropic SDK over a mock transport:
LLM candidates enter the waves with their hypotheses (results.tsv, MLflow, hypotheses.md), the
token cost joins the spend, and a hanging LLM never holds dispatch up."""

from __future__ import annotations

import csv
import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from backends.local import LocalBackend
from hybrid.campaign import Campaign
from hybrid.proposers.hybrid import HybridProposer
from hybrid.proposers.llm_fake import FakeMessagesAPI, OneFactorClaude, tool_reply
from hybrid.stopping import Budget
from hybrid.store import Store

ROOT = Path(__file__).resolve().parents[1]


def example_module() -> Any:
    spec = importlib.util.spec_from_file_location("llm_mock_campaign", ROOT / "examples" / "llm_mock_campaign.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(campaign_dir: Path) -> list[dict[str, str]]:
    with open(campaign_dir / "results.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_llm_candidates_enter_the_waves_with_their_hypotheses(tmp_path: Path) -> None:
    campaign = example_module().build_campaign(tmp_path / "runs" / "llm-mock", experiments=8, workers=2,
                                               seconds=0.2)
    summary = campaign.run()
    assert summary.n_experiments == 8
    llm_rows = [r for r in rows(campaign.dir) if r["source"] == "llm"]
    assert len(llm_rows) >= 2, rows(campaign.dir)
    assert all("on the incumbent tests whether" in r["description"] and "Expected: " in r["description"]
               for r in llm_rows)

    # the LLM's calls are durable, and their cost is in the campaign's spend
    store = Store(campaign.dir / "state.sqlite")
    calls = [json.loads(detail) for _, _, detail in store.events("proposer_call")]
    store.close()
    assert calls and all(c["source"] == "llm" and c["ok"] == 1 for c in calls)
    llm_usd = sum(c["cost_usd"] for c in calls)
    assert summary.proposer_usd == llm_usd > 0
    assert summary.spend_usd >= llm_usd and "(LLM $" in (campaign.dir / "summary.txt").read_text()
    assert "improved on the best result before them" in (campaign.dir / "hypotheses.md").read_text()

    # MLflow: each LLM experiment's child run carries its hypothesis; the parent logs every call
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("llm-mock").experiment_id])
    children = {r.data.tags["experiment_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    for row in llm_rows:
        tags = children[row["experiment_id"]].data.tags
        assert tags["source"] == "llm" and tags["rationale"] == row["description"]
    history = client.get_metric_history(parent.info.run_id, "llm.input_tokens")
    assert [m.step for m in history] == list(range(1, len(calls) + 1))
    assert {m.key for m in history} == {"llm.input_tokens"} and parent.data.metrics["llm.accepted"] >= 1


def test_a_hanging_llm_never_holds_dispatch_up(tmp_path: Path) -> None:
    from hybrid.space import SearchSpace
    from hybrid.targets import TargetSpec

    release = threading.Event()

    def hanging(body: dict[str, Any]) -> dict[str, Any]:
        release.wait(30)
        return tool_reply([])

    space = SearchSpace.from_config({"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}})
    (tmp_path / "obj.py").write_text("import json; print('val_bpb:', json.load(open('params.json'))['x'])\n")
    target = TargetSpec.from_config({"name": "t", "command": "{python} obj.py", "workdir": str(tmp_path),
                                     "metric": "val_bpb", "timeout_s": 30})
    fake = FakeMessagesAPI([hanging])
    proposer = HybridProposer(space, target.objective, sources={"sobol": 1.0}, llm_share=0.5,
                              llm={"api_key": "mock-key", "http_client": fake.http_client(), "timeout_s": 60})
    campaign = Campaign(name="hang", dir=tmp_path / "runs" / "hang", space=space, target=target,
                        backend=LocalBackend(workers=2), proposer=proposer, budget=Budget(max_experiments=6),
                        poll_interval_s=0.02)
    try:
        t0 = time.monotonic()
        summary = campaign.run()
        assert time.monotonic() - t0 < 30
    finally:
        release.set()
    assert summary.n_done == 6 and len(fake.requests) == 1  # one call, in flight the whole time
    assert {r["source"] for r in rows(campaign.dir)} == {"baseline", "sobol"}


def test_proposer_llm_alone_waits_for_its_replies_instead_of_stopping(tmp_path: Path) -> None:
    from hybrid.proposers.llm import LLMProposer
    from hybrid.space import SearchSpace
    from hybrid.targets import TargetSpec

    model = OneFactorClaude(seed=1, per_reply=3)

    def slow(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.5)  # longer than an experiment: the campaign must wait, not call the space exhausted
        return model(body)

    space = SearchSpace.from_config({"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
                                     "k": {"type": "int", "low": 1, "high": 9, "default": 5}})
    (tmp_path / "obj.py").write_text("import json; p = json.load(open('params.json')); print('val_bpb:', p['x'] + p['k'])\n")
    target = TargetSpec.from_config({"name": "t", "command": "{python} obj.py", "workdir": str(tmp_path),
                                     "metric": "val_bpb", "timeout_s": 30})
    fake = FakeMessagesAPI([slow])
    proposer = LLMProposer(space, target.objective, api_key="mock-key", http_client=fake.http_client())
    campaign = Campaign(name="alone", dir=tmp_path / "runs" / "alone", space=space, target=target,
                        backend=LocalBackend(workers=2), proposer=proposer, budget=Budget(max_experiments=5),
                        poll_interval_s=0.02)
    summary = campaign.run()
    assert summary.stop_reason == "budget.max_experiments reached (5)"
    assert [r["source"] for r in rows(campaign.dir)] == ["baseline"] + ["llm"] * 4


class _MessagesServer(http.server.ThreadingHTTPServer):
    """A local stand-in for the Messages API (what ANTHROPIC_BASE_URL points the real SDK at)."""

    def __init__(self) -> None:
        self.model = OneFactorClaude(seed=0, per_reply=4)
        self.keys: list[str] = []
        super().__init__(("127.0.0.1", 0), _MessagesHandler)


class _MessagesHandler(http.server.BaseHTTPRequestHandler):
    server: _MessagesServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        # the SDK sends the key as x-api-key (or, in newer versions, as a bearer token)
        self.server.keys.append(self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer "))
        data = json.dumps(self.server.model(body)).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


CLI = ["target=example", "surrogate=none", "budget.max_experiments=6", "backend.workers=2", "tracking=none", "target.env.EXAMPLE_SECONDS=0.2",
       "campaign.progress=plain", "campaign.poll_interval_s=0.05"]


def test_cli_proposer_hybrid_with_a_key_runs_the_llm_and_never_writes_the_key(tmp_path: Path) -> None:
    key = "sk-ant-api03-fake-key-for-the-cli-test"
    server = _MessagesServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "ANTHROPIC_API_KEY": key, "NO_PROXY": "127.0.0.1,localhost",
           "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}"}
    try:
        p = subprocess.run([sys.executable, "-m", "hybrid", "proposer.llm_share=0.5", *CLI], cwd=tmp_path,
                           capture_output=True, text=True, timeout=180, env=env)
    finally:
        server.shutdown()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "llm: call 1: 4 proposed, 4 accepted" in p.stdout and "(LLM $" in p.stdout
    campaign = tmp_path / "runs" / "example-hybrid-s0"
    assert any(r["source"] == "llm" for r in rows(campaign))
    assert server.keys and set(server.keys) == {key}  # the key went to the API...
    for path in campaign.rglob("*"):  # ...and nowhere else
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert key not in p.stdout + p.stderr


def test_cli_proposer_hybrid_without_a_key_says_so_once_and_goes_on(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    p = subprocess.run([sys.executable, "-m", "hybrid", *CLI, "budget.max_experiments=3"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("no ANTHROPIC_API_KEY: running the classical proposers only") == 1
    assert {r["source"] for r in rows(tmp_path / "runs" / "example-hybrid-s0")} - {"baseline"} <= {
        "tpe", "local", "sobol", "grid", "replicate", "confirm"}
