"""The webhook channel against a local HTTP server standing in for the tenant's endpoint."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pipeline import keys, tenants
from pipeline.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookChannel, verify
from pipeline.delivery import DeliveryWorker
from pipeline.outbox import Push, enqueue
from pipeline.receipts import DEFAULT_RETENTION_SECONDS, status_counts, status_trail
from pipeline.redis_server import connect


@pytest.fixture
def tenant_id(redis_client, new_tenant_id, endpoint):
    tenant_id = new_tenant_id("hook")
    tenants.create_tenant(redis_client, tenant_id)
    tenants.set_webhook_url(redis_client, tenant_id, endpoint.url)
    return tenant_id


def worker_for(r, tenant_id, **kw) -> DeliveryWorker:
    channel = WebhookChannel(r, timeout_seconds=0.3)
    return DeliveryWorker(r, [tenant_id], consumer="w1", claim_idle_ms=0, retry_base_ms=0,
                          channels={"webhook": channel}, **kw)


def push(tenant_id: str, push_id: str) -> Push:
    return Push(tenant_id=tenant_id, push_id=push_id, user_id="u1", channel="webhook",
                title="Your order shipped", data={"order": "42"}, lane="transactional")


def test_a_webhook_carries_a_signature_that_verifies_with_the_tenant_secret(
    redis_client, tenant_id, endpoint
):
    enqueue(redis_client, [push(tenant_id, "p1")])

    assert worker_for(redis_client, tenant_id).deliver_once() == 1

    [(headers, body)] = endpoint.requests
    secret = tenants.tenant_secret(redis_client, tenant_id)
    assert verify(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify(b"another tenant's secret", headers[TIMESTAMP_HEADER], body,
                      headers[SIGNATURE_HEADER])
    assert not verify(secret, headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
    assert json.loads(body)["data"] == {"order": "42"}
    trail = status_trail(redis_client, tenant_id, "p1")
    assert [e["status"] for e in trail] == ["queued", "delivered"]
    assert trail[-1]["http_status"] == 200


@pytest.mark.parametrize("written_by", ["this version", "a version before 0.2"])
def test_the_webhook_body_is_the_push_with_its_ids_however_its_entry_was_written(
    redis_client, tenant_id, endpoint, written_by
):
    title = 'He said "hi" \u00e9\U0001F600'
    worker = worker_for(redis_client, tenant_id)
    if written_by == "this version":
        enqueue(redis_client, [Push(tenant_id=tenant_id, push_id="p1", user_id="u1",
                                    channel="webhook", lane="transactional", title=title,
                                    body="b", data={"k": "a\nb"}, campaign_id="c1",
                                    enqueued_at=1700000000.25, topic="news")])
    else:
        assert worker.deliver_once() == 0  # the group exists before the old entry arrives
        status_key = keys.push_status(tenant_id, "p1")
        redis_client.hset(status_key, mapping={"user_id": "u1", "n": 1, "status": "queued",
                                               "trail:queued": "1|1700000000.25|"})
        redis_client.expire(status_key, 300)
        redis_client.xadd(keys.outbox_stream(tenant_id, "transactional"), {
            "push_id": "p1", "user_id": "u1", "channel": "webhook", "campaign_id": "c1",
            "title": title, "body": "b", "data": '{"k":"a\\nb"}',
            "enqueued_at": "1700000000.25"})

    assert worker.deliver_once() == 1

    [(headers, body)] = endpoint.requests
    assert json.loads(body) == {"push_id": "p1", "user_id": "u1", "title": title, "body": "b",
                                "data": {"k": "a\nb"}, "campaign_id": "c1",
                                "enqueued_at": 1700000000.25,
                                "topic": "news" if written_by == "this version" else ""}
    assert headers["X-Pushpilot-Push-Id"] == "p1"
    assert [e["status"] for e in status_trail(redis_client, tenant_id, "p1")] == [
        "queued", "delivered"]
    assert worker.deliver_once() == 0 and len(endpoint.requests) == 1


def test_a_webhook_push_whose_legacy_record_says_delivered_is_not_sent_again(
    redis_client, tenant_id, endpoint
):
    worker = worker_for(redis_client, tenant_id)
    enqueue(redis_client, [push(tenant_id, "p1")])
    status_key = keys.push_status(tenant_id, "p1")
    redis_client.delete(status_key)  # as a version before 0.2 left it: delivered, not acked
    redis_client.hset(status_key, mapping={
        "user_id": "u1", "n": 2, "status": "delivered", "trail:queued": "1|1700000000.25|",
        "trail:delivered": '2|1700000001.5|{"http_status":200}'})
    redis_client.expire(status_key, 300)

    assert worker.deliver_once() == 1

    assert endpoint.requests == []
    assert [e["status"] for e in status_trail(redis_client, tenant_id, "p1")] == [
        "queued", "delivered"]
    assert worker.deliver_once() == 0


@pytest.mark.parametrize("failure", [503, "timeout"])
def test_a_5xx_or_a_timeout_is_retried_until_it_is_delivered(redis_client, tenant_id, endpoint,
                                                             failure):
    endpoint.script["p1"] = [failure, 500]
    enqueue(redis_client, [push(tenant_id, "p1")])
    worker = worker_for(redis_client, tenant_id)

    assert [worker.deliver_once() for _ in range(4)] == [1, 1, 1, 0]

    assert len(endpoint.requests) == 3
    assert status_trail(redis_client, tenant_id, "p1")[-1]["status"] == "delivered"
    retry_key = keys.push_retry(tenant_id, "p1")
    assert redis_client.hget(retry_key, "tries") == "2"
    assert redis_client.hget(retry_key, "retry_at") is None  # delivered: nothing to wait for
    assert 0 < redis_client.ttl(retry_key) <= DEFAULT_RETENTION_SECONDS
    assert redis_client.xlen(keys.dead_letter_stream(tenant_id)) == 0


def test_a_4xx_goes_to_the_dead_letters_at_once_with_the_reason(redis_client, tenant_id, endpoint):
    endpoint.script["p1"] = [400]
    enqueue(redis_client, [push(tenant_id, "p1")])
    worker = worker_for(redis_client, tenant_id, max_tries=5)

    assert [worker.deliver_once() for _ in range(2)] == [1, 0]

    assert len(endpoint.requests) == 1
    [(_, letter)] = redis_client.xrange(keys.dead_letter_stream(tenant_id))
    assert letter["push_id"] == "p1" and "HTTP 400" in letter["reason"]
    assert status_trail(redis_client, tenant_id, "p1")[-1]["status"] == "dead"
    assert status_counts(redis_client, tenant_id)["dead"] == 1


def test_5xx_gives_up_after_max_tries(redis_client, tenant_id, endpoint):
    endpoint.script["p1"] = [502] * 10
    enqueue(redis_client, [push(tenant_id, "p1")])
    worker = worker_for(redis_client, tenant_id, max_tries=3)

    assert [worker.deliver_once() for _ in range(4)] == [1, 1, 1, 0]

    assert len(endpoint.requests) == 3
    [(_, letter)] = redis_client.xrange(keys.dead_letter_stream(tenant_id))
    assert letter["tries"] == "3" and "HTTP 502" in letter["reason"]


def test_a_hanging_endpoint_does_not_hold_up_another_tenants_pushes(
    redis_server, redis_client, tenant_id, endpoint, new_tenant_id
):
    endpoint.script["slow"] = ["timeout"]  # answers after a second
    other = new_tenant_id("other")
    tenants.create_tenant(redis_client, other)
    channel = WebhookChannel(redis_client, timeout_seconds=3)
    worker = DeliveryWorker(connect(redis_server.url), [tenant_id, other], consumer="w1",
                            channels={"webhook": channel})
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"block_ms": 20})
    thread.start()
    try:
        enqueue(redis_client, [push(tenant_id, "slow")])
        wait_for(lambda: len(endpoint.requests) == 1)  # the slow POST is out
        sent_at = time.monotonic()
        enqueue(redis_client, [Push(tenant_id=other, push_id="fast", user_id="u1",
                                    lane="transactional")])
        wait_for(lambda: status_counts(redis_client, other)["delivered"] == 1)
        fast_seconds = time.monotonic() - sent_at
        wait_for(lambda: status_counts(redis_client, tenant_id)["delivered"] == 1)
    finally:
        stop.set()
        thread.join(timeout=10)

    assert fast_seconds < 0.5  # not the second the other tenant's endpoint took
    assert status_trail(redis_client, tenant_id, "slow")[-1]["status"] == "delivered"


def wait_for(condition, timeout_seconds: float = 10) -> None:
    """For a worker running in the background (run mode has no drain to call)."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
