"""Ingested events keep the online features current: the same values the batch build computes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import redis

from pipeline import tenants
from pipeline.events import ingest_events
from pipeline.features import FEATURE_COLUMNS, build_features
from pipeline.featurestore import load_feature_matrix, load_send_hours
from pipeline.generator import generate_tenant
from pipeline.onlinefeatures import events_clock, refresh_users


def _as_tuples(events: pd.DataFrame, prefix: str) -> list[tuple[str, str, float, str, float | None]]:
    return [
        (f"{prefix}-{i}", str(u), t.timestamp(), str(k), None if pd.isna(v) else float(v))
        for i, (u, t, k, v) in enumerate(
            zip(events["user_id"], events["event_time"], events["event_type"], events["value"],
                strict=True))
    ]


def test_refreshed_users_have_the_batch_features_of_their_ingested_events(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tenant_id = new_tenant_id("online")
    tenants.create_tenant(redis_client, tenant_id)
    data = generate_tenant(tenant_id, users=60, days=21, seed=3)
    events = data.events.sort_values("event_time")
    rows = _as_tuples(events, "e")
    now = pd.Timestamp("2026-01-01", tz="UTC").timestamp()
    for start in range(0, len(rows), 1000):
        ingest_events(redis_client, tenant_id, rows[start : start + 1000], now=now,
                      refresh_features=start + 1000 >= len(rows))
    clock = events_clock(redis_client, tenant_id)
    # The last batch refreshed its own users; the others are refreshed as of the same clock.
    assert refresh_users(redis_client, tenant_id, sorted(events["user_id"].unique())) > 0

    assert clock == events["event_time"].max().ceil("ms")
    users = sorted(events["user_id"].unique())
    stored = load_feature_matrix(redis_client, tenant_id, users)
    assert stored.is_known.all()
    expected = build_features(events, clock, users=pd.Index(users))[list(FEATURE_COLUMNS)]
    np.testing.assert_allclose(stored.values, expected.to_numpy(), rtol=1e-9, atol=1e-6)

    # The same events again are duplicates and change no history, so no feature either.
    assert ingest_events(redis_client, tenant_id, rows[:500], now=now) == (0, 500)
    again = load_feature_matrix(redis_client, tenant_id, users)
    np.testing.assert_array_equal(again.values, stored.values)


def test_a_new_event_changes_only_its_users_features_and_not_another_tenants(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    a, b = new_tenant_id("online-a"), new_tenant_id("online-b")
    for t in (a, b):
        tenants.create_tenant(redis_client, t)
    at = pd.Timestamp("2025-03-01T10:00:00Z").timestamp()
    ingest_events(redis_client, a, [("a1", "u1", at, "view", None), ("a2", "u2", at, "view", None)])
    ingest_events(redis_client, b, [("b1", "u1", at, "view", None)])
    before_b = load_feature_matrix(redis_client, b, ["u1", "u2"])
    before_u2 = load_feature_matrix(redis_client, a, ["u2"]).values.copy()

    ingest_events(redis_client, a, [("a3", "u1", at + 60, "purchase", 25.0)])

    after = load_feature_matrix(redis_client, a, ["u1"]).to_frame().iloc[0]
    assert after["purchases_total"] == 1 and after["monetary_total"] == 25.0
    np.testing.assert_array_equal(load_feature_matrix(redis_client, a, ["u2"]).values, before_u2)
    after_b = load_feature_matrix(redis_client, b, ["u1", "u2"])
    np.testing.assert_array_equal(after_b.values, before_b.values)
    assert after_b.is_known.tolist() == [True, False]
    assert load_send_hours(redis_client, b, ["u1"]) == {"u1": 19}
    assert refresh_users(redis_client, b, ["u1"]) == 1
