"""Behaviour of the learning package: estimators, reason codes, metrics, bot detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.utils.estimator_checks import parametrize_with_checks

from models.anomaly import BotDetector
from models.metrics import (
    brier,
    calibration_table,
    lift_at,
    pr_auc,
    propensity_report,
    roc_auc,
)
from models.propensity import PropensityModel, reason_codes


def _response_frame(seed: int = 0, n_users: int = 2000) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "sessions_7d": rng.poisson(3, n_users).astype(float),
            "days_since_last_event": rng.exponential(10, n_users),
            "noise": rng.normal(size=n_users),
        }
    )
    logit = -2.0 + 0.6 * X["sessions_7d"] - 0.15 * X["days_since_last_event"]
    y = (rng.random(n_users) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    return X, y


@pytest.fixture(scope="module")
def responses() -> tuple[pd.DataFrame, np.ndarray]:
    return _response_frame()


@pytest.fixture(scope="module")
def fitted(responses) -> PropensityModel:
    X, y = responses
    return PropensityModel(random_state=0, n_threads=1).fit(X.iloc[:1500], y[:1500])


# One thread and fewer trees: the contract does not depend on them, and the checks fit
# hundreds of times on a shared machine.
@parametrize_with_checks([PropensityModel(n_threads=1), BotDetector(n_estimators=50)])
def test_estimators_follow_the_scikit_learn_contract(estimator, check):
    check(estimator)


def test_propensity_model_ranks_responders_above_non_responders(responses, fitted):
    X, y = responses

    p = fitted.predict_proba(X.iloc[1500:])[:, 1]

    assert roc_auc(y[1500:], p) > 0.8
    assert list(fitted.feature_names_in_) == list(X.columns)
    assert fitted.n_iter_ < fitted.max_iter  # early stopping on a validation split


def test_propensity_model_accepts_missing_values():
    X, y = _response_frame(n_users=500)
    X.loc[::7, "days_since_last_event"] = np.nan

    p = PropensityModel(max_iter=50, random_state=0, n_threads=1).fit(X, y).predict_proba(X)[:, 1]

    assert np.isfinite(p).all()


def test_reason_codes_name_the_features_that_raise_the_score(responses, fitted):
    X, _ = responses
    model = fitted
    keen = pd.DataFrame({"sessions_7d": [12.0], "days_since_last_event": [0.0], "noise": [0.0]})
    lapsed = pd.DataFrame({"sessions_7d": [0.0], "days_since_last_event": [60.0], "noise": [0.0]})

    assert reason_codes(model, keen, top=2) == [["sessions_7d", "days_since_last_event"]]
    assert reason_codes(model, lapsed) == [[]]
    assert len(reason_codes(model, X.head(5), top=1)) == 5
    assert all(len(codes) <= 1 for codes in reason_codes(model, X, top=1))


def test_reason_codes_refuse_a_bad_top(responses, fitted):
    X, _ = responses

    with pytest.raises(ValueError, match="top must be a positive integer"):
        reason_codes(fitted, X, top=0)


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = (rng.random(1000) < 0.1).astype(int)
    p = np.clip(0.1 + 0.3 * y + rng.normal(0, 0.15, 1000), 0, 1)
    return y, p


def test_metrics_agree_with_scikit_learn(scored):
    y, p = scored

    assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p))
    assert brier(y, p) == pytest.approx(skm.brier_score_loss(y, p))


def test_lift_at_top_decile_counts_positives_among_the_highest_scores():
    y = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0] * 10)  # base rate 0.2
    p = np.where(y == 1, 0.9, 0.1)
    p[5] = 0.05  # one positive ranked last

    # the top 10 are all positives: 1.0 / 0.2
    assert lift_at(y, p, 0.1) == pytest.approx(5.0)
    assert lift_at(y, p, 1.0) == pytest.approx(1.0)


def test_calibration_table_bins_hold_equal_counts_and_match_the_data(scored):
    y, p = scored

    table = calibration_table(y, p, bins=10)

    assert list(table.columns) == [
        "bin",
        "n_users",
        "p_min",
        "p_max",
        "mean_predicted",
        "observed_rate",
    ]
    assert table["n_users"].tolist() == [100] * 10
    assert table["mean_predicted"].is_monotonic_increasing
    assert (table["n_users"] * table["observed_rate"]).sum() == pytest.approx(y.sum())


def test_propensity_report_holds_every_scalar_metric(scored):
    y, p = scored

    report = propensity_report(y, p)

    assert set(report) == {"roc_auc", "pr_auc", "lift_at_10pct", "brier", "base_rate"}
    assert report["roc_auc"] == pytest.approx(roc_auc(y, p))
    assert report["lift_at_10pct"] == pytest.approx(lift_at(y, p, 0.1))
    assert all(isinstance(v, float) for v in report.values())


@pytest.mark.parametrize(
    "metric", [roc_auc, pr_auc, lift_at, brier, calibration_table, propensity_report]
)
def test_metrics_refuse_mismatched_lengths_and_a_single_class(metric):
    with pytest.raises(ValueError, match="same length"):
        metric(np.array([0, 1, 1]), np.array([0.1, 0.9]))
    with pytest.raises(ValueError, match="single class"):
        metric(np.ones(4, dtype=int), np.full(4, 0.5))


def test_probability_metrics_refuse_scores_outside_zero_one():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        brier(np.array([0, 1]), np.array([-0.5, 2.0]))


def _behaviour_frame(
    seed: int, n_users: int = 5000, bot_share: float = 0.02
) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "events_per_active_minute": rng.lognormal(0.0, 0.5, n_users),
            "max_events_per_minute": rng.lognormal(1.5, 0.5, n_users),
            "gap_cv": rng.gamma(4, 0.3, n_users),
            "night_share": rng.beta(1.5, 8, n_users),
            "distinct_active_hours": rng.integers(1, 12, n_users).astype(float),
            "purchase_ratio": rng.beta(1, 30, n_users),
        }
    )
    n_bots = int(n_users * bot_share)
    bots = rng.choice(n_users, n_bots, replace=False)
    frame.loc[bots, "events_per_active_minute"] = rng.uniform(30, 80, n_bots)
    frame.loc[bots, "max_events_per_minute"] = rng.uniform(200, 600, n_bots)
    frame.loc[bots, "gap_cv"] = rng.uniform(0.0, 0.05, n_bots)
    frame.loc[bots, "night_share"] = rng.uniform(0.4, 0.6, n_bots)
    frame.loc[bots, "distinct_active_hours"] = 24.0
    frame.loc[bots, "purchase_ratio"] = 0.0
    is_bot = np.zeros(n_users, dtype=bool)
    is_bot[bots] = True
    return frame, is_bot


def test_bot_detector_finds_injected_bots_with_high_precision_and_recall():
    frame, is_bot = _behaviour_frame(seed=0)

    flagged = BotDetector(random_state=0).fit(frame).predict(frame) == -1

    precision = (flagged & is_bot).sum() / flagged.sum()
    recall = (flagged & is_bot).sum() / is_bot.sum()
    assert precision > 0.9
    assert recall > 0.9


def test_bot_detector_flags_new_bots_and_tolerates_missing_values():
    train, _ = _behaviour_frame(seed=1)
    detector = BotDetector(random_state=0).fit(train)
    fresh, is_bot = _behaviour_frame(seed=2, n_users=1000)
    fresh.loc[::10, "gap_cv"] = np.nan

    flagged = detector.predict(fresh) == -1

    assert flagged[is_bot].mean() > 0.9
    assert flagged[~is_bot].mean() < 0.05
    scores = detector.score_samples(fresh)
    assert scores[is_bot].max() < np.median(scores[~is_bot])
