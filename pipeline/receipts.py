"""Push status records: each push's trail of statuses, and per-tenant counters.

A push's record is one hash, ``keys.push_status(tenant, push)``, that expires after a retention
period. Besides a few attributes (``user_id``, ``inbox_id``, ``tries``...) it holds one
field per status reached, ``trail:<status>`` = ``<seq>|<at>|<json of extra fields>``; ``n`` counts
them, so the trail reads back in the order it was written. Marking a status is idempotent: the
first mark of (push, status) records it and bumps ``keys.status_counts(tenant)``, later ones do
nothing. The enqueue and delivery scripts write the record in the same Lua call as the outbox or
inbox entry it describes (the delivery scripts inline ``mark`` on their hot path), so a status never
disagrees with the streams. The record is also the push id's idempotency guard (see outbox).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import NoScriptError

from pipeline import keys
from pipeline.durability import add_replica_wait, check_replica_wait
from pipeline.errors import InvalidInputError

__all__ = [
    "STATUSES",
    "DEFAULT_RETENTION_SECONDS",
    "StatusScript",
    "run_scripts",
    "NotDurableError",
    "mark_many",
    "mark",
    "status_trail",
    "status_counts",
]

log = logging.getLogger(__name__)

STATUSES = ("queued", "sent", "delivered", "acked", "opened", "suppressed", "failed", "dead")
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600

_MARK_LUA = """
local function mark(status_key, counts_key, status, now, extra)
  local field = 'trail:' .. status
  if redis.call('HEXISTS', status_key, field) == 1 then return 0 end
  local n = redis.call('HINCRBY', status_key, 'n', 1)
  redis.call('HSET', status_key, field, n .. '|' .. now .. '|' .. extra, 'status', status)
  redis.call('HINCRBY', counts_key, status, 1)
  return 1
end
-- Only ever lengthens the retention: a record without a TTL gets one.
local function retain(status_key, seconds)
  if redis.call('TTL', status_key) < tonumber(seconds) then
    redis.call('EXPIRE', status_key, seconds)
  end
end
"""


@dataclass(frozen=True)
class StatusScript:
    """A Lua script that may call ``mark`` and ``retain`` on status records."""

    body: str
    source: str = field(init=False)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # Frozen dataclass, so use object.__setattr__; computed once, used on every call.
        source = _MARK_LUA + self.body
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "sha", hashlib.sha1(source.encode()).hexdigest())


ScriptCall = tuple[StatusScript, Sequence[str], Sequence[str | int | float]]


def run_scripts(
    r: redis.Redis, calls: Sequence[ScriptCall], *, wait_aof_ms: int | None = None,
    replicas_to_wait: int = 0, replica_wait_ms: int = 1000,
) -> list[Any]:
    """Run script calls in one pipeline (EVALSHA); errors come back in place of results.

    A call that met NOSCRIPT did not run, so after loading the script it is simply sent again.
    With ``wait_aof_ms``, each pipeline ends with ``WAITAOF 1 0 <ms>`` on the same connection,
    so the calls return only once the server has fsynced their writes to its AOF (a timeout
    raises ``NotDurableError``; a server without AOF is logged once per call and not waited
    for). With ``replicas_to_wait``, the pipeline then ends with ``WAIT n <ms>``: the calls
    return only once that many replicas hold their writes, else ``NotReplicatedError``.
    """
    if not calls:
        return []
    results = _evalsha_pipeline(r, calls, wait_aof_ms, replicas_to_wait, replica_wait_ms)
    missing = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
    if missing:
        for script in {calls[i][0] for i in missing}:
            r.script_load(script.source)
        retried = _evalsha_pipeline(r, [calls[i] for i in missing], wait_aof_ms,
                                    replicas_to_wait, replica_wait_ms)
        for i, res in zip(missing, retried, strict=True):
            results[i] = res
    return results


class NotDurableError(redis.RedisError):
    """The server did not fsync the writes within the wait; they may be lost on a crash."""


def _evalsha_pipeline(
    r: redis.Redis, calls: Sequence[ScriptCall], wait_aof_ms: int | None = None,
    replicas_to_wait: int = 0, replica_wait_ms: int = 1000,
) -> list[Any]:
    pipe = r.pipeline(transaction=False)
    for script, script_keys, args in calls:
        pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
    if wait_aof_ms is not None:
        pipe.execute_command("WAITAOF", 1, 0, wait_aof_ms)
    # WAIT counts replicas holding this connection's writes, so it rides the same pipeline.
    has_replica_wait = add_replica_wait(pipe, replicas_to_wait, replica_wait_ms)
    results = list(pipe.execute(raise_on_error=False))
    replicated = results.pop() if has_replica_wait else None
    if wait_aof_ms is not None:
        fsynced = results.pop()
        if isinstance(fsynced, redis.ResponseError) and "appendonly" in str(fsynced).lower():
            # A server without AOF cannot promise more than it does; the writes themselves ran.
            log.warning("WAITAOF unavailable (%s); writes are not fsynced before the ack", fsynced)
        elif isinstance(fsynced, Exception):
            raise fsynced
        elif int(fsynced[0]) < 1:
            raise NotDurableError(f"the server did not fsync within {wait_aof_ms} ms")
    if has_replica_wait:
        check_replica_wait(replicated, replicas_to_wait, replica_wait_ms)
    return results


_MARK_SCRIPT = StatusScript("""
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local marked = mark(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4])
retain(KEYS[1], ARGV[3])
return marked
""")


def mark(
    r: redis.Redis,
    tenant_id: str,
    push_id: str,
    status: str,
    *,
    at: float | None = None,
    retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    **fields: str,
) -> bool:
    """Append a status to the push's trail; False if it was there already or the push is unknown."""
    if status not in STATUSES:
        raise InvalidInputError("status", f"must be one of {STATUSES}, got {status!r}")
    reserved = {"status", "at"} & fields.keys()
    if reserved:
        raise InvalidInputError("fields", f"{sorted(reserved)} are set by mark itself")
    status_key = _status_key(tenant_id, push_id)
    at = time.time() if at is None else at
    extra = json.dumps(fields, separators=(",", ":")) if fields else ""
    (result,) = run_scripts(
        r,
        [(_MARK_SCRIPT, [status_key, keys.status_counts(tenant_id)],
          [status, repr(at), retention_seconds, extra])],
    )
    if isinstance(result, Exception):
        raise result
    return bool(result == 1)


# KEYS: counts, then per push: status; ARGV: status, now, retention. Returns how many were new.
_MARK_MANY_SCRIPT = StatusScript("""
local marked = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    marked = marked + mark(KEYS[i], KEYS[1], ARGV[1], ARGV[2], '')
    retain(KEYS[i], ARGV[3])
  end
end
return marked
""")


def mark_many(
    r: redis.Redis,
    tenant_id: str,
    push_ids: Sequence[str],
    status: str,
    *,
    at: float | None = None,
    retention_seconds: int = DEFAULT_RETENTION_SECONDS,
) -> int:
    """``mark`` for many pushes of one tenant, a script call per 500; returns the new marks."""
    if status not in STATUSES:
        raise InvalidInputError("status", f"must be one of {STATUSES}, got {status!r}")
    at = time.time() if at is None else at
    status_keys = [_status_key(tenant_id, push_id) for push_id in push_ids]
    calls: list[ScriptCall] = [
        (_MARK_MANY_SCRIPT, [keys.status_counts(tenant_id), *status_keys[start : start + 500]],
         [status, repr(at), retention_seconds])
        for start in range(0, len(status_keys), 500)
    ]
    marked = 0
    for result in run_scripts(r, calls):
        if isinstance(result, Exception):
            raise result
        marked += int(result)
    return marked


def status_trail(r: redis.Redis, tenant_id: str, push_id: str) -> list[dict[str, Any]] | None:
    """``[{"status": ..., "at": epoch_s, ...}]``, oldest first; None if unknown to the tenant."""
    record = r.hgetall(_status_key(tenant_id, push_id))
    if not record:
        return None
    trail = []
    for name, value in record.items():
        if not name.startswith("trail:"):
            continue
        seq, at, extra = value.split("|", 2)
        entry: dict[str, Any] = {"status": name.removeprefix("trail:"), "at": float(at)}
        if extra:
            entry.update(json.loads(extra))
        trail.append((int(seq), entry))
    return [entry for _, entry in sorted(trail, key=lambda pair: pair[0])]


def status_counts(r: redis.Redis, tenant_id: str) -> dict[str, int]:
    """How many of the tenant's pushes reached each status (every status present, 0 if none)."""
    counts = r.hgetall(keys.status_counts(tenant_id))
    return {status: int(counts.get(status, 0)) for status in STATUSES}


def _status_key(tenant_id: str, push_id: str) -> str:
    try:
        keys.validate_tenant_id(tenant_id)
    except ValueError as e:
        raise InvalidInputError("tenant_id", str(e)) from None
    try:
        return keys.push_status(tenant_id, push_id)
    except ValueError as e:
        raise InvalidInputError("push_id", str(e)) from None
