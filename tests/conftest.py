"""Shared fixtures: one embedded Valkey, one MLflow store, one Ray and one Serve per session."""

from __future__ import annotations

import os

# The tests are an entry point: nothing they start may try the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
