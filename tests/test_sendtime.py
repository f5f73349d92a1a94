"""Send-time optimisation scored against generated users' hidden preferred hours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import InvalidInputError
from pipeline.features import best_send_hour, tenant_send_hour
from pipeline.sendtime import evaluate_send_time, hour_hits

CUTOFF = pd.Timestamp("2025-01-29", tz="UTC")


def _sessions(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [u for u, _ in rows],
        "event_time": pd.to_datetime([t for _, t in rows], utc=True),
        "event_type": "session_start",
        "value": np.nan,
    })


def test_hits_wrap_around_midnight():
    assert hour_hits(np.array([23, 5, 12]), np.array([0, 5, 14])).tolist() == [False, True, False]
    assert hour_hits(np.array([23, 5, 12]), np.array([0, 5, 14]), within=1).tolist() == [True, True, False]


def test_sparse_users_get_the_tenants_own_hour_when_asked():
    rows = [(f"u{i}", f"2025-01-{day:02d} 08:10") for i in range(3) for day in range(2, 9)]
    rows += [("quiet", "2025-01-05 22:00")]
    events = _sessions(rows)

    assert tenant_send_hour(events, CUTOFF) == 8
    assert best_send_hour(events, CUTOFF)["quiet"] == 19
    assert best_send_hour(events, CUTOFF, fallback_hour=None)["quiet"] == 8
    assert tenant_send_hour(events.iloc[:0], CUTOFF) == 19


def test_chosen_hours_beat_the_tenants_most_common_hour_on_known_habits():
    result = evaluate_send_time(users=600, days=28, seeds=(7,), progress=False)
    print(f"send-time hit rate {result.hit_rate}, within 1h {result.hit_rate_1h}")

    ours, common = result.hit_rate["ours (best_send_hour)"], result.hit_rate["tenant's most common hour"]
    assert set(result.hit_rate) == set(result.hit_rate_1h) == {
        "ours (best_send_hour)", "ours, fixed 19h fallback", "tenant's most common hour", "fixed 19h"}
    assert ours > 2 * common and ours > 0.25
    assert all(result.hit_rate_1h[n] >= result.hit_rate[n] for n in result.hit_rate)
    assert 0.0 < result.fallback_share < 0.6
    assert [row["seed"] for row in result.per_seed] == [7.0]


def test_bad_arguments_are_refused_before_any_work():
    with pytest.raises(InvalidInputError, match="users"):
        evaluate_send_time(users=10)
    with pytest.raises(InvalidInputError, match="seeds"):
        evaluate_send_time(seeds=())
