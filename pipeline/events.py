"""Ingesting behaviour events: deduplicated by event id, appended to the tenant's event stream."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from pipeline import keys

__all__ = ["ingest_events", "DEDUPE_WINDOW_SECONDS", "EVENTS_MAX_LEN"]

DEDUPE_WINDOW_SECONDS = 2 * 86_400
EVENTS_MAX_LEN = 1_000_000

# KEYS: today's id set, yesterday's id set, the event stream.
# ARGV: ttl, maxlen, then (event_id, user_id, event_time, event_type, value) per event.
_INGEST = """
local accepted, duplicates = 0, 0
for i = 3, #ARGV, 5 do
  local id = ARGV[i]
  if redis.call('SISMEMBER', KEYS[2], id) == 1 or redis.call('SADD', KEYS[1], id) == 0 then
    duplicates = duplicates + 1
  else
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'event_id', id,
               'user_id', ARGV[i + 1], 'event_time', ARGV[i + 2], 'event_type', ARGV[i + 3],
               'value', ARGV[i + 4])
    accepted = accepted + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {accepted, duplicates}
"""

Event = tuple[str, str, float, str, float | None]


def ingest_events(
    r: redis.Redis, tenant_id: str, events: Sequence[Event], now: float | None = None
) -> tuple[int, int]:
    """Append new events; an id already seen today or yesterday (UTC) counts as a duplicate."""
    day = int((time.time() if now is None else now) // 86_400)
    args: list[str | int | float] = [DEDUPE_WINDOW_SECONDS, EVENTS_MAX_LEN]
    for event_id, user_id, event_time, event_type, value in events:
        args += [event_id, user_id, repr(float(event_time)), event_type,
                 "" if value is None else repr(float(value))]
    accepted, duplicates = r.eval(
        _INGEST, 3, keys.event_ids(tenant_id, day), keys.event_ids(tenant_id, day - 1),
        keys.events_stream(tenant_id), *args,
    )
    return int(accepted), int(duplicates)
