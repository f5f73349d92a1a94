"""Shared fixtures: one embedded Valkey, one MLflow store, one Ray and one Serve per session."""

from __future__ import annotations

import os

# The tests are an entry point: nothing they start may try the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import redis

from pipeline.config import Settings
from pipeline.redis_server import EmbeddedRedis, connect


class Endpoint:
    """A tenant's webhook endpoint on a local HTTP server: answers each push with the next
    status scripted for it (then ``default``); "timeout" stalls for a second."""

    def __init__(self) -> None:
        self.script: dict[str, list[int | str]] = {}
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.default = 200
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests.append((dict(self.headers), body))
                plan = endpoint.script.get(json.loads(body)["push_id"], [])
                answer = plan.pop(0) if plan else endpoint.default
                if answer == "timeout":
                    time.sleep(1.0)
                    answer = 200
                self.send_response(int(answer))
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("pushpilot-data")
    # Two scorer replicas, as production runs: a test kills one under load.
    return Settings(data_dir=data_dir, http_port=free_port(), serve_replicas=2)


@pytest.fixture(scope="session")
def redis_server(settings: Settings) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(settings.data_dir) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = connect(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def new_tenant_id() -> Callable[[str], str]:
    """Unique tenant ids, so tests share one server without flushing each other's data."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make


def _redis_corpus(url: str, with_dump: bool = True,
                  match: str | None = None) -> list[tuple[str, bytes]]:
    """Every key of the server at ``url`` (or those matching ``match``) with everything it
    holds (its values and, with ``with_dump``, its DUMP: the bytes a snapshot or backup of it
    holds), to search for data that must not be there."""
    r = redis.Redis.from_url(url)  # bytes, not decoded: values need not be text
    out: list[tuple[str, bytes]] = []
    try:
        for key in r.scan_iter(match=match, count=1000):
            kind = r.type(key).decode()
            parts: list[bytes] = [key, (r.dump(key) or b"") if with_dump else b""]
            if kind == "string":
                parts.append(r.get(key) or b"")
            elif kind == "hash":
                parts += [f + b"=" + v for f, v in r.hgetall(key).items()]
            elif kind == "stream":
                parts += [repr(fields).encode() for _, fields in r.xrange(key)]
            elif kind == "list":
                parts += r.lrange(key, 0, -1)
            elif kind == "set":
                parts += list(r.smembers(key))
            elif kind == "zset":
                parts += r.zrange(key, 0, -1)
            out.append((key.decode(errors="replace"), b"\x00".join(parts)))
    finally:
        r.close()
    return out


@pytest.fixture(scope="session")
def redis_corpus() -> Callable[[str], list[tuple[str, bytes]]]:
    return _redis_corpus


@pytest.fixture(scope="session")
def registry(settings: Settings):  # type: ignore[no-untyped-def]
    from models.registry import ModelRegistry

    return ModelRegistry(settings.mlflow_tracking_uri, Path(settings.mlflow_artifact_root))


@pytest.fixture(scope="session")
def ray_session(settings: Settings) -> Iterator[None]:
    """One real local Ray for the whole session (num_cpus=2, a modest object store)."""
    import ray

    from serving.app import start_ray

    start_ray(settings)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_app(settings: Settings, redis_server: EmbeddedRedis, ray_session: None) -> Iterator[str]:
    """The pushpilot Serve application on the session's Ray; yields its base URL."""
    from ray import serve

    from serving.app import start_serve
    from serving.args import ServingArgs

    # As `pushpilot serve` does: the least-privilege user, not the admin.
    start_serve(settings, ServingArgs.from_settings(settings, redis_server.app_url))
    yield settings.http_url
    serve.shutdown()


#: When the events of ``populate_user_data`` start.
T0 = pd.Timestamp("2026-11-01", tz="UTC").timestamp()


def populate_user_data(r: redis.Redis, tenant_id: str, users: list[str], email: str, refusing_url: str) -> None:
    """Profiles (an e-mail pseudonymised), events, features, inbox, queued and dead pushes,
    frequency counters, a campaign assignment, quarantine and consent (purpose, topic and
    channel), for every user."""
    from pipeline import consent, keys, tenants
    from pipeline.channels.webhook import WebhookChannel
    from pipeline.delivery import DeliveryWorker
    from pipeline.events import ingest_events
    from pipeline.featurestore import store_profiles
    from pipeline.guard import quarantine_users
    from pipeline.outbox import Push, enqueue
    from pipeline.privacy import anonymize_table

    secret = tenants.tenant_secret(r, tenant_id)
    profiles = pd.DataFrame({"user_id": users, "email": [email] + [f"{u}@example.org" for u in users[1:]],
                             "timezone": "UTC"})
    safe, _ = anonymize_table(profiles, secret)
    store_profiles(r, tenant_id, safe)
    ingest_events(r, tenant_id, [
        (secrets.token_hex(8), u, T0 + 3600 * i + j, kind, 12.5 if kind == "purchase" else None)
        for j, u in enumerate(users) for i, kind in enumerate(("session_start", "view", "purchase"))
    ], now=T0 + 86_400)
    tenants.set_plan(r, tenant_id, tenants.Plan(marketing_per_user_per_day=10))
    enqueue(r, [Push(tenant_id=tenant_id, push_id=f"{u}-m", user_id=u, lane="marketing", body="hi")
                for u in users])
    DeliveryWorker(r, [tenant_id], consumer="w").deliver_once()
    # A webhook push the tenant's endpoint refuses (4xx): dead-lettered at once.
    tenants.set_webhook_url(r, tenant_id, refusing_url)
    enqueue(r, [Push(tenant_id=tenant_id, push_id=f"{u}-x", user_id=u, channel="webhook", body="x",
                     lane="transactional") for u in users])
    DeliveryWorker(r, [tenant_id], consumer="w2", channels={"webhook": WebhookChannel(r)}).deliver_once()
    enqueue(r, [Push(tenant_id=tenant_id, push_id=f"{u}-q", user_id=u, body="later") for u in users])
    r.hset(keys.campaign_arms(tenant_id, "spring", "r1"), mapping={u: "a" for u in users})
    quarantine_users(r, tenant_id, users[:1], reason="test")
    consent.create_topic(r, tenant_id, "sales")
    for u in users:
        consent.record_consent(r, tenant_id, u, {"marketing": "granted"}, source="banner",
                               policy_version="v1")
        consent.record_consent(r, tenant_id, u, {"topic:sales": "denied", "channel:webhook": "denied"},
                               source="settings", policy_version="v1")


@pytest.fixture
def world(redis_client: redis.Redis, new_tenant_id: Callable[[str], str],
          endpoint: Endpoint) -> tuple[str, str, str, list[str]]:
    """Two tenants holding the same users and data (``populate_user_data``): (mine, theirs,
    the person, the others)."""
    from pipeline import tenants

    endpoint.default = 400  # the tenant's endpoint refuses every push
    mine, theirs = new_tenant_id("dsr"), new_tenant_id("dsr-b")
    person = f"person-{secrets.token_hex(4)}"
    others = [f"other-{i}" for i in range(3)]
    for tenant_id in (mine, theirs):
        tenants.create_tenant(redis_client, tenant_id)
        populate_user_data(redis_client, tenant_id, [person, *others], f"{person}@mail.example.com", endpoint.url)
    return mine, theirs, person, others
