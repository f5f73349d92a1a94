"""A scoring replica killed under steady load: requests keep succeeding and the replica returns.

The ingress deployment scores in-process (tenants' models multiplexed per replica), so its
replicas are the scorer replicas.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from pipeline import tenants
from pipeline.config import Settings
from pipeline.generator import generate_tenant
from pipeline.redis_server import EmbeddedRedis, connect
from serving.app import APP_NAME
from serving.demo import prepare_tenant

pytestmark = [pytest.mark.serve, pytest.mark.slow]


def _scorer_replicas() -> list[str]:
    return sorted(
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "#Api#" in a["name"]
    )


def _running_scorers() -> int:
    deployments = serve.status().applications[APP_NAME].deployments
    scorer = next(d for name, d in deployments.items() if name.endswith("Api"))
    return int(scorer.replica_states.get("RUNNING", 0))


def test_killing_a_scorer_replica_under_load_fails_under_one_percent(
    settings: Settings, redis_server: EmbeddedRedis, registry: Any, serve_app: str
) -> None:
    r = connect(redis_server.url)
    tid = "ha-serve"
    if not tenants.tenant_exists(r, tid):
        tenants.create_tenant(r, tid, plan=tenants.Plan(requests_per_second=10_000))
    data = generate_tenant(tid, users=300, days=21, seed=8)
    prepare_tenant(r, registry, data)
    key = tenants.create_api_key(r, tid, ["score"])
    users = list(data.profiles["user_id"].astype(str))
    assert _running_scorers() == 2
    before = _scorer_replicas()

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=serve_app, timeout=30) as client:
            i = 0
            while not stop.is_set():
                try:
                    response = client.post("/v1/score", json={"user_ids": users[i % 250 : i % 250 + 5]},
                                           headers={"Authorization": f"Bearer {key}"})
                    statuses.append(response.status_code)
                except httpx.HTTPError:
                    statuses.append(-1)
                i += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(3)
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    killed_at = time.monotonic()
    replaced = False
    while time.monotonic() - killed_at < 60:
        now = _scorer_replicas()
        if len(now) == 2 and before[0] not in now and _running_scorers() == 2:
            replaced = True
            break
        time.sleep(0.5)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    failed = sum(1 for s in statuses if s != 200)
    print(f"serve failover: {len(statuses)} requests, {failed} failed, "
          f"replaced={replaced} after {time.monotonic() - killed_at:.1f}s")
    assert replaced, "the killed scorer replica was not replaced"
    assert len(statuses) > 100
    assert failed / len(statuses) < 0.01, f"{failed} of {len(statuses)} failed"
