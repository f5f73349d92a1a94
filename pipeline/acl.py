"""Per-tenant Redis ACL users: hard isolation for tenants whose plan asks for it.

A tenant's user may touch only keys and channels under ``keys.tenant_pattern(tenant)``; the
server itself refuses anything else, whatever bug a tenant-scoped worker has. Commands that would
reveal other tenants' key or channel names (SCAN, KEYS, PUBSUB CHANNELS...) and administration
are denied. The password is derived from the tenant's secret, so it is never stored anywhere:
whoever may read the secret can connect as the tenant, and rotating the secret rotates it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis

from pipeline import keys, tenants
from pipeline.redis_server import connect

__all__ = ["TenantCredentials", "acl_username", "create_tenant_user", "delete_tenant_user",
           "connect_as_tenant"]

# Everything but administration, then the commands that list names beyond the key patterns.
_RULES = ("+@all", "-@admin", "-@dangerous", "-scan", "-randomkey", "-pubsub", "-select",
          "-swapdb", "-move", "-copy", "-psubscribe", "-punsubscribe")


@dataclass(frozen=True)
class TenantCredentials:
    tenant_id: str
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password into a log
        return f"TenantCredentials(tenant_id={self.tenant_id!r}, username={self.username!r})"


def acl_username(tenant_id: str) -> str:
    return f"pp-tenant-{keys.validate_tenant_id(tenant_id)}"


def _password(secret: bytes) -> str:
    return hmac.new(secret, b"pushpilot redis acl user", hashlib.sha256).hexdigest()


def create_tenant_user(r: redis.Redis, tenant_id: str) -> TenantCredentials:
    """Create or reset the tenant's ACL user; ``r`` must be allowed ``ACL SETUSER``."""
    password = _password(tenants.tenant_secret(r, tenant_id))
    username = acl_username(tenant_id)
    pattern = keys.tenant_pattern(tenant_id)
    r.execute_command("ACL", "SETUSER", username, "reset", "on", f">{password}",
                      f"~{pattern}", f"&{pattern}", *_RULES)
    return TenantCredentials(tenant_id=tenant_id, username=username, password=password)


def delete_tenant_user(r: redis.Redis, tenant_id: str) -> bool:
    return bool(r.execute_command("ACL", "DELUSER", acl_username(tenant_id)))


def connect_as_tenant(url: str, credentials: TenantCredentials, **kwargs: object) -> redis.Redis:
    """A client on ``url`` authenticated as the tenant's ACL user, whoever ``url`` names."""
    return connect(_without_user(url), username=credentials.username,
                   password=credentials.password, **kwargs)


def _without_user(url: str) -> str:
    # redis-py lets a URL's user and password win over keyword arguments: an admin URL would
    # log the tenant's worker in as the admin.
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
