"""A synthetic audience of any size for benchmarks: features shaped like real ones, a model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.features import FEATURE_COLUMNS

__all__ = ["synthetic_features", "synthetic_labels"]

_COUNTRIES = ("US", "GB", "DE", "CN", "CA", "AU", "FR")
_ZONES = ("America/New_York", "Europe/London", "Europe/Berlin", "Asia/Shanghai",
          "America/Toronto", "Australia/Sydney", "Europe/Paris")


def synthetic_features(users: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FEATURE_COLUMNS for ``users`` users (ids ``b0000000``...), and their safe profiles."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 0.8, users)
    events_28d = rng.poisson(8 * activity).astype(np.float64)
    events_7d = rng.binomial(events_28d.astype(np.int64), 0.25).astype(np.float64)
    sessions_28d = np.ceil(events_28d / rng.uniform(2, 6, users))
    purchases = rng.poisson(0.3 * activity).astype(np.float64)
    carts = purchases + rng.poisson(0.5 * activity)
    sends = rng.poisson(4, users).astype(np.float64)
    opens = rng.binomial(sends.astype(np.int64), np.clip(0.1 * activity, 0, 0.9))
    shares = rng.dirichlet(np.ones(4), users)
    columns = {
        "days_since_last_event": np.minimum(rng.exponential(6 / activity), 365.0),
        "days_since_last_purchase": np.where(purchases > 0, rng.uniform(0, 60, users), 365.0),
        "events_7d": events_7d,
        "events_28d": events_28d,
        "sessions_7d": np.ceil(sessions_28d / 4),
        "sessions_28d": sessions_28d,
        "views_28d": np.floor(events_28d * 0.6),
        "carts_28d": carts,
        "purchases_total": purchases,
        "monetary_total": purchases * rng.lognormal(3.5, 0.6, users),
        "mean_gap_hours": rng.exponential(40 / activity),
        "std_gap_hours": rng.exponential(30 / activity),
        "trend_7d_vs_21d": np.clip(rng.normal(0.5, 0.15, users), 0, 1),
        "active_days_28d": np.minimum(sessions_28d, 28),
        "share_morning": shares[:, 0],
        "share_afternoon": shares[:, 1],
        "share_evening": shares[:, 2],
        "share_night": shares[:, 3],
        "push_sends_28d": sends,
        "push_open_rate": np.where(sends > 0, opens / np.maximum(sends, 1), 0.0),
        "purchases_per_cart": purchases / np.maximum(carts, 1),
    }
    ids = pd.Index([f"b{i:07d}" for i in range(users)], name="user_id")
    features = pd.DataFrame({c: np.round(columns[c], 4) for c in FEATURE_COLUMNS}, index=ids)
    place = rng.integers(0, len(_COUNTRIES), users)
    profiles = pd.DataFrame({
        "user_id": ids,
        "country": np.array(_COUNTRIES)[place],
        "timezone": np.array(_ZONES)[place],
    })
    return features, profiles


def synthetic_labels(features: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Whether each user buys in the next week, from a known logistic function of the features."""
    rng = np.random.default_rng([seed, 1])
    logit = (-3.0 + 0.08 * features["events_7d"] + 0.6 * np.log1p(features["purchases_total"])
             + 2.0 * features["push_open_rate"] - 0.02 * features["days_since_last_event"])
    return (rng.random(len(features)) < 1 / (1 + np.exp(-logit.to_numpy()))).astype(np.int64)
