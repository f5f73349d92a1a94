"""Data-subject requests: export everything held about a user, or erase it.

What pushpilot holds about a user of a tenant, all in Redis under the tenant's prefix: the
pseudonymised profile, online features and send hour, the event history and the user's entries
in the tenant's event stream, the inbox and its cursor, queued and dead-lettered pushes and the
receipts (status trails) of the user's pushes, frequency counters, campaign arm assignments,
the guard's quarantine entry and the consent ledger.

Erasure removes all of it and leaves one tombstone: a keyed hash (HMAC-SHA256 under the
tenant's secret) of the user id, never the id, so the user stays out of future training and
scores without pushpilot keeping who they were. It writes the tombstone first and is
idempotent, so an erasure cut short is finished by running it again. What it cannot reach is
listed in :data:`REMAINS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from pipeline import audit, consent, keys, tenants
from pipeline.atrest import Sealer, SealError, is_sealed
from pipeline.errors import InvalidInputError
from pipeline.outbox import campaign_push_id, entry_content
from pipeline.receipts import status_trails

__all__ = [
    "REMAINS",
    "ErasureReport",
    "export_user",
    "erase_user",
    "erased_users",
    "erasure_count",
    "excluded_from_learning",
]

#: What an erasure does not remove, and until when it stays.
REMAINS: tuple[str, ...] = (
    "backups taken before the erasure hold the user's data until you delete them; a restore of "
    "one brings it back, so erase the user again after restoring it",
    "trained models and their MLflow runs were fitted with the user's data (never their ids); "
    "they stay until retrained and the old versions are deleted, and no new training set or "
    "score includes the user",
    "event ids the tenant sent are kept up to 48 hours to drop duplicates; an id that embeds "
    "the user id stays until then",
    "receipts (status records) of pushes sent outside a campaign whose entry is gone (sent by "
    "webhook, or trimmed from the inbox) hold no user id and cannot be linked to the user; "
    "they expire with the receipts' retention (seven days by default, or the tenant's "
    "receipts_days)",
    "entries deleted from a Redis stream (the event stream, the outboxes) keep their bytes in "
    "the stream's storage until the node holding them is freed, so snapshots (RDB, DUMP-based "
    "backups) may still carry them, and the append-only file holds every past write until "
    "its next rewrite (BGREWRITEAOF)",
)

_CHUNK = 5000


@dataclass(frozen=True)
class ErasureReport:
    tenant_id: str
    removed: dict[str, int] = field(default_factory=dict)
    remains: tuple[str, ...] = REMAINS

    def as_json(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "erased": True, "removed": self.removed,
                "remains": list(self.remains)}


def _user_key_part(tenant_id: str, user_id: str) -> str:
    try:
        keys.user_history(tenant_id, user_id)  # refuses an id no key can hold
    except ValueError as e:
        raise InvalidInputError("user_id", str(e)) from e
    return user_id


def _digest(secret: bytes, user_id: str) -> str:
    return hmac.new(secret, b"erased\x1f" + user_id.encode(), hashlib.sha256).hexdigest()


def erased_users(r: redis.Redis, tenant_id: str, user_ids: Iterable[str]) -> set[str]:
    """The users of ``user_ids`` the tenant erased (their tombstones match)."""
    ids = list(dict.fromkeys(str(u) for u in user_ids))
    if not ids or not r.exists(keys.erased_users(tenant_id)):
        return set()
    secret = tenants.tenant_secret(r, tenant_id)
    found = r.hmget(keys.erased_users(tenant_id), [_digest(secret, u) for u in ids])
    return {u for u, hit in zip(ids, found, strict=True) if hit is not None}


def excluded_from_learning(r: redis.Redis, tenant_id: str, user_ids: Iterable[str]) -> set[str]:
    """The users of ``user_ids`` whose data may not be trained on or scored: those who took
    back profiling consent and those erased."""
    ids = list(dict.fromkeys(str(u) for u in user_ids))
    if not ids:
        return set()
    # One round trip in the usual case (no erasures): /v1/score calls this per request.
    pipe = r.pipeline(transaction=False)
    pipe.hmget(keys.consent_denied(tenant_id, "profiling"), ids)
    pipe.exists(keys.erased_users(tenant_id))
    refused, has_erasures = pipe.execute()
    out = {u for u, v in zip(ids, refused, strict=True) if v is not None}
    return out | erased_users(r, tenant_id, ids) if has_erasures else out


def erasure_count(r: redis.Redis, tenant_id: str) -> int:
    return int(r.hlen(keys.erased_users(tenant_id)))


def _stream_entries(r: redis.Redis, key: str) -> Iterator[tuple[str, dict[str, str]]]:
    start = "-"
    while True:
        batch = r.xrange(key, min=start, count=_CHUNK)
        yield from batch
        if len(batch) < _CHUNK:
            return
        last = batch[-1][0]
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


def _user_entries(r: redis.Redis, key: str, user_id: str) -> list[tuple[str, dict[str, str]]]:
    return [(i, f) for i, f in _stream_entries(r, key) if f.get("user_id") == user_id]


def _dead_letters(r: redis.Redis, tenant_id: str, user_id: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for entry_id, fields in _stream_entries(r, keys.dead_letter_stream(tenant_id)):
        try:
            entry = json.loads(fields.get("entry") or "{}")
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("user_id") == user_id:
            out.append((entry_id, fields))
    return out


def _arm_keys(r: redis.Redis, tenant_id: str) -> list[str]:
    pattern = keys.campaign_arms(tenant_id, "*", "*")
    return list(r.scan_iter(match=pattern, count=1000))


@dataclass
class _Held:
    inbox: list[tuple[str, dict[str, str]]]
    queued: dict[str, list[tuple[str, dict[str, str]]]]
    dead: list[tuple[str, dict[str, str]]]
    events: list[tuple[str, dict[str, str]]]
    arms: dict[str, str]  # arms key -> arm
    push_ids: list[str]


def _held(r: redis.Redis, tenant_id: str, user_id: str) -> _Held:
    inbox = r.xrange(keys.inbox_stream(tenant_id, user_id))
    queued = {lane: _user_entries(r, keys.outbox_stream(tenant_id, lane), user_id) for lane in keys.LANES}
    dead = _dead_letters(r, tenant_id, user_id)
    events = _user_entries(r, keys.events_stream(tenant_id), user_id)
    arm_keys = _arm_keys(r, tenant_id)
    pipe = r.pipeline(transaction=False)
    for key in arm_keys:
        pipe.hget(key, user_id)
    arms = {k: v for k, v in zip(arm_keys, pipe.execute(), strict=True) if v is not None}
    push_ids = list(dict.fromkeys(
        [f["push_id"] for _, f in inbox if f.get("push_id")]
        + [f["push_id"] for entries in queued.values() for _, f in entries if f.get("push_id")]
        + [f["push_id"] for _, f in dead if f.get("push_id")]))
    # A campaign push's id follows from the run and the user, so its receipt is found even when
    # nothing else is left of it (sent by webhook, or its inbox entry trimmed).
    prefix = keys.campaign_arms(tenant_id, "*", "*")[:-3]
    campaign_ids = []
    for key, arm in arms.items():
        campaign_id, _, run_id = key.removeprefix(prefix).partition(":")
        if run_id and arm != "holdout" and not arm.startswith("!"):
            campaign_ids.append(campaign_push_id(campaign_id, run_id, user_id))
    pipe = r.pipeline(transaction=False)
    for push_id in campaign_ids:
        pipe.exists(keys.push_status(tenant_id, push_id))
    push_ids += [p for p, held in zip(campaign_ids, pipe.execute(), strict=True)
                 if held and p not in push_ids]
    return _Held(inbox, queued, dead, events, arms, push_ids)


def export_user(r: redis.Redis, tenant_id: str, user_id: str,
                actor: str | None = None, sealer: Sealer | None = None) -> dict[str, Any] | None:
    """Everything held about the user, as JSON-ready data; None when nothing is (so right after
    an erasure). Data that arrived after an erasure is exported, with ``erased_before`` true.
    With ``actor`` an export is recorded in the tenant's privacy audit (counts only, never
    the id). ``sealer`` opens messages stored encrypted; without it they are exported sealed.
    """
    from pipeline.featurestore import load_features, load_profile, load_send_hours
    from pipeline.onlinefeatures import history_events

    tenants.get_tenant(r, tenant_id)
    user_id = _user_key_part(tenant_id, user_id)
    held = _held(r, tenant_id, user_id)
    if sealer is not None:
        held = dataclasses.replace(
            held, inbox=[(i, _open(r, sealer, tenant_id, f)) for i, f in held.inbox],
            queued={lane: [(i, _open(r, sealer, tenant_id, f)) for i, f in entries]
                    for lane, entries in held.queued.items()},
            dead=[(i, _open_dead(r, sealer, tenant_id, f)) for i, f in held.dead])
    features = load_features(r, tenant_id, [user_id])
    history = history_events(r, tenant_id, user_id)
    prefs = consent.preferences(r, tenant_id, user_id)
    frequency = r.hgetall(keys.user_frequency(tenant_id, user_id))
    body: dict[str, Any] = {
        "profile": load_profile(r, tenant_id, user_id),
        "features": None if features.empty else {k: (None if v != v else float(v))
                                                  for k, v in features.iloc[0].items()},
        "send_hour": load_send_hours(r, tenant_id, [user_id]).get(user_id),
        "events": [{"event_time": t.isoformat(), "event_type": kind,
                    "value": None if v != v else float(v)}
                   for t, kind, v in zip(history["event_time"], history["event_type"],
                                         history["value"], strict=True)],
        "events_stream": [dict(f) for _, f in held.events],
        "inbox": [{"id": i, "push_id": f.get("push_id"), "message": _message(f.get("m")),
                   **({"open_error": f["open_error"]} if "open_error" in f else {})}
                  for i, f in held.inbox],
        "inbox_cursor": r.get(keys.inbox_cursor(tenant_id, user_id)),
        "queued": [{"lane": lane, **entry_content(f),
                    **({"sealed_message": f["m"]} if is_sealed(f.get("m", "")) else {})}
                   for lane, entries in held.queued.items() for _, f in entries],
        "dead_letters": [dict(f) for _, f in held.dead],
        "receipts": dict(zip(held.push_ids, status_trails(r, tenant_id, held.push_ids), strict=True)),
        "frequency": frequency,
        "campaigns": [{"key": k.rsplit(":", 2)[-2] + "/" + k.rsplit(":", 1)[-1], "arm": a}
                      for k, a in held.arms.items()],
        "quarantine": r.hget(keys.quarantine(tenant_id), user_id),
        "consent": prefs.as_json(),
    }
    is_empty = not any(v for k, v in body.items() if k != "consent") and not prefs.history
    if actor is not None:
        # The audit trail names the user as the erasure tombstone does, by a keyed digest, and
        # records an export that found nothing too (asking is an access as well).
        audit.record(r, tenant_id, actor, "user.exported",
                     f"user:{_digest(tenants.tenant_secret(r, tenant_id), user_id)}",
                     found=not is_empty)
    if is_empty:
        return None
    if actor is not None:
        _audit(r, tenant_id, f"export by {actor}", {"users": 1})
    return {"tenant_id": tenant_id, "user_id": user_id, "exported_at": time.time(),
            "erased_before": bool(erased_users(r, tenant_id, [user_id])), **body}


def _open(r: redis.Redis, sealer: Sealer, tenant_id: str,
          fields: Mapping[str, str]) -> Mapping[str, str]:
    """An entry with its message opened; one that does not open stays sealed, with the reason
    (an export must not fail on one entry)."""
    try:
        return sealer.open_fields(r, tenant_id, fields)
    except SealError as e:
        return {**fields, "open_error": str(e)}


def _open_dead(r: redis.Redis, sealer: Sealer, tenant_id: str,
               fields: dict[str, str]) -> dict[str, str]:
    """A dead letter with the message of the entry it keeps (JSON in ``entry``) opened."""
    try:
        entry = json.loads(fields.get("entry") or "{}")
    except ValueError:
        return fields
    if not isinstance(entry, dict):
        return fields
    return {**fields, "entry": json.dumps(dict(_open(r, sealer, tenant_id, entry)))}


def _message(m: str | None) -> Any:
    """An inbox entry's message as JSON; a sealed one (no sealer given) as its text."""
    if m is None or is_sealed(m):
        return m
    return json.loads(m)


def erase_user(r: redis.Redis, tenant_id: str, user_id: str, *, actor: str) -> ErasureReport:
    """Remove everything held about the user and leave the tombstone (see the module doc).

    Raises InvalidInputError for an id no key can hold; an unknown tenant is refused before
    anything changes. Erasing a user twice, or one never seen, is allowed and removes nothing
    more. The erasure is recorded in the tenant's privacy audit with counts only.
    """
    tenants.get_tenant(r, tenant_id)
    user_id = _user_key_part(tenant_id, user_id)
    actor = actor.strip() or "unknown"
    secret = tenants.tenant_secret(r, tenant_id)
    # The tombstone first: if the rest is cut short, the user is already kept out of training.
    r.hsetnx(keys.erased_users(tenant_id), _digest(secret, user_id),
             json.dumps({"at": time.time(), "actor": actor}))
    held = _held(r, tenant_id, user_id)
    # Topic and channel refusals: every scope the tenant has, and any the ledger names.
    scopes = {f"topic:{t.name}" for t in consent.list_topics(r, tenant_id)}
    scopes |= {f"channel:{c}" for c in consent.CHANNELS}
    scopes |= {str(f.get("purpose", "")) for _, f in r.xrange(keys.consent_ledger(tenant_id, user_id))}
    scoped = [consent.scoped_field(user_id, s) for s in sorted(scopes - set(consent.PURPOSES) - {""})]
    pipe = r.pipeline(transaction=False)
    pipe.hdel(keys.consent_denied_scoped(tenant_id), *scoped)
    for lane, entries in held.queued.items():
        ids = [i for i, _ in entries]
        if ids:
            stream = keys.outbox_stream(tenant_id, lane)
            pipe.xack(stream, "delivery", *ids)
            pipe.xdel(stream, *ids)
    if held.dead:
        pipe.xdel(keys.dead_letter_stream(tenant_id), *[i for i, _ in held.dead])
    if held.events:
        pipe.xdel(keys.events_stream(tenant_id), *[i for i, _ in held.events])
    for key in held.arms:
        pipe.hdel(key, user_id)
    for push_id in held.push_ids:
        pipe.delete(keys.push_status(tenant_id, push_id), keys.push_retry(tenant_id, push_id))
    pipe.delete(keys.inbox_stream(tenant_id, user_id), keys.inbox_cursor(tenant_id, user_id),
                keys.user_history(tenant_id, user_id), keys.user_frequency(tenant_id, user_id),
                keys.consent_ledger(tenant_id, user_id))
    for key in (keys.user_features(tenant_id), keys.user_profiles(tenant_id), keys.send_hours(tenant_id),
                keys.quarantine(tenant_id), *(keys.consent_denied(tenant_id, p) for p in consent.PURPOSES)):
        pipe.hdel(key, user_id)
    pipe.execute()
    removed = {
        "inbox_entries": len(held.inbox),
        "queued_pushes": sum(len(v) for v in held.queued.values()),
        "dead_letters": len(held.dead),
        "events": len(held.events),
        "receipts": len(held.push_ids),
        "campaign_assignments": len(held.arms),
    }
    _audit(r, tenant_id, f"erase by {actor}", {**removed, "users": 1}, column="erasure")
    audit.record(r, tenant_id, actor, "user.erased", f"user:{_digest(secret, user_id)}", **removed)
    return ErasureReport(tenant_id, removed)


def _audit(r: redis.Redis, tenant_id: str, source: str, counts: dict[str, int],
           column: str = "export") -> None:
    from pipeline.privacy import PrivacyAudit, record_audit  # Presidio's import, only here

    audit = PrivacyAudit()
    for what, n in counts.items():
        audit.add(column, what, n)
    record_audit(r, tenant_id, audit, source=source, rows=1)
