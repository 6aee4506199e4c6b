"""Campaign data as MLflow accepts it: flattened dotted keys, safe key characters, string values
within MLflow's length limits (secrets redacted), finite numbers only."""

from __future__ import annotations

import json
import math
import numbers
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from hybrid.secrets import redact_nested, scrub_values

# MLflow's limits (mlflow.utils.validation; tags: the stricter limit of older servers). A batch holds
# at most 100 params, 100 tags and 1000 entities in all.
MAX_KEY, MAX_PARAM, MAX_TAG, MAX_RATIONALE = 250, 6000, 5000, 2000
BATCH_PARAMS_TAGS, BATCH_METRICS = 100, 800


def flatten(node: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flatten(value, dotted, out)
        else:
            out[dotted] = value


def to_params(config: Mapping[str, Any], by_key: bool = True) -> dict[str, str]:
    """Flattened dotted keys -> stringified, redacted, truncated values, with MLflow-safe keys.

    ``by_key`` True (a config): redacted as every config written down is (``hybrid.secrets.redact_nested``:
    secret-named keys keep their name, not their value; secrets inside strings scrubbed).
    ``by_key`` False (an experiment's hyperparameters, e.g. ``key_norm``): only known secret values
    are hidden; a name that merely looks secret is not enough to hide a hyperparameter.
    """
    flat: dict[str, Any] = {}
    flatten(redact_nested(config) if by_key else config, "", flat)
    if not by_key:
        return {safe_key(k): truncate(scrub_values(as_text(v)), MAX_PARAM) for k, v in flat.items()}
    return {safe_key(k): truncate(as_text(v), MAX_PARAM) for k, v in flat.items()}


def as_text(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def safe_key(key: str) -> str:
    """MLflow keys: alphanumerics, ``_ - . space : /``, and no path tricks (``a//b``, ``../x``)."""
    key = re.sub(r"[^/\w.\- :]", "_", key)[:MAX_KEY]
    if posixpath.normpath(key) != key or key.startswith(("/", "..")):
        key = key.replace("/", "_").replace("..", "__")
    return key or "_"


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
