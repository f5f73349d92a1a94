"""Labelled series with the anomalies a push platform sees, to develop detectors beyond NAB's 18.

The 18 shared NAB files are too few to choose a detector on: one detector was fitted to them
(63.6 there) and scored 37.0 on 40 unseen NAB series. This module writes a seeded corpus in NAB's
own layout (``data/<category>/<file>.csv`` with ``timestamp,value`` and a ``windows.json``) so the
same scorer, the same leave-one-category-out evaluation and the same CLI run on it. Nothing in a
detector may look at it but its scores.

Three categories, each a kind of series a push platform watches:

* ``synthRequests`` – requests or events per 5 minutes: Poisson counts around a daily and weekly
  rhythm with a slowly wandering level, over-dispersed, with harmless one-row blips.
* ``synthMetrics`` – a utilisation-like metric (0..100) every 5 minutes, sometimes with a gap in
  the sampling: a mean-reverting level with heavy-tailed noise and occasional harmless spikes.
* ``synthHourly`` – a short hourly business metric (cost per click, conversions): log-normal noise
  around a daily rhythm, 1,200 to 3,000 rows.

Anomalies (zero to three a file, about a fifth of the files have none): ``burst`` (a few rows at
many times the normal), ``drop`` (an outage towards zero), ``level_shift`` (a lasting step up or
down), ``drift`` (a ramp over a day or more to a new level), ``season`` (the daily rhythm moves
or flattens) and ``variance`` (the noise grows several-fold for a while). Windows follow NAB's
convention: a tenth of the file's rows shared among its anomalies, centred on each start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["CATEGORIES", "KINDS", "Anomaly", "generate_series", "write_corpus"]

KINDS = ("burst", "drop", "level_shift", "drift", "season", "variance")
CATEGORIES = ("synthRequests", "synthMetrics", "synthHourly")
_PROBATION = 0.15  # NAB ignores the first 15% of a file; no anomaly starts there
_WINDOW_SHARE = 0.10  # NAB's window rows per file, shared among its anomalies


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One planted anomaly: its kind, first row and how many rows it lasts."""

    kind: str
    start: int
    rows: int


@dataclass(frozen=True, slots=True)
class _Shape:
    """The clean signal of a file and how its noise is drawn."""

    rows_per_day: int
    level: np.ndarray  # the slowly wandering level, per row
    season: np.ndarray  # daily (and weekly) rhythm, a multiplier per row
    noise: np.ndarray  # noise scale multiplier per row (1 normally)
    draw: Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _daily(rows: int, rows_per_day: int, rng: np.random.Generator, weekly: bool) -> np.ndarray:
    t = np.arange(rows) / rows_per_day
    phase = rng.uniform(0, 1)
    amplitude = rng.uniform(0.2, 0.8)
    shape = 1 + amplitude * np.sin(2 * np.pi * (t - phase)) \
        + rng.uniform(0, 0.3) * amplitude * np.sin(4 * np.pi * (t - phase) + rng.uniform(0, 6.3))
    if weekly:
        weekend = (np.floor(t + rng.integers(0, 7)) % 7) >= 5
        shape = shape * np.where(weekend, rng.uniform(0.5, 1.0), 1.0)
    return np.maximum(shape, 0.05)


def _wander(rows: int, rng: np.random.Generator, sd: float, keep: float) -> np.ndarray:
    """A mean-reverting log-level (AR(1)), exponentiated: a level that drifts but comes back."""
    steps = rng.normal(0, sd, rows)
    out = np.empty(rows)
    value = 0.0
    for i in range(rows):
        value = keep * value + steps[i]
        out[i] = value
    return np.exp(out)


def _requests(rng: np.random.Generator) -> _Shape:
    rows = int(rng.integers(4000, 12001))
    level = 10 ** rng.uniform(0.5, 3.0) * _wander(rows, rng, 0.01, 0.999)
    dispersion = rng.uniform(5, 50)

    def draw(mean: np.ndarray, noise: np.ndarray, g: np.random.Generator) -> np.ndarray:
        # Gamma-Poisson: the smaller the shape, the burstier the counts; noise > 1 lowers it.
        shape = dispersion / noise**2
        counts = g.poisson(g.gamma(shape, mean / shape)).astype(float)
        blips = g.random(len(mean)) < 0.002  # harmless one-row blips, not labelled
        return np.where(blips, np.round(counts * g.uniform(1.3, 2.0, len(mean))), counts)

    return _Shape(288, level, _daily(rows, 288, rng, weekly=True), np.ones(rows), draw)


def _metrics(rng: np.random.Generator) -> _Shape:
    rows = int(rng.integers(3000, 8001))
    level = rng.uniform(5, 60) * _wander(rows, rng, 0.02, 0.99)
    seasonal = _daily(rows, 288, rng, weekly=False) if rng.random() < 0.4 else np.ones(rows)
    spread = rng.uniform(0.03, 0.15)

    def draw(mean: np.ndarray, noise: np.ndarray, g: np.random.Generator) -> np.ndarray:
        values = mean * (1 + spread * noise * g.standard_t(4, len(mean)))
        spikes = g.random(len(mean)) < 0.003  # harmless spikes (a cron job, a GC pause)
        values = np.where(spikes, values * g.uniform(1.2, 1.8, len(mean)), values)
        return np.clip(values, 0, 100).round(3)

    return _Shape(288, level, seasonal, np.ones(rows), draw)


def _hourly(rng: np.random.Generator) -> _Shape:
    rows = int(rng.integers(1200, 3001))
    level = 10 ** rng.uniform(-1, 1) * _wander(rows, rng, 0.02, 0.98)
    spread = rng.uniform(0.1, 0.35)

    def draw(mean: np.ndarray, noise: np.ndarray, g: np.random.Generator) -> np.ndarray:
        return (mean * np.exp(spread * noise * g.normal(0, 1, len(mean)))).round(4)

    return _Shape(24, level, _daily(rows, 24, rng, weekly=True), np.ones(rows), draw)


_MAKERS = {"synthRequests": _requests, "synthMetrics": _metrics, "synthHourly": _hourly}
_FREQ = {"synthRequests": "5min", "synthMetrics": "5min", "synthHourly": "1h"}


def _plant(kind: str, start: int, shape: _Shape, rng: np.random.Generator) -> int:
    """Change ``shape`` in place from ``start``; return how many rows the anomaly lasts."""
    day = shape.rows_per_day
    rows = len(shape.level)
    if kind == "burst":
        length = int(rng.integers(1, max(2, day // 12)))
        shape.level[start:start + length] *= rng.uniform(3, 10)
    elif kind == "drop":
        length = int(rng.integers(max(2, day // 48), max(3, day // 4)))
        shape.level[start:start + length] *= rng.uniform(0, 0.1)
    elif kind == "level_shift":
        length = rows - start
        shape.level[start:] *= rng.choice([rng.uniform(1.6, 3.0), rng.uniform(0.3, 0.6)])
    elif kind == "drift":
        length = int(rng.integers(day, 3 * day))
        ramp = np.linspace(1, rng.choice([rng.uniform(2, 3), rng.uniform(0.3, 0.5)]), length)
        end = min(rows, start + length)
        shape.level[start:end] *= ramp[:end - start]
        shape.level[end:] *= ramp[-1]
    elif kind == "season":
        length = rows - start
        tail = shape.season[start:]
        if rng.random() < 0.5:  # the rhythm moves by a quarter to a half day
            tail[:] = np.roll(shape.season, int(rng.uniform(0.25, 0.5) * day))[start:]
        else:  # the rhythm flattens
            tail[:] = tail.mean()
    elif kind == "variance":
        length = int(rng.integers(day, 3 * day))
        shape.noise[start:start + length] *= rng.uniform(3, 6)
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}; choose one of {KINDS}")
    return int(min(length, rows - start))


def generate_series(category: str, rng: np.random.Generator
                    ) -> tuple[pd.DataFrame, list[Anomaly], list[tuple[str, str]]]:
    """One labelled series of ``category``: the ``timestamp,value`` frame, its anomalies and
    its NAB windows (``[(start, end), ...]`` as ISO times)."""
    if category not in _MAKERS:
        raise ValueError(f"unknown category {category!r}; choose one of {CATEGORIES}")
    shape = _MAKERS[category](rng)
    rows = len(shape.level)
    count = 0 if rng.random() < 0.2 else int(rng.integers(1, 4))
    # Starts after the probation, at least an eighth of the file apart, none in the last 5%.
    first = int(_PROBATION * rows) + shape.rows_per_day
    starts: list[int] = []
    for _ in range(50 * count):
        if len(starts) == count:
            break
        start = int(rng.integers(first, int(0.95 * rows)))
        if all(abs(start - s) > rows // 8 for s in starts):
            starts.append(start)
    starts.sort()
    kinds = [str(k) for k in rng.choice(KINDS, size=len(starts))]
    # A lasting change ends the file's story: any later anomaly would sit on a changed series.
    lasting = {"level_shift", "season"}
    for i, kind in enumerate(kinds[:-1]):
        if kind in lasting:
            kinds[i] = str(rng.choice(["burst", "drop", "variance"]))
    anomalies = [Anomaly(kind, start, _plant(kind, start, shape, rng))
                 for kind, start in zip(kinds, starts, strict=True)]
    values = shape.draw(shape.level * shape.season, shape.noise, rng)
    stamps = pd.date_range(pd.Timestamp("2015-01-05") + pd.Timedelta(days=int(rng.integers(0, 400))),
                           periods=rows, freq=_FREQ[category])
    frame = pd.DataFrame({"timestamp": stamps, "value": values})
    if category == "synthMetrics" and rng.random() < 0.3:
        # Irregular sampling: a few percent of rows missing, as a collector that drops points.
        keep = rng.random(rows) > rng.uniform(0.01, 0.08)
        for a in anomalies:
            keep[a.start] = True
        frame = frame[keep]
        old_to_new = np.cumsum(keep) - 1
        anomalies = [Anomaly(a.kind, int(old_to_new[a.start]),
                             max(1, int(keep[a.start:a.start + a.rows].sum()))) for a in anomalies]
        frame = frame.reset_index(drop=True)
    windows = _windows(frame["timestamp"], anomalies)
    return frame, anomalies, windows


def _windows(stamps: pd.Series, anomalies: list[Anomaly]) -> list[tuple[str, str]]:
    if not anomalies:
        return []
    n = len(stamps)
    width = max(2, int(_WINDOW_SHARE * n / len(anomalies)))
    out = []
    for a in anomalies:
        first = max(0, a.start - width // 2)
        last = min(n - 1, first + width - 1)
        out.append((str(stamps.iloc[first]), str(stamps.iloc[last])))
    return out


def write_corpus(out: Path, seed: int = 0, files_per_category: int = 12) -> dict[str, object]:
    """Write ``out/data/<category>/series_NN.csv``, ``out/windows.json`` and ``out/truth.json``
    (each file's anomalies); return counts. The same seed writes the same corpus."""
    if files_per_category < 1:
        raise ValueError(f"files_per_category must be at least 1, got {files_per_category}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    windows: dict[str, list[tuple[str, str]]] = {}
    truth: dict[str, list[dict[str, object]]] = {}
    for category in CATEGORIES:
        (out / "data" / category).mkdir(parents=True, exist_ok=True)
        for number in range(files_per_category):
            frame, anomalies, file_windows = generate_series(category, rng)
            name = f"{category}/series_{number:02d}.csv"
            frame.to_csv(out / "data" / name, index=False)
            windows[name] = file_windows
            truth[name] = [{"kind": a.kind, "start": str(frame["timestamp"].iloc[a.start]),
                            "rows": a.rows} for a in anomalies]
    (out / "windows.json").write_text(json.dumps(windows, indent=1))
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    kinds: dict[str, int] = {}
    for listed in truth.values():
        for a in listed:
            kinds[str(a["kind"])] = kinds.get(str(a["kind"]), 0) + 1
    return {"seed": seed, "files": len(windows), "windows": sum(len(w) for w in windows.values()),
            "without_anomaly": sum(not w for w in windows.values()), "kinds": kinds,
            "out": str(out)}
