"""Issue 8: the same campaign job runs unchanged on a two-node Ray cluster started with `ray start`.

Both nodes run on this machine under a private temp dir and token auth. The job is the real
`pushpilot campaign run` in a subprocess, joined to the cluster by PUSHPILOT_RAY_ADDRESS, so
it never meets the Ray this pytest process may run for other tests.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from test_campaigns_run import outbox_users, prepare, spec_text

from models.registry import ModelRegistry
from pipeline import keys
from pipeline.atrest import sealer_for
from pipeline.campaigns import parse_spec, save_campaign
from pipeline.config import Settings
from pipeline.redis_server import EmbeddedRedis

pytestmark = pytest.mark.slow

_RAY = Path(sys.executable).with_name("ray")
_PUSHPILOT = Path(sys.executable).with_name("pushpilot")
_STARTED = "Ray runtime started."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/pid/stat), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(roots: list[int]) -> dict[int, str]:
    """Every live process below ``roots``, as pid -> start time (so a reused pid is never hit)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            started = _start_time(child)
            if started is not None and child not in found:
                found[child] = started
                todo.append(child)
    return found


@dataclass
class RayCluster:
    address: str
    env: dict[str, str]
    temp_dir: Path
    starters: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_node(self, *args: str) -> None:
        log = self.temp_dir / f"node{len(self.starters)}.log"
        # --block keeps `ray start` in the foreground as the parent of the node's processes;
        # its own session makes it the leader of a process group we alone own.
        with log.open("wb") as out:
            self.starters.append(subprocess.Popen(
                [str(_RAY), "start", *args, "--block", "--node-ip-address=127.0.0.1",
                 "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                 f"--dashboard-agent-listen-port={_free_port()}",
                 f"--dashboard-agent-grpc-port={_free_port()}",
                 f"--metrics-export-port={_free_port()}"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 90
        while _STARTED not in log.read_text(errors="replace"):
            if self.starters[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def node_ids(self) -> set[str]:
        status = subprocess.run([str(_RAY), "status", f"--address={self.address}"], env=self.env,
                                capture_output=True, text=True, timeout=60)
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return set(re.findall(r"node_([0-9a-f]+)", active))

    def stop(self) -> None:
        """`ray stop --force`, scoped to this cluster.

        `ray stop` cannot be scoped: it kills every Ray process of the machine, the pytest
        session's own Ray and other engineers' clusters included. Instead we SIGKILL exactly
        what we started: the process group of each `ray start --block` (GCS, raylet, monitor,
        agents) and every process found below those starters first, which covers the Ray
        workers the raylets put in groups of their own. Each pid is killed only while its
        start time still matches, so a pid reused in between is left alone.
        """
        below = _descendants([p.pid for p in self.starters])
        for starter in self.starters:
            try:
                os.killpg(starter.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid, started in below.items():
            if _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for starter in self.starters:
            starter.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_start_time(pid) == started for pid, started in below.items()):
            if time.monotonic() > deadline:
                raise RuntimeError("Ray processes of the test cluster survived SIGKILL")
            time.sleep(0.2)


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    """A head and a second node, each with one CPU, on this machine.

    Ray 2.60 resolves --node-ip-address=127.0.0.1 to the machine's routable address and its
    GCS and raylets listen on every interface, whatever the flags; so the cluster gets a random
    auth token of its own (RAY_AUTH_MODE=token), and nothing without it can join or submit.
    """
    port = _free_port()
    # Short: Ray's Unix socket paths live under it and must stay under 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ppray-", dir="/tmp"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PUSHPILOT_"))},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = RayCluster(address=f"127.0.0.1:{port}", env=env, temp_dir=temp_dir)
    try:
        cluster.start_node("--head", f"--port={port}", "--include-dashboard=false",
                           "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}",
                           f"--ray-client-server-port={_free_port()}")
        cluster.start_node(f"--address={cluster.address}")
        deadline = time.monotonic() + 60
        while len(cluster.node_ids()) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the second Ray node never joined the head")
            time.sleep(1)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_campaign_run_on_a_two_node_cluster_uses_both_nodes_and_sends_each_user_once(
    ray_cluster: RayCluster, settings: Settings, redis_server: EmbeddedRedis,
    redis_client: redis.Redis, registry: ModelRegistry, new_tenant_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    tenant_id = new_tenant_id("ray2")
    prepare(redis_client, registry, tenant_id, users=4000, seed=11)
    save_campaign(redis_client, parse_spec(spec_text(tenant_id, selection="{threshold: 0.0}",
                                                     holdout="10")))
    env = {**ray_cluster.env, "PUSHPILOT_RAY_ADDRESS": ray_cluster.address,
           "PUSHPILOT_REDIS_URL": redis_server.url, "PUSHPILOT_DATA_DIR": str(settings.data_dir)}

    started = time.perf_counter()
    done = subprocess.run(
        [str(_PUSHPILOT), "campaign", "run", "spring", "--tenant", tenant_id, "--run-id", "c1",
         "--partition-size", "1000"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    out = json.loads("\n".join(lines[lines.index("{"):]))
    print(f"nodes {out['nodes']}, {out['partitions']} partitions, {seconds:.1f}s: {out}")

    assert out["partitions"] == 4
    assert len(out["nodes"]) == 2 and set(out["nodes"]) == ray_cluster.node_ids()
    run = redis_client.hgetall(keys.campaign_run(tenant_id, "spring", "c1"))
    assert run["status"] == "done"
    arms = redis_client.hgetall(keys.campaign_arms(tenant_id, "spring", "c1"))
    treated = {u for u, arm in arms.items() if arm in ("a", "b")}
    # The CLI stores its pushes encrypted (the default) under the data directory's master key.
    sent = outbox_users(redis_client, tenant_id, "spring", sealer_for(settings.at_rest_key_path))
    assert out["selected"] == len(arms) == out["eligible"] == 4000
    assert set(sent) == treated and set(sent.values()) == {1}
    assert out["sent"] == out["accepted_now"] == len(treated) > 3000
