"""Consent against a real Valkey: the ledger, bad input, and delivery that honours it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis

from pipeline import consent, keys, subjects, tenants
from pipeline.channels.webhook import WebhookChannel
from pipeline.delivery import DeliveryWorker
from pipeline.errors import InvalidInputError
from pipeline.outbox import Push, enqueue
from pipeline.receipts import status_trail

V1 = "privacy-2026-11"


def inbox(r: redis.Redis, tenant_id: str, user_id: str) -> list[str]:
    return [f["push_id"] for _, f in r.xrange(keys.inbox_stream(tenant_id, user_id))]


def drain(worker: DeliveryWorker) -> None:
    while worker.deliver_once():
        pass


def tenant_keys(url: str, tenant_id: str) -> dict[str, bytes | None]:
    raw = redis.Redis.from_url(url)  # DUMP payloads are bytes, so no decoding here
    try:
        return {k.decode(): raw.dump(k) for k in raw.scan_iter(match=keys.tenant_pattern(tenant_id))}
    finally:
        raw.close()


@pytest.fixture
def tenant(redis_client: redis.Redis, new_tenant_id: Callable[[str], str]) -> str:
    tenant_id = new_tenant_id("consent")
    tenants.create_tenant(redis_client, tenant_id)
    return tenant_id


def test_every_change_is_kept_and_the_last_one_per_purpose_counts(redis_client, tenant):
    fresh = consent.preferences(redis_client, tenant, "u1")
    assert all(fresh.allows(p) for p in consent.PURPOSES)
    assert {c.source for c in fresh.current.values()} == {"default"} and fresh.history == []

    consent.record_consent(redis_client, tenant, "u1", {"marketing": "denied", "profiling": "granted"},
                           source="banner", policy_version=V1, at=100.0)
    prefs = consent.record_consent(redis_client, tenant, "u1", {"marketing": "granted"},
                                   source="settings", policy_version="privacy-2026-12", at=200.0)

    assert prefs.allows("marketing") and prefs.current["marketing"].source == "settings"
    assert [(c.purpose, c.status, c.at) for c in prefs.history] == [
        ("marketing", "denied", 100.0), ("profiling", "granted", 100.0), ("marketing", "granted", 200.0)]
    assert consent.denied_users(redis_client, tenant, "marketing") == set()
    consent.record_consent(redis_client, tenant, "u1", {"marketing": "revoked"}, source="unsubscribe link",
                           policy_version="privacy-2026-12")
    assert consent.denied_users(redis_client, tenant, "marketing", ["u1", "u2"]) == {"u1"}
    body = consent.preferences(redis_client, tenant, "u1").as_json()
    assert body["purposes"]["marketing"]["allowed"] is False
    assert body["purposes"]["transactional"]["kind"] == "required"
    assert len(body["history"]) == 4


@pytest.mark.parametrize(("changes", "source", "version", "field"), [
    ({"newsletter": "denied"}, "api", V1, "purposes"),
    ({"marketing": "maybe"}, "api", V1, "marketing"),
    ({"transactional": "revoked"}, "api", V1, "transactional"),
    ({"marketing": "denied", "transactional": "denied"}, "api", V1, "transactional"),
    ({}, "api", V1, "purposes"),
    ({"marketing": "denied"}, "", V1, "source"),
    ({"marketing": "denied"}, "api", " ", "policy_version"),
    ({"marketing": "denied"}, "api", "v1\nv2", "policy_version"),
])
def test_bad_input_is_refused_by_field_and_changes_nothing(redis_client, redis_server, tenant,
                                                           changes, source, version, field):
    consent.record_consent(redis_client, tenant, "u1", {"marketing": "granted"}, source="api",
                           policy_version=V1)
    before = tenant_keys(redis_server.url, tenant)
    with pytest.raises(InvalidInputError) as caught:
        consent.record_consent(redis_client, tenant, "u1", changes, source=source, policy_version=version)
    assert caught.value.field == field
    assert tenant_keys(redis_server.url, tenant) == before


def test_a_user_id_that_cannot_name_a_key_is_refused(redis_client, tenant):
    with pytest.raises(InvalidInputError) as caught:
        consent.record_consent(redis_client, tenant, "u{1}", {"marketing": "denied"}, source="api",
                               policy_version=V1)
    assert caught.value.field == "user_id"


def _plan_with_rules(r: redis.Redis, tenant_id: str) -> None:
    # A frequency cap no test reaches: marketing goes through the worker's rule path rather
    # than the read script's direct one.
    tenants.set_plan(r, tenant_id, tenants.Plan(marketing_per_user_per_day=100))


@pytest.mark.parametrize("path", ["direct", "rules"])
def test_an_opted_out_user_gets_no_marketing_push_but_still_a_transactional_one(
    redis_client, tenant, path,
):
    if path == "rules":
        _plan_with_rules(redis_client, tenant)
    consent.record_consent(redis_client, tenant, "u0", {"marketing": "denied"}, source="banner",
                           policy_version=V1)
    enqueue(redis_client, [
        Push(tenant_id=tenant, push_id="m0", user_id="u0", lane="marketing", body="sale"),
        Push(tenant_id=tenant, push_id="m1", user_id="u1", lane="marketing", body="sale"),
        Push(tenant_id=tenant, push_id="t0", user_id="u0", lane="transactional", body="card used abroad"),
    ])
    drain(DeliveryWorker(redis_client, [tenant], consumer="w"))

    assert inbox(redis_client, tenant, "u0") == ["t0"]
    assert inbox(redis_client, tenant, "u1") == ["m1"]
    trail = status_trail(redis_client, tenant, "m0")
    assert trail[-1]["status"] == "suppressed" and trail[-1]["rule"] == "consent"


@pytest.mark.parametrize("path", ["direct", "rules"])
def test_a_revocation_stops_pushes_already_queued_and_a_new_grant_lets_later_ones_through(
    redis_client, tenant, path,
):
    if path == "rules":
        _plan_with_rules(redis_client, tenant)
    enqueue(redis_client, [Push(tenant_id=tenant, push_id=f"m{i}", user_id="u0", lane="marketing",
                                body="sale") for i in range(3)])
    consent.record_consent(redis_client, tenant, "u0", {"marketing": "revoked"}, source="unsubscribe",
                           policy_version=V1)
    worker = DeliveryWorker(redis_client, [tenant], consumer="w")
    drain(worker)
    assert inbox(redis_client, tenant, "u0") == []
    assert {status_trail(redis_client, tenant, f"m{i}")[-1].get("rule") for i in range(3)} == {"consent"}

    consent.record_consent(redis_client, tenant, "u0", {"marketing": "granted"}, source="settings",
                           policy_version=V1)
    enqueue(redis_client, [Push(tenant_id=tenant, push_id="m9", user_id="u0", lane="marketing", body="new")])
    drain(worker)
    assert inbox(redis_client, tenant, "u0") == ["m9"]


def test_another_tenants_same_user_is_not_touched(redis_client, tenant, new_tenant_id):
    other = new_tenant_id("consent-b")
    tenants.create_tenant(redis_client, other)
    consent.record_consent(redis_client, tenant, "u0", {"marketing": "denied", "profiling": "denied"},
                           source="banner", policy_version=V1)

    assert consent.preferences(redis_client, other, "u0").history == []
    assert consent.denied_users(redis_client, other, "marketing") == set()
    enqueue(redis_client, [Push(tenant_id=t, push_id="m0", user_id="u0", lane="marketing", body="sale")
                           for t in (tenant, other)])
    drain(DeliveryWorker(redis_client, [tenant, other], consumer="w"))
    assert inbox(redis_client, other, "u0") == ["m0"]
    assert inbox(redis_client, tenant, "u0") == []


def test_a_webhook_marketing_push_to_an_opted_out_user_is_never_sent(redis_client, tenant, endpoint):
    tenants.set_webhook_url(redis_client, tenant, endpoint.url)
    consent.record_consent(redis_client, tenant, "u0", {"marketing": "denied"}, source="banner",
                           policy_version=V1)
    enqueue(redis_client, [
        Push(tenant_id=tenant, push_id=p, user_id=u, lane=lane, channel="webhook", body="x")
        for p, u, lane in (("m0", "u0", "marketing"), ("m1", "u1", "marketing"),
                           ("t0", "u0", "transactional"))
    ])
    worker = DeliveryWorker(redis_client, [tenant], consumer="w",
                            channels={"webhook": WebhookChannel(redis_client)})
    drain(worker)

    assert sorted(json.loads(body)["push_id"] for _, body in endpoint.requests) == ["m1", "t0"]
    trail = status_trail(redis_client, tenant, "m0")
    assert trail[-1]["status"] == "suppressed" and trail[-1]["rule"] == "consent"


@pytest.mark.parametrize("path", ["direct", "rules"])
def test_marketing_to_an_erased_user_stays_stopped_until_they_grant_it_again(
    redis_client, tenant, new_tenant_id, path,
):
    if path == "rules":
        _plan_with_rules(redis_client, tenant)
    other = new_tenant_id("consent-b")
    tenants.create_tenant(redis_client, other)
    consent.record_consent(redis_client, tenant, "u0", {"marketing": "denied"}, source="banner",
                           policy_version=V1)
    subjects.erase_user(redis_client, tenant, "u0", actor="test")  # the refusal goes with the rest
    enqueue(redis_client, [
        Push(tenant_id=tenant, push_id="m0", user_id="u0", lane="marketing", body="sale"),
        Push(tenant_id=tenant, push_id="m1", user_id="u1", lane="marketing", body="sale"),
        Push(tenant_id=tenant, push_id="t0", user_id="u0", lane="transactional", body="your code"),
        Push(tenant_id=other, push_id="m0", user_id="u0", lane="marketing", body="sale"),
    ])
    worker = DeliveryWorker(redis_client, [tenant, other], consumer="w")
    drain(worker)

    assert inbox(redis_client, tenant, "u0") == ["t0"] and inbox(redis_client, tenant, "u1") == ["m1"]
    assert status_trail(redis_client, tenant, "m0")[-1] | {"at": 0} == {
        "status": "suppressed", "rule": "consent", "at": 0}
    assert inbox(redis_client, other, "u0") == ["m0"]  # another tenant's same id: not erased there
    assert consent.preferences(redis_client, tenant, "u0").current["marketing"].source == "erasure"

    # Another purpose granted is no marketing grant; a marketing grant is.
    for push_id, changes in (("m2", {"profiling": "granted"}), ("m3", {"marketing": "granted"})):
        consent.record_consent(redis_client, tenant, "u0", changes, source="signup", policy_version=V1)
        enqueue(redis_client, [Push(tenant_id=tenant, push_id=push_id, user_id="u0", lane="marketing",
                                    body="hi")])
        drain(worker)
    assert inbox(redis_client, tenant, "u0") == ["t0", "m3"]
    assert status_trail(redis_client, tenant, "m2")[-1]["rule"] == "consent"
    assert consent.preferences(redis_client, tenant, "u0").allows("marketing")


@pytest.mark.parametrize("channel", ["inbox", "webhook"])
def test_a_push_erased_while_a_worker_holds_it_is_neither_delivered_nor_recorded(
    redis_client, tenant, endpoint, channel,
):
    _plan_with_rules(redis_client, tenant)  # marketing inbox pushes go through the worker
    tenants.set_webhook_url(redis_client, tenant, endpoint.url)
    enqueue(redis_client, [Push(tenant_id=tenant, push_id="m0", user_id="u0", lane="marketing",
                                channel=channel, body="sale")])
    worker = DeliveryWorker(redis_client, [tenant], consumer="w",
                            channels={"webhook": WebhookChannel(redis_client)})
    held, _, _ = worker._read([tenant], 0)  # the worker holds the entry, as between its steps
    assert [w[3][1]["push_id"] for w in held] == ["m0"]

    assert subjects.erase_user(redis_client, tenant, "u0", actor="test").removed["queued_pushes"] == 1
    worker._deliver(held)

    assert endpoint.requests == [] and inbox(redis_client, tenant, "u0") == []
    assert not redis_client.exists(keys.push_status(tenant, "m0"), keys.push_retry(tenant, "m0"),
                                   keys.inbox_stream(tenant, "u0"))
    stream = keys.outbox_stream(tenant, "marketing")
    assert redis_client.xpending(stream, "delivery")["pending"] == 0


@pytest.fixture
def topics(redis_client, tenant) -> str:
    consent.create_topic(redis_client, tenant, "sales", description="offers")
    consent.create_topic(redis_client, tenant, "orders", kind="required", description="order updates")
    return tenant


def test_topics_and_channels_are_refused_one_by_one_and_a_required_topic_cannot_be(
    redis_client, topics,
):
    tenant = topics
    prefs = consent.record_consent(redis_client, tenant, "u0", {"topic:sales": "denied", "channel:webhook": "revoked"},
                                   source="settings", policy_version=V1).as_json()
    assert prefs["purposes"]["marketing"]["allowed"] is True
    assert prefs["topics"]["sales"] | {"at": 0} == {"purpose": "topic:sales", "status": "denied", "at": 0,
                                                     "source": "settings", "policy_version": V1,
                                                     "allowed": False, "kind": "optional"}
    assert prefs["topics"]["orders"]["allowed"] is True and prefs["topics"]["orders"]["kind"] == "required"
    assert set(prefs["channels"]) == {"inbox", "webhook"}
    assert prefs["channels"]["webhook"]["allowed"] is False and prefs["channels"]["inbox"]["allowed"] is True

    before = redis_client.xlen(keys.consent_ledger(tenant, "u0"))
    for bad, message in (({"topic:orders": "denied"}, "is required"),
                         ({"topic:nope": "denied"}, "unknown topic 'nope'"),
                         ({"channel:sms": "denied"}, "unknown channel 'sms'"),
                         ({"topic:sales": "granted", "topic:orders": "revoked"}, "is required")):
        with pytest.raises(InvalidInputError, match=message):
            consent.record_consent(redis_client, tenant, "u0", bad, source="x", policy_version=V1)
    assert redis_client.xlen(keys.consent_ledger(tenant, "u0")) == before
    for name, kind, message in (("Bad Name", "optional", "a topic is"), ("promo", "always", "kind"),
                                ("sales", "required", "users refused topic 'sales'")):
        with pytest.raises(InvalidInputError, match=message):
            consent.create_topic(redis_client, tenant, name, kind=kind)
    assert [(t.name, t.kind) for t in consent.list_topics(redis_client, tenant)] == [
        ("orders", "required"), ("sales", "optional")]
    for bad in ("Sales!", None, 0):
        with pytest.raises(InvalidInputError, match="topic"):
            enqueue(redis_client, [Push(tenant_id=tenant, push_id="p0", user_id="u0", body="x"),
                                   Push(tenant_id=tenant, push_id="p1", user_id="u0", topic=bad, body="x")])
    assert not redis_client.exists(keys.push_status(tenant, "p0"))  # nothing of the call is written


@pytest.mark.parametrize("path", ["direct", "rules"])
def test_a_refused_topic_or_channel_stops_only_those_marketing_pushes(
    redis_client, topics, endpoint, new_tenant_id, path,
):
    tenant = topics
    if path == "rules":
        _plan_with_rules(redis_client, tenant)
    other = new_tenant_id("consent-b")
    tenants.create_tenant(redis_client, other)
    tenants.set_webhook_url(redis_client, tenant, endpoint.url)
    consent.record_consent(redis_client, tenant, "u0", {"topic:sales": "denied", "channel:webhook": "denied"},
                           source="settings", policy_version=V1)
    enqueue(redis_client, [
        Push(tenant_id=tenant, push_id=p, user_id=u, lane=lane, channel=channel, topic=topic, body="x")
        for p, u, lane, channel, topic in (
            ("sale0", "u0", "marketing", "inbox", "sales"),      # refused topic
            ("news0", "u0", "marketing", "inbox", ""),           # no topic: marketing is allowed
            ("order0", "u0", "marketing", "inbox", "orders"),
            ("hook0", "u0", "marketing", "webhook", ""),         # refused channel
            ("sale1", "u1", "marketing", "inbox", "sales"),      # another user
            ("code0", "u0", "transactional", "inbox", "sales"),  # transactional: never stopped
            ("code1", "u0", "transactional", "webhook", ""),
        )
    ] + [Push(tenant_id=other, push_id="sale0", user_id="u0", topic="sales", body="x")])
    drain(DeliveryWorker(redis_client, [tenant, other], consumer="w",
                         channels={"webhook": WebhookChannel(redis_client)}))

    assert sorted(inbox(redis_client, tenant, "u0")) == ["code0", "news0", "order0"]
    assert inbox(redis_client, tenant, "u1") == ["sale1"]
    assert [json.loads(body)["push_id"] for _, body in endpoint.requests] == ["code1"]
    for push in ("sale0", "hook0"):
        assert status_trail(redis_client, tenant, push)[-1]["rule"] == "consent"
    assert inbox(redis_client, other, "u0") == ["sale0"]  # the other tenant's same id and topic


def test_an_erasure_removes_the_users_topic_and_channel_refusals(redis_client, topics):
    tenant = topics
    for user in ("u0", "u1"):
        consent.record_consent(redis_client, tenant, user, {"topic:sales": "denied", "channel:inbox": "denied"},
                               source="settings", policy_version=V1)
    subjects.erase_user(redis_client, tenant, "u0", actor="test")
    assert sorted(redis_client.hkeys(keys.consent_denied_scoped(tenant))) == ["u1/channel:inbox", "u1/topic:sales"]
    assert consent.scope_refusers(redis_client, tenant, ["topic:sales"]) == {"u1"}


def test_a_revocation_stops_a_webhook_push_waiting_to_retry_and_clears_its_retry_state(
    redis_client, tenant, endpoint,
):
    tenants.set_webhook_url(redis_client, tenant, endpoint.url)
    endpoint.script["m0"] = [503]  # the endpoint is down once: the push waits to retry
    enqueue(redis_client, [Push(tenant_id=tenant, push_id="m0", user_id="u0", lane="marketing",
                                channel="webhook", body="x")])
    now = [1_900_000_000.0]
    worker = DeliveryWorker(redis_client, [tenant], consumer="w", claim_idle_ms=0, clock=lambda: now[0],
                            channels={"webhook": WebhookChannel(redis_client)})
    worker.deliver_once()
    assert redis_client.exists(keys.push_retry(tenant, "m0")) and len(endpoint.requests) == 1

    consent.record_consent(redis_client, tenant, "u0", {"marketing": "revoked"}, source="unsubscribe",
                           policy_version=V1)
    now[0] += 3600  # past any backoff
    drain(worker)

    assert len(endpoint.requests) == 1
    assert status_trail(redis_client, tenant, "m0")[-1]["rule"] == "consent"
    assert not redis_client.exists(keys.push_retry(tenant, "m0"))
    assert redis_client.xlen(keys.outbox_stream(tenant, "marketing")) == 0
