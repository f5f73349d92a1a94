"""Uplift models: who responds *because of* a push, learnt from a randomised campaign log."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from models._threads import openmp_threads
from models.metrics import qini_auc
from models.tabular import LogisticTableModel, TableModel, one_standard_error_choice

__all__ = [
    "BASELINE_LEARNERS",
    "LEARNERS",
    "TwoModelUplift",
    "ClassTransformationUplift",
    "XLearnerUplift",
    "UpliftModel",
    "make_learner",
    "cross_validated_qini",
]

#: Candidate uplift learners, simplest first: class transformation and T-learner, each with the
#: regularised logistic regression and with boosting, so the strong simple learners compete;
#: then the T-learner of two default boosted models, the baseline ``model train`` prints; last
#: the X-learner, which models the imputed effects themselves, with each base learner.
LEARNERS: tuple[str, ...] = (
    "ct_logistic", "t_logistic", "ct_boost", "t_boost", "t_hgb", "x_logistic", "x_boost",
)

#: The simple uplift baselines ``model train --treatment`` prints beside ours, by the candidate
#: learner each one is (so a baseline is never a model of its own kind).
BASELINE_LEARNERS: dict[str, str] = {"logistic_ct": "ct_logistic", "hgb_t_learner": "t_hgb"}


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


class XLearnerUplift(TwoModelUplift):
    """X-learner uplift (Kuenzel, Sekhon, Bickel and Yu, 2019): a T-learner whose imputed
    effects are then modelled directly.

    Each treated user's effect is imputed as their outcome minus the control model's
    prediction, each control user's as the treated model's prediction minus their outcome; a
    regression of each set of effects on the features gives two estimates of uplift, which are
    blended by the treated share ``g`` of the log as ``g * tau_control + (1 - g) * tau_treated``.
    When one group is much smaller, its response model is the noisier one and the blend leans
    on the effects imputed from the larger group. The regressions see the features as the
    treated response model encodes them: ridge regression for
    :class:`~models.tabular.LogisticTableModel`, a boosted regression otherwise.

    Parameters
    ----------
    estimator : classifier or None, default=None
        Response model of each group, a :class:`~models.tabular.TableModel` or
        :class:`~models.tabular.LogisticTableModel`; None uses a TableModel tuned for uplift.
    random_state : int or None, default=None
        Seed of the default estimator and the boosted regressions.
    n_threads : int or None, default=None
        OpenMP threads of the boosted models.

    Attributes
    ----------
    treated_model_, control_model_ : classifier
        The response models, as in :class:`TwoModelUplift`.
    treated_effect_model_, control_effect_model_ : regressor
        Regressions of the effects imputed for the treated and the control users.
    treated_share_ : float
        Share of treated users in the log, the blend's weight on the control users' effects.
    """

    def fit(self, X: ArrayLike | pd.DataFrame, y: ArrayLike, treatment: ArrayLike) -> XLearnerUplift:
        """Fit the response models, then the regressions of the imputed effects.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)
        y : array-like of shape (n_users,)
            1 for a response, 0 otherwise.
        treatment : array-like of shape (n_users,)
            1 for users who got the push, 0 for the randomised control group.

        Returns
        -------
        self : XLearnerUplift
        """
        super().fit(X, y, treatment)
        _, y_arr, t_bool = _check_log(X, y, treatment)
        X_t, X_c = _rows(X, t_bool), _rows(X, ~t_bool)
        effect_t = y_arr[t_bool] - self.control_model_.predict_proba(X_t)[:, 1]
        effect_c = self.treated_model_.predict_proba(X_c)[:, 1] - y_arr[~t_bool]
        self.treated_share_ = float(t_bool.mean())
        with openmp_threads(self.n_threads):
            self.treated_effect_model_ = self._regressor().fit(self.treated_model_.encoded(X_t), effect_t)
            self.control_effect_model_ = self._regressor().fit(self.treated_model_.encoded(X_c), effect_c)
        return self

    def _regressor(self) -> Any:
        if isinstance(self.treated_model_, LogisticTableModel):
            return Ridge(alpha=1.0)
        categorical = getattr(self.treated_model_, "is_categorical_", None)
        base = self.estimator or _default_learner(self.random_state, self.n_threads)
        return HistGradientBoostingRegressor(
            learning_rate=getattr(base, "learning_rate", 0.05),
            max_leaf_nodes=getattr(base, "max_leaf_nodes", 15),
            min_samples_leaf=getattr(base, "min_samples_leaf", 50),
            categorical_features=categorical if categorical is not None and categorical.any() else None,
            random_state=self.random_state,
        )

    def predict(self, X: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
        """Uplift, the treated-share blend of the two effect regressions.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        check_is_fitted(self)
        features = self.treated_model_.encoded(X)
        g = self.treated_share_
        with openmp_threads(self.n_threads):
            blend = (g * self.control_effect_model_.predict(features)
                     + (1.0 - g) * self.treated_effect_model_.predict(features))
        return np.clip(blend, -1.0, 1.0)


def make_learner(name: str, random_state: int | None = None,
                 n_threads: int | None = None) -> TwoModelUplift | ClassTransformationUplift:
    """A fresh uplift learner by its name in :data:`LEARNERS`.

    ``ct_*`` are :class:`ClassTransformationUplift`, ``t_*`` are :class:`TwoModelUplift`,
    ``x_*`` are :class:`XLearnerUplift`;
    ``*_logistic`` use :class:`~models.tabular.LogisticTableModel`, ``*_boost`` the boosted
    :class:`~models.tabular.TableModel` with the larger leaves uplift needs, ``t_hgb`` the
    same booster with its default settings.
    """
    if name not in LEARNERS:
        raise ValueError(f"unknown uplift learner {name!r}; choose from {LEARNERS}")
    family, base = name.split("_", 1)
    estimator: Any
    if base == "logistic":
        estimator = LogisticTableModel()
    elif base == "hgb":
        estimator = TableModel(random_state=random_state, n_threads=n_threads)
    else:
        estimator = _default_learner(random_state, n_threads)
    if family == "ct":
        return ClassTransformationUplift(estimator=estimator)
    if family == "x":
        return XLearnerUplift(estimator=estimator, random_state=random_state, n_threads=n_threads)
    return TwoModelUplift(estimator=estimator)


def cross_validated_qini(
    candidates: dict[str, BaseEstimator],
    X: ArrayLike | pd.DataFrame,
    y: ArrayLike,
    treatment: ArrayLike,
    folds: int = 5,
    random_state: int | None = 0,
) -> dict[str, list[float]]:
    """Qini AUC of each uplift candidate on each of the same stratified k held-out folds.

    Folds are stratified on outcome and treatment together, so each held-out fold has
    treated and control responders in the log's proportions. A candidate that cannot be fitted
    or scored on some fold (a group without both outcomes) scores NaN there; when a stratum
    has fewer rows than ``folds`` every candidate gets an empty list.

    Returns
    -------
    dict of str to list of float
        One score per fold, in fold order.
    """
    X, y_arr, t_bool = _check_log(X, y, treatment)
    strata = y_arr * 2 + t_bool
    scores: dict[str, list[float]] = {name: [] for name in candidates}
    if folds < 2 or np.bincount(strata, minlength=4).min() < folds:
        return scores
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    for fit_rows, _ in splitter.split(np.zeros(len(y_arr)), strata):
        fit_mask = np.zeros(len(y_arr), dtype=bool)
        fit_mask[fit_rows] = True
        for name, candidate in candidates.items():
            try:
                fitted = clone(candidate).fit(_rows(X, fit_mask), y_arr[fit_mask], t_bool[fit_mask])
                scores[name].append(qini_auc(y_arr[~fit_mask], t_bool[~fit_mask],
                                             fitted.predict(_rows(X, ~fit_mask))))
            except ValueError:
                scores[name].append(float("nan"))
    return scores


class UpliftModel(BaseEstimator):
    """Per treatment arm, the uplift learner chosen by cross-validated Qini AUC.

    Every arm other than ``control`` is modelled against the control group on its own (arms
    are never pooled: two messages rarely move the same users). For each arm the candidates in
    ``learners`` are scored by :func:`cross_validated_qini` over ``cv_folds`` folds of that
    arm's and the control's rows; the simplest within one standard error of the best
    (:func:`one_standard_error_choice`, ``learners`` being in order of simplicity) is refitted
    on all of them. When no candidate can be cross-validated (too few responders) the first
    candidate is used.

    Parameters
    ----------
    learners : tuple of str, default=LEARNERS
        Candidates, from :data:`LEARNERS`.
    cv_folds : int, default=5
        Folds of the cross-validation that picks each arm's learner.
    control : object, default=0
        The value of ``treatment`` that marks the control group. With 0/1 (or boolean)
        treatment the one arm is ``1``.
    random_state : int or None, default=None
        Seed of the folds and of the learners.
    n_threads : int or None, default=None
        OpenMP threads of the boosted learners.

    Attributes
    ----------
    arms_ : list of str
        The treatment arms, as text, in sorted order.
    learners_ : dict of str to str
        The chosen learner per arm.
    cv_scores_ : dict of str to dict of str to float
        Mean CV Qini AUC per arm and candidate (NaN: could not be scored).
    cv_fold_scores_ : dict of str to dict of str to list of float
        The same, fold by fold.
    estimators_ : dict of str to uplift learner
        The chosen learner per arm, fitted on all of that arm's and the control's rows.
    response_models_ : dict of str to classifier
        Probability of a response if pushed with the arm, fitted on the arm's rows.
    """

    def __init__(
        self,
        learners: tuple[str, ...] = LEARNERS,
        cv_folds: int = 5,
        control: Any = 0,
        random_state: int | None = None,
        n_threads: int | None = None,
    ):
        self.learners = learners
        self.cv_folds = cv_folds
        self.control = control
        self.random_state = random_state
        self.n_threads = n_threads

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Load a model pickled before arms were modelled apart (one ``estimator_`` for 0/1
        treatment) as the one-arm model it is, so old champions still score and compare."""
        if "estimator_" in state and "estimators_" not in state:
            state = dict(state)
            estimator = state.pop("estimator_")
            response = state.pop("response_model_", None)
            learner = state.pop("learner_", type(estimator).__name__)
            state.pop("validation_scores_", None)
            state.pop("validation_fraction", None)
            state.setdefault("cv_folds", 5)
            state.setdefault("control", 0)
            state.update(arms_=["1"], learners_={"1": learner}, estimators_={"1": estimator},
                         response_models_={"1": response if response is not None
                                           else getattr(estimator, "treated_model_", None)},
                         cv_scores_={"1": {}}, cv_fold_scores_={"1": {}})
        super().__setstate__(state)

    def _arm_mask(self, treatment: NDArray[Any]) -> tuple[NDArray[np.bool_], NDArray[Any]]:
        labels = np.asarray(treatment).ravel()
        text = labels.astype(str) if labels.dtype != bool else labels.astype(int).astype(str)
        control = str(int(self.control)) if isinstance(self.control, bool) else str(self.control)
        return text == control, text

    def fit(self, X: ArrayLike | pd.DataFrame, y: ArrayLike, treatment: ArrayLike) -> UpliftModel:
        """Choose and fit one learner per arm.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)
        y : array-like of shape (n_users,)
            1 for a response, 0 otherwise.
        treatment : array-like of shape (n_users,)
            The arm each user was randomised to; ``control`` marks the control group.

        Returns
        -------
        self : UpliftModel
        """
        unknown = [name for name in self.learners if name not in LEARNERS]
        if not self.learners or unknown:
            raise ValueError(
                f"learners must be a non-empty tuple drawn from {LEARNERS}, got {self.learners!r}"
            )
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be at least 2, got {self.cv_folds!r}")
        y_arr = np.asarray(y).ravel()
        is_control, arms = self._arm_mask(np.asarray(treatment))
        if len(arms) != len(y_arr):
            raise ValueError(
                f"y and treatment must have the same number of rows, got {len(y_arr)} and {len(arms)}"
            )
        if not is_control.any():
            raise ValueError(f"control {self.control!r} never occurs in treatment")
        self.arms_ = sorted(set(arms[~is_control].tolist()))
        if not self.arms_:
            raise ValueError("treatment holds only the control group; an uplift model needs treated users")
        self.learners_: dict[str, str] = {}
        self.cv_scores_: dict[str, dict[str, float]] = {}
        self.cv_fold_scores_: dict[str, dict[str, list[float]]] = {}
        self.estimators_: dict[str, Any] = {}
        self.response_models_: dict[str, Any] = {}
        for arm in self.arms_:
            rows = is_control | (arms == arm)
            X_arm, y_arm, t_arm = _rows(X, rows), y_arr[rows], (arms[rows] == arm)
            candidates = {name: make_learner(name, self.random_state, self.n_threads)
                          for name in self.learners}
            folds = ({} if len(candidates) == 1 else cross_validated_qini(
                candidates, X_arm, y_arm, t_arm, folds=self.cv_folds, random_state=self.random_state))
            chosen = one_standard_error_choice(folds) or self.learners[0]
            scores = {name: float(np.mean(v)) if v else float("nan") for name, v in folds.items()}
            estimator = clone(candidates[chosen]).fit(X_arm, y_arm, t_arm)
            self.learners_[arm], self.cv_scores_[arm], self.estimators_[arm] = chosen, scores, estimator
            self.cv_fold_scores_[arm] = folds
            if isinstance(estimator, TwoModelUplift):
                self.response_models_[arm] = estimator.treated_model_
            else:
                self.response_models_[arm] = _default_learner(
                    self.random_state, self.n_threads).fit(_rows(X_arm, t_arm), y_arm[t_arm])
        return self

    def predict_arms(self, X: ArrayLike | pd.DataFrame) -> pd.DataFrame:
        """Uplift per user and arm, one column per arm in :attr:`arms_`.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        DataFrame of shape (n_users, n_arms), on ``X``'s index when it is a DataFrame.
        """
        check_is_fitted(self)
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame({arm: self.estimators_[arm].predict(X) for arm in self.arms_},
                            index=index, columns=self.arms_)

    def best_arm(self, X: ArrayLike | pd.DataFrame) -> NDArray[Any]:
        """The arm with the highest uplift per user.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        return self.predict_arms(X).idxmax(axis=1).to_numpy()

    def predict(self, X: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
        """Uplift per user of the best arm for them: the extra response probability it causes.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        return self.predict_arms(X).max(axis=1).to_numpy(dtype=np.float64)

    def predict_response(self, X: ArrayLike | pd.DataFrame) -> NDArray[np.float64]:
        """Probability of a response if pushed with the best arm for each user.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_users, n_features)

        Returns
        -------
        ndarray of shape (n_users,)
        """
        check_is_fitted(self)
        best = self.best_arm(X)
        out = np.empty(len(best), dtype=np.float64)
        for arm in self.arms_:
            mask = best == arm
            if mask.any():
                out[mask] = self.response_models_[arm].predict_proba(_rows(X, mask))[:, 1]
        return out
