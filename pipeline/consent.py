"""Per-user consent: an append-only ledger per tenant and user, and what it lets pushpilot do.

Three purposes: ``marketing`` (campaigns and the marketing lane), ``profiling`` (the user's
behaviour in training sets and scores) and ``transactional`` (messages the user needs, such as
a risk alert; its kind is ``required``, so it cannot be denied). Each change is granted, denied
or revoked, with the time, its source (``api``, ``cli``, a tenant's consent banner) and the
version of the privacy policy the user saw. A purpose nobody has recorded for a user is
granted by default (the tenant collects consent and tells pushpilot of refusals); the ledger says
so as ``source="default"``.

The ledger (``keys.consent_ledger``) is never rewritten. Beside it, one hash per purpose
(``keys.consent_denied``) holds the users it is taken from, written in the same transaction:
the delivery scripts, campaign selection and training read that hash, so a revocation stops
pushes already queued as soon as it is recorded.
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

__all__ = [
    "PURPOSES",
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
    """A user's consent now (the last change per purpose, or the default) and its history."""

    tenant_id: str
    user_id: str
    current: dict[str, ConsentChange]
    history: list[ConsentChange]

    def allows(self, purpose: str) -> bool:
        return self.current[purpose].allows

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "purposes": {
                p: {**asdict(c), "allowed": c.allows, "kind": "required" if p in REQUIRED_PURPOSES
                    else "optional"}
                for p, c in self.current.items()
            },
            "history": [asdict(c) for c in self.history],
        }


def _text(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(field, f"must be non-empty text, got {value!r}")
    if len(value) > _MAX_TEXT or any(c in value for c in "\r\n"):
        raise InvalidInputError(field, f"must be one line of at most {_MAX_TEXT} characters")
    return value.strip()


def _check_changes(changes: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(changes, Mapping) or not changes:
        raise InvalidInputError("purposes", f"give at least one of {list(PURPOSES)}, each {list(STATUSES)}")
    out: dict[str, str] = {}
    for purpose, status in changes.items():
        if purpose not in PURPOSES:
            raise InvalidInputError("purposes", f"unknown purpose {purpose!r}; choose from {list(PURPOSES)}")
        if status not in STATUSES:
            raise InvalidInputError(purpose, f"unknown status {status!r}; choose from {list(STATUSES)}")
        if purpose in REQUIRED_PURPOSES and status in _TAKEN:
            raise InvalidInputError(
                purpose, "is required (messages the service needs to send, such as alerts), so it "
                "cannot be denied; deny marketing instead")
        out[purpose] = status
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
    checked = _check_changes(changes)
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
        denied = keys.consent_denied(tenant_id, purpose)
        if status in _TAKEN:
            pipe.hset(denied, user_id, json.dumps({"status": status, "at": when, "source": source}))
        else:
            pipe.hdel(denied, user_id)
    pipe.execute()
    return preferences(r, tenant_id, user_id)


def _change(fields: Mapping[str, str]) -> ConsentChange:
    return ConsentChange(fields["purpose"], fields["status"], float(fields["at"]), fields["source"],
                         fields["policy_version"])


def preferences(r: redis.Redis, tenant_id: str, user_id: str) -> Preferences:
    """The user's consent per purpose now and every change recorded, oldest first."""
    try:
        ledger = keys.consent_ledger(tenant_id, user_id)
    except ValueError as e:
        raise InvalidInputError("user_id", str(e)) from e
    history = [_change(fields) for _, fields in r.xrange(ledger)]
    current = {p: ConsentChange(p, "granted", 0.0, "default", "") for p in PURPOSES}
    current.update({c.purpose: c for c in history if c.purpose in current})
    return Preferences(tenant_id, user_id, current, history)


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
