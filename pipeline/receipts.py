"""Push status records: each push's trail of statuses, and per-tenant counters.

A push's record is one string, ``keys.push_status(tenant, push)``, that expires after a retention
period: its trail, one line per status reached, ``<status>|<at>|<json of extra fields>``, oldest
first. Enqueue creates it with ``SET NX EX`` (so it is also the push id's idempotency guard, see
outbox) and each later status is one ``APPEND``: a status costs the server one small write. Marking a
status is idempotent: the first mark of (push, status) records it and bumps
``keys.status_counts(tenant)``, later ones do nothing. The enqueue and delivery scripts write the
record in the same Lua call as the outbox or inbox entry it describes, so a status never disagrees
with the streams. A channel push's retry state lives beside it in ``keys.push_retry``.

Records written by versions before 0.2 are hashes (one ``trail:<status>`` field per status); a
script that meets one rewrites it as a string first (``load_record``), and ``status_trail``
reads both, so an upgrade needs no migration step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
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
    "InboxAck",
    "ack_inbox",
    "is_entry_id",
    "status_trail",
    "parse_trail",
    "status_trails",
    "current_statuses",
    "status_counts",
]

log = logging.getLogger(__name__)

STATUSES = ("queued", "sent", "delivered", "acked", "opened", "suppressed", "failed", "dead")
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600

_MARK_LUA = """
-- A legacy hash record (trail:<status> = '<seq>|<at>|<extra>') becomes the string record,
-- keeping its TTL; the record is returned (false when there is none).
local function load_record(status_key)
  local record = redis.pcall('GET', status_key)
  if type(record) ~= 'table' or not record.err then return record end
  if redis.call('TYPE', status_key).ok ~= 'hash' then return redis.call('GET', status_key) end
  local flat, trail = redis.call('HGETALL', status_key), {}
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 6) == 'trail:' then
      local seq, rest = string.match(flat[i + 1], '^(%d+)|(.*)$')
      if seq then trail[#trail + 1] = {tonumber(seq), string.sub(flat[i], 7) .. '|' .. rest} end
    end
  end
  table.sort(trail, function(a, b) return a[1] < b[1] end)
  local lines = {}
  for _, pair in ipairs(trail) do lines[#lines + 1] = pair[2] end
  -- A hash without a trail (an old webhook retry state) still guards its id: it stays as it is
  -- until the first status, whose write replaces it.
  if #lines == 0 then return false end
  local ttl = redis.call('PTTL', status_key)
  redis.call('DEL', status_key)
  record = table.concat(lines, '\\n')
  redis.call('SET', status_key, record)
  if ttl > 0 then redis.call('PEXPIRE', status_key, ttl) end
  return record
end
local function has_status(record, status)
  return record and string.find('\\n' .. record, '\\n' .. status .. '|', 1, true) ~= nil
end
-- Appends the status unless the trail has it; a record that had expired starts again.
local function mark(status_key, counts_key, status, now, extra)
  local record = load_record(status_key)
  if has_status(record, status) then return 0 end
  local line = status .. '|' .. now .. '|' .. extra
  if record then
    redis.call('APPEND', status_key, '\\n' .. line)
  else
    redis.call('SET', status_key, line)
  end
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
if not load_record(KEYS[1]) then return -1 end
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
  if load_record(KEYS[i]) then
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


_ENTRY_ID = re.compile(r"\d{1,19}-\d{1,19}")


def is_entry_id(value: object) -> bool:
    """Whether `value` is a stream entry id (``<ms>-<seq>``), the only cursor a device may set."""
    return isinstance(value, str) and _ENTRY_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class InboxAck:
    """A device's ``{"ack": entry_id, "push_id": push_id}`` on the inbox socket of `user_id`."""

    user_id: str
    entry_id: str
    push_id: str = ""


# An ack counts only for an entry of the acking user's own inbox, and marks only the push that
# entry carries: a device cannot ack another user's push, nor set its cursor to an id that is not
# in its inbox. The cursor only moves forward.
# KEYS: counts, then per ack: inbox stream, cursor, status; ARGV: now, retention, then per ack:
# entry id, push id. Returns {cursors moved, pushes newly acked}.
_ACK_INBOX_SCRIPT = StatusScript("""
local function later(a, b)  -- whether stream id a comes after b (b unreadable: yes)
  local bms, bseq = string.match(b or '', '^(%d+)-(%d+)$')
  if not bms then return true end
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  return ams > bms or (ams == bms and tonumber(aseq) > tonumber(bseq))
end
local moved, acked = 0, 0
for i = 2, #KEYS, 3 do
  local n = (i - 2) / 3
  local entry_id, push_id = ARGV[3 + 2 * n], ARGV[4 + 2 * n]
  local entry = redis.call('XRANGE', KEYS[i], entry_id, entry_id)
  if #entry == 1 then
    if later(entry_id, redis.call('GET', KEYS[i + 1])) then
      redis.call('SET', KEYS[i + 1], entry_id)
      moved = moved + 1
    end
    local fields = entry[1][2]
    for j = 1, #fields, 2 do
      if fields[j] == 'push_id' and push_id ~= '' and fields[j + 1] == push_id
          and load_record(KEYS[i + 2]) then
        acked = acked + mark(KEYS[i + 2], KEYS[1], 'acked', ARGV[1], '')
        retain(KEYS[i + 2], ARGV[2])
      end
    end
  end
end
return {moved, acked}
""")


def ack_inbox(
    r: redis.Redis,
    tenant_id: str,
    acks: Sequence[InboxAck],
    *,
    at: float | None = None,
    retention_seconds: int = DEFAULT_RETENTION_SECONDS,
) -> tuple[int, int]:
    """Apply devices' acks of one tenant: (cursors moved, pushes newly marked acked).

    An ack whose entry id is not an entry of that user's inbox, or whose push id is not the
    push that entry carries, changes nothing (a device acks only its own pushes). Acks that
    cannot name a key at all are dropped here; a script call per 300.
    """
    at = time.time() if at is None else at
    call_keys: list[str] = []
    call_args: list[str] = []
    for ack in acks:
        if not is_entry_id(ack.entry_id):
            continue
        try:
            named = [keys.inbox_stream(tenant_id, ack.user_id),
                     keys.inbox_cursor(tenant_id, ack.user_id),
                     keys.push_status(tenant_id, ack.push_id or "-")]
        except ValueError:
            continue
        call_keys += named
        call_args += [ack.entry_id, ack.push_id]
    calls: list[ScriptCall] = [
        (_ACK_INBOX_SCRIPT, [keys.status_counts(tenant_id), *call_keys[start : start + 900]],
         [repr(at), retention_seconds, *call_args[start // 3 * 2 : (start + 900) // 3 * 2]])
        for start in range(0, len(call_keys), 900)
    ]
    moved = acked = 0
    for result in run_scripts(r, calls):
        if isinstance(result, Exception):
            raise result
        moved += int(result[0])
        acked += int(result[1])
    return moved, acked


def status_trail(r: redis.Redis, tenant_id: str, push_id: str) -> list[dict[str, Any]] | None:
    """``[{"status": ..., "at": epoch_s, ...}]``, oldest first; None if unknown to the tenant."""
    status_key = _status_key(tenant_id, push_id)
    for _ in range(3):  # a script may convert a legacy record between the two reads
        try:
            record = r.get(status_key)
            return None if record is None else parse_trail(record)
        except redis.ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
        try:
            return _legacy_trail(r.hgetall(status_key))
        except redis.ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
    raise redis.ResponseError(f"status record {status_key!r} changed type under three reads")


def parse_trail(record: str) -> list[dict[str, Any]]:
    """A status record's trail, as ``status_trail`` returns it; a damaged line is logged and
    left out rather than hiding the rest."""
    trail = []
    for line in record.split("\n"):
        if not line:
            continue
        try:
            status, at, extra = line.split("|", 2)
            fields = json.loads(extra) if extra else {}
            if not isinstance(fields, dict):
                raise ValueError("the extra fields are not an object")
            trail.append({**fields, "status": status, "at": float(at)})
        except ValueError as e:
            log.warning("skipping a damaged status line %r: %s", line[:200], e)
    return trail


def status_trails(r: redis.Redis, tenant_id: str,
                  push_ids: Sequence[str]) -> list[list[dict[str, Any]] | None]:
    """``status_trail`` of many pushes of one tenant, read in one pipeline."""
    pipe = r.pipeline(transaction=False)
    for push_id in push_ids:
        pipe.get(_status_key(tenant_id, push_id))
    trails: list[list[dict[str, Any]] | None] = []
    for push_id, record in zip(push_ids, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(record, redis.ResponseError) and "WRONGTYPE" in str(record):
            trails.append(status_trail(r, tenant_id, push_id))  # an older version's hash
        elif isinstance(record, Exception):
            raise record
        else:
            trails.append(None if record is None else parse_trail(record))
    return trails


def current_statuses(r: redis.Redis, tenant_id: str,
                     push_ids: Sequence[str]) -> list[str | None]:
    """Each push's latest status (None if unknown to the tenant), read in one pipeline."""
    return [trail[-1]["status"] if trail else None
            for trail in status_trails(r, tenant_id, push_ids)]


def _legacy_trail(record: dict[str, str]) -> list[dict[str, Any]] | None:
    trail = []
    for name, value in record.items():
        if not name.startswith("trail:"):
            continue
        try:
            seq, line = value.split("|", 1)
            [entry] = parse_trail(f"{name.removeprefix('trail:')}|{line}")
            trail.append((int(seq), entry))
        except ValueError as e:  # parse_trail logged a damaged line; this is a damaged seq
            log.warning("skipping a damaged legacy status field %r: %s", name, e)
    return [entry for _, entry in sorted(trail, key=lambda pair: pair[0])] or None


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
