from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
