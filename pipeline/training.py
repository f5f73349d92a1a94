"""Train a tenant's propensity model from its behaviour events: features, hold-out, registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from models.metrics import propensity_report
from models.propensity import PropensityModel
from models.registry import ModelRegistry, ModelVersionInfo
from pipeline.errors import InvalidInputError
from pipeline.features import FEATURE_COLUMNS, build_features, build_labels

__all__ = ["TrainingResult", "train_propensity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    tenant_id: str
    version: ModelVersionInfo
    metrics: dict[str, float]
    n_train: int
    n_holdout: int
    positive_rate: float


def train_propensity(
    tenant_id: str,
    events: pd.DataFrame,
    *,
    cutoff: pd.Timestamp,
    horizon_days: int,
    registry: ModelRegistry,
    target_event: str = "purchase",
    exclude_users: pd.Index | None = None,
    holdout_fraction: float = 0.25,
    random_state: int = 0,
    force: bool = False,
) -> TrainingResult:
    """Fit on users' behaviour up to ``cutoff``, label by ``target_event`` within the horizon.

    Held-out users are never fitted on; the registry promotes the model only if it beats the
    current champion on the same held-out users.
    """
    if horizon_days <= 0:
        raise InvalidInputError("horizon", f"must be a positive number of days, got {horizon_days}")
    if target_event not in set(events["event_type"].unique()):
        raise InvalidInputError("target_event", f"no {target_event!r} events in the input")
    users = pd.Index(events.loc[events["event_time"] <= cutoff, "user_id"].unique(), name="user_id")
    if exclude_users is not None:
        users = users.difference(exclude_users)
    if len(users) < 50:
        raise InvalidInputError("events", f"need at least 50 users active before the cutoff, got {len(users)}")
    X = build_features(events, cutoff, users=users)[list(FEATURE_COLUMNS)]
    y = build_labels(events, cutoff, horizon_days, target_event=target_event, users=X.index)
    y = y.reindex(X.index).fillna(False).astype(int)
    if y.nunique() < 2:
        raise InvalidInputError(
            "events", f"every user has the same label ({target_event} within {horizon_days} days)"
        )
    X_train, X_hold, y_train, y_hold = train_test_split(
        X, y, test_size=holdout_fraction, stratify=y, random_state=random_state
    )
    model = PropensityModel(random_state=random_state).fit(X_train, y_train.to_numpy())
    p_hold = model.predict_proba(X_hold)[:, 1]
    metrics = propensity_report(y_hold.to_numpy(), p_hold)

    def champion_score(champion: object) -> float:
        p = champion.predict_proba(X_hold)[:, 1]  # type: ignore[attr-defined]
        return float(propensity_report(y_hold.to_numpy(), p)["roc_auc"])

    version = registry.log_model(
        tenant_id,
        "propensity",
        model,
        X_example=X_hold.head(5).reset_index(drop=True),
        metrics=metrics,
        params={
            "estimator": "PropensityModel",
            "target_event": target_event,
            "horizon_days": horizon_days,
            "cutoff": cutoff.isoformat(),
            "n_train": len(X_train),
            "n_holdout": len(X_hold),
        },
        y_holdout=y_hold.to_numpy(),
        p_holdout=p_hold,
        primary_metric="roc_auc",
        force=force,
        champion_score=champion_score,
    )
    log.info("tenant %s: propensity v%d roc_auc=%.3f champion=%s", tenant_id, version.version,
             metrics["roc_auc"], version.is_champion)
    return TrainingResult(
        tenant_id=tenant_id,
        version=version,
        metrics=metrics,
        n_train=len(X_train),
        n_holdout=len(X_hold),
        positive_rate=float(np.mean(y)),
    )
