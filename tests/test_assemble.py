"""hybrid.assemble: the one assembly of a campaign. What ``assemble(compose([...]))`` builds is
what ``hybrid ...`` runs: same parts, and the same results for the same seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backends.local import LocalBackend
from hybrid.assemble import assemble, compose, compose_node
from hybrid.config import Mode, OnInterrupt
from hybrid.errors import ConfigError
from hybrid.proposers.sobol import SobolProposer
from hybrid.store import Store
from hybrid.tracking import NullTracker
from surrogate.acquisition import InOrderRanker

# the example target, tiny and quiet: a sobol campaign of 4 experiments on 2 local workers
RUN = ["target=example", "surrogate=none", "proposer=sobol", "tracking=none", "budget.max_experiments=4",
       "backend.workers=2", "target.env.EXAMPLE_SECONDS=0", "campaign.poll_interval_s=0.05"]


def test_assemble_builds_the_parts_the_config_names(tmp_path: Path) -> None:
    cfg = compose([*RUN, "campaign.mode=sync", "campaign.on_interrupt=detach", f"campaign.dir={tmp_path / 'c'}"])
    campaign = assemble(cfg)
    assert campaign.name == "example-sobol-s0" and campaign.dir == tmp_path / "c"
    assert isinstance(campaign.backend, LocalBackend) and [w.name for w in campaign.backend.workers()] == ["w00", "w01"]
    assert isinstance(campaign.proposer, SobolProposer) and isinstance(campaign.ranker, InOrderRanker)
    assert isinstance(campaign.tracker, NullTracker)
    assert campaign.budget.max_experiments == 4 and campaign.objective.metric == "val_bpb"
    assert campaign.mode is Mode.sync and campaign.on_interrupt is OnInterrupt.detach
    assert sorted(campaign.space.names) == ["depth", "lr", "warmup_ratio", "weight_decay", "window_pattern"]
    assert campaign.config["campaign"]["mode"] == "sync"  # recorded as plain data
    assert not (tmp_path / "c").exists()  # nothing is written before run()


def test_a_composed_node_and_its_typed_config_assemble_alike(tmp_path: Path) -> None:
    overrides = [*RUN, f"campaign.dir={tmp_path}"]
    a, b = assemble(compose(overrides)), assemble(compose_node(overrides))
    assert (a.name, a.dir, a.config) == (b.name, b.dir, b.config)


def test_injected_backend_and_tracker_are_the_ones_used(tmp_path: Path) -> None:
    backend, tracker = LocalBackend(workers=1), NullTracker()
    campaign = assemble(compose([*RUN, "budget.max_experiments=2", "campaign.progress=none"]), name="mine",
                        campaign_dir=tmp_path / "mine", backend=backend, tracker=tracker)
    assert campaign.backend is backend and campaign.tracker is tracker
    campaign.run()
    store = Store(tmp_path / "mine" / "state.sqlite")
    assert [(e.id, e.hardware) for e in store.experiments()] == [("e0001", "cpu"), ("e0002", "cpu")]
    store.close()


def test_a_campaign_dir_that_is_a_file_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    for given in ("f", "f/c"):
        with pytest.raises(ConfigError, match=rf"^campaign.dir: .*{given}.* is a file, not a directory"):
            assemble(compose([*RUN, f"campaign.dir={tmp_path / given}"]))


def test_a_proposer_option_its_constructor_does_not_take_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^proposer.levles: unknown key; did you mean levels\? allowed: .*span"):
        assemble(compose([*RUN, "proposer=grid", "+proposer.levles=3"]))
    with pytest.raises(ConfigError, match=r"^surrogate.pool_szie: unknown key; did you mean pool_size\?"):
        assemble(compose([*RUN, "surrogate=gp", "+surrogate.pool_szie=8"]))


def test_the_cost_aware_rule_is_the_default_and_reads_the_gp() -> None:
    from hybrid.stopping import CostAwareStop

    with_gp = assemble(compose([*RUN, "surrogate=gp"]))
    assert with_gp.stopping.cost == CostAwareStop()  # the calibrated default (docs/benchmarks.md)
    # without a GP there are no decisions to read: the budget caps only (its values are still checked)
    assert assemble(compose(RUN)).stopping.cost is None
    assert assemble(compose([*RUN, "surrogate=gp", "stopping=budget"])).stopping.cost is None
    with pytest.raises(ConfigError, match=r"^stopping.patience: expected a positive integer"):
        assemble(compose([*RUN, "stopping.patience=0"]))


def _results(campaign_dir: Path) -> list[tuple[str, dict, float | None]]:
    store = Store(campaign_dir / "state.sqlite")
    try:
        return [(e.id, dict(e.params), e.value("val_bpb")) for e in store.experiments()]
    finally:
        store.close()


def test_assembled_campaign_gives_the_clis_results_for_the_same_seed(tmp_path: Path) -> None:
    # sync waves: which of two async workers finishes first is timing, and the replicates the
    # campaign adds (the baseline again, a close incumbent again) follow what has finished
    run = [*RUN, "campaign.mode=sync"]
    cli_dir, lib_dir = tmp_path / "cli", tmp_path / "lib"
    p = subprocess.run([sys.executable, "-m", "hybrid", *run, "campaign.progress=plain", f"campaign.dir={cli_dir}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = assemble(compose([*run, "campaign.progress=none", f"campaign.dir={lib_dir}"])).run()
    cli, lib = _results(cli_dir), _results(lib_dir)
    assert len(cli) == 4 and cli == lib
    assert sum(1 for _, params, _ in lib if params == lib[0][1]) >= 2  # the replicates are part of what must agree
    assert summary.best_value == min(v for _, _, v in lib if v is not None)


def test_pruning_is_on_by_default_with_its_options_and_off_with_pruning_none(tmp_path: Path) -> None:
    from surrogate.pruning import PruningRule

    rule = assemble(compose([*RUN, f"campaign.dir={tmp_path / 'a'}", "pruning.grace=0.4",
                             "campaign.follow_interval_s=5"])).pruning
    assert isinstance(rule, PruningRule) and rule.grace == 0.4 and rule.min_finished == 8 and rule.space is not None
    off = assemble(compose([*RUN, f"campaign.dir={tmp_path / 'b'}", "pruning=none"]))
    assert off.pruning is None
    with pytest.raises(ConfigError, match=r"^pruning.confidence: must be in \(0.5, 1\)"):
        assemble(compose([*RUN, f"campaign.dir={tmp_path / 'c'}", "pruning.confidence=2"]))
    with pytest.raises(ConfigError, match=r"^campaign.follow_interval_s: expected a number > 0"):
        assemble(compose([*RUN, f"campaign.dir={tmp_path / 'd'}", "campaign.follow_interval_s=0"]))
