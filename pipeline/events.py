"""Ingesting behaviour events: deduplicated by event id, appended to the tenant's event stream
and to each user's history, from which the user's online features are recomputed."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from pipeline import keys
from pipeline.featurestore import FeatureLayoutError
from pipeline.onlinefeatures import pack_event, refresh_users

__all__ = [
    "ingest_events",
    "store_events",
    "IngestResult",
    "DEDUPE_WINDOW_SECONDS",
    "EVENTS_MAX_LEN",
    "CLOCK_SKEW_SECONDS",
]

log = logging.getLogger(__name__)

DEDUPE_WINDOW_SECONDS = 2 * 86_400
EVENTS_MAX_LEN = 1_000_000
# How far ahead of this machine's clock an event may move the tenant's feature clock.
CLOCK_SKEW_SECONDS = 300

# KEYS: today's id set, yesterday's id set, the event stream, the tenant's meta hash, then the
# history of each event's user. ARGV: ttl, maxlen, clock candidate (ms), then
# (event_id, user_id, event_time, event_type, value, packed history record) per event.
# Returns accepted, duplicates, the tenant's events clock (ms), and a '1'/'0' per event.
_INGEST = """
local accepted, duplicates, flags = 0, 0, {}
for i = 4, #ARGV, 6 do
  local id = ARGV[i]
  if redis.call('SISMEMBER', KEYS[2], id) == 1 or redis.call('SADD', KEYS[1], id) == 0 then
    duplicates = duplicates + 1
    flags[#flags + 1] = '0'
  else
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'event_id', id,
               'user_id', ARGV[i + 1], 'event_time', ARGV[i + 2], 'event_type', ARGV[i + 3],
               'value', ARGV[i + 4])
    redis.call('APPEND', KEYS[5 + (i - 4) / 6], ARGV[i + 5])
    accepted = accepted + 1
    flags[#flags + 1] = '1'
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local clock = tonumber(redis.call('HGET', KEYS[4], 'events_clock_ms') or '0')
local candidate = tonumber(ARGV[3])
if accepted > 0 and candidate > clock then
  redis.call('HSET', KEYS[4], 'events_clock_ms', ARGV[3])
  clock = candidate
end
return {accepted, duplicates, tostring(clock), table.concat(flags)}
"""

Event = tuple[str, str, float, str, float | None]


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    users: list[str]
    """Users with at least one new event, in first-seen order."""
    clock_ms: int
    """The tenant's events clock: its latest event time (capped near this machine's time)."""


def store_events(
    r: redis.Redis, tenant_id: str, events: Sequence[Event], now: float | None = None
) -> IngestResult:
    """Append new events to the stream and their users' histories, in one script.

    An id already seen today or yesterday (UTC) counts as a duplicate and changes nothing.
    """
    wall = time.time() if now is None else now
    day = int(wall // 86_400)
    latest = max((float(e[2]) for e in events), default=0.0)
    # Rounded up, so the latest event is at or before the clock.
    clock_ms = math.ceil(min(latest, wall + CLOCK_SKEW_SECONDS) * 1000)
    args: list[str | int | float | bytes] = [DEDUPE_WINDOW_SECONDS, EVENTS_MAX_LEN, clock_ms]
    history_keys = []
    for event_id, user_id, event_time, event_type, value in events:
        args += [event_id, user_id, repr(float(event_time)), event_type,
                 "" if value is None else repr(float(value)),
                 pack_event(float(event_time), event_type, value)]
        history_keys.append(keys.user_history(tenant_id, user_id))
    accepted, duplicates, clock, flags = r.eval(
        _INGEST, 4 + len(history_keys), keys.event_ids(tenant_id, day),
        keys.event_ids(tenant_id, day - 1), keys.events_stream(tenant_id),
        keys.tenant_meta(tenant_id), *history_keys, *args,
    )
    if isinstance(flags, bytes):
        flags = flags.decode()
    users = list(dict.fromkeys(e[1] for e, flag in zip(events, flags, strict=True) if flag == "1"))
    return IngestResult(int(accepted), int(duplicates), users, int(clock))


def ingest_events(
    r: redis.Redis, tenant_id: str, events: Sequence[Event], now: float | None = None,
    *, refresh_features: bool = True,
) -> tuple[int, int]:
    """Store new events and recompute the online features of the users they touch.

    Returns (accepted, duplicates); an id already seen today or yesterday (UTC) is a duplicate.
    """
    result = store_events(r, tenant_id, events, now)
    if refresh_features and result.users:
        try:
            refresh_users(r, tenant_id, result.users, as_of_ms=result.clock_ms)
        except FeatureLayoutError as e:
            # The events are stored; only the features of another layout cannot take them.
            log.warning("events of tenant %s stored, features not refreshed: %s", tenant_id, e)
    return result.accepted, result.duplicates
