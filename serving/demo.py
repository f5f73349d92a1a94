"""`pushpilot demo`: two tenants, end to end, on the embedded defaults."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import redis
from tqdm import tqdm

from models.registry import ModelRegistry
from pipeline import outbox, receipts, tenants
from pipeline.atrest import sealer_for
from pipeline.config import Settings
from pipeline.delivery import DeliveryWorker
from pipeline.features import (
    FEATURE_COLUMNS,
    behaviour_features,
    best_send_hour,
    build_features,
)
from pipeline.featurestore import store_features, store_profiles, store_send_hours
from pipeline.generator import GeneratedTenant, generate_tenant, write_tenant
from pipeline.guard import flag_bots, quarantine_users, quarantined_users
from pipeline.privacy import anonymize_table, record_audit, tenant_policy
from pipeline.redis_server import connect, redis_url_for
from pipeline.targeting import select_top_k
from pipeline.training import train_propensity
from serving.app import start_serve, stop_serve
from serving.args import ServingArgs
from serving.client import InboxClient

__all__ = ["run_demo", "prepare_tenant", "report_json"]

log = logging.getLogger(__name__)

DEMO_TENANTS = (("demo-shop", 11), ("demo-bank", 23))
_SCORE_BATCH = 500


def prepare_tenant(
    r: redis.Redis,
    registry: ModelRegistry,
    data: GeneratedTenant,
) -> dict[str, Any]:
    """The batch half of the path: privacy, guard, features, training, online features."""
    tenant_id = data.tenant_id
    secret = tenants.tenant_secret(r, tenant_id)
    safe_profiles, audit = anonymize_table(data.profiles, secret, tenant_policy(r, tenant_id))
    record_audit(r, tenant_id, audit, source="prepare_tenant", rows=len(data.profiles))
    store_profiles(r, tenant_id, safe_profiles)

    behaviour = behaviour_features(data.events, data.cutoff)
    bots = flag_bots(behaviour)
    quarantine_users(r, tenant_id, bots, reason="bot-like behaviour (IsolationForest)")

    result = train_propensity(
        tenant_id, data.events, cutoff=data.cutoff, horizon_days=data.horizon_days,
        registry=registry, exclude_users=bots,
    )
    # Score at the end of the data: what the model sees about each user today.
    now = data.events["event_time"].max()
    users = pd.Index(data.profiles["user_id"].astype(str), name="user_id")
    store_features(r, tenant_id, build_features(data.events, now, users=users)[list(FEATURE_COLUMNS)])
    timezones = data.profiles.set_index("user_id")["timezone"]
    store_send_hours(r, tenant_id, best_send_hour(data.events, now, timezones=timezones,
                                                   fallback_hour=None))
    truth_bots = set(data.truth.loc[data.truth["is_bot"], "user_id"].astype(str))
    flagged = set(map(str, bots))
    return {
        "users": len(users),
        "pii_values_pseudonymised": audit.total(),
        "roc_auc": round(result.metrics["roc_auc"], 4),
        "model_version": result.version.version,
        "model_is_champion": result.version.is_champion,
        "bots_flagged": len(flagged),
        "bots_true": len(truth_bots),
        "bots_caught": len(flagged & truth_bots),
    }


async def _score_all(client: httpx.AsyncClient, api_key: str, user_ids: list[str]) -> pd.Series:
    scores: dict[str, float] = {}
    for start in range(0, len(user_ids), _SCORE_BATCH):
        response = await client.post(
            "/v1/score", json={"user_ids": user_ids[start : start + _SCORE_BATCH]},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        response.raise_for_status()
        scores.update({s["user_id"]: s["score"] for s in response.json()["scores"]})
    return pd.Series(scores, name="score").rename_axis("user_id")


async def _deliver(
    r: redis.Redis, settings: Settings, tenant_id: str, api_key: str, user_ids: list[str],
    selected: pd.Series, campaign_id: str, secret: bytes, timeout_seconds: float = 60.0,
) -> dict[str, Any]:
    ws_url = settings.inbox_url
    clients = {
        user_id: InboxClient(ws_url, tenants.issue_user_token(secret, tenant_id, user_id))
        for user_id in selected.index
    }
    await asyncio.gather(*(c.start() for c in clients.values()))
    pushes = [
        outbox.Push(
            tenant_id=tenant_id, push_id=outbox.make_push_id(campaign_id, user_id),
            user_id=user_id, lane="marketing", title="Picked for you",
            body="Something new you may like", campaign_id=campaign_id,
        )
        for user_id in selected.index
    ]
    push_ids = {p.push_id for p in pushes}
    outbox.enqueue(r, pushes, sealer=sealer_for(settings.at_rest_key_path,
                                                seals=settings.encrypt_at_rest))
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        got = {x.push_id for c in clients.values() for x in c.received} & push_ids
        if len(got) == len(push_ids):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # let the last acks land before counting them
    await asyncio.gather(*(c.stop() for c in clients.values()))
    received = [x for c in clients.values() for x in c.received if x.push_id in push_ids]
    latencies = np.array([x.latency_ms for x in received]) if received else np.array([np.nan])
    delivered = sum(
        1 for pid in push_ids
        if any(s["status"] == "delivered" for s in receipts.status_trail(r, tenant_id, pid) or [])
    )
    return {
        "selected": len(selected),
        "delivered": delivered,
        "received": len({x.push_id for x in received}),
        "received_duplicates": len(received) - len({x.push_id for x in received}),
        "latency_ms_p50": round(float(np.nanpercentile(latencies, 50)), 2),
        "latency_ms_p99": round(float(np.nanpercentile(latencies, 99)), 2),
    }


def run_demo(
    settings: Settings,
    *,
    users: int = 2000,
    days: int = 28,
    top_k: int = 100,
    out_dir: Path = Path("data") / "generated",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole path for two tenants and return the report (also echoed as text)."""
    started = time.monotonic()
    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    report: dict[str, Any] = {"tenants": {}}
    with redis_url_for(settings.redis_url, settings.data_dir, tls=settings.embedded_tls) as redis_url:
        r = connect(redis_url)
        keys_by_tenant: dict[str, str] = {}
        datasets: dict[str, GeneratedTenant] = {}
        for tenant_id, seed in tqdm(DEMO_TENANTS, desc="prepare tenants", unit="tenant"):
            if not tenants.tenant_exists(r, tenant_id):
                tenants.create_tenant(r, tenant_id)
            keys_by_tenant[tenant_id] = tenants.create_api_key(r, tenant_id, ["score", "push:send"])
            data = generate_tenant(tenant_id, users=users, days=days, seed=seed)
            write_tenant(data, out_dir / tenant_id)
            datasets[tenant_id] = data
            report["tenants"][tenant_id] = prepare_tenant(r, registry, data)

        echo("starting Ray Serve ...")
        args = ServingArgs.from_settings(settings, redis_url)
        stop = threading.Event()
        worker = DeliveryWorker(r, list(keys_by_tenant), consumer="demo-worker",
                                inbox_max_len=settings.inbox_max_len)
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        try:
            start_serve(settings, args)
            thread.start()

            async def online() -> None:
                async with httpx.AsyncClient(base_url=settings.http_url, timeout=60) as client:
                    for tenant_id, api_key in keys_by_tenant.items():
                        user_ids = list(datasets[tenant_id].profiles["user_id"].astype(str))
                        scores = await _score_all(client, api_key, user_ids)
                        excluded = quarantined_users(r, tenant_id)
                        selected = select_top_k(scores, top_k, exclude=excluded)
                        campaign_id = f"demo-{int(time.time())}"
                        secret = tenants.tenant_secret(r, tenant_id)
                        report["tenants"][tenant_id].update(
                            scored=len(scores),
                            **await _deliver(r, settings, tenant_id, api_key, user_ids,
                                             selected, campaign_id, secret),
                        )

            asyncio.run(online())
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(timeout=10)
            stop_serve()
            r.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    for tenant_id, figures in report["tenants"].items():
        echo(_render(tenant_id, figures))
    return report


def _render(tenant_id: str, f: dict[str, Any]) -> str:
    return "\n".join([
        f"tenant {tenant_id}",
        f"  users                     {f['users']}",
        f"  PII values pseudonymised  {f['pii_values_pseudonymised']}",
        f"  model                     v{f['model_version']} (champion: {f['model_is_champion']}), "
        f"held-out ROC AUC {f['roc_auc']:.3f}",
        f"  bots flagged              {f['bots_flagged']} ({f['bots_caught']} of {f['bots_true']} true bots)",
        f"  pushes selected           {f['selected']}",
        f"  delivered / received      {f['delivered']} / {f['received']} "
        f"(duplicates at client: {f['received_duplicates']})",
        f"  delivery latency          p50 {f['latency_ms_p50']} ms, p99 {f['latency_ms_p99']} ms",
    ])


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True)
