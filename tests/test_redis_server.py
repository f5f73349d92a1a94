from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from pipeline.redis_server import EmbeddedRedis, connect, stop_embedded


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_two_users_of_one_data_dir_share_one_server(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first, EmbeddedRedis(tmp_path) as second:
        assert first.url == second.url
        assert first.pid == second.pid


def test_last_one_out_stops_the_server_but_not_before(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    first.acquire()
    pid = first.pid
    with EmbeddedRedis(tmp_path):
        pass
    assert _alive(pid), "the server stopped while the first user still held it"
    first.release()
    assert not _alive(pid)


def test_a_server_started_by_another_process_is_shared_and_outlives_it(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from pipeline.redis_server import EmbeddedRedis\n"
        "s = EmbeddedRedis(Path(sys.argv[1])); s.acquire(); print(s.url, flush=True); time.sleep(60)"
    )
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        url = other.stdout.readline().strip()  # type: ignore[union-attr]
        with EmbeddedRedis(tmp_path) as mine:
            assert mine.url == url
            pid = mine.pid
        assert _alive(pid), "leaving must not stop a server another process still uses"
    finally:
        other.kill()
        other.wait()
        other.stdout.close()  # type: ignore[union-attr]
    # The other process died without letting go; its lease is stale and the next user cleans up.
    with EmbeddedRedis(tmp_path) as again:
        assert again.pid == pid
    assert not _alive(pid)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        connect(server.url).set("pp:global:probe", "kept")
    with EmbeddedRedis(tmp_path) as server:
        assert connect(server.url).get("pp:global:probe") == "kept"


def test_down_stops_a_server_in_use(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    server.acquire()
    pid = server.pid
    assert stop_embedded(tmp_path) is True
    assert not _alive(pid)
    assert stop_embedded(tmp_path) is False
    server.release()  # nothing left to stop; must not raise


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _raw(port: int, command: bytes) -> bytes:
    """One RESP command on a bare socket, as anyone on the machine could send it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command)
        return s.recv(4096)


def test_an_unauthenticated_connection_reads_nothing(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        connect(server.url).set("pp:{bank}:secret", "forge-any-token")
        port = _port(server.url)
        assert _raw(port, b"GET pp:{bank}:secret\r\n").startswith(b"-NOAUTH")
        assert _raw(port, b"KEYS *\r\n").startswith(b"-NOAUTH")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).get("pp:{bank}:secret")
        # The default user is off, whatever password is tried.
        for password in ("", "nopass", "x"):
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=port, username="default", password=password,
                            socket_timeout=5).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, username="pushpilot-app", password="guess",
                        socket_timeout=5).ping()


def test_the_app_user_cannot_administer_the_server(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        app = connect(server.app_url)
        assert app.acl_whoami() == "pushpilot-app"
        # What serve and the workers do still works on pushpilot's keys and channels...
        app.set("pp:{t}:probe", "1")
        app.xadd("pp:{t}:outbox:transactional", {"p": "1"})
        assert app.eval("return redis.call('GET', KEYS[1])", 1, "pp:{t}:probe") == "1"
        app.publish("pp:{t}:inbox-events", "x")
        assert app.info("replication")["role"] == "master"
        # ...administration and reaching past them do not.
        for command in (("CONFIG", "GET", "*"), ("CONFIG", "SET", "appendonly", "no"),
                        ("FLUSHALL",), ("FLUSHDB",), ("ACL", "LIST"),
                        ("ACL", "SETUSER", "evil", "on", "nopass", "~*", "+@all"),
                        ("KEYS", "*"), ("SHUTDOWN", "NOSAVE"),
                        ("MONITOR",), ("SET", "outside", "1"), ("GET", "other:key")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                app.execute_command(*command)
        admin = connect(server.url)
        # DEBUG is off for everyone (enable-debug-command); the ACL would refuse it anyway.
        assert "no permissions" in admin.execute_command(
            "ACL", "DRYRUN", "pushpilot-app", "DEBUG", "SLEEP", "0")
        assert admin.get("pp:{t}:probe") == "1", "nothing was flushed"


def test_the_passwords_are_kept_across_a_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        passwords = (urlsplit(server.url).password, urlsplit(server.app_url).password)
        connect(server.app_url).set("pp:{t}:probe", "kept")
    with EmbeddedRedis(tmp_path) as server:
        assert (urlsplit(server.url).password, urlsplit(server.app_url).password) == passwords
        assert connect(server.app_url).get("pp:{t}:probe") == "kept"
    assert stat.S_IMODE(os.stat(tmp_path / "valkey" / "credentials.json").st_mode) == 0o600


def _modes(root: Path) -> dict[str, str]:
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def test_the_data_dir_is_0700_and_its_files_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(data_dir)}
    # The commands a newcomer runs first: they start the embedded Valkey (AOF, log), write the
    # CLI's log and create the MLflow store.
    for args in (["tenant", "create", "bank"], ["model", "list", "--tenant", "bank"]):
        done = subprocess.run([sys.executable, "-m", "serving.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
    listing = subprocess.run(["ls", "-lR", str(data_dir)], capture_output=True, text=True).stdout
    print(listing)
    modes = _modes(data_dir)
    wrong = {name: mode for name, mode in modes.items()
             if mode != ("0o700" if (data_dir / name).is_dir() else "0o600")}
    assert not wrong, f"want folders 0700 and files 0600, got {wrong}\n{listing}"
    for name in ("mlflow.db", "logs/pushpilot.log", "valkey/users.acl", "valkey/credentials.json",
                 "valkey/valkey.log", "valkey/appendonlydir"):
        assert name in modes, f"{name} missing from {sorted(modes)}"
    assert any(name.endswith(".aof") for name in modes)
