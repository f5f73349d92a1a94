"""Retention by age, per tenant: how long events, receipts and inbox entries are kept, and the
sweeper that removes what is older.

A tenant's policy (``keys.retention``) gives an age in days for each kind of data, or none:

- ``events_days``: the tenant's event stream and each user's event history. History records
  carry the event's own time, so an event is as old as it says it is; stream entries are as
  old as their arrival.
- ``receipts_days``: push status records (counted from enqueue) and dead letters. A record
  whose push is still on its way (queued, sent, failed and waiting to retry) is left until the
  push settles. Workers also expire every record after their own retention (seven days by
  default); a longer ``receipts_days`` does not lengthen that.
- ``inbox_days``: entries of users' inboxes, by arrival; an inbox left empty is deleted.

Without an age, only the count limits apply (``pushpilot compliance report`` lists them).
The consent ledger is never swept: it is the proof of what each user agreed to. A sweep is
idempotent and safe beside live traffic: every removal is one atomic Redis step that keeps
what arrived meanwhile. Run it from cron or as a service (``pushpilot compliance sweep
--every 3600``); each run's report is kept as the tenant's ``last_sweep``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import redis
from redis.client import NEVER_DECODE

from pipeline import keys, tenants
from pipeline.errors import InvalidInputError
from pipeline.onlinefeatures import HISTORY_DTYPE

__all__ = ["MAX_DAYS", "RetentionPolicy", "SweepReport", "get_policy", "set_policy", "sweep",
           "last_sweep"]

MAX_DAYS = 3650
_DAY = 86_400
_SCAN = 1000
# Histories read per pipeline: each is up to HISTORY_MAX_EVENTS records (about 340 kB).
_HISTORY_CHUNK = 50
# A status whose push is still on its way: its record stays until the push settles.
_IN_FLIGHT = ("queued", "sent", "failed")

# KEYS: status records. ARGV: now, max age (s), then the in-flight statuses. A settled record
# older than the age goes; a younger one expires by its age at the latest (EXPIREAT ... LT never
# lengthens a TTL). Returns how many records went. Legacy hash records are left to their TTL.
_RECEIPTS = """
local now, age = tonumber(ARGV[1]), tonumber(ARGV[2])
local in_flight = {}
for i = 3, #ARGV do in_flight[ARGV[i]] = true end
local gone = 0
for _, key in ipairs(KEYS) do
  local record = redis.call('TYPE', key).ok == 'string' and redis.call('GET', key)
  if record then
    local at = tonumber(string.match(record, '^[^|]*|([^|]*)|'))
    local last = string.match(record, '([^\\n]*)$')
    local status = string.match(last, '^([^|]*)|')
    if at and status and not in_flight[status] then
      if at + age <= now then
        gone = gone + redis.call('DEL', key)
      else
        redis.call('EXPIREAT', key, math.ceil(at + age), 'LT')
      end
    end
  end
end
return gone
"""

# KEYS: an inbox stream. ARGV: the oldest entry id to keep. Returns the entries removed.
_INBOX = """
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return removed
"""

# KEYS: a user's history. ARGV: its length and SHA-1 when read, the records to keep of it.
# Appends since the read are kept; a history changed otherwise (trimmed, erased) is left for
# the next sweep (returns -1). Returns 1 when the history is left empty (and deleted), else 0.
_HISTORY = """
local n = tonumber(ARGV[1])
local now_len = redis.call('STRLEN', KEYS[1])
if now_len < n or redis.sha1hex(redis.call('GETRANGE', KEYS[1], 0, n - 1)) ~= ARGV[2] then
  return -1
end
local kept = ARGV[3] .. (now_len > n and redis.call('GETRANGE', KEYS[1], n, -1) or '')
if kept == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], kept)
return 0
"""


@dataclass(frozen=True)
class RetentionPolicy:
    """Ages in days after which the sweeper removes each kind of data; None keeps it by count."""

    events_days: int | None = None
    receipts_days: int | None = None
    inbox_days: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            days = getattr(self, f.name)
            if days is None:
                continue
            if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
                raise InvalidInputError(
                    f.name, f"give whole days from 1 to {MAX_DAYS}, or none, got {days!r}")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    @classmethod
    def from_json(cls, data: Any) -> RetentionPolicy:
        if not isinstance(data, dict):
            raise InvalidInputError("retention", f"give an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidInputError(
                "retention", f"unknown {unknown}; known are {[f.name for f in fields(cls)]}")
        return cls(**data)


@dataclass
class SweepReport:
    tenant_id: str
    at: float
    policy: dict[str, int | None]
    removed: dict[str, int] = field(default_factory=dict)
    # Histories changed by someone else mid-sweep, left for the next run.
    skipped_histories: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def get_policy(r: redis.Redis, tenant_id: str) -> RetentionPolicy:
    tenants.get_tenant(r, tenant_id)
    raw = r.hget(keys.retention(tenant_id), "policy")
    return RetentionPolicy.from_json(json.loads(raw)) if raw else RetentionPolicy()


def set_policy(r: redis.Redis, tenant_id: str, policy: RetentionPolicy) -> None:
    """Replace the tenant's policy; the next sweep applies it."""
    tenants.get_tenant(r, tenant_id)
    r.hset(keys.retention(tenant_id), "policy", json.dumps(asdict(policy)))


def last_sweep(r: redis.Redis, tenant_id: str) -> dict[str, Any] | None:
    raw = r.hget(keys.retention(tenant_id), "last_sweep")
    return json.loads(raw) if raw else None


def _scan(r: redis.Redis, prefix: str) -> list[str]:
    # The prefixes end in ':' and hold no glob characters (tenant ids are [a-z0-9_-]).
    return list(r.scan_iter(match=f"{prefix}*", count=_SCAN))


def _sweep_receipts(r: redis.Redis, tenant_id: str, now: float, age: int) -> tuple[int, int]:
    script = r.register_script(_RECEIPTS)
    found = _scan(r, keys.push_status_prefix(tenant_id))
    gone = sum(int(script(keys=found[i : i + _SCAN], args=[repr(now), age, *_IN_FLIGHT]))
               for i in range(0, len(found), _SCAN))
    # Exact (no ~): an approximate trim keeps whole nodes of old entries, up to 10,000 a call.
    dead = int(r.xtrim(keys.dead_letter_stream(tenant_id), minid=_min_id(now - age), approximate=False))
    return gone, dead


def _min_id(cutoff: float) -> str:
    return f"{max(0, math.floor(cutoff * 1000))}-0"


def _sweep_inboxes(r: redis.Redis, tenant_id: str, cutoff: float) -> int:
    script = r.register_script(_INBOX)
    return sum(int(script(keys=[key], args=[_min_id(cutoff)]))
               for key in _scan(r, keys.inbox_stream_prefix(tenant_id)))


def _sweep_histories(r: redis.Redis, tenant_id: str, cutoff: float) -> tuple[int, int, int]:
    """(records removed, histories emptied, histories skipped)."""
    script = r.register_script(_HISTORY)
    cutoff_ns = math.floor(cutoff * 1e6) * 1000
    removed = emptied = skipped = 0
    found = _scan(r, keys.user_history_prefix(tenant_id))
    for start in range(0, len(found), _HISTORY_CHUNK):
        chunk = found[start : start + _HISTORY_CHUNK]
        pipe = r.pipeline(transaction=False)
        for key in chunk:
            pipe.execute_command("GET", key, **{NEVER_DECODE: []})  # type: ignore[no-untyped-call]
        for key, raw in zip(chunk, pipe.execute(), strict=True):
            usable = len(raw or b"") // HISTORY_DTYPE.itemsize * HISTORY_DTYPE.itemsize
            if not usable:
                continue  # gone meanwhile, or damaged: the refresh reports a damaged history
            records = np.frombuffer(raw[:usable], dtype=HISTORY_DTYPE)
            keep = records["ns"] >= cutoff_ns
            if keep.all():
                continue
            kept = records[keep].tobytes() + raw[usable:]
            done = int(script(keys=[key], args=[len(raw), hashlib.sha1(raw).hexdigest(), kept]))
            if done < 0:
                skipped += 1
                continue
            removed += int((~keep).sum())
            emptied += done
    return removed, emptied, skipped


def sweep(r: redis.Redis, tenant_id: str, *, now: float | None = None,
          progress: Callable[[str], None] | None = None) -> SweepReport:
    """Remove the tenant's data older than its policy allows; what was removed, by kind."""
    policy = get_policy(r, tenant_id)
    now = time.time() if now is None else float(now)
    report = SweepReport(tenant_id=tenant_id, at=now, policy=asdict(policy))
    step = progress or (lambda _: None)
    if policy.events_days is not None:
        cutoff = now - policy.events_days * _DAY
        step("events")
        report.removed["events_in_stream"] = int(
            r.xtrim(keys.events_stream(tenant_id), minid=_min_id(cutoff), approximate=False))
        step("event histories")
        records, emptied, report.skipped_histories = _sweep_histories(r, tenant_id, cutoff)
        report.removed["history_events"] = records
        report.removed["histories_emptied"] = emptied
    if policy.receipts_days is not None:
        step("receipts")
        receipts, dead = _sweep_receipts(r, tenant_id, now, policy.receipts_days * _DAY)
        report.removed["receipts"] = receipts
        report.removed["dead_letters"] = dead
    if policy.inbox_days is not None:
        step("inboxes")
        report.removed["inbox_entries"] = _sweep_inboxes(r, tenant_id, now - policy.inbox_days * _DAY)
    r.hset(keys.retention(tenant_id), "last_sweep", json.dumps(report.as_json()))
    return report
