"""Secrets: which names look secret, the one scrubber for everything that leaves an experiment
(the store's log tails, MLflow, the LLM prompt), the environment an experiment inherits, and the
campaign's files at rest (readable by the user only).

The end-to-end case is the one a hostile test found: a target that prints its environment, with
``MY_DB_PASSWORD=hunter2`` in the orchestrator's environment and ``target.env.HF_TOKEN``.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from backends.base import Finished, JobState, Worker
from backends.local import LocalBackend
from hybrid.campaign import Campaign
from hybrid.proposers.llm_context import PromptInputs, build_prompt, tool_definition
from hybrid.proposers.sobol import SobolProposer
from hybrid.secrets import (
    REDACTED,
    experiment_environ,
    is_orchestrator_credential,
    is_secret,
    redact_nested,
    scrub,
)
from hybrid.space import SearchSpace
from hybrid.stopping import Budget
from hybrid.store import Store
from hybrid.targets import TargetSpec, check_params, to_result
from hybrid.tracking import MLflowTracker
from hybrid.types import Objective

OBJ = Objective("val_bpb", "minimize")


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a plain create gives 0644: what the modes are checked against."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["HF_TOKEN", "MY_DB_PASSWORD", "ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "apiKey",
                                  "x-api-key", "db.password", "GITHUB_TOKEN2", "AUTHTOKEN", "clientSecret", "PASSWD",
                                  "oauth_token", "Authorization", "credentials"])
def test_secret_names(name: str) -> None:
    assert is_secret(name)


@pytest.mark.parametrize("name", ["tokens", "eval_tokens", "batch_tokens", "TOKENIZERS_PARALLELISM", "PWD",
                                  "OLDPWD", "author", "monkey", "tokenizer", "val_bpb", "PATH", "keyboard"])
def test_names_that_only_contain_a_secret_word_are_not_secret(name: str) -> None:
    assert not is_secret(name)


# ---- the scrubber --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("MY_DB_PASSWORD=hunter2", f"MY_DB_PASSWORD={REDACTED}"),
        ("export HF_TOKEN='hf_abc' OMP_NUM_THREADS=4", f"export HF_TOKEN='{REDACTED}' OMP_NUM_THREADS=4"),
        ("password: correct-horse", f"password: {REDACTED}"),
        ("{'api_key': 'sk-1', \"token\": \"a b\", 'depth': 4}",
         f"{{'api_key': '{REDACTED}', \"token\": \"{REDACTED}\", 'depth': 4}}"),
        ("train --api-key abc --max-tokens 100 --token=xyz",
         f"train --api-key {REDACTED} --max-tokens 100 --token={REDACTED}"),
        ("Authorization: Bearer abcdefgh12345", f"Authorization: Bearer {REDACTED}"),
        ("Authorization: Basic YWxpY2U6cGFzcw==", f"Authorization: Basic {REDACTED}"),
        ("https://alice:pa55word@mlflow.example.com", f"https://alice:{REDACTED}@mlflow.example.com"),
        ("GET /data?access_token=abc&page=2", f"GET /data?access_token={REDACTED}&page=2"),
        # numbers and flags after a secret-looking word are settings, not secrets
        ("tokens: 32768 eval_tokens=32768 token_budget: 1000 num_key_value_heads=8 use_auth: true",
         "tokens: 32768 eval_tokens=32768 token_budget: 1000 num_key_value_heads=8 use_auth: true"),
        ("TOKENIZERS_PARALLELISM=false PWD=/work author: Bob", "TOKENIZERS_PARALLELISM=false PWD=/work author: Bob"),
        ("password:\nval_bpb: 0.99", "password:\nval_bpb: 0.99"),  # a label never eats the next line
    ],
)
def test_scrub_redacts_labelled_secrets_and_keeps_their_names(text: str, scrubbed: str) -> None:
    assert scrub(text) == scrubbed


def test_the_gpt_targets_own_output_is_left_alone() -> None:
    from model.train import format_results, load_config

    metrics = {"val_bpb": 1.234567, "training_seconds": 15.0, "total_seconds": 21.3, "peak_vram_mb": 0.0,
               "mfu_percent": 0.5, "total_tokens_M": 1.6, "num_steps": 390, "num_params_M": 0.8, "depth": 4}
    log = "\n".join([
        f"config: {asdict(load_config([]))}",
        "prepare: tokenizer: BPE with 2048 tokens trained on 1.0M chars",
        "prepare: tokens: 1,234,567 train, 65,536 val (uint16)",
        "step 00390 | loss 3.2100 | 38 ms | 107,789 tok/s | mfu 0.5%",
        format_results(metrics),
    ])
    assert scrub(log) == log


def test_secret_valued_environment_variables_are_redacted_from_4_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_DB_PASSWORD", "hunter2")  # 7 characters: the old 8-character floor let it through
    monkeypatch.setenv("MY_PIN_TOKEN", "1234")  # a short number is everywhere in a log: not looked for
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # not a secret name
    text = "connecting as bob with hunter2, then (hunter2); hunter22 is another word; step 1234: false"
    assert scrub(text) == (f"connecting as bob with {REDACTED}, then ({REDACTED}); hunter22 is another word; "
                           "step 1234: false")


def test_target_env_secrets_are_scrubbed_from_a_result_with_its_metrics_intact(tmp_path: Path) -> None:
    target = TargetSpec.from_config({"command": "train", "workdir": str(tmp_path),
                                     "env": {"HF_TOKEN": "hf_from_target_env", "OMP_NUM_THREADS": "4"}})
    assert target.secret_values == ("hf_from_target_env",)
    log = "downloading with hf_from_target_env\nthreads 4\nval_bpb: 0.98\n"
    finished = Finished("1", "e0001", JobState.LOST, None, log, 0.0, 10.0, Worker("w0", "cpu"),
                        reason="node lost while hf_from_target_env was in use")
    result = to_result(finished, OBJ, "cpu", 0.0, secrets=target.secret_values)
    assert result.log_tail == f"downloading with {REDACTED}\nthreads 4\nval_bpb: 0.98"
    assert result.reason == f"node lost while {REDACTED} was in use"
    assert result.metrics == {"val_bpb": 0.98}


def test_a_rejecting_check_command_does_not_echo_a_target_env_secret(tmp_path: Path) -> None:
    from hybrid.errors import ConfigError

    target = TargetSpec.from_config({
        "command": "train", "workdir": str(tmp_path), "env": {"WANDB_API_KEY": "wandb-live-12345"},
        "check_command": f"{sys.executable} -c \"import os, sys; sys.exit('bad key ' + os.environ['WANDB_API_KEY'])\"",
    })
    with pytest.raises(ConfigError) as err:
        check_params(target, {})
    assert "wandb-live-12345" not in str(err.value) and f"bad key {REDACTED}" in str(err.value)


# ---- configs written down --------------------------------------------------------------------------
def test_redact_nested_keeps_names_and_structure_and_scrubs_strings() -> None:
    config = {
        "target": {"command": "python train.py --api-key sk-live-1", "env": {"HF_TOKEN": "hf_1", "OMP": "4"}},
        "db": {"password": 1234, "hosts": ["a", "b"], "ssl": True},
        "api_tokens": ["tok-aaaa", "tok-bbbb"],
        "space": {"params": {"num_key_value_heads": {"type": "int", "low": 1, "high": 8}}},
        "tracking": {"uri": "http://alice:pa55word@mlflow.example.com"},
    }
    before = repr(config)
    assert redact_nested(config) == {
        "target": {"command": f"python train.py --api-key {REDACTED}", "env": {"HF_TOKEN": REDACTED, "OMP": "4"}},
        "db": {"password": REDACTED, "hosts": ["a", "b"], "ssl": True},
        "api_tokens": ["tok-aaaa", "tok-bbbb"],  # `tokens` is not a secret word (batch_tokens...)
        "space": {"params": {"num_key_value_heads": {"type": "int", "low": 1, "high": 8}}},
        "tracking": {"uri": f"http://alice:{REDACTED}@mlflow.example.com"},
    }
    assert redact_nested({"secrets": ["s3cr3t-a", "s3cr3t-b"]}) == {"secrets": [REDACTED, REDACTED]}
    assert repr(config) == before


# ---- the experiment's environment ------------------------------------------------------------------
def test_the_experiment_environment_is_the_orchestrators_less_its_credentials() -> None:
    environ = {"ANTHROPIC_API_KEY": "a", "ANTHROPIC_AUTH_TOKEN": "b", "ANTHROPIC_BASE_URL": "c",
               "MLFLOW_TRACKING_TOKEN": "d", "MLFLOW_TRACKING_PASSWORD": "e", "MLFLOW_TRACKING_USERNAME": "f",
               "SKYPILOT_SERVICE_ACCOUNT_TOKEN": "g",
               "HF_TOKEN": "h", "WANDB_API_KEY": "i", "MLFLOW_TRACKING_URI": "j", "PATH": "/bin"}
    assert experiment_environ(environ) == {"HF_TOKEN": "h", "WANDB_API_KEY": "i", "MLFLOW_TRACKING_URI": "j",
                                           "PATH": "/bin"}
    assert is_orchestrator_credential("ANTHROPIC_API_KEY") and not is_orchestrator_credential("HF_TOKEN")


# ---- files at rest -------------------------------------------------------------------------------------
def test_the_store_and_its_wal_files_are_readable_by_the_user_only(tmp_path: Path, umask_022: None) -> None:
    store = Store(tmp_path / "c" / "state.sqlite")
    store.set_meta("note", "written")
    files = sorted(tmp_path.glob("c/state.sqlite*"))
    assert [p.name for p in files] == ["state.sqlite", "state.sqlite-shm", "state.sqlite-wal"]
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    store.close()


# ---- end to end: a target that prints its environment ------------------------------------------------------
LEAKY = textwrap.dedent(
    """
    import os, sys
    for name, value in sorted(os.environ.items()):
        print(f"{name}={value}")
    print("anthropic key seen:", os.environ.get("ANTHROPIC_API_KEY", "absent"))
    print("logging in with", os.environ["MY_DB_PASSWORD"])
    print("downloading with", os.environ["HF_TOKEN"])  # a target.env secret printed bare
    print(f"HF_TOKEN={os.environ['HF_TOKEN']}")
    print(f"MY_DB_PASSWORD={os.environ['MY_DB_PASSWORD']}")
    sys.exit("RuntimeError: database login refused")
    """
)


def test_a_target_printing_its_environment_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None
) -> None:
    monkeypatch.setenv("MY_DB_PASSWORD", "hunter2")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-orchestrator-only")
    workdir = tmp_path / "target"
    workdir.mkdir()
    (workdir / "leaky.py").write_text(LEAKY)
    target = TargetSpec.from_config({"name": "leaky", "command": "{python} leaky.py", "workdir": str(workdir),
                                     "env": {"HF_TOKEN": "hf_target_env_secret"}, "timeout_s": 60})
    space = SearchSpace.from_config({"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}})
    root = tmp_path / "runs"
    tracker = MLflowTracker()
    Campaign(name="leaky", dir=root / "leaky", space=space, target=target, backend=LocalBackend(workers=1),
             proposer=SobolProposer(space, OBJ, seed=0), budget=Budget(max_experiments=1), tracker=tracker,
             poll_interval_s=0.02, findings=False).run()

    run_log = next((root / "leaky" / "experiments").glob("*/run.log")).read_text()
    assert "anthropic key seen: absent" in run_log  # the orchestrator's key never reached it
    assert "hf_target_env_secret" in run_log  # the experiment's own log is the user's, as printed

    store = Store.open_read_only(root / "leaky" / "state.sqlite")
    [exp] = store.experiments()
    store.close()
    assert exp.result is not None and "anthropic key seen: absent" in exp.result.log_tail
    prompt = build_prompt(PromptInputs(space, OBJ, "find the optimum", [exp]), tool_definition(space, 4), 50_000)
    assert exp.id in prompt.user
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("leaky").experiment_id],
                               filter_string=f"tags.experiment_id = '{exp.id}'")
    mirrored = Path(client.download_artifacts(run.info.run_id, "log_tail.txt", str(tmp_path))).read_text()
    for where, text in (("the store", exp.result.log_tail), ("MLflow", mirrored), ("the LLM prompt", prompt.user)):
        assert "hunter2" not in text and "hf_target_env_secret" not in text, where
    assert f"MY_DB_PASSWORD={REDACTED}" in exp.result.log_tail and f"HF_TOKEN={REDACTED}" in mirrored
    assert f"downloading with {REDACTED}" in exp.result.log_tail
    assert f"logging in with {REDACTED}" in exp.result.log_tail and f"MY_DB_PASSWORD={REDACTED}" in prompt.user

    # at rest: readable by the user only
    assert mode(root / "leaky" / "state.sqlite") == 0o600
    assert mode(root / "mlflow.db") == 0o600 and mode(root / "mlartifacts") == 0o700
