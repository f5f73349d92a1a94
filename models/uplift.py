"""Uplift models: who responds *because of* a push, learnt from a randomised campaign log."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from models.metrics import qini_auc
from models.tabular import TableModel

__all__ = ["LEARNERS", "TwoModelUplift", "ClassTransformationUplift", "UpliftModel"]

LEARNERS: tuple[str, ...] = ("two_model", "class_transformation")


def _default_learner(random_state: Any, n_threads: int | None) -> TableModel:
    # The uplift signal is a small difference of two rates, so leaves are kept larger and
    # steps smaller than for plain propensity, which would fit noise.
    return TableModel(
        learning_rate=0.05,
        max_leaf_nodes=15,
        min_samples_leaf=50,
        random_state=random_state,
        n_threads=n_threads,
    )


def _check_log(
    X: ArrayLike | pd.DataFrame, y: ArrayLike, treatment: ArrayLike
) -> tuple[Any, NDArray[np.int64], NDArray[np.bool_]]:
    y_arr = np.asarray(y).ravel()
    t_arr = np.asarray(treatment).ravel()
    n_rows = len(X)  # type: ignore[arg-type]
    if not n_rows == y_arr.shape[0] == t_arr.shape[0]:
        raise ValueError(
            f"X, y and treatment must have the same number of rows, got {n_rows}, "
            f"{y_arr.shape[0]} and {t_arr.shape[0]}"
        )
    for name, values in (("y", y_arr), ("treatment", t_arr)):
        labels = set(np.unique(values).tolist())
        if not labels <= {0, 1}:
            raise ValueError(f"{name} must hold 0/1 values, got {sorted(labels, key=str)[:5]}")
    t_bool = t_arr.astype(bool)
    for group, mask in (("treated", t_bool), ("control", ~t_bool)):
        if len(np.unique(y_arr[mask])) < 2:
            raise ValueError(
                f"the {group} group needs both responders and non-responders, got "
                f"{int(mask.sum())} rows with outcome(s) {sorted(set(y_arr[mask].tolist()))}; "
                "an uplift model needs a randomised log with both"
            )
    return X, y_arr.astype(np.int64), t_bool


def _rows(X: Any, mask: NDArray[np.bool_]) -> Any:
    return X.loc[mask] if isinstance(X, pd.DataFrame) else np.asarray(X)[mask]


class TwoModelUplift(BaseEstimator):
    """Two-model (T-learner) uplift: one response model per group, uplift is their difference.

    Parameters
    ----------
    estimator : classifier or None, default=None
        Response model fitted once on the treated and once on the control rows; None uses
        a :class:`~models.tabular.TableModel` tuned for uplift.
    random_state : int or None, default=None
        Seed of the default estimator.
    n_threads : int or None, default=None
        OpenMP threads of the default estimator.

    Attributes
    ----------
    treated_model_ : classifier
        Response model of the treated rows.
    control_model_ : classifier
        Response model of the control rows.
    """

    def __init__(
        self, estimator: Any = None, random_state: int | None = None, n_threads: int | None = None
    ):
        self.estimator = estimator
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(self, X: ArrayLike | pd.DataFrame, y: ArrayLike, treatment: ArrayLike) -> TwoModelUplift:
        """Fit both response models.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)
        y : array-like of shape (n_users,)
            1 for a response, 0 otherwise.
        treatment : array-like of shape (n_users,)
            1 for users who got the push, 0 for the randomised control group.

        Returns
        -------
        self : TwoModelUplift
        """
        X, y_arr, t_bool = _check_log(X, y, treatment)
        base = self.estimator or _default_learner(self.random_state, self.n_threads)
        self.treated_model_ = clone(base).fit(_rows(X, t_bool), y_arr[t_bool])
        self.control_model_ = clone(base).fit(_rows(X, ~t_bool), y_arr[~t_bool])
        return self

    def predict_response(self, X: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
        """Probability of a response if pushed.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        check_is_fitted(self)
        return self.treated_model_.predict_proba(X)[:, 1]  # type: ignore[no-any-return]

    def predict(self, X: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
        """Uplift: response probability if pushed minus if not.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        check_is_fitted(self)
        return self.predict_response(X) - self.control_model_.predict_proba(X)[:, 1]


class ClassTransformationUplift(BaseEstimator):
    """Class-transformation uplift (Jaskowski and Jaroszewicz, 2012): one model of
    ``z = (y == treatment)``, whose probability maps to uplift as ``2 P(z) - 1``.

    That identity holds when the treated and control groups weigh the same, so rows are
    weighted to give each group half of the total weight whatever the treated share was.

    Parameters
    ----------
    estimator : classifier or None, default=None
        Model of ``z``; it must accept ``sample_weight``. None uses a
        :class:`~models.tabular.TableModel` tuned for uplift.
    random_state : int or None, default=None
        Seed of the default estimator.
    n_threads : int or None, default=None
        OpenMP threads of the default estimator.

    Attributes
    ----------
    model_ : classifier
        The fitted model of the transformed class.
    """

    def __init__(
        self, estimator: Any = None, random_state: int | None = None, n_threads: int | None = None
    ):
        self.estimator = estimator
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(
        self, X: ArrayLike | pd.DataFrame, y: ArrayLike, treatment: ArrayLike
    ) -> ClassTransformationUplift:
        """Fit the model of the transformed class.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)
        y : array-like of shape (n_users,)
            1 for a response, 0 otherwise.
        treatment : array-like of shape (n_users,)
            1 for users who got the push, 0 for the randomised control group.

        Returns
        -------
        self : ClassTransformationUplift
        """
        X, y_arr, t_bool = _check_log(X, y, treatment)
        z = (y_arr == t_bool.astype(np.int64)).astype(np.int64)
        treated_share = t_bool.mean()
        weight = np.where(t_bool, 0.5 / treated_share, 0.5 / (1.0 - treated_share))
        base = self.estimator or _default_learner(self.random_state, self.n_threads)
        self.model_ = clone(base).fit(X, z, sample_weight=weight)
        return self

    def predict(self, X: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
        """Uplift, ``2 P(z = 1) - 1``.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        check_is_fitted(self)
        return 2.0 * self.model_.predict_proba(X)[:, 1] - 1.0  # type: ignore[no-any-return]


class UpliftModel(BaseEstimator):
    """The uplift learner that ranks a validation split best, refitted on the whole log.

    Each learner in ``learners`` is fitted on ``1 - validation_fraction`` of the rows and
    scored by Qini AUC (:func:`models.metrics.qini_auc`) on the rest; the winner is then
    fitted on every row. The split is stratified on outcome and treatment together.

    Parameters
    ----------
    learners : tuple of str, default=("two_model", "class_transformation")
        Candidates, from :data:`LEARNERS`.
    validation_fraction : float, default=0.3
        Share of rows held out to choose the learner.
    random_state : int or None, default=None
        Seed of the split and of the learners.
    n_threads : int or None, default=None
        OpenMP threads of the learners.

    Attributes
    ----------
    learner_ : str
        Name of the chosen learner.
    validation_scores_ : dict of str to float
        Qini AUC of each candidate on the validation split.
    estimator_ : TwoModelUplift or ClassTransformationUplift
        The chosen learner, fitted on every row.
    response_model_ : TableModel
        Probability of a response if pushed, fitted on the treated rows.
    """

    def __init__(
        self,
        learners: tuple[str, ...] = LEARNERS,
        validation_fraction: float = 0.3,
        random_state: int | None = None,
        n_threads: int | None = None,
    ):
        self.learners = learners
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.n_threads = n_threads

    def _make(self, name: str) -> TwoModelUplift | ClassTransformationUplift:
        if name == "two_model":
            return TwoModelUplift(random_state=self.random_state, n_threads=self.n_threads)
        return ClassTransformationUplift(random_state=self.random_state, n_threads=self.n_threads)

    def fit(self, X: ArrayLike | pd.DataFrame, y: ArrayLike, treatment: ArrayLike) -> UpliftModel:
        """Choose a learner on a validation split, then fit it on every row.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)
        y : array-like of shape (n_users,)
            1 for a response, 0 otherwise.
        treatment : array-like of shape (n_users,)
            1 for users who got the push, 0 for the randomised control group.

        Returns
        -------
        self : UpliftModel
        """
        unknown = [name for name in self.learners if name not in LEARNERS]
        if not self.learners or unknown:
            raise ValueError(
                f"learners must be a non-empty tuple drawn from {LEARNERS}, got {self.learners!r}"
            )
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        X, y_arr, t_bool = _check_log(X, y, treatment)
        self.validation_scores_: dict[str, float] = {}
        if len(self.learners) == 1:
            self.learner_ = self.learners[0]
        else:
            rows = np.arange(y_arr.shape[0])
            fit_rows, val_rows = train_test_split(
                rows,
                test_size=self.validation_fraction,
                stratify=y_arr * 2 + t_bool,
                random_state=self.random_state,
            )
            fit_mask = np.isin(rows, fit_rows)
            for name in self.learners:
                candidate = self._make(name).fit(
                    _rows(X, fit_mask), y_arr[fit_mask], t_bool[fit_mask]
                )
                self.validation_scores_[name] = qini_auc(
                    y_arr[~fit_mask], t_bool[~fit_mask], candidate.predict(_rows(X, ~fit_mask))
                )
            self.learner_ = max(self.validation_scores_, key=self.validation_scores_.__getitem__)
        self.estimator_ = self._make(self.learner_).fit(X, y_arr, t_bool)
        if isinstance(self.estimator_, TwoModelUplift):
            self.response_model_ = self.estimator_.treated_model_
        else:
            self.response_model_ = _default_learner(self.random_state, self.n_threads).fit(
                _rows(X, t_bool), y_arr[t_bool]
            )
        return self

    def predict(self, X: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
        """Uplift per user: the extra response probability a push causes.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        check_is_fitted(self)
        return self.estimator_.predict(X)

    def predict_response(self, X: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
        """Probability of a response if pushed.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        check_is_fitted(self)
        return self.response_model_.predict_proba(X)[:, 1]  # type: ignore[no-any-return]
