"""Hard isolation in `pushpilot worker`: a tenant whose plan asks for it is delivered by a worker
logged in as the tenant's ACL user, and never by the shared worker."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from pipeline import acl, keys, tenants
from pipeline.delivery import GROUP
from pipeline.outbox import Push, enqueue
from pipeline.receipts import status_counts
from pipeline.redis_server import EmbeddedRedis, connect
from pipeline.tenants import Plan
from serving.workers import WorkerPool

_ISOLATED = Plan(is_hard_isolated=True)


def _pushes(tenant_id: str, n: int, start: int = 0) -> list[Push]:
    return [Push(tenant_id=tenant_id, push_id=f"p{i}", user_id="u1", body="hello",
                 lane="transactional" if i % 2 else "marketing") for i in range(start, start + n)]


def consumers(r: redis.Redis, tenant_id: str) -> dict[str, int]:
    """Consumer name -> ms since it last touched any of the tenant's outbox streams."""
    idle: dict[str, int] = {}
    for lane in keys.LANES:
        try:
            found = r.xinfo_consumers(keys.outbox_stream(tenant_id, lane), GROUP)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e) and "no such key" not in str(e):
                raise
            continue
        for consumer in found:
            idle[consumer["name"]] = min(int(consumer["idle"]),
                                         idle.get(consumer["name"], 2**62))
    return idle


def client_users(r: redis.Redis) -> dict[str, set[str]]:
    """Client name -> the ACL users its connections are logged in as, as the server sees it."""
    users: dict[str, set[str]] = {}
    for client in r.client_list():
        users.setdefault(client["name"], set()).add(client["user"])
    return users


def wait_until(condition: Callable[[], bool], timeout_seconds: float = 30.0) -> float:
    """Seconds it took ``condition`` to hold."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_seconds, "timed out"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def make_tenant(redis_client, new_tenant_id):
    made: list[str] = []

    def make(prefix: str, plan: Plan | None = None) -> str:
        tenant_id = new_tenant_id(prefix)
        tenants.create_tenant(redis_client, tenant_id, plan)
        made.append(tenant_id)
        return tenant_id

    yield make
    for tenant_id in made:
        acl.delete_tenant_user(redis_client, tenant_id)


@pytest.fixture
def make_pool(redis_server, redis_client):
    pools: list[WorkerPool] = []

    def make(tenant_ids: list[str], *, r: redis.Redis | None = None, url: str | None = None,
             **options: object) -> WorkerPool:
        pool = WorkerPool(r or redis_client, url or redis_server.url,
                          consumer=f"w-{uuid.uuid4().hex[:6]}", tenant_ids=lambda: tenant_ids,
                          **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def test_a_hard_isolated_tenant_is_delivered_by_a_worker_logged_in_as_its_acl_user(
    redis_client, make_tenant, make_pool, caplog
):
    isolated, shared = make_tenant("iso", _ISOLATED), make_tenant("shared")
    for tenant_id in (isolated, shared):
        enqueue(redis_client, _pushes(tenant_id, 10))
    pool = make_pool([isolated, shared])

    with caplog.at_level(logging.INFO, logger="serving.workers"):
        assert pool.drain() == 20

    assert status_counts(redis_client, isolated)["delivered"] == 10
    assert status_counts(redis_client, shared)["delivered"] == 10
    assert list(pool.isolated_workers) == [isolated] and pool.shared_tenant_ids == [shared]
    worker = pool.isolated_workers[isolated]
    username = acl.acl_username(isolated)
    assert worker.r.acl_whoami() == username
    assert client_users(redis_client)[worker.consumer] == {username}
    # Only the tenant's own worker ever touched its streams; the shared one served the other.
    assert set(consumers(redis_client, isolated)) == {worker.consumer}
    assert set(consumers(redis_client, shared)) == {pool.shared_worker.consumer}
    assert f"tenant {isolated} runs isolated: worker {worker.consumer} as Redis ACL user " \
           f"{username}" in caplog.text
    assert f"tenants running isolated: {isolated}" in caplog.text
    password = acl.create_tenant_user(redis_client, isolated).password
    secret = tenants.tenant_secret(redis_client, isolated).hex()
    assert password not in caplog.text and secret not in caplog.text


def test_the_isolated_workers_connection_is_refused_another_tenants_keys(
    redis_client, make_tenant, make_pool
):
    isolated, other = make_tenant("iso", _ISOLATED), make_tenant("other")
    enqueue(redis_client, _pushes(other, 2))
    pool = make_pool([isolated, other])
    pool.refresh()
    conn = pool.isolated_workers[isolated].r

    for read in (lambda: conn.get(keys.tenant_secret(other)),
                 lambda: conn.hgetall(keys.tenant_meta(other)),
                 lambda: conn.xrange(keys.outbox_stream(other, "marketing")),
                 lambda: conn.smembers(keys.tenants_set())):
        with pytest.raises(redis.exceptions.NoPermissionError):  # the server's NOPERM reply
            read()
    assert conn.get(keys.tenant_secret(isolated)) is not None


def test_flipping_a_plan_moves_the_tenant_within_the_refresh_period(
    redis_client, make_tenant, make_pool
):
    tenant_id = make_tenant("flip")
    pool = make_pool([tenant_id], refresh_seconds=0.5)
    shared = pool.shared_worker.consumer
    stop = threading.Event()
    pool.start()
    loop = threading.Thread(target=pool.run, args=(stop,))
    loop.start()
    try:
        enqueue(redis_client, _pushes(tenant_id, 2))
        wait_until(lambda: status_counts(redis_client, tenant_id)["delivered"] == 2)
        assert set(consumers(redis_client, tenant_id)) == {shared}

        tenants.set_plan(redis_client, tenant_id, _ISOLATED)
        took = wait_until(lambda: tenant_id in pool.isolated_workers)
        assert took < pool.refresh_seconds + 1.0  # a refresh, plus room for a loaded machine
        assert pool.shared_tenant_ids == []
        # The shared worker finished its pass over the tenant before the tenant's worker started.
        shared_quiet_since = time.monotonic()
        isolated = pool.isolated_workers[tenant_id].consumer
        enqueue(redis_client, _pushes(tenant_id, 4, start=2))
        wait_until(lambda: status_counts(redis_client, tenant_id)["delivered"] == 6)
        time.sleep(0.3)
        idle = consumers(redis_client, tenant_id)
        assert set(idle) == {shared, isolated}
        # The shared worker has not so much as polled the tenant's streams since the flip.
        assert idle[shared] >= (time.monotonic() - shared_quiet_since) * 1000 - 50
        assert idle[isolated] < idle[shared]

        tenants.set_plan(redis_client, tenant_id, Plan())
        took = wait_until(lambda: pool.shared_tenant_ids == [tenant_id])
        assert took < pool.refresh_seconds + 1.0
        assert pool.isolated_workers == {}
        enqueue(redis_client, _pushes(tenant_id, 2, start=6))
        wait_until(lambda: status_counts(redis_client, tenant_id)["delivered"] == 8)
        assert consumers(redis_client, tenant_id)[shared] < 1000  # the shared worker took it back
    finally:
        stop.set()
        loop.join()
        pool.close()

    inbox = redis_client.xrange(keys.inbox_stream(tenant_id, "u1"))
    assert sorted(f["push_id"] for _, f in inbox) == sorted(f"p{i}" for i in range(8))


def test_a_tenant_that_leaves_stops_its_isolated_worker(redis_client, make_tenant, make_pool,
                                                         caplog):
    staying, leaving = make_tenant("stay", _ISOLATED), make_tenant("leave", _ISOLATED)
    served = [staying, leaving]
    pool = make_pool(served)
    pool.refresh()
    gone = pool.isolated_workers[leaving]
    served.remove(leaving)

    with caplog.at_level(logging.INFO, logger="serving.workers"):
        pool.refresh()

    assert list(pool.isolated_workers) == [staying]
    wait_until(lambda: gone.consumer not in client_users(redis_client))  # its connections closed
    assert f"tenant {leaving} no longer runs isolated (tenant gone)" in caplog.text


def test_a_tenant_whose_acl_user_cannot_be_made_is_not_delivered_at_all(
    redis_server, redis_client, make_tenant, make_pool, caplog
):
    isolated, shared = make_tenant("iso", _ISOLATED), make_tenant("shared")
    for tenant_id in (isolated, shared):
        enqueue(redis_client, _pushes(tenant_id, 3))
    # An operator connection that may do everything but administration, ACL SETUSER included.
    name = f"pp-test-noadmin-{uuid.uuid4().hex[:6]}"
    redis_client.execute_command("ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all",
                                 "-@admin")
    # The server's URL carries the admin's own credentials, which would win over these.
    port = urlsplit(redis_server.url).port
    not_admin = connect(f"redis://127.0.0.1:{port}/0", username=name, password="pw")
    try:
        pool = make_pool([isolated, shared], r=not_admin)
        with caplog.at_level(logging.ERROR, logger="serving.workers"):
            assert pool.drain() == 3
    finally:
        not_admin.close()
        redis_client.execute_command("ACL", "DELUSER", name)

    # Fail closed: the plan forbids the shared worker, so the tenant waits for its own.
    assert status_counts(redis_client, isolated)["queued"] == 3
    assert status_counts(redis_client, isolated)["delivered"] == 0
    assert pool.isolated_workers == {} and pool.shared_tenant_ids == [shared]
    assert f"tenant {isolated} must run isolated but its worker cannot start" in caplog.text


def test_an_admin_url_with_a_password_still_logs_the_worker_in_as_the_tenant(
    redis_server, redis_client, make_tenant, make_pool
):
    tenant_id = make_tenant("iso", _ISOLATED)
    # The embedded server's URL names its admin and password: it logs in as the admin if its
    # user wins.
    admin_url = redis_server.url
    with connect(admin_url) as as_admin:
        assert as_admin.acl_whoami() == "pushpilot-admin"

    pool = make_pool([tenant_id], url=admin_url)
    pool.refresh()

    assert pool.isolated_workers[tenant_id].r.acl_whoami() == acl.acl_username(tenant_id)


@pytest.mark.slow
def test_pushpilot_worker_runs_hard_isolated_tenants_as_their_acl_users(tmp_path):
    """The CLI wiring, on a server of its own: `pushpilot worker` sees every tenant there."""
    with EmbeddedRedis(tmp_path / "server") as server:
        r = connect(server.url)
        isolated, shared = "cli-iso", "cli-shared"
        tenants.create_tenant(r, isolated, _ISOLATED)
        tenants.create_tenant(r, shared)
        for tenant_id in (isolated, shared):
            enqueue(r, _pushes(tenant_id, 20))
        data_dir = tmp_path / "cli"
        env = {**os.environ, "PUSHPILOT_REDIS_URL": server.url, "PUSHPILOT_DATA_DIR": str(data_dir)}
        pushpilot = Path(sys.executable).with_name("pushpilot")
        with open(tmp_path / "worker.err", "wb") as err:
            proc = subprocess.Popen([str(pushpilot), "worker", "--name", "cli",
                                     "--refresh-seconds", "0.5"],
                                    env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "worker cli delivering, 1 tenant(s) isolated" in line, (
                line + (tmp_path / "worker.err").read_text()[-2000:])
            for tenant_id in (isolated, shared):
                wait_until(lambda t=tenant_id: status_counts(r, t)["delivered"] == 20)
            assert set(consumers(r, isolated)) == {f"cli/{isolated}"}
            assert set(consumers(r, shared)) == {"cli"}
            assert client_users(r)[f"cli/{isolated}"] == {acl.acl_username(isolated)}

            # A plan changed at run time: the same process starts the tenant's own worker.
            tenants.set_plan(r, shared, _ISOLATED)
            wait_until(lambda: f"cli/{shared}" in client_users(r))
            assert client_users(r)[f"cli/{shared}"] == {acl.acl_username(shared)}
            enqueue(r, _pushes(shared, 5, start=20))
            wait_until(lambda: status_counts(r, shared)["delivered"] == 25)
            assert f"cli/{shared}" in consumers(r, shared)

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, (tmp_path / "worker.err").read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        wait_until(lambda: not any(name.startswith("cli/") for name in client_users(r)))
        log = (data_dir / "logs" / "pushpilot.log").read_text()
        for tenant_id in (isolated, shared):
            assert f"tenant {tenant_id} runs isolated" in log
            assert acl.create_tenant_user(r, tenant_id).password not in log
        r.close()
