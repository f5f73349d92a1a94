"""Limits against a real Valkey: token buckets, backlog caps, frequency caps and quiet hours."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest

from pipeline import keys, ratelimit, tenants
from pipeline.delivery import DeliveryWorker
from pipeline.outbox import BacklogFullError, Push, enqueue
from pipeline.receipts import status_counts, status_trail
from pipeline.redis_server import connect
from pipeline.tenants import Plan


def drain(worker: DeliveryWorker) -> int:
    total = 0
    while handled := worker.deliver_once():
        total += handled
    return total


def pushes(tenant_id, n, *, user="u0", prefix="p", lane="marketing"):
    return [Push(tenant_id=tenant_id, push_id=f"{prefix}{i}", user_id=user, lane=lane)
            for i in range(n)]


def statuses(r, tenant_id, push_ids):
    return [status_trail(r, tenant_id, p)[-1] for p in push_ids]


def test_concurrent_takers_never_get_more_tokens_than_the_bucket_holds(
    redis_server, redis_client, new_tenant_id
):
    tenant_id = new_tenant_id()
    granted: list[int] = []

    def taker() -> None:
        client = connect(redis_server.url)
        for _ in range(40):
            granted.append(ratelimit.take(client, tenant_id, 1, rate=0.001, burst=100).granted)
        client.close()

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(granted) == 100  # 320 asks, a bucket of 100 that barely refills
    assert ratelimit.take(redis_client, tenant_id, 5, rate=0.001, burst=100).wait_ms > 0


def test_debt_is_paid_back_before_more_tokens_are_granted(redis_client, new_tenant_id):
    tenant_id = new_tenant_id()
    taken = ratelimit.take(redis_client, tenant_id, 30, rate=0.001, burst=10,
                           is_debt_allowed=True)
    assert taken.granted == 30
    assert ratelimit.take(redis_client, tenant_id, 1, rate=0.001, burst=10).granted == 0


@pytest.mark.slow
def test_two_workers_at_500_per_second_send_5000_in_10_seconds(redis_server, redis_client,
                                                               new_tenant_id):
    tenant_id = new_tenant_id("rate")
    tenants.create_tenant(redis_client, tenant_id, Plan(sends_per_second=500))
    enqueue(redis_client, [Push(tenant_id=tenant_id, push_id=f"p{i}", user_id=f"u{i % 100}")
                           for i in range(8000)], batch_size=1000)
    stop = threading.Event()
    workers = [DeliveryWorker(connect(redis_server.url), [tenant_id], consumer=f"w{i}")
               for i in range(2)]
    threads = [threading.Thread(target=w.run, args=(stop,), kwargs={"block_ms": 50})
               for w in workers]
    started = time.monotonic()
    for t in threads:
        t.start()
    # The window is the property under test, not a wait for work.
    stop.wait(10.0)
    sent = status_counts(redis_client, tenant_id)["delivered"]
    elapsed = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(timeout=10)

    print(f"token bucket: {sent} sent in {elapsed:.2f}s at 500/s")
    # The bucket is shared: the two workers together never exceed the plan (a bucket per
    # worker would send twice as much). Below the plan, how close they get is this machine's
    # speed (a loaded 2-core box fell 7% short), which benchmarks measure; the lower bound
    # only catches a bucket that starves them (one worker's share, 2,500 here).
    assert sent <= 500 * elapsed + 0.05 * 5000
    assert sent >= 0.8 * 500 * elapsed


def test_a_tenant_over_its_backlog_cap_is_refused_but_transactional_still_gets_in(
    redis_client, new_tenant_id
):
    tenant_id = new_tenant_id()
    tenants.create_tenant(redis_client, tenant_id, Plan(max_backlog=10))

    result = enqueue(redis_client, pushes(tenant_id, 15), raise_on_backlog_full=False)
    urgent = enqueue(redis_client, pushes(tenant_id, 3, prefix="t", lane="transactional"))

    assert (len(result.accepted), result.rejected) == (10, [f"p{i}" for i in range(10, 15)])
    assert urgent.accepted == ["t0", "t1", "t2"]
    assert status_trail(redis_client, tenant_id, "p12") is None
    # A refused push was never accepted, so sending it again later is not a duplicate.
    drain(DeliveryWorker(redis_client, [tenant_id], consumer="w1"))
    assert enqueue(redis_client, pushes(tenant_id, 15)[12:13]).accepted == ["p12"]


def test_by_default_a_full_backlog_raises_and_keeps_the_accepted_pushes(redis_client,
                                                                       new_tenant_id):
    tenant_id = new_tenant_id()
    tenants.create_tenant(redis_client, tenant_id, Plan(max_backlog=4))

    with pytest.raises(BacklogFullError) as info:
        enqueue(redis_client, pushes(tenant_id, 6))

    assert info.value.result.rejected == ["p4", "p5"]
    assert tenant_id in str(info.value) and "max_backlog" in str(info.value)
    assert redis_client.xlen(keys.outbox_stream(tenant_id, "marketing")) == 4


def _worker(r, tenant_id, at: datetime) -> DeliveryWorker:
    return DeliveryWorker(r, [tenant_id], consumer="w1", clock=lambda: at.timestamp())


def test_the_daily_cap_suppresses_marketing_with_the_rule_and_transactional_bypasses_it(
    redis_client, new_tenant_id
):
    tenant_id = new_tenant_id()
    tenants.create_tenant(redis_client, tenant_id, Plan(marketing_per_user_per_day=2))
    enqueue(redis_client, pushes(tenant_id, 5) + pushes(tenant_id, 3, prefix="t",
                                                        lane="transactional"))

    drain(_worker(redis_client, tenant_id, datetime(2025, 3, 4, 12, tzinfo=UTC)))

    marketing = statuses(redis_client, tenant_id, [f"p{i}" for i in range(5)])
    assert [s["status"] for s in marketing] == ["delivered"] * 2 + ["suppressed"] * 3
    assert {s.get("rule") for s in marketing[2:]} == {"frequency_cap_day"}
    assert [s["status"] for s in statuses(redis_client, tenant_id, ["t0", "t1", "t2"])] == [
        "delivered"] * 3
    counts = status_counts(redis_client, tenant_id)
    assert (counts["delivered"], counts["suppressed"]) == (5, 3)
    assert redis_client.xlen(keys.inbox_stream(tenant_id, "u0")) == 5


def test_the_weekly_cap_counts_across_days_of_the_users_week(redis_client, new_tenant_id):
    tenant_id = new_tenant_id()
    tenants.create_tenant(redis_client, tenant_id, Plan(marketing_per_user_per_day=2,
                                                        marketing_per_user_per_week=3))
    enqueue(redis_client, pushes(tenant_id, 2, prefix="tue"))
    drain(_worker(redis_client, tenant_id, datetime(2025, 3, 4, 12, tzinfo=UTC)))
    enqueue(redis_client, pushes(tenant_id, 2, prefix="wed"))
    drain(_worker(redis_client, tenant_id, datetime(2025, 3, 5, 12, tzinfo=UTC)))
    enqueue(redis_client, pushes(tenant_id, 1, prefix="mon"))
    drain(_worker(redis_client, tenant_id, datetime(2025, 3, 10, 12, tzinfo=UTC)))

    trail = statuses(redis_client, tenant_id, ["tue0", "tue1", "wed0", "wed1", "mon0"])
    assert [s["status"] for s in trail] == ["delivered"] * 3 + ["suppressed", "delivered"]
    assert trail[3]["rule"] == "frequency_cap_week"


def test_quiet_hours_follow_each_users_time_zone(redis_client, new_tenant_id):
    tenant_id = new_tenant_id()
    tenants.create_tenant(redis_client, tenant_id,
                          Plan(quiet_hours_start=22, quiet_hours_end=8))
    redis_client.hset(keys.user_profiles(tenant_id), mapping={
        "tokyo": json.dumps({"timezone": "Asia/Tokyo"}),
        "newyork": json.dumps({"timezone": "America/New_York"}),
    })
    enqueue(redis_client, pushes(tenant_id, 1, user="tokyo", prefix="tk")
            + pushes(tenant_id, 1, user="newyork", prefix="ny")
            + pushes(tenant_id, 1, user="tokyo", prefix="code", lane="transactional"))

    # 14:00 UTC is 23:00 in Tokyo (quiet) and 09:00 in New York (not).
    drain(_worker(redis_client, tenant_id, datetime(2025, 3, 4, 14, tzinfo=UTC)))

    tokyo, newyork, code = statuses(redis_client, tenant_id, ["tk0", "ny0", "code0"])
    assert (tokyo["status"], tokyo["rule"]) == ("suppressed", "quiet_hours")
    assert newyork["status"] == "delivered" and code["status"] == "delivered"
    assert [f["push_id"] for _, f in redis_client.xrange(keys.inbox_stream(tenant_id, "tokyo"))
            ] == ["code0"]


def test_a_pass_serves_tenants_in_proportion_to_their_weights(redis_client, new_tenant_id):
    heavy, light = new_tenant_id("heavy"), new_tenant_id("light")
    tenants.create_tenant(redis_client, heavy, Plan(sends_per_second=100_000, send_burst=100_000,
                                                    delivery_weight=3))
    tenants.create_tenant(redis_client, light, Plan(sends_per_second=100_000, send_burst=100_000))
    for tenant_id in (heavy, light):
        enqueue(redis_client, [Push(tenant_id=tenant_id, push_id=f"p{i}", user_id=f"u{i % 10}")
                               for i in range(500)], batch_size=500)
    worker = DeliveryWorker(redis_client, [heavy, light], consumer="w1", batch=50)

    assert worker.deliver_once() == 200

    assert status_counts(redis_client, heavy)["delivered"] == 150
    assert status_counts(redis_client, light)["delivered"] == 50
