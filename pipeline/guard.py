"""The traffic guard: flag bot-like users and keep them out of training and targeting; watch each
tenant's traffic per series (an API key, a campaign's sends), alert on a burst, throttle only the
offending series, and let an operator clear the alert (which lifts the throttle)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import redis

from models.anomaly import BotDetector
from models.streaming import RateBurstDetector
from pipeline import keys

__all__ = [
    "flag_bots",
    "quarantine_users",
    "quarantined_users",
    "throttled_until",
    "release_users",
    "TrafficAlert",
    "record_requests",
    "observe_traffic",
    "is_throttled",
    "list_alerts",
    "clear_alert",
]

# Seconds of counts a series keeps in Redis; older ones are processed or dropped.
_COUNT_RETENTION_SECONDS = 3600
_THROTTLE_SECONDS = 900


def flag_bots(behaviour: pd.DataFrame, contamination: float = 0.02, random_state: int = 0) -> pd.Index:
    """Users whose behaviour an IsolationForest finds bot-like (index of user ids)."""
    if len(behaviour) < 20:
        return pd.Index([], name="user_id")
    detector = BotDetector(contamination=contamination, random_state=random_state)
    labels = detector.fit(behaviour).predict(behaviour)
    return behaviour.index[labels == -1]


def quarantine_users(r: redis.Redis, tenant_id: str, user_ids: Iterable[str], reason: str) -> int:
    """Add users to the tenant's quarantine; each keeps the reason it was put there."""
    ids = [str(u) for u in user_ids]
    if not ids:
        return 0
    r.hset(keys.quarantine(tenant_id), mapping={u: reason for u in ids})
    return len(ids)


def quarantined_users(r: redis.Redis, tenant_id: str) -> set[str]:
    return set(r.hkeys(keys.quarantine(tenant_id)))


def release_users(r: redis.Redis, tenant_id: str, user_ids: Iterable[str]) -> int:
    ids = list(user_ids)
    return int(r.hdel(keys.quarantine(tenant_id), *ids)) if ids else 0


@dataclass(frozen=True, slots=True)
class TrafficAlert:
    """An alert the guard wrote to the tenant's alert stream, and the action it took."""

    alert_id: str
    tenant_id: str
    series: str
    second: int
    rate: float
    baseline: float
    reason: str
    action: str


def record_requests(r: redis.Redis, tenant_id: str, series: str, at_seconds: float,
                    count: int = 1) -> None:
    """Count ``count`` requests of a series (for example ``key:<key id>``) in their epoch second."""
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    if not math.isfinite(at_seconds):
        raise ValueError(f"at_seconds must be a finite epoch time, got {at_seconds!r}")
    r.hincrby(keys.traffic_counts(tenant_id, series), str(int(at_seconds)), count)


def observe_traffic(r: redis.Redis, tenant_id: str, series: str, now_seconds: float,
                    detector: RateBurstDetector | None = None) -> list[TrafficAlert]:
    """Feed every finished second of a series to its online detector; alert and throttle on a burst.

    Seconds without requests count as zero. One incident raises one alert: the series stays
    "in burst" until its rate falls back under twice its baseline.
    """
    detector = detector or RateBurstDetector()
    counts_key = keys.traffic_counts(tenant_id, series)
    raw_state = r.hget(keys.traffic_state(tenant_id), series)
    state: dict[str, float] = json.loads(raw_state) if raw_state else {}
    counts = {int(k): int(v) for k, v in r.hgetall(counts_key).items()}
    last_done = int(state.pop("last_second", min(counts, default=int(now_seconds)) - 1))
    in_burst = bool(state.pop("in_burst", 0))
    first = max(last_done + 1, int(now_seconds) - _COUNT_RETENTION_SECONDS)
    alerts: list[TrafficAlert] = []
    for second in range(first, int(now_seconds)):  # the current second is not finished yet
        rate = float(counts.get(second, 0))
        baseline = float(state.get("mean", rate))
        _, is_burst, state = detector.update(state, rate)
        if is_burst and not in_burst:
            alerts.append(_raise_alert(r, tenant_id, series, second, rate, baseline))
        # Hysteresis: an incident ends when the rate is back under twice its baseline, so a
        # burst that wobbles around the threshold stays one alert.
        in_burst = is_burst or (in_burst and rate > 2 * baseline)
        last_done = second
    done = [str(s) for s in counts if s <= last_done]
    pipe = r.pipeline()
    if done:
        pipe.hdel(counts_key, *done)
    pipe.hset(keys.traffic_state(tenant_id), series,
              json.dumps({**state, "last_second": last_done, "in_burst": int(in_burst)}))
    pipe.execute()
    return alerts


def _raise_alert(r: redis.Redis, tenant_id: str, series: str, second: int, rate: float,
                 baseline: float) -> TrafficAlert:
    reason = f"{series} sent {rate:.0f} requests/s, {rate / max(baseline, 1e-3):.1f}x its normal {baseline:.2f}/s"
    action = f"throttled {series} for {_THROTTLE_SECONDS} s or until cleared"
    alert_id = r.xadd(keys.alerts_stream(tenant_id), {
        "kind": "traffic_burst", "series": series, "second": second, "rate": rate,
        "baseline": round(baseline, 4), "reason": reason, "action": action,
    })
    alert_id = alert_id.decode() if isinstance(alert_id, bytes) else str(alert_id)
    r.hset(keys.throttles(tenant_id), series, json.dumps(
        {"until": second + _THROTTLE_SECONDS, "reason": reason, "alert_id": alert_id}))
    return TrafficAlert(alert_id, tenant_id, series, second, rate, baseline, reason, action)


def throttled_until(raw_throttle: str | bytes | None) -> float:
    """When a stored throttle ends (epoch seconds); 0 when there is none."""
    return float(json.loads(raw_throttle)["until"]) if raw_throttle else 0.0


def is_throttled(r: redis.Redis, tenant_id: str, series: str, now_seconds: float) -> bool:
    """Whether the guard throttles this series now (answer its requests with 429)."""
    return throttled_until(r.hget(keys.throttles(tenant_id), series)) > now_seconds


def list_alerts(r: redis.Redis, tenant_id: str, include_cleared: bool = False) -> list[dict[str, str]]:
    """The tenant's alerts, oldest first, each with its id and whether an operator cleared it."""
    cleared = {_text(k): json.loads(v) for k, v in r.hgetall(keys.cleared_alerts(tenant_id)).items()}
    out = []
    for entry_id, fields in r.xrange(keys.alerts_stream(tenant_id)):
        alert_id = _text(entry_id)
        if alert_id in cleared and not include_cleared:
            continue
        alert = {_text(k): _text(v) for k, v in fields.items()}
        alert["id"] = alert_id
        alert["cleared_by"] = cleared.get(alert_id, {}).get("operator", "")
        out.append(alert)
    return out


def clear_alert(r: redis.Redis, tenant_id: str, alert_id: str, operator: str,
                now_seconds: float) -> bool:
    """An operator clears an alert: it is marked cleared and the throttle it set is lifted."""
    if not operator:
        raise ValueError("operator must name who clears the alert, got an empty string")
    entries = r.xrange(keys.alerts_stream(tenant_id), alert_id, alert_id)
    if not entries:
        return False
    series = _text(entries[0][1].get(b"series", entries[0][1].get("series", "")))
    raw = r.hget(keys.throttles(tenant_id), series)
    if raw and json.loads(raw).get("alert_id") == alert_id:
        r.hdel(keys.throttles(tenant_id), series)
    r.hset(keys.cleared_alerts(tenant_id), alert_id,
           json.dumps({"operator": operator, "at": now_seconds}))
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
