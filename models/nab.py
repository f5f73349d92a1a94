"""The NAB score (Lavin & Ahmad 2015): reward early detection inside labelled windows.

Semantics follow NAB v1.1's scorer (its sweeper and threshold optimiser):

* Each row gets a weight. Inside a window of width ``w`` (rows) whose last row is ``r``, row ``i``
  sits at relative position ``p = -(r - i + 1) / w`` and weighs
  ``tp_weight * sigma(p) / sigma(-1)``, with ``sigma(p) = 2 / (1 + exp(5p)) - 1`` (the scaled
  sigmoid), so the first row of a window is worth exactly ``tp_weight``. Only the best (earliest)
  detection of a window counts; a window without one costs ``-fn_weight``.
* A detection outside every window is a false positive. Before the first window it costs
  ``-fp_weight``; after a window it costs ``fp_weight * sigma(|i - r| / (w - 1))``, so a late
  detection just after a window costs almost nothing and one far from it the full weight.
* Rows in the probationary period, the first ``min(floor(0.15 n), 0.15 * 5000)`` rows of a file,
  are ignored: they are neither false positives nor true positives.
* A file's raw score is the sum of those parts at a threshold (a row is a detection when its
  anomaly score is ``>= threshold``). One threshold is chosen for the whole corpus, the one with the
  best summed raw score, and the corpus score is normalised:
  ``100 * (raw - null) / (perfect - null)`` with ``null = -fn_weight * windows`` (never
  detecting) and ``perfect = tp_weight * windows`` (detecting each window at its first row).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CostProfile",
    "STANDARD_PROFILE",
    "PROBATION_FRACTION",
    "scaled_sigmoid",
    "probationary_length",
    "LabelledSeries",
    "FileScore",
    "CorpusScore",
    "label_series",
    "score_file",
    "optimise_threshold",
    "score_corpus",
    "LeftOutScore",
    "left_out_score",
    "read_windows",
]

PROBATION_FRACTION = 0.15
_OUTSIDE = -1  # row outside every window
_PROBATION = -2  # row in the probationary period


@dataclass(frozen=True, slots=True)
class CostProfile:
    """Weights of an application profile (NAB's A_TP, A_FP, A_FN; A_TN is unused by the score)."""

    tp_weight: float = 1.0
    fp_weight: float = 0.11
    fn_weight: float = 1.0
    tn_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("tp_weight", "fp_weight", "fn_weight", "tn_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")


STANDARD_PROFILE = CostProfile()


def scaled_sigmoid(position: ArrayLike) -> NDArray[np.float64]:
    """``2 / (1 + exp(5 x)) - 1``: about 0.987 at -1 (early), 0 at 0, -1 from 3 on (far after)."""
    x = np.asarray(position, dtype=np.float64)
    out = 2.0 / (1.0 + np.exp(np.clip(5.0 * x, -700, 700))) - 1.0
    return np.where(x >= 3.0, -1.0, out)


_MAX_TP = float(scaled_sigmoid(-1.0))


def probationary_length(n_rows: int, fraction: float = PROBATION_FRACTION) -> int:
    """Rows at the start of a file whose detections NAB ignores while detectors learn."""
    if not 0 <= fraction < 1:
        raise ValueError(f"probation fraction must be in [0, 1), got {fraction!r}")
    return int(min(math.floor(fraction * n_rows), fraction * 5000))


@dataclass(frozen=True, eq=False)
class LabelledSeries:
    """Per-row weights of one file: what a detection at each row would be worth.

    ``window`` is the window number of each row, -1 outside every window and -2 in probation;
    ``weight`` is the detection's value (positive inside windows, negative outside).
    """

    name: str
    timestamps: pd.DatetimeIndex
    window: NDArray[np.int64]
    weight: NDArray[np.float64]
    n_windows: int
    window_bounds: list[tuple[int, int]] = field(default_factory=list)


def _window_rows(timestamps: pd.DatetimeIndex, name: str,
                 windows: Sequence[tuple[str | pd.Timestamp, str | pd.Timestamp]]
                 ) -> list[tuple[int, int]]:
    rows = []
    for number, pair in enumerate(windows):
        if len(pair) != 2:
            raise ValueError(f"window {number} of {name!r} must be [start, end], got {pair!r}")
        start, end = pd.Timestamp(pair[0]), pd.Timestamp(pair[1])
        if end < start:
            raise ValueError(f"window {number} of {name!r} ends before it starts: {pair!r}")
        # NAB's files are not always sorted (machine_temperature repeats an hour), so a window is
        # the rows whose time falls in it, from the first such row to the last.
        inside = np.flatnonzero((timestamps >= start) & (timestamps <= end))
        if not len(inside):
            raise ValueError(f"window {number} of {name!r} ({pair[0]} .. {pair[1]}) holds no rows "
                             f"of the series ({timestamps[0]} .. {timestamps[-1]})")
        rows.append((int(inside[0]), int(inside[-1])))
    rows.sort()
    for (_, prev_end), (start, _) in zip(rows, rows[1:], strict=False):
        if start <= prev_end:
            raise ValueError(f"windows of {name!r} overlap; NAB windows must be disjoint")
    return rows


def label_series(
    name: str,
    timestamps: ArrayLike,
    windows: Sequence[tuple[str | pd.Timestamp, str | pd.Timestamp]],
    profile: CostProfile = STANDARD_PROFILE,
    probation_fraction: float = PROBATION_FRACTION,
) -> LabelledSeries:
    """Weigh every row of a file given its labelled windows (``[(start, end), ...]``, inclusive)."""
    index = pd.DatetimeIndex(timestamps)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    if index.hasnans:
        raise ValueError(f"timestamps of {name!r} have missing values")
    n = len(index)
    bounds = _window_rows(index, name, windows)
    window = np.full(n, _OUTSIDE, dtype=np.int64)
    weight = np.full(n, -profile.fp_weight)  # before any window: a full false positive
    rows = np.arange(n)
    for number, (first, last) in enumerate(bounds):
        width = last - first + 1
        inside = slice(first, last + 1)
        window[inside] = number
        position = -(last - rows[inside] + 1) / width
        weight[inside] = scaled_sigmoid(position) * profile.tp_weight / _MAX_TP
        following = bounds[number + 1][0] if number + 1 < len(bounds) else n
        after = slice(last + 1, following)
        # A one-row window has no width to measure distance by: anything after it is far.
        distance = (rows[after] - last) / (width - 1) if width > 1 else np.full(following - last - 1, 3.0)
        weight[after] = scaled_sigmoid(distance) * profile.fp_weight
    probation = probationary_length(n, probation_fraction)
    window[:probation] = _PROBATION
    weight[:probation] = 0.0
    scorable = np.unique(window[window >= 0])
    return LabelledSeries(name, index, window, weight, int(len(scorable)), bounds)


@dataclass(frozen=True, slots=True)
class FileScore:
    """One file's score at one threshold, with its first detection per window and its FPs."""

    name: str
    raw: float
    null: float
    perfect: float
    true_positives: int
    false_positives: int
    false_negatives: int
    detections: tuple[int, ...]


def score_file(series: LabelledSeries, scores: ArrayLike, threshold: float,
               profile: CostProfile = STANDARD_PROFILE) -> FileScore:
    """Raw NAB score of one file: rows with ``score >= threshold`` are detections."""
    values = _checked_scores(series, scores)
    detected = (values >= threshold) & (series.window != _PROBATION)
    raw = 0.0
    tp = fn = 0
    for number in range(len(series.window_bounds)):
        in_window = series.window == number
        if not in_window.any():
            continue  # entirely in probation: NAB does not score it
        hits = np.flatnonzero(detected & in_window)
        if len(hits):
            raw += float(series.weight[hits[0]])
            tp += 1
        else:
            raw -= profile.fn_weight
            fn += 1
    false = detected & (series.window == _OUTSIDE)
    raw += float(series.weight[false].sum())
    return FileScore(
        name=series.name,
        raw=raw,
        null=-profile.fn_weight * series.n_windows,
        perfect=profile.tp_weight * series.n_windows,
        true_positives=tp,
        false_positives=int(false.sum()),
        false_negatives=fn,
        detections=tuple(int(i) for i in np.flatnonzero(detected)),
    )


def _checked_scores(series: LabelledSeries, scores: ArrayLike) -> NDArray[np.float64]:
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != series.window.shape:
        raise ValueError(f"{series.name!r} has {len(series.window)} rows but got "
                         f"{values.shape} anomaly scores; give one score per row")
    if not np.isfinite(values).all():
        raise ValueError(f"anomaly scores of {series.name!r} must be finite; got NaN or inf")
    return values


def optimise_threshold(
    corpus: Sequence[tuple[LabelledSeries, ArrayLike]],
    profile: CostProfile = STANDARD_PROFILE,
) -> tuple[float, float]:
    """The one threshold with the best summed raw score over the corpus, and that score.

    Sweeps every distinct anomaly score from the highest down, as NAB's optimiser does: at each
    step a row becomes a detection, an FP adds its (negative) weight and a window's value becomes
    the best weight detected in it so far (``-fn_weight`` before any).
    """
    scores, weights, windows = [], [], []
    n_windows = 0
    offset = 0
    for series, values in corpus:
        values = _checked_scores(series, values)
        keep = series.window != _PROBATION
        scores.append(values[keep])
        weights.append(series.weight[keep])
        window = series.window[keep]
        windows.append(np.where(window >= 0, window + offset, _OUTSIDE))
        offset += len(series.window_bounds)
        n_windows += series.n_windows
    if not scores:
        raise ValueError("the corpus is empty; give at least one labelled series")
    score = np.concatenate(scores)
    weight = np.concatenate(weights)
    window = np.concatenate(windows)
    order = np.argsort(-score, kind="stable")
    score, weight, window = score[order], weight[order], window[order]

    change = np.where(window == _OUTSIDE, weight, 0.0)
    inside = np.flatnonzero(window >= 0)
    if len(inside):
        frame = pd.DataFrame({"window": window[inside], "weight": weight[inside]})
        best = frame.groupby("window")["weight"].cummax().to_numpy()
        before = frame.assign(best=best).groupby("window")["best"].shift(1).to_numpy()
        before = np.where(np.isnan(before), -profile.fn_weight, before)
        change[inside] = np.maximum(best, -profile.fn_weight) - np.maximum(before, -profile.fn_weight)
    total = -profile.fn_weight * n_windows + np.cumsum(change)
    # A threshold is a distinct score: it detects every row scoring at least that much.
    last_of_value = np.r_[score[1:] != score[:-1], True]
    candidates = np.r_[-profile.fn_weight * n_windows, total[last_of_value]]
    thresholds = np.r_[np.inf, score[last_of_value]]
    best_at = int(np.argmax(candidates))
    threshold = float(thresholds[best_at])
    if not math.isfinite(threshold):
        threshold = float(score.max()) + 1.0 if len(score) else 1.0
    return threshold, float(candidates[best_at])


@dataclass(frozen=True, slots=True)
class CorpusScore:
    """The corpus score at the optimised threshold, with every file's part in it."""

    threshold: float
    score: float
    raw: float
    null: float
    perfect: float
    files: tuple[FileScore, ...]

    def by_prefix(self) -> dict[str, float]:
        """Normalised score of each category (the part of a file's name before its first '/')."""
        groups: dict[str, list[FileScore]] = {}
        for file in self.files:
            groups.setdefault(file.name.split("/", 1)[0], []).append(file)
        return {name: _normalised(files) for name, files in sorted(groups.items())}


def _normalised(files: Sequence[FileScore]) -> float:
    raw = sum(f.raw for f in files)
    null = sum(f.null for f in files)
    perfect = sum(f.perfect for f in files)
    if perfect == null:
        # No windows: the best is no false positive (100), each one costs its weight in percent.
        return 100.0 + 100.0 * raw
    return 100.0 * (raw - null) / (perfect - null)


def score_corpus(
    corpus: Mapping[str, tuple[LabelledSeries, ArrayLike]],
    profile: CostProfile = STANDARD_PROFILE,
    threshold: float | None = None,
) -> CorpusScore:
    """Normalised NAB score of a corpus at one threshold (optimised over the corpus if None)."""
    items = [corpus[name] for name in sorted(corpus)]
    if threshold is None:
        threshold, _ = optimise_threshold(items, profile)
    files = tuple(score_file(series, values, threshold, profile) for series, values in items)
    raw = sum(f.raw for f in files)
    null = sum(f.null for f in files)
    perfect = sum(f.perfect for f in files)
    if perfect == null:
        raise ValueError("the corpus has no labelled windows; NAB cannot normalise its score")
    return CorpusScore(threshold, 100.0 * (raw - null) / (perfect - null), raw, null, perfect, files)


@dataclass(frozen=True, slots=True)
class LeftOutScore:
    """A corpus scored with each group's threshold optimised on the other groups only."""

    score: float
    by_group: dict[str, float]
    thresholds: dict[str, float]
    files: tuple[FileScore, ...]
    grouped_by: str = "category"
    """``"category"``, or ``"file"`` when the corpus has one category and each file was left out."""


def _category(name: str) -> str:
    return name.split("/", 1)[0]


def left_out_score(
    corpus: Mapping[str, tuple[LabelledSeries, ArrayLike]],
    profile: CostProfile = STANDARD_PROFILE,
    group: Callable[[str], str] = _category,
) -> LeftOutScore:
    """The cross-validated NAB score: each group of files (a category, by default) is scored at
    the threshold optimised on all the other groups, and the held-out raw scores are summed and
    normalised as :func:`score_corpus` does. With a single group, each file is left out instead.

    This is the score to expect on series like these that the threshold never saw; the in-sample
    :func:`score_corpus` is an upper bound of it.
    """
    names = sorted(corpus)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group(name), []).append(name)
    grouped_by = "category"
    if len(groups) < 2:
        groups, grouped_by = {name: [name] for name in names}, "file"
    if len(groups) < 2:
        raise ValueError("leaving a group out needs at least two files; give a larger corpus")
    files: list[FileScore] = []
    by_group: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    for key, members in sorted(groups.items()):
        others = [corpus[name] for name in names if name not in set(members)]
        threshold, _ = optimise_threshold(others, profile)
        scored = [score_file(*corpus[name], threshold, profile) for name in members]
        files.extend(scored)
        by_group[key] = _normalised(scored)
        thresholds[key] = threshold
    raw = sum(f.raw for f in files)
    null = sum(f.null for f in files)
    perfect = sum(f.perfect for f in files)
    if perfect == null:
        raise ValueError("the corpus has no labelled windows; NAB cannot normalise its score")
    return LeftOutScore(100.0 * (raw - null) / (perfect - null), by_group, thresholds, tuple(files),
                        grouped_by)


def read_windows(path: Path) -> dict[str, list[tuple[str, str]]]:
    """NAB's combined windows file: ``{"<category>/<file>.csv": [[start, end], ...]}``."""
    try:
        loaded = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"windows file {str(path)!r} does not exist; pass NAB's "
                                "combined_windows.json (or the dataset's windows.json)") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"windows file {str(path)!r} is not JSON ({e}); expected "
                         '{"<category>/<file>.csv": [[start, end], ...]}') from e
    if not isinstance(loaded, dict) or not all(isinstance(v, list) for v in loaded.values()):
        raise ValueError(f"windows file {str(path)!r} must map file names to lists of "
                         f"[start, end] pairs, got {type(loaded).__name__}")
    return {str(k): [tuple(pair) for pair in v] for k, v in loaded.items()}  # type: ignore[misc]
