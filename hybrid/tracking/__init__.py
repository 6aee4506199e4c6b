"""Mirror a campaign into MLflow: one parent run per campaign, one child run per experiment.

The campaign's SQLite store is the source of truth; MLflow is a *mirror* that is never read back
for decisions. So a tracker never stops a campaign: every MLflow call is guarded, a failure is
reported once per kind (what happened, how to fix or silence it) and the campaign goes on. After a
few failures in a row the tracker stops trying, so an unreachable server cannot stall dispatch.

The package: ``base`` (the Tracker protocol, CampaignInfo, NullTracker), ``mlflow`` (MLflowTracker),
``values`` (keys and values within MLflow's limits, secrets redacted by ``hybrid.secrets``).
``mlflow`` itself is imported inside the methods that need it: importing this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybrid.errors import ConfigError
from hybrid.secrets import REDACTED
from hybrid.tracking.base import CampaignInfo, NullTracker, Tracker, TrackingWarning
from hybrid.tracking.mlflow import MLflowTracker

__all__ = ["REDACTED", "CampaignInfo", "MLflowTracker", "NullTracker", "Tracker", "TrackingWarning", "make_tracker"]


def make_tracker(cfg: Mapping[str, Any]) -> Tracker:
    """Build the tracker from the ``tracking`` config node: ``{name: mlflow|none, uri, experiment}``."""
    name = cfg.get("name", "mlflow")
    if name is None or str(name).lower() == "none":
        return NullTracker()
    if str(name).lower() != "mlflow":
        raise ConfigError(f"tracking.name: unknown tracker {name!r}; use 'mlflow' or 'none'")
    for field_name in ("uri", "experiment"):
        value = cfg.get(field_name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"tracking.{field_name}: expected a string or null, got {type(value).__name__} {value!r}"
            )
    return MLflowTracker(uri=cfg.get("uri") or None, experiment=cfg.get("experiment") or None)
