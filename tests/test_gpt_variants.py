"""target=gpt with code variants: the one override documented in docs/gpt-target.md
(``target.editable='[model/gpt.py,model/optim.py,model/train.py]'``) gives a campaign whose LLM
sees the three files whole with the default proposer.llm settings, and checks each variant with
the target's smoke command before any worker is spent on it."""

from __future__ import annotations

from pathlib import Path

from hybrid.assemble import assemble, compose, plain
from hybrid.proposers.llm import LLMProposer
from hybrid.proposers.llm_fake import FakeMessagesAPI, shown_files, tool_reply
from hybrid.space import SearchSpace
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.tracking import NullTracker
from hybrid.variant_book import VariantBook

ROOT = Path(__file__).resolve().parents[1]
FILES = ("model/gpt.py", "model/optim.py", "model/train.py")
OVERRIDE = f"target.editable=[{','.join(FILES)}]"  # as the shell passes target.editable='[...]'
SMOKE = ("{python} -m model.train preset=gpt_tiny threads=1 time_budget_s=1 total_batch_size=2048 "
         "device_batch_size=8 eval_tokens=2048 {args}")


def test_the_one_override_makes_the_gpt_target_editable_with_its_smoke_test(tmp_path: Path) -> None:
    campaign = assemble(compose(["target=gpt", OVERRIDE, "tracking=none"]), campaign_dir=tmp_path / "c",
                        tracker=NullTracker())
    target = campaign.target
    assert (target.name, target.editable, target.workdir) == ("gpt", FILES, ROOT)
    assert (target.smoke_command, target.smoke_timeout_s) == (SMOKE, 120.0)
    assert target.command.startswith("{python} -m model.train preset=gpt_tiny ")  # the experiments as before
    # without the override the target changes no code (the smoke command is then never run)
    assert TargetSpec.from_config(plain(compose(["target=gpt"]).target)).editable == ()
    assert "target.editable='[model/gpt.py,model/optim.py,model/train.py]'" in (ROOT / "docs/gpt-target.md").read_text()


def test_with_the_default_llm_settings_the_model_sees_the_three_files_whole(tmp_path: Path) -> None:
    cfg = compose(["target=gpt", OVERRIDE, "proposer=llm"])
    target = TargetSpec.from_config(plain(cfg.target))
    space = SearchSpace.from_config(cfg.space.params)
    book = VariantBook(Store(tmp_path / "state.sqlite"), target, space, tmp_path, lambda: [])
    fake = FakeMessagesAPI([tool_reply([], variants=[])])
    options = {k: v for k, v in cfg.proposer.items() if k not in ("_target_", "_partial_")}
    llm = LLMProposer(space, target.objective, 0, **options, api_key="test-key", http_client=fake.http_client(),
                      background=False)  # conf/proposer/llm.yaml's values, as the CLI builds it
    llm.use_variants(book)
    llm.propose([], 4)
    (request,) = fake.requests
    assert shown_files(request) == {f: (ROOT / f).read_text().rstrip("\n") for f in FILES}
    assert "[... cut:" not in request["system"][1]["text"]
    assert [e.message for e in llm.events() if e.kind == "notice"] == []  # no "shown to the LLM cut" notice
    # the files (cached) come on top of the summary's limit, within their own
    assert llm.last_prompt_tokens > llm.max_prompt_tokens
    assert len(request["system"][1]["text"]) / 3 <= llm.max_code_tokens
