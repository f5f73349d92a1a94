"""A tenant's privacy policy and the audit of its privacy runs, in Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from pipeline import keys
from pipeline.errors import UnknownTenantError
from pipeline.privacy.policy import PrivacyPolicy
from pipeline.privacy.table import PrivacyAudit

__all__ = ["save_policy", "load_policy", "tenant_policy", "record_audit", "recent_audits"]

_AUDIT_MAX_ENTRIES = 1000


def _check_tenant(r: redis.Redis, tenant_id: str) -> None:
    if not r.sismember(keys.tenants_set(), keys.validate_tenant_id(tenant_id)):
        raise UnknownTenantError(tenant_id)


def save_policy(r: redis.Redis, tenant_id: str, policy: PrivacyPolicy) -> None:
    """Store the tenant's policy; later privacy runs of the tenant use it."""
    _check_tenant(r, tenant_id)
    r.set(keys.privacy_policy(tenant_id), json.dumps(policy.to_dict(), sort_keys=True))


def load_policy(r: redis.Redis, tenant_id: str) -> PrivacyPolicy | None:
    """The tenant's stored policy, or None when it has not set one."""
    raw = r.get(keys.privacy_policy(tenant_id))
    if raw is None:
        return None
    return _policy_from_json(raw)


def _policy_from_json(raw: str | bytes) -> PrivacyPolicy:
    data = json.loads(raw)
    # Policies stored before the HTTP-edge fields existed get those fields' defaults.
    return PrivacyPolicy(
        operators=data["operators"],
        default_operator=data["default_operator"],
        user_ids=data.get("user_ids", "reject"),
        push_operators=data.get("push_operators", {}),
        push_default_operator=data.get("push_default_operator", "keep"),
    )


def tenant_policy(r: redis.Redis, tenant_id: str) -> PrivacyPolicy:
    """The tenant's stored policy, else the default one."""
    return load_policy(r, tenant_id) or PrivacyPolicy.default()


def record_audit(
    r: redis.Redis, tenant_id: str, audit: PrivacyAudit, *, source: str, rows: int
) -> str:
    """Append one run's counts (per column and entity type, never values) to the audit stream."""
    entry = {
        "at": f"{time.time():.3f}",
        "source": source,
        "rows": str(rows),
        "total": str(audit.total()),
        "counts": json.dumps(audit.counts, sort_keys=True),
    }
    entry_id = r.xadd(keys.privacy_audit(tenant_id), entry, maxlen=_AUDIT_MAX_ENTRIES, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def recent_audits(r: redis.Redis, tenant_id: str, count: int = 10) -> list[dict[str, Any]]:
    """The tenant's latest privacy runs, newest first."""
    out: list[dict[str, Any]] = []
    for entry_id, fields in r.xrevrange(keys.privacy_audit(tenant_id), count=count):
        f = {_text(k): _text(v) for k, v in fields.items()}
        out.append({
            "id": _text(entry_id),
            "at": float(f["at"]),
            "source": f["source"],
            "rows": int(f["rows"]),
            "total": int(f["total"]),
            "counts": json.loads(f["counts"]),
        })
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
