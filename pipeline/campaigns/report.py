"""A run's report: funnel counts, delivery receipts, conversions, and lift against the holdout."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import redis

from pipeline import keys
from pipeline.campaigns.assignment import HOLDOUT
from pipeline.campaigns.lift import difference_interval
from pipeline.campaigns.runner import push_id_for
from pipeline.campaigns.spec import CampaignSpec
from pipeline.campaigns.store import run_record
from pipeline.receipts import status_trails

__all__ = ["run_arms", "conversions_from_events", "conversions_from_stream", "run_report"]

_DAY = 86_400.0
_CHUNK = 5_000


def run_arms(r: redis.Redis, tenant_id: str, campaign_id: str, run_id: str) -> dict[str, str]:
    """user id -> arm of every selected user (``!<reason>`` for those suppressed)."""
    return {str(k): str(v) for k, v in
            r.hscan_iter(keys.campaign_arms(tenant_id, campaign_id, run_id), count=10_000)}


def conversions_from_events(events: pd.DataFrame, event_type: str, start: float,
                            end: float) -> set[str]:
    """Users with an ``event_type`` event in [start, end) (epoch seconds) in an events frame."""
    times = events["event_time"]
    if pd.api.types.is_datetime64_any_dtype(times):
        index = pd.DatetimeIndex(times)
        index = index.tz_localize("UTC") if index.tz is None else index
        seconds = index.as_unit("ns").asi8 / 1e9
    else:
        seconds = pd.to_numeric(times).to_numpy(dtype=np.float64)
    hit = (events["event_type"].to_numpy() == event_type) & (seconds >= start) & (seconds < end)
    return set(map(str, events["user_id"].to_numpy()[hit]))


def conversions_from_stream(r: redis.Redis, tenant_id: str, event_type: str, start: float,
                            end: float) -> set[str]:
    """The same, from the tenant's ingested event stream (entries added since ``start``)."""
    out: set[str] = set()
    cursor = f"{int(start * 1000)}-0"
    stream = keys.events_stream(tenant_id)
    while True:
        entries = r.xrange(stream, min=cursor, count=_CHUNK)
        for _, fields in entries:
            if fields.get("event_type") != event_type:
                continue
            at = float(fields.get("event_time") or 0.0)
            if start <= at < end:
                out.add(str(fields.get("user_id")))
        if len(entries) < _CHUNK:
            return out
        cursor = "(" + str(entries[-1][0])


def _receipts(r: redis.Redis, tenant_id: str, campaign_id: str, run_id: str,
              users: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for start in range(0, len(users), _CHUNK):
        push_ids = [push_id_for(campaign_id, run_id, user_id)
                    for user_id in users[start : start + _CHUNK]]
        for trail in status_trails(r, tenant_id, push_ids):
            reached = {entry["status"] for entry in trail or ()}
            for status in ("queued", "delivered", "opened", "acked"):
                counts[status] += status in reached
            counts["opened_or_acked"] += bool({"opened", "acked"} & reached)
    return counts


def run_report(r: redis.Redis, tenant_id: str, campaign_id: str, run_id: str,
               converted: Iterable[str] | None = None) -> dict[str, Any]:
    """The run's funnel and, given the converted users (or from the event stream), its lift.

    Lift compares users assigned to each variant with the held-out users, intention to treat:
    both groups were selected by the same rule, and suppressed users are left out of both.
    """
    record = run_record(r, tenant_id, campaign_id, run_id)
    spec = CampaignSpec.model_validate_json(record["spec"])
    started = float(record["started_at"])
    window_end = started + spec.conversion_window_days * _DAY
    if converted is None:
        converted = conversions_from_stream(r, tenant_id, spec.conversion_event, started,
                                            window_end)
    converted_set = set(converted)
    arms = run_arms(r, tenant_id, campaign_id, run_id)
    counts = dict(record.get("counts") or {})
    groups: dict[str, list[str]] = {}
    for user_id, arm in arms.items():
        if not arm.startswith("!"):
            groups.setdefault(arm, []).append(user_id)
    treated = [u for arm, users in groups.items() if arm != HOLDOUT for u in users]
    receipts = _receipts(r, tenant_id, campaign_id, run_id, treated)
    holdout = groups.get(HOLDOUT, [])
    holdout_converted = sum(u in converted_set for u in holdout)
    variants = {}
    for variant in spec.variants:
        users = groups.get(variant.name, [])
        lift = difference_interval(variant.name, sum(u in converted_set for u in users),
                                   len(users), holdout_converted, len(holdout))
        variants[variant.name] = lift.as_dict()
    pooled = difference_interval("all", sum(u in converted_set for u in treated), len(treated),
                                 holdout_converted, len(holdout)).as_dict()
    return {
        "tenant": tenant_id,
        "campaign": campaign_id,
        "run": run_id,
        "status": record.get("status"),
        "model_version": int(record.get("model_version", 0)),
        "started_at": started,
        "finished_at": float(record["finished_at"]) if record.get("finished_at") else None,
        "audience": counts.get("audience"),
        "eligible": counts.get("eligible"),
        "suppressed": counts.get("suppressed", {}),
        "selected": counts.get("selected", len(arms)),
        "held_out": len(holdout),
        "sent": receipts["queued"],
        "delivered": receipts["delivered"],
        "opened_or_acked": receipts["opened_or_acked"],
        "converted": sum(u in converted_set for u in arms),
        "conversion_event": spec.conversion_event,
        "conversion_window_days": spec.conversion_window_days,
        "lift": {"all_variants": pooled, "variants": variants},
    }
