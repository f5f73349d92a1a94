"""The audit trail: who did what to a tenant, and when, one append-only stream per tenant.

Every admin action is an entry: API key creation, rotation, revocation, the first use of a key in
each hour and a refused (expired or revoked) key, policy and topic changes, exports and erasures,
alert clears, campaign changes and the guard's throttles. An entry holds the time, the actor
(``key:<key_id>`` for an API call, ``cli:<os user>`` for the CLI, ``guard`` for the guard),
the action, its target and a few details; never a key itself nor a personal value. The
stream is never trimmed by pushpilot (not by the retention sweeper either); a backup carries it.

Read it with ``GET /v1/audit`` (admin scope) or ``pushpilot audit --tenant T``.
"""

from __future__ import annotations

import getpass
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import keys
from pipeline.errors import InvalidInputError

__all__ = ["AuditEntry", "record", "record_once", "read", "cli_actor", "MAX_READ"]

MAX_READ = 1000


@dataclass(frozen=True)
class AuditEntry:
    entry_id: str
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.entry_id, "at": self.at, "actor": self.actor, "action": self.action,
                "target": self.target, "detail": self.detail}


def _fields(actor: str, action: str, target: str, detail: dict[str, Any]) -> dict[str, str]:
    return {"at": f"{time.time():.3f}", "actor": actor, "action": action, "target": target,
            "detail": json.dumps(detail, sort_keys=True, default=str)}


def record(r: redis.Redis | redis.client.Pipeline, tenant_id: str, actor: str, action: str,
           target: str = "", **detail: Any) -> None:
    """Append one entry. Given a pipeline, the entry lands in the same transaction as the
    change it records."""
    r.xadd(keys.audit(tenant_id), _fields(actor, action, target, detail))


def record_once(r: redis.Redis, tenant_id: str, what: str, period_seconds: int, actor: str,
                action: str, target: str = "", **detail: Any) -> bool:
    """Append an entry unless one for ``what`` was appended in the last ``period_seconds``."""
    if not r.set(keys.audit_once(tenant_id, what), "1", nx=True, ex=period_seconds):
        return False
    record(r, tenant_id, actor, action, target, **detail)
    return True


# Year 5138: past it a millisecond stream id no longer fits where XRANGE reads it.
_LATEST_SINCE = 1e11


def read(r: redis.Redis, tenant_id: str, *, since: float | None = None, action: str | None = None,
         limit: int = 100) -> list[AuditEntry]:
    """Entries oldest first, from ``since`` (epoch seconds) on, whose action is ``action`` or
    starts with ``action.`` (``key`` finds ``key.created`` and ``key.revoked``)."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_READ:
        raise InvalidInputError("limit", f"must be 1-{MAX_READ}, got {limit!r}")
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))
                              or not 0 <= since <= _LATEST_SINCE):
        raise InvalidInputError("since", f"must be epoch seconds, 0 to {_LATEST_SINCE:.0f}, "
                                         f"got {since!r}")  # NaN fails the range too
    found = (e for e in _entries(r, tenant_id, since, max(limit, 100))
             if action is None or e.action == action or e.action.startswith(action + "."))
    return list(itertools.islice(found, limit))


def read_all(r: redis.Redis, tenant_id: str, *, since: float, until: float) -> Iterator[AuditEntry]:
    """Every entry from ``since`` up to the first after ``until`` (epoch seconds), oldest
    first, a page at a time."""
    return itertools.takewhile(lambda e: e.at <= until, _entries(r, tenant_id, since, 500))


def _entries(r: redis.Redis, tenant_id: str, since: float | None,
             page: int) -> Iterator[AuditEntry]:
    """The tenant's entries from ``since`` on, read ``page`` at a time as they are consumed."""
    start = "-" if since is None else str(int(since * 1000))
    while batch := r.xrange(keys.audit(tenant_id), min=start, count=page):
        for entry_id, fields in batch:
            yield AuditEntry(entry_id=entry_id, at=float(fields.get("at", 0)),
                             actor=fields.get("actor", ""), action=fields.get("action", ""),
                             target=fields.get("target", ""),
                             detail=json.loads(fields.get("detail") or "{}"))
        start = "(" + batch[-1][0]


def cli_actor() -> str:
    """The actor of a CLI command: the operating-system user running it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        return "cli:unknown"
