"""The traffic guard on a real Valkey: bursts, alerts, throttles, clearing, and bot users."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import redis

from pipeline.features import behaviour_features
from pipeline.generator import generate_tenant
from pipeline.guard import (
    clear_alert,
    flag_bots,
    is_throttled,
    list_alerts,
    observe_traffic,
    record_requests,
)

START = 1_750_000_000


def _replay(r: redis.Redis, tenant_id: str, series: str, rates: np.ndarray, start: int) -> list:
    """Record each second's requests and let the guard look every 5 s, as its loop would."""
    alerts = []
    for offset, rate in enumerate(rates):
        record_requests(r, tenant_id, series, start + offset + 0.5, int(rate))
        if offset % 5 == 4:
            alerts += [(start + offset + 1, a) for a in observe_traffic(r, tenant_id, series, start + offset + 1)]
    return alerts


def test_a_key_replaying_at_ten_times_its_rate_is_flagged_within_30_s_and_only_it(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    attacked, bystander = new_tenant_id("guard"), new_tenant_id("guard")
    rng = np.random.default_rng(7)
    normal = rng.poisson(5, 900).astype(float)
    burst_start = 600
    attack = normal.copy()
    attack[burst_start:] = rng.poisson(50, 300)

    alerts = _replay(redis_client, attacked, "key:leaked", attack, START)
    quiet = _replay(redis_client, bystander, "key:leaked", normal, START)
    other_key = _replay(redis_client, attacked, "key:backend", rng.poisson(5, 900), START)

    assert len(alerts) == 1 and not quiet and not other_key
    seen_at, alert = alerts[0]
    assert seen_at - (START + burst_start) <= 30
    assert is_throttled(redis_client, attacked, "key:leaked", seen_at)
    assert not is_throttled(redis_client, attacked, "key:backend", seen_at)
    assert not is_throttled(redis_client, bystander, "key:leaked", seen_at)
    assert list_alerts(redis_client, bystander) == []
    listed = list_alerts(redis_client, attacked)
    assert [a["id"] for a in listed] == [alert.alert_id]
    assert listed[0]["series"] == "key:leaked" and "requests/s" in listed[0]["reason"]


def test_an_operator_clears_an_alert_and_lifts_its_throttle(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tenant = new_tenant_id("guard")
    rates = np.r_[np.full(120, 4.0), np.full(20, 80.0)]
    (seen_at, alert), = _replay(redis_client, tenant, "key:a", rates, START)
    assert is_throttled(redis_client, tenant, "key:a", seen_at)
    assert clear_alert(redis_client, tenant, alert.alert_id, "ops@acme", seen_at)
    assert not is_throttled(redis_client, tenant, "key:a", seen_at)
    assert list_alerts(redis_client, tenant) == []
    assert list_alerts(redis_client, tenant, include_cleared=True)[0]["cleared_by"] == "ops@acme"
    assert not clear_alert(redis_client, tenant, "0-1", "ops@acme", seen_at)
    with pytest.raises(ValueError, match="operator"):
        clear_alert(redis_client, tenant, alert.alert_id, "", seen_at)


def test_bot_users_are_found_with_precision_and_recall_of_at_least_0_9() -> None:
    data = generate_tenant("acme", users=2000, days=28, seed=0)
    flagged = set(flag_bots(behaviour_features(data.events, data.cutoff)))
    truth = data.truth.set_index("user_id")["is_bot"] if "user_id" in data.truth else data.truth["is_bot"]
    bots = set(pd.Index(truth[truth].index))
    hits = len(flagged & bots)
    assert hits / len(flagged) >= 0.9 and hits / len(bots) >= 0.9
