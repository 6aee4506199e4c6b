"""The typed config (hybrid/config.py): enums that still read as strings, the one place each
option is explained, values checked once, and the project's own conf/ searched first."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hybrid import config as schema
from hybrid.assemble import CONF_DIR, compose, compose_node, plain
from hybrid.config import (
    CampaignSection,
    Config,
    Direction,
    Mode,
    OnInterrupt,
    ProgressMode,
    StoppingKind,
)
from hybrid.errors import ConfigError

EXAMPLE = ["target=example", "surrogate=none"]


def test_enums_read_as_the_strings_the_yaml_holds() -> None:
    assert Mode["async"] == "async" and Mode.sync == "sync" and f"{OnInterrupt.detach}" == "detach"
    assert json.dumps([Direction.maximize, ProgressMode.none]) == '["maximize", "none"]'
    assert StoppingKind("cost_aware") is StoppingKind.cost_aware


def test_composed_config_is_typed() -> None:
    cfg = compose([*EXAMPLE, "campaign.mode=sync", "campaign.on_interrupt=detach", "target.direction=maximize",
                   "target.timeout_s=null", "budget.max_hours=1", "campaign.target_hardware=h100"])
    assert isinstance(cfg, Config)
    assert cfg.campaign.mode is Mode.sync and cfg.campaign.on_interrupt is OnInterrupt.detach
    assert cfg.target.direction is Direction.maximize and cfg.target.timeout_s is None
    assert cfg.budget.max_hours == 1.0 and isinstance(cfg.budget.max_hours, float)
    assert cfg.budget.max_experiments == 20 and cfg.budget.max_cost_usd is None
    assert cfg.stopping.name is StoppingKind.cost_aware and cfg.campaign.target_hardware == "h100"
    assert type(cfg.backend).__name__ == "LocalBackendConfig" and cfg.backend.workers == 2
    assert cfg.fleet is None and compose(["fleet=reference"]).fleet.workers[0]["count"] == 13


@pytest.mark.parametrize(("given", "findings"), [("true", True), ("false", False), ("no_gp", "no_gp")])
def test_findings_stay_booleans_or_the_word_from_the_command_line(given: str, findings: bool | str) -> None:
    cfg = compose([*EXAMPLE, f"campaign.findings={given}", f"campaign.prefetch_pool={given.replace('no_gp', 'inline')}"])
    assert cfg.campaign.findings == findings and type(cfg.campaign.findings) is type(findings)
    assert cfg.campaign.prefetch_pool == (findings if findings != "no_gp" else "inline")


def test_values_a_type_cannot_say_are_checked_once_by_the_schema() -> None:
    assert CampaignSection(findings="False", prefetch_pool="TRUE").findings is False  # a quoted boolean
    with pytest.raises(ConfigError, match=r"^campaign.findings: 'maybe' is not one of true, no_gp, false$"):
        CampaignSection(findings="maybe")
    with pytest.raises(ConfigError, match=r"^campaign.prefetch_pool: 'later' is not one of true, inline, false$"):
        CampaignSection(prefetch_pool="later")
    with pytest.raises(ConfigError, match=r"^campaign.validate_top_k: set campaign.target_hardware too"):
        compose([*EXAMPLE, "campaign.validate_top_k=2"])


@pytest.mark.parametrize(("override", "message"), [
    ("campaign.mode=bogus", "campaign.mode: 'bogus' is not one of async, sync"),
    ("target.direction=up", "target.direction: 'up' is not one of minimize, maximize"),
    ("budget.max_experiments=lots", "budget.max_experiments: expected an integer, got 'lots'"),
    ("target.timeout_s=soon", "target.timeout_s: expected a number, got 'soon'"),
    ("tracking.name=wandb", "tracking.name: 'wandb' is not one of mlflow, none"),
])
def test_a_value_of_the_wrong_type_is_a_config_error_naming_key_and_allowed_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        compose([*EXAMPLE, override])
    assert str(err.value) == message


@pytest.mark.parametrize(("override", "message"), [
    ("+budget.max_experimnets=1", r"^budget.max_experimnets: unknown key; did you mean max_experiments\? "
                                  r"allowed: max_experiments, max_hours, max_cost_usd$"),
    ("+target.timeout=5", r"^target.timeout: unknown key; did you mean timeout_s\?"),
    ("+stopping.patiense=2", r"^stopping.patiense: unknown key; did you mean patience\?"),
    ("budget.max_experimnets=1", r"^budget.max_experimnets: unknown key; did you mean max_experiments\?"),
])
def test_a_key_no_schema_has_is_named_with_the_ones_it_has(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose([*EXAMPLE, override])


def test_free_form_mappings_still_take_any_key() -> None:
    cfg = compose([*EXAMPLE, "+target.env.HF_HOME=/data", "+space.params.wd={type:float,low:0,high:0.3}",
                   "backend=skypilot", "+backend.resources.use_spot=true", "fleet=reference"])
    assert cfg.target.env["HF_HOME"] == "/data" and "wd" in cfg.space.params
    assert cfg.backend.resources == {"use_spot": True} and cfg.fleet.workers[0]["hardware"] == "h100"


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", ""])
def test_a_campaign_name_is_one_directory_name(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^campaign.name: {re.escape(repr(name))} must be one directory name"):
        CampaignSection(name=name)


def test_the_recorded_config_is_the_plain_data_hydra_composed() -> None:
    """What the store and MLflow record (Campaign's config=) did not change with the types."""
    overrides = [*EXAMPLE, "proposer=hybrid", "backend=slurm", "fleet=reference", "campaign.findings=no_gp"]
    composed = OmegaConf.to_container(compose_node(overrides), resolve=True)
    recorded = plain(compose(overrides))
    assert recorded == composed
    assert json.loads(json.dumps(recorded)) == recorded


def test_importing_the_schemas_imports_no_hydra() -> None:
    code = "import sys, hybrid.config; print(sorted(m for m in sys.modules if m.split('.')[0] == 'hydra'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _undocumented(cls: type) -> set[str]:
    """Fields declared in ``cls``'s own body with no comment right above them (a run of fields
    under one comment shares it, e.g. ``hardware`` and ``hourly_usd``)."""
    lines = Path(inspect.getsourcefile(schema)).read_text().splitlines()
    (node,) = [n for n in ast.parse("\n".join(lines)).body if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    missing, documented = set(), False
    previous_end = node.lineno
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            above = lines[stmt.lineno - 2].strip()
            documented = above.startswith("#") or (documented and stmt.lineno - 1 == previous_end)
            if not documented:
                missing.add(stmt.target.id)
        previous_end = stmt.end_lineno or stmt.lineno
    return missing


@pytest.mark.parametrize("cls", [c for _, c in schema.SCHEMAS] + [schema.BudgetConfig, schema.CampaignSection,
                                                                  schema.SpaceConfig])
def test_every_option_is_explained_in_its_schema(cls: type) -> None:
    obvious = {"_target_", "name"} if cls.__mro__[1] is not object else set()  # explained in the base
    assert _undocumented(cls) - obvious == set()


@pytest.mark.parametrize(("yaml", "cls"), [
    ("backend/local.yaml", schema.LocalBackendConfig), ("backend/slurm.yaml", schema.SlurmBackendConfig),
    ("backend/skypilot.yaml", schema.SkyPilotBackendConfig), ("stopping/cost_aware.yaml", schema.StoppingConfig),
    ("tracking/mlflow.yaml", schema.TrackingConfig),
])
def test_yaml_holds_every_value_and_no_second_explanation(yaml: str, cls: type) -> None:
    path = CONF_DIR / yaml
    assert set(OmegaConf.load(path)) - {"defaults"} == {f.name for f in dataclasses.fields(cls)}
    comments = [ln for ln in path.read_text().splitlines()[1:] if "#" in ln]
    assert comments == [], f"{yaml}: options are explained in hybrid/config.py"


def test_the_projects_own_conf_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    (conf / "space").mkdir(parents=True)
    (conf / "target").mkdir()
    (conf / "space" / "example.yaml").write_text("params:\n  lr: {type: float, low: 0.001, high: 0.1}\n")
    (conf / "space" / "mine.yaml").write_text("params:\n  depth: {type: int, low: 2, high: 16}\n")
    (conf / "target" / "mine.yaml").write_text("defaults: [/target_schema]\nname: mine\ncommand: python train.py\n")
    (conf / "config.yaml").write_text("defaults: [someone_elses_app]\n")  # not hybrid's main config
    monkeypatch.chdir(tmp_path)
    assert set(compose(EXAMPLE).space.params) == {"lr"}  # the project's example.yaml wins
    cfg = compose(["target=mine", "space=mine", "surrogate=none"])
    assert set(cfg.space.params) == {"depth"} and cfg.target.command == "python train.py"
    assert cfg.campaign.name == "mine-hybrid-s0"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"^space=mine: no such option"):
        compose([*EXAMPLE, "space=mine"])  # elsewhere, it is not found
