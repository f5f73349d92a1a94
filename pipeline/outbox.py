"""The outbox: pushes accepted for delivery, one Redis stream per tenant and lane.

A push id is its idempotency key: enqueueing an id whose status record still exists (for the
retention period, 7 days by default, from its enqueue or a later status) changes nothing and is
reported as a duplicate. Pushes are accepted by a Lua script per chunk of one tenant and lane, so
each push's outbox entry and "queued" status record, the record doubling as its id guard, are
written together or not at all.

An outbox entry has four fields: ``push_id``, ``user_id``, ``channel`` and ``m``, the message as
the device gets it, JSON encoded once here (``message``). The inbox entry keeps ``push_id`` and
``m``, and the gateways send ``inbox_frame`` of it: the delivery path never decodes a payload.
Entries written before 0.2 (one field per attribute) are still read (``entry_content``).
Durability per lane (see docs/delivery.md): the server's AOF fsyncs every second; a call that
accepts transactional pushes also waits for the fsync (``WAITAOF``) before it returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis

from pipeline import keys
from pipeline.errors import InvalidInputError, PushError
from pipeline.receipts import DEFAULT_RETENTION_SECONDS, ScriptCall, StatusScript, run_scripts

if TYPE_CHECKING:
    from pipeline.atrest import Sealer

log = logging.getLogger(__name__)

__all__ = [
    "CHANNELS",
    "TOPIC_PATTERN",
    "check_topic",
    "campaign_push_id",
    "MAX_PAYLOAD_BYTES",
    "Push",
    "EnqueueResult",
    "make_push_id",
    "message",
    "entry_content",
    "entry_message",
    "inbox_frame",
    "enqueue",
    "WAIT_AOF_MS",
    "BacklogFullError",
]

CHANNELS = ("inbox", "webhook")
#: A push's topic, one the tenant created (``pipeline.consent.create_topic``).
TOPIC_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_topic(value: object, field: str = "topic", *, may_be_empty: bool = False) -> str:
    """``value`` if it is a topic name (or ``""`` when allowed); InvalidInputError otherwise."""
    if isinstance(value, str) and (TOPIC_PATTERN.fullmatch(value) or (may_be_empty and not value)):
        return value
    raise InvalidInputError(field, f"a topic is 1-64 of a-z 0-9 _ - starting with a letter or "
                            f"digit, got {str(value)[:70]!r}")
MAX_PAYLOAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Push:
    tenant_id: str
    push_id: str
    user_id: str
    lane: str = "marketing"
    channel: str = "inbox"
    title: str = ""
    body: str = ""
    data: Mapping[str, str] = field(default_factory=dict)
    campaign_id: str = ""
    enqueued_at: float = 0.0  # epoch seconds; enqueue sets it when 0
    # A marketing push to a user who refused its topic is suppressed (rule "consent").
    topic: str = ""


@dataclass(frozen=True)
class EnqueueResult:
    accepted: list[str]
    duplicates: list[str]
    rejected: list[str] = field(default_factory=list)  # over the tenant's backlog cap


def make_push_id(*parts: str) -> str:
    """A deterministic idempotency key, e.g. ``make_push_id(campaign_id, user_id, variant)``."""
    if not parts:
        raise ValueError("make_push_id needs at least one part")
    # The unit separator cannot appear in ordinary ids, so ("a", "bc") and ("ab", "c") differ.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def campaign_push_id(campaign_id: str, run_id: str, user_id: str) -> str:
    """The push id of a campaign run's push to a user (idempotent across reruns)."""
    return make_push_id("campaign", campaign_id, run_id, user_id)


def message(push: Push, enqueued_at: float) -> str:
    """The push as the device gets it (less the ids), JSON: the outbox entry's ``m``."""
    return orjson.dumps({"title": push.title, "body": push.body, "data": dict(push.data),
                         "campaign_id": push.campaign_id, "enqueued_at": enqueued_at}).decode()


def entry_message(fields: Mapping[str, str]) -> str:
    """An outbox entry's ``m``; built from the fields of an entry written before 0.2."""
    if "m" in fields:
        return fields["m"]
    return orjson.dumps({
        "title": fields.get("title", ""), "body": fields.get("body", ""),
        "data": _json_object(fields.get("data")), "campaign_id": fields.get("campaign_id", ""),
        "enqueued_at": _float(fields.get("enqueued_at")),
    }).decode()


def entry_content(fields: Mapping[str, str]) -> dict[str, Any]:
    """An outbox entry's push as one object: ids, channel and the decoded message."""
    try:
        content = orjson.loads(entry_message(fields))
    except orjson.JSONDecodeError:
        content = {}
    if not isinstance(content, dict):
        content = {}
    return {"push_id": fields.get("push_id", ""), "user_id": fields.get("user_id", ""),
            "channel": fields.get("channel", ""), "title": str(content.get("title", "")),
            "body": str(content.get("body", "")), "data": _json_object(content.get("data")),
            "campaign_id": str(content.get("campaign_id", "")),
            "enqueued_at": _float(content.get("enqueued_at")), "topic": fields.get("topic", "")}


def inbox_frame(entry_id: str, fields: Mapping[str, str]) -> str:
    """The WebSocket frame of an inbox entry: ``{"id", "push_id", "title", "body", "data",
    "campaign_id", "enqueued_at"}``, spliced from the stored ``m`` without decoding it."""
    head = orjson.dumps({"id": entry_id, "push_id": fields.get("push_id", "")}).decode()
    m = entry_message(fields)
    if len(m) < 3 or m[0] != "{" or m[-1] != "}":  # not an object with a member
        return head
    return head[:-1] + "," + m[1:]


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = orjson.loads(value or "{}")
        except orjson.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def _float(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


# Accepts a chunk of pushes of one tenant and lane. A push over the backlog cap is refused (2),
# one already enqueued (its status record exists) is a duplicate (0), any other is accepted (1).
# KEYS: outbox, counts, transactional outbox, marketing outbox, then per push: status
# ARGV: now, retention, backlog cap (-1: none), lane, then per push: push id, user id, channel,
#       message, topic ('' none; an entry with a topic has it as a fifth field)
_ENQUEUE = StatusScript("""
local now, retention, cap, lane = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local queued = 'queued|' .. now .. '|'
local backlog = 0
if cap >= 0 then
  -- Marketing counts the whole backlog; transactional only its own lane, so a marketing
  -- flood never locks out a login code.
  backlog = redis.call('XLEN', KEYS[3])
  if lane == 'marketing' then backlog = backlog + redis.call('XLEN', KEYS[4]) end
end
local results, accepted = {}, 0
for i = 1, #KEYS - 4 do
  local status_key, a = KEYS[4 + i], 4 + 5 * (i - 1)
  local code
  if cap >= 0 and backlog >= cap then
    code = redis.call('EXISTS', status_key) == 1 and 0 or 2
  -- The status record is the idempotency guard: one write creates it with its retention,
  -- unless the id's record lives (a duplicate).
  elseif redis.call('SET', status_key, queued, 'NX', 'EX', retention) then
    code = 1
    local added
    if ARGV[a + 5] == '' then
      added = redis.pcall('XADD', KEYS[1], '*', 'push_id', ARGV[a + 1],
        'user_id', ARGV[a + 2], 'channel', ARGV[a + 3], 'm', ARGV[a + 4])
    else
      added = redis.pcall('XADD', KEYS[1], '*', 'push_id', ARGV[a + 1],
        'user_id', ARGV[a + 2], 'channel', ARGV[a + 3], 'm', ARGV[a + 4], 'topic', ARGV[a + 5])
    end
    if type(added) == 'table' and added.err then
      -- No entry, so no guard either: the caller's retry must not come back a duplicate.
      redis.call('DEL', status_key)
      if accepted > 0 then redis.call('HINCRBY', KEYS[2], 'queued', accepted) end
      return redis.error_reply('outbox ' .. KEYS[1] .. ': ' .. added.err)
    end
    backlog = backlog + 1
    accepted = accepted + 1
  else
    code = 0
  end
  if code == 0 and lane == 'transactional' then
    -- A retried transactional push writes this, so the WAIT after it covers the original
    -- write too (replication is ordered) and a retry is acknowledged only once it is safe.
    -- PEXPIRE always writes; it never shortens a TTL, and the guard lives on for the
    -- retention from this attempt.
    redis.call('PEXPIRE', status_key,
      math.max(redis.call('PTTL', status_key), tonumber(retention) * 1000))
  end
  results[i] = code
end
if accepted > 0 then redis.call('HINCRBY', KEYS[2], 'queued', accepted) end
return results
""")

# How long a transactional enqueue waits for the server's fsync before it reports failure.
WAIT_AOF_MS = 2000


def enqueue(
    r: redis.Redis,
    pushes: Sequence[Push],
    batch_size: int = 500,
    *,
    retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    is_transactional_fsynced: bool = True,
    raise_on_backlog_full: bool = True,
    replicas_to_wait: int = 0,
    replica_wait_ms: int = 1000,
    sealer: Sealer | None = None,
) -> EnqueueResult:
    """Accept pushes into their tenants' outboxes; all are validated before any is written.

    A push over its tenant's backlog cap (``Plan.max_backlog``) is refused and nothing about it
    is stored: ``BacklogFullError`` says so (the others stay accepted, so sending the whole call
    again later is safe), or, with ``raise_on_backlog_full=False``, it is listed in ``rejected``.
    With ``is_transactional_fsynced``, a call that accepts transactional pushes returns only after
    the server fsynced them (``WAITAOF``); with ``replicas_to_wait``, only after that many
    replicas hold them (``WAIT``), else ``NotReplicatedError`` and the caller retries the same ids.
    With ``sealer`` each message is stored encrypted under its tenant's data key (``atrest``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    valid_tenants: set[str] = set()
    checked = [_validated(p, valid_tenants) for p in pushes]
    now = time.time()
    caps = _backlog_caps(r, {p.tenant_id for p in checked})
    # Chunks of one tenant and lane, each remembering where its pushes stand in the input.
    groups: dict[tuple[str, str], list[int]] = {}
    for i, push in enumerate(checked):
        groups.setdefault((push.tenant_id, push.lane), []).append(i)
    chunk = min(batch_size, _CHUNK)
    calls: list[ScriptCall] = []
    members: list[list[int]] = []
    for (tenant_id, lane), indexes in groups.items():
        for start in range(0, len(indexes), chunk):
            part = indexes[start : start + chunk]
            calls.append(_enqueue_call(r, tenant_id, lane, [checked[i] for i in part], now,
                                       retention_seconds, caps[tenant_id], sealer))
            members.append(part)
    outcome = [0] * len(checked)
    per_pipeline = max(1, batch_size // chunk)
    for start in range(0, len(calls), per_pipeline):
        batch = calls[start : start + per_pipeline]
        has_transactional = any(call[2][3] == "transactional" for call in batch)
        wait = WAIT_AOF_MS if has_transactional and is_transactional_fsynced else None
        replicas = replicas_to_wait if has_transactional else 0
        for part, result in zip(members[start : start + per_pipeline],
                                _run(r, batch, wait, replicas, replica_wait_ms), strict=True):
            if isinstance(result, Exception):
                raise result
            for i, code in zip(part, result, strict=True):
                outcome[i] = int(code)
    by_code: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for push, code in zip(checked, outcome, strict=True):
        by_code[code].append(push.push_id)
    result = EnqueueResult(accepted=by_code[1], duplicates=by_code[0], rejected=by_code[2])
    if result.rejected and raise_on_backlog_full:
        raise BacklogFullError(sorted({p.tenant_id for p, code in zip(checked, outcome,
                                                                      strict=True) if code == 2}),
                               result)
    return result


class BacklogFullError(PushError):
    """Pushes refused because their tenant's backlog reached ``Plan.max_backlog``."""

    def __init__(self, tenant_ids: list[str], result: EnqueueResult):
        super().__init__(
            f"tenant(s) {', '.join(map(repr, tenant_ids))} reached the plan's max_backlog: "
            f"{len(result.rejected)} pushes were refused, {len(result.accepted)} accepted; "
            "send the same pushes again later (accepted ones come back as duplicates) "
            "or raise the plan's max_backlog"
        )
        self.tenant_ids = tenant_ids
        self.result = result


_CHUNK = 100


def _run(r: redis.Redis, calls: Sequence[ScriptCall], wait_aof_ms: int | None,
         replicas_to_wait: int, replica_wait_ms: int) -> list[Any]:
    return run_scripts(r, calls, wait_aof_ms=wait_aof_ms, replicas_to_wait=replicas_to_wait,
                       replica_wait_ms=replica_wait_ms)


def _backlog_caps(r: redis.Redis, tenant_ids: set[str]) -> dict[str, int]:
    """Each tenant's Plan.max_backlog, or -1 for a tenant with no plan stored."""
    ordered = sorted(tenant_ids)
    pipe = r.pipeline(transaction=False)
    for tenant_id in ordered:
        pipe.hget(keys.tenant_meta(tenant_id), "plan")
    caps = {}
    for tenant_id, raw in zip(ordered, pipe.execute(), strict=True):
        caps[tenant_id] = int(json.loads(raw).get("max_backlog", -1)) if raw else -1
    return caps


def _enqueue_call(
    r: redis.Redis, tenant_id: str, lane: str, pushes: Sequence[Push], now: float,
    retention_seconds: int, cap: int, sealer: Sealer | None,
) -> ScriptCall:
    script_keys = [
        keys.outbox_stream(tenant_id, lane),
        keys.status_counts(tenant_id),
        keys.outbox_stream(tenant_id, "transactional"),
        keys.outbox_stream(tenant_id, "marketing"),
    ]
    args: list[str | int | float] = [repr(now), retention_seconds, cap, lane]
    for push in pushes:
        script_keys.append(keys.push_status(tenant_id, push.push_id))
        m = message(push, push.enqueued_at or now)
        if sealer is not None:
            m = sealer.seal(r, tenant_id, push.push_id, m)
        args += [push.push_id, push.user_id, push.channel, m, push.topic]
    return _ENQUEUE, script_keys, args


_FORBIDDEN_IN_IDS = re.compile(r"[{}\n\r]")
# json.dumps writes a character as at most 12 ("\ud83d\ude00"); the object adds its own 40.
_JSON_WORST_CASE = 12


def _validated(push: Push, valid_tenants: set[str]) -> Push:
    if push.tenant_id not in valid_tenants:
        try:
            keys.validate_tenant_id(push.tenant_id)
        except ValueError as e:
            raise InvalidInputError("tenant_id", str(e)) from None
        valid_tenants.add(push.tenant_id)
    for name in ("push_id", "user_id"):
        value = getattr(push, name)
        if not isinstance(value, str) or not value or _FORBIDDEN_IN_IDS.search(value):
            raise InvalidInputError(
                name, f"must be a non-empty string without braces or newlines, got {value!r}"
            )
    if push.lane not in keys.LANES:
        raise InvalidInputError("lane", f"must be one of {keys.LANES}, got {push.lane!r}")
    if push.channel not in CHANNELS:
        raise InvalidInputError("channel", f"must be one of {CHANNELS}, got {push.channel!r}")
    check_topic(push.topic, may_be_empty=True)
    for name in ("title", "body", "campaign_id"):
        if not isinstance(getattr(push, name), str):
            raise InvalidInputError(name, f"must be a string, got {getattr(push, name)!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in push.data.items()):
        raise InvalidInputError("data", "keys and values must be strings")
    chars = len(push.title) + len(push.body) + sum(len(k) + len(v) + 6 for k, v in push.data.items())
    if 40 + _JSON_WORST_CASE * chars > MAX_PAYLOAD_BYTES:  # only then is the exact size needed
        payload = json.dumps({"title": push.title, "body": push.body, "data": dict(push.data)})
        size = len(payload.encode())
        if size > MAX_PAYLOAD_BYTES:
            raise InvalidInputError(
                "body",
                f"title, body and data take {size} bytes as JSON, more than "
                f"{MAX_PAYLOAD_BYTES}; send a shorter text or a link to the content",
            )
    if push.enqueued_at < 0:
        raise InvalidInputError("enqueued_at", f"must be epoch seconds, got {push.enqueued_at!r}")
    return push
