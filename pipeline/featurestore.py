"""Per-tenant online features and safe profile attributes in Redis, for scoring by user id."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import redis

from pipeline import keys

__all__ = [
    "store_features",
    "load_features",
    "store_profiles",
    "load_profile",
    "feature_columns",
    "store_send_hours",
    "load_send_hours",
]

_BATCH = 5_000


def store_features(r: redis.Redis, tenant_id: str, features: pd.DataFrame) -> int:
    """Replace the tenant's online features with this frame (index user_id, numeric columns)."""
    key = keys.user_features(tenant_id)
    columns = [str(c) for c in features.columns]
    values = features.to_numpy(dtype=np.float64)
    rows = {
        str(uid): json.dumps([None if np.isnan(v) else float(v) for v in row])
        for uid, row in zip(features.index, values, strict=True)
    }
    pipe = r.pipeline(transaction=False)
    pipe.delete(key)
    pipe.hset(keys.tenant_meta(tenant_id), "feature_columns", json.dumps(columns))
    items = list(rows.items())
    for start in range(0, len(items), _BATCH):
        pipe.hset(key, mapping=dict(items[start : start + _BATCH]))
    pipe.execute()
    return len(rows)


def feature_columns(r: redis.Redis, tenant_id: str) -> list[str]:
    raw = r.hget(keys.tenant_meta(tenant_id), "feature_columns")
    return list(json.loads(raw)) if raw else []


def load_features(r: redis.Redis, tenant_id: str, user_ids: Sequence[str]) -> pd.DataFrame:
    """Features of the given users; users the tenant does not have are left out."""
    columns = feature_columns(r, tenant_id)
    raw = r.hmget(keys.user_features(tenant_id), list(user_ids)) if user_ids else []
    found = [(uid, v) for uid, v in zip(user_ids, raw, strict=True) if v is not None]
    if not found:
        return pd.DataFrame(columns=columns, dtype=np.float64)
    index = pd.Index([uid for uid, _ in found], name="user_id")
    # One json.loads for all rows is several times faster than one per user; null becomes NaN.
    data = np.array(json.loads("[" + ",".join(v for _, v in found) + "]"), dtype=np.float64)
    return pd.DataFrame(data.reshape(len(found), len(columns)), index=index, columns=columns)


def store_profiles(r: redis.Redis, tenant_id: str, profiles: pd.DataFrame) -> int:
    """Store pseudonymised, non-personal profile attributes (the caller ran the privacy step)."""
    key = keys.user_profiles(tenant_id)
    records = profiles.set_index("user_id").astype(object).where(profiles.set_index("user_id").notna(), None)
    pipe = r.pipeline(transaction=False)
    items = [(str(uid), json.dumps(row, default=str)) for uid, row in records.to_dict("index").items()]
    for start in range(0, len(items), _BATCH):
        pipe.hset(key, mapping=dict(items[start : start + _BATCH]))
    pipe.execute()
    return len(items)


def load_profile(r: redis.Redis, tenant_id: str, user_id: str) -> dict[str, object] | None:
    raw = r.hget(keys.user_profiles(tenant_id), user_id)
    return json.loads(raw) if raw else None


def store_send_hours(r: redis.Redis, tenant_id: str, hours: pd.Series) -> int:
    """Replace the tenant's best send hours (index user_id, values 0-23 local time)."""
    key = keys.send_hours(tenant_id)
    items = {str(u): int(h) for u, h in hours.items()}
    pipe = r.pipeline(transaction=False)
    pipe.delete(key)
    pairs = list(items.items())
    for start in range(0, len(pairs), _BATCH):
        pipe.hset(key, mapping=dict(pairs[start : start + _BATCH]))
    pipe.execute()
    return len(items)


def load_send_hours(r: redis.Redis, tenant_id: str, user_ids: Sequence[str]) -> dict[str, int]:
    if not user_ids:
        return {}
    raw = r.hmget(keys.send_hours(tenant_id), list(user_ids))
    return {u: int(h) for u, h in zip(user_ids, raw, strict=True) if h is not None}
