"""Evaluation metrics for binary propensity scores: plain functions, arrays in, floats out."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

__all__ = [
    "roc_auc",
    "pr_auc",
    "lift_at",
    "brier",
    "calibration_table",
    "propensity_report",
    "uplift_at",
    "uplift_curve",
    "qini_auc",
    "auuc",
    "uplift_report",
]


def _check_binary(
    y: ArrayLike, p: ArrayLike, *, is_probability: bool = False
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Return ``y`` as 0/1 ints and ``p`` as floats, or raise ValueError saying what is wrong."""
    y_arr = np.asarray(y).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if y_arr.shape[0] != p_arr.shape[0]:
        raise ValueError(
            f"y and p must have the same length, got {y_arr.shape[0]} labels "
            f"and {p_arr.shape[0]} scores"
        )
    if y_arr.shape[0] == 0:
        raise ValueError("y and p are empty; metrics need at least one row of each class")
    labels = set(np.unique(y_arr).tolist())
    if not labels <= {0, 1}:  # bools compare equal to 0 and 1
        raise ValueError(f"y must hold binary labels 0/1, got values {sorted(labels)[:5]}")
    if len(labels) < 2:
        raise ValueError(
            f"y holds a single class ({labels.pop()!r}); the metric needs both positives "
            "and negatives, so evaluate on a larger or stratified hold-out"
        )
    if not np.all(np.isfinite(p_arr)):
        raise ValueError("p must be finite; found NaN or infinite scores")
    if is_probability and (p_arr.min() < 0.0 or p_arr.max() > 1.0):
        raise ValueError(
            f"p must be probabilities in [0, 1], got range [{p_arr.min():g}, {p_arr.max():g}]"
        )
    return y_arr.astype(np.int64), p_arr


def roc_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    p : array-like of shape (n_users,)
        Scores; any monotone score works, probabilities are not required.

    Returns
    -------
    float
    """
    y_arr, p_arr = _check_binary(y, p)
    return float(roc_auc_score(y_arr, p_arr))


def pr_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the precision-recall curve, as average precision (step-wise, no interpolation).

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    p : array-like of shape (n_users,)
        Scores.

    Returns
    -------
    float
    """
    y_arr, p_arr = _check_binary(y, p)
    return float(average_precision_score(y_arr, p_arr))


def lift_at(y: ArrayLike, p: ArrayLike, fraction: float = 0.1) -> float:
    """Positive rate among the top ``fraction`` of users by score, divided by the base rate.

    The top group holds ``ceil(fraction * n_users)`` users; ties at the cut are broken by
    the original order, so the result is deterministic.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    p : array-like of shape (n_users,)
        Scores.
    fraction : float, default=0.1
        Share of users targeted, in (0, 1].

    Returns
    -------
    float
        1.0 means no better than random targeting.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    y_arr, p_arr = _check_binary(y, p)
    n_top = math.ceil(fraction * y_arr.shape[0])
    top = np.argsort(-p_arr, kind="stable")[:n_top]
    return float(y_arr[top].mean() / y_arr.mean())


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Brier score: mean squared error of the predicted probabilities (lower is better).

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    p : array-like of shape (n_users,)
        Predicted probabilities of the positive class, in [0, 1].

    Returns
    -------
    float
    """
    y_arr, p_arr = _check_binary(y, p, is_probability=True)
    return float(brier_score_loss(y_arr, p_arr))


def calibration_table(y: ArrayLike, p: ArrayLike, bins: int = 10) -> pd.DataFrame:
    """Predicted against observed rates in equal-count bins of the predicted probability.

    Users are sorted by ``p`` and split into ``bins`` groups of (nearly) equal size, which
    keeps every bin populated even when most probabilities are small, as they are for pushes.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    p : array-like of shape (n_users,)
        Predicted probabilities of the positive class, in [0, 1].
    bins : int, default=10
        Number of bins; fewer come back when there are fewer users than bins.

    Returns
    -------
    DataFrame of shape (n_bins, 6)
        Columns ``bin``, ``n_users``, ``p_min``, ``p_max``, ``mean_predicted`` and
        ``observed_rate``, ordered from the lowest to the highest probabilities.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    y_arr, p_arr = _check_binary(y, p, is_probability=True)
    order = np.argsort(p_arr, kind="stable")
    rows = [
        {
            "bin": i,
            "n_users": int(idx.shape[0]),
            "p_min": float(p_arr[idx].min()),
            "p_max": float(p_arr[idx].max()),
            "mean_predicted": float(p_arr[idx].mean()),
            "observed_rate": float(y_arr[idx].mean()),
        }
        for i, idx in enumerate(part for part in np.array_split(order, bins) if part.size)
    ]
    return pd.DataFrame(rows)


def propensity_report(y: ArrayLike, p: ArrayLike) -> dict[str, float]:
    """Every scalar metric above, for logging a propensity model's hold-out performance.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    p : array-like of shape (n_users,)
        Predicted probabilities of the positive class, in [0, 1].

    Returns
    -------
    dict of str to float
        Keys ``roc_auc``, ``pr_auc``, ``lift_at_10pct``, ``brier`` and ``base_rate``.
    """
    y_arr, p_arr = _check_binary(y, p, is_probability=True)
    return {
        "roc_auc": roc_auc(y_arr, p_arr),
        "pr_auc": pr_auc(y_arr, p_arr),
        "lift_at_10pct": lift_at(y_arr, p_arr, 0.1),
        "brier": brier(y_arr, p_arr),
        "base_rate": float(y_arr.mean()),
    }


def _check_uplift(
    y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.float64]]:
    """Return 0/1 outcomes, a treated mask and float scores, or raise ValueError."""
    y_arr = np.asarray(y).ravel()
    t_arr = np.asarray(treatment).ravel()
    u_arr = np.asarray(uplift, dtype=float).ravel()
    if not y_arr.shape[0] == t_arr.shape[0] == u_arr.shape[0]:
        raise ValueError(
            f"y, treatment and uplift must have the same length, got {y_arr.shape[0]}, "
            f"{t_arr.shape[0]} and {u_arr.shape[0]}"
        )
    if y_arr.shape[0] == 0:
        raise ValueError("y is empty; uplift metrics need treated and control users")
    for name, values in (("y", y_arr), ("treatment", t_arr)):
        labels = set(np.unique(values).tolist())
        if not labels <= {0, 1}:
            raise ValueError(f"{name} must hold 0/1 values, got {sorted(labels, key=str)[:5]}")
    t_bool = t_arr.astype(bool)
    if t_bool.all() or not t_bool.any():
        raise ValueError(
            "treatment must mark both treated (1) and control (0) users; uplift is measured "
            "against a randomised control group"
        )
    if not np.all(np.isfinite(u_arr)):
        raise ValueError("uplift must be finite; found NaN or infinite scores")
    return y_arr.astype(np.int64), t_bool, u_arr


def uplift_curve(y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike) -> pd.DataFrame:
    """Cumulative treated/control responses as users are targeted in order of ``uplift``.

    Ties are broken by the original order, so the curve is deterministic.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    treatment : array-like of shape (n_users,)
        1 for users who got the push in the randomised log, 0 for the control group.
    uplift : array-like of shape (n_users,)
        Predicted extra response from the push; higher is targeted first.

    Returns
    -------
    DataFrame of shape (n_users, 7)
        Per number targeted: ``fraction``, ``n_treated``, ``n_control``, ``responses_treated``,
        ``responses_control``, ``qini`` (incremental responses among the treated targeted:
        treated responses minus control responses scaled to the treated count) and ``gain``
        (treated minus control response rate, times the fraction targeted).
    """
    y_arr, t_bool, u_arr = _check_uplift(y, treatment, uplift)
    order = np.argsort(-u_arr, kind="stable")
    y_sorted, t_sorted = y_arr[order], t_bool[order]
    n_treated = np.cumsum(t_sorted)
    n_control = np.cumsum(~t_sorted)
    responses_treated = np.cumsum(y_sorted * t_sorted)
    responses_control = np.cumsum(y_sorted * ~t_sorted)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_treated = np.where(n_treated > 0, responses_treated / n_treated, 0.0)
        rate_control = np.where(n_control > 0, responses_control / n_control, 0.0)
        scaled_control = np.where(
            n_control > 0, responses_control * n_treated / np.maximum(n_control, 1), 0.0
        )
    fraction = np.arange(1, y_arr.shape[0] + 1) / y_arr.shape[0]
    return pd.DataFrame(
        {
            "fraction": fraction,
            "n_treated": n_treated,
            "n_control": n_control,
            "responses_treated": responses_treated,
            "responses_control": responses_control,
            "qini": responses_treated - scaled_control,
            "gain": (rate_treated - rate_control) * fraction,
        }
    )


def uplift_at(y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike, k: float = 0.3) -> float:
    """Treated minus control response rate among the top ``k`` share of users by ``uplift``.

    This is the extra response per user that targeting the top ``k`` would have caused,
    measured on the randomised log. Random targeting scores the overall treatment effect.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    treatment : array-like of shape (n_users,)
        1 for treated users, 0 for control users.
    uplift : array-like of shape (n_users,)
        Predicted uplift; any monotone score works.
    k : float, default=0.3
        Share of users targeted, in (0, 1].

    Returns
    -------
    float
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k!r}")
    y_arr, t_bool, u_arr = _check_uplift(y, treatment, uplift)
    n_top = math.ceil(k * y_arr.shape[0])
    top = np.argsort(-u_arr, kind="stable")[:n_top]
    y_top, t_top = y_arr[top], t_bool[top]
    if t_top.all() or not t_top.any():
        raise ValueError(
            f"the top {k:.0%} ({n_top} users) holds only "
            f"{'treated' if t_top.all() else 'control'} users; evaluate on more users"
        )
    return float(y_top[t_top].mean() - y_top[~t_top].mean())


def qini_auc(y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike) -> float:
    """Area between the Qini curve and random targeting, per treated user.

    The Qini curve counts incremental responses among the targeted treated users as more
    users are targeted; random targeting is the straight line to the same end point. Both
    are divided by the number of treated users, and the fraction targeted runs over
    (0, 1], so 0 is random targeting and higher is better.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    treatment : array-like of shape (n_users,)
        1 for treated users, 0 for control users.
    uplift : array-like of shape (n_users,)
        Predicted uplift.

    Returns
    -------
    float
    """
    curve = uplift_curve(y, treatment, uplift)
    qini = curve["qini"].to_numpy()
    random = qini[-1] * curve["fraction"].to_numpy()
    return float((qini - random).mean() / curve["n_treated"].iloc[-1])


def auuc(y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike) -> float:
    """Area under the uplift (cumulative gain) curve, over the fraction targeted in (0, 1].

    Random targeting scores about half the overall treatment effect; compare with
    ``uplift_report(...)["auuc_random"]``.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    treatment : array-like of shape (n_users,)
        1 for treated users, 0 for control users.
    uplift : array-like of shape (n_users,)
        Predicted uplift.

    Returns
    -------
    float
    """
    return float(uplift_curve(y, treatment, uplift)["gain"].mean())


def uplift_report(y: ArrayLike, treatment: ArrayLike, uplift: ArrayLike) -> dict[str, float]:
    """Every scalar uplift metric, for logging an uplift model's hold-out performance.

    Parameters
    ----------
    y : array-like of shape (n_users,)
        Binary outcomes, 0 or 1.
    treatment : array-like of shape (n_users,)
        1 for treated users, 0 for control users.
    uplift : array-like of shape (n_users,)
        Predicted uplift.

    Returns
    -------
    dict of str to float
        Keys ``uplift_at_10pct``, ``uplift_at_30pct``, ``qini_auc``, ``auuc``,
        ``auuc_random`` (the expected AUUC of random targeting) and ``ate`` (the overall
        treatment effect, which is also the uplift at k of random targeting).
    """
    y_arr, t_bool, u_arr = _check_uplift(y, treatment, uplift)
    n = y_arr.shape[0]
    ate = float(y_arr[t_bool].mean() - y_arr[~t_bool].mean())
    return {
        "uplift_at_10pct": uplift_at(y_arr, t_bool, u_arr, 0.1),
        "uplift_at_30pct": uplift_at(y_arr, t_bool, u_arr, 0.3),
        "qini_auc": qini_auc(y_arr, t_bool, u_arr),
        "auuc": auuc(y_arr, t_bool, u_arr),
        "auuc_random": ate * (n + 1) / (2 * n),
        "ate": ate,
    }
