"""Per-tenant ACL users: the server itself refuses a tenant's reach into another tenant."""

from __future__ import annotations

import pytest
import redis

from pipeline import acl, keys, tenants
from pipeline.delivery import DeliveryWorker
from pipeline.outbox import Push, enqueue
from pipeline.receipts import status_counts


@pytest.fixture
def two_tenants(redis_client, new_tenant_id):
    a, b = new_tenant_id("acl-a"), new_tenant_id("acl-b")
    for tenant_id in (a, b):
        tenants.create_tenant(redis_client, tenant_id)
    enqueue(redis_client, [Push(tenant_id=b, push_id="secret-push", user_id="vip")])
    yield a, b
    for tenant_id in (a, b):
        acl.delete_tenant_user(redis_client, tenant_id)


def test_the_server_refuses_a_cross_tenant_read_with_the_tenants_credentials(
    redis_server, redis_client, two_tenants
):
    a, b = two_tenants
    as_a = acl.connect_as_tenant(redis_server.url, acl.create_tenant_user(redis_client, a))

    assert redis_client.get(keys.push_status(b, "secret-push")) is not None  # it is there
    for read in (lambda: as_a.get(keys.push_status(b, "secret-push")),
                 lambda: as_a.get(keys.tenant_secret(b)),
                 lambda: as_a.xrange(keys.outbox_stream(b, "marketing")),
                 lambda: as_a.smembers(keys.tenants_set()),
                 lambda: as_a.scan(match="*"),
                 lambda: as_a.eval("return redis.call('GET', KEYS[1])", 1,
                                   keys.tenant_secret(b))):
        with pytest.raises(redis.exceptions.NoPermissionError):
            read()
    with pytest.raises(redis.exceptions.NoPermissionError):
        enqueue(as_a, [Push(tenant_id=b, push_id="forged", user_id="vip")])
    assert as_a.get(keys.tenant_secret(a)) is not None  # its own keys are fine
    as_a.close()


def test_a_tenant_scoped_worker_delivers_with_only_its_tenants_credentials(
    redis_server, redis_client, two_tenants
):
    a, _ = two_tenants
    as_a = acl.connect_as_tenant(redis_server.url, acl.create_tenant_user(redis_client, a))
    enqueue(as_a, [Push(tenant_id=a, push_id=f"p{i}", user_id="u1",
                        lane="transactional" if i % 2 else "marketing") for i in range(10)])

    worker = DeliveryWorker(as_a, [a], consumer="isolated", claim_idle_ms=0)
    assert worker.deliver_once() == 10

    assert status_counts(as_a, a)["delivered"] == 10
    as_a.close()


def test_wrong_credentials_are_refused(redis_server, redis_client, two_tenants):
    a, _ = two_tenants
    real = acl.create_tenant_user(redis_client, a)
    forged = acl.TenantCredentials(tenant_id=a, username=real.username, password="0" * 64)
    with pytest.raises(redis.exceptions.AuthenticationError):
        acl.connect_as_tenant(redis_server.url, forged).ping()
    assert "password" not in repr(real) and real.password not in repr(real)
