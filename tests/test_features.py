import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from pipeline.errors import InvalidInputError
from pipeline.features import (
    BEHAVIOUR_COLUMNS,
    FEATURE_COLUMNS,
    NO_ACTIVITY_DAYS,
    behaviour_features,
    best_send_hour,
    build_features,
    build_labels,
)
from pipeline.generator import GeneratedTenant, generate_tenant

CUTOFF = pd.Timestamp("2025-01-29", tz="UTC")


@pytest.fixture(scope="module")
def shop() -> GeneratedTenant:
    return generate_tenant("shop-a", users=2000, days=28, seed=11)


def _events(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "event_time": pd.to_datetime([r[1] for r in rows], utc=True, format="ISO8601"),
            "event_type": [r[2] for r in rows],
            "value": [r[3] for r in rows],
        }
    )


def test_features_are_floats_in_the_stable_column_order(shop):
    features = build_features(shop.events, shop.cutoff)
    assert tuple(features.columns) == FEATURE_COLUMNS
    assert features.index.name == "user_id"
    assert (features.dtypes == np.float64).all()
    assert not features.isna().any().any()


def test_events_after_the_cutoff_change_nothing(shop):
    before = build_features(shop.events, shop.cutoff)
    future = shop.events[shop.events["event_time"] > shop.cutoff]
    stranger = future.head(50).assign(user_id="newcomer")
    doubled = pd.concat([shop.events, future, stranger], ignore_index=True)
    pd.testing.assert_frame_equal(build_features(doubled, shop.cutoff), before)
    pd.testing.assert_frame_equal(
        behaviour_features(doubled, shop.cutoff), behaviour_features(shop.events, shop.cutoff)
    )


def test_recency_counts_and_money_from_a_hand_built_history():
    events = _events(
        [
            ("a", "2024-12-31 10:00", "session_start", np.nan),
            ("a", "2025-01-20 10:00", "session_start", np.nan),
            ("a", "2025-01-20 10:01", "add_to_cart", np.nan),
            ("a", "2025-01-20 10:05", "purchase", 30.0),
            ("a", "2025-01-27 12:00", "session_start", np.nan),
            ("a", "2025-01-28 12:00", "push_sent", np.nan),
            ("a", "2025-01-28 12:10", "push_open", np.nan),
            ("a", "2025-01-28 23:59", "push_sent", np.nan),
            ("b", "2025-01-28 00:00", "view", np.nan),
            ("a", "2025-02-01 00:00", "purchase", 99.0),
        ]
    )
    features = build_features(events, CUTOFF)
    a, b = features.loc["a"], features.loc["b"]
    assert a["days_since_last_event"] == pytest.approx(1 / 60 / 24)
    assert a["days_since_last_purchase"] == pytest.approx(8 + 13 / 24 + 55 / 60 / 24)
    assert a["purchases_total"] == 1 and a["monetary_total"] == 30.0
    assert a["events_7d"] == 4 and a["events_28d"] == 7
    assert a["sessions_7d"] == 1 and a["sessions_28d"] == 2  # 31 Dec is beyond 28 days
    assert a["push_open_rate"] == 0.5
    assert a["purchases_per_cart"] == 1.0
    assert a["active_days_28d"] == 3
    assert b["days_since_last_purchase"] == NO_ACTIVITY_DAYS
    assert b["push_open_rate"] == 0.0
    assert b["mean_gap_hours"] == NO_ACTIVITY_DAYS * 24 and b["std_gap_hours"] == 0.0
    assert b["trend_7d_vs_21d"] == 1.0
    assert b["share_night"] == 1.0


def test_users_without_events_get_never_active_values():
    events = _events([("a", "2025-01-28 10:00", "view", np.nan)])
    features = build_features(events, CUTOFF, users=pd.Index(["a", "ghost"]))
    assert list(features.index) == ["a", "ghost"]
    ghost = features.loc["ghost"]
    assert ghost["days_since_last_event"] == NO_ACTIVITY_DAYS
    assert ghost["events_28d"] == 0 and ghost["push_open_rate"] == 0
    assert ghost["trend_7d_vs_21d"] == 0.5


def test_part_of_day_shares_follow_the_users_time_zone():
    events = _events([("a", "2025-01-28 02:00", "view", np.nan)])  # 21:00 in New York
    utc = build_features(events, CUTOFF)
    local = build_features(events, CUTOFF, timezones=pd.Series({"a": "America/New_York"}))
    assert utc.loc["a", "share_night"] == 1.0
    assert local.loc["a", "share_evening"] == 1.0


def test_features_need_the_event_columns():
    with pytest.raises(InvalidInputError) as caught:
        build_features(pd.DataFrame({"user_id": ["a"], "event_type": ["view"]}), CUTOFF)
    assert caught.value.field == "event_time"


def test_labels_mark_the_target_event_inside_the_horizon_only():
    events = _events(
        [
            ("at_cutoff", "2025-01-29 00:00", "purchase", 1.0),
            ("inside", "2025-01-28 09:00", "view", np.nan),
            ("inside", "2025-02-05 00:00", "purchase", 1.0),
            ("too_late", "2025-01-28 09:00", "view", np.nan),
            ("too_late", "2025-02-05 00:00:01", "purchase", 1.0),
            ("only_views", "2025-01-30 00:00", "view", np.nan),
        ]
    )
    users = pd.Index(["at_cutoff", "inside", "too_late", "only_views"])
    labels = build_labels(events, CUTOFF, horizon_days=7, users=users)
    assert labels.dtype == bool
    assert labels.to_dict() == {
        "at_cutoff": False,
        "inside": True,
        "too_late": False,
        "only_views": False,
    }
    views = build_labels(events, CUTOFF, 7, target_event="view", users=users)
    assert views["only_views"]
    assert list(build_labels(events, CUTOFF, 7).index) == ["at_cutoff", "inside", "too_late"]


def test_best_send_hour_is_in_the_users_local_time():
    rows = [("ny", f"2025-01-{day:02d} 14:20", "session_start", np.nan) for day in range(2, 9)]
    rows += [("sh", f"2025-01-{day:02d} 12:40", "session_start", np.nan) for day in range(2, 9)]
    rows += [("quiet", "2025-01-05 03:00", "session_start", np.nan)]
    zones = pd.Series(
        {
            "ny": "America/New_York",
            "sh": "Asia/Shanghai",
            "quiet": "Europe/London",
            "never": "Europe/London",
        }
    )
    hours = best_send_hour(_events(rows), CUTOFF, zones)
    assert hours.to_dict() == {"ny": 9, "sh": 20, "quiet": 19, "never": 19}
    assert hours.dtype == np.int64
    assert best_send_hour(_events(rows), CUTOFF, fallback_hour=8).to_dict() == {
        "ny": 14,
        "quiet": 8,
        "sh": 12,
    }


def test_best_send_hour_recovers_generated_habits(shop):
    zones = shop.profiles.set_index("user_id")["timezone"]
    hours = best_send_hour(shop.events, shop.cutoff, zones)
    truth = shop.truth.set_index("user_id")
    sessions = (
        shop.events[
            (shop.events["event_type"] == "session_start")
            & (shop.events["event_time"] <= shop.cutoff)
        ]
        .groupby("user_id")
        .size()
    )
    regulars = sessions.index[(sessions >= 15)].difference(truth.index[truth["is_bot"]])
    off_by = (hours[regulars] - truth.loc[regulars, "preferred_hour"]).abs()
    off_by = np.minimum(off_by, 24 - off_by)
    assert (off_by <= 1).mean() > 0.7


def test_behaviour_features_separate_bots_from_people(shop):
    behaviour = behaviour_features(shop.events, shop.cutoff)
    assert tuple(behaviour.columns) == BEHAVIOUR_COLUMNS
    is_bot = shop.truth.set_index("user_id")["is_bot"].reindex(behaviour.index)
    bots, people = behaviour[is_bot], behaviour[~is_bot]
    people_rate = people["events_per_active_minute"].quantile(0.95)
    assert bots["events_per_active_minute"].min() > people_rate
    assert bots["max_events_per_minute"].median() > 3 * people["max_events_per_minute"].median()
    assert bots["purchase_ratio"].mean() < people["purchase_ratio"].mean()
    assert behaviour["distinct_active_hours"].between(1, 24).all()
    assert behaviour["night_share"].between(0, 1).all()


def test_behaviour_features_on_a_hand_built_burst():
    start = pd.Timestamp("2025-01-10 03:00", tz="UTC")
    times = [start + pd.Timedelta(seconds=2 * i) for i in range(60)]
    events = pd.DataFrame(
        {"user_id": "bot", "event_time": times, "event_type": "view", "value": np.nan}
    )
    row = behaviour_features(events, CUTOFF).loc["bot"]
    assert row["max_events_per_minute"] == 30
    assert row["events_per_active_minute"] == 30
    assert row["gap_cv"] == pytest.approx(0.0, abs=1e-9)
    assert row["night_share"] == 1.0
    assert row["distinct_active_hours"] == 1


def test_gradient_boosting_on_the_features_predicts_purchases(shop):
    users = pd.Index(shop.profiles["user_id"])
    features = build_features(shop.events, shop.cutoff, users)
    labels = build_labels(shop.events, shop.cutoff, shop.horizon_days, users=users)
    held_out = np.random.default_rng(0).random(len(users)) < 0.3
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0)
    # One thread: on a busy 2-core machine OpenMP threads spin against each other.
    with threadpool_limits(1):
        model.fit(features[~held_out], labels[~held_out])
    auc = roc_auc_score(labels[held_out], model.predict_proba(features[held_out])[:, 1])
    print(f"held-out ROC AUC {auc:.3f}")
    assert auc > 0.7
