"""Choosing whom to push: top-K or a threshold on the score, never a quarantined user."""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd

__all__ = ["select_top_k", "select_threshold"]


def _eligible(scores: pd.Series, exclude: Collection[str]) -> pd.Series:
    eligible = scores[~scores.index.isin(list(exclude))].dropna()
    # Sort by id first, then stably by score: ties go to the lower id, so a re-run picks the same users.
    return eligible.sort_index().sort_values(ascending=False, kind="mergesort")


def select_top_k(scores: pd.Series, k: int, exclude: Collection[str] = ()) -> pd.Series:
    """The k highest-scoring users (index user_id), best first."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return _eligible(scores, exclude).head(k)


def select_threshold(scores: pd.Series, threshold: float, exclude: Collection[str] = ()) -> pd.Series:
    ranked = _eligible(scores, exclude)
    return ranked[ranked >= threshold]
