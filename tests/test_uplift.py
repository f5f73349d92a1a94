"""Uplift: metrics on hand-made logs, and models that find persuadable users on a known truth."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from models.metrics import auuc, qini_auc, uplift_at, uplift_curve, uplift_report
from models.tabular import TableModel
from models.uplift import ClassTransformationUplift, TwoModelUplift, UpliftModel
from pipeline.features import FEATURE_COLUMNS
from pipeline.scenarios import randomised_campaign


def test_uplift_at_is_the_treated_minus_control_rate_of_the_top_share():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])
    treatment = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    score = np.arange(10)[::-1]  # rows in their given order

    assert uplift_at(y, treatment, score, 0.4) == pytest.approx(1.0 - 0.5)
    assert uplift_at(y, treatment, score, 1.0) == pytest.approx(0.6 - 0.2)


def test_a_perfect_ranking_beats_random_on_qini_and_auuc():
    rng = np.random.default_rng(0)
    n = 4000
    treatment = rng.random(n) < 0.5
    persuadable = rng.random(n) < 0.3
    y = (rng.random(n) < 0.1 + 0.4 * (persuadable & treatment)).astype(int)
    perfect = persuadable.astype(float)
    random = rng.random(n)

    report = uplift_report(y, treatment, perfect)
    # Theory for this log: about 0.042 for the perfect ranking, 0 for a random one.
    assert qini_auc(y, treatment, perfect) > 0.03 > 5 * abs(qini_auc(y, treatment, random))
    assert auuc(y, treatment, perfect) > report["auuc_random"] + 0.03
    assert report["uplift_at_30pct"] > report["ate"] + 0.2
    assert len(uplift_curve(y, treatment, perfect)) == n


def test_uplift_metrics_refuse_a_log_without_a_control_group():
    with pytest.raises(ValueError, match="both treated"):
        uplift_at([0, 1, 1], [1, 1, 1], [0.1, 0.2, 0.3])


@pytest.fixture(scope="module")
def campaign():
    scenario = randomised_campaign("shop-uplift", users=20000, seed=1)
    log = scenario.log
    X = log[list(FEATURE_COLUMNS)]
    y = log["converted"].to_numpy()
    treatment = (log["arm"] == "push").to_numpy().astype(int)
    fit_rows, test_rows = train_test_split(
        np.arange(len(y)), test_size=0.3, stratify=y * 2 + treatment, random_state=0
    )
    return scenario, X, y, treatment, fit_rows, test_rows


@pytest.mark.slow
def test_uplift_model_beats_random_and_propensity_targeting_at_30_percent(campaign):
    scenario, X, y, treatment, fit_rows, test_rows = campaign
    X_fit, X_test = X.iloc[fit_rows], X.iloc[test_rows]
    y_test, t_test = y[test_rows], treatment[test_rows]
    true_uplift = scenario.truth["true_uplift"].to_numpy()[test_rows]

    model = UpliftModel(random_state=0, n_threads=1).fit(X_fit, y[fit_rows], treatment[fit_rows])
    uplift = model.predict(X_test)
    propensity = TableModel(random_state=0, n_threads=1).fit(X_fit, y[fit_rows])
    p = propensity.predict_proba(X_test)[:, 1]

    measured = {
        "uplift": uplift_at(y_test, t_test, uplift, 0.3),
        "propensity": uplift_at(y_test, t_test, p, 0.3),
        "random": float(y_test[t_test == 1].mean() - y_test[t_test == 0].mean()),
    }
    top = int(0.3 * len(test_rows))
    truth = {
        "uplift": true_uplift[np.argsort(-uplift)[:top]].mean(),
        "propensity": true_uplift[np.argsort(-p)[:top]].mean(),
        "random": true_uplift.mean(),
    }
    print(f"uplift at 30%: measured {measured}, true {truth}, chose {model.learner_} "
          f"{model.validation_scores_}")
    assert set(model.validation_scores_) == {"two_model", "class_transformation"}
    assert measured["uplift"] > measured["random"] and measured["uplift"] > measured["propensity"]
    assert truth["uplift"] > 2 * truth["random"]
    assert truth["uplift"] > truth["propensity"] + 0.02


def test_each_learner_ranks_persuadable_users_first(campaign):
    scenario, X, y, treatment, fit_rows, test_rows = campaign
    rows = fit_rows[:8000]
    true_uplift = scenario.truth["true_uplift"].to_numpy()[test_rows]
    for learner in (TwoModelUplift(random_state=0, n_threads=1),
                    ClassTransformationUplift(random_state=0, n_threads=1)):
        learner.fit(X.iloc[rows], y[rows], treatment[rows])
        ranked = np.argsort(-learner.predict(X.iloc[test_rows]))[: len(test_rows) // 5]
        assert true_uplift[ranked].mean() > 2 * true_uplift.mean(), type(learner).__name__
