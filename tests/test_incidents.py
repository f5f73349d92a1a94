"""Incident response: open from alerts, contain in one step, close, report; and a drill where a
leaked key hammers the real Serve app until it is contained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from pipeline import audit, campaigns, guard, incidents, keys, tenants
from pipeline.campaigns.scheduler import schedule_campaign, unschedule_campaign
from pipeline.errors import InvalidInputError
from pipeline.redis_server import EmbeddedRedis

PUSHPILOT = Path(sys.executable).with_name("pushpilot")


@pytest.fixture
def tenant(redis_client: redis.Redis, new_tenant_id: Callable[[str], str]) -> str:
    tenant_id = new_tenant_id("inc")
    tenants.create_tenant(redis_client, tenant_id)
    return tenant_id


def _scheduled_campaign(r: redis.Redis, tenant_id: str, campaign_id: str) -> None:
    spec = campaigns.parse_spec(json.dumps({
        "id": campaign_id, "tenant": tenant_id, "holdout_percent": 10, "selection": {"top_k": 5},
        "schedule": {"cron": "0 9 * * *"},
        "variants": [{"name": "a", "title": "Hi", "body": "Hello", "weight": 1}]}))
    campaigns.save_campaign(r, spec)
    schedule_campaign(r, spec, time.time())


def _alert(r: redis.Redis, tenant_id: str, series: str) -> str:
    return guard._raise_alert(r, tenant_id, series, int(time.time()), 400.0, 2.0, 600).alert_id


def test_contain_revokes_the_alerted_key_pauses_campaigns_lowers_rates_and_close_undoes_it(
    redis_client: redis.Redis, tenant: str, new_tenant_id: Callable[[str], str]
) -> None:
    r = redis_client
    leaked = tenants.create_api_key(r, tenant, ["score"])
    calm = tenants.create_api_key(r, tenant, ["score"])
    leaked_id = tenants.key_id_of(leaked)
    _scheduled_campaign(r, tenant, "weekly")
    other = new_tenant_id("inc")
    tenants.create_tenant(r, other)
    their_key = tenants.create_api_key(r, other, ["score"])
    _scheduled_campaign(r, other, "weekly")
    alert_id = _alert(r, tenant, f"key:{leaked_id}")

    opened = incidents.open_incident(r, tenant, "leaked key", actor="cli:ops")
    assert opened["alert_ids"] == [alert_id] and opened["series"] == [f"key:{leaked_id}"]
    contained = incidents.contain(r, tenant, opened["id"], actor="cli:ops", requests_per_second=5,
                                  sends_per_second=10)

    assert contained["state"] == "contained"
    assert [a["action"] for a in contained["actions"]] == ["keys.revoked", "campaigns.paused",
                                                           "plan.lowered"]
    with pytest.raises(Exception, match="revoked"):
        tenants.authenticate(r, leaked)
    assert tenants.authenticate(r, calm)
    plan = tenants.get_tenant(r, tenant).plan
    assert (plan.requests_per_second, plan.sends_per_second) == (5, 10)
    assert r.zscore(keys.campaign_schedules(), f"{tenant}/weekly") is None
    assert campaigns.list_campaigns(r, tenant)[0]["status"] == "paused"
    # The other tenant is untouched, and cannot see or act on this incident.
    assert tenants.authenticate(r, their_key).tenant_id == other
    assert r.zscore(keys.campaign_schedules(), f"{other}/weekly") is not None
    assert tenants.get_tenant(r, other).plan == tenants.Plan()
    assert incidents.list_incidents(r, other) == []
    for attempt in (lambda: incidents.contain(r, other, opened["id"], actor="x"),
                    lambda: incidents.report_markdown(r, other, opened["id"])):
        with pytest.raises(InvalidInputError, match="has no incident"):
            attempt()

    closed = incidents.close_incident(r, tenant, opened["id"], actor="cli:ops",
                                      notes="rotate keys monthly")
    assert closed["state"] == "closed"
    assert tenants.get_tenant(r, tenant).plan == tenants.Plan()
    assert r.zscore(keys.campaign_schedules(), f"{tenant}/weekly") is not None
    with pytest.raises(Exception, match="revoked"):
        tenants.authenticate(r, leaked)  # a leaked key stays revoked
    assert [e.action for e in audit.read(r, tenant, action="incident")] == [
        "incident.opened", "incident.contained", "incident.closed"]
    report = incidents.report_markdown(r, tenant, opened["id"])
    for expected in ("leaked key", "key.revoked", "incident.contained", "rotate keys monthly",
                     "campaigns.paused", "plan.lowered", "campaigns.resumed", "plan.restored"):
        assert expected in report, expected


def test_close_after_two_containments_restores_what_was_there_and_leaves_later_decisions(
    redis_client: redis.Redis, tenant: str,
) -> None:
    r = redis_client
    leaked = tenants.create_api_key(r, tenant, ["admin"], actor="cli:ops")
    leaked_id = tenants.key_id_of(leaked)
    # What the leaked admin key minted, and what that key minted in turn, goes with it.
    minted = tenants.create_api_key(r, tenant, ["admin"], actor=f"key:{leaked_id}")
    minted_twice = tenants.create_api_key(r, tenant, ["score"],
                                          actor=f"key:{tenants.key_id_of(minted)}")
    bystander = tenants.create_api_key(r, tenant, ["score"], actor="cli:ops")
    _scheduled_campaign(r, tenant, "weekly")
    _scheduled_campaign(r, tenant, "daily")
    record = incidents.open_incident(r, tenant, "leaked admin key", actor="cli:ops",
                                     alert_ids=[])

    with pytest.raises(InvalidInputError, match="only lowers"):
        incidents.contain(r, tenant, record["id"], actor="cli:ops", revoke_keys=[leaked_id],
                          requests_per_second=10_000)
    incidents.contain(r, tenant, record["id"], actor="cli:ops", revoke_keys=[leaked_id],
                      requests_per_second=50)
    incidents.contain(r, tenant, record["id"], actor="cli:ops", revoke_keys=[],
                      requests_per_second=5, sends_per_second=20)
    for key in (leaked, minted, minted_twice):
        with pytest.raises(Exception, match="revoked"):
            tenants.authenticate(r, key)
    assert tenants.authenticate(r, bystander)
    # Meanwhile an operator cancels one paused campaign and raises the backlog limit.
    unschedule_campaign(r, tenant, "daily")
    plan = tenants.get_tenant(r, tenant).plan
    tenants.set_plan(r, tenant, tenants.Plan(**{**plan.__dict__, "max_backlog": 5}))

    closed = incidents.close_incident(r, tenant, record["id"], actor="cli:ops")
    plan = tenants.get_tenant(r, tenant).plan
    assert (plan.requests_per_second, plan.sends_per_second, plan.max_backlog) == (
        tenants.Plan().requests_per_second, tenants.Plan().sends_per_second, 5)
    statuses = {c["id"]: c["status"] for c in campaigns.list_campaigns(r, tenant)}
    assert statuses == {"daily": "cancelled", "weekly": "active"}
    assert r.zscore(keys.campaign_schedules(), f"{tenant}/daily") is None
    assert closed["actions"][-2:] == [
        {"at": closed["closed_at"], "action": "campaigns.resumed", "campaign_ids": ["weekly"]},
        {"at": closed["closed_at"], "action": "plan.restored",
         "values": {"requests_per_second": tenants.Plan().requests_per_second,
                    "sends_per_second": tenants.Plan().sends_per_second}}]


def test_the_report_reads_the_whole_audit_trail_of_a_long_incident(
    redis_client: redis.Redis, tenant: str,
) -> None:
    r = redis_client
    record = incidents.open_incident(r, tenant, "long one", actor="cli:ops", alert_ids=[])
    for i in range(audit.MAX_READ + 200):
        audit.record(r, tenant, "cli:ops", "policy.set", f"policy:{i}")
    incidents.close_incident(r, tenant, record["id"], actor="cli:ops", notes="the last line")
    report = incidents.report_markdown(r, tenant, record["id"])
    assert f"policy:{audit.MAX_READ + 199}" in report and "incident.closed" in report


def test_bad_incident_requests_are_refused_and_change_nothing(
    redis_client: redis.Redis, tenant: str
) -> None:
    r = redis_client
    key = tenants.create_api_key(r, tenant, ["score"])
    record = incidents.open_incident(r, tenant, "drill", actor="cli:ops", alert_ids=[])

    def state() -> object:
        return (r.hgetall(keys.incidents(tenant)), r.hgetall(keys.tenant_api_keys(tenant)),
                r.hget(keys.tenant_meta(tenant), "plan"), r.xlen(keys.audit(tenant)))

    before = state()
    for call, field in [
        (lambda: incidents.contain(r, tenant, record["id"], actor="x", revoke_keys=["nosuch"]),
         "revoke_keys"),
        (lambda: incidents.contain(r, tenant, record["id"], actor="x", requests_per_second=0),
         "requests_per_second"),
        (lambda: incidents.contain(r, tenant, "inc-nope", actor="x"), "incident"),
        (lambda: incidents.open_incident(r, tenant, "", actor="x"), "title"),
        (lambda: incidents.open_incident(r, tenant, "x", actor="x", alert_ids=["1-0"]), "alert"),
        (lambda: incidents.close_incident(r, tenant, record["id"], actor="x", notes="n" * 501),
         "notes"),
    ]:
        with pytest.raises(InvalidInputError) as raised:
            call()
        assert raised.value.field == field
    assert state() == before
    assert tenants.authenticate(r, key)
    incidents.close_incident(r, tenant, record["id"], actor="cli:ops")
    with pytest.raises(InvalidInputError, match="closed"):
        incidents.contain(r, tenant, record["id"], actor="x")


@pytest.mark.serve
@pytest.mark.slow
def test_drill_a_leaked_key_hammering_the_api_goes_from_alert_to_containment_with_a_report(
    serve_app: str, redis_server: EmbeddedRedis, redis_client: redis.Redis, tenant: str,
    tmp_path: Path,
) -> None:
    r = redis_client
    leaked = tenants.create_api_key(r, tenant, ["score"])
    calm = tenants.create_api_key(r, tenant, ["score"])
    series = f"key:{tenants.key_id_of(leaked)}"
    now = int(time.time())
    for second in range(now - 180, now):  # its normal traffic: one request a second
        guard.record_requests(r, tenant, series, second, count=1)

    # The leak: the key hammers the API until the guard throttles it.
    headers = {"Authorization": f"Bearer {leaked}"}
    hammered = {200: 0, 429: 0}
    started = time.time()
    with httpx.Client(base_url=serve_app, headers=headers, timeout=30) as client:
        while time.time() - started < 30:
            status = client.get("/v1/tenants/me").status_code
            hammered[status] = hammered.get(status, 0) + 1
            if status == 429 and guard.list_alerts(r, tenant):
                break
    (alert,) = guard.list_alerts(r, tenant)
    assert alert["series"] == series, alert
    alerted_at = time.time()

    env = {**os.environ, "PUSHPILOT_REDIS_URL": redis_server.url, "PUSHPILOT_DATA_DIR": str(tmp_path)}

    def cli(*args: str) -> str:
        done = subprocess.run([str(PUSHPILOT), "incident", *args, "--tenant", tenant], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    opened = json.loads(cli("open", "--title", "leaked API key hammering /v1/tenants/me"))
    assert opened["alert_ids"] == [alert["id"]]
    contained = json.loads(cli("contain", "--id", opened["id"], "--requests-per-second", "5"))
    contained_at = time.time()
    assert contained["actions"][0] == {"at": contained["actions"][0]["at"], "action": "keys.revoked",
                                       "key_ids": [tenants.key_id_of(leaked)]}

    refused_after = None
    while time.time() - contained_at < 5:
        sent = time.time()
        if httpx.get(serve_app + "/v1/tenants/me", headers=headers, timeout=30).status_code == 401:
            refused_after = sent - contained_at
            break
        time.sleep(0.05)
    assert refused_after is not None and refused_after < 1.0
    assert httpx.get(serve_app + "/v1/tenants/me", timeout=30,
                     headers={"Authorization": f"Bearer {calm}"}).status_code == 200

    report = cli("report", "--id", opened["id"])
    html_report = cli("report", "--id", opened["id"], "--format", "html")
    print(f"hammered {hammered}; alert to containment {contained_at - alerted_at:.1f} s; "
          f"leaked key refused {refused_after:.3f} s after containment")
    print(report)
    for expected in (alert["reason"], "incident.opened", "key.revoked", "incident.contained",
                     "guard.throttled", f"`{series}` peak"):
        assert expected in report, expected
    assert "<svg" in html_report and series in html_report
    closed = json.loads(cli("close", "--id", opened["id"], "--notes", "keys now rotate monthly"))
    assert closed["state"] == "closed"
    assert tenants.get_tenant(r, tenant).plan.requests_per_second == tenants.Plan().requests_per_second
