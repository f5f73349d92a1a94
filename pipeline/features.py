"""Per-user features, labels and send hours from raw events, as of a cutoff (pure pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import InvalidInputError

__all__ = [
    "FEATURE_COLUMNS",
    "BEHAVIOUR_COLUMNS",
    "NO_ACTIVITY_DAYS",
    "build_features",
    "build_labels",
    "best_send_hour",
    "tenant_send_hour",
    "behaviour_features",
]

FEATURE_COLUMNS: tuple[str, ...] = (
    "days_since_last_event",
    "days_since_last_purchase",
    "events_7d",
    "events_28d",
    "sessions_7d",
    "sessions_28d",
    "views_28d",
    "carts_28d",
    "purchases_total",
    "monetary_total",
    "mean_gap_hours",
    "std_gap_hours",
    "trend_7d_vs_21d",
    "active_days_28d",
    "share_morning",
    "share_afternoon",
    "share_evening",
    "share_night",
    "push_sends_28d",
    "push_open_rate",
    "purchases_per_cart",
)

BEHAVIOUR_COLUMNS: tuple[str, ...] = (
    "events_total",
    "events_per_active_minute",
    "max_events_per_minute",
    "gap_cv",
    "night_share",
    "distinct_active_hours",
    "purchase_ratio",
)

# "Never" for recency and gaps: far beyond any window, so trees split it off cleanly.
NO_ACTIVITY_DAYS = 365.0

_REQUIRED = ("user_id", "event_time", "event_type")
_NS_PER_HOUR = 3_600_000_000_000
_NS_PER_DAY = 24 * _NS_PER_HOUR


def _utc(ts: pd.Timestamp | str, field: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(ts)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(field, f"cannot read {ts!r} as a time") from e
    if stamp is pd.NaT:
        raise InvalidInputError(field, "must be a time, got NaT")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.as_unit("ns")


def _event_ns(events: pd.DataFrame) -> np.ndarray:
    missing = [c for c in _REQUIRED if c not in events.columns]
    if missing:
        raise InvalidInputError(
            missing[0], f"required events column is missing; found {list(events.columns)}"
        )
    times = events["event_time"]
    if not pd.api.types.is_datetime64_any_dtype(times):
        raise InvalidInputError(
            "event_time", f"must be datetime64, got {times.dtype}; read files with read_events"
        )
    index = pd.DatetimeIndex(times)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    ns = index.as_unit("ns").asi8
    if index.hasnans:
        raise InvalidInputError("event_time", "has missing times")
    return ns


class _Past:
    """Events at or before the cutoff, as integer user codes into `users`."""

    def __init__(self, events: pd.DataFrame, cutoff: pd.Timestamp, users: pd.Index | None):
        ns = _event_ns(events)
        self.cutoff_ns = int(_utc(cutoff, "cutoff").value)
        keep = ns <= self.cutoff_ns
        user_id = events["user_id"].to_numpy()[keep]
        if users is None:
            codes, uniques = pd.factorize(user_id, sort=True)
            self.users = pd.Index(uniques, name="user_id")
        else:
            self.users = pd.Index(users, name="user_id")
            if not self.users.is_unique:
                raise InvalidInputError("users", "has duplicate user ids")
            codes = self.users.get_indexer(user_id)
        known = codes >= 0
        self.codes = codes[known].astype(np.int64)
        self.ns = ns[keep][known]
        self.kind = events["event_type"].to_numpy()[keep][known]
        self.value = (
            pd.to_numeric(events["value"], errors="coerce").to_numpy(dtype=np.float64)[keep][known]
            if "value" in events.columns
            else np.full(len(self.codes), np.nan)
        )
        self.n = len(self.users)
        self.age_days = (self.cutoff_ns - self.ns) / _NS_PER_DAY

    def count(self, mask: np.ndarray | None = None) -> np.ndarray:
        codes = self.codes if mask is None else self.codes[mask]
        return np.bincount(codes, minlength=self.n).astype(np.float64)

    def total(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.codes[mask], weights=values[mask], minlength=self.n)

    def smallest(self, values: np.ndarray, mask: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(self.n, fill)
        if mask.any():
            found = pd.Series(values[mask]).groupby(self.codes[mask]).min()
            out[found.index.to_numpy()] = found.to_numpy()
        return out

    def gaps_ns(self) -> tuple[np.ndarray, np.ndarray]:
        """Gaps between a user's consecutive events, with the user code of each gap."""
        order = np.lexsort((self.ns, self.codes))
        codes, ns = self.codes[order], self.ns[order]
        same = codes[1:] == codes[:-1]
        return np.diff(ns)[same], codes[1:][same]

    def local_hours(self, timezones: pd.Series | None) -> np.ndarray:
        utc_hours = (self.ns // _NS_PER_HOUR) % 24
        if timezones is None:
            return utc_hours
        zone_of_user = self.users.map(timezones).to_numpy(dtype=object)
        zone = zone_of_user[self.codes]
        hours = utc_hours.copy()
        for name in pd.unique(zone[pd.notna(zone)]):
            rows = np.flatnonzero(zone == name)
            try:
                local = pd.DatetimeIndex(self.ns[rows], tz="UTC").tz_convert(str(name))
            except (KeyError, ValueError) as e:
                raise InvalidInputError("timezones", f"unknown time zone {name!r}") from e
            hours[rows] = local.hour
        return hours


def _ratio(numerator: np.ndarray, denominator: np.ndarray, empty: float = 0.0) -> np.ndarray:
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, empty)


def _frame(past: _Past, columns: dict[str, np.ndarray], order: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        {name: np.asarray(columns[name], dtype=np.float64) for name in order}, index=past.users
    )


def build_features(
    events: pd.DataFrame,
    cutoff: pd.Timestamp,
    users: pd.Index | None = None,
    *,
    timezones: pd.Series | None = None,
) -> pd.DataFrame:
    """One row per user of FEATURE_COLUMNS from events at or before `cutoff`.

    `users` fixes the rows (users without events get "never active" values); by default the
    rows are the users with events at or before the cutoff. `timezones` (user_id -> IANA zone)
    puts the part-of-day shares in local time; without it they are in UTC.
    """
    past = _Past(events, cutoff, users)
    kind, age = past.kind, past.age_days
    in_7d, in_28d = age < 7, age < 28
    is_session = kind == "session_start"
    is_purchase = kind == "purchase"
    is_cart = kind == "add_to_cart"
    is_sent, is_open = kind == "push_sent", kind == "push_open"

    events_7d, events_28d = past.count(in_7d), past.count(in_28d)
    gaps, gap_codes = past.gaps_ns()
    gap_hours = gaps / _NS_PER_HOUR
    n_gaps = np.bincount(gap_codes, minlength=past.n)
    mean_gap = _ratio(np.bincount(gap_codes, gap_hours, past.n), n_gaps, NO_ACTIVITY_DAYS * 24)
    mean_square = _ratio(np.bincount(gap_codes, gap_hours**2, past.n), n_gaps)
    std_gap = np.sqrt(np.maximum(mean_square - np.where(n_gaps > 0, mean_gap, 0.0) ** 2, 0.0))

    rate_7d = events_7d / 7
    rate_prev_21d = (events_28d - events_7d) / 21
    day_key = np.unique(past.codes[in_28d] * 28 + age[in_28d].astype(np.int64))
    active_days = np.bincount(day_key // 28, minlength=past.n)

    hours = past.local_hours(timezones)[in_28d]
    recent_codes = past.codes[in_28d]

    def share(mask: np.ndarray) -> np.ndarray:
        return _ratio(np.bincount(recent_codes[mask], minlength=past.n), events_28d)

    sends_all, opens_all = past.count(is_sent), past.count(is_open)
    purchases, carts = past.count(is_purchase), past.count(is_cart)
    value = np.nan_to_num(past.value, nan=0.0)
    columns = {
        "days_since_last_event": past.smallest(age, np.ones(len(age), bool), NO_ACTIVITY_DAYS),
        "days_since_last_purchase": past.smallest(age, is_purchase, NO_ACTIVITY_DAYS),
        "events_7d": events_7d,
        "events_28d": events_28d,
        "sessions_7d": past.count(is_session & in_7d),
        "sessions_28d": past.count(is_session & in_28d),
        "views_28d": past.count((kind == "view") & in_28d),
        "carts_28d": past.count(is_cart & in_28d),
        "purchases_total": purchases,
        "monetary_total": past.total(value, is_purchase),
        "mean_gap_hours": mean_gap,
        "std_gap_hours": std_gap,
        # 0.5 is "steady"; 1 means everything happened in the last week.
        "trend_7d_vs_21d": _ratio(rate_7d, rate_7d + rate_prev_21d, 0.5),
        "active_days_28d": active_days,
        "share_morning": share((hours >= 5) & (hours < 11)),
        "share_afternoon": share((hours >= 11) & (hours < 17)),
        "share_evening": share((hours >= 17) & (hours < 23)),
        "share_night": share((hours >= 23) | (hours < 5)),
        "push_sends_28d": past.count(is_sent & in_28d),
        "push_open_rate": np.minimum(_ratio(opens_all, sends_all), 1.0),
        "purchases_per_cart": purchases / np.maximum(carts, 1.0),
    }
    return _frame(past, columns, FEATURE_COLUMNS)


def build_labels(
    events: pd.DataFrame,
    cutoff: pd.Timestamp,
    horizon_days: int,
    target_event: str = "purchase",
    users: pd.Index | None = None,
) -> pd.Series:
    """Whether each user has `target_event` in (cutoff, cutoff + horizon_days].

    Rows are `users`, or by default the users with events at or before the cutoff, the same
    rows as build_features.
    """
    if horizon_days < 1:
        raise InvalidInputError("horizon_days", f"must be at least 1, got {horizon_days}")
    ns = _event_ns(events)
    cutoff_ns = int(_utc(cutoff, "cutoff").value)
    if users is None:
        users = pd.Index(np.unique(events["user_id"].to_numpy()[ns <= cutoff_ns]))
    index = pd.Index(users, name="user_id")
    hit = (
        (ns > cutoff_ns)
        & (ns <= cutoff_ns + horizon_days * _NS_PER_DAY)
        & (events["event_type"].to_numpy() == target_event)
    )
    positive = pd.unique(events["user_id"].to_numpy()[hit])
    return pd.Series(
        index.isin(positive), index=index, name=f"{target_event}_within_{horizon_days}d"
    )


def _activity_hours(
    events: pd.DataFrame, cutoff: pd.Timestamp, timezones: pd.Series | None
) -> tuple[_Past, np.ndarray, np.ndarray, np.ndarray]:
    """Sessions and push opens at or before the cutoff (any event for a tenant without them):
    the users, and per event its user code, local hour and weight (an open counts double)."""
    users = None
    if timezones is not None:
        seen = pd.Index(events["user_id"].unique())
        users = pd.Index(timezones.index).append(seen.difference(timezones.index))
    past = _Past(events, cutoff, users)
    activity = np.isin(past.kind, ("session_start", "push_open"))
    if not activity.any():
        activity = np.ones(len(past.kind), dtype=bool)
    # An open answers a push at that hour, so it counts double.
    weight = np.where(past.kind == "push_open", 2.0, 1.0)[activity]
    return past, past.codes[activity], past.local_hours(timezones)[activity], weight


def _smoothed(histogram: np.ndarray) -> np.ndarray:
    """Each hour plus half of each neighbour, around the clock."""
    return histogram + 0.5 * (np.roll(histogram, 1, axis=-1) + np.roll(histogram, -1, axis=-1))


def tenant_send_hour(
    events: pd.DataFrame, cutoff: pd.Timestamp, timezones: pd.Series | None = None,
    default: int = 19,
) -> int:
    """The local hour at which the tenant's users are most often active, all users pooled;
    ``default`` when nothing happened before the cutoff."""
    _, _, hours, weight = _activity_hours(events, cutoff, timezones)
    if not len(hours):
        return default
    return int(_smoothed(np.bincount(hours, weights=weight, minlength=24)).argmax())


def best_send_hour(
    events: pd.DataFrame,
    cutoff: pd.Timestamp,
    timezones: pd.Series | None = None,
    fallback_hour: int | None = 19,
) -> pd.Series:
    """Local hour (0-23) at which each user is most often active, from sessions and push opens.

    Users with fewer than 5 such events get `fallback_hour`; None gives them the tenant's own
    most common hour (:func:`tenant_send_hour`). Rows are the users with events at or before
    the cutoff, then any others named in `timezones`. Without `timezones`, hours are UTC.
    """
    if fallback_hour is not None and not 0 <= fallback_hour <= 23:
        raise InvalidInputError("fallback_hour", f"must be 0-23, got {fallback_hour}")
    past, codes, hours, weight = _activity_hours(events, cutoff, timezones)
    histogram = np.bincount(codes * 24 + hours, weights=weight, minlength=past.n * 24).reshape(
        past.n, 24
    )
    if fallback_hour is None:
        pooled = histogram.sum(axis=0)
        fallback_hour = int(_smoothed(pooled).argmax()) if pooled.any() else 19
    enough = np.bincount(codes, minlength=past.n) >= 5
    best = np.where(enough, _smoothed(histogram).argmax(axis=1), fallback_hour).astype(np.int64)
    return pd.Series(best, index=past.users, name="best_send_hour")


def behaviour_features(
    events: pd.DataFrame,
    cutoff: pd.Timestamp,
    *,
    timezones: pd.Series | None = None,
) -> pd.DataFrame:
    """One row per user of BEHAVIOUR_COLUMNS, the traffic shape that tells bots from people.

    Night is 0-5h local when `timezones` is given, else UTC.
    """
    past = _Past(events, cutoff, None)
    minute = past.ns // 60_000_000_000
    span = int(minute.max() - minute.min()) + 1 if len(minute) else 1
    key, per_minute = np.unique(
        past.codes * span + (minute - (minute.min() if len(minute) else 0)), return_counts=True
    )
    owner = key // span
    active_minutes = np.bincount(owner, minlength=past.n)
    busiest = np.zeros(past.n)
    if len(owner):
        top = pd.Series(per_minute).groupby(owner).max()
        busiest[top.index.to_numpy()] = top.to_numpy()

    gaps, gap_codes = past.gaps_ns()
    gap_s = gaps / 1e9
    n_gaps = np.bincount(gap_codes, minlength=past.n)
    mean_gap = _ratio(np.bincount(gap_codes, gap_s, past.n), n_gaps)
    mean_square = _ratio(np.bincount(gap_codes, gap_s**2, past.n), n_gaps)
    std_gap = np.sqrt(np.maximum(mean_square - mean_gap**2, 0.0))

    hours = past.local_hours(timezones)
    hour_key = np.unique(past.codes * 24 + hours)
    total = past.count()
    columns = {
        "events_total": total,
        "events_per_active_minute": _ratio(total, active_minutes),
        "max_events_per_minute": busiest,
        "gap_cv": np.where(n_gaps >= 2, _ratio(std_gap, mean_gap), 0.0),
        "night_share": _ratio(past.count(hours < 5), total),
        "distinct_active_hours": np.bincount(hour_key // 24, minlength=past.n),
        "purchase_ratio": _ratio(past.count(past.kind == "purchase"), total),
    }
    return _frame(past, columns, BEHAVIOUR_COLUMNS)
