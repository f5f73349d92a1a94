"""The plan's API request limit: a per-tenant counter per second, exact across replicas."""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from pipeline import keys

__all__ = ["RequestVerdict", "count_request"]


@dataclass(frozen=True, slots=True)
class RequestVerdict:
    is_allowed: bool
    retry_after_seconds: int


def count_request(r: redis.Redis, tenant_id: str, limit_per_second: int, now: float) -> RequestVerdict:
    """Count one request of the tenant in the current second; refuse it past the plan's limit."""
    second = int(now)
    key = keys.api_request_window(tenant_id, second)
    pipe = r.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 5)
    count, _ = pipe.execute()
    if int(count) <= limit_per_second:
        return RequestVerdict(True, 0)
    return RequestVerdict(False, max(1, math.ceil(second + 1 - now)))
