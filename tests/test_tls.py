"""TLS in transit: `pushpilot serve` over HTTPS (HSTS when asked) and the gateway over wss://,
each with a private CA made at test time; a plaintext or untrusting client is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
import trustme
import websockets

from pipeline import keys, tenants
from pipeline.config import Settings
from pipeline.delivery import DeliveryWorker
from pipeline.errors import PushError
from pipeline.localhost import HAPROXY_BINARY_VAR
from pipeline.outbox import Push, enqueue
from pipeline.redis_server import EmbeddedRedis, EmbeddedTls, _pid_alive, connect
from serving.api import MAX_BODY_BYTES
from serving.app import _serve_env
from serving.client import InboxClient
from serving.gateway import Gateway, server_tls_context
from serving.haproxy_local import is_launcher, write_launcher

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(certificate chain, key, CA certificate) of a server certificate for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = folder / "server.pem", folder / "server.key", folder / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    key.chmod(0o600)
    return cert, key, ca_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_RAY_LIKE_CONFIG = """global
    stats socket {folder}/admin.sock mode 666 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend prometheus
    bind :{metrics}
    http-request use-service prometheus-exporter if {{ path /metrics }}
frontend http_frontend
    bind {api_host}:{api}
    default_backend replicas
backend replicas
    server r1 127.0.0.1:1
listen stats
  bind *:{stats}
  stats enable
"""


@pytest.mark.parametrize("http_host", ["0.0.0.0", "127.0.0.1"])
@pytest.mark.parametrize("with_tls", [False, True])
def test_the_haproxy_launcher_moves_monitors_only_and_puts_tls_on_the_api(
    cert_files, tmp_path: Path, http_host: str, with_tls: bool,
) -> None:
    cert, key, _ = cert_files
    api, metrics, stats = 18000, 19101, 18404
    launcher = write_launcher(tmp_path / "launch", "127.0.0.2", api,
                              tls=(cert, key) if with_tls else None)
    assert is_launcher(str(launcher)) and not is_launcher(str(cert))
    config = tmp_path / "ray.cfg"
    # As Ray's template writes it: "*" for an API on every interface.
    config.write_text(_RAY_LIKE_CONFIG.format(
        folder=tmp_path, metrics=metrics, stats=stats, api=api,
        api_host="*" if http_host == "0.0.0.0" else http_host))
    checked = subprocess.run([str(launcher), "-c", "-f", str(config)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # HAProxy's own check
    binds = [line.split()[1:] for line in Path(f"{config}.local").read_text().splitlines()
             if line.strip().startswith("bind ")]
    api_bind = ["*:18000" if http_host == "0.0.0.0" else f"{http_host}:18000"]
    if with_tls:
        api_bind += ["ssl", "crt", str(tmp_path / "launch" / "tls.pem"), "alpn", "http/1.1"]
    assert binds == [["127.0.0.2:19101"], api_bind, ["127.0.0.2:18404"]]
    assert "mode 600" in Path(f"{config}.local").read_text()


def test_https_refuses_a_haproxy_binary_that_is_not_the_launcher(
    cert_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key, _ = cert_files
    settings = Settings(data_dir=tmp_path, tls_cert_file=cert, tls_key_file=key)
    theirs = tmp_path / "their-haproxy"
    theirs.write_text("#!/bin/sh\n")
    theirs.chmod(0o700)
    monkeypatch.setenv(HAPROXY_BINARY_VAR, str(theirs))
    monkeypatch.delenv("PUSHPILOT_SET_SERVE_ENV", raising=False)  # the user's, not ours
    with pytest.raises(PushError, match=HAPROXY_BINARY_VAR):
        _serve_env(settings)
    # A launcher an earlier start wrote is ours to replace, not the user's choice.
    stale = write_launcher(tmp_path / "old", "127.0.0.1", 1)
    monkeypatch.setenv(HAPROXY_BINARY_VAR, str(stale))
    fresh = Path(_serve_env(settings)[HAPROXY_BINARY_VAR]).read_text()
    assert "ssl crt" in fresh and str(stale) not in fresh  # it runs HAProxy, not the old one
    assert f"HAPROXY = {str(stale)!r}" not in fresh and "HAPROXY = '" in fresh


def test_settings_need_both_tls_files_and_https_for_hsts(cert_files, tmp_path: Path) -> None:
    cert, key, _ = cert_files
    with pytest.raises(ValueError, match="both tls_cert_file and tls_key_file"):
        Settings(data_dir=tmp_path, tls_cert_file=cert)
    with pytest.raises(ValueError, match="hsts_max_age needs HTTPS"):
        Settings(data_dir=tmp_path, hsts_max_age=3600)
    with pytest.raises(ValueError, match="does not exist"):
        Settings(data_dir=tmp_path, tls_cert_file=tmp_path / "nope.pem", tls_key_file=key)
    on = Settings(data_dir=tmp_path, tls_cert_file=cert, tls_key_file=key, http_port=8443)
    assert on.http_url == "https://127.0.0.1:8443"
    assert on.inbox_url == "wss://127.0.0.1:8443/v1/inbox"


def test_the_gateway_speaks_wss_and_refuses_plaintext_and_untrusting_clients(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, new_tenant_id, cert_files,
) -> None:
    cert, key, ca_file = cert_files
    tenant_id = new_tenant_id("tls")
    tenants.create_tenant(redis_client, tenant_id)
    token = tenants.issue_user_token(tenants.tenant_secret(redis_client, tenant_id), tenant_id, "u1")
    enqueue(redis_client, [Push(tenant_id=tenant_id, push_id="p1", user_id="u1",
                                lane="transactional", title="over TLS")])
    DeliveryWorker(redis_client, [tenant_id], consumer="w").deliver_once()
    trusting = ssl.create_default_context(cafile=str(ca_file))

    async def scenario() -> tuple[list[str], str, str]:
        gateway = Gateway(redis_server.url, ssl_context=server_tls_context(cert, key))
        await gateway.start()
        try:
            assert gateway.url.startswith("wss://127.0.0.1:")
            device = InboxClient(gateway.url, token, ssl=trusting)
            await device.start()
            deadline = time.monotonic() + 15
            while not device.received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await device.stop()
            plain = untrusted = ""
            try:
                async with websockets.connect(gateway.url.replace("wss://", "ws://") +
                                              f"?token={token}", open_timeout=10) as ws:
                    await asyncio.wait_for(ws.recv(), timeout=5)
            except Exception as e:  # noqa: BLE001 - whatever the refusal, it is one
                plain = type(e).__name__
            try:
                async with websockets.connect(f"{gateway.url}?token={token}", open_timeout=10,
                                              ssl=ssl.create_default_context()):
                    pass
            except ssl.SSLCertVerificationError as e:
                untrusted = type(e).__name__
            return [r.push_id for r in device.received], plain, untrusted
        finally:
            await gateway.stop()

    received, plain, untrusted = asyncio.run(scenario())
    assert received == ["p1"]
    assert plain, "a plaintext ws:// client got through to the wss:// gateway"
    assert untrusted == "SSLCertVerificationError"


@pytest.mark.slow
def test_serve_over_https_sends_hsts_and_refuses_plaintext(cert_files, tmp_path: Path) -> None:
    cert, key, ca_file = cert_files
    ray_dir = Path(tempfile.mkdtemp(prefix="pp-ray-", dir="/tmp"))
    port = _free_port()
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "state"),
           "PUSHPILOT_HTTP_PORT": str(port), "PUSHPILOT_RAY_TEMP_DIR": str(ray_dir),
           "PUSHPILOT_TLS_CERT_FILE": str(cert), "PUSHPILOT_TLS_KEY_FILE": str(key),
           "PUSHPILOT_HSTS_MAX_AGE": "31536000",
           "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port())}
    env.pop("PUSHPILOT_REDIS_URL", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([PUSHPILOT, "serve"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    trusting = ssl.create_default_context(cafile=str(ca_file))
    try:
        deadline = time.monotonic() + 300
        answer = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            try:
                answer = httpx.get(f"{url}/healthz", verify=trusting, timeout=2)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert answer is not None and answer.status_code == 200

        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz", timeout=5)  # the system's CAs do not know ours
        unauthenticated = httpx.get(f"{url}/v1/tenants/me", verify=trusting, timeout=10)
        assert unauthenticated.status_code == 401
        # HSTS comes from the app (HAProxy answers /healthz itself). It also tells this
        # deployment's answers from the test session's own Serve on the same machine: Serve's
        # fallback proxy port, shared through SO_REUSEPORT, once handed requests across.
        assert unauthenticated.headers["strict-transport-security"] == "max-age=31536000"
        with httpx.Client(verify=trusting, timeout=10) as client:
            answers = [client.get(f"{url}/v1/tenants/me") for _ in range(30)]
        assert {(a.status_code, a.headers.get("strict-transport-security")) for a in answers} \
            == {(401, "max-age=31536000")}
        too_big = httpx.post(f"{url}/v1/events", content=b"x" * (MAX_BODY_BYTES + 1),
                             verify=trusting, timeout=30)
        assert too_big.status_code == 413  # refused before the app, by our middleware
        assert too_big.headers["strict-transport-security"] == "max-age=31536000"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_embedded_valkey_serves_rediss_with_ca_verification_and_refuses_plaintext(
    cert_files, tmp_path: Path,
) -> None:
    cert, key, ca_file = cert_files
    tls = EmbeddedTls("127.0.0.1", _free_port(), cert, key)
    with EmbeddedRedis(tmp_path, tls=tls) as server:
        verified = f"{server.tls_url}?ssl_ca_certs={ca_file}"
        assert verified.startswith("rediss://pushpilot-app:") and f":{tls.port}/0" in verified
        r = connect(verified)
        assert r.execute_command("ACL", "WHOAMI") == "pushpilot-app"
        # The data path over TLS: a tenant's push enqueued and delivered through the listener.
        admin = connect(server.url)
        tenants.create_tenant(admin, "tls-tenant")
        enqueue(r, [Push(tenant_id="tls-tenant", push_id="p", user_id="u", lane="transactional",
                         title="through TLS")])
        assert DeliveryWorker(r, ["tls-tenant"], consumer="w").deliver_once() == 1
        assert r.xlen(keys.inbox_stream("tls-tenant", "u")) == 1

        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            connect(server.tls_url, socket_timeout=5).ping()  # without our CA
        with pytest.raises(redis.ConnectionError):
            connect(server.tls_url.replace("rediss://", "redis://"), socket_timeout=5).ping()
        tls_pid = server._state.tls_pid
        assert tls_pid and _pid_alive(tls_pid)
        r.close()
        admin.close()
    assert not _pid_alive(tls_pid)  # the listener stops with the server


def test_the_valkey_tls_listener_is_restarted_when_it_died_and_stopped_when_valkey_did(
    cert_files, tmp_path: Path,
) -> None:
    cert, key, ca_file = cert_files
    tls = EmbeddedTls("127.0.0.1", _free_port(), cert, key)

    def ping_over_tls(server: EmbeddedRedis) -> bool:
        client = connect(f"{server.tls_url}?ssl_ca_certs={ca_file}", socket_timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    first = EmbeddedRedis(tmp_path, tls=tls)
    first.acquire()
    try:
        front = first._state.tls_pid
        os.kill(front, signal.SIGKILL)  # the listener dies; Valkey lives on
        _wait_until(lambda: not _pid_alive(front))
        with EmbeddedRedis(tmp_path, tls=tls) as second:  # the next process starts it again
            assert second._state.tls_pid != front and ping_over_tls(second)
            restarted = second._state.tls_pid
            # Valkey dies under its listener: the next start stops the orphan, which still
            # holds the TLS port, and starts its own.
            os.kill(second._state.pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(second._state.pid))
            assert _pid_alive(restarted)
            with EmbeddedRedis(tmp_path, tls=tls) as third:
                assert not _pid_alive(restarted) and ping_over_tls(third)
    finally:
        first.release()


def _wait_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
