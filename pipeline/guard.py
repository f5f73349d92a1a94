"""The traffic guard's first answer: flag bot-like users and keep them out of training and targeting."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import redis

from models.anomaly import BotDetector
from pipeline import keys

__all__ = ["flag_bots", "quarantine_users", "quarantined_users", "release_users"]


def flag_bots(behaviour: pd.DataFrame, contamination: float = 0.02, random_state: int = 0) -> pd.Index:
    """Users whose behaviour an IsolationForest finds bot-like (index of user ids)."""
    if len(behaviour) < 20:
        return pd.Index([], name="user_id")
    detector = BotDetector(contamination=contamination, random_state=random_state)
    labels = detector.fit(behaviour).predict(behaviour)
    return behaviour.index[labels == -1]


def quarantine_users(r: redis.Redis, tenant_id: str, user_ids: Iterable[str], reason: str) -> int:
    """Add users to the tenant's quarantine; each keeps the reason it was put there."""
    ids = [str(u) for u in user_ids]
    if not ids:
        return 0
    r.hset(keys.quarantine(tenant_id), mapping={u: reason for u in ids})
    return len(ids)


def quarantined_users(r: redis.Redis, tenant_id: str) -> set[str]:
    return set(r.hkeys(keys.quarantine(tenant_id)))


def release_users(r: redis.Redis, tenant_id: str, user_ids: Iterable[str]) -> int:
    ids = list(user_ids)
    return int(r.hdel(keys.quarantine(tenant_id), *ids)) if ids else 0
