"""A small real dataset, prepared once per test session, for every test of model/.

The offline source (this Python's standard library) capped at 1.5 M characters with a 512-token
BPE and 10% held out (~700k train, ~42k val tokens): a few seconds to build, real text, the same
code path as the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SMALL_DATA: dict[str, Any] = {"source": "offline", "vocab_size": 512, "max_chars": 1_500_000, "val_fraction": 0.1}


@pytest.fixture(scope="session")
def prepared_data_cfg(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ``data.*`` mapping of the session's small dataset (its cache_dir is a temporary folder)."""
    from model.prepare import prepare

    cfg = {**SMALL_DATA, "cache_dir": str(tmp_path_factory.mktemp("hybrid-cache"))}
    prepare(cfg, log=lambda _msg: None)
    return cfg


@pytest.fixture(scope="session")
def prepared_data(prepared_data_cfg: dict[str, Any]) -> Path:
    """The data dir of the session's small dataset (tokenizer, token files, manifest), ready to load."""
    from model.prepare import data_dir

    return data_dir(prepared_data_cfg)
