"""Admitting one API request: the plan's rate limit and the guard's throttle, in one round trip.

The plan limit is a per-tenant counter per second, exact across replicas. The same script reads
whether the guard throttles the caller and counts the request for the traffic guard, but only a
request it admits: a refused (429) request is not traffic the guard learns from, so a throttled
client's retries neither re-alert nor stretch its throttle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import redis
from redis.commands.core import Script

from pipeline import keys

__all__ = ["Admission", "admit_request"]

# KEYS: plan window, the series' traffic counts, throttles; ARGV: series, second, now, limit.
_ADMIT = Script(None, b"""
local throttle = redis.call('HGET', KEYS[3], ARGV[1])
if throttle then
  local ends = tonumber(cjson.decode(throttle)['until'])
  if ends and ends > tonumber(ARGV[3]) then return {'guard_throttle', throttle} end
end
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 5)
if count > tonumber(ARGV[4]) then return {'plan_limit', ''} end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return {'', ''}
""")


@dataclass(frozen=True, slots=True)
class Admission:
    is_allowed: bool
    reason: str  # "", "plan_limit" or "guard_throttle"
    retry_after_seconds: int
    alert_id: str = ""  # the guard's alert that set the throttle
    alert_reason: str = ""  # what the guard saw, e.g. "key:ab sent 80 requests/s, ..."
    throttled_until: float = 0.0  # epoch seconds


def admit_request(
    r: redis.Redis, tenant_id: str, series: str, limit_per_second: int, now: float
) -> Admission:
    """Count one request of ``series`` (e.g. ``key:<id>``) and decide whether to serve it."""
    second = int(now)
    reason, throttle = _ADMIT(
        keys=[keys.api_request_window(tenant_id, second), keys.traffic_counts(tenant_id, series),
              keys.throttles(tenant_id)],
        args=[series, second, repr(float(now)), int(limit_per_second)], client=r)
    reason = reason.decode() if isinstance(reason, bytes) else reason
    if reason == "guard_throttle":
        record = json.loads(throttle)
        until = float(record["until"])
        return Admission(False, reason, max(1, math.ceil(until - now)),
                         alert_id=str(record.get("alert_id", "")),
                         alert_reason=str(record.get("reason", "")), throttled_until=until)
    if reason == "plan_limit":
        return Admission(False, reason, max(1, math.ceil(second + 1 - now)))
    return Admission(True, "", 0)
