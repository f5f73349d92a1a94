"""The HTTP API and the realtime gateway: one FastAPI ingress deployment on Ray Serve."""

# No `from __future__ import annotations` here: FastAPI must see real types on the routes
# that Ray Serve copies onto its ingress class, or bodies and headers turn into query params.

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import redis
from fastapi import FastAPI, Header, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from starlette.exceptions import HTTPException

from models.registry import UnsafeModelError
from pipeline import audit, campaigns, consent, guard, keys, outbox, receipts, subjects, tenants
from pipeline.apilimit import Admission, admit_request
from pipeline.atrest import sealer_for
from pipeline.campaigns import runner
from pipeline.campaigns.report import run_report
from pipeline.campaigns.runner import RunConfig, default_run_id
from pipeline.campaigns.scheduler import schedule_campaign, unschedule_campaign
from pipeline.campaigns.store import campaign_status
from pipeline.durability import NotReplicatedError
from pipeline.errors import AuthError, InvalidInputError, PushError
from pipeline.events import ingest_events
from pipeline.featurestore import (
    FeatureMatrix,
    feature_columns,
    load_feature_matrix,
    load_features,
    load_profile,
    load_send_hours,
)
from pipeline.privacy import PrivacyPolicy, load_policy, save_policy
from pipeline.privacy.edge import USER_ID_PATTERN, EdgeScreen
from pipeline.redis_server import connect, connect_async
from pipeline.redishealth import RedisHealth
from serving import outage
from serving.args import ServingArgs
from serving.scorer import ChampionLoader, TenantModel, predict_batch, reasons_for

__all__ = ["Api", "app"]

log = logging.getLogger("pushpilot.api")

app = FastAPI(
    title="pushpilot",
    version="0.1.0",
    description="Multi-tenant targeting and push: ingest, score, send, follow.",
)

MAX_BODY_BYTES = 1_048_576

_REQUESTS = Counter(
    "pushpilot_http_requests_total", "HTTP requests by route and status", ["route", "status"]
)
_LATENCY = Histogram(
    "pushpilot_http_request_seconds", "HTTP request latency by route", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_TENANT_REQUESTS = Counter(
    "pushpilot_tenant_requests_total", "Authenticated requests by tenant and scope",
    ["tenant", "scope"],
)
_PUSHES = Gauge("pushpilot_pushes", "Pushes by tenant and status", ["tenant", "status"])


# The replica's Strict-Transport-Security header, set from ServingArgs.hsts_max_age when the
# replica starts (one application per replica process); empty sends none.
_HSTS: dict[str, bytes] = {}


def _set_hsts(max_age: int) -> None:
    # A module-level function: Serve pickles the ingress class by value, so a module global
    # named in its methods would be a copy; this one is pickled by reference.
    _HSTS["value"] = f"max-age={max_age}".encode()


class _BodyLimitAndMetrics:
    """413 for bodies over the limit (declared or streamed), latency per route, and HSTS."""

    def __init__(self, inner: Any, max_body_bytes: int = MAX_BODY_BYTES):
        self.inner = inner
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def tracking_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if _HSTS:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"strict-transport-security", _HSTS["value"])]}
            await send(message)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            response = _problem(413, "Payload Too Large",
                                f"request body over {self.max_body_bytes} bytes")
            await response(scope, receive, tracking_send)
            _REQUESTS.labels("-", "413").inc()
            return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.inner(scope, limited_receive, tracking_send)
        except _TooLarge:
            response = _problem(413, "Payload Too Large",
                                f"request body over {self.max_body_bytes} bytes")
            await response(scope, receive, tracking_send)
        route = scope.get("route")
        path = getattr(route, "path", "-")
        _REQUESTS.labels(path, str(status["code"])).inc()
        _LATENCY.labels(path).observe(time.perf_counter() - started)


class _TooLarge(Exception):
    pass


# Ray Serve pickles the ingress class by value, and with it copies of any metric objects its
# methods name; module-level functions are pickled by reference, so they reach the real ones.
def _count_tenant_request(tenant_id: str, scope: str) -> None:
    _TENANT_REQUESTS.labels(tenant_id, scope).inc()


def _render_metrics(push_counts: dict[str, dict[str, int]]) -> Response:
    for tenant_id, counts in push_counts.items():
        for status, count in counts.items():
            _PUSHES.labels(tenant_id, status).set(count)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


app.add_middleware(outage.RedisOutageMiddleware)
app.add_middleware(_BodyLimitAndMetrics)

_USER_ID = USER_ID_PATTERN
DEFAULT_SEND_HOUR = 19
# A revoked or expired key is refused within this (the issue asks for a second).
_KEY_CACHE_SECONDS = 0.5
_POLICY_CACHE_SECONDS = 5.0
# An event from before 1970 or more than a day ahead of our clock is a client's bug, not behaviour.
_EVENT_MAX_AHEAD_SECONDS = 86_400
# JSON numbers only: no NaN, no Infinity (nor 1e400, which parses as infinity).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _problem(status: int, title: str, detail: Any = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    headers = {"Retry-After": str(extra["retry_after"])} if "retry_after" in extra else None
    return JSONResponse(body, status_code=status, media_type="application/problem+json",
                        headers=headers)


class _TooManyRequests(HTTPException):
    def __init__(self, detail: str, retry_after_seconds: int, **extra: Any):
        super().__init__(429, detail)
        self.retry_after_seconds = retry_after_seconds
        self.extra = extra


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    titles = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
              413: "Payload Too Large", 429: "Too Many Requests", 503: "Service Unavailable"}
    if isinstance(exc, _TooManyRequests):
        return _problem(429, titles[429], exc.detail, retry_after=exc.retry_after_seconds,
                        **exc.extra)
    return _problem(exc.status_code, titles.get(exc.status_code, "Error"), exc.detail)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "problem": e["msg"]}
        for e in exc.errors()
    ]
    return _problem(422, "Unprocessable Content", "the request body is invalid", errors=errors)


@app.exception_handler(redis.ConnectionError)
@app.exception_handler(redis.TimeoutError)
async def _store_unavailable(request: Request, exc: redis.RedisError) -> JSONResponse:
    # The store is down or restarting (an outage, a failover): nothing was changed that the
    # client was told about, and the same request later is safe (writes here are idempotent).
    log.warning("%s %s: the store is unavailable: %s", request.method, request.url.path,
                type(exc).__name__)
    return outage.unavailable(exc)


@app.exception_handler(InvalidInputError)
async def _invalid_input(request: Request, exc: InvalidInputError) -> JSONResponse:
    return _problem(422, "Unprocessable Content", str(exc),
                    errors=[{"field": exc.field, "problem": exc.problem}])


class InlineUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(pattern=_USER_ID)
    features: dict[str, FiniteFloat | None]


class PreferencesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purposes: dict[str, str] = Field(default_factory=dict, max_length=len(consent.PURPOSES))
    topics: dict[str, str] = Field(default_factory=dict, max_length=100)
    channels: dict[str, str] = Field(default_factory=dict, max_length=len(consent.CHANNELS))
    source: str = "api"
    policy_version: str

    def changes(self) -> dict[str, str]:
        return {**self.purposes, **{f"topic:{k}": v for k, v in self.topics.items()},
                **{f"channel:{k}": v for k, v in self.channels.items()}}


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scopes: list[str] = Field(min_length=1)
    expires_days: float = Field(default=tenants.DEFAULT_KEY_DAYS, gt=0, le=tenants.MAX_KEY_DAYS)


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_seconds: float = Field(default=86_400, ge=0, le=30 * 86_400)
    expires_days: float = Field(default=tenants.DEFAULT_KEY_DAYS, gt=0, le=tenants.MAX_KEY_DAYS)


class TopicRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["optional", "required"] = "optional"
    description: str = Field(default="", max_length=500)


class ScoreRequest(BaseModel):
    """Score users the tenant has sent us by id, or users described inline by their features."""

    model_config = ConfigDict(extra="forbid")
    user_ids: list[Annotated[str, Field(pattern=_USER_ID)]] = Field(default_factory=list,
                                                                   max_length=1000)
    users: list[InlineUser] = Field(default_factory=list, max_length=1000)
    explain: bool = Field(default=True, description="Add reason codes to each score.")


class ScoreItem(BaseModel):
    user_id: str
    score: float
    best_send_hour: int
    reasons: list[str]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(pattern=_USER_ID)
    event_time: datetime
    event_type: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    value: FiniteFloat | None = None

    @field_validator("event_time")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        try:
            at = value.timestamp()
        except (OverflowError, OSError):
            at = -1.0
        if at < 0 or at > time.time() + _EVENT_MAX_AHEAD_SECONDS:
            raise ValueError("must be after 1970-01-01 and at most a day ahead of now, "
                             f"got {value.isoformat()}")
        return value


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(min_length=1, max_length=10_000)


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int


class ScoreResponse(BaseModel):
    model_version: int
    scores: list[ScoreItem]


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: list[Annotated[str, Field(pattern=_USER_ID)]] = Field(min_length=1, max_length=1000)
    lane: Literal["transactional", "marketing"] = "transactional"
    channel: Literal["inbox"] = "inbox"
    title: str = Field(default="", max_length=256)
    body: str = Field(max_length=2048)
    data: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)
    # Marketing to a user who refused the topic is suppressed (docs/consent.md).
    topic: str = Field(default="", pattern=r"^([a-z0-9][a-z0-9_-]{0,63})?$")


class PushResponse(BaseModel):
    push_ids: list[str]
    duplicates: list[str]


def _guard_throttled(tenant_id: str, admission: Admission) -> _TooManyRequests:
    """A 429 that says why, until when, and how a holder of a non-admin key gets it lifted."""
    alert_id = admission.alert_id
    until = datetime.fromtimestamp(admission.throttled_until, tz=UTC).isoformat()
    return _TooManyRequests(
        f"the traffic guard throttles this API key until {until} after a burst: "
        f"{admission.alert_reason}. Refused requests do not count, so retrying after "
        "Retry-After does not extend it.",
        admission.retry_after_seconds,
        reason="guard_throttle",
        alert_id=alert_id,
        throttled_until=until,
        appeal=(f"if this traffic is legitimate, send alert id {alert_id} to an admin of your "
                f"tenant, who lifts the throttle at once with `pushpilot alerts clear --tenant "
                f"{tenant_id} --id {alert_id} --operator <their name>` or "
                f"POST /v1/alerts/{alert_id}/clear with an admin key"),
    )


def _not_found(what: str) -> HTTPException:
    # The same answer whether the thing is another tenant's or does not exist at all.
    return HTTPException(404, f"{what} not found")


@serve.deployment(
    # Logical CPUs only: the ingress mostly waits on Redis, and campaign tasks need whole CPUs
    # of the same two-core machine.
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=200,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
@serve.ingress(app)
class Api:
    def __init__(self, args: ServingArgs):
        self._args = args
        self._models = ChampionLoader(args.mlflow_tracking_uri, Path(args.mlflow_artifact_root),
                                      args.champion_refresh_seconds)
        self._r = connect(args.redis_url, max_connections=256)
        self._ar = connect_async(args.redis_url, max_connections=20_000)
        self._sealer = sealer_for(args.at_rest_key_file, seals=args.encrypt_at_rest)
        if args.hsts_max_age:
            _set_hsts(args.hsts_max_age)
        self._seen_series: set[tuple[str, str]] = set()
        self._key_cache: dict[str, tuple[tenants.ApiKey, tenants.Plan, float]] = {}
        self._screen = EdgeScreen()
        self._policy_cache: dict[str, tuple[PrivacyPolicy, bytes, float]] = {}
        self._stop = threading.Event()
        # Its own client with timeouts, so a probe never hangs on a Redis that went away.
        self._health = outage.watch(RedisHealth(
            connect(args.redis_url, socket_timeout=2, socket_connect_timeout=2, max_connections=2),
            max_backoff_seconds=10))
        self._health.start(self._stop)
        threading.Thread(target=self._feed_guard, name="guard-feed", daemon=True).start()

    def _feed_guard(self) -> None:
        """Every second, hand each finished second of API traffic to the tenant's guard."""
        while not self._stop.wait(1.0):
            if not self._health.is_up:
                continue  # nothing to feed with; the probe says when Redis is back
            by_tenant: dict[str, list[str]] = {}
            for tenant_id, series in list(self._seen_series):
                by_tenant.setdefault(tenant_id, []).append(series)
            for tenant_id, tenant_series in by_tenant.items():
                try:
                    # One replica feeds a tenant at a time (all its series); the others skip
                    # this round.
                    if not self._r.set(keys.guard_lock(tenant_id), "1", nx=True, px=900):
                        continue
                    for series in tenant_series:
                        for alert in guard.observe_traffic(self._r, tenant_id, series,
                                                           time.time(), self._args.guard):
                            log.warning("guard alert for tenant %s: %s; %s", tenant_id,
                                        alert.reason, alert.action)
                except redis.RedisError:
                    log.exception("guard feed failed for tenant %s", tenant_id)

    def _auth(self, authorization: str | None, scope: str) -> tenants.ApiKey:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "send 'Authorization: Bearer <api key>'")
        key, plan = self._key_and_plan(authorization.removeprefix("Bearer ").strip())
        if scope not in key.scopes and "admin" not in key.scopes:
            audit.record_once(self._r, key.tenant_id, f"denied:{key.key_id}:{scope}", 60,
                              f"key:{key.key_id}", "auth.denied", f"key:{key.key_id}", scope=scope)
            raise HTTPException(403, f"this key lacks the {scope!r} scope")
        series = f"key:{key.key_id}"
        self._seen_series.add((key.tenant_id, series))
        admission = admit_request(self._r, key.tenant_id, series, plan.requests_per_second,
                                  time.time())
        if admission.reason == "guard_throttle":
            raise _guard_throttled(key.tenant_id, admission)
        if admission.reason == "plan_limit":
            raise _TooManyRequests(f"over the plan's {plan.requests_per_second} requests/s",
                                   admission.retry_after_seconds)
        _count_tenant_request(key.tenant_id, scope)
        return key

    def _key_and_plan(self, api_key: str) -> tuple[tenants.ApiKey, tenants.Plan]:
        """The key's tenant, scopes and plan, cached for a few seconds per replica.

        A revoked key or a changed plan takes effect within ``_KEY_CACHE_SECONDS``.
        """
        digest = tenants.key_digest(api_key)
        now = time.monotonic()
        cached = self._key_cache.get(digest)
        if cached is not None and cached[2] > now:
            if cached[0].is_expired(time.time()):
                self._key_cache.pop(digest, None)
            else:
                return cached[0], cached[1]
        try:
            key = tenants.authenticate(self._r, api_key)
        except AuthError as e:
            raise HTTPException(401, str(e)) from None
        audit.record_once(self._r, key.tenant_id, f"used:{key.key_id}", 3600, f"key:{key.key_id}",
                          "key.used", f"key:{key.key_id}")
        plan = tenants.get_tenant(self._r, key.tenant_id).plan
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[digest] = (key, plan, now + _KEY_CACHE_SECONDS)
        return key, plan

    def _privacy(self, tenant_id: str) -> tuple[PrivacyPolicy, bytes]:
        """The tenant's policy and pseudonym secret, cached like keys: a new policy applies
        within ``_POLICY_CACHE_SECONDS``."""
        now = time.monotonic()
        cached = self._policy_cache.get(tenant_id)
        if cached is not None and cached[2] > now:
            return cached[0], cached[1]
        policy = load_policy(self._r, tenant_id) or PrivacyPolicy.default()
        secret = tenants.tenant_secret(self._r, tenant_id)
        if len(self._policy_cache) > 10_000:
            self._policy_cache.clear()
        self._policy_cache[tenant_id] = (policy, secret, now + _POLICY_CACHE_SECONDS)
        return policy, secret

    def _user_ids(self, tenant_id: str, user_ids: list[str], field: str) -> list[str]:
        """The ids to store or look up: PII-shaped ones refused or pseudonymised (docs/privacy.md)."""
        policy, secret = self._privacy(tenant_id)
        return self._screen.user_ids(user_ids, policy, secret, field)

    def _audit(self, key: tenants.ApiKey, action: str, target: str = "", **detail: Any) -> None:
        audit.record(self._r, key.tenant_id, f"key:{key.key_id}", action, target, **detail)

    @app.get("/v1/keys")
    def list_keys(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The tenant's API keys: id, scopes, expiry, state; never the keys themselves."""
        key = self._auth(authorization, "admin")
        self._audit(key, "key.listed")
        return {"keys": tenants.list_api_keys(self._r, key.tenant_id)}

    @app.post("/v1/keys", status_code=201)
    def create_key(self, request: KeyRequest,
                   authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A new key of the tenant: `{"scopes": [...], "expires_days": 90}`; shown only here."""
        key = self._auth(authorization, "admin")
        made = tenants.create_api_key(self._r, key.tenant_id, request.scopes,
                                      expires_days=request.expires_days,
                                      actor=f"key:{key.key_id}")
        return {"key": made, **self._key_record(key.tenant_id, made)}

    def _key_record(self, tenant_id: str, api_key: str) -> dict[str, Any]:
        key_id = tenants.key_id_of(api_key)
        return next(k for k in tenants.list_api_keys(self._r, tenant_id) if k["key_id"] == key_id)

    @app.post("/v1/keys/{key_id}/rotate", status_code=201)
    def rotate_key(self, key_id: str, request: RotateRequest | None = None,
                   authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A new key with the same scopes; the old one stays valid for `grace_seconds`."""
        key = self._auth(authorization, "admin")
        request = request or RotateRequest()
        self._known_key(key.tenant_id, key_id)
        made, old_expires = tenants.rotate_api_key(
            self._r, key.tenant_id, key_id, grace_seconds=request.grace_seconds,
            expires_days=request.expires_days, actor=f"key:{key.key_id}")
        return {"key": made, **self._key_record(key.tenant_id, made),
                "replaces": key_id, "old_key_expires_at": old_expires}

    @app.delete("/v1/keys/{key_id}")
    def revoke_key(self, key_id: str,
                   authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Revoke a key: refused by every replica within half a second."""
        key = self._auth(authorization, "admin")
        self._known_key(key.tenant_id, key_id)
        tenants.revoke_api_key(self._r, key.tenant_id, key_id, actor=f"key:{key.key_id}")
        return {"key_id": key_id, "state": "revoked"}

    def _known_key(self, tenant_id: str, key_id: str) -> None:
        if not any(k["key_id"] == key_id for k in tenants.list_api_keys(self._r, tenant_id)):
            raise _not_found("key")

    @app.get("/v1/audit")
    def read_audit(self, since: float | None = None, action: str | None = None, limit: int = 100,
                   authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The tenant's audit trail, oldest first from `since` (epoch seconds); `action` filters
        by name or prefix (`key` finds every key action)."""
        key = self._auth(authorization, "admin")
        entries = audit.read(self._r, key.tenant_id, since=since, action=action, limit=limit)
        self._audit(key, "audit.read", filter=action)
        return {"entries": [e.as_dict() for e in entries]}

    @app.get("/v1/privacy/policy")
    def get_policy(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The tenant's privacy policy (the default one until the tenant sets its own)."""
        key = self._auth(authorization, "admin")
        stored = load_policy(self._r, key.tenant_id)
        policy = stored or PrivacyPolicy.default()
        self._audit(key, "privacy.policy.read")
        return {"is_default": stored is None, **policy.to_dict()}

    @app.put("/v1/privacy/policy")
    async def put_policy(self, request: Request,
                         authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Replace the tenant's policy: `{"operators": {ENTITY: op}, "default_operator": op}`."""
        key = await asyncio.to_thread(self._auth, authorization, "admin")
        text = (await request.body()).decode("utf-8", errors="replace")
        policy = PrivacyPolicy.from_text(text, where="body")
        await asyncio.to_thread(save_policy, self._r, key.tenant_id, policy)
        await asyncio.to_thread(self._audit, key, "privacy.policy.set", "",
                                policy=policy.to_dict())
        self._policy_cache.pop(key.tenant_id, None)
        return {"is_default": False, **policy.to_dict()}

    @app.post("/v1/campaigns", status_code=201)
    async def create_campaign(self, request: Request,
                              authorization: Annotated[str | None, Header()] = None
                              ) -> dict[str, Any]:
        """Store a campaign spec (JSON); the tenant is the key's, whatever the body says."""
        key = await asyncio.to_thread(self._auth, authorization, "campaigns:write")
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            raise InvalidInputError("body", f"not JSON: {e}") from None
        if not isinstance(body, dict):
            raise InvalidInputError("body", "a campaign spec is a JSON object")
        spec = campaigns.parse_spec(json.dumps({**body, "tenant": key.tenant_id}), where="body")
        spec = await asyncio.to_thread(self._screen_campaign, key.tenant_id, spec)
        created = await asyncio.to_thread(campaigns.save_campaign, self._r, spec)
        await asyncio.to_thread(self._audit, key, "campaign.saved", f"campaign:{spec.id}",
                                created=created)
        return {"campaign": spec.id, "created": created}

    def _screen_campaign(self, tenant_id: str,
                         spec: campaigns.CampaignSpec) -> campaigns.CampaignSpec:
        """Its messages are push text: screened like ``/v1/pushes`` before the spec is stored."""
        policy, secret = self._privacy(tenant_id)
        variants = []
        for i, variant in enumerate(spec.variants):
            text = self._screen.push_text(variant.title, variant.body, {}, policy, secret,
                                          where=f"variants.{i}.")
            variants.append(variant.model_copy(update={"title": text.title, "body": text.body}))
        return spec.model_copy(update={"variants": variants})

    @app.get("/v1/campaigns")
    def list_campaigns(self, authorization: Annotated[str | None, Header()] = None
                       ) -> dict[str, Any]:
        key = self._auth(authorization, "score")
        return {"campaigns": campaigns.list_campaigns(self._r, key.tenant_id)}

    def _campaign(self, tenant_id: str, campaign_id: str) -> campaigns.CampaignSpec:
        try:
            return campaigns.load_campaign(self._r, tenant_id, campaign_id)
        except (campaigns.UnknownCampaignError, ValueError):
            raise _not_found("campaign") from None

    @app.get("/v1/campaigns/{campaign_id}")
    def show_campaign(self, campaign_id: str,
                      authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        key = self._auth(authorization, "score")
        spec = self._campaign(key.tenant_id, campaign_id)
        return {
            "spec": spec.model_dump(mode="json"),
            "state": campaign_status(self._r, key.tenant_id, campaign_id),
            "runs": campaigns.list_runs(self._r, key.tenant_id, campaign_id),
        }

    @app.post("/v1/campaigns/{campaign_id}/runs", status_code=202)
    def run_campaign(self, campaign_id: str,
                     authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Start a run now, on the cluster's Ray; follow it at .../runs/{run_id}."""
        key = self._auth(authorization, "campaigns:write")
        spec = self._campaign(key.tenant_id, campaign_id)
        config = RunConfig(redis_url=self._args.redis_url,
                           tracking_uri=self._args.mlflow_tracking_uri,
                           artifact_root=self._args.mlflow_artifact_root, show_progress=False,
                           at_rest_key_file=self._args.at_rest_key_file,
                           encrypt_at_rest=self._args.encrypt_at_rest)
        run_id = default_run_id(time.time())

        def execute() -> None:
            try:
                runner.run_campaign(self._r, config, spec, run_id)
            except Exception:  # the run record keeps the error; a re-run resumes it
                log.exception("campaign run %s/%s failed", campaign_id, run_id)

        self._audit(key, "campaign.run", f"campaign:{campaign_id}", run_id=run_id)
        threading.Thread(target=execute, name=f"campaign-{run_id}", daemon=True).start()
        return {"campaign": campaign_id, "run_id": run_id, "status": "started"}

    @app.get("/v1/campaigns/{campaign_id}/runs/{run_id}")
    def campaign_run(self, campaign_id: str, run_id: str,
                     authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        key = self._auth(authorization, "score")
        self._campaign(key.tenant_id, campaign_id)
        return {k: v for k, v in self._run_record(key.tenant_id, campaign_id, run_id).items()
                if k != "spec"}

    def _run_record(self, tenant_id: str, campaign_id: str, run_id: str) -> dict[str, Any]:
        try:
            return campaigns.run_record(self._r, tenant_id, campaign_id, run_id)
        except (PushError, ValueError):
            raise _not_found("run") from None

    @app.get("/v1/campaigns/{campaign_id}/runs/{run_id}/report")
    def campaign_report(self, campaign_id: str, run_id: str,
                        authorization: Annotated[str | None, Header()] = None
                        ) -> dict[str, Any]:
        key = self._auth(authorization, "score")
        self._campaign(key.tenant_id, campaign_id)
        self._run_record(key.tenant_id, campaign_id, run_id)
        return run_report(self._r, key.tenant_id, campaign_id, run_id)

    @app.post("/v1/campaigns/{campaign_id}/schedule")
    def schedule(self, campaign_id: str,
                 authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        key = self._auth(authorization, "campaigns:write")
        spec = self._campaign(key.tenant_id, campaign_id)
        next_due = schedule_campaign(self._r, spec, time.time())
        self._audit(key, "campaign.scheduled", f"campaign:{campaign_id}", next_due=next_due)
        return {"campaign": campaign_id, "next_due": next_due}

    @app.delete("/v1/campaigns/{campaign_id}/schedule")
    def cancel(self, campaign_id: str,
               authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        key = self._auth(authorization, "campaigns:write")
        self._campaign(key.tenant_id, campaign_id)
        unschedule_campaign(self._r, key.tenant_id, campaign_id)
        self._audit(key, "campaign.unscheduled", f"campaign:{campaign_id}")
        return {"campaign": campaign_id, "scheduled": False}

    @app.get("/v1/alerts")
    def alerts(self, include_cleared: bool = False,
               authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The tenant's traffic-guard alerts and the actions taken."""
        key = self._auth(authorization, "admin")
        self._audit(key, "alerts.read")
        return {"alerts": guard.list_alerts(self._r, key.tenant_id, include_cleared)}

    @app.post("/v1/alerts/{alert_id}/clear")
    def clear_alert(self, alert_id: str, operator: str = "api",
                    authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Clear an alert: the throttle it set is lifted; the alert stays in the history."""
        key = self._auth(authorization, "admin")
        try:
            cleared = guard.clear_alert(self._r, key.tenant_id, alert_id, operator, time.time())
        except (ValueError, redis.ResponseError):
            cleared = False
        if not cleared:
            raise _not_found("alert")
        self._audit(key, "alert.cleared", f"alert:{alert_id}", operator=operator)
        return {"id": alert_id, "cleared": True}

    @app.get("/metrics")
    def metrics(self) -> Response:
        """Prometheus metrics; scraped by the operator, per tenant where a tenant is known."""
        return _render_metrics(
            {t: receipts.status_counts(self._r, t) for t in tenants.list_tenants(self._r)}
        )

    def check_health(self) -> None:
        """Ray Serve's replica health check: the replica itself is fine if it answers and its
        Redis probe runs.

        Redis being unreachable is not a fault of the replica, and replacing replicas would not
        bring it back (they restarted in a loop at 100% CPU): while it lasts, requests get 503
        problem+json with Retry-After, the probe backs off, and /readyz says why.
        """
        if not self._health.is_watching:
            raise RuntimeError("the replica's Redis health probe stopped")

    @app.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(self) -> JSONResponse:
        try:
            self._r.ping()
        except redis.RedisError as e:
            return _problem(503, "Service Unavailable", f"redis unreachable: {type(e).__name__}")
        try:
            self._models.is_reachable()
        except Exception as e:  # noqa: BLE001 - any failure to reach MLflow means not ready.
            return _problem(503, "Service Unavailable", f"mlflow unreachable: {type(e).__name__}")
        return JSONResponse({"status": "ready", "redis": "ok", "mlflow": "ok"})

    @app.get("/v1/tenants/me")
    def tenant_me(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        key = self._auth(authorization, "score")
        tenant = tenants.get_tenant(self._r, key.tenant_id)
        return {
            "tenant_id": tenant.tenant_id,
            "plan": tenant.plan.__dict__,
            "key_scopes": list(key.scopes),
            "pushes": receipts.status_counts(self._r, key.tenant_id),
        }

    @app.get("/v1/tenants/{tenant_id}")
    def tenant(self, tenant_id: str,
               authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        key = self._auth(authorization, "score")
        if tenant_id != key.tenant_id:
            raise _not_found("tenant")
        return self.tenant_me(authorization)

    @app.get("/v1/users/{user_id}")
    def user(self, user_id: str,
             authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        key = self._auth(authorization, "score")
        (user_id,) = self._user_ids(key.tenant_id, [user_id], "user_id")
        profile = load_profile(self._r, key.tenant_id, user_id)
        features = load_features(self._r, key.tenant_id, [user_id])
        if profile is None and features.empty:
            raise _not_found("user")
        return {
            "user_id": user_id,
            "profile": profile or {},
            "features": {} if features.empty else features.iloc[0].to_dict(),
        }

    @app.get("/v1/users/{user_id}/preferences")
    def get_preferences(self, user_id: str,
                        authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The user's consent per purpose now and every change recorded (docs/consent.md)."""
        key = self._auth(authorization, "consent")
        (user_id,) = self._user_ids(key.tenant_id, [user_id], "user_id")
        return consent.preferences(self._r, key.tenant_id, user_id).as_json()

    @app.put("/v1/users/{user_id}/preferences")
    def put_preferences(self, user_id: str, request: PreferencesRequest,
                        authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Record consent changes: `{"purposes": {"marketing": "revoked"}, "topics": {...},
        "channels": {...}, "source": ...,
        "policy_version": ...}`. A revocation stops the user's queued pushes of that purpose."""
        key = self._auth(authorization, "consent")
        (user_id,) = self._user_ids(key.tenant_id, [user_id], "user_id")
        return consent.record_consent(self._r, key.tenant_id, user_id, request.changes(),
                                      source=request.source,
                                      policy_version=request.policy_version).as_json()

    @app.get("/v1/topics")
    def list_topics(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The tenant's topics, each `optional` or `required` (cannot be unsubscribed)."""
        key = self._auth(authorization, "consent")
        return {"topics": [asdict(t) for t in consent.list_topics(self._r, key.tenant_id)]}

    @app.put("/v1/topics/{name}")
    def put_topic(self, name: str, request: TopicRequest,
                  authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Create or change a topic: `{"kind": "optional"|"required", "description": ...}`."""
        key = self._auth(authorization, "admin")
        topic = consent.create_topic(self._r, key.tenant_id, name, kind=request.kind,
                                     description=request.description)
        self._audit(key, "topic.set", f"topic:{topic.name}", kind=topic.kind)
        return asdict(topic)

    @app.get("/v1/users/{user_id}/export")
    def export_user(self, user_id: str,
                    authorization: Annotated[str | None, Header()] = None) -> Response:
        """Everything held about the user, as JSON (admin); 404 when nothing is or after erasure."""
        key = self._auth(authorization, "admin")
        (user_id,) = self._user_ids(key.tenant_id, [user_id], "user_id")
        body = subjects.export_user(self._r, key.tenant_id, user_id, actor=f"key:{key.key_id}",
                                    sealer=self._sealer)
        if body is None:
            raise _not_found("user")
        return Response(orjson.dumps(body, default=str), media_type="application/json")

    @app.post("/v1/users/{user_id}/erase")
    def erase_user(self, user_id: str,
                   authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Erase everything held about the user (admin); the report says what remains elsewhere."""
        key = self._auth(authorization, "admin")
        (user_id,) = self._user_ids(key.tenant_id, [user_id], "user_id")
        return subjects.erase_user(self._r, key.tenant_id, user_id,
                                   actor=f"key:{key.key_id}").as_json()

    @serve.multiplexed(max_num_models_per_replica=16)
    async def _tenant_model(self, tenant_id: str) -> TenantModel:
        return await asyncio.to_thread(self._models.load, tenant_id)

    async def _champion(self, tenant_id: str) -> TenantModel:
        try:
            loaded = await self._tenant_model(tenant_id)
        except LookupError:
            raise HTTPException(404, "no champion model for this tenant; train one") from None
        except UnsafeModelError as e:
            log.error("tenant %s: champion refused at load: %s", tenant_id, e)
            raise HTTPException(503, "the tenant's champion model failed its integrity check and "
                                "was not loaded; the operator's log says why") from None
        if self._models.is_stale(loaded):
            # A promoted champion replaces the loaded one within champion_refresh_seconds.
            await asyncio.to_thread(self._models.refresh, loaded)
        return loaded

    # Concurrent requests share one predict_proba call per tenant: requests that queue while a
    # batch runs form the next one (up to 4,096 rows), and a lone request never waits.
    @serve.batch(
        max_batch_size=4096,
        batch_wait_timeout_s=0.0,
        batch_size_fn=lambda items: sum(len(features) for _, features in items),
    )
    async def _predict(
        self, items: list[tuple[TenantModel, FeatureMatrix]]
    ) -> list[tuple[np.ndarray, int]]:
        return predict_batch(items)

    def _score_inputs(self, authorization: str | None,
                      request: ScoreRequest) -> tuple[tenants.ApiKey, FeatureMatrix]:
        key = self._auth(authorization, "score")
        if bool(request.user_ids) == bool(request.users):
            raise InvalidInputError("user_ids", "give either user_ids or users (inline features), "
                                    "one of them and not both")
        if request.user_ids:
            user_ids = self._user_ids(key.tenant_id, request.user_ids, "user_ids")
            # Features and send hours in one round trip.
            features = load_feature_matrix(self._r, key.tenant_id, user_ids,
                                           with_send_hours=True)
            if not features.is_known.all():
                raise HTTPException(404, f"users not found: {features.missing()[:20]}")
            self._refuse_unconsented(key.tenant_id, user_ids)
            return key, features
        features = self._inline_features(key.tenant_id, request.users)
        self._refuse_unconsented(key.tenant_id, list(features.user_ids))
        return key, features

    def _refuse_unconsented(self, tenant_id: str, user_ids: list[str]) -> None:
        refused = subjects.excluded_from_learning(self._r, tenant_id, user_ids)
        if refused:
            raise HTTPException(403, "users who took back profiling consent (or were erased) "
                                f"are not scored: {sorted(refused)[:20]}; leave them out")

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(self, request: ScoreRequest,
                    authorization: Annotated[str | None, Header()] = None) -> Response:
        started = time.perf_counter()
        key, features = await asyncio.to_thread(self._score_inputs, authorization, request)
        looked_up = time.perf_counter()
        champion = await self._champion(key.tenant_id)
        loaded = time.perf_counter()
        proba, version = await self._predict((champion, features))
        predicted = time.perf_counter()
        reasons = (reasons_for(champion.model, features.to_frame()) if request.explain
                   else [[]] * len(features))
        explained = time.perf_counter()
        hours = features.send_hours or [None] * len(features)
        body = {
            "model_version": version,
            "scores": [
                {"user_id": u, "score": s,
                 "best_send_hour": DEFAULT_SEND_HOUR if h is None else h, "reasons": why}
                for u, s, h, why in zip(features.user_ids, proba.tolist(), hours, reasons,
                                        strict=True)
            ],
        }
        # Server-Timing: where a request's time went, for operators and the benchmark.
        timing = ", ".join(
            f"{name};dur={(end - start) * 1000:.2f}" for name, start, end in (
                ("inputs", started, looked_up), ("model", looked_up, loaded),
                ("predict", loaded, predicted), ("reasons", predicted, explained),
            )
        )
        # orjson: 0.2 ms for 500 scores where json.dumps took 1.1 ms.
        return Response(orjson.dumps(body), media_type="application/json",
                        headers={"Server-Timing": timing})

    def _inline_features(self, tenant_id: str, users: list[InlineUser]) -> FeatureMatrix:
        columns = feature_columns(self._r, tenant_id)
        if not columns:
            raise HTTPException(404, "no model features for this tenant; train a model first")
        for i, user in enumerate(users):
            unknown = sorted(set(user.features) - set(columns))
            if unknown:
                raise InvalidInputError(f"users.{i}.features", f"unknown features {unknown[:5]}; "
                                        f"the model uses {columns}")
        user_ids = [self._user_ids(tenant_id, [u.user_id], f"users.{i}.user_id")[0]
                    for i, u in enumerate(users)]
        rows = [[u.features.get(c) for c in columns] for u in users]
        hours = load_send_hours(self._r, tenant_id, user_ids)
        return FeatureMatrix(user_ids, columns, np.array(rows, dtype=np.float64).reshape(-1, len(columns)),
                             np.ones(len(users), dtype=bool), [hours.get(u) for u in user_ids])

    @app.post("/v1/events", response_model=EventsResponse, status_code=202)
    def events(self, request: EventsRequest,
               authorization: Annotated[str | None, Header()] = None) -> EventsResponse:
        """Ingest behaviour events; an event id seen in the last 48 hours is a duplicate."""
        key = self._auth(authorization, "events:write")
        policy, secret = self._privacy(key.tenant_id)
        user_ids = [self._screen.user_id(e.user_id, policy, secret, f"events.{i}.user_id")
                    for i, e in enumerate(request.events)]
        accepted, duplicates = ingest_events(
            self._r, key.tenant_id,
            [(e.event_id, user_id, e.event_time.timestamp(), e.event_type, e.value)
             for e, user_id in zip(request.events, user_ids, strict=True)],
        )
        return EventsResponse(accepted=accepted, duplicates=duplicates)

    @app.post("/v1/pushes", response_model=PushResponse, status_code=202)
    def send_pushes(self, request: PushRequest,
                    authorization: Annotated[str | None, Header()] = None) -> PushResponse:
        key = self._auth(authorization, "push:send")
        policy, secret = self._privacy(key.tenant_id)
        user_ids = self._screen.user_ids(request.user_ids, policy, secret, "user_ids")
        # What the device reads is stored too (outbox, inbox, AOF): screened like the rest.
        text = self._screen.push_text(request.title, request.body, request.data, policy, secret)
        base = request.idempotency_key or uuid.uuid4().hex
        pushes = [
            outbox.Push(
                tenant_id=key.tenant_id,
                push_id=outbox.make_push_id(key.tenant_id, base, user_id),
                user_id=user_id, lane=request.lane, channel=request.channel,
                title=text.title, body=text.body, data=text.data, topic=request.topic,
            )
            for user_id in user_ids
        ]
        try:
            result = outbox.enqueue(self._r, pushes,
                                    replicas_to_wait=self._args.redis_replicas_to_wait,
                                    replica_wait_ms=self._args.redis_replica_wait_ms,
                                    sealer=self._sealer)
        except NotReplicatedError:
            # Not acknowledged, so not promised: the same request again is safe.
            raise HTTPException(503, "no replica confirmed the pushes in time; retry the same "
                                "request (its push ids make it idempotent)") from None
        except outbox.BacklogFullError as e:
            # Accepted ones are kept; sending the same request again is safe (idempotent ids).
            raise _TooManyRequests(
                f"the tenant's backlog is full: {len(e.result.rejected)} of {len(pushes)} pushes "
                "refused; retry the same request later", 5,
            ) from None
        return PushResponse(push_ids=[p.push_id for p in pushes], duplicates=result.duplicates)

    @app.get("/v1/pushes/{push_id}")
    def push_status(self, push_id: str,
                    authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        key = self._auth(authorization, "push:send")
        try:
            trail = receipts.status_trail(self._r, key.tenant_id, push_id)
        except ValueError:
            trail = None
        if not trail:  # unknown, or a record none of whose lines could be read
            raise _not_found("push")
        return {"push_id": push_id, "status": trail[-1]["status"], "trail": trail}

    @app.websocket("/v1/inbox")
    async def inbox(self, ws: WebSocket, token: str = "", last_id: str | None = None) -> None:
        """A device's live inbox: pushes as they arrive; the device acks each by id."""
        await ws.accept()
        try:
            tenant_id = tenants.peek_token_tenant(token)
            keys.validate_tenant_id(tenant_id)
            secret = await self._ar.get(keys.tenant_secret(tenant_id))
            if secret is None:
                raise AuthError("unknown tenant")
            tenant_id, user_id = tenants.verify_user_token(bytes.fromhex(secret), token)
        except (AuthError, ValueError) as e:
            await ws.close(code=4401, reason=str(e)[:120])
            return
        if last_id is not None and not receipts.is_entry_id(last_id):
            await ws.close(code=4400, reason="last_id must be an inbox entry id like "
                           "1712345678901-0")
            return
        stream = keys.inbox_stream(tenant_id, user_id)
        stored = await self._ar.get(keys.inbox_cursor(tenant_id, user_id))
        # A cursor stored before acks were checked may be garbage: then from the start.
        cursor = last_id or (stored if receipts.is_entry_id(stored) else "0-0")
        acks = asyncio.create_task(self._read_acks(ws, tenant_id, user_id))
        try:
            while not acks.done():
                entries = await self._ar.xread({stream: cursor}, count=200, block=1000)
                for _, messages in entries:
                    for entry_id, fields in messages:
                        fields = await self._sealer.frame_fields(self._ar, tenant_id, fields)
                        await ws.send_text(outbox.inbox_frame(entry_id, fields))
                        cursor = entry_id
        except (WebSocketDisconnect, RuntimeError):
            pass
        except redis.RedisError as e:
            log.warning("inbox of a %s user closed: %s", tenant_id, e)
            await ws.close(code=1011, reason="the inbox store is unavailable; reconnect soon")
        finally:
            acks.cancel()

    async def _read_acks(self, ws: WebSocket, tenant_id: str, user_id: str) -> None:
        while True:
            try:
                message = json.loads(await ws.receive_text())
            except WebSocketDisconnect:
                return
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            entry_id, push_id = message.get("ack"), message.get("push_id")
            if receipts.is_entry_id(entry_id):
                # Counts only for an entry of this user's own inbox carrying that push.
                ack = receipts.InboxAck(user_id, entry_id,
                                        push_id if isinstance(push_id, str) else "")
                await asyncio.to_thread(receipts.ack_inbox, self._r, tenant_id, [ack])
