"""Train a tenant's propensity model from its behaviour events: features, hold-out, registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from models.metrics import propensity_report, roc_auc
from models.propensity import PropensityModel
from models.registry import ModelRegistry, ModelVersionInfo
from models.repeat import BgNbd, rfm_summary
from models.tabular import LogisticTableModel, choose_by_cv
from pipeline.errors import InvalidInputError
from pipeline.features import FEATURE_COLUMNS, NO_ACTIVITY_DAYS, build_features, build_labels

__all__ = ["RepeatEvaluation", "TrainingResult", "evaluate_repeat", "train_propensity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    tenant_id: str
    version: ModelVersionInfo
    metrics: dict[str, float]
    n_train: int
    n_holdout: int
    positive_rate: float
    learner: str = "PropensityModel"
    baselines: dict[str, float] = field(default_factory=dict)  # ROC AUC, same held-out users
    cv_scores: dict[str, float] = field(default_factory=dict)  # candidates, training users only


def _choose(X_train: pd.DataFrame, y_train: np.ndarray, folds: int, random_state: int
            ) -> tuple[str, Any, dict[str, float]]:
    """The booster or a logistic regression, both over FEATURE_COLUMNS (what the online scorer
    builds), by CV on the training users; the booster when nothing can be cross-validated."""
    candidates = {"PropensityModel": PropensityModel(random_state=random_state),
                  "LogisticTableModel": LogisticTableModel()}
    return choose_by_cv(candidates, X_train, y_train, folds=folds, random_state=random_state)


def _repeat_baselines(rfm_train: pd.DataFrame, y_train: np.ndarray, rfm_hold: pd.DataFrame,
                      y_hold: np.ndarray, horizon_days: int) -> tuple[dict[str, float], dict[str, float]]:
    """ROC AUC on the held-out users of logistic regression on RFM and tenure, and of BG/NBD's
    expected purchases in the horizon (fitted on the training users' histories alone)."""
    scores: dict[str, float] = {}
    logistic = LogisticTableModel().fit(rfm_train, y_train)
    scores["rfm_logistic"] = roc_auc(y_hold, logistic.predict_proba(rfm_hold)[:, 1])
    buyers = rfm_train[rfm_train["has_bought"] > 0]
    params: dict[str, float] = {}
    try:
        bgnbd = BgNbd().fit(buyers["frequency"], buyers["recency_days"], buyers["tenure_days"])
    except ValueError as e:  # nobody bought twice: no dropout to fit
        log.warning("BG/NBD baseline left out: %s", e)
        return scores, params
    expected = np.zeros(len(rfm_hold))
    mask = rfm_hold["has_bought"].to_numpy() > 0
    if mask.any():
        expected[mask] = bgnbd.expected_purchases(
            float(horizon_days), rfm_hold["frequency"][mask], rfm_hold["recency_days"][mask],
            rfm_hold["tenure_days"][mask])
    scores["bgnbd"] = roc_auc(y_hold, expected)
    params = {"r": bgnbd.r, "alpha": bgnbd.alpha, "a": bgnbd.a, "b": bgnbd.b}
    return scores, params


def _labelled_users(events: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: int,
                    target_event: str, exclude_users: pd.Index | None) -> tuple[pd.DataFrame, pd.Series]:
    """FEATURE_COLUMNS and the label of each user active by the cutoff; InvalidInputError when
    there is too little to learn from."""
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
    return X, y


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
    cv_folds: int = 5,
) -> TrainingResult:
    """Fit on users' behaviour up to ``cutoff``, label by ``target_event`` within the horizon.

    The learner (boosted PropensityModel or logistic regression, both over FEATURE_COLUMNS) is
    chosen by ``cv_folds``-fold CV on the training users. Held-out users are never fitted on;
    on them the model is reported beside the baselines (RFM logistic regression, BG/NBD), and
    the registry promotes it only if it reaches the best baseline and beats the current
    champion on the same users (``force`` overrides both).
    """
    X, y = _labelled_users(events, cutoff, horizon_days, target_event, exclude_users)
    X_train, X_hold, y_train, y_hold = train_test_split(
        X, y, test_size=holdout_fraction, stratify=y, random_state=random_state
    )
    learner, model, cv_scores = _choose(X_train, y_train.to_numpy(), cv_folds, random_state)
    p_hold = model.predict_proba(X_hold)[:, 1]
    metrics = propensity_report(y_hold.to_numpy(), p_hold)
    rfm = _rfm_frame(events, cutoff, X.index, target_event)
    baselines, _ = _repeat_baselines(rfm.loc[X_train.index], y_train.to_numpy(),
                                     rfm.loc[X_hold.index], y_hold.to_numpy(), horizon_days)
    metrics.update({f"cv_roc_auc_{k}": v for k, v in cv_scores.items()})
    metrics.update({f"baseline_roc_auc_{k}": v for k, v in baselines.items()})

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
            "estimator": learner,
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
        baseline_score=max(baselines.values()) if baselines else None,
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
        learner=learner,
        baselines=baselines,
        cv_scores=cv_scores,
    )


@dataclass(frozen=True)
class RepeatEvaluation:
    """ROC AUC of each detector of "buys again within the horizon", on the same held-out users."""

    roc_auc: dict[str, float]
    n_train: int
    n_holdout: int
    positive_rate: float
    bgnbd_params: dict[str, float]


def _rfm_frame(events: pd.DataFrame, cutoff: pd.Timestamp, users: pd.Index,
               target_event: str) -> pd.DataFrame:
    """Per user: repeat purchase days, recency and tenure (days, BG/NBD's x, t_x, T), mean
    purchase value and days since the last purchase; zeros for users who never bought."""
    bought = events[(events["event_type"] == target_event) & (events["event_time"] <= cutoff)]
    start = bought["event_time"].min() if len(bought) else cutoff
    days = (bought["event_time"] - start).dt.total_seconds().to_numpy() / 86_400
    end = (cutoff - start).total_seconds() / 86_400
    ids, x, t_x, big_t = rfm_summary(bought["user_id"].to_numpy(), days, end)
    frame = pd.DataFrame({"frequency": x, "recency_days": t_x, "tenure_days": big_t},
                         index=pd.Index(ids, name="user_id"))
    frame["days_since_purchase"] = frame["tenure_days"] - frame["recency_days"]
    frame["mean_value"] = bought.groupby("user_id")["value"].mean().reindex(frame.index)
    frame = frame.reindex(users)
    frame["has_bought"] = frame["frequency"].notna().astype(float)
    return frame.fillna({"frequency": 0.0, "recency_days": 0.0, "tenure_days": 0.0,
                         "days_since_purchase": NO_ACTIVITY_DAYS, "mean_value": 0.0})


def evaluate_repeat(
    events: pd.DataFrame,
    *,
    cutoff: pd.Timestamp,
    horizon_days: int,
    target_event: str = "purchase",
    holdout_fraction: float = 0.25,
    random_state: int = 0,
    cv_folds: int = 5,
) -> RepeatEvaluation:
    """What `model train --events` would register (the learner CV picks over FEATURE_COLUMNS)
    beside the simple baselines on the same held-out users: logistic regression on RFM and
    tenure, and BG/NBD's expected purchases in the horizon. Registers nothing.
    """
    X, y = _labelled_users(events, cutoff, horizon_days, target_event, None)
    rfm = _rfm_frame(events, cutoff, X.index, target_event)
    train, hold = train_test_split(np.arange(len(y)), test_size=holdout_fraction, stratify=y,
                                   random_state=random_state)
    y_train, y_hold = y.to_numpy()[train], y.to_numpy()[hold]
    learner, ours, cv_scores = _choose(X.iloc[train], y_train, cv_folds, random_state)
    scores = {f"pushpilot ({learner})": roc_auc(y_hold, ours.predict_proba(X.iloc[hold])[:, 1])}
    baselines, params = _repeat_baselines(rfm.iloc[train], y_train, rfm.iloc[hold], y_hold, horizon_days)
    names = {"rfm_logistic": "RFM logistic regression", "bgnbd": "BG/NBD expected purchases"}
    scores.update({names[k]: v for k, v in baselines.items()})
    scores.update({f"cv {k} (training users)": v for k, v in cv_scores.items()})
    return RepeatEvaluation(scores, len(train), len(hold), float(y.mean()), params)
