"""The HTTP API and gateway on a real local Ray Serve, with two tenants present."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import websockets

from pipeline import guard, keys, tenants
from pipeline.atrest import sealer_for
from pipeline.config import Settings
from pipeline.delivery import DeliveryWorker
from pipeline.featurestore import load_features, load_send_hours
from pipeline.generator import generate_tenant
from pipeline.redis_server import EmbeddedRedis, connect
from serving.api import DEFAULT_SEND_HOUR
from serving.client import InboxClient
from serving.demo import prepare_tenant

pytestmark = [pytest.mark.serve, pytest.mark.slow]


@dataclass(frozen=True)
class World:
    base_url: str
    ws_url: str
    tenant_a: str
    tenant_b: str
    users_a: list[str]
    users_b: list[str]
    key_a: str
    key_b: str
    key_a_score_only: str
    secret_a: bytes
    at_rest_key_file: str


@pytest.fixture(scope="module")
def world(
    settings: Settings, redis_server: EmbeddedRedis, registry: Any, serve_app: str
) -> Iterator[World]:
    r = connect(redis_server.url)
    ids = {}
    # Both tenants number their users alike (u000000...), as real tenants do; B has more of them,
    # so B's last users exist in B only.
    for tid, seed, n_users in (("api-a", 1, 300), ("api-b", 2, 400)):
        if not tenants.tenant_exists(r, tid):
            tenants.create_tenant(r, tid)
        data = generate_tenant(tid, users=n_users, days=21, seed=seed)
        prepare_tenant(r, registry, data)
        ids[tid] = list(data.profiles["user_id"].astype(str))
    yield World(
        base_url=settings.http_url,
        ws_url=f"ws://{settings.http_host}:{settings.http_port}/v1/inbox",
        tenant_a="api-a", tenant_b="api-b",
        users_a=ids["api-a"], users_b=ids["api-b"],
        key_a=tenants.create_api_key(r, "api-a", ["score", "push:send"]),
        key_b=tenants.create_api_key(r, "api-b", ["score", "push:send"]),
        key_a_score_only=tenants.create_api_key(r, "api-a", ["score"]),
        secret_a=tenants.tenant_secret(r, "api-a"),
        at_rest_key_file=str(settings.at_rest_key_path),
    )
    r.close()


def _get(world: World, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(world.base_url + path, headers=headers, timeout=30)


def _post(world: World, path: str, key: str | None, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(world.base_url + path, json=body, headers=headers, timeout=30)


def test_health_and_readiness(world: World) -> None:
    assert _get(world, "/healthz", None).json() == {"status": "ok"}
    assert _get(world, "/readyz", None).status_code == 200


def test_openapi_docs_are_served(world: World) -> None:
    assert _get(world, "/docs", None).status_code == 200
    paths = _get(world, "/openapi.json", None).json()["paths"]
    assert {"/v1/score", "/v1/pushes", "/v1/tenants/me"} <= set(paths)


@pytest.mark.parametrize("key", [None, "ppk_00000000_not-a-real-key", "Basic abc"])
def test_missing_or_unknown_key_gets_401_problem(world: World, key: str | None) -> None:
    for response in (
        _get(world, "/v1/tenants/me", key),
        _post(world, "/v1/score", key, {"user_ids": world.users_a[:1]}),
        _post(world, "/v1/pushes", key, {"user_ids": ["u"], "body": "x"}),
        _get(world, "/v1/pushes/abc", key),
        _get(world, f"/v1/users/{world.users_a[0]}", key),
    ):
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == 401


def test_over_the_plans_request_rate_gets_429_with_retry_after(
    world: World, redis_server: EmbeddedRedis
) -> None:
    r = connect(redis_server.url)
    tid = "api-slow"
    if not tenants.tenant_exists(r, tid):
        tenants.create_tenant(r, tid, plan=tenants.Plan(requests_per_second=3))
    key = tenants.create_api_key(r, tid, ["score"])
    statuses = [_get(world, "/v1/tenants/me", key) for _ in range(8)]
    limited = [s for s in statuses if s.status_code == 429]
    assert limited, [s.status_code for s in statuses]
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert "3 requests/s" in limited[0].json()["detail"]
    # Another tenant is not slowed by this one's limit.
    assert _get(world, "/v1/tenants/me", world.key_b).status_code == 200


def test_guard_throttles_only_the_bursting_key_until_an_operator_clears_it(
    world: World, redis_server: EmbeddedRedis
) -> None:
    r = connect(redis_server.url)
    tid = "api-burst"
    if not tenants.tenant_exists(r, tid):
        tenants.create_tenant(r, tid)
    noisy = tenants.create_api_key(r, tid, ["score"])
    calm = tenants.create_api_key(r, tid, ["score"])
    admin = tenants.create_api_key(r, tid, ["admin"])
    noisy_series = f"key:{tenants.authenticate(r, noisy).key_id}"
    now = int(time.time())
    # Two minutes of history at 2 requests/s, then the last 20 s replayed at 10x.
    for second in range(now - 120, now - 20):
        guard.record_requests(r, tid, noisy_series, second, count=2)
    for second in range(now - 20, now):
        guard.record_requests(r, tid, noisy_series, second, count=20)
    first = _get(world, "/v1/tenants/me", noisy)
    assert first.status_code == 200  # the guard has not looked yet
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = _get(world, "/v1/tenants/me", noisy)
        if response.status_code == 429:
            break
        time.sleep(0.5)
    assert response.status_code == 429 and "Retry-After" in response.headers
    assert _get(world, "/v1/tenants/me", calm).status_code == 200
    assert _get(world, "/v1/tenants/me", world.key_a).status_code == 200

    alerts = _get(world, "/v1/alerts", admin).json()["alerts"]
    assert len(alerts) == 1 and alerts[0]["series"] == noisy_series
    other_admin = tenants.create_api_key(r, world.tenant_a, ["admin"])
    assert _get(world, "/v1/alerts", other_admin).json() == {"alerts": []}
    assert _get(world, "/v1/alerts", world.key_a).status_code == 403
    assert _post(world, f"/v1/alerts/{alerts[0]['id']}/clear", world.key_b, {}).status_code == 403
    cleared = _post(world, f"/v1/alerts/{alerts[0]['id']}/clear", admin, {})
    assert cleared.status_code == 200
    assert _get(world, "/v1/tenants/me", noisy).status_code == 200
    assert _get(world, "/v1/alerts", admin).json() == {"alerts": []}


def test_privacy_policy_is_set_per_tenant_over_http(world: World, redis_server: EmbeddedRedis) -> None:
    r = connect(redis_server.url)
    admin_a = tenants.create_api_key(r, world.tenant_a, ["admin"])
    admin_b = tenants.create_api_key(r, world.tenant_b, ["admin"])
    headers = {"Authorization": f"Bearer {admin_a}", "Content-Type": "application/json"}
    bad = httpx.put(world.base_url + "/v1/privacy/policy", headers=headers, timeout=30,
                    content=b'{"operators": {"EMAIL_ADDRESS": "shred"}}')
    assert bad.status_code == 422 and "shred" in bad.json()["detail"]
    assert _get(world, "/v1/privacy/policy", admin_a).json()["is_default"] is True
    good = httpx.put(world.base_url + "/v1/privacy/policy", headers=headers, timeout=30,
                     content=b'{"operators": {"EMAIL_ADDRESS": "drop"}, "default_operator": "mask"}')
    assert good.status_code == 200, good.text
    mine = _get(world, "/v1/privacy/policy", admin_a).json()
    assert mine["operators"] == {"EMAIL_ADDRESS": "drop"} and mine["default_operator"] == "mask"
    assert _get(world, "/v1/privacy/policy", admin_b).json()["is_default"] is True
    assert _get(world, "/v1/privacy/policy", world.key_a).status_code == 403


def test_campaign_created_run_and_reported_over_http(
    world: World, redis_server: EmbeddedRedis
) -> None:
    r = connect(redis_server.url)
    writer = tenants.create_api_key(r, world.tenant_a, ["campaigns:write", "score"])
    spec = {"id": "http-spring", "holdout_percent": 20, "selection": {"top_k": 60},
            "variants": [{"name": "a", "title": "Hello", "body": "New in {country}", "weight": 1}]}
    assert _post(world, "/v1/campaigns", world.key_a, spec).status_code == 403
    bad = _post(world, "/v1/campaigns", writer, {**spec, "holdout_percent": 150})
    assert bad.status_code == 422 and "holdout_percent" in bad.text
    pii = _post(world, "/v1/campaigns", writer, {**spec, "variants": [
        {"name": "a", "title": "Hi", "body": "Hi {email}", "weight": 1}]})
    assert pii.status_code == 422 and "email" in pii.text
    assert _post(world, "/v1/campaigns", writer, spec).status_code == 201

    started = _post(world, "/v1/campaigns/http-spring/runs", writer, {})
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = _get(world, f"/v1/campaigns/http-spring/runs/{run_id}", writer).json()
        if run.get("status") in ("done", "failed"):
            break
        time.sleep(0.5)
    assert run["status"] == "done", run
    report = _get(world, f"/v1/campaigns/http-spring/runs/{run_id}/report", writer)
    assert report.status_code == 200 and report.json()["selected"] == 60

    theirs = _get(world, "/v1/campaigns/http-spring", world.key_b)
    unknown = _get(world, "/v1/campaigns/no-such-campaign", world.key_b)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json()
    assert _get(world, "/v1/campaigns", world.key_b).json() == {"campaigns": []}


def test_a_full_backlog_gets_429_and_the_retry_is_safe(
    world: World, redis_server: EmbeddedRedis
) -> None:
    r = connect(redis_server.url)
    tid = "api-full"
    if not tenants.tenant_exists(r, tid):
        tenants.create_tenant(r, tid, plan=tenants.Plan(max_backlog=3))
    key = tenants.create_api_key(r, tid, ["push:send"])
    body = {"user_ids": [f"u{i}" for i in range(5)], "body": "hi", "lane": "marketing",
            "idempotency_key": "full-1"}
    first = _post(world, "/v1/pushes", key, body)
    assert first.status_code == 429 and "backlog" in first.json()["detail"]
    assert int(first.headers["Retry-After"]) >= 1
    assert r.xlen(keys.outbox_stream(tid, "marketing")) == 3


def test_body_over_the_limit_gets_413(world: World) -> None:
    big = {"user_ids": world.users_a[:1], "padding": "x" * 1_100_000}
    response = _post(world, "/v1/score", world.key_a, big)
    assert response.status_code == 413
    assert response.json()["status"] == 413


def test_metrics_count_requests_and_pushes_per_tenant(world: World) -> None:
    _post(world, "/v1/score", world.key_a, {"user_ids": world.users_a[:3]})
    text = _get(world, "/metrics", None).text
    assert "pushpilot_http_request_seconds_bucket" in text
    assert f'pushpilot_tenant_requests_total{{scope="score",tenant="{world.tenant_a}"}}' in text
    assert f'pushpilot_pushes{{status="queued",tenant="{world.tenant_a}"}}' in text


def test_key_without_scope_gets_403(world: World) -> None:
    response = _post(world, "/v1/pushes", world.key_a_score_only, {"user_ids": ["u"], "body": "x"})
    assert response.status_code == 403
    assert "push:send" in response.json()["detail"]


def test_scores_own_users(world: World) -> None:
    response = _post(world, "/v1/score", world.key_a, {"user_ids": world.users_a[:50]})
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert [s["user_id"] for s in scores] == world.users_a[:50]
    assert all(0.0 <= s["score"] <= 1.0 for s in scores)
    assert len({round(s["score"], 6) for s in scores}) > 1


def test_scores_by_id_are_the_champions_predictions_on_the_stored_features(
    world: World, redis_server: EmbeddedRedis, registry: Any
) -> None:
    users = world.users_a[:300]
    r = connect(redis_server.url)
    stored = load_features(r, world.tenant_a, users)
    hours = load_send_hours(r, world.tenant_a, users)
    r.close()
    model, version = registry.load_champion(world.tenant_a, "propensity")

    response = _post(world, "/v1/score", world.key_a, {"user_ids": users, "explain": False})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == version
    assert [s["user_id"] for s in body["scores"]] == users
    # Exactly the model's own answer on the stored rows: packed floats lose nothing.
    assert [s["score"] for s in body["scores"]] == model.predict_proba(stored)[:, 1].tolist()
    assert [s["best_send_hour"] for s in body["scores"]] == [hours.get(u, DEFAULT_SEND_HOUR) for u in users]
    assert all(s["reasons"] == [] for s in body["scores"])
    assert "predict;dur=" in response.headers["server-timing"]
    unknown = _post(world, "/v1/score", world.key_a, {"user_ids": [users[0], "nobody-1"]})
    assert unknown.status_code == 404 and "nobody-1" in unknown.json()["detail"]


def test_scores_come_with_send_hour_and_reasons(world: World) -> None:
    scores = _post(world, "/v1/score", world.key_a, {"user_ids": world.users_a[:20]}).json()["scores"]
    assert all(0 <= s["best_send_hour"] <= 23 for s in scores)
    assert all(isinstance(s["reasons"], list) and len(s["reasons"]) <= 3 for s in scores)
    assert any(s["reasons"] for s in scores)


def test_scores_inline_features_like_stored_ones(world: World) -> None:
    user = world.users_a[0]
    stored = _get(world, f"/v1/users/{user}", world.key_a).json()["features"]
    by_id = _post(world, "/v1/score", world.key_a, {"user_ids": [user]}).json()["scores"][0]
    inline = _post(world, "/v1/score", world.key_a,
                   {"users": [{"user_id": user, "features": stored}]}).json()["scores"][0]
    assert inline["score"] == pytest.approx(by_id["score"])
    bad = _post(world, "/v1/score", world.key_a,
                {"users": [{"user_id": user, "features": {"shoe_size": 42}}]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "users.0.features"
    both = _post(world, "/v1/score", world.key_a, {"user_ids": [user], "users": [
        {"user_id": user, "features": stored}]})
    assert both.status_code == 422


def test_events_are_ingested_once_per_event_id(world: World, redis_server: EmbeddedRedis) -> None:
    r = connect(redis_server.url)
    writer = tenants.create_api_key(r, world.tenant_a, ["events:write"])
    batch = {"events": [
        {"event_id": f"ev-{i}", "user_id": "u000001", "event_time": "2025-03-20T10:00:00Z",
         "event_type": "view"} for i in range(5)
    ]}
    first = _post(world, "/v1/events", writer, batch)
    again = _post(world, "/v1/events", writer, batch)
    assert first.status_code == again.status_code == 202
    assert first.json() == {"accepted": 5, "duplicates": 0}
    assert again.json() == {"accepted": 0, "duplicates": 5}
    assert r.xlen(keys.events_stream(world.tenant_a)) >= 5
    assert not r.exists(keys.events_stream(world.tenant_b))
    assert _post(world, "/v1/events", world.key_a, batch).status_code == 403
    bad = _post(world, "/v1/events", writer, {"events": [
        {"event_id": "x", "user_id": "u1", "event_time": "not a time", "event_type": "view"}]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "events.0.event_time"
    pii = _post(world, "/v1/events", writer, {"events": [
        {"event_id": "y", "user_id": "u1", "event_time": "2025-03-20T10:00:00Z",
         "event_type": "view", "email": "someone@example.com"}]})
    assert pii.status_code == 422


def test_promoting_a_new_champion_changes_scores_within_seconds_without_failures(
    world: World, registry: Any
) -> None:
    users = world.users_b[:30]
    before = _post(world, "/v1/score", world.key_b, {"user_ids": users}).json()
    data = generate_tenant(world.tenant_b, users=400, days=21, seed=99)
    from pipeline.training import train_propensity

    result = train_propensity(world.tenant_b, data.events, cutoff=data.cutoff,
                              horizon_days=data.horizon_days, registry=registry, force=True)
    assert result.version.is_champion
    deadline = time.monotonic() + 10
    failures = 0
    while time.monotonic() < deadline:
        response = _post(world, "/v1/score", world.key_b, {"user_ids": users})
        failures += response.status_code != 200
        if response.status_code == 200 and response.json()["model_version"] == result.version.version:
            break
        time.sleep(0.2)
    assert failures == 0
    after = response.json()
    assert after["model_version"] == result.version.version != before["model_version"]
    assert [s["score"] for s in after["scores"]] != [s["score"] for s in before["scores"]]


def test_another_tenants_users_look_exactly_like_unknown_ones(world: World) -> None:
    own_b_user = world.users_b[-1]
    assert own_b_user not in world.users_a
    theirs = _get(world, f"/v1/users/{own_b_user}", world.key_a)
    unknown = _get(world, "/v1/users/nobody-at-all", world.key_a)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json()
    assert _get(world, f"/v1/users/{own_b_user}", world.key_b).status_code == 200

    theirs = _post(world, "/v1/score", world.key_a, {"user_ids": [own_b_user]})
    assert theirs.status_code == 404
    assert world.tenant_b not in theirs.text

    theirs_t = _get(world, f"/v1/tenants/{world.tenant_b}", world.key_a)
    unknown_t = _get(world, "/v1/tenants/no-such-tenant", world.key_a)
    assert theirs_t.status_code == unknown_t.status_code == 404
    assert theirs_t.json() == unknown_t.json()
    assert _get(world, f"/v1/tenants/{world.tenant_a}", world.key_a).status_code == 200


def test_same_user_id_in_two_tenants_scores_with_each_tenants_own_model(world: World) -> None:
    shared = world.users_a[0]
    assert shared in world.users_b
    a = _post(world, "/v1/score", world.key_a, {"user_ids": [shared]}).json()
    b = _post(world, "/v1/score", world.key_b, {"user_ids": [shared]}).json()
    assert a["scores"][0]["score"] != b["scores"][0]["score"]
    profile_a = _get(world, f"/v1/users/{shared}", world.key_a).json()
    profile_b = _get(world, f"/v1/users/{shared}", world.key_b).json()
    assert profile_a != profile_b


def test_tenant_me_reports_own_plan_only(world: World) -> None:
    body = _get(world, "/v1/tenants/me", world.key_a).json()
    assert body["tenant_id"] == world.tenant_a
    assert world.tenant_b not in json.dumps(body)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/score", {}, "user_ids"),
        ("/v1/score", {"user_ids": []}, "user_ids"),
        ("/v1/score", {"user_ids": "u1"}, "user_ids"),
        ("/v1/score", {"user_ids": ["bad id with spaces"]}, "user_ids.0"),
        ("/v1/pushes", {"user_ids": ["u1"]}, "body"),
        ("/v1/pushes", {"user_ids": ["u1"], "body": "x", "lane": "express"}, "lane"),
        ("/v1/pushes", {"user_ids": ["u1"], "body": "x", "surprise": 1}, "surprise"),
    ],
)
def test_invalid_body_gets_422_naming_the_field(world: World, path: str, body: Any, field: str) -> None:
    response = _post(world, path, world.key_a, body)
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


def test_push_is_idempotent_and_its_trail_is_private(world: World) -> None:
    body = {"user_ids": ["pushy-1"], "body": "your code is 123456", "idempotency_key": "login-1"}
    first = _post(world, "/v1/pushes", world.key_a, body)
    second = _post(world, "/v1/pushes", world.key_a, body)
    assert first.status_code == second.status_code == 202
    push_id = first.json()["push_ids"][0]
    assert second.json()["duplicates"] == [push_id]
    trail = _get(world, f"/v1/pushes/{push_id}", world.key_a)
    assert trail.status_code == 200 and trail.json()["trail"][0]["status"] == "queued"
    assert _get(world, f"/v1/pushes/{push_id}", world.key_b).json() == _get(
        world, "/v1/pushes/0000unknown", world.key_b
    ).json()
    assert _get(world, f"/v1/pushes/{push_id}", world.key_b).status_code == 404


def test_a_push_whose_record_cannot_be_read_is_not_found_not_an_error(
    world: World, redis_server: EmbeddedRedis
) -> None:
    r = connect(redis_server.url)
    r.set(keys.push_status(world.tenant_a, "damaged-1"), "not a status line", ex=60)
    r.close()

    response = _get(world, "/v1/pushes/damaged-1", world.key_a)

    assert response.status_code == 404


def test_connected_client_receives_a_transactional_push_and_acks_it(
    world: World, redis_server: EmbeddedRedis
) -> None:
    r: redis.Redis = connect(redis_server.url)
    user = "device-user-1"
    token = tenants.issue_user_token(world.secret_a, world.tenant_a, user)
    worker = DeliveryWorker(r, [world.tenant_a], consumer="test-ws")

    async def scenario() -> list[str]:
        client = InboxClient(world.ws_url, token)
        await client.start()
        result = _post(world, "/v1/pushes", world.key_a,
                       {"user_ids": [user], "body": "fraud alert", "idempotency_key": "ws-1"})
        push_id = result.json()["push_ids"][0]
        for _ in range(100):
            worker.deliver_once()
            if client.received:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await client.stop()
        assert [x.push_id for x in client.received] == [push_id]
        return [push_id]

    (push_id,) = asyncio.run(scenario())
    statuses = [s["status"] for s in _get(world, f"/v1/pushes/{push_id}", world.key_a).json()["trail"]]
    assert statuses[:2] == ["queued", "delivered"] and "acked" in statuses


def test_gateway_refuses_a_forged_token(world: World) -> None:
    forged = tenants.issue_user_token(b"x" * 32, world.tenant_a, "someone")

    async def connect_once() -> int | None:
        async with websockets.connect(f"{world.ws_url}?token={forged}") as ws:
            try:
                await asyncio.wait_for(ws.recv(), timeout=10)
            except websockets.ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None
        return None

    assert asyncio.run(connect_once()) == 4401


def test_push_with_unknown_lane_enqueues_nothing(world: World, redis_server: EmbeddedRedis) -> None:
    r = connect(redis_server.url)
    streams = [keys.outbox_stream(world.tenant_a, lane) for lane in keys.LANES]
    before = [r.xlen(s) for s in streams]
    response = _post(world, "/v1/pushes", world.key_a, {"user_ids": ["u1"], "body": "x", "lane": "nope"})
    assert response.status_code == 422
    assert [r.xlen(s) for s in streams] == before


# --- the edge: personal data, hostile input, acks, outages (issue 21) -------------------------


def _flat(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict):
        return b" ".join(k + b"=" + _flat(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return b" ".join(_flat(v) for v in value)
    return b"" if value is None else str(value).encode()


def _tenant_values(r: redis.Redis, tenant_id: str) -> str:
    """Every key name and every value of the tenant, as one text to search. Read as bytes
    (features and event histories are packed binary) and decoded as UTF-8 with undecodable
    bytes escaped, so a planted value is found as it was written, non-ASCII included."""
    pool = redis.ConnectionPool(**{**r.connection_pool.connection_kwargs, "decode_responses": False})
    raw = redis.Redis(connection_pool=pool)
    read = {"string": raw.get, "hash": raw.hgetall, "stream": raw.xrange, "set": raw.smembers,
            "zset": lambda k: raw.zrange(k, 0, -1), "list": lambda k: raw.lrange(k, 0, -1)}
    out = []
    try:
        for key in raw.scan_iter(match=keys.tenant_pattern(tenant_id), count=1000):
            kind = raw.type(key).decode()
            out.append(key + b" " + (_flat(read[kind](key)) if kind in read else b""))
    finally:
        pool.disconnect()
    return b"\n".join(out).decode("utf-8", "backslashreplace")


@pytest.fixture
def edge(world: World, redis_server: EmbeddedRedis, new_tenant_id: Any) -> Iterator[Any]:
    """A client, and a maker of fresh tenants: each call gives an admin key of a new tenant,
    with `policy` (JSON) set over HTTP when given."""
    r = connect(redis_server.url)

    def make(policy: bytes | None = None) -> str:
        tenant_id = new_tenant_id("edge")
        tenants.create_tenant(r, tenant_id)
        key = tenants.create_api_key(r, tenant_id, ["admin"])
        if policy is not None:
            response = httpx.put(f"{world.base_url}/v1/privacy/policy", content=policy,
                                 timeout=30, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
        return key

    yield r, make
    r.close()


_EVENT = {"event_id": "e1", "event_time": "2025-03-20T10:00:00Z", "event_type": "view"}


def test_a_pii_shaped_user_id_is_refused_and_leaves_nothing_behind(world: World, edge: Any) -> None:
    r, make = edge
    key = make()
    tenant_id = tenants.authenticate(r, key).tenant_id
    email = "alice.canary@example.com"
    for path, body, field in (
        ("/v1/events", {"events": [{**_EVENT, "user_id": email}]}, "events.0.user_id"),
        ("/v1/pushes", {"user_ids": ["u1", email], "body": "hi"}, "user_ids.1"),
        ("/v1/score", {"user_ids": [email]}, "user_ids.0"),
    ):
        response = _post(world, path, key, body)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field]
        assert "EMAIL_ADDRESS" in response.text and email not in response.text
    assert _get(world, f"/v1/users/{email}", key).status_code == 422
    assert email not in _tenant_values(r, tenant_id)
    assert r.xlen(keys.outbox_stream(tenant_id, "transactional")) == 0  # not even u1's push


def test_under_pseudonymize_a_pii_id_is_stored_as_its_pseudonym_in_that_tenant_only(
    world: World, edge: Any
) -> None:
    r, make = edge
    key = make(b'{"operators": {}, "user_ids": "pseudonymize"}')
    strict = make()  # another tenant keeps the default: reject
    tenant_id = tenants.authenticate(r, key).tenant_id
    email = "bob.canary@example.com"
    events = _post(world, "/v1/events", key, {"events": [{**_EVENT, "user_id": email}]})
    pushes = _post(world, "/v1/pushes", key, {"user_ids": [email], "body": "hi"})
    assert events.status_code == 202 and pushes.status_code == 202, (events.text, pushes.text)
    stored = _tenant_values(r, tenant_id)
    assert email not in stored and "EMAIL_ADDRESS_" in stored
    assert _post(world, "/v1/events", strict, {"events": [{**_EVENT, "user_id": email}]}
                 ).status_code == 422


def test_push_text_is_screened_before_it_is_stored(world: World, edge: Any) -> None:
    r, make = edge
    key = make()
    rejecting = make(b'{"operators": {}, "push_operators": {"PHONE_NUMBER": "reject"}}')
    tenant_id = tenants.authenticate(r, key).tenant_id
    body = {"user_ids": ["u1"], "title": "Call 415-555-0123",
            "body": "or mail carol.canary@example.com", "data": {"ip": "10.20.30.40"}}
    assert _post(world, "/v1/pushes", key, body).status_code == 202
    stored = _tenant_values(r, tenant_id)
    for planted in ("415-555-0123", "carol.canary@example.com", "10.20.30.40"):
        assert planted not in stored
    ((_, fields),) = r.xrange(keys.outbox_stream(tenant_id, "transactional"))
    # Stored encrypted under the tenant's data key (the serve app's default); opened, screened.
    assert fields["m"].startswith("ppe1:") and "Call" not in fields["m"]
    sealer = sealer_for(world.at_rest_key_file)
    assert json.loads(sealer.open_fields(r, tenant_id, fields)["m"])["title"] == "Call ****"
    refused = _post(world, "/v1/pushes", rejecting, body)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "title"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"users": [{"user_id": "u1", "features": {"F": Infinity}}]}', "users.0.features.F"),
        (b'{"users": [{"user_id": "u1", "features": {"F": 1e400}}]}', "users.0.features.F"),
        (b'{"users": [{"user_id": "u1", "features": {"F": NaN}}]}', "users.0.features.F"),
    ],
)
def test_non_finite_inline_features_get_422_not_500(
    world: World, redis_server: EmbeddedRedis, raw: bytes, field: str
) -> None:
    from pipeline.featurestore import feature_columns

    r = connect(redis_server.url)
    column = feature_columns(r, world.tenant_a)[0]
    r.close()
    response = httpx.post(world.base_url + "/v1/score", content=raw.replace(b'"F"', f'"{column}"'
                          .encode()), timeout=30, headers={"Authorization": f"Bearer {world.key_a}",
                                                           "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"].startswith(field.replace("F", column))


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"value": "NaN"}, "events.0.value"),
        ({"value": "Infinity"}, "events.0.value"),
        ({"event_time": "0001-01-01T00:00:00Z"}, "events.0.event_time"),
        ({"event_time": "9999-12-31T00:00:00Z"}, "events.0.event_time"),
    ],
)
def test_implausible_events_get_422_and_are_not_stored(
    world: World, edge: Any, event: dict[str, Any], field: str
) -> None:
    r, make = edge
    key = make()
    tenant_id = tenants.authenticate(r, key).tenant_id
    raw = json.dumps({"events": [{**_EVENT, "user_id": "u1", **event}]})
    raw = raw.replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    response = httpx.post(world.base_url + "/v1/events", content=raw, timeout=30,
                          headers={"Authorization": f"Bearer {key}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert not r.exists(keys.events_stream(tenant_id))


def test_over_the_api_socket_a_device_acks_only_its_own_pushes(
    world: World, redis_server: EmbeddedRedis
) -> None:
    r: redis.Redis = connect(redis_server.url)
    worker = DeliveryWorker(r, [world.tenant_a], consumer="test-ack")
    sent = _post(world, "/v1/pushes", world.key_a,
                 {"user_ids": ["ack-u1", "ack-u2"], "body": "hello", "idempotency_key": "ack-1"})
    mine, theirs = sent.json()["push_ids"]
    while worker.deliver_once():
        pass
    (theirs_entry, _), = r.xrange(keys.inbox_stream(world.tenant_a, "ack-u2"))
    token = tenants.issue_user_token(world.secret_a, world.tenant_a, "ack-u1")

    async def scenario() -> list[dict[str, Any]]:
        async with websockets.connect(f"{world.ws_url}?token={token}") as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            for forged in ({"ack": theirs_entry, "push_id": theirs},
                           {"ack": frame["id"], "push_id": theirs}, {"push_id": theirs},
                           {"ack": "garbage{}", "push_id": frame["push_id"]}):
                await ws.send(json.dumps(forged))
            await asyncio.sleep(0.5)
        # The garbage id did not become the cursor: the next connection still works.
        async with websockets.connect(f"{world.ws_url}?token={token}&last_id=0-0") as ws:
            again = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps({"ack": again["id"], "push_id": again["push_id"]}))
            await asyncio.sleep(0.5)
        return [frame, again]

    frame, again = asyncio.run(scenario())
    assert frame["push_id"] == again["push_id"] == mine
    trail = lambda p: [s["status"] for s in  # noqa: E731
                       _get(world, f"/v1/pushes/{p}", world.key_a).json()["trail"]]
    assert "acked" not in trail(theirs)
    assert trail(mine)[-1] == "acked"
    assert r.get(keys.inbox_cursor(world.tenant_a, "ack-u1")) == frame["id"]
    r.close()


def test_a_store_outage_gets_503_problem_json_with_retry_after(
    world: World, settings: Settings
) -> None:
    """A second app on the same Serve whose Valkey is not there (the outage of the issue)."""
    import socket

    from ray import serve

    from serving.app import build_app
    from serving.args import ServingArgs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens here once the socket is closed
    args = ServingArgs.from_settings(settings, f"redis://127.0.0.1:{dead_port}/0")
    serve.run(build_app(args), name="outage", route_prefix="/outage")
    try:
        response = httpx.post(world.base_url + "/outage/v1/score", json={"user_ids": ["u1"]},
                              headers={"Authorization": f"Bearer {world.key_a}"}, timeout=30)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) > 0
        assert "retry" in response.json()["detail"]
    finally:
        serve.delete("outage")


def test_a_campaigns_messages_are_screened_like_pushes(world: World, edge: Any) -> None:
    r, make = edge
    key = make()
    rejecting = make(b'{"operators": {}, "push_operators": {"PHONE_NUMBER": "reject"}}')
    spec = {"id": "call-us", "selection": {"top_k": 5}, "variants": [
        {"name": "a", "title": "Hello", "body": "Call 415-555-0123 in {country}"}]}
    assert _post(world, "/v1/campaigns", key, spec).status_code == 201
    stored = _get(world, "/v1/campaigns/call-us", key).json()
    assert "415-555-0123" not in json.dumps(stored) and "Call **** in {country}" in json.dumps(stored)
    refused = _post(world, "/v1/campaigns", rejecting, spec)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "variants.0.body"


def test_preferences_over_http_are_per_tenant_and_stop_scores_and_marketing_pushes(
    world: World, redis_server: EmbeddedRedis,
) -> None:
    r = connect(redis_server.url)
    mine = tenants.create_api_key(r, world.tenant_a, ["consent"])
    theirs = tenants.create_api_key(r, world.tenant_b, ["consent"])
    user = world.users_a[-1]  # in both tenants, with features in both
    path = f"/v1/users/{user}/preferences"

    def put(key: str, body: Any) -> httpx.Response:
        return httpx.put(world.base_url + path, json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})

    assert _get(world, path, world.key_a).status_code == 403  # score and push:send only
    before = _get(world, path, mine).json()
    assert before["history"] == [] and before["purposes"]["profiling"]["allowed"] is True
    bad = put(mine, {"purposes": {"transactional": "revoked"}, "policy_version": "v1"})
    assert bad.status_code == 422 and "required" in bad.text
    assert put(mine, {"purposes": {"profiling": "denied"}}).status_code == 422  # no policy_version
    assert _get(world, path, mine).json() == before
    try:
        done = put(mine, {"purposes": {"profiling": "denied"}, "policy_version": "v1", "source": "banner"})
        assert done.status_code == 200, done.text
        assert done.json()["purposes"]["profiling"]["allowed"] is False

        refused = _post(world, "/v1/score", world.key_a, {"user_ids": [user]})
        assert refused.status_code == 403 and "profiling consent" in refused.text
        inline = _post(world, "/v1/score", world.key_a, {"users": [{"user_id": user, "features": {}}]})
        assert inline.status_code == 403 and "profiling consent" in inline.text
        assert _post(world, "/v1/score", world.key_b, {"user_ids": [user]}).status_code == 200
        assert _get(world, path, theirs).json()["history"] == []
    finally:
        put(mine, {"purposes": {"profiling": "granted"}, "policy_version": "v1", "source": "test"})
    assert _post(world, "/v1/score", world.key_a, {"user_ids": [user]}).status_code == 200

    # Marketing over /v1/pushes, in a tenant of its own so no other test's pushes are drained.
    tenant = "api-consent"
    if not tenants.tenant_exists(r, tenant):
        tenants.create_tenant(r, tenant)
    sender = tenants.create_api_key(r, tenant, ["push:send", "consent"])
    httpx.put(f"{world.base_url}/v1/users/u-out/preferences", timeout=30,
              headers={"Authorization": f"Bearer {sender}"},
              json={"purposes": {"marketing": "revoked"}, "policy_version": "v1"}).raise_for_status()
    sent = {lane: _post(world, "/v1/pushes", sender, {"user_ids": ["u-out", "u-in"], "body": "x",
                                                       "lane": lane}).json()["push_ids"]
            for lane in ("marketing", "transactional")}
    while DeliveryWorker(r, [tenant], consumer="consent-test").deliver_once():
        pass
    last = {p: _get(world, f"/v1/pushes/{p}", sender).json()["trail"][-1]
            for ids in sent.values() for p in ids}
    out_marketing, in_marketing = sent["marketing"]
    assert last[out_marketing]["status"] == "suppressed" and last[out_marketing]["rule"] == "consent"
    assert last[in_marketing]["status"] == "delivered"
    assert {last[p]["status"] for p in sent["transactional"]} == {"delivered"}
    r.close()


def test_topics_over_http_are_created_by_admins_refused_by_users_and_stop_those_pushes(
    world: World, redis_server: EmbeddedRedis,
) -> None:
    r = connect(redis_server.url)
    tenant = "api-topics"
    if not tenants.tenant_exists(r, tenant):
        tenants.create_tenant(r, tenant)
    admin = tenants.create_api_key(r, tenant, ["admin"])
    sender = tenants.create_api_key(r, tenant, ["push:send", "consent"])

    def put(key: str, path: str, body: Any) -> httpx.Response:
        return httpx.put(world.base_url + path, json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})

    assert put(sender, "/v1/topics/sales", {}).status_code == 403
    assert put(admin, "/v1/topics/sales", {"description": "offers"}).json() == {
        "name": "sales", "kind": "optional", "description": "offers"}
    assert put(admin, "/v1/topics/Sales!", {}).status_code == 422
    assert put(admin, "/v1/topics/orders", {"kind": "always"}).status_code == 422
    assert [t["name"] for t in _get(world, "/v1/topics", sender).json()["topics"]] == ["sales"]
    prefs = "/v1/users/u-t/preferences"
    assert put(sender, prefs, {"topics": {"nope": "denied"}, "policy_version": "v1"}).status_code == 422
    done = put(sender, prefs, {"topics": {"sales": "denied"}, "policy_version": "v1"})
    assert done.status_code == 200 and done.json()["topics"]["sales"]["allowed"] is False
    assert _post(world, "/v1/pushes", sender, {"user_ids": ["u-t"], "body": "x", "lane": "marketing",
                                                "topic": "Sales!"}).status_code == 422
    sent = {topic: _post(world, "/v1/pushes", sender, {"user_ids": ["u-t"], "body": "x", "lane": "marketing",
                                                        "topic": topic}).json()["push_ids"][0]
            for topic in ("sales", "")}
    while DeliveryWorker(r, [tenant], consumer="topics-test").deliver_once():
        pass
    last = {topic: _get(world, f"/v1/pushes/{p}", sender).json()["trail"][-1] for topic, p in sent.items()}
    assert last["sales"]["status"] == "suppressed" and last["sales"]["rule"] == "consent"
    assert last[""]["status"] == "delivered"
    r.close()


def test_export_and_erase_over_http_need_admin_and_touch_one_tenant(
    world: World, redis_server: EmbeddedRedis,
) -> None:
    r = connect(redis_server.url)
    tenant, other = "api-erase", "api-erase-b"
    admins = {}
    for t in (tenant, other):
        if not tenants.tenant_exists(r, t):
            tenants.create_tenant(r, t)
        admins[t] = tenants.create_api_key(r, t, ["admin"])
        httpx.put(f"{world.base_url}/v1/users/leaver/preferences", timeout=30,
                  headers={"Authorization": f"Bearer {admins[t]}"},
                  json={"purposes": {"marketing": "denied"}, "policy_version": "v1"}).raise_for_status()
    consent_only = tenants.create_api_key(r, tenant, ["consent"])
    r.close()

    assert _get(world, "/v1/users/leaver/export", consent_only).status_code == 403
    assert _post(world, "/v1/users/leaver/erase", consent_only, {}).status_code == 403
    held = _get(world, "/v1/users/leaver/export", admins[tenant])
    assert held.status_code == 200 and held.json()["consent"]["history"][0]["status"] == "denied"

    erased = _post(world, "/v1/users/leaver/erase", admins[tenant], {})
    assert erased.status_code == 200 and erased.json()["erased"] is True
    assert _get(world, "/v1/users/leaver/export", admins[tenant]).status_code == 404
    assert _get(world, "/v1/users/leaver/export", admins[other]).status_code == 200
