"""Online features kept current from each user's event history, for scoring by user id.

Every ingested event (``/v1/events``, ``pushpilot data load``) is appended to its user's
history (``keys.user_history``) as a packed 17-byte record: event time in ns (int64), a kind
code (uint8) and the value (float64, NaN for none). Refreshing a user rebuilds the user's
``FEATURE_COLUMNS`` and best send hour from that history with the same pure functions the
training uses (``pipeline.features``), as of the tenant's events clock: the latest event time
the tenant has sent. A user's features are as of the last time one of the user's events
arrived; users without new events keep theirs.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import redis
from redis.client import NEVER_DECODE

from pipeline import keys
from pipeline.features import FEATURE_COLUMNS, best_send_hour, build_features
from pipeline.featurestore import FeatureLayoutError, update_features, update_send_hours

__all__ = [
    "HISTORY_MAX_EVENTS",
    "HISTORY_DTYPE",
    "FeatureLayoutError",
    "pack_event",
    "events_clock",
    "refresh_users",
    "history_events",
]

# Older events of a user beyond this many are dropped when the user is refreshed.
HISTORY_MAX_EVENTS = 20_000
_RECORD = struct.Struct("<qBd")
#: The history record as a numpy dtype (the same layout as ``_RECORD``).
HISTORY_DTYPE = np.dtype([("ns", "<i8"), ("kind", "u1"), ("value", "<f8")])
# The kinds the features tell apart; any other event type counts as a plain event.
_KINDS = ("other", "session_start", "view", "add_to_cart", "purchase", "push_sent", "push_open")
_KIND_CODE = {kind: code for code, kind in enumerate(_KINDS)}
_CHUNK_USERS = 2_000

# Keep only the newest ARGV[1] bytes of the history; appends in between are kept too.
_TRIM = """
local n = redis.call('STRLEN', KEYS[1])
local keep = tonumber(ARGV[1])
if n > keep then
  redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], n - keep, -1))
end
return n
"""


def pack_event(event_time: float, event_type: str, value: float | None) -> bytes:
    """One history record: time (seconds since the epoch), kind and value."""
    number = math.nan if value is None else float(value)
    # Microseconds first: seconds times 1e9 in a float is off by up to a few hundred ns.
    return _RECORD.pack(round(event_time * 1e6) * 1000, _KIND_CODE.get(event_type, 0), number)


def events_clock(r: redis.Redis, tenant_id: str) -> pd.Timestamp | None:
    """The tenant's latest event time, which its online features are computed as of."""
    raw = r.hget(keys.tenant_meta(tenant_id), "events_clock_ms")
    return None if raw is None else pd.Timestamp(int(raw), unit="ms", tz="UTC")


def _histories(r: redis.Redis, tenant_id: str, user_ids: Sequence[str]) -> list[bytes]:
    pipe = r.pipeline(transaction=False)
    for user_id in user_ids:
        # Raw bytes: the client decodes replies to str, and packed records are not text.
        pipe.execute_command("GET", keys.user_history(tenant_id, user_id),  # type: ignore[no-untyped-call]
                             **{NEVER_DECODE: []})
    raws: list[bytes] = [raw or b"" for raw in pipe.execute()]
    limit = HISTORY_MAX_EVENTS * _RECORD.size
    for i, (user_id, raw) in enumerate(zip(user_ids, raws, strict=True)):
        if len(raw) % _RECORD.size:
            raise ValueError(
                f"tenant {tenant_id!r}: the event history of user {user_id!r} is {len(raw)} bytes, "
                f"not a multiple of {_RECORD.size}; delete it and load the user's events again")
        if len(raw) > limit:
            r.eval(_TRIM, 1, keys.user_history(tenant_id, user_id), limit)
            raws[i] = raw[-limit:]
    return raws


def _events_frame(user_ids: Sequence[str], raws: Sequence[bytes]) -> pd.DataFrame:
    records = np.frombuffer(b"".join(raws), dtype=HISTORY_DTYPE)
    counts = [len(raw) // _RECORD.size for raw in raws]
    return pd.DataFrame({
        "user_id": np.repeat(np.asarray(user_ids, dtype=object), counts),
        "event_time": pd.to_datetime(records["ns"], utc=True),
        "event_type": np.asarray(_KINDS, dtype=object)[records["kind"]],
        "value": records["value"],
    })


def refresh_users(
    r: redis.Redis,
    tenant_id: str,
    user_ids: Sequence[str],
    *,
    as_of_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Recompute these users' online features and send hours from their histories.

    ``as_of_ms`` defaults to the tenant's events clock. Send hours are in UTC (the events
    carry no time zone). Raises FeatureLayoutError when the tenant's stored features have
    other columns than ``FEATURE_COLUMNS``. Returns how many users were written.
    """
    if as_of_ms is None:
        clock = events_clock(r, tenant_id)
        if clock is None:
            return 0
    else:
        clock = pd.Timestamp(int(as_of_ms), unit="ms", tz="UTC")
    unique = list(dict.fromkeys(str(u) for u in user_ids))
    written = 0
    for start in range(0, len(unique), _CHUNK_USERS):
        chunk = unique[start : start + _CHUNK_USERS]
        events = _events_frame(chunk, _histories(r, tenant_id, chunk))
        features = build_features(events, clock, users=pd.Index(chunk, name="user_id"))
        written += update_features(r, tenant_id, features[list(FEATURE_COLUMNS)])
        if (events["event_time"] <= clock).any():
            update_send_hours(r, tenant_id, best_send_hour(events, clock))
        if progress is not None:
            progress(len(chunk))
    return written


def history_events(r: redis.Redis, tenant_id: str, user_id: str) -> pd.DataFrame:
    """The user's stored event history (user_id, event_time, event_type, value), oldest first;
    event types the features do not tell apart read as ``other``."""
    return _events_frame([user_id], _histories(r, tenant_id, [user_id]))
