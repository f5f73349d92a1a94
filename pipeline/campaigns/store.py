"""Campaign specs and run records in Redis, under the tenant's keys."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from pipeline import keys
from pipeline.campaigns.spec import CampaignSpec
from pipeline.errors import PushError

__all__ = [
    "UnknownCampaignError",
    "save_campaign",
    "load_campaign",
    "list_campaigns",
    "campaign_status",
    "set_campaign_status",
    "list_runs",
    "run_record",
]


class UnknownCampaignError(PushError):
    def __init__(self, tenant_id: str, campaign_id: str):
        super().__init__(
            f"tenant {tenant_id!r} has no campaign {campaign_id!r}; see "
            f"`pushpilot campaign list --tenant {tenant_id}` or create it with `campaign create`"
        )
        self.tenant_id = tenant_id
        self.campaign_id = campaign_id


def save_campaign(r: redis.Redis, spec: CampaignSpec, now: float | None = None) -> bool:
    """Store (or replace) a campaign's spec; True when it is new. A cancelled one stays cancelled."""
    now = time.time() if now is None else now
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.campaigns(spec.tenant), spec.id, spec.to_json())
    pipe.hsetnx(keys.campaign_state(spec.tenant, spec.id), "status", "active")
    pipe.hsetnx(keys.campaign_state(spec.tenant, spec.id), "created_at", repr(now))
    is_new = bool(pipe.execute()[0])
    return is_new


def load_campaign(r: redis.Redis, tenant_id: str, campaign_id: str) -> CampaignSpec:
    raw = r.hget(keys.campaigns(tenant_id), campaign_id)
    if raw is None:
        raise UnknownCampaignError(tenant_id, campaign_id)
    return CampaignSpec.model_validate_json(raw)


def campaign_status(r: redis.Redis, tenant_id: str, campaign_id: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in r.hgetall(keys.campaign_state(tenant_id, campaign_id)).items()
            if not str(k).startswith("fired:")}


def set_campaign_status(r: redis.Redis, tenant_id: str, campaign_id: str, status: str) -> None:
    load_campaign(r, tenant_id, campaign_id)
    r.hset(keys.campaign_state(tenant_id, campaign_id), "status", status)


def list_campaigns(r: redis.Redis, tenant_id: str) -> list[dict[str, Any]]:
    out = []
    for campaign_id in sorted(r.hkeys(keys.campaigns(tenant_id))):
        state = campaign_status(r, tenant_id, campaign_id)
        out.append({
            "id": campaign_id,
            "status": state.get("status", "active"),
            "next_due": float(state["next_due"]) if state.get("next_due") else None,
            "runs": int(r.zcard(keys.campaign_runs(tenant_id, campaign_id))),
        })
    return out


def list_runs(r: redis.Redis, tenant_id: str, campaign_id: str) -> list[str]:
    return [str(x) for x in r.zrange(keys.campaign_runs(tenant_id, campaign_id), 0, -1)]


def run_record(r: redis.Redis, tenant_id: str, campaign_id: str, run_id: str) -> dict[str, Any]:
    """A run's stored state: status, times, model version, and counts per partition."""
    raw = r.hgetall(keys.campaign_run(tenant_id, campaign_id, run_id))
    if not raw:
        raise PushError(
            f"campaign {campaign_id!r} of tenant {tenant_id!r} has no run {run_id!r}; "
            f"see `pushpilot campaign show {campaign_id} --tenant {tenant_id}` for its runs"
        )
    out: dict[str, Any] = {}
    for k, v in raw.items():
        out[str(k)] = json.loads(v) if str(k).startswith(("part:", "counts", "select")) else v
    return out
