"""Delivery workers: read the outboxes as one consumer group and deliver each push.

At least once inside, exactly once at the user: an entry is acknowledged in the same Lua script
that delivers it, and a push whose status record already holds an inbox id is only acknowledged,
so an entry claimed again from a dead worker (``XAUTOCLAIM``) never reaches the inbox twice.
Each pass serves the tenants in turn, transactional lanes before marketing ones, and reads at most
``batch`` new entries per stream, so one tenant's backlog cannot starve another.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from pipeline import keys
from pipeline.receipts import DEFAULT_RETENTION_SECONDS, ScriptCall, StatusScript, run_scripts

__all__ = ["GROUP", "DeliveryWorker"]

log = logging.getLogger(__name__)

GROUP = "delivery"
_MAX_BACKOFF_MS = 3_600_000
# Pushes per delivery script: bigger chunks are faster, smaller ones block the server less.
_CHUNK = 200

# Delivers a chunk of one outbox stream's inbox pushes; atomic, so atomic per push too.
# KEYS: counts, outbox, inbox channel, then per push: status, inbox
# ARGV: now, retention, inbox max len, is_acking ('1'/'0'), then per push: entry id, user, push,
#       title, body, data, enqueued_at, campaign
# Returns how many entries it handled.
_DELIVER_INBOX = StatusScript("""
local now, retention, max_len = ARGV[1], ARGV[2], ARGV[3]
local entry_ids, announced, delivered = {}, {}, 0
for i = 0, (#KEYS - 3) / 2 - 1 do
  local status_key, inbox_key, a = KEYS[4 + 2 * i], KEYS[5 + 2 * i], 4 + 8 * i
  local user = ARGV[a + 2]
  local record = redis.call('HMGET', status_key, 'inbox_id', 'n')
  -- An inbox id means an earlier attempt delivered it and died before acking: ack only.
  if not record[1] then
    local inbox_id = redis.call('XADD', inbox_key, 'MAXLEN', '~', max_len, '*',
      'push_id', ARGV[a + 3], 'title', ARGV[a + 4], 'body', ARGV[a + 5], 'data', ARGV[a + 6],
      'enqueued_at', ARGV[a + 7], 'campaign_id', ARGV[a + 8])
    -- mark() inlined: this is the hot path, and an absent inbox id means no delivered trail.
    local n = (tonumber(record[2]) or 0) + 1
    local trail = n .. '|' .. now .. '|{"inbox_id":"' .. inbox_id .. '"}'
    redis.call('HSET', status_key, 'inbox_id', inbox_id, 'n', n,
      'status', 'delivered', 'trail:delivered', trail)
    -- Retention counts from enqueue, which set the TTL; a record that had expired is new now.
    if not record[2] then
      redis.call('HSET', status_key, 'user_id', user)
      redis.call('EXPIRE', status_key, retention)
    end
    delivered = delivered + 1
    -- The gateway reads the user's whole inbox on a message, so one per user is enough.
    if not announced[user] then
      announced[user] = true
      redis.call('PUBLISH', KEYS[3], user)
    end
  end
  entry_ids[#entry_ids + 1] = ARGV[a + 1]
end
if delivered > 0 then redis.call('HINCRBY', KEYS[1], 'delivered', delivered) end
if ARGV[4] == '1' then
  redis.call('XACK', KEYS[2], 'delivery', unpack(entry_ids))
  redis.call('XDEL', KEYS[2], unpack(entry_ids))
end
return #entry_ids
""")

# KEYS: status, counts, outbox, dead-letter stream
# ARGV: entry id, now, retention, max tries, reason, push id, base backoff ms, jitter (0.5-1),
#       entry JSON
# Returns -1 while the push waits out its backoff, 0 when it will be retried, 1 when dead.
_FAIL = StatusScript("""
if redis.call('HEXISTS', KEYS[1], 'trail:dead') == 0 then
  local retry_at = redis.call('HGET', KEYS[1], 'retry_at')
  if retry_at and tonumber(ARGV[2]) < tonumber(retry_at) then return -1 end
  local tries = redis.call('HINCRBY', KEYS[1], 'tries', 1)
  redis.call('HSET', KEYS[1], 'last_error', ARGV[5])
  retain(KEYS[1], ARGV[3])
  if tries < tonumber(ARGV[4]) then
    local backoff_ms = math.min(tonumber(ARGV[7]) * 2 ^ (tries - 1), MAX_BACKOFF_MS)
      * tonumber(ARGV[8])
    redis.call('HSET', KEYS[1], 'retry_at', tostring(tonumber(ARGV[2]) + backoff_ms / 1000))
    return 0
  end
  redis.call('XADD', KEYS[4], '*', 'push_id', ARGV[6], 'reason', ARGV[5], 'tries', tries,
             'at', ARGV[2], 'entry', ARGV[9])
  redis.call('HDEL', KEYS[1], 'retry_at')
  mark(KEYS[1], KEYS[2], 'dead', ARGV[2], cjson.encode({reason = ARGV[5], tries = tries}))
end
redis.call('XACK', KEYS[3], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
return 1
""".replace("MAX_BACKOFF_MS", str(_MAX_BACKOFF_MS)))

# An entry whose fields cannot even name its keys: dead-lettered at once, with no status record.
# KEYS: outbox, dead-letter stream; ARGV: entry id, now, reason, entry JSON
_DEAD_MALFORMED = StatusScript("""
redis.call('XADD', KEYS[2], '*', 'push_id', '', 'reason', ARGV[3], 'tries', 1,
           'at', ARGV[2], 'entry', ARGV[4])
redis.call('XACK', KEYS[1], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
""")

_Entry = tuple[str, dict[str, str]]


class DeliveryWorker:
    """One consumer of the ``delivery`` group; run many, in processes or machines, to scale."""

    def __init__(
        self,
        r: redis.Redis,
        tenants: Callable[[], Sequence[str]] | Sequence[str],
        *,
        consumer: str,
        inbox_max_len: int = 1000,
        claim_idle_ms: int = 30_000,
        max_tries: int = 5,
        batch: int = 500,
        retry_base_ms: int | None = None,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    ):
        if not consumer:
            raise ValueError("consumer must name this worker, e.g. '<host>-<pid>'")
        for name, value in (("inbox_max_len", inbox_max_len), ("max_tries", max_tries),
                            ("batch", batch)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if claim_idle_ms < 0:
            raise ValueError(f"claim_idle_ms must be >= 0, got {claim_idle_ms}")
        self.r = r
        self._tenants = tenants
        self.consumer = consumer
        self.inbox_max_len = inbox_max_len
        self.claim_idle_ms = claim_idle_ms
        self.max_tries = max_tries
        self.batch = batch
        # A failed entry is only seen again once claimed, so backoffs below claim_idle_ms
        # round up to it anyway.
        self.retry_base_ms = claim_idle_ms if retry_base_ms is None else retry_base_ms
        self.retention_seconds = retention_seconds
        self._turn = 0
        self._streams_with_group: set[str] = set()
        self._claim_cursors: dict[str, str] = {}
        # Fault injection for tests: a worker that delivers and then dies before acking.
        self._is_acking = True

    def run(self, stop: threading.Event, block_ms: int = 200) -> None:
        """Deliver until ``stop`` is set, blocking up to ``block_ms`` whenever idle."""
        while not stop.is_set():
            try:
                self.deliver_once(block_ms=block_ms)
            except redis.ConnectionError:
                log.exception("lost Redis; retrying in a second")
                stop.wait(1.0)

    def deliver_once(self, block_ms: int = 0) -> int:
        """One pass over every tenant; returns how many pushes were handled."""
        streams = self._streams()
        if not streams:
            return 0
        try:
            work = self._read(streams, block_ms)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # A stream was deleted under us (e.g. a tenant was purged): recreate and read again.
            self._streams_with_group.clear()
            self._ensure_groups(streams)
            work = self._read(streams, block_ms)
        return self._deliver(work)

    def _tenant_ids(self) -> list[str]:
        tenants = list(self._tenants() if callable(self._tenants) else self._tenants)
        if not tenants:
            return []
        self._turn = (self._turn + 1) % len(tenants)
        return tenants[self._turn :] + tenants[: self._turn]

    def _streams(self) -> list[tuple[str, str]]:
        """(tenant, stream) pairs: every tenant's transactional lane, then the marketing lanes."""
        tenants = self._tenant_ids()
        streams = [(t, keys.outbox_stream(t, lane)) for lane in keys.LANES for t in tenants]
        self._ensure_groups(streams)
        return streams

    def _ensure_groups(self, streams: Sequence[tuple[str, str]]) -> None:
        for _, stream in streams:
            if stream in self._streams_with_group:
                continue
            try:
                self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):  # the group surviving a restart is normal
                    raise
            self._streams_with_group.add(stream)

    def _read(
        self, streams: Sequence[tuple[str, str]], block_ms: int
    ) -> list[tuple[str, str, _Entry]]:
        """Claimed and new entries as (tenant, stream, entry), in delivery order."""
        pipe = self.r.pipeline(transaction=False)
        for _, stream in streams:
            pipe.xautoclaim(stream, GROUP, self.consumer, min_idle_time=self.claim_idle_ms,
                            start_id=self._claim_cursors.get(stream, "0-0"), count=self.batch)
        pipe.xreadgroup(GROUP, self.consumer, {s: ">" for _, s in streams}, count=self.batch)
        *claims, fresh = pipe.execute()
        claimed: dict[str, list[_Entry]] = {}
        for (_, stream), (cursor, entries, *_deleted) in zip(streams, claims, strict=True):
            self._claim_cursors[stream] = cursor
            claimed[stream] = entries
        new = _by_stream(fresh)
        if block_ms > 0 and not any(claimed.values()) and not new:
            new = _by_stream(self.r.xreadgroup(GROUP, self.consumer, {s: ">" for _, s in streams},
                                               count=self.batch, block=block_ms))
        return [
            (tenant_id, stream, entry)
            for tenant_id, stream in streams
            for entry in (*claimed[stream], *new.get(stream, ()))
        ]

    def _deliver(self, work: Sequence[tuple[str, str, _Entry]]) -> int:
        if not work:
            return 0
        now = repr(time.time())
        calls: list[ScriptCall] = []
        sizes: list[int] = []  # entries per call
        for (tenant_id, stream), group in itertools.groupby(work, key=lambda w: w[:2]):
            inbox: list[_Entry] = []
            for _, _, entry in group:
                call = self._call_unless_inbox(tenant_id, stream, entry, now)
                if call is None:
                    inbox.append(entry)
                else:
                    calls.append(call)
                    sizes.append(1)
            for start in range(0, len(inbox), _CHUNK):
                chunk = inbox[start : start + _CHUNK]
                calls.append(self._inbox_call(tenant_id, stream, chunk, now))
                sizes.append(len(chunk))
        handled = 0
        for call, size, result in zip(calls, sizes, run_scripts(self.r, calls), strict=True):
            if isinstance(result, Exception) and size > 1:
                # One bad push must not hold back its chunk: deliver them one by one.
                handled += self._deliver_one_by_one(call, now)
            elif isinstance(result, Exception):
                # The entry stays pending and is claimed again; it is not lost.
                log.error("delivering in %s failed: %s", call[1][1], result)
            elif result != -1:
                handled += size
        return handled

    def _deliver_one_by_one(self, call: ScriptCall, now: str) -> int:
        script, script_keys, args = call
        head_keys, head_args = list(script_keys[:3]), list(args[:4])
        singles: list[ScriptCall] = [
            (script, [*head_keys, *script_keys[3 + 2 * i : 5 + 2 * i]],
             [*head_args, *args[4 + 8 * i : 12 + 8 * i]])
            for i in range((len(script_keys) - 3) // 2)
        ]
        handled = 0
        for single, result in zip(singles, run_scripts(self.r, singles), strict=True):
            if isinstance(result, Exception):
                log.error("delivering entry %s failed: %s", single[2][4], result)
            else:
                handled += 1
        return handled

    def _inbox_call(
        self, tenant_id: str, stream: str, entries: Sequence[_Entry], now: str
    ) -> ScriptCall:
        script_keys = [keys.status_counts(tenant_id), stream, keys.inbox_channel(tenant_id)]
        args: list[str | int | float] = [now, self.retention_seconds, self.inbox_max_len,
                                         "1" if self._is_acking else "0"]
        for entry_id, fields in entries:
            user_id, push_id = fields["user_id"], fields["push_id"]
            script_keys += [keys.push_status(tenant_id, push_id),
                            keys.inbox_stream(tenant_id, user_id)]
            args += [entry_id, user_id, push_id, fields.get("title", ""), fields.get("body", ""),
                     fields.get("data", "{}"), fields.get("enqueued_at", ""),
                     fields.get("campaign_id", "")]
        return _DELIVER_INBOX, script_keys, args

    def _call_unless_inbox(
        self, tenant_id: str, stream: str, entry: _Entry, now: str
    ) -> ScriptCall | None:
        """The call that handles an entry, or None for a well-formed inbox push (done in chunks)."""
        entry_id, fields = entry
        push_id, user_id = fields.get("push_id", ""), fields.get("user_id", "")
        try:
            status_key = keys.push_status(tenant_id, push_id)
            keys.inbox_stream(tenant_id, user_id)
        except ValueError as e:
            return (_DEAD_MALFORMED, [stream, keys.dead_letter_stream(tenant_id)],
                    [entry_id, now, f"malformed outbox entry: {e}", json.dumps(fields)])
        channel = fields.get("channel", "")
        if channel == "inbox":
            return None
        return (
            _FAIL,
            [status_key, keys.status_counts(tenant_id), stream, keys.dead_letter_stream(tenant_id)],
            [entry_id, now, self.retention_seconds, self.max_tries,
             f"no sender for channel {channel!r}", push_id, self.retry_base_ms,
             random.uniform(0.5, 1.0), json.dumps(fields)],
        )


def _by_stream(reply: Any) -> dict[str, list[_Entry]]:
    """XREADGROUP's reply as {stream: entries}, whether it came as RESP2 or RESP3."""
    if not reply:
        return {}
    if isinstance(reply, dict):  # RESP3: {stream: [entries]}
        return {stream: list(value[0]) if value else [] for stream, value in reply.items()}
    return {stream: list(entries) for stream, entries in reply}
