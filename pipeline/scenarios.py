"""Scenarios on top of generated tenants whose answer is known: a randomised push campaign."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.errors import InvalidInputError
from pipeline.features import FEATURE_COLUMNS, build_features
from pipeline.generator import generate_tenant

__all__ = ["CampaignScenario", "randomised_campaign"]

TREATED_ARM = "push"
CONTROL_ARM = "control"


@dataclass(frozen=True, eq=False)
class CampaignScenario:
    """A randomised campaign log and the truth behind it.

    ``log`` has one row per user: ``user_id``, the FEATURE_COLUMNS at the cutoff, ``arm``
    (``"push"`` or ``"control"``) and ``converted`` (0/1) within the horizon. ``truth`` has
    ``user_id``, ``p_control``, ``p_treated`` and ``true_uplift`` (their difference).
    """

    tenant_id: str
    log: pd.DataFrame
    truth: pd.DataFrame
    cutoff: pd.Timestamp


def randomised_campaign(
    tenant_id: str,
    *,
    users: int,
    seed: int,
    treated_share: float = 0.5,
    days: int = 21,
) -> CampaignScenario:
    """Generate a tenant, then a push campaign at the cutoff sent to a random share of users.

    Whether a push helps depends on behaviour the features show, not on propensity alone:
    users who open pushes but have not bought yet are persuadable (up to +20 points); heavy
    buyers buy anyway (uplift near 0); users who are pushed often and never open are
    annoyed (-6 points). So the users most likely to convert are not the ones a push moves,
    which is what tells an uplift model from a propensity model.
    """
    if not 0.0 < treated_share < 1.0:
        raise InvalidInputError("treated_share", f"must be in (0, 1), got {treated_share}")
    if users < 100:
        raise InvalidInputError("users", f"need at least 100 users for a campaign, got {users}")
    data = generate_tenant(tenant_id, users=users, days=days, seed=seed)
    rng = np.random.default_rng([seed, 1])
    truth = data.truth.set_index("user_id")
    X = build_features(data.events, data.cutoff, users=pd.Index(truth.index, name="user_id"))
    X = X[list(FEATURE_COLUMNS)]

    baseline = 0.02 + 0.9 * truth["propensity"].to_numpy()
    opens = np.minimum(X["push_open_rate"].to_numpy() / 0.3, 1.0)
    persuadable = 0.20 * opens * np.exp(-X["purchases_total"].to_numpy() / 1.5)
    annoyed = (X["push_sends_28d"].to_numpy() >= 6) & (X["push_open_rate"].to_numpy() == 0)
    uplift = persuadable - 0.06 * annoyed
    p_control = np.clip(baseline, 0.0, 1.0)
    p_treated = np.clip(baseline + uplift, 0.0, 1.0)

    is_treated = rng.random(users) < treated_share
    p = np.where(is_treated, p_treated, p_control)
    converted = (rng.random(users) < p).astype(np.int64)

    log = X.reset_index()
    log["arm"] = np.where(is_treated, TREATED_ARM, CONTROL_ARM)
    log["converted"] = converted
    truth_frame = pd.DataFrame(
        {
            "user_id": X.index.to_numpy(),
            "p_control": p_control,
            "p_treated": p_treated,
            "true_uplift": p_treated - p_control,
        }
    )
    return CampaignScenario(tenant_id=tenant_id, log=log, truth=truth_frame, cutoff=data.cutoff)
