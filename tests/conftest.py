"""Shared test setup."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_anthropic_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test talks to the real Anthropic API: without a key, proposer=hybrid (the default) runs
    the classical proposers only, in this process and in the `hybrid` subprocesses tests start.
    Tests of the LLM proposer pass their own fake key and a mock transport."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
