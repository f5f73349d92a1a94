"""Redis high availability, for real: a primary, a replica and three Sentinels, all valkey-server.

The failover test kills the primary with SIGKILL while pushes flow and checks that a replica is
promoted, delivery resumes within 10 s and no acknowledged transactional push is lost.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from pipeline import keys, receipts, tenants
from pipeline.delivery import DeliveryWorker
from pipeline.durability import NotReplicatedError, wait_for_replicas
from pipeline.outbox import Push, enqueue
from pipeline.redis_server import _binary_path, connect, parse_sentinel_url

SERVICE = "pushpilot"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class SentinelSetup:
    primary_port: int
    replica_port: int
    sentinel_ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[int, tuple[Path, list[str]]] = field(default_factory=dict)

    def start(self, port: int, workdir: Path, *args: str) -> None:
        self.commands[port] = (workdir, list(args))
        self.processes[port] = _start(workdir, *args)

    def restart(self, port: int) -> None:
        """What a supervisor (systemd, Kubernetes) does with a crashed server."""
        workdir, args = self.commands[port]
        self.processes[port] = _start(workdir, *args)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def kill(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(timeout=5)

    def primary_address(self) -> tuple[str, int]:
        sentinel = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        try:
            host, port = sentinel.sentinel_get_master_addr_by_name(SERVICE)
            return host, int(port)
        finally:
            sentinel.close()


def _start(workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(_binary_path()), *args, "--logfile", str(workdir / "valkey.log")], cwd=workdir,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )


def _server_args(workdir: Path, port: int) -> list[str]:
    return ["--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction",
            # A replica that comes back syncs at once rather than waiting for company.
            "--repl-diskless-sync-delay", "0"]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSetup]:
    """A primary, its replica and three Sentinels (quorum 2) on free ports of 127.0.0.1."""
    setup = SentinelSetup(_free_port(), _free_port(), [_free_port() for _ in range(3)])
    try:
        primary_dir, replica_dir = tmp_path / "primary", tmp_path / "replica"
        for workdir, port, extra in (
            (primary_dir, setup.primary_port, []),
            (replica_dir, setup.replica_port,
             ["--replicaof", "127.0.0.1", str(setup.primary_port)]),
        ):
            workdir.mkdir()
            setup.start(port, workdir, *_server_args(workdir, port), *extra)
        replica = redis.Redis(port=setup.replica_port, decode_responses=True)
        _wait_until(lambda: replica.info("replication")["master_link_status"] == "up", 15,
                    "the replica to sync")
        replica.close()
        for i, port in enumerate(setup.sentinel_ports):
            workdir = tmp_path / f"sentinel-{i}"
            workdir.mkdir()
            conf = workdir / "sentinel.conf"
            # Sentinels rewrite their config file as they learn, so each gets its own.
            conf.write_text("\n".join([
                "bind 127.0.0.1", f"port {port}", f"dir {workdir}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {setup.primary_port} 2",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 4000",
                f"sentinel parallel-syncs {SERVICE} 1", "",
            ]))
            setup.start(port, workdir, str(conf), "--sentinel")
        for port in setup.sentinel_ports:
            sentinel = redis.Redis(port=port, decode_responses=True)
            _wait_until(
                lambda s=sentinel: (  # type: ignore[misc]
                    int(s.sentinel_master(SERVICE)["num-other-sentinels"]) == 2
                    and len(s.sentinel_slaves(SERVICE)) == 1
                ),
                20, f"Sentinel {port} to see the replica and the other Sentinels",
            )
            sentinel.close()
        yield setup
    finally:
        for process in setup.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in setup.processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()


def test_a_sentinel_url_reaches_the_primary_and_writes_reach_the_replica(
    sentinels: SentinelSetup,
) -> None:
    r = connect(sentinels.url, single_connection_client=True)
    tenants.create_tenant(r, "acme")
    enqueue(r, [Push("acme", "login-1", "u1", lane="transactional")])
    assert wait_for_replicas(r, 1, 2000) == 1
    replica = redis.Redis(port=sentinels.replica_port, decode_responses=True)
    assert replica.sismember(keys.tenants_set(), "acme")
    with pytest.raises(NotReplicatedError, match="only 1 of 2 replica"):
        wait_for_replicas(r, 2, 50)
    r.close()
    replica.close()


def test_a_bad_sentinel_url_says_what_is_wrong() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380/pp/2")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (parsed.service_name, parsed.db, parsed.password) == ("pp", 2, "s3cret")
    with pytest.raises(ValueError, match="must be host:port"):
        connect("redis+sentinel://10.0.0.1/pp")
    with pytest.raises(ValueError, match="names the monitored service"):
        connect("redis+sentinel://10.0.0.1:26379")


_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
              NotReplicatedError, receipts.NotDurableError)


@pytest.mark.slow
def test_killing_the_primary_loses_no_acknowledged_transactional_push(
    sentinels: SentinelSetup,
) -> None:
    tenant_id = "bank"
    setup_client = connect(sentinels.url)
    tenants.create_tenant(setup_client, tenant_id)
    # The producer's one connection carries both the enqueue and its WAIT (see durability.py).
    producer = connect(sentinels.url, single_connection_client=True, socket_timeout=2.0)
    worker_client = connect(sentinels.url, socket_timeout=2.0)
    worker = DeliveryWorker(worker_client, [tenant_id], consumer="w1", claim_idle_ms=1000)
    stop = threading.Event()
    worker_errors: list[BaseException] = []

    def work() -> None:
        while not stop.is_set():
            try:
                worker.run(stop, block_ms=100)
            except _RETRYABLE:  # run() retries ConnectionError itself; the rest we retry here
                stop.wait(0.2)
            except BaseException as e:  # noqa: BLE001 - reported by the test below
                worker_errors.append(e)
                return

    thread = threading.Thread(target=work, daemon=True)
    thread.start()

    acked = {"transactional": [], "marketing": []}  # type: dict[str, list[str]]
    refused = {"transactional": 0, "marketing": 0}
    killed_at: float | None = None
    restarted = False
    first_after_kill: tuple[str, float] | None = None
    resumed_after_s: float | None = None
    tx_after_kill, tx_resumed_s = 0, 0.0
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 30:
        now = time.monotonic()
        if killed_at is None and now - started > 2.0:
            sentinels.kill(sentinels.primary_port)
            killed_at = time.monotonic()
        if killed_at is not None and not restarted and now - killed_at > 4.0:
            # Until a replica is back, WAIT 1 refuses transactional pushes (not acknowledged,
            # so the caller retries): the guarantee holds by refusing, never by pretending.
            sentinels.restart(sentinels.primary_port)
            restarted = True
        for lane in ("transactional", "marketing"):
            push_id = f"{lane[0]}-{i}"
            try:
                # A transactional enqueue returns only once a replica holds it (WAIT 1).
                result = enqueue(producer, [Push(tenant_id, push_id, f"u{i % 50}", lane=lane,
                                                 body="hello")],
                                 is_transactional_fsynced=lane == "transactional",
                                 replicas_to_wait=1, replica_wait_ms=1000)
                if result.accepted:
                    acked[lane].append(push_id)
                    if killed_at is not None and first_after_kill is None:
                        first_after_kill = (push_id, time.monotonic())
                    if killed_at is not None and lane == "transactional":
                        tx_after_kill += 1
                        tx_resumed_s = tx_resumed_s or time.monotonic() - killed_at
            except _RETRYABLE:
                refused[lane] += 1
                time.sleep(0.05)
        i += 1
        if first_after_kill and resumed_after_s is None:
            [status] = receipts.current_statuses(producer, tenant_id, [first_after_kill[0]])
            if status == "delivered":
                resumed_after_s = time.monotonic() - (killed_at or 0)
        if resumed_after_s is not None and tx_after_kill >= 20:
            break
        time.sleep(0.01)

    # Let the worker drain what was accepted, then look at the promoted primary.
    def drained() -> bool:
        # Delivered entries are deleted from the outbox, so an empty outbox is a drained one.
        return not any(producer.xlen(keys.outbox_stream(tenant_id, lane)) for lane in keys.LANES)

    _wait_until(drained, 20, "the worker to drain the outbox")
    stop.set()
    thread.join(timeout=10)
    assert not worker_errors, worker_errors

    host, port = sentinels.primary_address()
    assert port == sentinels.replica_port, "the replica was not promoted"
    figures: dict[str, object] = {
        "resume_delivery_s": round(resumed_after_s or -1, 2),
        "resume_transactional_acks_s": round(tx_resumed_s, 2),
    }
    for lane, ids in acked.items():
        statuses = receipts.current_statuses(producer, tenant_id, ids)
        figures[lane] = {
            "acknowledged": len(ids),
            "refused_during_failover": refused[lane],
            "delivered": sum(s == "delivered" for s in statuses),
            "lost": sum(s is None for s in statuses),
        }
    print("\nfailover:", json.dumps(figures))
    assert resumed_after_s is not None and resumed_after_s < 10, figures
    assert figures["transactional"]["lost"] == 0, figures  # type: ignore[index]
    assert figures["transactional"]["delivered"] == len(acked["transactional"]), figures  # type: ignore[index]
    assert len(acked["transactional"]) > 50
    for client in (producer, worker_client, setup_client):
        client.close()
