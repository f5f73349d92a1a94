"""The traffic guard: flag bot-like users and keep them out of training and targeting; watch each
tenant's traffic per series (an API key, a campaign's sends), alert on a burst, throttle only the
offending series, and let an operator clear the alert (which lifts the throttle).

What is never a burst (docs/anomaly.md): a second at or under ``min_rate_per_second``; anything
before a series has been watched for ``warmup_seconds`` and ``warmup_requests``; and the end of a
silence, because silence past ``idle_seconds`` (an idle key, a Valkey outage) is not learnt.
Refused requests are not counted (pipeline/apilimit.py), so a throttled client's retries neither
re-alert nor keep it throttled."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import redis
from redis.commands.core import Script

from models.anomaly import BotDetector
from models.streaming import RateBurstDetector
from pipeline import audit, keys
from pipeline.config import GuardSettings

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
    "burst_detector",
    "list_alerts",
    "traffic_history",
    "clear_alert",
]

# Seconds of counts a series keeps in Redis; older ones are processed or dropped.
_COUNT_RETENTION_SECONDS = 3600
# Guard rounds kept in the traffic history (one entry per round and busy series): about a day
# of one busy key at one round a second.
_HISTORY_ENTRIES = 100_000
# How often observe_traffic reads again when an operator's clear lands between its read and write.
_COMMIT_TRIES = 3

# KEYS: traffic state hash, the series' counts hash; ARGV: series, the state read ('' for none),
# the new state, then the seconds processed. Writes only if nobody (a clear) changed the state.
_COMMIT = Script(None, b"""
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 4, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
return 1
""")

# KEYS: throttles, traffic state, cleared alerts; ARGV: series, alert id, the clear's record.
# Lifts the throttle the alert set and restarts the series' warm-up, in one step, so a guard round
# running meanwhile cannot put back the baseline that alerted.
_CLEAR = Script(None, b"""
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and cjson.decode(raw)['alert_id'] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
local state = redis.call('HGET', KEYS[2], ARGV[1])
if state then
  local last = cjson.decode(state)['last_second']
  if last then
    redis.call('HSET', KEYS[2], ARGV[1], string.format('{"last_second": %d, "in_burst": 0}', last))
  else
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
return 1
""")


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


def burst_detector(config: GuardSettings) -> RateBurstDetector:
    """The online detector the guard runs per series, with the floor and warm-up of ``config``."""
    return RateBurstDetector(min_updates=config.warmup_seconds, min_total=config.warmup_requests,
                             min_rate=config.min_rate_per_second)


def observe_traffic(r: redis.Redis, tenant_id: str, series: str, now_seconds: float,
                    config: GuardSettings | None = None,
                    detector: RateBurstDetector | None = None) -> list[TrafficAlert]:
    """Feed every finished second of a series to its online detector; alert and throttle on a burst.

    Seconds without requests count as zero, up to ``config.idle_seconds`` in a row; the rest of
    a silence is skipped, so the baseline keeps what it knew before it. One incident raises one
    alert: the series stays "in burst" until its rate falls back under twice its baseline.
    """
    config = config or GuardSettings()
    detector = detector or burst_detector(config)
    counts_key = keys.traffic_counts(tenant_id, series)
    state_key = keys.traffic_state(tenant_id)
    for _ in range(_COMMIT_TRIES):
        raw_state = r.hget(state_key, series)
        counts = {int(k): int(v) for k, v in r.hgetall(counts_key).items()}
        state: dict[str, float] = json.loads(raw_state) if raw_state else {}
        last_done = int(state.pop("last_second", min(counts, default=int(now_seconds)) - 1))
        in_burst = bool(state.pop("in_burst", 0))
        quiet = int(state.pop("quiet_seconds", 0))
        first = max(last_done + 1, int(now_seconds) - _COUNT_RETENTION_SECONDS)
        bursts: list[tuple[int, float, float]] = []
        for second in range(first, int(now_seconds)):  # the current second is not finished yet
            rate = float(counts.get(second, 0))
            last_done = second
            quiet = quiet + 1 if rate == 0 else 0
            if quiet > config.idle_seconds:
                # Learning a long silence as zeros would make the first normal second after it
                # (a key back from idle, a producer back from a Valkey outage) look like a burst.
                continue
            baseline = float(state.get("mean", rate))
            _, is_burst, state = detector.update(state, rate)
            if is_burst and not in_burst:
                bursts.append((second, rate, baseline))
            # Hysteresis: an incident ends when the rate is back under twice its baseline, so a
            # burst that wobbles around the threshold stays one alert.
            in_burst = is_burst or (in_burst and rate > 2 * baseline)
        done = [str(s) for s in counts if s <= last_done]
        new_state = json.dumps({**state, "last_second": last_done, "in_burst": int(in_burst),
                                "quiet_seconds": quiet})
        if _COMMIT(keys=[state_key, counts_key], args=[series, raw_state or "", new_state, *done],
                   client=r):
            seen = sorted((s, c) for s, c in counts.items() if s <= last_done and c)
            if seen:
                r.xadd(keys.traffic_history(tenant_id), {"series": series, "counts": json.dumps(seen)},
                       maxlen=_HISTORY_ENTRIES, approximate=True)
            return [_raise_alert(r, tenant_id, series, second, rate, baseline,
                                 config.throttle_seconds)
                    for second, rate, baseline in bursts]
    return []  # cleared again and again meanwhile: the next round looks at these seconds


def _raise_alert(r: redis.Redis, tenant_id: str, series: str, second: int, rate: float,
                 baseline: float, throttle_seconds: int) -> TrafficAlert:
    reason = f"{series} sent {rate:.0f} requests/s, {rate / max(baseline, 1e-3):.1f}x its normal {baseline:.2f}/s"
    action = f"throttled {series} for {throttle_seconds} s or until cleared"
    alert_id = r.xadd(keys.alerts_stream(tenant_id), {
        "kind": "traffic_burst", "series": series, "second": second, "rate": rate,
        "baseline": round(baseline, 4), "reason": reason, "action": action,
    })
    alert_id = alert_id.decode() if isinstance(alert_id, bytes) else str(alert_id)
    r.hset(keys.throttles(tenant_id), series, json.dumps(
        {"until": second + throttle_seconds, "reason": reason, "alert_id": alert_id}))
    audit.record(r, tenant_id, "guard", "guard.throttled", series, alert_id=alert_id,
                 reason=reason, throttle_seconds=throttle_seconds)
    return TrafficAlert(alert_id, tenant_id, series, second, rate, baseline, reason, action)


def throttled_until(raw_throttle: str | bytes | None) -> float:
    """When a stored throttle ends (epoch seconds); 0 when there is none."""
    return float(json.loads(raw_throttle)["until"]) if raw_throttle else 0.0


def is_throttled(r: redis.Redis, tenant_id: str, series: str, now_seconds: float) -> bool:
    """Whether the guard throttles this series now (answer its requests with 429)."""
    return throttled_until(r.hget(keys.throttles(tenant_id), series)) > now_seconds


def traffic_history(r: redis.Redis, tenant_id: str, start: float,
                    end: float) -> dict[str, dict[int, int]]:
    """Requests per series and epoch second in [start, end], from what the guard has consumed."""
    out: dict[str, dict[int, int]] = {}
    # An entry is written once its seconds are done: up to a guard round after the last of them.
    for _, fields in r.xrange(keys.traffic_history(tenant_id), min=str(int(start * 1000))):
        series = _text(fields.get("series", fields.get(b"series", b"")))
        for second, count in json.loads(_text(fields.get("counts", fields.get(b"counts", b"[]")))):
            if start <= second <= end:
                per = out.setdefault(series, {})
                per[int(second)] = per.get(int(second), 0) + int(count)
    return out


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
    """An operator clears an alert: it is marked cleared, the throttle it set is lifted at once,
    and the series' baseline is learnt afresh (the operator said its traffic is fine)."""
    if not operator:
        raise ValueError("operator must name who clears the alert, got an empty string")
    entries = r.xrange(keys.alerts_stream(tenant_id), alert_id, alert_id)
    if not entries:
        return False
    series = _text(entries[0][1].get(b"series", entries[0][1].get("series", "")))
    _CLEAR(keys=[keys.throttles(tenant_id), keys.traffic_state(tenant_id),
                 keys.cleared_alerts(tenant_id)],
           args=[series, alert_id, json.dumps({"operator": operator, "at": now_seconds})], client=r)
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
