"""Holdout and variant assignment by a stable hash of (campaign, user): the same on every run,
machine and Python process (never Python's salted ``hash()``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["HOLDOUT", "unit_draws", "assign_arms"]

HOLDOUT = "holdout"
_SCALE = float(2**64)


def unit_draws(campaign_id: str, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uniform draws in [0, 1) per user, fixed by (campaign, user)."""
    holdout = np.empty(len(user_ids), dtype=np.float64)
    variant = np.empty(len(user_ids), dtype=np.float64)
    prefix = f"{campaign_id}\x1f".encode()
    for i, user_id in enumerate(user_ids):
        digest = hashlib.blake2b(prefix + user_id.encode(), digest_size=16).digest()
        holdout[i] = int.from_bytes(digest[:8], "big") / _SCALE
        variant[i] = int.from_bytes(digest[8:], "big") / _SCALE
    return holdout, variant


def assign_arms(
    campaign_id: str,
    user_ids: Sequence[str],
    holdout_percent: float,
    variants: Sequence[tuple[str, float]],
) -> np.ndarray:
    """Per user: ``holdout`` with probability holdout_percent/100, else a variant by weight."""
    if not 0 <= holdout_percent < 100:
        raise ValueError(f"holdout_percent must be in [0, 100), got {holdout_percent}")
    if not variants or any(w <= 0 for _, w in variants):
        raise ValueError(f"variants need positive weights, got {list(variants)}")
    u_holdout, u_variant = unit_draws(campaign_id, user_ids)
    names = np.array([name for name, _ in variants] + [HOLDOUT], dtype=object)
    weights = np.array([w for _, w in variants], dtype=np.float64)
    edges = np.cumsum(weights) / weights.sum()
    chosen = np.minimum(np.searchsorted(edges, u_variant, side="right"), len(variants) - 1)
    chosen = np.where(u_holdout < holdout_percent / 100.0, len(variants), chosen)
    return names[chosen]
