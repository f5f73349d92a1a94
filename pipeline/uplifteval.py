"""Uplift targeting, evaluated against the truth: what pushing the top share really gains.

A hold-out's measured uplift is a small difference of two noisy rates. The generator's
randomised campaigns (:func:`pipeline.scenarios.randomised_campaign`) know each user's true
uplift, so the users a method ranks first can be scored by what a push really does to them,
beside the simple baselines and beside each candidate learner on its own (which shows what
choosing by cross-validation costs or gains).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

from models.tabular import TableModel
from models.uplift import BASELINE_LEARNERS, LEARNERS, UpliftModel, make_learner
from pipeline.errors import InvalidInputError
from pipeline.features import FEATURE_COLUMNS
from pipeline.scenarios import randomised_campaign

__all__ = ["UpliftEval", "evaluate_uplift", "OURS", "BASELINES"]

OURS = "ours (UpliftModel, CV Qini)"
#: Baselines: ``model train --treatment``'s (each the candidate learner of that name), a
#: propensity model of the outcome that ignores the arm, and random targeting.
BASELINES: tuple[str, ...] = (*BASELINE_LEARNERS, "propensity", "random")


@dataclass(frozen=True)
class UpliftEval:
    users: int
    seeds: list[int]
    treated_shares: list[float]
    top: float
    true_uplift: dict[str, float]  # mean true uplift of each method's top share, over the logs
    per_log: list[dict[str, float | str]] = field(default_factory=list)

    @property
    def chosen(self) -> list[str]:
        """The learner ours chose, per log."""
        return [str(row["chosen"]) for row in self.per_log]


def evaluate_uplift(
    *,
    users: int = 4000,
    seeds: Sequence[int] = (2, 3),
    treated_shares: Sequence[float] = (0.5, 0.2),
    top: float = 0.3,
    cv_folds: int = 5,
    test_size: float = 0.3,
    n_threads: int | None = 1,
    progress: bool | None = None,
) -> UpliftEval:
    """For each seed and treated share, generate a campaign log, fit on ``1 - test_size`` of it
    and rank the rest: ours, each candidate in :data:`~models.uplift.LEARNERS` alone, and the
    baselines. Scores are the true uplift of each ranking's top ``top`` share. Registers nothing.

    ``progress``: a tqdm bar over logs on stderr; None shows it only on a terminal.
    """
    from tqdm import tqdm

    if users < 500:
        raise InvalidInputError("users", f"need at least 500 users per log, got {users}")
    if not seeds:
        raise InvalidInputError("seeds", "give at least one seed")
    if not treated_shares or not all(0.05 <= s <= 0.95 for s in treated_shares):
        raise InvalidInputError("treated_share", f"each must be in [0.05, 0.95], got {list(treated_shares)}")
    if not 0.0 < top < 1.0:
        raise InvalidInputError("top", f"must be in (0, 1), got {top}")
    names = [OURS, *LEARNERS, *(f"baseline {b}" for b in BASELINES)]
    scores: dict[str, list[float]] = {name: [] for name in names}
    per_log: list[dict[str, float | str]] = []
    logs = [(int(seed), float(share)) for seed in seeds for share in treated_shares]
    for seed, share in tqdm(logs, unit="log", desc="uplift",
                            disable=None if progress is None else not progress):
        scenario = randomised_campaign(f"uplift-eval-{seed}", users=users, seed=seed,
                                       treated_share=share)
        X = scenario.log[list(FEATURE_COLUMNS)]
        y = scenario.log["converted"].to_numpy()
        t = (scenario.log["arm"] == "push").to_numpy().astype(int)
        fit, test = train_test_split(np.arange(len(y)), test_size=test_size,
                                     stratify=y * 2 + t, random_state=0)
        truth = scenario.truth["true_uplift"].to_numpy()[test]
        k = max(1, int(top * len(test)))

        def gain(ranking: np.ndarray, truth: np.ndarray = truth, k: int = k) -> float:
            return float(truth[np.argsort(-ranking, kind="stable")[:k]].mean())

        X_fit, X_test, y_fit, t_fit = X.iloc[fit], X.iloc[test], y[fit], t[fit]
        ours = UpliftModel(cv_folds=cv_folds, random_state=0, n_threads=n_threads).fit(X_fit, y_fit, t_fit)
        row: dict[str, float | str] = {"seed": seed, "treated_share": share,
                                       "chosen": ours.learners_["1"], OURS: gain(ours.predict(X_test))}
        for name in LEARNERS:
            learner = make_learner(name, random_state=0, n_threads=n_threads).fit(X_fit, y_fit, t_fit)
            row[name] = gain(learner.predict(X_test))
        row.update({f"baseline {name}": row[learner] for name, learner in BASELINE_LEARNERS.items()})
        propensity = TableModel(random_state=0, n_threads=n_threads).fit(X_fit, y_fit)
        row["baseline propensity"] = gain(propensity.predict_proba(X_test)[:, 1])
        row["baseline random"] = float(truth.mean())
        for name in names:
            scores[name].append(float(row[name]))
        per_log.append(row)
    return UpliftEval(
        users=users, seeds=[int(s) for s in seeds], treated_shares=[float(s) for s in treated_shares],
        top=top, true_uplift={name: float(np.mean(v)) for name, v in scores.items()},
        per_log=per_log,
    )
