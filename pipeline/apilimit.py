"""Admitting one API request: the plan's rate limit and the guard's throttle, in one round trip.

The plan limit is a per-tenant counter per second, exact across replicas. The same round trip
counts the request for the traffic guard and reads whether the guard throttles the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from pipeline import keys
from pipeline.guard import throttled_until

__all__ = ["Admission", "admit_request"]


@dataclass(frozen=True, slots=True)
class Admission:
    is_allowed: bool
    reason: str  # "", "plan_limit" or "guard_throttle"
    retry_after_seconds: int


def admit_request(
    r: redis.Redis, tenant_id: str, series: str, limit_per_second: int, now: float
) -> Admission:
    """Count one request of ``series`` (e.g. ``key:<id>``) and decide whether to serve it."""
    second = int(now)
    window = keys.api_request_window(tenant_id, second)
    pipe = r.pipeline(transaction=False)
    pipe.incr(window)
    pipe.expire(window, 5)
    pipe.hincrby(keys.traffic_counts(tenant_id, series), str(second), 1)
    pipe.hget(keys.throttles(tenant_id), series)
    count, _, _, throttle = pipe.execute()
    until = throttled_until(throttle)
    if until > now:
        return Admission(False, "guard_throttle", max(1, math.ceil(until - now)))
    if int(count) > limit_per_second:
        return Admission(False, "plan_limit", max(1, math.ceil(second + 1 - now)))
    return Admission(True, "", 0)
