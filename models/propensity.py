"""Behaviour model: the propensity of a user to respond to a push, from numeric features."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted, validate_data

from models._threads import openmp_threads

__all__ = ["PropensityModel", "reason_codes"]




class PropensityModel(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees over a tenant's numeric user features.

    A thin wrapper around :class:`~sklearn.ensemble.HistGradientBoostingClassifier` with
    defaults chosen for push response data (rare positives, tens of features), which also
    keeps what :func:`reason_codes` needs to explain a score.

    Parameters
    ----------
    learning_rate : float, default=0.06
        Shrinkage of each tree's contribution.
    max_iter : int, default=300
        Maximum number of boosting iterations.
    max_leaf_nodes : int, default=31
        Maximum number of leaves per tree.
    l2_regularization : float, default=1.0
        L2 penalty on leaf values.
    early_stopping : bool, default=True
        Stop when the loss on a held-out ``validation_fraction`` of the training data has not
        improved for ``n_iter_no_change`` iterations. It is skipped when that split would not
        hold at least one sample of every class (tiny training sets).
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.
    n_iter_no_change : int, default=10
        Patience of early stopping, in iterations.
    random_state : int, RandomState instance or None, default=None
        Seed of the validation split and of the boosting.
    n_threads : int or None, default=None
        OpenMP threads for fitting and prediction; None leaves OpenMP's default (all
        cores). Set 1 when several models train side by side (Ray tasks, a busy host):
        the booster's threads spin at barriers and slow down many times over when they
        share cores.

    Attributes
    ----------
    model_ : HistGradientBoostingClassifier
        The fitted booster.
    classes_ : ndarray of shape (n_classes,)
        Class labels seen in ``fit``.
    n_iter_ : int
        Boosting iterations run, fewer than ``max_iter`` when early stopping triggered.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``fit`` got a DataFrame with string column names.
    feature_center_ : ndarray of shape (n_features_in_,)
        Mean of each feature in the training data, ignoring missing values.
    feature_scale_ : ndarray of shape (n_features_in_,)
        Standard deviation of each feature in the training data (1 where it is constant).
    feature_direction_ : ndarray of shape (n_features_in_,)
        Correlation of each feature with the model's decision function on the training
        data, in [-1, 1]; its sign says which way a feature moves the score, its size how
        much. Zero for multiclass problems, where :func:`reason_codes` does not apply.
    """

    def __init__(
        self,
        learning_rate: float = 0.06,
        max_iter: int = 300,
        max_leaf_nodes: int = 31,
        l2_regularization: float = 1.0,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        random_state: int | np.random.RandomState | None = None,
        n_threads: int | None = None,
    ):
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.n_threads = n_threads

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # the booster routes missing values itself
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike) -> PropensityModel:
        """Fit the booster.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_users, n_features)
            Numeric features; missing values are allowed.
        y : array-like of shape (n_users,)
            Outcome per user, usually 1 for a response and 0 otherwise.

        Returns
        -------
        self : PropensityModel
        """
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan")
        _, class_counts = np.unique(y, return_counts=True)
        # A stratified split needs every class in the validation part, else it raises.
        has_room_to_validate = class_counts.min() * self.validation_fraction >= 1.0
        booster = HistGradientBoostingClassifier(
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
            early_stopping=bool(self.early_stopping) and has_room_to_validate,
            validation_fraction=self.validation_fraction,
            n_iter_no_change=self.n_iter_no_change,
            random_state=self.random_state,
        )
        with openmp_threads(self.n_threads):
            self.model_ = booster.fit(X, y)
            self.classes_ = self.model_.classes_
            self.n_iter_ = self.model_.n_iter_
            self._fit_explanation(X)
        return self

    def _fit_explanation(self, X: NDArray[np.float64]) -> None:
        X = np.asarray(X, dtype=float)
        center = np.zeros(X.shape[1])
        scale = np.ones(X.shape[1])
        observed = ~np.isnan(X).all(axis=0)
        center[observed] = np.nanmean(X[:, observed], axis=0)
        spread = np.zeros(X.shape[1])
        spread[observed] = np.nanstd(X[:, observed], axis=0)
        scale[spread > 0] = spread[spread > 0]
        self.feature_center_ = center
        self.feature_scale_ = scale
        self.feature_direction_ = np.zeros(X.shape[1])
        if self.classes_.shape[0] != 2:
            return
        z = np.nan_to_num((X - center) / scale)
        score = self.model_.decision_function(X)
        score_std = score.std()
        if score_std == 0:
            return
        z_std = z.std(axis=0)
        covariance = ((z - z.mean(axis=0)) * (score - score.mean())[:, None]).mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            direction = covariance / (z_std * score_std)
        self.feature_direction_ = np.nan_to_num(np.clip(direction, -1.0, 1.0))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Most likely class per user.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        with openmp_threads(self.n_threads):
            return self.model_.predict(X)  # type: ignore[no-any-return]

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Class probabilities per user; column 1 is the propensity in the binary case.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users, n_classes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        with openmp_threads(self.n_threads):
            return self.model_.predict_proba(X)  # type: ignore[no-any-return]

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """Raw scores (log-odds in the binary case).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,) or (n_users, n_classes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        with openmp_threads(self.n_threads):
            return self.model_.decision_function(X)  # type: ignore[no-any-return]


def reason_codes(model: PropensityModel, X: ArrayLike, top: int = 3) -> list[list[str]]:
    """Name, per user, the features that push the score up the most.

    A cheap linear reading of the model, not an exact attribution: each feature is
    standardised with the training mean and deviation, then multiplied by
    ``model.feature_direction_`` (its correlation with the model's score on the training
    data). The features with the largest positive products are the reasons; a feature that
    is missing, average, or moves the score down is never a reason, so a row may get fewer
    than ``top`` reasons, or none.

    Parameters
    ----------
    model : PropensityModel
        A fitted binary model.
    X : array-like or DataFrame of shape (n_users, n_features)
        The rows to explain, with the columns the model was fitted on.
    top : int, default=3
        Maximum number of reasons per row.

    Returns
    -------
    list of length n_users of list of str
        Feature names (``x0``, ``x1``, ... when the model was fitted on an array), strongest
        reason first.
    """
    check_is_fitted(model)
    if model.classes_.shape[0] != 2:
        raise ValueError(
            f"reason_codes needs a binary model, got {model.classes_.shape[0]} classes"
        )
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    X_arr = np.asarray(
        validate_data(model, X, reset=False, ensure_all_finite="allow-nan"), dtype=float
    )
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        names = np.array([f"x{j}" for j in range(model.n_features_in_)])
    z = np.nan_to_num((X_arr - model.feature_center_) / model.feature_scale_)
    contribution = z * model.feature_direction_
    k = min(int(top), contribution.shape[1])
    order = np.argsort(-contribution, axis=1, kind="stable")[:, :k]
    return [
        [str(names[j]) for j in row_order if row_contribution[j] > 0]
        for row_order, row_contribution in zip(order, contribution, strict=True)
    ]
