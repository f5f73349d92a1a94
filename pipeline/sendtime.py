"""Send-time optimisation, evaluated: how often the hour we pick is the hour a user keeps.

The generator gives every user a hidden preferred local hour (``truth.preferred_hour``) and
draws most of their sessions around it, so a scenario has a known best hour per user. The
chosen hours are scored against it beside the simple baselines a tenant would otherwise use:
one hour for everybody, the tenant's most common one, or a fixed evening hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.features import best_send_hour, tenant_send_hour
from pipeline.generator import generate_tenant

__all__ = ["SendTimeEval", "hour_hits", "evaluate_send_time", "FIXED_HOUR"]

FIXED_HOUR = 19  # best_send_hour's fallback and the usual "evening push" default


def hour_hits(chosen: np.ndarray, best: np.ndarray, within: int = 0) -> np.ndarray:
    """Whether each chosen hour is within ``within`` hours of the best one, around the clock."""
    off = np.abs(np.asarray(chosen, dtype=np.int64) - np.asarray(best, dtype=np.int64)) % 24
    return np.minimum(off, 24 - off) <= within


@dataclass(frozen=True)
class SendTimeEval:
    users: int
    days: int
    seeds: list[int]
    hit_rate: dict[str, float]  # chosen hour == best hour, all scenarios' people pooled
    hit_rate_1h: dict[str, float]  # within one hour
    fallback_share: float  # people with too little history for a personal hour
    per_seed: list[dict[str, float]] = field(default_factory=list)  # hit rate per scenario


def evaluate_send_time(
    *, users: int = 2000, days: int = 28, seeds: Sequence[int] = (0, 1, 2), progress: bool | None = None
) -> SendTimeEval:
    """Generate one tenant per seed and score, on its people (bots have no habits), the hours
    ``best_send_hour`` picks at the cutoff (with the tenant's own hour as fallback, and with the
    fixed one) against the baselines "the tenant's most common hour" and a fixed 19h.

    ``progress``: a tqdm bar over scenarios on stderr; None shows it only on a terminal.
    """
    from tqdm import tqdm

    if users < 50:
        raise InvalidInputError("users", f"need at least 50 users per scenario, got {users}")
    if days < 8:
        raise InvalidInputError("days", f"need at least 8 days (a week after the history), got {days}")
    if not seeds:
        raise InvalidInputError("seeds", "give at least one seed")
    names = ("ours (best_send_hour)", "ours, fixed 19h fallback", "tenant's most common hour",
             "fixed 19h")
    hits: dict[str, list[np.ndarray]] = {name: [] for name in names}
    near: dict[str, list[np.ndarray]] = {name: [] for name in names}
    fell_back: list[np.ndarray] = []
    per_seed: list[dict[str, float]] = []
    bar = tqdm(list(seeds), unit="scenario", desc="send time",
               disable=None if progress is None else not progress)
    for seed in bar:
        data = generate_tenant(f"sendtime-{seed}", users=users, days=days, seed=int(seed))
        truth = data.truth.set_index("user_id")
        people = truth.index[~truth["is_bot"].to_numpy()]
        zones = data.profiles.set_index("user_id")["timezone"]
        ours = best_send_hour(data.events, data.cutoff, zones, fallback_hour=None).reindex(people)
        fixed_fallback = best_send_hour(data.events, data.cutoff, zones).reindex(people)
        tenant_hour = tenant_send_hour(data.events, data.cutoff, zones)
        chosen = {
            names[0]: ours.to_numpy(),
            names[1]: fixed_fallback.to_numpy(),
            names[2]: np.full(len(people), tenant_hour),
            names[3]: np.full(len(people), FIXED_HOUR),
        }
        best = truth.loc[people, "preferred_hour"].to_numpy()
        row: dict[str, float] = {"seed": float(seed)}
        for name, hours in chosen.items():
            hits[name].append(hour_hits(hours, best))
            near[name].append(hour_hits(hours, best, within=1))
            row[name] = float(hits[name][-1].mean())
        per_seed.append(row)
        # best_send_hour's rule: fewer than 5 sessions and push opens before the cutoff.
        past = data.events[(data.events["event_time"] <= data.cutoff)
                           & data.events["event_type"].isin(["session_start", "push_open"])]
        active = past.groupby("user_id").size().reindex(people, fill_value=0)
        fell_back.append((active < 5).to_numpy())
    return SendTimeEval(
        users=users, days=days, seeds=[int(s) for s in seeds],
        hit_rate={n: float(np.concatenate(v).mean()) for n, v in hits.items()},
        hit_rate_1h={n: float(np.concatenate(v).mean()) for n, v in near.items()},
        fallback_share=float(np.concatenate(fell_back).mean()),
        per_seed=per_seed,
    )
