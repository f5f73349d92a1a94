"""`pushpilot bench serve`: the endpoint under load, beside plain FastAPI and the bare model.

Three things are measured in one run, on one machine, against one tenant's champion model:
our Ray Serve app (auth, rate limit, guard, feature lookup, multiplexed batched scorer), the
same model behind a plain FastAPI + uvicorn process that does the same lookup and scoring (what
a user without Ray would run), and the model's own ``predict_proba`` rows/s (the ceiling).
"""

from __future__ import annotations

import asyncio
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

import aiohttp
import httpx
import numpy as np
import orjson
from threadpoolctl import threadpool_limits

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
    client_cpu_seconds: float = 0.0

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
            "client_cpu_share": round(self.client_cpu_seconds / self.seconds, 3),
        }


def _summary(name: str, size: int, clients: int, offered: float | None, latencies: list[float],
             errors: int, seconds: float, client_cpu_seconds: float) -> LoadResult:
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (np.nan, np.nan)
    return LoadResult(name, size, clients, offered, len(latencies), errors, seconds,
                      float(p50), float(p99), client_cpu_seconds)


def _session(base_url: str, clients: int) -> aiohttp.ClientSession:
    # aiohttp, not httpx: 0.8 ms of client CPU per 500-user request instead of 2.3 ms, and the
    # load generator shares the two cores with the servers it measures.
    return aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=clients),
                                 timeout=aiohttp.ClientTimeout(total=30))


async def _one(client: aiohttp.ClientSession, user_ids: list[str],
               headers: dict[str, str]) -> tuple[float, bool]:
    """One score request; it counts only if the answer is a 200 scoring every user asked for."""
    body = orjson.dumps({"user_ids": user_ids, "explain": False})
    started = time.perf_counter()
    try:
        async with client.post("/v1/score", data=body, headers=headers) as response:
            content = await response.read()
            ok = response.status == 200 and _is_complete(content, user_ids)
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    return (time.perf_counter() - started) * 1000.0, ok


def _is_complete(content: bytes, user_ids: list[str]) -> bool:
    # orjson parses a 500-user answer in 0.15 ms (json.loads: 0.5 ms): the load generator
    # shares the two cores with the servers it measures.
    try:
        scores = orjson.loads(content)["scores"]
        return [s["user_id"] for s in scores] == user_ids and all(
            isinstance(s["score"], float) for s in scores)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False


def run_closed_loop(name: str, base_url: str, api_key: str, user_ids: list[str], size: int,
                    clients: int, seconds: float) -> LoadResult:
    """``clients`` loops, each sending its next request when the last one is answered."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    async def main() -> LoadResult:
        latencies: list[float] = []
        errors = 0
        async with _session(base_url, clients) as client:
            await _one(client, user_ids[:size], headers)
            stop_at = time.perf_counter() + seconds

            async def loop(worker: int) -> None:
                nonlocal errors
                i = worker * 7919
                while time.perf_counter() < stop_at:
                    start = (i * size) % max(1, len(user_ids) - size)
                    ms, ok = await _one(client, user_ids[start : start + size], headers)
                    if ok:
                        latencies.append(ms)
                    else:
                        errors += 1
                    i += 1

            started, cpu_started = time.perf_counter(), time.thread_time()
            await asyncio.gather(*(loop(w) for w in range(clients)))
            elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
        return _summary(name, size, clients, None, latencies, errors, elapsed, cpu)

    return asyncio.run(main())


def run_open_loop(name: str, base_url: str, api_key: str, user_ids: list[str], size: int,
                  clients: int, rps: float, seconds: float) -> LoadResult:
    """Requests sent on a fixed schedule (``rps`` in all) whatever the answers do."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    async def main() -> LoadResult:
        latencies: list[float] = []
        errors = 0
        async with _session(base_url, clients) as client:
            await _one(client, user_ids[:size], headers)
            total = int(rps * seconds)
            interval = clients / rps
            started, cpu_started = time.perf_counter(), time.thread_time()

            async def sender(worker: int) -> None:
                nonlocal errors
                for n in range(worker, total, clients):
                    due = started + (n / clients) * interval
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    ids = user_ids[n % len(user_ids) : n % len(user_ids) + size] or user_ids[:size]
                    ms, ok = await _one(client, ids, headers)
                    if ok:
                        latencies.append(ms)
                    else:
                        errors += 1

            await asyncio.gather(*(sender(w) for w in range(clients)))
            elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
        return _summary(name, size, clients, rps, latencies, errors, elapsed, cpu)

    return asyncio.run(main())


def _rows_per_second(predict: Callable[[Any], Any], batch: Any, seconds: float) -> float:
    """Rows/s of ``predict`` on one batch, on one thread as our replicas and plain run.

    This process trained the model with OpenMP's default threads; left at that, the booster's
    threads spin against the benchmark's other processes and measure contention, not the model.
    """
    rows = 0
    with threadpool_limits(1):
        predict(batch)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            predict(batch)
            rows += len(batch)
        return rows / (time.perf_counter() - started)


def _bare_model_rows_per_second(model: Any, features: Any,
                                seconds: float = 2.0) -> dict[str, float]:
    """The model's ``predict_proba`` on a 500-row frame, and its booster on the same rows as an
    array (what our replica calls, see ``serving.scorer``) when it has one."""
    batch = features.iloc[:500]
    figures = {"frame": _rows_per_second(model.predict_proba, batch, seconds)}
    booster = getattr(model, "model_", None)
    if booster is not None:
        figures["booster_array"] = _rows_per_second(
            booster.predict_proba, batch.to_numpy(dtype=np.float64), seconds)
    return figures


def _model_shape(model: Any) -> dict[str, Any]:
    """What the scored model is, to compare with other benchmarks' models."""
    booster = getattr(model, "model_", model)
    predictors = getattr(booster, "_predictors", None)
    return {
        "estimator": type(model).__name__,
        "features": getattr(model, "n_features_in_", None),
        "trees": getattr(booster, "n_iter_", None),
        "max_leaf_nodes": getattr(booster, "max_leaf_nodes", None),
        "mean_leaves": (round(float(np.mean([p.get_n_leaf_nodes() for ps in predictors
                                              for p in ps])), 1) if predictors else None),
    }


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
                                                  "redis", "aiohttp", "orjson")}
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "load_average": [round(x, 2) for x in os.getloadavg()],
            **versions}


def bench_serve(base_url: str, new_api_key: Callable[[], str], user_ids: list[str], *,
                plain_port: int,
                redis_url: str, tracking_uri: str, artifact_root: str, tenant_id: str,
                model: Any, features: Any, seconds: float, echo: Any = print) -> dict[str, Any]:
    """Run every scenario against ours and plain; return the figures (also echoed)."""
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    echo(f"load average at start: {load_at_start}")
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
    bare = _bare_model_rows_per_second(model, features)
    echo(f"model: {_model_shape(model)}")
    echo(f"bare model predict_proba (500-row frames, 1 thread): {bare['frame']:,.0f} rows/s")
    if "booster_array" in bare:
        echo(f"its booster on 500-row arrays (1 thread): {bare['booster_array']:,.0f} rows/s")

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
        "bare_model_rows_per_second": round(bare["frame"]),
        "bare_booster_rows_per_second": (round(bare["booster_array"])
                                         if "booster_array" in bare else None),
        "model": _model_shape(model),
        "ratios": ratios,
        "one_user_p99_ms_at_50rps_16_clients": round(open_ours.p99_ms, 2),
        "best_500_user_users_per_second": round(best("ours", 500).users_per_second),
        "load_average_at_start": load_at_start,
        "environment": environment(),
    }
    echo(f"ratios ours/plain: {ratios}")
    return summary


def _row(r: LoadResult) -> str:
    offered = f"{r.offered_rps:.0f} rps" if r.offered_rps else "closed loop"
    return (f"{r.name:14s} users/req {r.users_per_request:4d} clients {r.clients:3d} "
            f"({offered:11s}): {r.rps:8.1f} req/s {r.users_per_second:10,.0f} users/s "
            f"p50 {r.p50_ms:7.2f} ms p99 {r.p99_ms:7.2f} ms errors {r.errors} "
            f"client cpu {r.client_cpu_seconds / r.seconds:4.0%}")


def default_bench_dir(data_dir: Path) -> Path:
    return data_dir / "bench"
