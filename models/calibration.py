"""Calibrated probabilities: Platt or isotonic maps fitted on out-of-fold predictions, or none,
whichever has the lowest cross-validated Brier score.

The map is fitted on the out-of-fold probabilities of the learner's cross-validation and then
applied to the learner refitted on every row. This is what scikit-learn's
``CalibratedClassifierCV(ensemble=False)`` does, without fitting the learner k more times.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from models.tabular import one_standard_error_choice

__all__ = ["METHODS", "CalibratedModel", "choose_calibration", "fit_calibrator"]

METHODS: tuple[str, ...] = ("none", "platt", "isotonic")
_EPS = 1e-6


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(q / (1.0 - q)).reshape(-1, 1)


def fit_calibrator(method: str, p: ArrayLike, y: ArrayLike) -> Any:
    """A map from raw to calibrated probability, fitted on ``(p, y)``; None for ``"none"``.

    ``"platt"``: logistic regression on the logit of ``p`` (Platt, 1999), which keeps the
    ranking. ``"isotonic"``: a monotone step function (Zadrozny and Elkan, 2002), which is
    more flexible but may tie scores and needs more rows.
    """
    p_arr, y_arr = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y).ravel().astype(int)
    if method == "none":
        return None
    if method == "platt":
        return LogisticRegression(C=1e6, max_iter=1000).fit(_logit(p_arr), y_arr)
    if method == "isotonic":
        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_arr, y_arr)
    raise ValueError(f"unknown calibration {method!r}; choose from {METHODS}")


def _apply(calibrator: Any, p: NDArray[np.float64]) -> NDArray[np.float64]:
    if calibrator is None:
        return p
    if isinstance(calibrator, IsotonicRegression):
        return np.asarray(calibrator.predict(p), dtype=np.float64)
    return np.asarray(calibrator.predict_proba(_logit(p))[:, 1], dtype=np.float64)


def choose_calibration(
    p: ArrayLike, y: ArrayLike, folds: int = 5, random_state: int = 0
) -> tuple[str, dict[str, float]]:
    """The simplest method in :data:`METHODS` (none, then Platt, then isotonic) whose Brier
    score over k folds of the out-of-fold predictions ``p`` (each map fitted on the other
    folds) is within one standard error of the best (:func:`one_standard_error_choice`): a
    map must help by more than the noise to be used. ``"none"`` when a class has fewer rows
    than ``folds``.

    Returns
    -------
    (method, {method: mean CV Brier score})
    """
    p_arr, y_arr = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y).ravel().astype(int)
    if np.bincount(y_arr, minlength=2).min() < folds:
        return "none", {}
    scores: dict[str, list[float]] = {m: [] for m in METHODS}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    for fit_rows, test_rows in splitter.split(p_arr.reshape(-1, 1), y_arr):
        for method in METHODS:
            calibrator = fit_calibrator(method, p_arr[fit_rows], y_arr[fit_rows])
            q = _apply(calibrator, p_arr[test_rows])
            scores[method].append(float(np.mean((q - y_arr[test_rows]) ** 2)))
    means = {m: float(np.mean(v)) for m, v in scores.items()}
    chosen = one_standard_error_choice({m: [-b for b in v] for m, v in scores.items()})
    return chosen or "none", means


class CalibratedModel(ClassifierMixin, BaseEstimator):
    """A fitted binary classifier whose class-1 probability passes through a fitted map.

    Parameters
    ----------
    estimator : fitted classifier
        Its ``predict_proba`` gives the raw probability.
    method : str
        The name of the map, from :data:`METHODS`.
    calibrator : object or None
        From :func:`fit_calibrator`.
    """

    def __init__(self, estimator: Any, method: str, calibrator: Any):
        self.estimator = estimator
        self.method = method
        self.calibrator = calibrator

    @property
    def estimator_(self) -> Any:
        """The wrapped classifier (where its fitted column names are found)."""
        return self.estimator

    @property
    def classes_(self) -> NDArray[Any]:
        return self.estimator.classes_  # type: ignore[no-any-return]

    def fit(self, X: Any, y: Any) -> CalibratedModel:
        raise TypeError("CalibratedModel wraps a fitted classifier; build it with a fitted map")

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """Calibrated probabilities of both classes, shape (n_rows, 2)."""
        q = _apply(self.calibrator, self.estimator.predict_proba(X)[:, 1])
        return np.column_stack([1.0 - q, q])

    def predict(self, X: Any) -> NDArray[Any]:
        """The class whose calibrated probability is at least one half."""
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]  # type: ignore[no-any-return]
