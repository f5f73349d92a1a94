"""Tenants, their API keys (stored hashed, shown once) and their secrets, in Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

import redis

from pipeline import keys
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
    "authenticate",
    "tenant_secret",
    "issue_user_token",
    "verify_user_token",
    "peek_token_tenant",
    "set_plan",
    "set_webhook_url",
    "webhook_url",
    "key_digest",
]

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


def create_api_key(r: redis.Redis, tenant_id: str, scopes: list[str] | tuple[str, ...]) -> str:
    """A new key for the tenant; the caller shows it once, we keep only its hash."""
    if not tenant_exists(r, tenant_id):
        raise UnknownTenantError(tenant_id)
    if not scopes:
        raise InvalidInputError("scopes", f"give at least one of {', '.join(SCOPES)}")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidInputError("scopes", f"unknown {unknown}; known scopes are {', '.join(SCOPES)}")
    key_id = secrets.token_hex(4)
    api_key = f"{_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    digest = _hash_key(api_key)
    record = json.dumps({"key_id": key_id, "scopes": sorted(set(scopes)), "created_at": time.time()})
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.api_key_index(), digest, tenant_id)
    pipe.hset(keys.tenant_api_keys(tenant_id), digest, record)
    pipe.execute()
    return api_key


def authenticate(r: redis.Redis, api_key: str) -> ApiKey:
    """The key's tenant and scopes, or AuthError for a key we do not know."""
    if not api_key or not api_key.startswith(_KEY_PREFIX):
        raise AuthError("missing or malformed API key")
    digest = _hash_key(api_key)
    tenant_id = r.hget(keys.api_key_index(), digest)
    record = r.hget(keys.tenant_api_keys(tenant_id), digest) if tenant_id else None
    if not tenant_id or not record:
        raise AuthError("unknown API key")
    data = json.loads(record)
    return ApiKey(tenant_id=tenant_id, key_id=data["key_id"], scopes=tuple(data["scopes"]))


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
