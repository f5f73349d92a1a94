"""Delivery workers: read the outboxes as one consumer group and deliver each push.

At least once inside, exactly once at the user: an entry is acknowledged in the same Lua script
that delivers it, and a push whose status record already says delivered is only acknowledged,
so an entry claimed again from a dead worker (``XAUTOCLAIM``) never reaches the inbox twice.
Each pass serves the tenants in turn (weighted round robin: ``batch`` times the plan's
``delivery_weight`` new entries per tenant at most), transactional lanes before marketing ones, so
one tenant's backlog cannot starve another. A tenant's plan
bounds its send rate (a token bucket taken in the same script that reads its entries) and, for
marketing pushes, the pushes per user per day and week and the quiet hours in the user's time
zone; a push a rule stops ends as "suppressed" with the rule in its trail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis

from pipeline import consent, keys, receipts, subjects
from pipeline.atrest import Sealer
from pipeline.channels import Channel, SendResult
from pipeline.channels.webhook import WebhookChannel
from pipeline.outbox import entry_message
from pipeline.ratelimit import BUCKET_LUA
from pipeline.receipts import (
    DEFAULT_RETENTION_SECONDS,
    ScriptCall,
    StatusScript,
    run_scripts,
)
from pipeline.tenants import Plan

__all__ = ["GROUP", "DeliveryWorker"]

log = logging.getLogger(__name__)

GROUP = "delivery"
_MAX_BACKOFF_MS = 3_600_000
# Pushes per delivery script: bigger chunks are faster, smaller ones block the server less.
_CHUNK = 200
# Entries a pass takes from a tenant at most, whatever its plan's delivery_weight.
_MAX_READ = 4000
# Policies that stop a marketing push whatever its channel, by the rule its trail names.
_BLOCKING_RULES = {"x": "quarantine", "n": "consent"}
# How long a pass that found only a few pushes waits before the next (see run).
_LINGER_SECONDS = 0.002

# An entry no longer in its outbox was taken back while a worker held it (an erasure deletes
# the user's entries): nothing of it may be written again, so the worker only acknowledges it.
_TAKEN_BACK_LUA = """
local function is_taken_back(outbox, entry_id)
  return #redis.call('XRANGE', outbox, entry_id, entry_id) == 0
end
"""

# Shared by both inbox scripts. ``call`` is redis.call or redis.pcall.
_INBOX_LUA = """
-- A push's inbox entry: its id and its message, which the gateway sends on as it is.
local function append_inbox(call, key, max_len, push, message)
  return call('XADD', key, 'MAXLEN', '~', max_len, '*', 'push_id', push, 'm', message)
end
-- Whether an earlier attempt ended the push already: delivered, or suppressed by a rule.
local function is_final(record)
  if not record or (string.sub(record, 1, 7) == 'queued|'
                    and not string.find(record, '\\n', 1, true)) then
    return false  -- the usual case, a lone "queued", told without building strings
  end
  return has_status(record, 'delivered') or has_status(record, 'suppressed')
end
-- The gateway reads the user's whole inbox on an announcement, so once per user is enough.
local function announce(announced, user)
  if not announced[user] then
    announced[user] = true
    announced[#announced + 1] = user
  end
end
-- mark() inlined for the hot path, the record read already and the status new: one APPEND.
-- Retention counts from enqueue, which set the TTL; a record that had expired is new now.
local function append_status(call, status_key, record, line, retention)
  if record then return call('APPEND', status_key, '\\n' .. line) end
  return call('SET', status_key, line, 'EX', retention)
end
-- The tenant's counts, and one message for the gateway: user ids separated by newlines
-- (which no user id holds).
local function finish(counts_key, channel_key, delivered, suppressed, announced)
  if delivered > 0 then
    redis.call('HINCRBY', counts_key, 'delivered', delivered)
    redis.call('PUBLISH', channel_key, table.concat(announced, '\\n'))
  end
  if suppressed > 0 then redis.call('HINCRBY', counts_key, 'suppressed', suppressed) end
end
"""

# Delivers a chunk of one outbox stream's inbox pushes; atomic, so atomic per push too.
# KEYS: counts, outbox, inbox channel, then per push: status, inbox, user frequency
# ARGV: now, retention, inbox max len, is_acking ('1'/'0'), then per push: entry id, user, push,
#       message, policy ('' none; 'x' quarantined by the guard; 'n' marketing consent taken back;
#       'q' quiet hours now;
#       'c|<day field>|<week field>|<cap per day>|<cap per week>' frequency caps)
# Returns how many entries it handled.
_DELIVER_INBOX = StatusScript(_INBOX_LUA + _TAKEN_BACK_LUA + """
local now, retention, max_len = ARGV[1], ARGV[2], ARGV[3]
local entry_ids, announced, delivered, suppressed = {}, {}, 0, 0
for i = 0, (#KEYS - 3) / 3 - 1 do
  local status_key, inbox_key, freq_key = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local a = 4 + 5 * i
  local user, policy = ARGV[a + 2], ARGV[a + 5]
  local record = load_record(status_key)
  -- An earlier attempt that delivered or suppressed it died before acking: ack only.
  if not is_final(record) and not is_taken_back(KEYS[2], ARGV[a + 1]) then
    local rule = false
    if policy == 'x' then
      rule = 'quarantine'
    elseif policy == 'n' then
      rule = 'consent'
    elseif policy == 'q' then
      rule = 'quiet_hours'
    elseif policy ~= '' then
      local day, week, cap_day, cap_week = string.match(policy, '^c|([^|]+)|([^|]+)|(%d+)|(%d+)$')
      cap_day, cap_week = tonumber(cap_day), tonumber(cap_week)
      local seen = redis.call('HMGET', freq_key, day, week)
      if cap_day > 0 and (tonumber(seen[1]) or 0) >= cap_day then
        rule = 'frequency_cap_day'
      elseif cap_week > 0 and (tonumber(seen[2]) or 0) >= cap_week then
        rule = 'frequency_cap_week'
      else
        redis.call('HINCRBY', freq_key, day, 1)
        redis.call('HINCRBY', freq_key, week, 1)
        -- Older days and weeks are of no more use: keep the hash to these two fields.
        if redis.call('HLEN', freq_key) > 2 then
          for _, f in ipairs(redis.call('HKEYS', freq_key)) do
            if f ~= day and f ~= week then redis.call('HDEL', freq_key, f) end
          end
        end
        redis.call('EXPIRE', freq_key, 8 * 86400)
      end
    end
    if rule then
      append_status(redis.call, status_key, record,
        'suppressed|' .. now .. '|{"rule":"' .. rule .. '"}', retention)
      suppressed = suppressed + 1
    else
      local inbox_id = append_inbox(redis.call, inbox_key, max_len, ARGV[a + 3], ARGV[a + 4])
      append_status(redis.call, status_key, record,
        'delivered|' .. now .. '|{"inbox_id":"' .. inbox_id .. '"}', retention)
      delivered = delivered + 1
      announce(announced, user)
    end
  end
  entry_ids[#entry_ids + 1] = ARGV[a + 1]
end
finish(KEYS[1], KEYS[3], delivered, suppressed, announced)
if ARGV[4] == '1' then
  redis.call('XACK', KEYS[2], 'delivery', unpack(entry_ids))
  redis.call('XDEL', KEYS[2], unpack(entry_ids))
end
return #entry_ids
""")

# KEYS: status, counts, outbox, dead-letter stream, retry state
# ARGV: entry id, now, retention, max tries, reason, push id, base backoff ms, jitter (0.5-1),
#       entry JSON, is_permanent ('1': dead now, whatever the tries)
# Returns -1 while the push waits out its backoff, 0 when it will be retried, 1 when dead.
_FAIL = StatusScript(_TAKEN_BACK_LUA + """
if is_taken_back(KEYS[3], ARGV[1]) then
  redis.call('DEL', KEYS[5])
  redis.call('XACK', KEYS[3], 'delivery', ARGV[1])
  return 1
end
if redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('EXISTS', KEYS[5]) == 0 then
  -- A record from before 0.2 kept the retry state in itself: carry it over, once (a hash
  -- without a trail stays a hash until the push ends).
  local old = redis.call('HMGET', KEYS[1], 'tries', 'retry_at', 'last_error')
  for i, name in ipairs({'tries', 'retry_at', 'last_error'}) do
    if old[i] then redis.call('HSET', KEYS[5], name, old[i]) end
  end
  if old[1] or old[2] or old[3] then redis.call('EXPIRE', KEYS[5], ARGV[3]) end
end
if not has_status(load_record(KEYS[1]), 'dead') then
  local retry_at = redis.call('HGET', KEYS[5], 'retry_at')
  if retry_at and tonumber(ARGV[2]) < tonumber(retry_at) then return -1 end
  local tries = redis.call('HINCRBY', KEYS[5], 'tries', 1)
  redis.call('HSET', KEYS[5], 'last_error', ARGV[5])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
  retain(KEYS[1], ARGV[3])
  if tries < tonumber(ARGV[4]) and ARGV[10] ~= '1' then
    local backoff_ms = math.min(tonumber(ARGV[7]) * 2 ^ (tries - 1), MAX_BACKOFF_MS)
      * tonumber(ARGV[8])
    redis.call('HSET', KEYS[5], 'retry_at', tostring(tonumber(ARGV[2]) + backoff_ms / 1000))
    return 0
  end
  redis.call('XADD', KEYS[4], '*', 'push_id', ARGV[6], 'reason', ARGV[5], 'tries', tries,
             'at', ARGV[2], 'entry', ARGV[9])
  redis.call('HDEL', KEYS[5], 'retry_at')
  mark(KEYS[1], KEYS[2], 'dead', ARGV[2], cjson.encode({reason = ARGV[5], tries = tries}))
  retain(KEYS[1], ARGV[3])  -- again: mark recreated a record that had expired
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

# A channel's push was sent: record it and acknowledge the entry.
# KEYS: status, counts, outbox, retry state; ARGV: entry id, now, retention, extra JSON
_SENT = StatusScript(_TAKEN_BACK_LUA + """
if is_taken_back(KEYS[3], ARGV[1]) then  -- sent, but the push was erased meanwhile
  redis.call('DEL', KEYS[4])
  redis.call('XACK', KEYS[3], 'delivery', ARGV[1])
  return 1
end
mark(KEYS[1], KEYS[2], 'delivered', ARGV[2], ARGV[4])
retain(KEYS[1], ARGV[3])
redis.call('HDEL', KEYS[4], 'retry_at')
redis.call('XACK', KEYS[3], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
return 1
""")

# A channel's marketing push a rule stops (quarantine, consent): record why and acknowledge it.
# A push waiting to retry is stopped too, and its retry state goes with it.
# KEYS: status, counts, outbox, retry state; ARGV: entry id, now, retention, rule
_SUPPRESS = StatusScript(_TAKEN_BACK_LUA + """
local record = load_record(KEYS[1])
local is_over = has_status(record, 'delivered') or has_status(record, 'suppressed')
  or has_status(record, 'dead')
if not (is_over or is_taken_back(KEYS[3], ARGV[1])) then
  mark(KEYS[1], KEYS[2], 'suppressed', ARGV[2], cjson.encode({rule = ARGV[4]}))
  retain(KEYS[1], ARGV[3])
end
redis.call('DEL', KEYS[4])
redis.call('XACK', KEYS[3], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
return 1
""")

# An entry whose push reached its end already (an earlier attempt died before acking).
# KEYS: outbox; ARGV: entry id
_ACK_ONLY = StatusScript("""
redis.call('XACK', KEYS[1], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
""")

# Reads a tenant's new entries, transactional lane first, taking one send token per entry read,
# so the bucket is exact however many workers share it. Rate 0 means no limit.
# An inbox push that no rule of the worker's needs to see (any transactional one; a marketing
# one when the tenant's plan has no marketing rules) is delivered right here, in the script
# that read it: its inbox entry, its "delivered" status and its removal from the outbox are one
# atomic step, so it is never in flight and never crosses to the worker and back. A
# quarantined user's marketing push is suppressed here too. The other entries are returned,
# pending, for the worker. Scripts are not rolled back on an error, so every step that could
# fail on a damaged key is a pcall whose entry then goes to the worker (which logs why), and
# each lane's bookkeeping is finished before the next lane is read.
# KEYS: bucket, transactional outbox, marketing outbox, counts, inbox channel, quarantine,
#       users who took back marketing consent, erasure tombstones, topic and channel refusals
#       (a tenant with erasures or topic/channel refusals has its marketing pushes go through
#       the worker, which can tell an erased id and reads each push's topic)
# ARGV: group, consumer, batch, rate, burst, now, retention, inbox max len, is_acking ('1'/'0'),
#       is_marketing_direct ('1'/'0'), inbox key prefix, status key prefix
# Returns {transactional entries, marketing entries, ms until a token if throttled with backlog,
#          pushes handled in the script, errors met (newline-separated, '' if none)}
_READ = StatusScript(BUCKET_LUA + _INBOX_LUA + """
local group, consumer = ARGV[1], ARGV[2]
local budget, rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now, retention, max_len = ARGV[6], ARGV[7], ARGV[8]
local inbox_prefix, status_prefix = ARGV[11], ARGV[12]
local tokens, clock = 0, 0
if rate > 0 then
  tokens, clock = bucket_refill(KEYS[1], rate, burst)
  budget = math.min(budget, math.floor(tokens))
  if budget < 1 then
    if redis.call('XLEN', KEYS[2]) + redis.call('XLEN', KEYS[3]) > 0 then
      return {{}, {}, bucket_wait_ms(tokens, rate), 0, ''}
    end
    return {{}, {}, 0, 0, ''}
  end
end
local function failed(reply)
  return type(reply) == 'table' and reply.err
end
local out, n, handled, errors = {{}, {}}, 0, 0, {}
for i = 1, 2 do
  if n < budget then
    local is_direct = i == 1 or (ARGV[10] == '1' and redis.call('EXISTS', KEYS[8], KEYS[9]) == 0)
    -- Entries this script delivers are never pending, so it reads them without the pending
    -- list's bookkeeping (NOACK) and puts only the ones it leaves to the worker there.
    local reply
    if is_direct then
      reply = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', budget - n, 'NOACK',
                          'STREAMS', KEYS[i + 1], '>')
    else
      reply = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', budget - n,
                          'STREAMS', KEYS[i + 1], '>')
    end
    if failed(reply) then  -- NOGROUP after the stream was deleted: the worker recreates it
      errors[#errors + 1] = reply.err
    elseif reply then
      local entries, rest, done = reply[1][2], {}, {}
      local delivered, suppressed, announced = 0, 0, {}
      -- Most tenants quarantine nobody: one look spares a lookup per push.
      local has_quarantine = i == 2 and redis.call('EXISTS', KEYS[6]) == 1
      local has_refusals = i == 2 and redis.call('EXISTS', KEYS[7]) == 1
      n = n + #entries
      for _, e in ipairs(entries) do
        -- outbox.enqueue writes these fields in this order; anything else goes to the worker.
        local f = e[2]
        local push, user = f[2], f[4]
        local is_done = false
        if is_direct and #f == 8 and f[1] == 'push_id' and f[3] == 'user_id' and f[6] == 'inbox'
            and f[7] == 'm' and push ~= '' and user ~= ''
            and not string.find(push, '[{}\\r\\n]') and not string.find(user, '[{}\\r\\n]') then
          local status_key = status_prefix .. push
          local is_read, record = pcall(load_record, status_key)
          if not is_read then
            errors[#errors + 1] = type(record) == 'table' and record.err or tostring(record)
          elseif is_final(record) then
            is_done = true  -- delivered or suppressed before (an id enqueued again): drop it
          else
            local rule, looked = false, false
            if has_quarantine then
              looked = redis.pcall('HEXISTS', KEYS[6], user)
              if looked == 1 then rule = 'quarantine' end
            end
            if not rule and not failed(looked) and has_refusals then
              looked = redis.pcall('HEXISTS', KEYS[7], user)
              if looked == 1 then rule = 'consent' end
            end
            if failed(looked) then
              errors[#errors + 1] = looked.err
            elseif rule then
              append_status(redis.pcall, status_key, record,
                'suppressed|' .. now .. '|{"rule":"' .. rule .. '"}', retention)
              suppressed = suppressed + 1
              is_done = true
            else
              local inbox_id = append_inbox(redis.pcall, inbox_prefix .. user, max_len, push, f[8])
              if failed(inbox_id) then  -- say the key is not a stream
                errors[#errors + 1] = inbox_id.err
              else
                local marked = append_status(redis.pcall, status_key, record,
                  'delivered|' .. now .. '|{"inbox_id":"' .. inbox_id .. '"}', retention)
                if failed(marked) then errors[#errors + 1] = marked.err end
                delivered = delivered + 1
                is_done = true
                announce(announced, user)
              end
            end
          end
        end
        if is_done then done[#done + 1] = e[1] else rest[#rest + 1] = e end
      end
      if is_direct then
        local pending = {KEYS[i + 1], group, consumer, 0}
        for _, e in ipairs(rest) do pending[#pending + 1] = e[1] end
        if ARGV[9] ~= '1' then  -- fault injection: as if it died before acking
          for _, id in ipairs(done) do pending[#pending + 1] = id end
        elseif #done > 0 and #rest == 0
            and redis.call('XPENDING', KEYS[i + 1], group)[1] == 0 then
          -- Every entry up to the group's last read one is done or pending, and none is
          -- pending: one trim drops them all, much cheaper than deleting them one by one.
          -- (MINID keeps the id it names, so that one goes with XDEL.)
          local last = entries[#entries][1]
          redis.call('XTRIM', KEYS[i + 1], 'MINID', last)
          redis.call('XDEL', KEYS[i + 1], last)
        elseif #done > 0 then
          redis.call('XDEL', KEYS[i + 1], unpack(done))
        end
        if #pending > 4 then
          pending[#pending + 1] = 'FORCE'
          pending[#pending + 1] = 'JUSTID'
          redis.call('XCLAIM', unpack(pending))
        end
      end
      finish(KEYS[4], KEYS[5], delivered, suppressed, announced)
      handled = handled + #done
      out[i] = rest
    end
  end
end
if rate > 0 and n > 0 then bucket_store(KEYS[1], tokens - n, clock, rate, burst) end
return {out[1], out[2], 0, handled, table.concat(errors, '\\n')}
""")

_Entry = tuple[str, dict[str, str]]
# (tenant, lane, stream, entry)
_Work = tuple[str, str, str, _Entry]


class DeliveryWorker:
    """One consumer of the ``delivery`` group; run many, in processes or machines, to scale.

    ``plans`` gives a tenant's plan (rate limit, marketing rules) or None for none; by default it
    is read from the tenant's record and refreshed every ``plan_refresh_seconds``. ``channels``
    are the senders for channels other than the inbox; by default the webhook channel.
    """

    def __init__(
        self,
        r: redis.Redis,
        tenants: Callable[[], Sequence[str]] | Sequence[str],
        *,
        consumer: str,
        inbox_max_len: int = 1000,
        claim_idle_ms: int = 30_000,
        max_tries: int = 5,
        batch: int = 200,
        retry_base_ms: int | None = None,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        plans: Callable[[str], Plan | None] | None = None,
        channels: Mapping[str, Channel] | None = None,
        plan_refresh_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        sealer: Sealer | None = None,
    ):
        """``sealer`` opens encrypted messages for the default webhook channel; the inbox path
        copies a message as it is stored, sealed or not."""
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
        self.plan_refresh_seconds = plan_refresh_seconds
        self._plan_source = plans
        self._plans: dict[str, tuple[float, Plan | None]] = {}
        self._channels: Mapping[str, Channel] = (
            {"webhook": WebhookChannel(r, sealer=sealer)} if channels is None else channels
        )
        self._clock = clock
        # Channel sends run here, so a slow endpoint never stalls a pass (see _start_sends).
        self._sender = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="send")
        self._sends: list[tuple[str, list[_Work], futures.Future[list[SendResult]]]] = []
        self._in_flight: set[str] = set()
        self._turn = 0
        self._streams_with_group: set[str] = set()
        self._claim_cursors: dict[str, str] = {}
        self._last_claim_at = 0.0
        self._zones: dict[str, ZoneInfo] = {}
        self._has_tenants = False  # as the last pass found
        # Fault injection for tests: a worker that delivers and then dies before acking.
        self._is_acking = True

    def run(self, stop: threading.Event, block_ms: int = 200) -> None:
        """Deliver until ``stop`` is set, blocking up to ``block_ms`` whenever idle."""
        while not stop.is_set():
            try:
                handled = self.deliver_once(block_ms=block_ms)
                if not handled and not self._has_tenants:
                    stop.wait(block_ms / 1000)  # no tenants yet: nothing to block on
                elif 0 < handled < self.batch // 20:
                    # A trickle: let a little more arrive rather than spin a pass per push.
                    time.sleep(_LINGER_SECONDS)
            except redis.ConnectionError:
                log.exception("lost Redis; retrying in a second")
                stop.wait(1.0)
        if self._sends:  # drain: record what the sends still out come back with
            self._deliver([], is_waiting_for_sends=True)

    def deliver_once(self, block_ms: int = 0) -> int:
        """One pass over every tenant; returns how many pushes were handled.

        With ``block_ms`` 0 (drain mode) a pass that finds work only held back by a rate limit
        waits for the next token rather than return 0, so "until 0" really means drained.
        """
        while True:
            tenant_ids = self._tenant_ids()
            self._has_tenants = bool(tenant_ids)
            if not tenant_ids:
                return 0
            try:
                work, wait_ms, handled = self._read(tenant_ids, block_ms)
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                # A stream was deleted under us (e.g. a tenant was purged): recreate, read again.
                self._streams_with_group.clear()
                work, wait_ms, handled = self._read(tenant_ids, block_ms)
            handled += self._deliver(work, is_waiting_for_sends=block_ms == 0)
            if handled or not wait_ms or block_ms > 0:
                return handled
            time.sleep(min(wait_ms, 1000) / 1000)

    # --- reading ------------------------------------------------------------------------------

    def _tenant_ids(self) -> list[str]:
        tenants = list(self._tenants() if callable(self._tenants) else self._tenants)
        if not tenants:
            return []
        self._turn = (self._turn + 1) % len(tenants)
        return tenants[self._turn :] + tenants[: self._turn]

    def _ensure_groups(self, tenant_ids: Sequence[str]) -> None:
        for tenant_id in tenant_ids:
            for lane in keys.LANES:
                stream = keys.outbox_stream(tenant_id, lane)
                if stream in self._streams_with_group:
                    continue
                try:
                    self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):  # the group surviving a restart is normal
                        raise
                self._streams_with_group.add(stream)

    def plan(self, tenant_id: str) -> Plan | None:
        """The tenant's plan as this worker applies it (cached), None for a tenant without one."""
        now = self._clock()
        cached = self._plans.get(tenant_id)
        if cached is not None and now - cached[0] < self.plan_refresh_seconds:
            return cached[1]
        if self._plan_source is not None:
            plan = self._plan_source(tenant_id)
        else:
            raw = self.r.hget(keys.tenant_meta(tenant_id), "plan")
            plan = _plan_from_json(raw) if raw else None
        self._plans[tenant_id] = (now, plan)
        return plan

    def _read(self, tenant_ids: Sequence[str],
              block_ms: int) -> tuple[list[_Work], int, int]:
        """Claimed and new entries in delivery order, how long a rate limit holds some back, and
        how many pushes the read script delivered (or suppressed) itself."""
        self._ensure_groups(tenant_ids)
        plans = {t: self.plan(t) for t in tenant_ids}
        claimed = self._claim(tenant_ids)
        now = repr(self._clock())
        calls: list[ScriptCall] = []
        owners: list[str] = []
        for tenant_id in tenant_ids:
            plan = plans[tenant_id]
            rate, burst = (plan.sends_per_second, plan.burst) if plan else (0, 0)
            budget = min(self.batch * (plan.delivery_weight if plan else 1), _MAX_READ)
            is_marketing_direct = plan is None or not plan.has_marketing_rules
            script_keys = [keys.rate_bucket(tenant_id),
                           *(keys.outbox_stream(tenant_id, lane) for lane in keys.LANES),
                           keys.status_counts(tenant_id), keys.inbox_channel(tenant_id),
                           keys.quarantine(tenant_id), keys.consent_denied(tenant_id, "marketing"),
                           keys.erased_users(tenant_id), keys.consent_denied_scoped(tenant_id)]
            # A weighty tenant's share comes in scripts of at most _CHUNK entries each, so no
            # one script holds the server for long (the noisy neighbour's latency).
            for start in range(0, budget, _CHUNK):
                calls.append((_READ, script_keys,
                              [GROUP, self.consumer, min(_CHUNK, budget - start), rate, burst,
                               now, self.retention_seconds, self.inbox_max_len,
                               "1" if self._is_acking else "0",
                               "1" if is_marketing_direct else "0",
                               keys.inbox_stream_prefix(tenant_id),
                               keys.push_status_prefix(tenant_id)]))
                owners.append(tenant_id)
        fresh: dict[tuple[str, str], list[_Entry]] = {}
        waits: dict[str, int] = {}
        handled = 0
        for tenant_id, result in zip(owners, run_scripts(self.r, calls), strict=True):
            if isinstance(result, Exception):
                raise result
            transactional, marketing, wait_ms, done, errors = result
            handled += int(done)
            fresh.setdefault((tenant_id, "transactional"), []).extend(
                _entry(e) for e in transactional)
            fresh.setdefault((tenant_id, "marketing"), []).extend(_entry(e) for e in marketing)
            if wait_ms:
                waits[tenant_id] = int(wait_ms)
            if errors and "NOGROUP" in errors:
                self._streams_with_group.clear()  # a stream was deleted: recreate its group
                log.warning("tenant %s: an outbox group was missing; recreating it", tenant_id)
            elif errors:
                log.error("delivering in tenant %s: %s", tenant_id, errors.replace("\n", "; "))
        has_work = handled or any(claimed.values()) or any(fresh.values())
        if block_ms > 0 and not has_work and self._wait_for_entries(tenant_ids, waits, block_ms):
            # What arrived goes through the read scripts like the rest (and pays its tokens).
            return self._read(tenant_ids, 0)
        work = [
            (tenant_id, lane, keys.outbox_stream(tenant_id, lane), entry)
            for lane in keys.LANES
            for tenant_id in tenant_ids
            for entry in (*claimed.get((tenant_id, lane), ()), *fresh.get((tenant_id, lane), ()))
        ]
        return work, min(waits.values(), default=0), handled

    def _claim(self, tenant_ids: Sequence[str]) -> dict[tuple[str, str], list[_Entry]]:
        """Entries other consumers left pending too long; scanned at most every half idle time."""
        now = time.monotonic()
        if (now - self._last_claim_at) * 1000 < min(self.claim_idle_ms / 2, 1000):
            return {}
        self._last_claim_at = now
        pairs = [(t, lane) for t in tenant_ids for lane in keys.LANES]
        pipe = self.r.pipeline(transaction=False)
        for tenant_id, lane in pairs:
            stream = keys.outbox_stream(tenant_id, lane)
            pipe.xautoclaim(stream, GROUP, self.consumer, min_idle_time=self.claim_idle_ms,
                            start_id=self._claim_cursors.get(stream, "0-0"), count=self.batch)
        claimed: dict[tuple[str, str], list[_Entry]] = {}
        for (tenant_id, lane), (cursor, entries, *_deleted) in zip(pairs, pipe.execute(),
                                                                   strict=True):
            self._claim_cursors[keys.outbox_stream(tenant_id, lane)] = cursor
            if entries:
                claimed[tenant_id, lane] = list(entries)
        return claimed

    def _wait_for_entries(self, tenant_ids: Sequence[str], waits: Mapping[str, int],
                          block_ms: int) -> bool:
        """Block until a tenant not held back by its rate limit has entries no consumer read yet
        (or ``block_ms`` passed), without reading them: True if some may be there now.

        It waits with a plain ``XREAD`` after each group's last-delivered id, so the entries are
        still the group's to read, by the read script that delivers them where they are.
        """
        block_ms = min(block_ms, *waits.values()) if waits else block_ms
        streams = [keys.outbox_stream(t, lane) for t in tenant_ids if t not in waits
                   for lane in keys.LANES]
        if not streams:
            time.sleep(block_ms / 1000)
            return False
        pipe = self.r.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_groups(stream)
        after: dict[str, str] = {}
        is_group_missing = False
        for stream, groups in zip(streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(groups, Exception) and "no such key" not in str(groups).lower():
                log.warning("cannot wait on %s: %s", stream, groups)
                continue
            last = None if isinstance(groups, Exception) else next(
                (g["last-delivered-id"] for g in groups if g["name"] == GROUP), None)
            if last is None:  # the stream or its group is gone: the next pass recreates it
                self._streams_with_group.discard(stream)
                is_group_missing = True
            else:
                after[stream] = last
        if not after:
            if not is_group_missing:
                time.sleep(block_ms / 1000)
            return is_group_missing
        return bool(self.r.xread(after, count=1, block=max(1, block_ms)))

    # --- delivering ---------------------------------------------------------------------------

    def _deliver(self, work: Sequence[_Work], *, is_waiting_for_sends: bool = True) -> int:
        """Deliver the work; channel sends finish in this call only if ``is_waiting_for_sends``,
        else in the background, their outcomes recorded by a later call."""
        now = self._clock()
        calls: list[ScriptCall] = self._finished_sends(now)
        sizes: list[int] = [1] * len(calls)  # entries per call
        if not work and not calls:
            return 0
        by_channel: dict[tuple[str, str], list[_Work]] = {}
        for (tenant_id, lane, stream), group in itertools.groupby(work, key=lambda w: w[:3]):
            inbox: list[_Entry] = []
            sendable: list[_Work] = []
            for item in group:
                entry = item[3]
                if entry[0] in self._in_flight:
                    continue  # claimed again while its send is still out: not twice
                call = self._call_unless_sendable(tenant_id, stream, entry, now)
                channel = entry[1].get("channel", "")
                if call is not None:
                    calls.append(call)
                    sizes.append(1)
                elif channel == "inbox":
                    inbox.append(entry)
                else:
                    sendable.append(item)
            # Quarantine and consent stop a channel's marketing push too (time rules are the
            # inbox's: a tenant's endpoint keeps its own hours).
            channel_rules = self._policies(tenant_id, lane, [w[3] for w in sendable], now)
            for item, rule in zip(sendable, channel_rules, strict=True):
                if rule in _BLOCKING_RULES:
                    calls.append(self._suppress_call(tenant_id, stream, item[3], _BLOCKING_RULES[rule], now))
                    sizes.append(1)
                else:
                    by_channel.setdefault((tenant_id, item[3][1].get("channel", "")), []).append(item)
            policies = self._policies(tenant_id, lane, inbox, now)
            for start in range(0, len(inbox), _CHUNK):
                chunk = inbox[start : start + _CHUNK]
                calls.append(self._inbox_call(tenant_id, stream, chunk,
                                              policies[start : start + _CHUNK], now))
                sizes.append(len(chunk))
        for (tenant_id, channel), items in by_channel.items():
            acks = self._start_sends(tenant_id, self._channels[channel], items, now)
            calls += acks
            sizes += [1] * len(acks)
        if is_waiting_for_sends and self._sends:
            futures.wait([future for _, _, future in self._sends])
            finished = self._finished_sends(now)
            calls += finished
            sizes += [1] * len(finished)
        handled = 0
        for call, size, result in zip(calls, sizes, run_scripts(self.r, calls), strict=True):
            if isinstance(result, Exception) and size > 1:
                # One bad push must not hold back its chunk: deliver them one by one.
                handled += self._deliver_one_by_one(call)
            elif isinstance(result, Exception):
                # The entry stays pending and is claimed again; it is not lost.
                log.error("delivering in %s failed: %s", call[1][1], result)
            elif result != -1:
                handled += size
        return handled

    def _deliver_one_by_one(self, call: ScriptCall) -> int:
        script, script_keys, args = call
        head_keys, head_args = list(script_keys[:3]), list(args[:4])
        singles: list[ScriptCall] = [
            (script, [*head_keys, *script_keys[3 + 3 * i : 6 + 3 * i]],
             [*head_args, *args[4 + 5 * i : 9 + 5 * i]])
            for i in range((len(script_keys) - 3) // 3)
        ]
        handled = 0
        for single, result in zip(singles, run_scripts(self.r, singles), strict=True):
            if isinstance(result, Exception):
                log.error("delivering entry %s failed: %s", single[2][4], result)
            else:
                handled += 1
        return handled

    def _suppress_call(self, tenant_id: str, stream: str, entry: _Entry, rule: str,
                       now: float) -> ScriptCall:
        entry_id, fields = entry
        return (_SUPPRESS, [keys.push_status(tenant_id, fields["push_id"]),
                            keys.status_counts(tenant_id), stream,
                            keys.push_retry(tenant_id, fields["push_id"])],
                [entry_id, repr(now), self.retention_seconds, rule])

    def _inbox_call(
        self, tenant_id: str, stream: str, entries: Sequence[_Entry], policies: Sequence[str],
        now: float,
    ) -> ScriptCall:
        script_keys = [keys.status_counts(tenant_id), stream, keys.inbox_channel(tenant_id)]
        args: list[str | int | float] = [repr(now), self.retention_seconds, self.inbox_max_len,
                                         "1" if self._is_acking else "0"]
        for (entry_id, fields), policy in zip(entries, policies, strict=True):
            user_id, push_id = fields["user_id"], fields["push_id"]
            script_keys += [keys.push_status(tenant_id, push_id),
                            keys.inbox_stream(tenant_id, user_id),
                            keys.user_frequency(tenant_id, user_id)]
            args += [entry_id, user_id, push_id, entry_message(fields), policy]
        return _DELIVER_INBOX, script_keys, args

    def _policies(
        self, tenant_id: str, lane: str, entries: Sequence[_Entry], now: float
    ) -> list[str]:
        """Per entry: the marketing rule that applies now in the user's time zone ('' if none)."""
        if lane != "marketing" or not entries:
            return [""] * len(entries)
        users = sorted({fields["user_id"] for _, fields in entries})
        # The guard's quarantine wins over everything: a quarantined user gets no marketing;
        # nor does one who took back marketing consent, whatever the plan.
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(keys.quarantine(tenant_id), users)
        pipe.hmget(keys.consent_denied(tenant_id, "marketing"), users)
        pipe.exists(keys.erased_users(tenant_id))
        pipe.exists(keys.consent_denied_scoped(tenant_id))
        held, refused, has_erasures, has_scoped = pipe.execute()
        blocked = {user: "x" if q is not None else "n"
                   for user, q, c in zip(users, held, refused, strict=True)
                   if q is not None or c is not None}
        if has_erasures:
            blocked |= {user: "n" for user in self._erased_without_consent(tenant_id, users)
                        if user not in blocked}
        # Per push: the user refused its topic or its channel.
        refused_push = self._scoped_refusals(tenant_id, entries) if has_scoped else set()
        plan = self.plan(tenant_id)
        if plan is None or not plan.has_marketing_rules:
            return [blocked.get(fields["user_id"], "n" if entry_id in refused_push else "")
                    for entry_id, fields in entries]
        profiles = self.r.hmget(keys.user_profiles(tenant_id), users)
        zones = {user: self._zone(raw) for user, raw in zip(users, profiles, strict=True)}
        policies = []
        for entry_id, fields in entries:
            local = datetime.fromtimestamp(now, zones[fields["user_id"]])
            if fields["user_id"] in blocked:
                policies.append(blocked[fields["user_id"]])
            elif entry_id in refused_push:
                policies.append("n")
            elif _is_quiet(plan, local.hour):
                policies.append("q")
            elif plan.marketing_per_user_per_day or plan.marketing_per_user_per_week:
                year, week, _ = local.isocalendar()
                policies.append(f"c|d:{local.date().isoformat()}|w:{year}-{week:02d}|"
                                f"{plan.marketing_per_user_per_day}|"
                                f"{plan.marketing_per_user_per_week}")
            else:
                policies.append("")
        return policies

    def _scoped_refusals(self, tenant_id: str, entries: Sequence[_Entry]) -> set[str]:
        """The entries whose user refused marketing on the push's topic or channel."""
        fields_of = [(entry_id, consent.scoped_field(f["user_id"], f"channel:{f.get('channel', 'inbox')}"),
                      consent.scoped_field(f["user_id"], f"topic:{f['topic']}") if f.get("topic") else None)
                     for entry_id, f in entries]
        wanted = sorted({name for _, *names in fields_of for name in names if name})
        found = dict(zip(wanted, self.r.hmget(keys.consent_denied_scoped(tenant_id), wanted), strict=True))
        return {entry_id for entry_id, *names in fields_of
                if any(name and found[name] is not None for name in names)}

    def _erased_without_consent(self, tenant_id: str, users: Sequence[str]) -> list[str]:
        """The erased users who have not granted marketing since: marketing to them stays
        stopped (the erasure removed their refusal with everything else) until they do."""
        erased = sorted(subjects.erased_users(self.r, tenant_id, users))
        return [user for user in erased
                if not consent.has_granted_since_erasure(self.r, tenant_id, user, "marketing")]

    def _zone(self, raw_profile: str | None) -> ZoneInfo:
        name = "UTC"
        if raw_profile:
            with contextlib.suppress(ValueError, AttributeError):
                name = str(json.loads(raw_profile).get("timezone") or "UTC")
        if name not in self._zones:
            try:
                self._zones[name] = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                log.warning("unknown time zone %r; using UTC for its users", name)
                self._zones[name] = ZoneInfo("UTC")
        return self._zones[name]

    def _start_sends(
        self, tenant_id: str, channel: Channel, items: Sequence[_Work], now: float
    ) -> list[ScriptCall]:
        """Send what is due through the channel, in the background; the calls that acknowledge
        entries whose push already reached its end."""
        pipe = self.r.pipeline(transaction=False)
        for _, _, stream, (entry_id, fields) in items:
            pipe.get(keys.push_status(tenant_id, fields["push_id"]))
            pipe.hget(keys.push_retry(tenant_id, fields["push_id"]), "retry_at")
            pipe.xrange(stream, entry_id, entry_id)
        replies = pipe.execute(raise_on_error=False)
        calls: list[ScriptCall] = []
        due: list[_Work] = []
        for item, record, retry_at, held in zip(items, replies[::3], replies[1::3], replies[2::3],
                                                strict=True):
            if isinstance(retry_at, Exception):
                raise retry_at
            if held == []:  # taken back (erased) while this worker held it: never sent
                calls.append((_ACK_ONLY, [item[2]], [item[3][0]]))
                continue
            if record is None or isinstance(record, str):
                statuses = {line.split("|", 1)[0] for line in (record or "").split("\n")}
            else:  # a hash record of a version before 0.2: its retry state is in it too
                push_id = item[3][1]["push_id"]
                trail = receipts.status_trail(self.r, tenant_id, push_id)
                statuses = {entry["status"] for entry in trail or ()}
                with contextlib.suppress(redis.ResponseError):  # converted meanwhile
                    retry_at = retry_at or self.r.hget(keys.push_status(tenant_id, push_id),
                                                       "retry_at")
            if {"delivered", "dead"} & statuses:
                calls.append((_ACK_ONLY, [item[2]], [item[3][0]]))
            elif retry_at is None or float(retry_at) <= now:
                due.append(item)
            # else: waiting out its backoff; it stays pending and is claimed again later
        if due:
            # A slow endpoint of one tenant must not hold up the others' passes.
            future = self._sender.submit(channel.send_many, tenant_id,
                                         [fields for _, _, _, (_, fields) in due])
            self._sends.append((tenant_id, due, future))
            self._in_flight.update(entry_id for _, _, _, (entry_id, _) in due)
        return calls

    def _finished_sends(self, now: float) -> list[ScriptCall]:
        """The calls that record the outcomes of background sends that have finished."""
        calls: list[ScriptCall] = []
        pending = []
        for tenant_id, due, future in self._sends:
            if not future.done():
                pending.append((tenant_id, due, future))
                continue
            try:
                results = future.result()
            except Exception as e:  # noqa: BLE001 - a channel's bug: retry, with the reason
                log.exception("channel send failed")
                results = [SendResult("retry", f"channel error: {type(e).__name__}: {e}")
                           ] * len(due)
            for (_, _, stream, (entry_id, fields)), result in zip(due, results, strict=True):
                self._in_flight.discard(entry_id)
                status_key = keys.push_status(tenant_id, fields["push_id"])
                if result.outcome == "sent":
                    calls.append((_SENT, [status_key, keys.status_counts(tenant_id), stream,
                                          keys.push_retry(tenant_id, fields["push_id"])],
                                  [entry_id, repr(now), self.retention_seconds,
                                   json.dumps(dict(result.fields), separators=(",", ":"))]))
                else:
                    calls.append(self._fail_call(tenant_id, stream, entry_id, fields, now,
                                                 result.detail, result.outcome == "permanent"))
        self._sends = pending
        return calls

    def _fail_call(
        self, tenant_id: str, stream: str, entry_id: str, fields: Mapping[str, str], now: float,
        reason: str, is_permanent: bool,
    ) -> ScriptCall:
        return (
            _FAIL,
            [keys.push_status(tenant_id, fields["push_id"]), keys.status_counts(tenant_id),
             stream, keys.dead_letter_stream(tenant_id),
             keys.push_retry(tenant_id, fields["push_id"])],
            [entry_id, repr(now), self.retention_seconds, self.max_tries, reason,
             fields["push_id"], self.retry_base_ms, random.uniform(0.5, 1.0),
             json.dumps(dict(fields)), "1" if is_permanent else "0"],
        )

    def _call_unless_sendable(
        self, tenant_id: str, stream: str, entry: _Entry, now: float
    ) -> ScriptCall | None:
        """The call that handles an entry no channel can take, or None for one that it can."""
        entry_id, fields = entry
        push_id, user_id = fields.get("push_id", ""), fields.get("user_id", "")
        try:
            keys.push_status(tenant_id, push_id)
            keys.inbox_stream(tenant_id, user_id)
        except ValueError as e:
            return (_DEAD_MALFORMED, [stream, keys.dead_letter_stream(tenant_id)],
                    [entry_id, repr(now), f"malformed outbox entry: {e}", json.dumps(fields)])
        channel = fields.get("channel", "")
        if channel == "inbox" or channel in self._channels:
            return None
        return self._fail_call(tenant_id, stream, entry_id, fields, now,
                               f"no sender for channel {channel!r}", False)


def _plan_from_json(raw: str) -> Plan:
    # Fields this version does not know (a newer writer's) are left out, not fatal.
    known = {f.name for f in dataclasses.fields(Plan)}
    return Plan(**{k: v for k, v in json.loads(raw).items() if k in known})


def _is_quiet(plan: Plan, hour: int) -> bool:
    start, end = plan.quiet_hours_start, plan.quiet_hours_end
    if start is None or end is None or start == end:
        return False
    return start <= hour < end if start < end else hour >= start or hour < end


def _entry(raw: Any) -> _Entry:
    """A stream entry as a Lua script returns it: [id, [field, value, ...]]."""
    entry_id, flat = raw
    return entry_id, dict(zip(flat[::2], flat[1::2], strict=True))

