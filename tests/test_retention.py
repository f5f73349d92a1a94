"""The retention sweeper against a real Valkey: ages per tenant, what goes, what stays."""

from __future__ import annotations

import hashlib
import secrets
import time

import pytest
import redis

from pipeline import keys, retention, subjects, tenants
from pipeline.compliance import compliance_report
from pipeline.errors import InvalidInputError, UnknownTenantError
from pipeline.events import ingest_events
from pipeline.onlinefeatures import pack_event

DAY = 86_400
POLICY = retention.RetentionPolicy(events_days=30, receipts_days=1, inbox_days=1)


def _held(r: redis.Redis, tenant_id: str, users: list[str]) -> list[dict]:
    return [{k: v for k, v in subjects.export_user(r, tenant_id, u).items() if k != "exported_at"}
            for u in users]


def _settled_ttls(r: redis.Redis, tenant_id: str, users: list[str]) -> list[int]:
    return [r.ttl(keys.push_status(tenant_id, f"{u}-{kind}")) for u in users for kind in "mx"]


def test_the_sweep_removes_what_is_older_than_the_tenants_ages_and_nothing_of_another_tenant(
    redis_client: redis.Redis, world,
):
    mine, theirs, person, others = world
    users = [person, *others]
    # One recent event besides the ones of 2026-11-01, for both tenants.
    for tenant_id in (mine, theirs):
        ingest_events(redis_client, tenant_id, [(secrets.token_hex(8), person, time.time() - 3600, "view", None)])
    theirs_before = _held(redis_client, theirs, users)
    consent_before = subjects.export_user(redis_client, mine, person)["consent"]
    retention.set_policy(redis_client, mine, POLICY)
    now = time.time()

    first = retention.sweep(redis_client, mine, now=now)

    # Events go by their own time (the history) or by arrival (the stream, which arrived now).
    assert first.removed == {"events_in_stream": 0, "history_events": 12, "histories_emptied": 3,
                             "receipts": 0, "dead_letters": 0, "inbox_entries": 0}
    held = subjects.export_user(redis_client, mine, person)
    assert [e["event_type"] for e in held["events"]] == ["view"] and len(held["events_stream"]) == 4
    assert all(not redis_client.exists(keys.user_history(mine, u)) for u in others)
    # Settled receipts now expire within a day of their enqueue; the queued push's is untouched.
    ttls = _settled_ttls(redis_client, mine, users)
    assert all(0 < ttl <= DAY + 1 for ttl in ttls), ttls  # EXPIREAT takes whole seconds, rounded up
    assert redis_client.ttl(keys.push_status(mine, f"{person}-q")) > 6 * DAY

    second = retention.sweep(redis_client, mine, now=now + 2 * DAY)

    assert second.removed == {"events_in_stream": 0, "history_events": 0, "histories_emptied": 0,
                              "receipts": 8, "dead_letters": 4, "inbox_entries": 4}
    held = subjects.export_user(redis_client, mine, person)
    assert held["inbox"] == [] and held["dead_letters"] == [] and set(held["receipts"]) == {f"{person}-q"}
    assert [q["push_id"] for q in held["queued"]] == [f"{person}-q"]
    assert not any(redis_client.exists(keys.inbox_stream(mine, u)) for u in users)

    third = retention.sweep(redis_client, mine, now=now + 31 * DAY)

    assert third.removed["events_in_stream"] == 13 and third.removed["history_events"] == 1
    assert redis_client.xlen(keys.events_stream(mine)) == 0
    # The consent ledger is the proof of consent: never swept.
    assert subjects.export_user(redis_client, mine, person)["consent"] == consent_before
    assert retention.last_sweep(redis_client, mine) == third.as_json()
    assert compliance_report(redis_client, mine, inbox_max_len=1000)["retention"]["policy_days"] == {
        "events_days": 30, "receipts_days": 1, "inbox_days": 1}
    # Another tenant with the same users and data, and no policy, keeps all of it.
    assert _held(redis_client, theirs, users) == theirs_before
    assert retention.sweep(redis_client, theirs, now=now + 31 * DAY).removed == {}
    assert _held(redis_client, theirs, users) == theirs_before


def test_a_history_sweep_keeps_what_arrived_meanwhile_and_leaves_a_history_changed_otherwise(
    redis_client: redis.Redis,
):
    key = keys.user_history("sweep-race", "u1")
    old, new, newer = (pack_event(t, "view", None) for t in (1e9, 2e9, 2.1e9))
    redis_client.set(key, old + new)
    read = redis_client.execute_command("GET", key, NEVER_DECODE=[])
    sha = hashlib.sha1(read).hexdigest()
    script = redis_client.register_script(retention._HISTORY)
    redis_client.append(key, newer)  # an event arrives between the read and the write

    assert script(keys=[key], args=[len(read), sha, new]) == 0
    assert redis_client.execute_command("GET", key, NEVER_DECODE=[]) == new + newer

    # Written since the read (an erasure, a refresh's trim): nothing changes, the next sweep retries.
    assert script(keys=[key], args=[len(read), sha, b""]) == -1
    assert redis_client.execute_command("GET", key, NEVER_DECODE=[]) == new + newer
    redis_client.delete(key)


def test_stream_trims_are_exact_however_many_entries_are_old(redis_client: redis.Redis, new_tenant_id):
    tenant_id = new_tenant_id("ret-exact")
    tenants.create_tenant(redis_client, tenant_id)
    stream = keys.events_stream(tenant_id)
    # Old entries (ids of 1970) fill whole and part nodes of the stream; new ones share the last.
    pipe = redis_client.pipeline(transaction=False)
    for i in range(1, 15_251):
        pipe.xadd(stream, {"user_id": "u0"}, id=f"{i}-0")
    for _ in range(50):
        pipe.xadd(stream, {"user_id": "u1"})
    pipe.execute()
    retention.set_policy(redis_client, tenant_id, retention.RetentionPolicy(events_days=1))

    assert retention.sweep(redis_client, tenant_id).removed["events_in_stream"] == 15_250
    assert redis_client.xlen(stream) == 50
    assert {f["user_id"] for _, f in redis_client.xrange(stream)} == {"u1"}


def test_bad_retention_input_is_refused_by_field(redis_client: redis.Redis, new_tenant_id):
    tenant_id = new_tenant_id("ret")
    tenants.create_tenant(redis_client, tenant_id)
    for bad, field in (({"events_days": 0}, "events_days"), ({"inbox_days": -3}, "inbox_days"),
                       ({"receipts_days": retention.MAX_DAYS + 1}, "receipts_days"),
                       ({"events_days": 1.5}, "events_days"), ({"events_days": True}, "events_days"),
                       ({"ages": 3}, "retention"), (["events_days"], "retention")):
        with pytest.raises(InvalidInputError) as refused:
            retention.RetentionPolicy.from_json(bad)
        assert refused.value.field == field
    # Unknown tenants: refused before anything is written (the CLI test covers a bad change).
    with pytest.raises(UnknownTenantError):
        retention.set_policy(redis_client, "no-such-tenant", POLICY)
    with pytest.raises(UnknownTenantError):
        retention.sweep(redis_client, "no-such-tenant")
    assert not redis_client.exists(keys.retention("no-such-tenant"))
