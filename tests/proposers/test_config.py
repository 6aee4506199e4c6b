"""conf/proposer/*.yaml: each builds its proposer the way the CLI does, and documents every field."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hybrid.assemble import register_configs
from hybrid.proposers import (
    GridProposer,
    HybridProposer,
    LocalProposer,
    OptunaProposer,
    Proposer,
    SobolProposer,
)
from hybrid.proposers.llm import LLMProposer

from .suite import MINIMIZE, baseline, mixed_space

CONF = Path(__file__).resolve().parents[2] / "conf"
CLASSES = {
    "sobol": SobolProposer, "optuna": OptunaProposer, "grid": GridProposer, "hybrid": HybridProposer,
    "local": LocalProposer,
}
# constructor arguments that only code passes (tests, scripts), never a YAML file
RUNTIME_ONLY = {"background", "api_key", "http_client", "clock"}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_yaml_builds_a_working_proposer(name: str) -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"proposer={name}"])
    space = mixed_space()
    proposer = instantiate(cfg.proposer, space=space, objective=MINIMIZE, seed=0)
    assert type(proposer) is CLASSES[name] and cfg.proposer.name == name
    cands = proposer.propose([baseline(space)], 4)
    assert len(cands) == 4 and all(space.validate(c.params) == c.params for c in cands)


@pytest.mark.parametrize("name", sorted({**CLASSES, "llm": LLMProposer}))
def test_yaml_exposes_and_comments_every_field(name: str) -> None:
    path = CONF / "proposer" / f"{name}.yaml"
    node = OmegaConf.load(path)
    cls = {**CLASSES, "llm": LLMProposer}[name]
    params = set(inspect.signature(cls).parameters) - {"space", "objective", "seed"} - RUNTIME_ONLY
    # a defaults entry "llm@llm" places another file's node under that key
    included = {str(d).split("@")[1] for d in node.get("defaults", []) if "@" in str(d)}
    assert set(node) - {"_target_", "_partial_", "defaults"} | included == params
    previous = ""
    for line in path.read_text().splitlines():
        key = line.split(":")[0]
        if key in params and key != "name":  # a comment on the line or just above it
            assert "#" in line or previous.startswith("#"), f"{path.name}: {key} has no comment"
        previous = line


def test_overrides_reach_the_constructor() -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["proposer=optuna", "proposer.sampler=random"])
    proposer: Proposer = instantiate(cfg.proposer, space=mixed_space(), objective=MINIMIZE, seed=0)
    assert proposer.name == "random"


def test_a_hybrid_source_is_switched_off_by_a_zero_share() -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["proposer=hybrid", "proposer.sources.tpe=0"])
    space = mixed_space()
    proposer = instantiate(cfg.proposer, space=space, objective=MINIMIZE, seed=0)
    assert {c.source for c in proposer.propose([baseline(space)], 10)} == {"local", "sobol", "grid"}


def test_hybrid_carries_the_llm_settings_and_overrides_reach_them(tmp_path: Path) -> None:
    from hybrid.proposers.llm_fake import FakeMessagesAPI, tool_reply

    register_configs()
    program = tmp_path / "program.md"
    program.write_text("# Goal\nmy goal")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["target=example", "proposer=hybrid", f"proposer.llm.program={program}",
                                           "proposer.llm.max_proposals=3", "proposer.llm_share=0.5"])
    assert cfg.proposer.llm.model and cfg.proposer.llm.target_name == "example"
    space = mixed_space()
    fake = FakeMessagesAPI([tool_reply([{"params": {"depth": 6}, "hypothesis": "h", "expected_effect": "e"}])])
    proposer = instantiate(cfg.proposer, _partial_=True)(space=space, objective=MINIMIZE, seed=0)  # as the CLI
    assert "llm" not in proposer.sources  # no key in the tests' environment
    # the LLM node builds the proposer the hybrid would add (a fake key and transport here)
    llm = instantiate(cfg.proposer.llm, _partial_=True)(space=space, objective=MINIMIZE, seed=0, api_key="k",
                                                         http_client=fake.http_client(), background=False)
    assert isinstance(llm, LLMProposer) and llm.max_proposals == 3 and llm.program == "# Goal\nmy goal"
    assert [c.params["depth"] for c in llm.propose([baseline(space)], 4)] == [6]
