"""API key lifecycle (expiry, rotation, revocation) and the audit trail, on the real Valkey and,
for the HTTP side, the session's real Ray Serve application."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from pipeline import audit, consent, guard, keys, tenants
from pipeline.errors import AuthError, InvalidInputError, UnknownTenantError
from pipeline.redis_server import EmbeddedRedis

PUSHPILOT = Path(sys.executable).with_name("pushpilot")

# --- keys and the audit trail, in Redis --------------------------------------------------------


@pytest.fixture
def tenant(redis_client: redis.Redis, new_tenant_id: Callable[[str], str]) -> str:
    tenant_id = new_tenant_id("sec")
    tenants.create_tenant(redis_client, tenant_id)
    return tenant_id


def _state(r: redis.Redis, tenant_id: str) -> Any:
    return (r.hgetall(keys.tenant_api_keys(tenant_id)), r.xrange(keys.audit(tenant_id)),
            r.hlen(keys.api_key_index()))


@pytest.mark.parametrize("since", [float("nan"), float("inf"), -1.0, 1e12, True, "0"])
def test_an_audit_read_refuses_a_since_that_is_not_epoch_seconds(
    redis_client: redis.Redis, tenant: str, since: object,
) -> None:
    audit.record(redis_client, tenant, "cli:ops", "key.created", "key:k")
    with pytest.raises(InvalidInputError, match="since"):
        audit.read(redis_client, tenant, since=since)  # type: ignore[arg-type]
    assert [e.action for e in audit.read(redis_client, tenant, since=0)] == ["key.created"]


def test_a_key_expires_and_is_then_refused_with_the_reason(redis_client: redis.Redis, tenant: str) -> None:
    api_key = tenants.create_api_key(redis_client, tenant, ["score"], expires_days=1, actor="cli:ops")
    key = tenants.authenticate(redis_client, api_key)
    assert key.expires_at == pytest.approx(time.time() + 86_400, abs=5)

    with pytest.raises(AuthError, match=f"API key {key.key_id} is expired"):
        tenants.authenticate(redis_client, api_key, now=time.time() + 86_401)
    (listed,) = tenants.list_api_keys(redis_client, tenant)
    assert listed["state"] == "valid" and listed["scopes"] == ["score"]
    assert "ppk_" not in json.dumps(listed)  # a list never shows the key itself

    entries = audit.read(redis_client, tenant)
    assert [(e.action, e.actor, e.target) for e in entries] == [
        ("key.created", "cli:ops", f"key:{key.key_id}"),
        ("key.refused", f"key:{key.key_id}", f"key:{key.key_id}"),
    ]
    assert entries[1].detail == {"reason": "expired"}
    assert api_key not in json.dumps([e.as_dict() for e in entries])


def test_rotation_keeps_both_keys_valid_until_the_grace_period_ends(
    redis_client: redis.Redis, tenant: str
) -> None:
    old = tenants.create_api_key(redis_client, tenant, ["score", "push:send"])
    old_id = tenants.key_id_of(old)

    new, old_expires = tenants.rotate_api_key(redis_client, tenant, old_id, grace_seconds=3600,
                                              actor="cli:ops")

    assert tenants.authenticate(redis_client, new).scopes == ("push:send", "score")
    assert tenants.authenticate(redis_client, old).key_id == old_id
    assert old_expires == pytest.approx(time.time() + 3600, abs=5)
    with pytest.raises(AuthError, match="expired"):
        tenants.authenticate(redis_client, old, now=old_expires + 1)
    assert tenants.authenticate(redis_client, new, now=old_expires + 1)
    rotated = audit.read(redis_client, tenant, action="key.rotated")
    assert len(rotated) == 1 and rotated[0].detail["replaces"] == old_id
    assert rotated[0].target == f"key:{tenants.key_id_of(new)}"


def test_a_revoked_key_is_refused_and_listed_as_revoked(redis_client: redis.Redis, tenant: str) -> None:
    api_key = tenants.create_api_key(redis_client, tenant, ["admin"])
    key_id = tenants.key_id_of(api_key)

    tenants.revoke_api_key(redis_client, tenant, key_id, actor="cli:ops")
    tenants.revoke_api_key(redis_client, tenant, key_id, actor="cli:ops")  # twice: one entry

    with pytest.raises(AuthError, match="revoked"):
        tenants.authenticate(redis_client, api_key)
    assert [k["state"] for k in tenants.list_api_keys(redis_client, tenant)] == ["revoked"]
    with pytest.raises(InvalidInputError, match="revoked"):
        tenants.rotate_api_key(redis_client, tenant, key_id)
    assert [e.action for e in audit.read(redis_client, tenant, action="key")] == [
        "key.created", "key.revoked", "key.refused"]


@pytest.mark.parametrize("call, field", [
    (lambda r, t, k: tenants.create_api_key(r, t, ["score"], expires_days=0), "expires_days"),
    (lambda r, t, k: tenants.create_api_key(r, t, ["score"], expires_days=99_999), "expires_days"),
    (lambda r, t, k: tenants.create_api_key(r, t, "score"), "scopes"),
    (lambda r, t, k: tenants.create_api_key(r, t, ["root"]), "scopes"),
    (lambda r, t, k: tenants.rotate_api_key(r, t, k, grace_seconds=-1), "grace_seconds"),
    (lambda r, t, k: tenants.rotate_api_key(r, t, k, expires_days=True), "expires_days"),
    (lambda r, t, k: tenants.rotate_api_key(r, t, "nosuchid"), "key_id"),
    (lambda r, t, k: tenants.revoke_api_key(r, t, ""), "key_id"),
])
def test_bad_key_requests_are_refused_and_change_nothing(
    redis_client: redis.Redis, tenant: str, call: Any, field: str
) -> None:
    key_id = tenants.key_id_of(tenants.create_api_key(redis_client, tenant, ["score"]))
    before = _state(redis_client, tenant)

    with pytest.raises(InvalidInputError) as raised:
        call(redis_client, tenant, key_id)

    assert raised.value.field == field
    assert _state(redis_client, tenant) == before


def test_one_tenant_cannot_rotate_revoke_or_read_another_tenants_keys_or_audit(
    redis_client: redis.Redis, tenant: str, new_tenant_id: Callable[[str], str]
) -> None:
    other = new_tenant_id("sec")
    tenants.create_tenant(redis_client, other)
    theirs = tenants.create_api_key(redis_client, other, ["admin"], actor="cli:them")
    their_id = tenants.key_id_of(theirs)
    tenants.create_api_key(redis_client, tenant, ["score"], actor="cli:us")

    for attempt in (lambda: tenants.revoke_api_key(redis_client, tenant, their_id),
                    lambda: tenants.rotate_api_key(redis_client, tenant, their_id)):
        with pytest.raises(InvalidInputError, match="has no key"):
            attempt()

    assert tenants.authenticate(redis_client, theirs).tenant_id == other
    assert [k["key_id"] for k in tenants.list_api_keys(redis_client, other)] == [their_id]
    assert {e.actor for e in audit.read(redis_client, tenant)} == {"cli:us"}
    assert {e.actor for e in audit.read(redis_client, other)} == {"cli:them"}
    with pytest.raises(UnknownTenantError):
        tenants.list_api_keys(redis_client, "no-such-tenant")


def test_audit_reads_page_filter_and_refuse_bad_arguments(redis_client: redis.Redis, tenant: str) -> None:
    for i in range(250):
        audit.record(redis_client, tenant, "cli:ops", "topic.set" if i % 2 else "alert.cleared",
                     f"n:{i}")
    every = audit.read(redis_client, tenant, limit=1000)
    assert [e.target for e in every] == [f"n:{i}" for i in range(250)]
    topics = audit.read(redis_client, tenant, action="topic", limit=1000)
    assert [e.target for e in topics] == [f"n:{i}" for i in range(1, 250, 2)]
    assert audit.read(redis_client, tenant, action="topic.se") == []  # a prefix is a whole part
    assert len(audit.read(redis_client, tenant, limit=7)) == 7
    assert audit.read(redis_client, tenant, since=time.time() + 60) == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"since": -1}, {"since": "yesterday"}):
        with pytest.raises(InvalidInputError):
            audit.read(redis_client, tenant, **bad)


@pytest.mark.slow
def test_the_cli_manages_keys_and_shows_the_audit(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tenant: str, tmp_path: Path,
) -> None:
    env = {**os.environ, "PUSHPILOT_REDIS_URL": redis_server.url,
           "PUSHPILOT_DATA_DIR": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PUSHPILOT), *args], env=env, capture_output=True, text=True,
                              timeout=120)

    made = run("tenant", "key", "create", tenant, "--scopes", "score", "--expires-days", "30")
    assert made.returncode == 0, made.stderr
    api_key = made.stdout.strip()
    key_id = tenants.key_id_of(api_key)
    listed = run("tenant", "key", "list", tenant)
    assert json.loads(listed.stdout)["key_id"] == key_id and api_key not in listed.stdout
    rotated = run("tenant", "key", "rotate", tenant, key_id, "--grace-hours", "1")
    assert rotated.returncode == 0, rotated.stderr
    assert "stays valid until" in rotated.stderr
    revoked = run("tenant", "key", "revoke", tenant, key_id)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["state"] == "revoked"
    before = _state(redis_client, tenant)
    for bad in (("tenant", "key", "revoke", tenant, "nosuchid"),
                ("tenant", "key", "create", tenant, "--expires-days", "0")):
        refused = run(*bad)
        assert refused.returncode != 0 and ("nosuchid" in refused.stderr
                                            or "expires_days" in refused.stderr), refused.stderr
    assert _state(redis_client, tenant) == before

    shown = run("audit", "--tenant", tenant, "--action", "key")
    assert shown.returncode == 0, shown.stderr
    entries = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [e["action"] for e in entries] == ["key.created", "key.rotated", "key.revoked"]
    assert all(e["actor"].startswith("cli:") for e in entries)
    assert tenants.authenticate(redis_client, rotated.stdout.strip()).scopes == ("score",)


# --- over HTTP, on the session's Serve app -----------------------------------------------------


def _call(base: str, method: str, path: str, key: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, base + path, json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})


def _admin_routes() -> set[tuple[str, str]]:
    """Every route whose handler needs the admin or campaigns:write scope, read from the
    source of serving/api.py (Serve's ingress takes the routes off the FastAPI app)."""
    import serving.api

    source = Path(serving.api.__file__).read_text()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = ast.get_source_segment(source, node) or ""
        if '"admin")' not in body and '"campaigns:write")' not in body:
            continue
        for decorator in node.decorator_list:
            if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                    and isinstance(decorator.func.value, ast.Name) and decorator.func.value.id == "app"):
                found.add((decorator.func.attr.upper(), decorator.args[0].value))  # type: ignore[attr-defined]
    return found


@pytest.mark.serve
@pytest.mark.slow
def test_every_admin_call_is_in_the_audit_trail_with_its_actor(
    serve_app: str, redis_client: redis.Redis, tenant: str, new_tenant_id: Callable[[str], str],
) -> None:
    admin = tenants.create_api_key(redis_client, tenant, ["admin"])
    actor = f"key:{tenants.key_id_of(admin)}"
    spare = tenants.key_id_of(tenants.create_api_key(redis_client, tenant, ["score"]))
    alert = guard._raise_alert(redis_client, tenant, "key:noisy", int(time.time()), 500.0, 2.0, 60)
    consent.record_consent(redis_client, tenant, "asker", {"marketing": "granted"}, source="test",
                           policy_version="v1")
    campaign = {"id": "audited", "holdout_percent": 20, "selection": {"top_k": 5},
                "schedule": {"cron": "0 9 * * *"},
                "variants": [{"name": "a", "title": "Hi", "body": "Hello", "weight": 1}]}
    calls = [  # (method, route, path, body, the action it records)
        ("GET", "/v1/keys", "/v1/keys", None, "key.listed"),
        ("POST", "/v1/keys", "/v1/keys", {"scopes": ["score"], "expires_days": 7}, "key.created"),
        ("POST", "/v1/keys/{key_id}/rotate", f"/v1/keys/{spare}/rotate", {"grace_seconds": 60},
         "key.rotated"),
        ("DELETE", "/v1/keys/{key_id}", f"/v1/keys/{spare}", None, "key.revoked"),
        ("GET", "/v1/privacy/policy", "/v1/privacy/policy", None, "privacy.policy.read"),
        ("PUT", "/v1/privacy/policy", "/v1/privacy/policy",
         {"operators": {"EMAIL_ADDRESS": "drop"}, "default_operator": "mask"}, "privacy.policy.set"),
        ("GET", "/v1/alerts", "/v1/alerts", None, "alerts.read"),
        ("POST", "/v1/alerts/{alert_id}/clear", f"/v1/alerts/{alert.alert_id}/clear", None,
         "alert.cleared"),
        ("PUT", "/v1/topics/{name}", "/v1/topics/sales", {"kind": "optional"}, "topic.set"),
        ("GET", "/v1/users/{user_id}/export", "/v1/users/asker/export", None, "user.exported"),
        ("POST", "/v1/users/{user_id}/erase", "/v1/users/asker/erase", None, "user.erased"),
        ("POST", "/v1/campaigns", "/v1/campaigns", campaign, "campaign.saved"),
        ("POST", "/v1/campaigns/{campaign_id}/schedule", "/v1/campaigns/audited/schedule", None,
         "campaign.scheduled"),
        ("DELETE", "/v1/campaigns/{campaign_id}/schedule", "/v1/campaigns/audited/schedule", None,
         "campaign.unscheduled"),
        ("POST", "/v1/campaigns/{campaign_id}/runs", "/v1/campaigns/audited/runs", None,
         "campaign.run"),
        ("GET", "/v1/audit", "/v1/audit", None, "audit.read"),
    ]
    # A new admin route without a line above fails here rather than going unaudited unseen.
    assert {(m, route) for m, route, *_ in calls} == _admin_routes()
    started = time.time()

    for method, _, path, body, _ in calls:
        response = _call(serve_app, method, path, admin, body)
        assert response.status_code < 300, (method, path, response.text)

    mine = [e for e in audit.read(redis_client, tenant, since=started, limit=1000)
            if e.actor == actor and e.action not in ("key.used",)]
    assert [e.action for e in mine] == [action for *_, action in calls]
    assert all(started - 1 <= e.at <= time.time() + 1 for e in mine)
    erased = next(e for e in mine if e.action == "user.erased")
    assert "asker" not in erased.target  # named by a keyed digest, as the tombstone does
    # The key's first use this hour is in the trail too, once, however many calls it made.
    assert [e.actor for e in audit.read(redis_client, tenant, action="key.used")] == [actor]

    other = new_tenant_id("sec")
    tenants.create_tenant(redis_client, other)
    their_admin = tenants.create_api_key(redis_client, other, ["admin"])
    theirs = _call(serve_app, "GET", "/v1/audit", their_admin).json()["entries"]
    their_id = tenants.key_id_of(their_admin)
    assert {(e["actor"], e["action"]) for e in theirs} == {
        ("system", "key.created"), (f"key:{their_id}", "key.used")}


@pytest.mark.serve
@pytest.mark.slow
def test_a_revoked_or_expired_key_gets_401_within_a_second(
    serve_app: str, redis_client: redis.Redis, tenant: str, new_tenant_id: Callable[[str], str],
) -> None:
    admin = tenants.create_api_key(redis_client, tenant, ["admin"])
    made = _call(serve_app, "POST", "/v1/keys", admin, {"scopes": ["score"]})
    assert made.status_code == 201, made.text
    victim, victim_id = made.json()["key"], made.json()["key_id"]
    assert made.json()["state"] == "valid" and "ppk_" not in json.dumps(
        _call(serve_app, "GET", "/v1/keys", admin).json())

    def first_refusal(key: str, since: float) -> float:
        """Seconds from ``since`` to the first request, sent after it, that got 401."""
        deadline = time.time() + 10
        while time.time() < deadline:
            sent = time.time()
            status = _call(serve_app, "GET", "/v1/tenants/me", key).status_code
            if status == 401:
                return max(0.0, sent - since)
            assert status == 200
            time.sleep(0.02)
        raise AssertionError("the key was never refused")

    for _ in range(5):  # in every replica's key cache
        assert _call(serve_app, "GET", "/v1/tenants/me", victim).status_code == 200
    other = new_tenant_id("sec")
    tenants.create_tenant(redis_client, other)
    their_admin = tenants.create_api_key(redis_client, other, ["admin"])
    assert _call(serve_app, "DELETE", f"/v1/keys/{victim_id}", their_admin).status_code == 404
    assert _call(serve_app, "GET", "/v1/tenants/me", victim).status_code == 200

    revoked = _call(serve_app, "DELETE", f"/v1/keys/{victim_id}", admin)
    assert revoked.status_code == 200
    after_revoke = first_refusal(victim, time.time())
    refused = _call(serve_app, "GET", "/v1/tenants/me", victim)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]

    expiring = tenants.create_api_key(redis_client, tenant, ["score"], expires_days=2 / 86_400)
    expires_at = tenants.authenticate(redis_client, expiring).expires_at
    assert _call(serve_app, "GET", "/v1/tenants/me", expiring).status_code == 200
    while time.time() < expires_at:
        time.sleep(0.05)
    after_expiry = first_refusal(expiring, expires_at)

    print(f"401 after revocation: {after_revoke:.3f} s; after expiry: {after_expiry:.3f} s")
    assert after_revoke < 1.0 and after_expiry < 1.0
    reasons = {e.detail["reason"] for e in audit.read(redis_client, tenant, action="key.refused")}
    assert reasons == {"revoked", "expired"}
