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
