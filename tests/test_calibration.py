"""Calibration maps chosen by CV Brier score, and the wrapper the registry stores."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from models.calibration import CalibratedModel, choose_calibration, fit_calibrator
from models.tabular import LogisticTableModel


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.beta(1.0, 4.0, n)
    return truth, (rng.random(n) < truth).astype(int)


def test_a_distorted_score_gets_a_map_that_lowers_its_brier_on_new_rows():
    truth, y = _scores(20000, seed=0)
    distorted = truth**3  # same ranking, far too low
    method, cv = choose_calibration(distorted, y)

    assert method in ("platt", "isotonic") and cv[method] < cv["none"] - 0.005
    new_truth, new_y = _scores(20000, seed=1)
    calibrator = CalibratedModel(_Fixed(), method, fit_calibrator(method, distorted, y))
    q = calibrator.predict_proba(new_truth.reshape(-1, 1) ** 3)[:, 1]
    assert np.mean((q - new_y) ** 2) < np.mean((new_truth**3 - new_y) ** 2) - 0.005


def test_a_calibrated_score_is_left_alone_and_small_samples_are_not_mapped():
    truth, y = _scores(20000, seed=2)
    assert choose_calibration(truth, y)[0] == "none"
    assert choose_calibration(truth[:20], np.r_[np.ones(3), np.zeros(17)]) == ("none", {})
    with pytest.raises(ValueError, match="unknown calibration"):
        fit_calibrator("beta", truth, y)


def test_the_wrapper_scores_like_a_classifier_and_pickles():
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"a": rng.normal(size=500), "plan": rng.choice(["x", "y"], 500)})
    y = (rng.random(500) < 1 / (1 + np.exp(-2 * X["a"]))).astype(int)
    inner = LogisticTableModel().fit(X, y)
    model = CalibratedModel(inner, "platt", fit_calibrator("platt", inner.predict_proba(X)[:, 1], y))

    p = pickle.loads(pickle.dumps(model)).predict_proba(X)
    assert p.shape == (500, 2) and np.allclose(p.sum(axis=1), 1.0)
    assert list(model.classes_) == [0, 1] and set(model.predict(X)) <= {0, 1}
    assert model.estimator_ is inner
    with pytest.raises(TypeError, match="fitted"):
        model.fit(X, y)


class _Fixed:
    """A 'classifier' whose probability is its one input column, to test the map alone."""

    classes_ = np.array([0, 1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = np.asarray(X, dtype=np.float64)[:, 0]
        return np.column_stack([1 - p, p])
