"""Secrets: what counts as one, and their redaction wherever a value leaves the orchestrator or an
experiment (MLflow, the LLM prompt, reports, files at rest). One module, used by every layer above.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# `API_KEY=abc`, `token: abc` and `--api-key abc` inside string values (commands, env strings)
_SECRET_ASSIGNMENT = re.compile(r"(?i)(\b\w*(?:key|token|secret|password)\w*\s*[=:]\s*)(['\"]?)[^\s'\",}]+")
_SECRET_FLAG = re.compile(r"(?i)(--?[\w-]*(?:key|token|secret|password)[\w-]*[\s=]+)(['\"]?)[^\s'\"]+")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+):[^/\s@]+@")


def is_secret(key: str) -> bool:
    return any(word in key.upper() for word in _SECRET_WORDS)


def _secret_env_values() -> list[str]:
    """Values of environment variables named like secrets (long enough not to match by chance)."""
    return [v for k, v in os.environ.items() if is_secret(k) and len(v) >= 8]


def scrub_env_secrets(text: str) -> str:
    for value in _secret_env_values():
        text = text.replace(value, REDACTED)
    return text


def scrub(text: str) -> str:
    """Redact secrets written inside a string value: ``API_KEY=...``, ``--token ...``, URL passwords."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
    text = _SECRET_FLAG.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m[1]}:{REDACTED}@", text)
    return scrub_env_secrets(text)


def redact_nested(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret(str(k)) else redact_nested(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_nested(v) for v in value]
    return value
