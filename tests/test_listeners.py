"""Nothing pushpilot starts listens beyond 127.0.0.1 unless configured to."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil
import pytest
import ray

from pipeline.config import Settings
from pipeline.redis_server import EmbeddedRedis

pytestmark = [pytest.mark.serve, pytest.mark.slow]


def _listening(process: psutil.Process) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN]


def _our_haproxies() -> list[psutil.Process]:
    # Ray keeps each node's HAProxy files under a folder named by the node id.
    node_id = ray.get_runtime_context().get_node_id()
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "haproxy" and node_id in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_haproxy_stats_and_metrics_listen_on_localhost_only(serve_app: str,
                                                              settings: Settings) -> None:
    haproxies = _our_haproxies()
    assert haproxies, "the Serve app runs no HAProxy of this Ray node"
    listeners = {address for process in haproxies for address in _listening(process)}
    ports = {port for _, port in listeners}
    # The API itself, the stats page and the Prometheus exporter (8404 and 9101 by default).
    assert settings.http_port in ports and len(ports) >= 3, listeners
    assert {ip for ip, _ in listeners} == {"127.0.0.1"}, listeners


def test_haproxy_admin_socket_is_the_users_only(serve_app: str) -> None:
    node_id = ray.get_runtime_context().get_node_id()
    sockets = [p for p in Path("/tmp/haproxy-serve", node_id).glob("*.sock*")
               if stat.S_ISSOCK(os.stat(p).st_mode) and p.name.startswith("admin")]
    assert sockets, "no HAProxy admin socket found"
    for path in sockets:
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, f"{path} is open to others"


def test_the_embedded_valkey_listens_on_localhost_only(redis_server: EmbeddedRedis) -> None:
    listeners = _listening(psutil.Process(redis_server.pid))
    assert listeners and {ip for ip, _ in listeners} == {"127.0.0.1"}, listeners
