"""The delivery tier against a real Valkey: outbox, workers, inboxes, receipts."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import quote

import pytest
import redis

from pipeline import keys
from pipeline.delivery import GROUP, DeliveryWorker
from pipeline.errors import InvalidInputError
from pipeline.outbox import (
    MAX_PAYLOAD_BYTES,
    Push,
    enqueue,
    inbox_frame,
    make_push_id,
    message,
)
from pipeline.receipts import (
    DEFAULT_RETENTION_SECONDS,
    current_statuses,
    mark,
    mark_many,
    status_counts,
    status_trail,
    status_trails,
)
from pipeline.redis_server import EmbeddedRedis, connect


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("valkey")) as server:
        yield server.url


@pytest.fixture
def r(redis_url):
    client = connect(redis_url)
    client.flushdb()
    yield client
    client.close()


def pushes(tenant_id: str, n: int, *, users: int = 1, prefix: str = "p", **kw) -> list[Push]:
    return [
        Push(tenant_id=tenant_id, push_id=f"{prefix}{i}", user_id=f"u{i % users}",
             title=f"t{i}", body=f"b{i}", **kw)
        for i in range(n)
    ]


def drain(worker: DeliveryWorker) -> int:
    total = 0
    while handled := worker.deliver_once():
        total += handled
    return total


def inbox_push_ids(r: redis.Redis, tenant_id: str, user_id: str) -> list[str]:
    return [fields["push_id"] for _, fields in r.xrange(keys.inbox_stream(tenant_id, user_id))]


def pending(r: redis.Redis, tenant_id: str, lane: str = "marketing") -> int:
    return int(r.xpending(keys.outbox_stream(tenant_id, lane), GROUP)["pending"])


def snapshot(r: redis.Redis, tenant_id: str) -> dict[str, bytes]:
    raw = redis.Redis.from_url(_url(r))  # DUMP payloads are bytes, so no decoding here
    dumps = {k.decode(): raw.dump(k) for k in raw.scan_iter(match=keys.tenant_pattern(tenant_id))}
    raw.close()
    return dumps


def _url(r: redis.Redis) -> str:
    """The URL that reaches r's server as r's user (the embedded server requires a login)."""
    kw = r.connection_pool.connection_kwargs
    auth = f"{quote(kw['username'], safe='')}:{quote(kw['password'], safe='')}@"
    return f"redis://{auth}{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def write_legacy_record(r: redis.Redis, tenant_id: str, push_id: str, user_id: str,
                        trail: list[tuple[str, float, str]], *, ttl_seconds: int,
                        **fields: str) -> None:
    """A status record as versions before 0.2 wrote it: a hash with a TTL, a field per status."""
    record: dict[str, str | int] = {"user_id": user_id, "n": len(trail), "status": trail[-1][0],
                                    **fields}
    # Newest status first, so only the sequence numbers give the order.
    for seq, (status, at, extra) in reversed(list(enumerate(trail, start=1))):
        record[f"trail:{status}"] = f"{seq}|{at!r}|{extra}"
    r.delete(keys.push_status(tenant_id, push_id))
    r.hset(keys.push_status(tenant_id, push_id), mapping=record)
    r.expire(keys.push_status(tenant_id, push_id), ttl_seconds)


def legacy_outbox_fields(push_id: str, user_id: str, *, channel: str = "inbox",
                         campaign_id: str = "", title: str = "", body: str = "", data: str = "{}",
                         enqueued_at: float = 0.0) -> dict[str, str]:
    """An outbox entry as versions before 0.2 wrote it: one field per attribute."""
    return {"push_id": push_id, "user_id": user_id, "channel": channel,
            "campaign_id": campaign_id, "title": title, "body": body, "data": data,
            "enqueued_at": repr(enqueued_at)}


def test_make_push_id_is_deterministic_and_separates_parts():
    assert make_push_id("c1", "u1") == make_push_id("c1", "u1")
    assert len(make_push_id("c1", "u1")) == 24
    assert make_push_id("c1", "u1") != make_push_id("c1u", "1")


def test_enqueue_twice_adds_one_outbox_entry_and_reports_the_duplicate(r):
    push = Push(tenant_id="a", push_id="p1", user_id="u1", title="hi")
    first = enqueue(r, [push])
    second = enqueue(r, [push])
    assert (first.accepted, first.duplicates) == (["p1"], [])
    assert (second.accepted, second.duplicates) == ([], ["p1"])
    [(_, fields)] = r.xrange(keys.outbox_stream("a", "marketing"))
    assert list(fields) == ["push_id", "user_id", "channel", "m"]  # as the read script expects
    assert json.loads(fields["m"]) == {"title": "hi", "body": "", "data": {}, "campaign_id": "",
                                       "enqueued_at": pytest.approx(time.time(), abs=60)}
    assert [e["status"] for e in status_trail(r, "a", "p1")] == ["queued"]
    assert status_counts(r, "a")["queued"] == 1


def test_an_enqueue_whose_outbox_write_fails_leaves_no_guard_so_its_retry_is_accepted(r):
    outbox = keys.outbox_stream("a", "marketing")
    r.set(outbox, "not a stream")  # a key some bug clobbered

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        enqueue(r, pushes("a", 1))

    assert status_trail(r, "a", "p0") is None  # not remembered as queued: it was not
    r.delete(outbox)
    result = enqueue(r, pushes("a", 1))
    assert (result.accepted, result.duplicates) == (["p0"], [])
    assert r.xlen(outbox) == 1


def test_a_legacy_hash_without_a_trail_still_guards_its_id(r):
    status_key = keys.push_status("a", "p0")
    r.hset(status_key, mapping={"tries": "2", "last_error": "HTTP 503"})  # as 0.1's _FAIL left it
    r.expire(status_key, 300)

    assert mark(r, "a", "p0", "acked") is False  # unknown, and left as it is
    assert enqueue(r, pushes("a", 1)).duplicates == ["p0"]
    assert r.type(status_key) == "hash" and 0 < r.ttl(status_key) <= 300


def test_entries_with_ids_of_any_size_are_delivered_once_and_dropped(r):
    worker = DeliveryWorker(r, ["a"], consumer="w1")
    assert worker.deliver_once() == 0  # the group exists before the entries arrive
    outbox = keys.outbox_stream("a", "marketing")
    big = 2**53 + 5  # past a double's integers, where Lua's arithmetic would round it
    for i, entry_id in enumerate([f"5-{10**14 - 1}", f"5-{big}", f"6-{2**64 - 1}"]):
        push = Push(tenant_id="a", push_id=f"p{i}", user_id="u0", title=f"t{i}")
        r.set(keys.push_status("a", f"p{i}"), "queued|1700000000.0|", ex=300)
        r.xadd(outbox, {"push_id": push.push_id, "user_id": "u0", "channel": "inbox",
                        "m": message(push, 1700000000.0)}, id=entry_id)

    assert drain(worker) == 3

    assert inbox_push_ids(r, "a", "u0") == ["p0", "p1", "p2"]
    assert r.xlen(outbox) == 0 and pending(r, "a") == 0
    assert status_counts(r, "a")["delivered"] == 3


def test_a_damaged_trail_line_is_left_out_and_extras_cannot_rename_a_status(r):
    r.set(keys.push_status("a", "p0"), "queued|1700000000.0|\ngarbage\n"
          'delivered|1700000001.0|{"status":"dead","at":0,"inbox_id":"1-0"}\n'
          "opened|1700000002.0|[1]")

    trail = status_trail(r, "a", "p0")

    assert trail == [{"status": "queued", "at": 1700000000.0},
                     {"status": "delivered", "at": 1700000001.0, "inbox_id": "1-0"}]
    assert current_statuses(r, "a", ["p0"]) == ["delivered"]


def test_a_repeated_id_within_one_call_is_a_duplicate(r):
    result = enqueue(r, pushes("a", 3) + pushes("a", 1), batch_size=2)
    assert result.accepted == ["p0", "p1", "p2"]
    assert result.duplicates == ["p0"]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"lane": "urgent"}, "lane"),
        ({"tenant_id": "Bad:Tenant"}, "tenant_id"),
        ({"channel": "carrier-pigeon"}, "channel"),
        ({"body": "x" * MAX_PAYLOAD_BYTES}, "body"),
        ({"data": {"k": "v" * MAX_PAYLOAD_BYTES}}, "body"),
        ({"user_id": ""}, "user_id"),
        ({"push_id": "a{b}"}, "push_id"),
    ],
)
def test_invalid_input_raises_naming_the_field_and_enqueues_nothing(r, bad, field):
    good = Push(tenant_id="a", push_id="ok", user_id="u1")
    wrong = Push(**{"tenant_id": "a", "push_id": "p", "user_id": "u1", **bad})
    with pytest.raises(InvalidInputError) as info:
        enqueue(r, [good, wrong])
    assert info.value.field == field
    assert r.dbsize() == 0


def test_worker_delivers_every_push_once_into_its_users_inbox_and_announces_it(r):
    pubsub = r.pubsub()
    pubsub.subscribe(keys.inbox_channel("a"))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    enqueue(r, pushes("a", 30, users=3, data={"deep_link": "app://x"}, campaign_id="c1"))

    assert drain(DeliveryWorker(r, ["a"], consumer="w1")) == 30

    for u in range(3):
        assert inbox_push_ids(r, "a", f"u{u}") == [f"p{i}" for i in range(u, 30, 3)]
    entry_id, fields = r.xrange(keys.inbox_stream("a", "u0"), count=1)[0]
    assert set(fields) == {"push_id", "m"}
    frame = json.loads(inbox_frame(entry_id, fields))
    assert frame["title"] == "t0" and frame["data"] == {"deep_link": "app://x"}
    assert frame["campaign_id"] == "c1" and frame["enqueued_at"] > 0
    trail = status_trail(r, "a", "p4")
    assert [e["status"] for e in trail] == ["queued", "delivered"]
    assert trail[0]["at"] <= trail[1]["at"]
    assert trail[1]["inbox_id"] == r.xrange(keys.inbox_stream("a", "u1"))[1][0]
    counts = status_counts(r, "a")
    assert (counts["queued"], counts["delivered"], counts["dead"]) == (30, 30, 0)
    assert r.xlen(keys.outbox_stream("a", "marketing")) == 0
    assert pending(r, "a") == 0
    announced = []
    while (message := pubsub.get_message(timeout=1)) is not None:
        announced += message["data"].split("\n")
    assert sorted(announced) == ["u0", "u1", "u2"]  # each user once per delivery chunk
    pubsub.close()


def test_the_inbox_frame_is_the_push_as_the_device_gets_it_whatever_its_text(r):
    title, body = 'He said "hi" \u00e9\U0001F600', "back\\slash \u2028 and {braces}"
    data = {"k": "a\nb", "quote": '"', "emoji": "\U0001F680"}
    enqueue(r, [Push(tenant_id="a", push_id="p0", user_id="u0", title=title, body=body,
                     data=data, campaign_id="c1", enqueued_at=1700000000.25)])

    assert drain(DeliveryWorker(r, ["a"], consumer="w1")) == 1

    [(entry_id, fields)] = r.xrange(keys.inbox_stream("a", "u0"))
    assert json.loads(inbox_frame(entry_id, fields)) == {
        "id": entry_id, "push_id": "p0", "title": title, "body": body, "data": data,
        "campaign_id": "c1", "enqueued_at": 1700000000.25,
    }


def test_an_inbox_entry_written_before_0_2_is_framed_like_a_new_one():
    fields = {"push_id": "p0", "campaign_id": "c1", "title": 'He said "hi" \u00e9',
              "body": "b", "data": '{"k":"a\\nb"}', "enqueued_at": "1700000000.25"}

    assert json.loads(inbox_frame("5-0", fields)) == {
        "id": "5-0", "push_id": "p0", "title": 'He said "hi" \u00e9', "body": "b",
        "data": {"k": "a\nb"}, "campaign_id": "c1", "enqueued_at": 1700000000.25,
    }


def _read_as_dead_worker(r: redis.Redis, tenant_id: str) -> int:
    stream = keys.outbox_stream(tenant_id, "marketing")
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    [[_, entries]] = r.xreadgroup(GROUP, "dead", {stream: ">"}, count=100)
    return len(entries)


def test_entries_of_a_dead_worker_are_claimed_and_delivered_exactly_once(r):
    enqueue(r, pushes("a", 10, users=2))
    assert _read_as_dead_worker(r, "a") == 10
    live = DeliveryWorker(r, ["a"], consumer="live", claim_idle_ms=0)

    assert drain(live) == 10

    assert sorted(inbox_push_ids(r, "a", "u0") + inbox_push_ids(r, "a", "u1")) == sorted(
        f"p{i}" for i in range(10)
    )
    assert pending(r, "a") == 0
    assert status_counts(r, "a")["delivered"] == 10


def test_a_claimed_entry_already_in_the_inbox_is_only_acked(r):
    enqueue(r, pushes("a", 10, users=2))
    dead = DeliveryWorker(r, ["a"], consumer="dead")
    dead._is_acking = False  # it wrote the inboxes, then died before XACK
    assert dead.deliver_once() == 10
    assert pending(r, "a") == 10
    live = DeliveryWorker(r, ["a"], consumer="live", claim_idle_ms=0)

    assert drain(live) == 10

    assert inbox_push_ids(r, "a", "u0") == [f"p{i}" for i in range(0, 10, 2)]
    assert inbox_push_ids(r, "a", "u1") == [f"p{i}" for i in range(1, 10, 2)]
    assert pending(r, "a") == 0
    assert [e["status"] for e in status_trail(r, "a", "p3")] == ["queued", "delivered"]
    assert status_counts(r, "a")["delivered"] == 10


@pytest.mark.parametrize("path", ["read script", "worker"])
def test_a_push_with_a_legacy_hash_record_is_delivered_once_and_its_record_rewritten(r, path):
    enqueue(r, pushes("a", 1))
    queued_at = time.time() - 60
    write_legacy_record(r, "a", "p0", "u0", [("queued", queued_at, "")], ttl_seconds=300)
    assert enqueue(r, pushes("a", 1)).duplicates == ["p0"]  # the hash still guards the id
    if path == "worker":
        assert _read_as_dead_worker(r, "a") == 1  # so the worker's own script delivers it
    worker = DeliveryWorker(r, ["a"], consumer="live", claim_idle_ms=0, retention_seconds=5000)

    assert drain(worker) == 1

    assert inbox_push_ids(r, "a", "u0") == ["p0"]
    trail = status_trail(r, "a", "p0")
    assert [e["status"] for e in trail] == ["queued", "delivered"]
    assert trail[0]["at"] == queued_at
    assert trail[1]["inbox_id"] == r.xrange(keys.inbox_stream("a", "u0"))[0][0]
    assert r.type(keys.push_status("a", "p0")) == "string"
    assert 0 < r.ttl(keys.push_status("a", "p0")) <= 300  # kept: neither dropped nor reset
    assert status_counts(r, "a")["delivered"] == 1
    assert r.xlen(keys.outbox_stream("a", "marketing")) == 0 and pending(r, "a") == 0


@pytest.mark.parametrize("path", ["read script", "worker"])
def test_an_entry_whose_legacy_record_says_delivered_is_only_acked(r, path):
    enqueue(r, pushes("a", 1))
    at = time.time() - 60
    write_legacy_record(r, "a", "p0", "u0",
                        [("queued", at, ""), ("delivered", at + 1, '{"inbox_id":"1-1"}')],
                        ttl_seconds=300, inbox_id="1-1")
    if path == "worker":
        assert _read_as_dead_worker(r, "a") == 1
    worker = DeliveryWorker(r, ["a"], consumer="live", claim_idle_ms=0)

    assert drain(worker) == 1

    assert inbox_push_ids(r, "a", "u0") == []
    assert [e["status"] for e in status_trail(r, "a", "p0")] == ["queued", "delivered"]
    assert status_counts(r, "a")["delivered"] == 0
    assert r.xlen(keys.outbox_stream("a", "marketing")) == 0 and pending(r, "a") == 0


@pytest.mark.parametrize("record", ["legacy hash", "string"])
def test_a_legacy_outbox_entry_is_delivered_once_with_its_content(r, record):
    worker = DeliveryWorker(r, ["a"], consumer="w1")
    assert worker.deliver_once() == 0  # the group exists before the old entry arrives
    enqueued_at = time.time() - 60
    if record == "legacy hash":
        write_legacy_record(r, "a", "old-1", "u0", [("queued", enqueued_at, "")],
                            ttl_seconds=300)
    else:
        r.set(keys.push_status("a", "old-1"), f"queued|{enqueued_at!r}|", ex=300)
    r.xadd(keys.outbox_stream("a", "marketing"), legacy_outbox_fields(
        "old-1", "u0", campaign_id="c9", title='Sale "now" \u00e9', body="50% off",
        data='{"deep_link":"app://sale"}', enqueued_at=enqueued_at))

    assert drain(worker) == 1

    [(entry_id, fields)] = r.xrange(keys.inbox_stream("a", "u0"))
    assert json.loads(inbox_frame(entry_id, fields)) == {
        "id": entry_id, "push_id": "old-1", "title": 'Sale "now" \u00e9', "body": "50% off",
        "data": {"deep_link": "app://sale"}, "campaign_id": "c9", "enqueued_at": enqueued_at,
    }
    assert [e["status"] for e in status_trail(r, "a", "old-1")] == ["queued", "delivered"]
    assert status_counts(r, "a")["delivered"] == 1
    assert r.xlen(keys.outbox_stream("a", "marketing")) == 0 and pending(r, "a") == 0


def test_a_tenants_worker_never_writes_another_tenants_keys(r):
    enqueue(r, pushes("a", 20, users=2) + pushes("b", 20, users=2))
    b_before = snapshot(r, "b")
    all_before = set(r.keys("*"))

    assert drain(DeliveryWorker(r, ["a"], consumer="w1", claim_idle_ms=0)) == 20

    assert snapshot(r, "b") == b_before
    assert all(k.startswith(keys.tenant_prefix("a")) for k in set(r.keys("*")) - all_before)
    assert status_trail(r, "a", "p1") is not None
    assert status_trail(r, "b", "p1")[-1]["status"] == "queued"
    enqueue(r, [Push(tenant_id="a", push_id="only-a", user_id="u0")])
    assert status_trail(r, "b", "only-a") is None


def test_one_pass_serves_a_small_tenant_behind_a_big_backlog(r):
    enqueue(r, pushes("big", 5000, users=50) + pushes("small", 10, users=2), batch_size=1000)
    worker = DeliveryWorker(r, ["big", "small"], consumer="w1", batch=500)

    assert worker.deliver_once() == 510

    assert len(inbox_push_ids(r, "small", "u0") + inbox_push_ids(r, "small", "u1")) == 10
    assert status_counts(r, "big")["delivered"] == 500


def test_transactional_lane_is_delivered_before_marketing(r):
    enqueue(r, pushes("a", 5, prefix="m") + pushes("a", 5, prefix="t", lane="transactional"))

    assert DeliveryWorker(r, ["a"], consumer="w1").deliver_once() == 10

    assert inbox_push_ids(r, "a", "u0") == [f"t{i}" for i in range(5)] + [f"m{i}" for i in range(5)]


def test_a_push_with_no_sender_is_dead_lettered_after_max_tries_with_the_reason(r):
    enqueue(r, pushes("a", 1, channel="webhook"))
    worker = DeliveryWorker(r, ["a"], consumer="w1", claim_idle_ms=0, max_tries=3,
                            retry_base_ms=0)

    assert [worker.deliver_once() for _ in range(4)] == [1, 1, 1, 0]

    [(_, letter)] = r.xrange(keys.dead_letter_stream("a"))
    assert letter["push_id"] == "p0" and letter["tries"] == "3"
    assert "webhook" in letter["reason"]
    trail = status_trail(r, "a", "p0")
    assert [e["status"] for e in trail] == ["queued", "dead"]
    assert trail[-1]["tries"] == 3 and "webhook" in trail[-1]["reason"]
    assert status_counts(r, "a")["dead"] == 1
    assert pending(r, "a") == 0


def test_a_failed_push_waits_out_its_backoff_before_the_next_try(r):
    enqueue(r, pushes("a", 1, channel="webhook"))
    worker = DeliveryWorker(r, ["a"], consumer="w1", claim_idle_ms=0, retry_base_ms=60_000)

    assert worker.deliver_once() == 1
    assert worker.deliver_once() == 0

    assert r.hget(keys.push_retry("a", "p0"), "tries") == "1"
    assert pending(r, "a") == 1


def test_a_tenants_retry_state_is_not_another_tenants_for_the_same_push_id(r):
    enqueue(r, pushes("a", 1, channel="webhook") + pushes("b", 1, channel="webhook"))

    for tenant_id in ("b", "a"):  # b fails first and waits out a backoff of 30 s or more
        worker = DeliveryWorker(r, [tenant_id], consumer="w1", claim_idle_ms=0,
                                retry_base_ms=60_000, channels={})
        assert worker.deliver_once() == 1

    assert r.hget(keys.push_retry("a", "p0"), "tries") == "1"
    assert r.hget(keys.push_retry("b", "p0"), "tries") == "1"
    assert keys.push_retry("a", "p0").startswith(keys.tenant_prefix("a"))
    assert current_statuses(r, "a", ["p0"]) == current_statuses(r, "b", ["p0"]) == ["queued"]


def test_a_legacy_records_retry_state_is_carried_over_not_restarted(r):
    enqueue(r, pushes("a", 1, channel="webhook"))
    write_legacy_record(r, "a", "p0", "u0", [("queued", 1700000000.0, "")], ttl_seconds=300,
                        tries="4", last_error="HTTP 503")
    worker = DeliveryWorker(r, ["a"], consumer="w1", claim_idle_ms=0, max_tries=5,
                            retry_base_ms=0, channels={})

    assert worker.deliver_once() == 1  # the fifth try: dead now, not a fresh budget of five

    [(_, letter)] = r.xrange(keys.dead_letter_stream("a"))
    assert letter["tries"] == "5"
    assert [e["status"] for e in status_trail(r, "a", "p0")] == ["queued", "dead"]
    assert r.type(keys.push_status("a", "p0")) == "string"


def test_a_webhook_push_whose_legacy_hash_has_no_trail_still_dies_after_max_tries(r):
    enqueue(r, pushes("a", 1, channel="webhook"))
    status_key = keys.push_status("a", "p0")
    r.delete(status_key)  # as 0.1's _FAIL left a record that had expired: retry state only
    r.hset(status_key, mapping={"tries": "2", "retry_at": "0", "last_error": "HTTP 503"})
    r.expire(status_key, 300)
    clock = [time.time()]
    worker = DeliveryWorker(r, ["a"], consumer="w1", claim_idle_ms=0, max_tries=5,
                            retry_base_ms=1, channels={}, clock=lambda: clock[0])

    for _ in range(10):
        clock[0] += 10
        worker.deliver_once()

    [(_, letter)] = r.xrange(keys.dead_letter_stream("a"))
    assert letter["tries"] == "5"  # 2 from before the upgrade, then 3 more
    assert [e["status"] for e in status_trail(r, "a", "p0")] == ["dead"]
    assert 0 < r.ttl(status_key) and pending(r, "a") == 0


def test_a_malformed_outbox_entry_is_dead_lettered_at_once(r):
    stream = keys.outbox_stream("a", "marketing")
    r.xadd(stream, {"user_id": "u1", "channel": "inbox"})

    assert DeliveryWorker(r, ["a"], consumer="w1").deliver_once() == 1

    [(_, letter)] = r.xrange(keys.dead_letter_stream("a"))
    assert "malformed" in letter["reason"] and "push_id" in letter["reason"]
    assert pending(r, "a") == 0


def test_one_undeliverable_push_does_not_hold_back_the_others(r):
    enqueue(r, pushes("a", 10, users=5))
    r.set(keys.inbox_stream("a", "u3"), "not a stream")  # a key some bug clobbered

    assert DeliveryWorker(r, ["a"], consumer="w1").deliver_once() == 8

    assert inbox_push_ids(r, "a", "u0") == ["p0", "p5"]
    assert pending(r, "a") == 2
    assert status_trail(r, "a", "p3")[-1]["status"] == "queued"


def test_an_entry_read_again_for_a_delivered_push_is_dropped_not_delivered_twice(r):
    # As after a group recreated at 0 or an id enqueued again while its first entry waited:
    # a second outbox entry for a push whose record says it was delivered.
    enqueue(r, pushes("a", 2))
    stream = keys.outbox_stream("a", "marketing")
    entry = r.xrange(stream, count=1)[0][1]
    assert drain(DeliveryWorker(r, ["a"], consumer="w1")) == 2
    r.xadd(stream, entry)

    assert drain(DeliveryWorker(r, ["a"], consumer="w1")) == 1

    assert inbox_push_ids(r, "a", "u0") == ["p0", "p1"]
    assert r.xlen(stream) == 0 and pending(r, "a") == 0
    assert [t["status"] for t in status_trail(r, "a", "p0")] == ["queued", "delivered"]


def test_a_damaged_status_record_strands_nothing_and_holds_back_no_other_push(r):
    enqueue(r, pushes("a", 6, users=3))
    r.delete(keys.push_status("a", "p4"))
    r.rpush(keys.push_status("a", "p4"), "not a status record")  # a key some bug clobbered

    assert DeliveryWorker(r, ["a"], consumer="w1").deliver_once() == 5

    assert inbox_push_ids(r, "a", "u1") == ["p1"]  # p4, the same user's, is not delivered
    assert pending(r, "a") == 1  # but it is not lost: pending, for a claim after the fix
    r.delete(keys.push_status("a", "p4"))
    worker = DeliveryWorker(r, ["a"], consumer="w2", claim_idle_ms=0)
    assert drain(worker) == 1
    assert inbox_push_ids(r, "a", "u1") == ["p1", "p4"]
    assert r.xlen(keys.outbox_stream("a", "marketing")) == 0


def test_inbox_is_bounded_by_inbox_max_len(r):
    enqueue(r, pushes("a", 1000), batch_size=1000)

    assert drain(DeliveryWorker(r, ["a"], consumer="w1", inbox_max_len=100)) == 1000

    inbox = inbox_push_ids(r, "a", "u0")
    # MAXLEN ~ trims whole stream nodes (100 entries each by default), so a little slack.
    assert 100 <= len(inbox) < 200
    assert inbox[-1] == "p999"


def test_mark_appends_each_status_once_and_counts_it(r):
    enqueue(r, pushes("a", 1))
    drain(DeliveryWorker(r, ["a"], consumer="w1"))

    assert mark(r, "a", "p0", "acked", device="d1") is True
    assert mark(r, "a", "p0", "acked", device="d2") is False

    trail = status_trail(r, "a", "p0")
    assert [e["status"] for e in trail] == ["queued", "delivered", "acked"]
    assert trail[-1]["device"] == "d1"
    assert status_counts(r, "a")["acked"] == 1
    assert mark(r, "a", "nope", "acked") is False
    assert status_trail(r, "a", "nope") is None
    with pytest.raises(InvalidInputError):
        mark(r, "a", "p0", "teleported")


def test_a_legacy_record_is_read_as_it_is_and_a_mark_rewrites_it_in_order(r):
    key = keys.push_status("a", "p0")
    write_legacy_record(r, "a", "p0", "u0",
                        [("queued", 100.0, ""), ("delivered", 101.0, '{"inbox_id":"5-0"}')],
                        ttl_seconds=300, inbox_id="5-0")
    trail = [{"status": "queued", "at": 100.0},
             {"status": "delivered", "at": 101.0, "inbox_id": "5-0"}]

    assert status_trail(r, "a", "p0") == trail
    assert status_trails(r, "a", ["nope", "p0"]) == [None, trail]
    assert current_statuses(r, "a", ["p0", "nope"]) == ["delivered", None]
    assert r.type(key) == "hash"  # reading changes nothing

    assert mark(r, "a", "p0", "acked", at=102.0, retention_seconds=100, device="d1") is True

    assert r.type(key) == "string"
    assert status_trail(r, "a", "p0") == [*trail, {"status": "acked", "at": 102.0, "device": "d1"}]
    assert 100 < r.ttl(key) <= 300
    assert mark(r, "a", "p0", "delivered") is False
    assert mark(r, "a", "p0", "acked") is False
    assert (status_counts(r, "a")["acked"], status_counts(r, "a")["delivered"]) == (1, 0)


def test_mark_many_rewrites_a_legacy_record_like_mark(r):
    write_legacy_record(r, "a", "p0", "u0",
                        [("queued", 100.0, ""), ("delivered", 101.0, '{"inbox_id":"5-0"}')],
                        ttl_seconds=300, inbox_id="5-0")

    assert mark_many(r, "a", ["p0", "nope"], "acked", at=102.0) == 1

    assert [e["status"] for e in status_trail(r, "a", "p0")] == ["queued", "delivered", "acked"]
    assert r.type(keys.push_status("a", "p0")) == "string"
    assert mark_many(r, "a", ["p0"], "delivered") == 0


def test_status_records_expire_after_the_retention_period(r):
    enqueue(r, pushes("a", 1), retention_seconds=100)
    assert 0 < r.ttl(keys.push_status("a", "p0")) <= 100

    drain(DeliveryWorker(r, ["a"], consumer="w1", retention_seconds=5000))
    assert 0 < r.ttl(keys.push_status("a", "p0")) <= 100  # retention counts from enqueue

    mark(r, "a", "p0", "acked", retention_seconds=5000)
    assert 100 < r.ttl(keys.push_status("a", "p0")) <= 5000  # a mark only ever lengthens it


def test_a_push_whose_record_expired_before_delivery_gets_a_new_one(r):
    enqueue(r, pushes("a", 1))
    r.delete(keys.push_status("a", "p0"))

    drain(DeliveryWorker(r, ["a"], consumer="w1", retention_seconds=5000))

    assert [e["status"] for e in status_trail(r, "a", "p0")] == ["delivered"]
    assert 0 < r.ttl(keys.push_status("a", "p0")) <= 5000
    assert inbox_push_ids(r, "a", "u0") == ["p0"]


def test_a_push_whose_record_expired_before_it_died_gets_a_record_that_expires(r):
    enqueue(r, pushes("a", 1, channel="webhook"))
    r.delete(keys.push_status("a", "p0"))
    worker = DeliveryWorker(r, ["a"], consumer="w1", max_tries=1, retention_seconds=5000,
                            channels={})

    assert worker.deliver_once() == 1

    assert [e["status"] for e in status_trail(r, "a", "p0")] == ["dead"]
    assert 0 < r.ttl(keys.push_status("a", "p0")) <= 5000


def test_scripts_are_loaded_again_after_a_script_flush(r):
    enqueue(r, pushes("a", 2))
    r.script_flush()

    assert enqueue(r, pushes("a", 3)).accepted == ["p2"]
    r.script_flush()
    assert drain(DeliveryWorker(r, ["a"], consumer="w1")) == 3


def test_run_delivers_until_stopped(r):
    pubsub = r.pubsub()
    pubsub.subscribe(keys.inbox_channel("a"))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    stop = threading.Event()
    worker = DeliveryWorker(connect(_url(r)), lambda: ["a"], consumer="w1")
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"block_ms": 50})
    thread.start()
    try:
        enqueue(r, pushes("a", 1, lane="transactional"))
        message = pubsub.get_message(timeout=10)
        assert message is not None and message["data"] == "u0"
    finally:
        stop.set()
        thread.join(timeout=10)
        pubsub.close()
    assert not thread.is_alive()
    assert inbox_push_ids(r, "a", "u0") == ["p0"]


def test_a_quarantined_user_gets_no_marketing_push_but_still_gets_transactional(r):
    from pipeline.guard import quarantine_users

    quarantine_users(r, "a", ["u0"], reason="bot-like behaviour")
    enqueue(r, [
        Push(tenant_id="a", push_id="m0", user_id="u0", lane="marketing", body="sale"),
        Push(tenant_id="a", push_id="m1", user_id="u1", lane="marketing", body="sale"),
        Push(tenant_id="a", push_id="t0", user_id="u0", lane="transactional", body="code 1234"),
    ])
    drain(DeliveryWorker(r, ["a"], consumer="w"))
    assert inbox_push_ids(r, "a", "u0") == ["t0"]
    assert inbox_push_ids(r, "a", "u1") == ["m1"]
    trail = status_trail(r, "a", "m0")
    assert trail[-1]["status"] == "suppressed" and trail[-1]["rule"] == "quarantine"


def test_a_retried_transactional_push_writes_so_a_replica_wait_covers_the_original(r):
    push = Push(tenant_id="a", push_id="login-1", user_id="u1", lane="transactional", body="1234")
    enqueue(r, [push], is_transactional_fsynced=False)
    offset = int(r.info("replication")["master_repl_offset"])
    again = enqueue(r, [push], is_transactional_fsynced=False)
    assert again.duplicates == ["login-1"]
    assert int(r.info("replication")["master_repl_offset"]) > offset
    assert [s["status"] for s in status_trail(r, "a", "login-1")] == ["queued"]


def test_a_duplicate_transactional_enqueue_never_shortens_the_record_and_lengthens_a_shorter(r):
    push = Push(tenant_id="a", push_id="login-1", user_id="u1", lane="transactional", body="1234")
    key = keys.push_status("a", "login-1")
    enqueue(r, [push], is_transactional_fsynced=False, retention_seconds=100)
    mark(r, "a", "login-1", "sent", retention_seconds=5000)
    assert 4900 < r.ttl(key) <= 5000

    again = enqueue(r, [push], is_transactional_fsynced=False, retention_seconds=100)

    assert again.duplicates == ["login-1"]
    assert 4900 < r.ttl(key) <= 5000  # not cut to this call's 100 s
    assert enqueue(r, [push], is_transactional_fsynced=False).duplicates == ["login-1"]
    assert DEFAULT_RETENTION_SECONDS - 100 < r.ttl(key) <= DEFAULT_RETENTION_SECONDS
    assert [s["status"] for s in status_trail(r, "a", "login-1")] == ["queued", "sent"]
    assert r.xlen(keys.outbox_stream("a", "transactional")) == 1
