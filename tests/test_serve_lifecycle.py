"""`pushpilot serve`'s life: SIGTERM ends every Ray process it started; without Redis its
replicas stay up, answer 503 with Retry-After and come back with Redis, instead of restarting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest
import ray
import redis
from ray import serve

from pipeline import tenants
from pipeline.config import Settings
from pipeline.redis_server import _binary_path, connect
from serving.api import Api
from serving.args import ServingArgs

pytestmark = pytest.mark.slow

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(what: str, check, timeout_seconds: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.5)


def _session_processes(sid: int) -> list[psutil.Process]:
    """Live processes of the session `pushpilot serve` leads (Ray's workers change their
    process group but keep the session)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != sid and os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
    return found


def test_sigterm_stops_serve_and_every_ray_process_it_started(tmp_path: Path) -> None:
    # Ray's socket paths must stay short, so its session folder goes under /tmp directly.
    ray_dir = Path(tempfile.mkdtemp(prefix="pp-ray-", dir="/tmp"))
    port = _free_port()
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "state"),
           "PUSHPILOT_HTTP_PORT": str(port), "PUSHPILOT_RAY_TEMP_DIR": str(ray_dir),
           # Not the session's Serve's HAProxy ports.
           "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port())}
    env.pop("PUSHPILOT_REDIS_URL", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([PUSHPILOT, "serve"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def answers() -> bool:
            assert proc.poll() is None, "pushpilot serve exited early"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_until("pushpilot serve to answer", answers, 300)
        started = _session_processes(proc.pid)
        names = " ".join(p.name() for p in started)
        assert "raylet" in names and "ray::DashboardAgent" in names, names

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 0
        _, left = psutil.wait_procs(started, timeout=5)
        left += [p for p in _session_processes(proc.pid) if p not in left]
        assert not left, f"left running after SIGTERM: {[(p.pid, p.name()) for p in left]}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _session_processes(proc.pid):
            p.kill()


def _start_valkey(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(_binary_path()), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
         "--appendonly", "yes", "--save", "", "--logfile", str(workdir / "valkey.log")],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    _wait_until("valkey to answer", pings, 30)
    client.close()
    return proc


def _replicas(app_name: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and f"{app_name}#Api#" in a["name"])


@pytest.mark.serve
def test_without_redis_the_replica_stays_up_answers_503_and_recovers(
    settings: Settings, serve_app: str, tmp_path: Path
) -> None:
    port = _free_port()
    valkey = _start_valkey(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    r = connect(url)
    tenants.create_tenant(r, "gone")
    key = tenants.create_api_key(r, "gone", ["score"])
    r.close()
    app_name = "redis-gone"
    args = ServingArgs.from_settings(settings, url).model_copy(update={"replicas": 1})
    # Health checked every second: the old replica, failing its check without Redis, was
    # replaced after three of them.
    serve.run(Api.options(num_replicas=1, health_check_period_s=1, health_check_timeout_s=5)
              .bind(args), name=app_name, route_prefix=f"/{app_name}")
    base = f"{serve_app}/{app_name}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/v1/tenants/me", headers=headers).status_code == 200
            before = _replicas(app_name)
            assert len(before) == 1, before

            valkey.kill()
            valkey.wait()
            _wait_until("readyz to say 503",
                        lambda: client.get("/readyz").status_code == 503, 60)
            # Over twelve health-check periods, every answer is a quick 503 and the replica
            # is the same one.
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                answer = client.get("/v1/tenants/me", headers=headers)
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/problem+json"
                assert 1 <= int(answer.headers["Retry-After"]) <= 10
                assert "redis" in answer.json()["detail"].lower()
                time.sleep(0.5)
            assert client.get("/healthz").status_code == 200
            assert _replicas(app_name) == before

            valkey = _start_valkey(port, tmp_path)
            _wait_until("the replica to answer again",
                        lambda: client.get("/v1/tenants/me", headers=headers).status_code == 200,
                        60)
            assert _replicas(app_name) == before
    finally:
        serve.delete(app_name)
        valkey.kill()
        valkey.wait()
