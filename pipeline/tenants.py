"""Tenants, their API keys (stored hashed, shown once) and their secrets, in Redis.

An API key expires (``DEFAULT_KEY_DAYS`` unless asked otherwise), can be rotated (the new key is
valid at once, the old one until the end of a grace period, so clients switch without
downtime) and revoked (refused from then on; the API's key cache holds a key for half a second).
Creating, rotating and revoking a key are audit entries (``pipeline.audit``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from pipeline import audit, keys
from pipeline.errors import AuthError, InvalidInputError, TenantExistsError, UnknownTenantError

__all__ = [
    "SCOPES",
    "Plan",
    "Tenant",
    "ApiKey",
    "create_tenant",
    "get_tenant",
    "list_tenants",
    "tenant_exists",
    "create_api_key",
    "list_api_keys",
    "rotate_api_key",
    "revoke_api_key",
    "authenticate",
    "DEFAULT_KEY_DAYS",
    "MAX_KEY_DAYS",
    "tenant_secret",
    "issue_user_token",
    "verify_user_token",
    "peek_token_tenant",
    "set_plan",
    "set_webhook_url",
    "webhook_url",
    "key_digest",
    "key_id_of",
]

DEFAULT_KEY_DAYS = 90
MAX_KEY_DAYS = 3650
_DAY = 86_400.0
SCOPES = ("events:write", "score", "push:send", "campaigns:write", "models:write", "consent", "admin")
_KEY_PREFIX = "ppk_"


@dataclass(frozen=True)
class Plan:
    requests_per_second: int = 200
    sends_per_second: int = 500
    max_backlog: int = 1_000_000
    # sends_per_second 0 means no limit on sending.
    # Tokens the send bucket holds when full; 0 means a tenth of a second of sends_per_second.
    send_burst: int = 0
    # Marketing pushes per user per local day / ISO week; 0 means no cap.
    marketing_per_user_per_day: int = 0
    marketing_per_user_per_week: int = 0
    # Local hours [start, end) in the user's time zone with no marketing pushes; may wrap midnight.
    quiet_hours_start: int | None = None
    quiet_hours_end: int | None = None
    # Hard isolation: tenant-scoped workers connect as the tenant's Redis ACL user.
    is_hard_isolated: bool = False
    # Weighted round robin: entries a worker takes from the tenant per pass, in batches.
    delivery_weight: int = 1

    def __post_init__(self) -> None:
        if self.sends_per_second < 1 or self.requests_per_second < 1:
            # A rate of 0 would stall the tenant's lanes forever; pause a tenant another way.
            raise InvalidInputError(
                "plan", f"sends_per_second and requests_per_second must be >= 1, got "
                f"{self.sends_per_second} and {self.requests_per_second}"
            )
        if self.max_backlog < 0 or self.send_burst < 0:
            raise InvalidInputError("plan", "bursts and backlogs must be >= 0")
        if self.delivery_weight < 1:
            raise InvalidInputError("delivery_weight", f"must be >= 1, got {self.delivery_weight}")
        hours = (self.quiet_hours_start, self.quiet_hours_end)
        if (hours[0] is None) != (hours[1] is None) or any(
            h is not None and not 0 <= h <= 23 for h in hours
        ):
            raise InvalidInputError(
                "quiet_hours", f"give both start and end as hours 0-23, got {hours}"
            )

    @property
    def burst(self) -> int:
        return self.send_burst or max(1, self.sends_per_second // 10)

    @property
    def has_marketing_rules(self) -> bool:
        return bool(self.marketing_per_user_per_day or self.marketing_per_user_per_week
                    or self.quiet_hours_start is not None)


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    created_at: float
    plan: Plan = field(default_factory=Plan)


@dataclass(frozen=True)
class ApiKey:
    tenant_id: str
    key_id: str
    scopes: tuple[str, ...]
    # Epoch seconds after which the key is refused; None for keys made before keys expired.
    expires_at: float | None = None

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def key_id_of(api_key: str) -> str:
    """The public id inside a key (``ppk_<id>_<secret>``), as key lists and the audit show it."""
    return api_key.removeprefix(_KEY_PREFIX).split("_", 1)[0]


def key_digest(api_key: str) -> str:
    """What we store of a key; also what a cache may hold instead of the key itself."""
    return _hash_key(api_key)


def _hash_key(api_key: str) -> str:
    # Keys are 32 random bytes, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(api_key.encode()).hexdigest()


def tenant_exists(r: redis.Redis, tenant_id: str) -> bool:
    keys.validate_tenant_id(tenant_id)
    return bool(r.sismember(keys.tenants_set(), tenant_id))


def create_tenant(r: redis.Redis, tenant_id: str, plan: Plan | None = None) -> Tenant:
    try:
        keys.validate_tenant_id(tenant_id)
    except ValueError as e:
        raise InvalidInputError("tenant", str(e)) from None
    plan = plan or Plan()
    tenant = Tenant(tenant_id=tenant_id, created_at=time.time(), plan=plan)
    meta = {
        "created_at": str(tenant.created_at),
        "plan": json.dumps(plan.__dict__),
    }
    # SADD decides the race between two creators; only the winner writes the rest.
    if not r.sadd(keys.tenants_set(), tenant_id):
        raise TenantExistsError(tenant_id)
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.tenant_meta(tenant_id), mapping=meta)
    pipe.set(keys.tenant_secret(tenant_id), secrets.token_hex(32), nx=True)
    pipe.execute()
    return tenant


def get_tenant(r: redis.Redis, tenant_id: str) -> Tenant:
    if not tenant_exists(r, tenant_id):
        raise UnknownTenantError(tenant_id)
    meta = r.hgetall(keys.tenant_meta(tenant_id))
    plan = Plan(**json.loads(meta.get("plan", "{}")))
    return Tenant(tenant_id=tenant_id, created_at=float(meta.get("created_at", 0)), plan=plan)


def set_plan(r: redis.Redis, tenant_id: str, plan: Plan) -> None:
    """Replace the tenant's plan; workers pick it up within their plan refresh interval."""
    if not tenant_exists(r, tenant_id):
        raise UnknownTenantError(tenant_id)
    r.hset(keys.tenant_meta(tenant_id), "plan", json.dumps(plan.__dict__))


def set_webhook_url(r: redis.Redis, tenant_id: str, url: str) -> None:
    """Where the webhook channel POSTs the tenant's pushes (http or https)."""
    if not tenant_exists(r, tenant_id):
        raise UnknownTenantError(tenant_id)
    if not url.startswith(("http://", "https://")):
        raise InvalidInputError("webhook_url", f"must be an http(s) URL, got {url!r}")
    r.hset(keys.tenant_meta(tenant_id), "webhook_url", url)


def webhook_url(r: redis.Redis, tenant_id: str) -> str | None:
    return r.hget(keys.tenant_meta(tenant_id), "webhook_url")  # type: ignore[no-any-return]


def list_tenants(r: redis.Redis) -> list[str]:
    return sorted(r.smembers(keys.tenants_set()))


def tenant_secret(r: redis.Redis, tenant_id: str) -> bytes:
    secret = r.get(keys.tenant_secret(tenant_id))
    if secret is None:
        raise UnknownTenantError(tenant_id)
    return bytes.fromhex(secret)


def _check_days(days: float) -> float:
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= MAX_KEY_DAYS:
        raise InvalidInputError("expires_days", f"must be more than 0 and at most {MAX_KEY_DAYS}, "
                                f"got {days!r}")
    return float(days)


def create_api_key(
    r: redis.Redis,
    tenant_id: str,
    scopes: list[str] | tuple[str, ...],
    *,
    expires_days: float = DEFAULT_KEY_DAYS,
    actor: str = "system",
) -> str:
    """A new key for the tenant, valid for ``expires_days``; the caller shows it once, we keep
    only its hash."""
    if not tenant_exists(r, tenant_id):
        raise UnknownTenantError(tenant_id)
    if not scopes or isinstance(scopes, str):
        raise InvalidInputError("scopes", f"give a list of at least one of {', '.join(SCOPES)}")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidInputError("scopes", f"unknown {unknown}; known scopes are {', '.join(SCOPES)}")
    lifetime = _check_days(expires_days) * _DAY
    return _add_key(r, tenant_id, sorted(set(scopes)), time.time() + lifetime, actor,
                    "key.created")


def _add_key(r: redis.Redis, tenant_id: str, scopes: list[str], expires_at: float, actor: str,
             action: str, **detail: object) -> str:
    pipe = r.pipeline(transaction=True)
    api_key = _queue_new_key(pipe, tenant_id, scopes, expires_at, actor, action, **detail)
    pipe.execute()
    return api_key


def _queue_new_key(pipe: Any, tenant_id: str, scopes: list[str], expires_at: float, actor: str,
                   action: str, **detail: object) -> str:
    """Queue a new key's writes and audit entry on ``pipe`` (a MULTI); returns the key.
    ``created_by`` lets an incident revoke what a compromised key made (``incidents``)."""
    key_id = secrets.token_hex(4)
    api_key = f"{_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    digest = _hash_key(api_key)
    record = json.dumps({"key_id": key_id, "scopes": scopes, "created_at": time.time(),
                         "expires_at": expires_at, "created_by": actor})
    pipe.hset(keys.api_key_index(), digest, tenant_id)
    pipe.hset(keys.tenant_api_keys(tenant_id), digest, record)
    audit.record(pipe, tenant_id, actor, action, f"key:{key_id}", scopes=scopes,
                 expires_at=round(expires_at, 3), **detail)
    return api_key


def list_api_keys(r: redis.Redis, tenant_id: str) -> list[dict[str, object]]:
    """The tenant's keys (never the keys themselves), oldest first: id, scopes, created, expiry,
    revocation, and ``state``: ``valid``, ``expired`` or ``revoked``."""
    if not tenant_exists(r, tenant_id):
        raise UnknownTenantError(tenant_id)
    now = time.time()
    found = []
    for record in r.hvals(keys.tenant_api_keys(tenant_id)):
        data = json.loads(record)
        expires_at = data.get("expires_at")
        state = ("revoked" if data.get("revoked_at") else
                 "expired" if expires_at is not None and now >= expires_at else "valid")
        found.append({"key_id": data["key_id"], "scopes": data["scopes"],
                      "created_at": data["created_at"], "expires_at": expires_at,
                      "revoked_at": data.get("revoked_at"), "state": state,
                      "created_by": data.get("created_by", "")})
    return sorted(found, key=lambda k: (k["created_at"], k["key_id"]))


def _find_key(r: redis.Redis, tenant_id: str, key_id: str) -> tuple[str, dict[str, Any]]:
    if not tenant_exists(r, tenant_id):
        raise UnknownTenantError(tenant_id)
    if not isinstance(key_id, str) or not key_id:
        raise InvalidInputError("key_id", "give the id a key list shows, e.g. 3f9a0c1e")
    for digest, record in r.hgetall(keys.tenant_api_keys(tenant_id)).items():
        data = json.loads(record)
        if data["key_id"] == key_id:
            return digest, data
    raise InvalidInputError("key_id", f"tenant {tenant_id!r} has no key {key_id!r}; "
                            "see `pushpilot tenant key list`")


def rotate_api_key(
    r: redis.Redis,
    tenant_id: str,
    key_id: str,
    *,
    grace_seconds: float = _DAY,
    expires_days: float = DEFAULT_KEY_DAYS,
    actor: str = "system",
) -> tuple[str, float]:
    """A new key with the old one's scopes; the old one stays valid for ``grace_seconds`` more
    (or until its own expiry, if sooner). Returns the new key and the old one's new expiry."""
    if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, (int, float)) or not (
        0 <= grace_seconds <= 30 * _DAY
    ):
        raise InvalidInputError("grace_seconds", f"must be 0 to {int(30 * _DAY)}, got "
                                f"{grace_seconds!r}")
    lifetime = _check_days(expires_days) * _DAY
    digest, _ = _find_key(r, tenant_id, key_id)
    name = keys.tenant_api_keys(tenant_id)
    # One transaction that re-reads the old key: a revocation landing meanwhile is never undone.
    def rotate(pipe: Any) -> tuple[str, float]:
        data = json.loads(pipe.hget(name, digest))
        if data.get("revoked_at"):
            raise InvalidInputError("key_id", f"key {key_id!r} is revoked; create a new key instead")
        now = time.time()
        old_expiry = data.get("expires_at")
        ends = now + grace_seconds
        data["expires_at"] = ends if old_expiry is None else min(float(old_expiry), ends)
        pipe.multi()
        pipe.hset(name, digest, json.dumps(data))
        new_key = _queue_new_key(pipe, tenant_id, list(data["scopes"]), now + lifetime, actor,
                                 "key.rotated", replaces=key_id,
                                 old_expires_at=round(data["expires_at"], 3))
        return new_key, float(data["expires_at"])

    return r.transaction(rotate, name, value_from_callable=True)  # type: ignore[no-any-return]


def revoke_api_key(r: redis.Redis, tenant_id: str, key_id: str, *, actor: str = "system") -> None:
    """Refuse the key from now on (within the API's half-second key cache). Revoking a revoked
    key changes nothing."""
    digest, _ = _find_key(r, tenant_id, key_id)
    name = keys.tenant_api_keys(tenant_id)

    def revoke(pipe: Any) -> None:
        data = json.loads(pipe.hget(name, digest))
        if data.get("revoked_at"):
            return
        data["revoked_at"] = time.time()
        pipe.multi()
        pipe.hset(name, digest, json.dumps(data))
        audit.record(pipe, tenant_id, actor, "key.revoked", f"key:{key_id}")

    r.transaction(revoke, name)


def authenticate(r: redis.Redis, api_key: str, now: float | None = None) -> ApiKey:
    """The key's tenant and scopes, or AuthError for a key we do not know, or one expired or
    revoked. A refused key of a known tenant is audited, at most once a minute per key."""
    if not api_key or not api_key.startswith(_KEY_PREFIX):
        raise AuthError("missing or malformed API key")
    digest = _hash_key(api_key)
    tenant_id = r.hget(keys.api_key_index(), digest)
    record = r.hget(keys.tenant_api_keys(tenant_id), digest) if tenant_id else None
    if not tenant_id or not record:
        raise AuthError("unknown API key")
    data = json.loads(record)
    key = ApiKey(tenant_id=tenant_id, key_id=data["key_id"], scopes=tuple(data["scopes"]),
                 expires_at=data.get("expires_at"))
    now = time.time() if now is None else now
    refused = ("revoked" if data.get("revoked_at") else
               "expired" if key.is_expired(now) else None)
    if refused:
        audit.record_once(r, tenant_id, f"refused:{key.key_id}", 60, f"key:{key.key_id}",
                          "key.refused", f"key:{key.key_id}", reason=refused)
        raise AuthError(f"API key {key.key_id} is {refused}; use a valid key "
                        "(pushpilot tenant key list shows them)")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_user_token(secret: bytes, tenant_id: str, user_id: str, ttl_seconds: int = 3600) -> str:
    """A token the tenant's backend gives its app so a device can open the user's inbox socket."""
    body = _b64(json.dumps({"t": tenant_id, "u": user_id, "exp": int(time.time()) + ttl_seconds}).encode())
    sig = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


def peek_token_tenant(token: str) -> str:
    """The tenant a token claims, unverified: only to find whose secret verifies it."""
    try:
        body, _ = token.split(".", 1)
        return str(json.loads(_unb64(body))["t"])
    except (ValueError, KeyError, TypeError) as e:
        raise AuthError("malformed user token") from e


def verify_user_token(secret: bytes, token: str, now: float | None = None) -> tuple[str, str]:
    """(tenant_id, user_id) of a valid, unexpired token; AuthError otherwise."""
    try:
        body, sig = token.split(".", 1)
        expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(sig, expected):
            raise AuthError("bad user token signature")
        claims = json.loads(_unb64(body))
    except (ValueError, TypeError) as e:
        raise AuthError("malformed user token") from e
    if claims["exp"] < (now if now is not None else time.time()):
        raise AuthError("user token expired")
    return str(claims["t"]), str(claims["u"])
