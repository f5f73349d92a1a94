"""The standalone realtime gateway with real devices (InboxClient) and a real worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
import websockets

from pipeline import keys, tenants
from pipeline.delivery import DeliveryWorker
from pipeline.outbox import Push, enqueue, inbox_frame
from pipeline.receipts import status_counts
from serving.client import InboxClient
from serving.gateway import Gateway


def drain(worker: DeliveryWorker) -> int:
    total = 0
    while handled := worker.deliver_once():
        total += handled
    return total


async def until(condition: Callable[[], bool], what: str, timeout_seconds: float = 15) -> None:
    """Wait for something the network does in the background (the gateway, the client)."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
def tenant(redis_client, new_tenant_id):
    tenant_id = new_tenant_id("gw")
    tenants.create_tenant(redis_client, tenant_id)
    token = tenants.issue_user_token(tenants.tenant_secret(redis_client, tenant_id), tenant_id,
                                     "u1")
    return tenant_id, token


def send(r, tenant_id, ids, worker):
    enqueue(r, [Push(tenant_id=tenant_id, push_id=p, user_id="u1", lane="transactional")
                for p in ids])
    assert drain(worker) == len(ids)


@pytest.mark.slow
def test_a_device_offline_for_5_seconds_receives_what_it_missed_once(redis_server, redis_client,
                                                                     tenant):
    tenant_id, token = tenant
    worker = DeliveryWorker(redis_client, [tenant_id], consumer="w1")

    async def scenario() -> list[str]:
        gateway = Gateway(redis_server.url)
        await gateway.start()
        device = InboxClient(gateway.url, token)
        try:
            await device.start()
            send(redis_client, tenant_id, [f"before{i}" for i in range(20)], worker)
            await until(lambda: len(device.received) == 20, "the first 20 pushes")
            await device.stop()
            send(redis_client, tenant_id, [f"offline{i}" for i in range(30)], worker)
            await asyncio.sleep(5)  # the device is offline for 5 s: the scenario itself
            await device.start()  # resumes after the last id it acked
            send(redis_client, tenant_id, [f"after{i}" for i in range(5)], worker)
            await until(lambda: len(device.received) >= 55, "the missed and the new pushes")
            await asyncio.sleep(0.2)  # room for a duplicate to show up, if there were one
            await device.stop()
        finally:
            await gateway.stop()
        return [r.push_id for r in device.received]

    received = asyncio.run(scenario())

    expected = ([f"before{i}" for i in range(20)] + [f"offline{i}" for i in range(30)]
                + [f"after{i}" for i in range(5)])
    assert received == expected  # everything, once, in order
    assert status_counts(redis_client, tenant_id)["acked"] == 55


def test_a_new_device_resumes_after_the_last_acked_id(redis_server, redis_client, tenant):
    tenant_id, token = tenant
    worker = DeliveryWorker(redis_client, [tenant_id], consumer="w1")
    cursor_key = keys.inbox_cursor(tenant_id, "u1")

    async def scenario() -> list[str]:
        gateway = Gateway(redis_server.url)
        await gateway.start()
        try:
            first = InboxClient(gateway.url, token)
            await first.start()
            send(redis_client, tenant_id, ["a", "b", "c"], worker)
            await until(lambda: len(first.received) == 3, "three pushes")
            await until(lambda: redis_client.get(cursor_key) == first.last_acked, "the ack")
            await first.stop()
            send(redis_client, tenant_id, ["d"], worker)
            second = InboxClient(gateway.url, token)  # no last_id: the stored cursor counts
            await second.start()
            await until(lambda: len(second.received) == 1, "the push it had not acked")
            await second.stop()
        finally:
            await gateway.stop()
        return [r.push_id for r in second.received]

    assert asyncio.run(scenario()) == ["d"]


def test_the_gateway_sends_an_inbox_entry_as_its_frame(redis_server, redis_client, tenant):
    tenant_id, token = tenant
    title = 'He said "hi" \u00e9\U0001F600'
    enqueue(redis_client, [Push(tenant_id=tenant_id, push_id="p1", user_id="u1",
                                lane="transactional", title=title, body="b",
                                data={"k": "a\nb"}, campaign_id="c1",
                                enqueued_at=1700000000.25)])
    assert drain(DeliveryWorker(redis_client, [tenant_id], consumer="w1")) == 1
    [(entry_id, fields)] = redis_client.xrange(keys.inbox_stream(tenant_id, "u1"))

    async def scenario() -> str:
        gateway = Gateway(redis_server.url)
        await gateway.start()
        try:
            async with websockets.connect(f"{gateway.url}?token={token}") as ws:
                return str(await asyncio.wait_for(ws.recv(), timeout=15))
        finally:
            await gateway.stop()

    frame = asyncio.run(scenario())

    assert frame == inbox_frame(entry_id, fields)
    assert json.loads(frame) == {"id": entry_id, "push_id": "p1", "title": title, "body": "b",
                                 "data": {"k": "a\nb"}, "campaign_id": "c1",
                                 "enqueued_at": 1700000000.25}


def test_a_bad_token_is_refused_with_4401(redis_server, tenant):
    tenant_id, token = tenant
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")

    async def scenario() -> int | None:
        gateway = Gateway(redis_server.url)
        await gateway.start()
        try:
            async with websockets.connect(f"{gateway.url}?token={forged}") as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                return ws.close_code
        finally:
            await gateway.stop()

    assert asyncio.run(scenario()) == 4401
