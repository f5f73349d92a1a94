"""The outbox: pushes accepted for delivery, one Redis stream per tenant and lane.

A push id is its idempotency key: enqueueing an id that was ever enqueued changes nothing and is
reported as a duplicate. Each push is accepted by one Lua script, so the id guard, the outbox
entry and the "queued" status record are written together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis

from pipeline import keys
from pipeline.errors import InvalidInputError
from pipeline.receipts import DEFAULT_RETENTION_SECONDS, ScriptCall, StatusScript, run_scripts

__all__ = [
    "CHANNELS",
    "MAX_PAYLOAD_BYTES",
    "Push",
    "EnqueueResult",
    "make_push_id",
    "enqueue",
]

CHANNELS = ("inbox", "webhook")
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


@dataclass(frozen=True)
class EnqueueResult:
    accepted: list[str]
    duplicates: list[str]


def make_push_id(*parts: str) -> str:
    """A deterministic idempotency key, e.g. ``make_push_id(campaign_id, user_id, variant)``."""
    if not parts:
        raise ValueError("make_push_id needs at least one part")
    # The unit separator cannot appear in ordinary ids, so ("a", "bc") and ("ab", "c") differ.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


_ENQUEUE = StatusScript("""
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 8))
redis.call('HSET', KEYS[3], 'user_id', ARGV[4], 'lane', ARGV[5], 'channel', ARGV[6],
           'campaign_id', ARGV[7], 'outbox_id', id)
mark(KEYS[3], KEYS[4], 'queued', ARGV[2], '')
retain(KEYS[3], ARGV[3])
return 1
""")


def enqueue(
    r: redis.Redis,
    pushes: Sequence[Push],
    batch_size: int = 500,
    *,
    retention_seconds: int = DEFAULT_RETENTION_SECONDS,
) -> EnqueueResult:
    """Accept pushes into their tenants' outboxes; all are validated before any is written."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    now = time.time()
    calls = [_enqueue_call(p, now, retention_seconds) for p in map(_validated, pushes)]
    accepted: list[str] = []
    duplicates: list[str] = []
    for start in range(0, len(calls), batch_size):
        batch = calls[start : start + batch_size]
        for push, result in zip(pushes[start : start + batch_size], run_scripts(r, batch),
                                strict=True):
            if isinstance(result, Exception):
                raise result
            (accepted if result == 1 else duplicates).append(push.push_id)
    return EnqueueResult(accepted=accepted, duplicates=duplicates)


def _enqueue_call(push: Push, now: float, retention_seconds: int) -> ScriptCall:
    enqueued_at = push.enqueued_at or now
    tenant_id = push.tenant_id
    script_keys = [
        keys.push_ids(tenant_id),
        keys.outbox_stream(tenant_id, push.lane),
        keys.push_status(tenant_id, push.push_id),
        keys.status_counts(tenant_id),
    ]
    args: list[str | int | float] = [
        push.push_id, repr(now), retention_seconds,
        push.user_id, push.lane, push.channel, push.campaign_id,
        # From here on: the outbox entry's fields, which the delivery worker reads.
        "push_id", push.push_id,
        "user_id", push.user_id,
        "channel", push.channel,
        "title", push.title,
        "body", push.body,
        "data", json.dumps(dict(push.data), separators=(",", ":")),
        "campaign_id", push.campaign_id,
        "enqueued_at", repr(enqueued_at),
    ]
    return _ENQUEUE, script_keys, args


def _validated(push: Push) -> Push:
    try:
        keys.validate_tenant_id(push.tenant_id)
    except ValueError as e:
        raise InvalidInputError("tenant_id", str(e)) from None
    for name in ("push_id", "user_id"):
        value = getattr(push, name)
        if not isinstance(value, str) or not value or any(c in value for c in "{}\n\r"):
            raise InvalidInputError(
                name, f"must be a non-empty string without braces or newlines, got {value!r}"
            )
    if push.lane not in keys.LANES:
        raise InvalidInputError("lane", f"must be one of {keys.LANES}, got {push.lane!r}")
    if push.channel not in CHANNELS:
        raise InvalidInputError("channel", f"must be one of {CHANNELS}, got {push.channel!r}")
    for name in ("title", "body", "campaign_id"):
        if not isinstance(getattr(push, name), str):
            raise InvalidInputError(name, f"must be a string, got {getattr(push, name)!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in push.data.items()):
        raise InvalidInputError("data", "keys and values must be strings")
    payload = json.dumps({"title": push.title, "body": push.body, "data": dict(push.data)})
    size = len(payload.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidInputError(
            "body",
            f"title, body and data take {size} bytes as JSON, more than {MAX_PAYLOAD_BYTES}; "
            "send a shorter text or a link to the content",
        )
    if push.enqueued_at < 0:
        raise InvalidInputError("enqueued_at", f"must be epoch seconds, got {push.enqueued_at!r}")
    return push
