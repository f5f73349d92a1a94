"""The delivery benchmark behind `pushpilot bench delivery`: real processes end to end.

An enqueuer process offers pushes at ``rate`` per second (0: as fast as it can) through
``outbox.enqueue``; ``workers`` `pushpilot worker` processes deliver them; a `pushpilot gateway`
process fans inboxes out to ``clients`` WebSocket devices (InboxClient, in this process), one user
each. It reports the offered load, the achieved enqueue-to-inbox throughput, the end-to-end
latency (enqueue to device receive; enqueue to inbox write without clients), and how many pushes
were lost or received twice.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipeline import keys, tenants
from pipeline.atrest import Sealer, load_or_create_master_key, sealer_for
from pipeline.outbox import Push, enqueue, entry_content
from pipeline.redis_server import EmbeddedRedis, connect
from pipeline.tenants import Plan
from serving.loop import new_event_loop

__all__ = ["run_delivery_bench"]

_UNLIMITED = Plan(sends_per_second=10_000_000, send_burst=10_000_000, max_backlog=10_000_000)


def _user(j: int, n_tenants: int) -> tuple[str, str]:
    return f"bench-{j % n_tenants}", f"c{j}"


def _enqueuer(url: str, pushes: int, n_tenants: int, users: int, rate: float, lane: str,
              started: Any, producer: int = 0, producers: int = 1,
              key_file: str | None = None) -> None:
    """Offer pushes ``producer``, ``producer + producers``, ... at ``rate / producers`` per
    second: every 5 ms, what is due by then (in one enqueue call, so a late tick catches up);
    unpaced, batches of 1000 as fast as it goes."""
    r = connect(url)
    sealer = sealer_for(key_file) if key_file else None
    mine = range(producer, pushes, producers)
    rate = rate / producers
    with started.get_lock():
        begin = time.time()
        if not started.value:
            started.value = begin
        begin = started.value
    sent = 0
    while sent < len(mine):
        now = time.time()
        due = min(len(mine), int((now - begin) * rate) + 1) if rate > 0 else sent + 1000
        if due <= sent:
            time.sleep(0.005)
            continue
        batch = []
        for i in mine[sent : min(len(mine), due, sent + 1000)]:
            tenant_id, user_id = _user(i % users, n_tenants)
            batch.append(Push(tenant_id=tenant_id, push_id=f"b{i}", user_id=user_id, lane=lane,
                              title="bench", body="x" * 64, enqueued_at=now))
        enqueue(r, batch, batch_size=1000, sealer=sealer)
        sent += len(batch)
    r.close()


def _spawn(args: list[str], env: dict[str, str], ready: str) -> tuple[subprocess.Popen[str], str]:
    """A `pushpilot` process, once it printed its ready line (returned too)."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("pushpilot")), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if ready not in line:
        proc.kill()
        raise RuntimeError(f"`pushpilot {' '.join(args)}` did not start: {line!r}")
    return proc, line.strip()


async def _clients(url: str, tokens: list[str], expected: list[int], done: Any,
                   timeout_seconds: float) -> list[list[tuple[str, float]]]:
    from serving.client import InboxClient

    devices = [InboxClient(url, token) for token in tokens]
    for start in range(0, len(devices), 50):
        await asyncio.gather(*(d.start() for d in devices[start : start + 50]))
    done.set()  # tells the caller the devices are connected
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline and any(
        len(d.received) < n for d, n in zip(devices, expected, strict=True)
    ):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # room for a duplicate to arrive, if there were one
    for d in devices:
        await d.stop()
    return [[(m.push_id, m.latency_ms) for m in d.received] for d in devices]


def run_delivery_bench(
    redis_url: str | None, *, pushes: int, n_tenants: int, clients: int, rate: float,
    workers: int = 1, lane: str = "marketing", timeout_seconds: float = 120, producers: int = 1,
    encrypt: bool = True,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pushpilot-bench-") as tmp:
        if redis_url:
            return _run(redis_url, Path(tmp), pushes, n_tenants, clients, rate, workers, lane,
                        timeout_seconds, producers, encrypt)
        with EmbeddedRedis(Path(tmp)) as server:
            return _run(server.url, Path(tmp), pushes, n_tenants, clients, rate, workers, lane,
                        timeout_seconds, producers, encrypt)


def _seal_cost(r: Any, sealer: Sealer, tenant_id: str, n: int = 10_000) -> dict[str, float]:
    """Microseconds per push to seal, and to open, a message of the bench's size (keys cached)."""
    message = orjson.dumps({"title": "bench", "body": "x" * 64, "data": {}, "campaign_id": "",
                            "enqueued_at": time.time()}).decode()
    sealer.seal(r, tenant_id, "warm", message)
    t = time.perf_counter()
    sealed = [sealer.seal(r, tenant_id, f"s{i}", message) for i in range(n)]
    seal_s = time.perf_counter() - t
    t = time.perf_counter()
    for i, value in enumerate(sealed):
        sealer.open(r, tenant_id, f"s{i}", value)
    open_s = time.perf_counter() - t
    return {"seal_us_per_push": round(seal_s / n * 1e6, 2),
            "open_us_per_push": round(open_s / n * 1e6, 2),
            "sealed_bytes": len(sealed[0]), "plain_bytes": len(message)}


def _run(url: str, tmp: Path, pushes: int, n_tenants: int, clients: int, rate: float,
         workers: int, lane: str, timeout_seconds: float, producers: int,
         encrypt: bool) -> dict[str, Any]:
    r = connect(url)
    # The spawned worker and gateway find the same key: <their data dir>/master.key.
    key_file = str(load_or_create_master_key(tmp / "master.key").path) if encrypt else None
    sealer = sealer_for(key_file) if key_file else None
    info = r.info("server")
    result: dict[str, Any] = {
        "server": f"valkey {info['valkey_version']}" if "valkey_version" in info
        else f"redis {info.get('redis_version')}",
        "aof": r.config_get("appendfsync").get("appendfsync", "?"),
    }
    for t in range(n_tenants):
        tenant_id = f"bench-{t}"
        if tenants.tenant_exists(r, tenant_id):
            raise RuntimeError(f"tenant {tenant_id} exists on {url}; bench on an empty server")
        tenants.create_tenant(r, tenant_id, _UNLIMITED)
    users = clients or 1000
    env = {**os.environ, "PUSHPILOT_REDIS_URL": url, "PUSHPILOT_DATA_DIR": str(tmp),
           "PUSHPILOT_INBOX_MAX_LEN": str(max(1000, pushes)),
           "PUSHPILOT_ENCRYPT_AT_REST": "true" if encrypt else "false"}
    env.pop("PUSHPILOT_AT_REST_KEY_FILE", None)
    result["at_rest"] = {"encrypted": encrypt,
                         **(_seal_cost(r, sealer, "bench-0") if sealer is not None else {})}
    procs = [_spawn(["worker", "--name", f"bench-w{i}"], env, "delivering")[0]
             for i in range(workers)]
    gateway, gw_url = _spawn(["gateway", "--port", "0"], env, "listening") if clients else (
        None, "")
    gw_url = gw_url.rsplit(" ", 1)[-1]
    ctx = mp.get_context("spawn")
    started = ctx.Value("d", 0.0)
    expected = [len(range(j, pushes, users)) for j in range(clients)]
    try:
        connected = ctx.Event()
        loop = new_event_loop()
        received_task = None
        if gateway is not None:
            tokens = []
            for j in range(clients):
                tenant_id, user_id = _user(j, n_tenants)
                tokens.append(tenants.issue_user_token(tenants.tenant_secret(r, tenant_id),
                                                       tenant_id, user_id))
            received_task = loop.create_task(
                _clients(gw_url, tokens, expected, connected, timeout_seconds))
            while not connected.is_set():
                loop.run_until_complete(asyncio.sleep(0.05))
        load_before = [round(x, 2) for x in os.getloadavg()]
        server_cpu_before = _server_cpu_seconds(r)
        producer_procs = [
            ctx.Process(target=_enqueuer, args=(url, pushes, n_tenants, users, rate, lane,
                                                started, k, producers, key_file))
            for k in range(producers)
        ]
        for proc in producer_procs:
            proc.start()

        def delivered() -> int:
            pipe = r.pipeline(transaction=False)
            for t in range(n_tenants):
                pipe.hget(keys.status_counts(f"bench-{t}"), "delivered")
            return sum(int(n or 0) for n in pipe.execute())

        async def watch() -> float:
            # In a thread: a blocking Redis call in the loop would stall the devices it measures.
            deadline = time.monotonic() + timeout_seconds
            enqueue_done = None
            while await asyncio.to_thread(delivered) < pushes and time.monotonic() < deadline:
                if enqueue_done is None and not any(p.is_alive() for p in producer_procs):
                    enqueue_done = time.time()
                    result["enqueue_seconds"] = round(enqueue_done - started.value, 3)
                await asyncio.sleep(0.02)
            return time.time()

        finished = loop.run_until_complete(watch())
        for proc in producer_procs:
            proc.join(timeout=timeout_seconds)
        result.setdefault("enqueue_seconds", round(time.time() - started.value, 3))
        seconds = finished - started.value
        received = loop.run_until_complete(received_task) if received_task else None
        loop.close()
        load_after = [round(x, 2) for x in os.getloadavg()]
        result["cpu_seconds"] = {
            "workers": round(sum(_cpu_seconds(p.pid) for p in procs), 2),
            "gateway": round(_cpu_seconds(gateway.pid), 2) if gateway else 0.0,
            "bench_and_clients": round(time.process_time(), 2),
            "valkey": round(_server_cpu_seconds(r) - server_cpu_before, 2),
        }
    finally:
        for proc in [*procs, *([gateway] if gateway else [])]:
            proc.terminate()
            proc.wait(timeout=30)
    inbox_ids: Counter[str] = Counter()
    inbox_latency_ms: list[float] = []
    for u in range(users):
        tenant_id, user_id = _user(u, n_tenants)
        for entry_id, fields in r.xrange(keys.inbox_stream(tenant_id, user_id)):
            if sealer is not None:
                fields = sealer.open_fields(r, tenant_id, fields)
            inbox_ids[fields["push_id"]] += 1
            inbox_latency_ms.append(int(entry_id.split("-")[0])
                                    - entry_content(fields)["enqueued_at"] * 1000)
    n_delivered = delivered()
    r.close()
    result.update({
        "offered_rate_per_s": rate or "unpaced (as fast as the enqueuer goes)",
        "pushes": pushes, "tenants": n_tenants, "clients": clients, "workers": workers,
        "producers": producers,
        "lane": lane, "seconds": round(seconds, 3),
        "throughput_per_s": round(n_delivered / seconds) if seconds > 0 else 0,
        "enqueue_per_s": round(pushes / result["enqueue_seconds"]),
        "inbox_latency_ms": _stats(inbox_latency_ms),
        "inbox_lost": pushes - len(inbox_ids),
        "inbox_duplicated": sum(1 for n in inbox_ids.values() if n > 1),
        "load_average_before": load_before, "load_average_after": load_after,
    })
    if received is not None:
        seen = Counter(p for device in received for p, _ in device)
        result.update({
            "client_latency_ms": _stats([ms for device in received for _, ms in device]),
            "client_lost": pushes - len(seen),
            "client_duplicated": sum(1 for n in seen.values() if n > 1),
        })
    return result


def _server_cpu_seconds(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    p50, p99 = np.percentile(values_ms, [50, 99])
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1),
            "max": round(float(max(values_ms)), 1), "n": len(values_ms)}
