"""`pushpilot data load`: read an events file, check every row, store it, refresh features.

The file has the columns ``data generate`` writes (``user_id``, ``event_time``, ``event_type``,
optional ``value``; other columns such as ``item`` are ignored), as CSV (comma, semicolon or
tab), JSON Lines (one object per line) or Parquet. An ``event_id`` column is optional: without
one, an event's id is a digest of its content, so loading the same file twice stores it once
(within the two-day dedupe window of ``pipeline.events``). Every row is checked before anything
is written; the first bad one is named by its line.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from pipeline.errors import InvalidInputError
from pipeline.events import Event, store_events
from pipeline.features import FEATURE_COLUMNS
from pipeline.featurestore import check_feature_layout
from pipeline.onlinefeatures import refresh_users

__all__ = ["USER_ID_PATTERN", "EVENT_TYPE_PATTERN", "LoadResult", "read_event_file", "load_events"]

# The same rules as the HTTP API's events.
USER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
_EARLIEST = pd.Timestamp("1970-01-01", tz="UTC")
_FUTURE_SLACK = pd.Timedelta(days=1)
_REQUIRED = ("user_id", "event_time", "event_type")
_CSV = (".csv", ".tsv", ".txt")
_JSONL = (".jsonl", ".ndjson")
_PARQUET = (".parquet", ".pq")
_BATCH_EVENTS = 2_000


@dataclass(frozen=True, slots=True)
class LoadResult:
    events: int
    accepted: int
    duplicates: int
    users: int
    features_as_of: pd.Timestamp | None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            header = handle.readline()
    except UnicodeDecodeError as e:
        raise InvalidInputError("file", f"{path.name} is not UTF-8 text: {e}") from e
    sep = max((",", ";", "\t"), key=header.count)
    try:
        # Blank lines kept as rows, so a row's line number is its position plus the header.
        frame = pd.read_csv(path, sep=sep, dtype=str, skipinitialspace=True,
                            keep_default_na=False, na_values=[""], encoding="utf-8-sig",
                            skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InvalidInputError("file", f"{path.name} is not valid CSV: {e}") from e
    return frame.assign(line=np.arange(2, len(frame) + 2))


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows, lines = [], []
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except ValueError as e:
                    raise InvalidInputError("file", f"line {number}: not JSON ({e})") from None
                if not isinstance(row, dict):
                    raise InvalidInputError(
                        "file", f"line {number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
                lines.append(number)
    except UnicodeDecodeError as e:
        raise InvalidInputError("file", f"{path.name} is not UTF-8 text: {e}") from e
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    return frame.assign(line=np.asarray(lines, dtype=np.int64))


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    return values.where(values.isna(), values.astype(str).str.strip())


def _times(text: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    retry = parsed.isna() & text.notna()
    if retry.any():
        # Other layouts ("03/02/2025 10:00") cost a slow per-value parse; only for stragglers.
        parsed[retry] = pd.to_datetime(text[retry], utc=True, format="mixed", errors="coerce")
    return parsed


def _first_problem(frame: pd.DataFrame, where: str, now: pd.Timestamp) -> tuple[pd.DataFrame, str | None]:
    """The checked columns, and the problem of the earliest bad row (None when all are good)."""
    user_id = _text(frame, "user_id")
    event_type = _text(frame, "event_type")
    time_text = _text(frame, "event_time")
    parsed = _times(time_text.astype(object))
    latest = now + _FUTURE_SLACK
    # Compared in the parsed unit: year 9999 does not fit in nanoseconds.
    out_of_range = (parsed < _EARLIEST) | (parsed > latest)
    event_time = parsed.where(~out_of_range).dt.as_unit("ns")
    raw_value = frame["value"] if "value" in frame.columns else pd.Series(np.nan, index=frame.index)
    value = pd.to_numeric(raw_value, errors="coerce").astype(np.float64)
    given_value = raw_value.notna() & (raw_value.astype(str).str.strip() != "")
    event_id = _text(frame, "event_id") if "event_id" in frame.columns else None
    checks: list[tuple[pd.Series, str, Callable[[int], str]]] = [
        (user_id.isna(), "user_id", lambda i: "is empty"),
        (~user_id.fillna("").str.fullmatch(USER_ID_PATTERN),
         "user_id", lambda i: f"{user_id.iloc[i]!r} must match {USER_ID_PATTERN}"),
        (event_type.isna(), "event_type", lambda i: "is empty"),
        (~event_type.fillna("").str.fullmatch(EVENT_TYPE_PATTERN),
         "event_type", lambda i: f"{event_type.iloc[i]!r} must match {EVENT_TYPE_PATTERN}"),
        (time_text.isna(), "event_time", lambda i: "is empty"),
        (parsed.isna(), "event_time",
         lambda i: f"cannot read {time_text.iloc[i]!r} as a time; use ISO 8601, e.g. "
                   "2025-03-01T10:00:00Z"),
        (out_of_range, "event_time",
         lambda i: f"{time_text.iloc[i]!r} is outside {_EARLIEST.date()} .. {latest.date()}"),
        (given_value & ~np.isfinite(value.fillna(np.inf)), "value",
         lambda i: f"{raw_value.iloc[i]!r} is not a finite number"),
    ]
    if event_id is not None:
        checks.append((event_id.isna() | (event_id.fillna("").str.len() > 128), "event_id",
                       lambda i: "must be 1-128 characters"))
    lines = frame["line"].to_numpy()
    worst: tuple[int, str] | None = None
    for mask, field, problem in checks:
        bad = np.flatnonzero(mask.fillna(True).to_numpy(dtype=bool))
        if len(bad) and (worst is None or lines[bad[0]] < worst[0]):
            worst = (int(lines[bad[0]]), f"{field}: {problem(int(bad[0]))}")
    checked = pd.DataFrame({"user_id": user_id, "event_time": event_time,
                            "event_type": event_type, "value": value.where(given_value)})
    if event_id is not None:
        checked["event_id"] = event_id
    elif "item" in frame.columns:
        checked["item"] = frame["item"]
    if worst is None:
        return checked, None
    return checked, f"{where} {worst[0]}: {worst[1]}"


def _content_ids(checked: pd.DataFrame) -> list[str]:
    """A digest per event: the same file loaded twice gives the same ids, so it is stored once.

    Identical rows of one file are told apart by their occurrence (a user's two pushes in the
    same second are two events).
    """
    item = checked["item"].astype(str) if "item" in checked.columns else pd.Series("", index=checked.index)
    content = pd.DataFrame({"user_id": checked["user_id"],
                            "ns": checked["event_time"].astype("int64").astype(str),
                            "event_type": checked["event_type"],
                            "value": checked["value"].map(repr), "item": item}).fillna("")
    occurrence = content.groupby(list(content.columns), sort=False).cumcount().map(str)
    parts = zip(*(content[c] for c in content.columns), occurrence, strict=True)
    return [hashlib.sha256("\x1f".join(map(str, p)).encode()).hexdigest()[:32] for p in parts]


def read_event_file(path: Path, now: pd.Timestamp | None = None) -> list[Event]:
    """Every event of the file, checked; raises InvalidInputError naming the first bad line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CSV + _JSONL + _PARQUET:
        raise InvalidInputError("file", f"unsupported file type {suffix or '(none)'!r} for "
                                f"{path.name}; use .csv, .tsv, .jsonl, .ndjson or .parquet")
    if not path.is_file():
        raise InvalidInputError("file", f"no such file: {path}")
    if path.stat().st_size == 0:
        raise InvalidInputError("file", f"{path.name} is empty; expected events")
    where = "line"
    if suffix in _CSV:
        frame = _read_csv(path)
    elif suffix in _JSONL:
        frame = _read_jsonl(path)
    else:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as e:
            raise InvalidInputError("file", f"{path.name} is not readable Parquet: {e}") from e
        frame = frame.assign(line=np.arange(1, len(frame) + 1))
        where = "row"
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        found = [c for c in frame.columns if c != "line"]
        raise InvalidInputError(missing[0], f"required column missing from {path.name}; "
                                f"found {found}; expected {list(_REQUIRED)} and optionally value")
    if frame.empty:
        raise InvalidInputError("file", f"{path.name} has no events")
    stamp = pd.Timestamp.now(tz="UTC") if now is None else now
    checked, problem = _first_problem(frame, where, stamp)
    if problem is not None:
        raise InvalidInputError("file", f"{path.name} {problem}; nothing was loaded")
    ids = list(checked["event_id"]) if "event_id" in checked.columns else _content_ids(checked)
    seconds = checked["event_time"].astype("int64").to_numpy() / 1e9
    values = checked["value"].to_numpy()
    return [
        (event_id, user_id, float(at), event_type, None if np.isnan(v) else float(v))
        for event_id, user_id, at, event_type, v in zip(
            ids, checked["user_id"], seconds, checked["event_type"], values, strict=True)
    ]


def load_events(
    r: redis.Redis,
    tenant_id: str,
    events: list[Event],
    *,
    now: float | None = None,
    on_stored: Callable[[int], None] | None = None,
    on_refreshed: Callable[[int], None] | None = None,
) -> LoadResult:
    """Store the events in batches, then refresh the features of every user they touched.

    A load that stops half-way (Redis gone) can be run again: the events already stored are
    duplicates the second time.
    """
    check_feature_layout(r, tenant_id, list(FEATURE_COLUMNS))
    accepted = duplicates = 0
    users: dict[str, None] = {}
    clock_ms: int | None = None
    wall = time.time() if now is None else now
    for start in range(0, len(events), _BATCH_EVENTS):
        batch = events[start : start + _BATCH_EVENTS]
        result = store_events(r, tenant_id, batch, now=wall)
        accepted += result.accepted
        duplicates += result.duplicates
        users.update(dict.fromkeys(result.users))
        clock_ms = result.clock_ms
        if on_stored is not None:
            on_stored(len(batch))
    refresh_users(r, tenant_id, list(users), as_of_ms=clock_ms, progress=on_refreshed)
    as_of = None if not clock_ms else pd.Timestamp(clock_ms, unit="ms", tz="UTC")
    return LoadResult(len(events), accepted, duplicates, len(users), as_of)
