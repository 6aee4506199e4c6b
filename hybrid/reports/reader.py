"""One reader of a campaign's store, for every process that is not the campaign itself.

``read_campaign(campaign_dir)`` opens ``state.sqlite`` with ``Store.open_read_only`` (never
created, claimed or written; safe while the campaign runs), reads everything once and closes it.
The findings report, the strategy comparison of a multirun and the warm start all read a
campaign through it, so they agree on its config, objective, target identity, spend and code variants.
Each experiment comes with its learning curve (``Experiment.curve``: the store's progress points, in
rising fraction; empty for a run that reported none, or in an old store without the table).

Errors: a store that cannot be opened raises :class:`StoreError` (its message names the file);
one that opens but cannot be read raises ``sqlite3.Error``. Callers turn them into their own
messages (a note in findings.md, a job left out of a comparison, a ``ConfigError`` for a warm start).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.store import Store, VariantRecord
from hybrid.types import Experiment, Objective

__all__ = ["STORE_FILE", "CampaignRecord", "finite_number", "read_campaign"]

STORE_FILE = "state.sqlite"
_DIRECTIONS = ("minimize", "maximize")
# the meta keys a reader uses (the store has others: schema_version, ...)
META_KEYS = ("metric", "identity", "status", "stop_reason", "active_s", "created", "warm_start", "mlflow_parent_run_id",
             "gp_noise", "gp_estimates")


def finite_number(x: Any) -> float | None:
    """A finite number from stored JSON, else None (booleans are not numbers here)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class CampaignRecord:
    """A campaign as its store holds it: read once, then plain data."""

    dir: Path
    name: str | None  # the campaign the store was claimed for (None: never claimed, an empty store)
    config: dict[str, Any]  # the resolved config it stored ({} for a campaign built in Python)
    meta: dict[str, Any]  # the META_KEYS the store has: status, stop_reason, active_s, created, warm_start...
    experiments: list[Experiment]  # every experiment, in creation order
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (time, kind, detail), in order
    variants: list[VariantRecord] = field(default_factory=list)  # code variants proposed, ok and rejected, in order

    # ---- what it optimized, and where -------------------------------------------------------
    @property
    def target(self) -> dict[str, Any]:
        return dict(self.config.get("target") or {})

    def objective(self, default: Objective | None = None) -> Objective:
        """The objective: the stored config's target metric/direction, else the metric the store was
        claimed with, else ``default``'s (``val_bpb``, minimize when not given)."""
        default = default or Objective()
        metric = self.target.get("metric") or self.meta.get("metric") or default.metric
        direction = self.target.get("direction")
        return Objective(str(metric), direction if direction in _DIRECTIONS else default.direction)

    @property
    def target_hardware(self) -> str | None:
        """``campaign.target_hardware`` of the stored config (None: not set, or no config)."""
        value = (self.config.get("campaign") or {}).get("target_hardware")
        return None if value is None else str(value)

    @property
    def identity(self) -> dict[str, dict[str, Any]]:
        """What a warm start must match: the store's ``identity`` meta, else what its stored config
        says (fields it does not tell are None, and not checked)."""
        stored = self.meta.get("identity")
        if stored:
            return {k: dict(stored.get(k) or {}) for k in ("target", "objective", "space")}
        target = self.target
        params = (self.config.get("space") or {}).get("params") or {}
        return {
            "target": {"name": target.get("name"), "command": target.get("command")} if target else {},
            "objective": {"metric": self.meta.get("metric") or target.get("metric"),
                          "direction": target.get("direction")},
            "space": {str(k): (v.get("type") if isinstance(v, Mapping) else None) for k, v in params.items()},
        }

    # ---- how it went -------------------------------------------------------------------------
    @property
    def status(self) -> str | None:
        return self.meta.get("status")

    @property
    def stop_reason(self) -> str | None:
        return self.meta.get("stop_reason")

    @property
    def active_s(self) -> float | None:
        """The campaign's active time over all its sessions (None: not written yet)."""
        return finite_number(self.meta.get("active_s"))

    @property
    def created(self) -> float | None:
        """When the campaign was first started (time.time())."""
        return finite_number(self.meta.get("created"))

    def events_of(self, kind: str) -> list[tuple[float, str, str]]:
        return [ev for ev in self.events if ev[1] == kind]

    # ---- spend -------------------------------------------------------------------------------
    @property
    def proposer_calls(self) -> int:
        """The proposers' own paid calls (LLM)."""
        return len(self.events_of("proposer_call"))

    @property
    def proposer_usd(self) -> float:
        """What the proposers' calls cost (LLM tokens)."""
        return sum(finite_number(_json_dict(d).get("cost_usd")) or 0.0 for _, _, d in self.events_of("proposer_call"))

    @staticmethod
    def worker_usd(exps: list[Experiment]) -> float:
        """What the workers cost for these experiments (those with a result)."""
        return sum(e.result.cost_usd for e in exps if e.result is not None)


def read_campaign(campaign_dir: Path | str) -> CampaignRecord:
    """Read the campaign in ``campaign_dir`` (its ``state.sqlite``), read-only. Raises StoreError
    when the store cannot be opened, sqlite3.Error when it cannot be read."""
    campaign_dir = Path(campaign_dir)
    store = Store.open_read_only(campaign_dir / STORE_FILE)
    try:
        meta = {key: value for key in META_KEYS if (value := store.get_meta(key)) is not None}
        name = store.get_meta("campaign")
        config = store.get_meta("config") or {}
        exps = store.experiments()
        curves = store.progress()
        for e in exps:
            e.curve = curves.get(e.id, [])
        events = store.events()
        variants = store.variants()
    finally:
        store.close()
    return CampaignRecord(campaign_dir, None if name is None else str(name), config if isinstance(config, dict) else {},
                          meta, exps, [(float(ts), str(kind), detail or "") for ts, kind, detail in events],
                          variants)
