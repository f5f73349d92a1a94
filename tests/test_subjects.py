"""Data-subject export and erasure against a real Valkey, with the data every path writes."""

from __future__ import annotations

import pytest

from pipeline import consent, keys, subjects
from pipeline.errors import InvalidInputError, UnknownTenantError
from pipeline.privacy import recent_audits
from pipeline.redis_server import EmbeddedRedis


def test_export_holds_everything_kept_about_the_user_and_only_theirs(redis_client, world):
    mine, _, person, _ = world
    body = subjects.export_user(redis_client, mine, person)

    assert body is not None and body["user_id"] == person
    assert body["profile"]["email"] != f"{person}@mail.example.com"  # the pseudonym
    assert body["features"] and body["send_hour"] is not None
    assert [e["event_type"] for e in body["events"]] == ["session_start", "view", "purchase"]
    assert {e["user_id"] for e in body["events_stream"]} == {person} and len(body["events_stream"]) == 3
    assert [i["push_id"] for i in body["inbox"]] == [f"{person}-m"]
    assert [q["push_id"] for q in body["queued"]] == [f"{person}-q"]
    assert len(body["dead_letters"]) == 1
    assert set(body["receipts"]) == {f"{person}-m", f"{person}-q", f"{person}-x"}
    assert body["receipts"][f"{person}-m"][-1]["status"] == "delivered"
    assert body["frequency"] and body["quarantine"] == "test"
    assert body["campaigns"] == [{"key": "spring/r1", "arm": "a"}]
    assert body["consent"]["history"][0]["status"] == "granted"
    assert subjects.export_user(redis_client, mine, "never-seen") is None


def test_erasure_leaves_nothing_of_the_user_but_a_keyed_tombstone_and_spares_the_other_tenant(
    redis_client, redis_server: EmbeddedRedis, world, redis_corpus,
):
    mine, theirs, person, others = world
    pseudonym = subjects.export_user(redis_client, mine, person)["profile"]["email"]
    theirs_before = subjects.export_user(redis_client, theirs, person)
    others_before = [subjects.export_user(redis_client, mine, u) for u in others]

    report = subjects.erase_user(redis_client, mine, person, actor="test")

    assert report.removed == {"inbox_entries": 1, "queued_pushes": 1, "dead_letters": 1, "events": 3,
                              "receipts": 3, "campaign_assignments": 1}
    assert any("backups" in line for line in report.remains)
    # Every key and value; not DUMP: a stream keeps the bytes of deleted entries until its node
    # is freed (subjects.REMAINS says so), which only a copy of the stream would shed.
    # The tenant's keys only: the session's server holds every other test's data too.
    mine_corpus = redis_corpus(redis_server.url, with_dump=False, match=keys.tenant_pattern(mine))
    assert mine_corpus, "the tenant's other data is still there"
    leaks = [k for k, blob in mine_corpus if person.encode() in blob or pseudonym.encode() in blob]
    assert not leaks, leaks
    assert subjects.export_user(redis_client, mine, person) is None
    assert subjects.excluded_from_learning(redis_client, mine, [person, *others]) == {person}
    audit = recent_audits(redis_client, mine, 1)[0]
    assert audit["source"] == "erase by test" and audit["counts"]["erasure"]["users"] == 1
    assert person not in repr(audit)

    # The other tenant's same user, and this tenant's other users, are as they were.
    after = subjects.export_user(redis_client, theirs, person)
    assert after is not None and {k: v for k, v in after.items() if k != "exported_at"} == {
        k: v for k, v in theirs_before.items() if k != "exported_at"}
    assert subjects.excluded_from_learning(redis_client, theirs, [person]) == set()
    for user, before in zip(others, others_before, strict=True):
        now = subjects.export_user(redis_client, mine, user)
        assert {k: v for k, v in now.items() if k != "exported_at"} == {
            k: v for k, v in before.items() if k != "exported_at"}

    # Again: allowed, removes nothing more, and the tombstone is still the only trace.
    assert set(subjects.erase_user(redis_client, mine, person, actor="test").removed.values()) == {0}
    assert subjects.erasure_count(redis_client, mine) == 1


def test_bad_requests_are_refused_and_change_nothing(redis_client, redis_server, world, redis_corpus):
    mine, _, _, _ = world
    def corpus() -> list[tuple[str, bytes]]:
        # This tenant's keys and those an unknown tenant would get, not the whole session's.
        return sorted(redis_corpus(redis_server.url, match=keys.tenant_pattern(mine))
                      + redis_corpus(redis_server.url, match=keys.tenant_pattern("no-such-tenant")))

    before = corpus()
    with pytest.raises(InvalidInputError):
        subjects.erase_user(redis_client, mine, "a{b}", actor="test")
    with pytest.raises(UnknownTenantError):
        subjects.erase_user(redis_client, "no-such-tenant", "u1", actor="test")
    with pytest.raises(UnknownTenantError):
        subjects.export_user(redis_client, "no-such-tenant", "u1")
    assert corpus() == before


def test_the_compliance_report_counts_data_consent_and_requests_per_tenant(redis_client, world):
    from pipeline.compliance import compliance_report

    mine, theirs, person, others = world
    consent.record_consent(redis_client, mine, others[0], {"profiling": "denied"}, source="banner",
                           policy_version="v2")
    subjects.export_user(redis_client, mine, others[1], actor="test")
    subjects.erase_user(redis_client, mine, person, actor="test")

    report = compliance_report(redis_client, mine, inbox_max_len=1000)
    other = compliance_report(redis_client, theirs, inbox_max_len=1000)

    held = report["data_held"]
    assert held["users_with_features"] == held["event_histories"] == held["inboxes"] == 3
    assert other["data_held"]["users_with_features"] == 4
    assert report["consent"]["users_with_a_ledger"] == 3
    assert report["consent"]["denied_or_revoked"] == {"marketing": 0, "profiling": 1, "transactional": 0}
    assert report["consent"]["latest_policy_version"] == {"v1": 2, "v2": 1}
    # Every user refused the topic and the webhook channel; the erased one's refusals went too.
    assert report["consent"]["topics"] == {"sales": {"kind": "optional", "refused_by": 3}}
    assert report["consent"]["channels_refused_by"] == {"inbox": 0, "webhook": 3}
    assert other["consent"]["topics"]["sales"]["refused_by"] == 4
    assert {k: report["data_subject_requests"][k] for k in ("exports", "erasures_recorded", "users_erased")} == {
        "exports": 1, "erasures_recorded": 1, "users_erased": 1}
    assert {k: other["data_subject_requests"][k] for k in ("exports", "erasures_recorded", "users_erased")} == {
        "exports": 0, "erasures_recorded": 0, "users_erased": 0}
    assert person not in repr(report) and not any(u in repr(report) for u in others)
    with pytest.raises(UnknownTenantError):
        compliance_report(redis_client, "no-such-tenant", inbox_max_len=1000)


def test_erasure_finds_a_campaign_pushs_receipt_with_nothing_else_left_of_it(
    redis_client, new_tenant_id, endpoint,
):
    from pipeline import tenants
    from pipeline.channels.webhook import WebhookChannel
    from pipeline.delivery import DeliveryWorker
    from pipeline.outbox import Push, campaign_push_id, enqueue

    tenant = new_tenant_id("dsr-camp")
    tenants.create_tenant(redis_client, tenant)
    tenants.set_webhook_url(redis_client, tenant, endpoint.url)
    push_ids = {u: campaign_push_id("spring", "r1", u) for u in ("u0", "u1")}
    redis_client.hset(keys.campaign_arms(tenant, "spring", "r1"), mapping={"u0": "a", "u1": "a"})
    enqueue(redis_client, [Push(tenant_id=tenant, push_id=p, user_id=u, channel="webhook", body="x",
                                campaign_id="spring") for u, p in push_ids.items()])
    DeliveryWorker(redis_client, [tenant], consumer="w",
                   channels={"webhook": WebhookChannel(redis_client)}).deliver_once()
    assert [t[-1]["status"] for t in subjects.export_user(redis_client, tenant, "u0")["receipts"].values()] == [
        "delivered"]  # sent by webhook: no inbox entry, no queued entry, only the receipt

    assert subjects.erase_user(redis_client, tenant, "u0", actor="test").removed["receipts"] == 1
    assert not redis_client.exists(keys.push_status(tenant, push_ids["u0"]))
    assert redis_client.exists(keys.push_status(tenant, push_ids["u1"]))


def test_data_that_arrives_after_an_erasure_is_exported_and_marked(redis_client, world):
    from pipeline.delivery import DeliveryWorker
    from pipeline.outbox import Push, enqueue

    mine, _, person, _ = world
    subjects.erase_user(redis_client, mine, person, actor="test")
    assert subjects.export_user(redis_client, mine, person) is None
    enqueue(redis_client, [Push(tenant_id=mine, push_id="after", user_id=person, lane="transactional",
                                body="your code")])
    DeliveryWorker(redis_client, [mine], consumer="after").deliver_once()

    body = subjects.export_user(redis_client, mine, person)
    assert body["erased_before"] is True and [i["push_id"] for i in body["inbox"]] == ["after"]
    assert body["events"] == [] and body["profile"] is None
