"""`pushpilot bench serve`: the endpoint under load, beside plain FastAPI and the bare model.

Three things are measured in one run, on one machine, against one tenant's champion model:
our Ray Serve app (auth, rate limit, guard, feature lookup, multiplexed batched scorer), the
same model behind a plain FastAPI + uvicorn process that does the same lookup and scoring (what
a user without Ray would run), and the model's own ``predict_proba`` rows/s (the ceiling).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

__all__ = ["LoadResult", "run_closed_loop", "run_open_loop", "bench_serve"]


@dataclass(frozen=True)
class LoadResult:
    name: str
    users_per_request: int
    clients: int
    offered_rps: float | None
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def users_per_second(self) -> float:
        return self.rps * self.users_per_request

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "users_per_request": self.users_per_request,
            "clients": self.clients, "offered_rps": self.offered_rps,
            "requests": self.requests, "errors": self.errors,
            "achieved_rps": round(self.rps, 1), "users_per_second": round(self.users_per_second),
            "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2),
        }


def _summary(name: str, size: int, clients: int, offered: float | None, latencies: list[float],
             errors: int, seconds: float) -> LoadResult:
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return LoadResult(name, size, clients, offered, len(latencies), errors, seconds,
                      float(np.nanpercentile(lat, 50)), float(np.nanpercentile(lat, 99)))


async def _one(client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> tuple[float, bool]:
    started = time.perf_counter()
    try:
        response = await client.post("/v1/score", content=body, headers=headers)
        ok = response.status_code == 200
    except httpx.HTTPError:
        ok = False
    return (time.perf_counter() - started) * 1000.0, ok


def run_closed_loop(name: str, base_url: str, api_key: str, user_ids: list[str], size: int,
                    clients: int, seconds: float) -> LoadResult:
    """``clients`` loops, each sending its next request when the last one is answered."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    async def main() -> LoadResult:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
            await _one(client, json.dumps({"user_ids": user_ids[:size], "explain": False}).encode(), headers)
            stop_at = time.perf_counter() + seconds

            async def loop(worker: int) -> None:
                nonlocal errors
                i = worker * 7919
                while time.perf_counter() < stop_at:
                    start = (i * size) % max(1, len(user_ids) - size)
                    body = json.dumps({"user_ids": user_ids[start : start + size],
                                       "explain": False}).encode()
                    ms, ok = await _one(client, body, headers)
                    if ok:
                        latencies.append(ms)
                    else:
                        errors += 1
                    i += 1

            started = time.perf_counter()
            await asyncio.gather(*(loop(w) for w in range(clients)))
            elapsed = time.perf_counter() - started
        return _summary(name, size, clients, None, latencies, errors, elapsed)

    return asyncio.run(main())


def run_open_loop(name: str, base_url: str, api_key: str, user_ids: list[str], size: int,
                  clients: int, rps: float, seconds: float) -> LoadResult:
    """Requests sent on a fixed schedule (``rps`` in all) whatever the answers do."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    async def main() -> LoadResult:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
            await _one(client, json.dumps({"user_ids": user_ids[:size], "explain": False}).encode(), headers)
            total = int(rps * seconds)
            interval = clients / rps
            started = time.perf_counter()

            async def sender(worker: int) -> None:
                nonlocal errors
                for n in range(worker, total, clients):
                    due = started + (n / clients) * interval
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    ids = user_ids[n % len(user_ids) : n % len(user_ids) + size] or user_ids[:size]
                    body = json.dumps({"user_ids": ids, "explain": False}).encode()
                    ms, ok = await _one(client, body, headers)
                    if ok:
                        latencies.append(ms)
                    else:
                        errors += 1

            await asyncio.gather(*(sender(w) for w in range(clients)))
            elapsed = time.perf_counter() - started
        return _summary(name, size, clients, rps, latencies, errors, elapsed)

    return asyncio.run(main())


def _bare_model_rows_per_second(model: Any, features: Any, seconds: float = 2.0) -> float:
    batch = features.iloc[:500]
    rows = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_proba(batch)
        rows += len(batch)
    return rows / (time.perf_counter() - started)


def _start_plain(redis_url: str, tracking_uri: str, artifact_root: str, tenant_id: str,
                 port: int) -> subprocess.Popen[bytes]:
    # The same thread setting our replicas get, so the comparison is of the serving stack only.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PP_PLAIN_REDIS_URL": redis_url, "PP_PLAIN_TRACKING_URI": tracking_uri,
           "PP_PLAIN_ARTIFACT_ROOT": artifact_root, "PP_PLAIN_TENANT": tenant_id}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.bench_plain:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"plain FastAPI server did not start: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]


def environment() -> dict[str, Any]:
    versions = {p: metadata.version(p) for p in ("ray", "fastapi", "uvicorn", "scikit-learn",
                                                  "redis", "httpx")}
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "load_average": [round(x, 2) for x in os.getloadavg()],
            **versions}


def bench_serve(base_url: str, new_api_key: Callable[[], str], user_ids: list[str], *,
                plain_port: int,
                redis_url: str, tracking_uri: str, artifact_root: str, tenant_id: str,
                model: Any, features: Any, seconds: float, echo: Any = print) -> dict[str, Any]:
    """Run every scenario against ours and plain; return the figures (also echoed)."""
    plain = _start_plain(redis_url, tracking_uri, artifact_root, tenant_id, plain_port)
    plain_url = f"http://127.0.0.1:{plain_port}"
    results: list[LoadResult] = []
    try:
        for size in (1, 500):
            for clients in (1, 16):
                for name, url in (("ours", base_url), ("plain_fastapi", plain_url)):
                    # A fresh key per scenario: the traffic guard would rightly call a jump
                    # from 1 to 16 clients on one key a burst.
                    result = run_closed_loop(name, url, new_api_key(), user_ids, size, clients,
                                             seconds)
                    results.append(result)
                    echo(_row(result))
        for name, url in (("ours", base_url), ("plain_fastapi", plain_url)):
            result = run_open_loop(name, url, new_api_key(), user_ids, 1, 16, 50.0, seconds * 2)
            results.append(result)
            echo(_row(result))
    finally:
        plain.terminate()
        plain.wait(timeout=10)
        if plain.stderr is not None:
            plain.stderr.close()
    ceiling = _bare_model_rows_per_second(model, features)
    echo(f"bare model predict_proba (500-row batches): {ceiling:,.0f} rows/s")

    def best(name: str, size: int) -> LoadResult:
        return max((r for r in results if r.name == name and r.users_per_request == size
                    and r.offered_rps is None), key=lambda r: r.users_per_second)

    ratios = {
        f"{size}_user_ours_over_plain": round(best("ours", size).users_per_second
                                             / best("plain_fastapi", size).users_per_second, 3)
        for size in (1, 500)
    }
    open_ours = next(r for r in results if r.name == "ours" and r.offered_rps is not None)
    summary = {
        "benchmark": "serve",
        "seconds_per_scenario": seconds,
        "results": [r.as_dict() for r in results],
        "bare_model_rows_per_second": round(ceiling),
        "ratios": ratios,
        "one_user_p99_ms_at_50rps_16_clients": round(open_ours.p99_ms, 2),
        "best_500_user_users_per_second": round(best("ours", 500).users_per_second),
        "environment": environment(),
    }
    echo(f"ratios ours/plain: {ratios}")
    return summary


def _row(r: LoadResult) -> str:
    offered = f"{r.offered_rps:.0f} rps" if r.offered_rps else "closed loop"
    return (f"{r.name:14s} users/req {r.users_per_request:4d} clients {r.clients:3d} "
            f"({offered:11s}): {r.rps:8.1f} req/s {r.users_per_second:10,.0f} users/s "
            f"p50 {r.p50_ms:7.2f} ms p99 {r.p99_ms:7.2f} ms errors {r.errors}")


def default_bench_dir(data_dir: Path) -> Path:
    return data_dir / "bench"
