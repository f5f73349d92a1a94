"""Per-user consent: an append-only ledger per tenant and user, and what it lets pushpilot do.

Three purposes: ``marketing`` (campaigns and the marketing lane), ``profiling`` (the user's
behaviour in training sets and scores) and ``transactional`` (messages the user needs, such as
a risk alert; its kind is ``required``, so it cannot be denied). Each change is granted, denied
or revoked, with the time, its source (``api``, ``cli``, a tenant's consent banner) and the
version of the privacy policy the user saw. A purpose nobody has recorded for a user is
granted by default (the tenant collects consent and tells pushpilot of refusals); the ledger says
so as ``source="default"``.

Below the purposes, a user may refuse marketing on one **topic** (``topic:<name>``, a topic the
tenant created with ``create_topic``) or one **channel** (``channel:inbox``,
``channel:webhook``). A topic of the ``required`` kind (order updates, security notices)
cannot be refused, like ``transactional``. A marketing push names its topic
(``Push.topic``); delivery suppresses it with ``rule: consent`` when the user refused its
topic or its channel.

The ledger (``keys.consent_ledger``) is never rewritten. Beside it, one hash per purpose
(``keys.consent_denied``) holds the users it is taken from, written in the same transaction:
the delivery scripts, campaign selection and training read that hash, so a revocation stops
pushes already queued as soon as it is recorded. Topic and channel refusals share one hash,
``keys.consent_denied_scoped``, with fields ``<user>/<scope>``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from pipeline import keys
from pipeline.errors import InvalidInputError
from pipeline.outbox import CHANNELS, check_topic

__all__ = [
    "PURPOSES",
    "CHANNELS",
    "Topic",
    "create_topic",
    "list_topics",
    "scoped_field",
    "scope_refusers",
    "has_granted_since_erasure",
    "REQUIRED_PURPOSES",
    "STATUSES",
    "ConsentChange",
    "Preferences",
    "record_consent",
    "preferences",
    "denied_users",
]

PURPOSES: tuple[str, ...] = ("marketing", "profiling", "transactional")
#: Purposes of the ``required`` kind: the service itself, never unsubscribed.
REQUIRED_PURPOSES: frozenset[str] = frozenset({"transactional"})
STATUSES: tuple[str, ...] = ("granted", "denied", "revoked")
_TAKEN = frozenset({"denied", "revoked"})
_MAX_TEXT = 128
_KINDS = ("optional", "required")
_MAX_TOPICS = 1000


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    kind: str = "optional"  # "required": the user cannot unsubscribe (order updates, security)
    description: str = ""


def create_topic(r: redis.Redis, tenant_id: str, name: str, *, kind: str = "optional",
                 description: str = "") -> Topic:
    """Create or change one of the tenant's topics. A topic may become ``required`` only while
    no user refused it, so no refusal on record is silently overridden."""
    from pipeline import tenants

    tenants.get_tenant(r, tenant_id)
    check_topic(name)
    if kind not in _KINDS:
        raise InvalidInputError("kind", f"choose from {list(_KINDS)}, got {kind!r}")
    if not isinstance(description, str) or len(description) > 500:
        raise InvalidInputError("description", "at most 500 characters of text")
    registry = keys.topics(tenant_id)
    if not r.hexists(registry, name) and r.hlen(registry) >= _MAX_TOPICS:
        raise InvalidInputError("topic", f"a tenant has at most {_MAX_TOPICS} topics")
    scope = f"/topic:{name}"
    if kind == "required" and any(field.endswith(scope) for field, _ in r.hscan_iter(
            keys.consent_denied_scoped(tenant_id), match=f"*{scope}")):
        raise InvalidInputError("kind", f"users refused topic {name!r}; it cannot become required")
    topic = Topic(name, kind, description)
    r.hset(registry, name, json.dumps({"kind": kind, "description": description}))
    return topic


def list_topics(r: redis.Redis, tenant_id: str) -> list[Topic]:
    return [Topic(name, **json.loads(raw)) for name, raw in sorted(r.hgetall(keys.topics(tenant_id)).items())]


def scoped_field(user_id: str, scope: str) -> str:
    """The field of ``keys.consent_denied_scoped`` for a user and a ``topic:``/``channel:`` scope."""
    return f"{user_id}/{scope}"


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """One ledger entry: a purpose granted, denied or revoked."""

    purpose: str
    status: str
    at: float  # epoch seconds
    source: str
    policy_version: str

    @property
    def allows(self) -> bool:
        return self.status not in _TAKEN


@dataclass(frozen=True, slots=True)
class Preferences:
    """A user's consent now (the last change per purpose, topic and channel, or the default)
    and its history. ``current`` holds the purposes, the tenant's topics and the channels."""

    tenant_id: str
    user_id: str
    current: dict[str, ConsentChange]
    history: list[ConsentChange]

    required: frozenset[str] = REQUIRED_PURPOSES

    def allows(self, purpose: str) -> bool:
        return self.current[purpose].allows

    def _state(self, scope: str) -> dict[str, Any]:
        change = self.current[scope]
        return {**asdict(change), "allowed": change.allows,
                "kind": "required" if scope in self.required else "optional"}

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "purposes": {p: self._state(p) for p in self.current if p in PURPOSES},
            "topics": {p.removeprefix("topic:"): self._state(p) for p in self.current
                       if p.startswith("topic:")},
            "channels": {p.removeprefix("channel:"): self._state(p) for p in self.current
                         if p.startswith("channel:")},
            "history": [asdict(c) for c in self.history],
        }


def _text(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(field, f"must be non-empty text, got {value!r}")
    if len(value) > _MAX_TEXT or any(c in value for c in "\r\n"):
        raise InvalidInputError(field, f"must be one line of at most {_MAX_TEXT} characters")
    return value.strip()


def scope_refusers(r: redis.Redis, tenant_id: str, scopes: Iterable[str]) -> set[str]:
    """The users who refused marketing on any of ``scopes`` (``topic:<name>``, ``channel:<name>``)."""
    wanted = set(scopes)
    out: set[str] = set()
    if not wanted or not r.exists(keys.consent_denied_scoped(tenant_id)):
        return out
    for field, _ in r.hscan_iter(keys.consent_denied_scoped(tenant_id), count=1000):
        user, _, scope = field.rpartition("/")
        if scope in wanted:
            out.add(user)
    return out


def _check_changes(changes: Mapping[str, str], topics: Mapping[str, Topic]) -> dict[str, str]:
    if not isinstance(changes, Mapping) or not changes:
        raise InvalidInputError("purposes", f"give at least one of {list(PURPOSES)}, "
                                f"topic:<name> or channel:<name>, each one of {list(STATUSES)}")
    out: dict[str, str] = {}
    for scope, status in changes.items():
        kind, _, name = str(scope).partition(":")
        if kind == "topic" and name in topics:
            required = topics[name].kind == "required"
        elif kind == "topic":
            raise InvalidInputError("purposes", f"unknown topic {name[:70]!r}; the tenant's topics "
                                    f"are {sorted(topics)[:20]} (create one with `pushpilot topic create`)")
        elif kind == "channel" and name in CHANNELS:
            required = False
        elif kind == "channel":
            raise InvalidInputError("purposes", f"unknown channel {name[:70]!r}; choose from {list(CHANNELS)}")
        elif scope in PURPOSES:
            required = scope in REQUIRED_PURPOSES
        else:
            raise InvalidInputError("purposes", f"unknown purpose {str(scope)[:70]!r}; choose from "
                                    f"{list(PURPOSES)}, topic:<name> or channel:<name>")
        if status not in STATUSES:
            raise InvalidInputError(scope, f"unknown status {status!r}; choose from {list(STATUSES)}")
        if required and status in _TAKEN:
            raise InvalidInputError(
                scope, "is required (messages the service needs to send, such as alerts), so it "
                "cannot be denied; deny marketing instead")
        out[scope] = status
    return out


def record_consent(
    r: redis.Redis,
    tenant_id: str,
    user_id: str,
    changes: Mapping[str, str],
    *,
    source: str,
    policy_version: str,
    at: float | None = None,
) -> Preferences:
    """Append the changes (purpose -> status) to the user's ledger and apply them.

    Everything is checked before anything is written (a bad purpose, status, source or policy
    version raises InvalidInputError and changes nothing); the ledger entries and the
    per-purpose state are written in one transaction. Returns the user's preferences after it.
    """
    has_scopes = isinstance(changes, Mapping) and any(str(k).startswith("topic:") for k in changes)
    checked = _check_changes(changes, {t.name: t for t in list_topics(r, tenant_id)} if has_scopes else {})
    source = _text("source", source)
    policy_version = _text("policy_version", policy_version)
    try:
        ledger = keys.consent_ledger(tenant_id, user_id)
    except ValueError as e:
        raise InvalidInputError("user_id", str(e)) from e
    when = time.time() if at is None else float(at)
    pipe = r.pipeline(transaction=True)
    for purpose, status in checked.items():
        change = ConsentChange(purpose, status, when, source, policy_version)
        pipe.xadd(ledger, {k: str(v) for k, v in asdict(change).items()})
        if purpose in PURPOSES:
            denied, field = keys.consent_denied(tenant_id, purpose), user_id
        else:
            denied, field = keys.consent_denied_scoped(tenant_id), scoped_field(user_id, purpose)
        if status in _TAKEN:
            pipe.hset(denied, field, json.dumps({"status": status, "at": when, "source": source}))
        else:
            pipe.hdel(denied, field)
    pipe.execute()
    return preferences(r, tenant_id, user_id)


def _change(fields: Mapping[str, str]) -> ConsentChange:
    return ConsentChange(fields["purpose"], fields["status"], float(fields["at"]), fields["source"],
                         fields["policy_version"])


def has_granted_since_erasure(r: redis.Redis, tenant_id: str, user_id: str, purpose: str) -> bool:
    """Whether the user's ledger (which an erasure deletes) ends with ``purpose`` granted."""
    try:
        ledger = keys.consent_ledger(tenant_id, user_id)
    except ValueError as e:
        raise InvalidInputError("user_id", str(e)) from e
    last = [f["status"] for _, f in r.xrange(ledger) if f.get("purpose") == purpose]
    return bool(last) and last[-1] not in _TAKEN


def preferences(r: redis.Redis, tenant_id: str, user_id: str) -> Preferences:
    """The user's consent per purpose now and every change recorded, oldest first."""
    try:
        ledger = keys.consent_ledger(tenant_id, user_id)
    except ValueError as e:
        raise InvalidInputError("user_id", str(e)) from e
    history = [_change(fields) for _, fields in r.xrange(ledger)]
    topics = list_topics(r, tenant_id)
    scopes = [*PURPOSES, *(f"topic:{t.name}" for t in topics), *(f"channel:{c}" for c in CHANNELS)]
    current = {p: ConsentChange(p, "granted", 0.0, "default", "") for p in scopes}
    from pipeline.subjects import erased_users  # subjects builds on this module

    if not any(c.purpose == "marketing" for c in history) and erased_users(r, tenant_id, [user_id]):
        # The erasure removed the user's refusal with the rest; marketing waits for a grant.
        current["marketing"] = ConsentChange("marketing", "denied", 0.0, "erasure", "")
    current.update({c.purpose: c for c in history if c.purpose in current})
    required = REQUIRED_PURPOSES | {f"topic:{t.name}" for t in topics if t.kind == "required"}
    return Preferences(tenant_id, user_id, current, history, frozenset(required))


def denied_users(r: redis.Redis, tenant_id: str, purpose: str,
                 user_ids: Iterable[str] | None = None) -> set[str]:
    """The users (of ``user_ids``, or all) who denied or revoked ``purpose``."""
    if purpose not in PURPOSES:
        raise InvalidInputError("purpose", f"unknown purpose {purpose!r}; choose from {list(PURPOSES)}")
    key = keys.consent_denied(tenant_id, purpose)
    if user_ids is None:
        return set(r.hkeys(key))
    ids = list(dict.fromkeys(str(u) for u in user_ids))
    if not ids:
        return set()
    return {u for u, v in zip(ids, r.hmget(key, ids), strict=True) if v is not None}
