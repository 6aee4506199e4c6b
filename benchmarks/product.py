"""Build the product's proposer and ranker exactly as ``hybrid`` does: Hydra composes conf/ with
the given overrides, then the nodes are instantiated with the runtime space/objective/seed.

Benchmarks use this so that what they measure is what ``hybrid proposer=hybrid surrogate=gp``
runs, whatever the YAML files hold (defaults lists, nested groups, new fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybrid.space import SearchSpace
from hybrid.types import Objective

ROOT = Path(__file__).resolve().parent.parent


def compose(overrides: Sequence[str] = ()) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from hybrid.cli import _register

    _register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose("config", overrides=list(overrides))


def build(space: SearchSpace, objective: Objective, seed: int, overrides: Sequence[str] = (),
          target_hardware: str | None = None, llm: bool = False) -> tuple[Any, Any]:
    """(proposer, ranker) for e.g. ``["proposer=hybrid", "surrogate=gp"]``. Without ``llm`` the
    LLM source is off (``proposer.llm_share=0``): a benchmark never spends on the API, key or not."""
    from hydra.utils import instantiate

    cfg = compose(overrides)
    if not llm and "llm_share" in cfg.proposer:
        cfg.proposer.llm_share = 0
    proposer = instantiate(cfg.proposer, _partial_=True)(space=space, objective=objective, seed=seed)
    ranker = instantiate(cfg.surrogate, _partial_=True)(space=space, objective=objective, seed=seed,
                                                        target_hardware=target_hardware)
    return proposer, ranker
