"""Streaming anomaly detectors for univariate series (requests/s, events/s, error ratios, ...).

Every detector here is causal: the score of row ``t`` depends only on rows ``0..t`` (scoring a
prefix of a series gives the same scores as scoring the whole series and cutting them), so the
batch form below is exactly what a stream would produce one row at a time. Scores are in [0, 1].

* :class:`WindowedGaussian` is NAB's baseline: the Gaussian tail probability of the value under
  the mean and standard deviation of the previous ``window_size`` values.
* :class:`SeasonalLikelihood` is ours. Two predictors of the next value, the previous value
  (persistence, catches spikes and steps) and a robust seasonal baseline (an exponentially
  weighted mean of the same time-of-day slot on earlier days, catches a broken daily rhythm),
  each give a residual. Each residual becomes a robust z-score (median and MAD of the last
  ``history`` residuals), capped, and then a likelihood in the spirit of Numenta's anomaly
  likelihood: how far the mean of the last ``short`` z-scores lies above the distribution of
  z-scores over the last ``history`` rows, in standard deviations. A third surprise watches the
  density of surprises: the mean of the last ``density`` persistence z-scores against the
  distribution of that same mean over ``history`` rows (as Numenta's anomaly likelihood does), so
  a run of moderate spikes counts even when no single spike is new. The surprises are summed
  (a change seen by several tests counts more) and squashed into [0, 1]. A score is only
  reported when it is the highest of the last ``refractory`` rows, so one incident is one alert
  rather than hundreds.
* :class:`TailRank` is the default: how rare the value, its step from the previous row and its
  residual from the same time of day are among the last 2000 rows, by rank alone, so nothing about
  a series' scale has to be learnt. It was chosen by the worst left-out-category score over
  NAB's 18 shared files and two seeded corpora of push-platform anomalies
  (:mod:`models.anomaly_corpus`), where the detectors below that were fitted to the 18 files
  fell behind (docs/anomaly.md).
* :class:`SeasonalARTime`, the previous default: row by row, the larger of :class:`SeasonalLikelihood`'s
  score and :class:`~models.artime.ARTime`'s (novel shapes of the downsampled series, after
  ARTime by Mark Hampton), again kept only where it is a new maximum. The two see different
  anomalies: the likelihood sees spikes, steps and a broken daily rhythm as they happen, ARTime
  a stretch of hours shaped unlike any before it (a holiday in a city's taxi demand).
* :class:`RateBurstDetector` is the small online form the traffic guard uses per key: an EWMA
  baseline of a rate and of its deviation, with a state that fits in a Redis hash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

from models.artime import ARTime

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "Detector",
    "WindowedGaussian",
    "SeasonalLikelihood",
    "SeasonalARTime",
    "TailRank",
    "RateBurstDetector",
    "make_detector",
    "NabHarness",
    "with_harness",
    "sampling_slots_per_day",
]


def _series(timestamps: ArrayLike, values: ArrayLike) -> tuple[pd.DatetimeIndex, NDArray[np.float64]]:
    index = pd.DatetimeIndex(timestamps)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(index) != len(x):
        raise ValueError(f"need one value per timestamp, got {len(index)} timestamps and "
                         f"values of shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"values must be finite numbers; row {bad} is {x[bad]!r}")
    return index, x


# Rows whose sampling interval sets a series' time-of-day slot (SeasonalLikelihood).
_SLOT_ROWS = 48


def sampling_slots_per_day(timestamps: pd.DatetimeIndex) -> int:
    """Rows per day at the series' typical sampling interval (1 when it samples daily or slower)."""
    if len(timestamps) < 2:
        return 1
    # asi8 counts in the index's own unit (pandas 3 parses CSV times to microseconds), so
    # convert to nanoseconds first.
    steps = np.diff(pd.DatetimeIndex(timestamps).as_unit("ns").asi8)
    steps = steps[steps > 0]
    if not len(steps):
        return 1
    seconds = float(np.median(steps)) / 1e9
    return max(1, int(round(86400 / seconds)))


@dataclass(frozen=True, slots=True)
class WindowedGaussian:
    """NAB's windowed-Gaussian baseline: ``Phi(|x - mean| / std)`` over the previous values.

    Parameters
    ----------
    window_size : int, default=6400
        Number of previous values the mean and standard deviation are taken over.
    """

    window_size: int = 6400

    def score(self, timestamps: ArrayLike, values: ArrayLike) -> NDArray[np.float64]:
        """Anomaly score per row.

        Parameters
        ----------
        timestamps : array-like of shape (n_rows,)
        values : array-like of shape (n_rows,)

        Returns
        -------
        ndarray of shape (n_rows,)
            In [0, 1]; 0 for the first row, 0.5 at the window mean, towards 1 far from it.
        """
        if self.window_size < 2:
            raise ValueError(f"window_size must be at least 2, got {self.window_size}")
        _, x = _series(timestamps, values)
        s = pd.Series(x)
        mean = s.rolling(self.window_size, min_periods=1).mean().shift(1).to_numpy()
        std = s.rolling(self.window_size, min_periods=1).std(ddof=0).shift(1).to_numpy()
        std = np.where(std > 0, std, 1e-6)  # NAB's floor for a constant window
        out = ndtr(np.abs(x - mean) / std)
        if len(out):
            out[0] = 0.0
        return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def _robust_z(residual: NDArray[np.float64], history: int, min_rows: int) -> NDArray[np.float64]:
    past = pd.Series(residual).shift(1)
    median = past.rolling(history, min_periods=min_rows).median()
    mad = (past - median).abs().rolling(history, min_periods=min_rows).median().to_numpy()
    centre = median.to_numpy()
    # A MAD of zero (a flat series) would make any wiggle infinite; floor it relative to the level.
    scale = np.maximum(1.4826 * mad, 1e-6 * (np.abs(centre) + 1e-9))
    return np.nan_to_num(np.abs(residual - centre) / scale, nan=0.0)


def _surprise(z: NDArray[np.float64], short: int, history: int, min_rows: int) -> NDArray[np.float64]:
    """Standard deviations by which the recent mean z-score exceeds its own history (>= 0)."""
    s = pd.Series(z)
    recent = s.rolling(short, min_periods=1).mean()
    before = s.shift(short)
    mean = before.rolling(history, min_periods=min_rows).mean()
    std = before.rolling(history, min_periods=min_rows).std()
    spread = np.maximum(std.to_numpy(), 1e-9 + 1e-3 * np.abs(mean.to_numpy()))
    out = (recent.to_numpy() - mean.to_numpy()) / spread
    return np.maximum(np.nan_to_num(out, nan=0.0), 0.0)


def _density_surprise(z: NDArray[np.float64], window: int, history: int,
                      min_rows: int) -> NDArray[np.float64]:
    """Standard deviations by which the mean of the last ``window`` z-scores exceeds that mean's
    own history (>= 0): Numenta's anomaly likelihood, judged on the averaged scores."""
    recent = pd.Series(z).rolling(window, min_periods=1).mean()
    before = recent.shift(1)
    mean = before.rolling(history, min_periods=min_rows).mean().to_numpy()
    std = before.rolling(history, min_periods=min_rows).std().to_numpy()
    spread = np.maximum(std, 1e-9 + 1e-3 * np.abs(mean))
    out = (recent.to_numpy() - mean) / spread
    return np.maximum(np.nan_to_num(out, nan=0.0), 0.0)


def _seasonal_baseline(index: pd.DatetimeIndex, x: NDArray[np.float64], slots_per_day: int,
                       alpha: float) -> NDArray[np.float64]:
    """EWMA of the same time-of-day slot on earlier days (NaN until a slot has been seen)."""
    if slots_per_day <= 1:
        return np.full(len(x), np.nan)
    seconds = (index.hour * 3600 + index.minute * 60 + index.second).to_numpy()
    slot = seconds // max(1, 86400 // slots_per_day)
    grouped = pd.Series(x).groupby(slot)
    return grouped.transform(lambda v: v.shift(1).ewm(alpha=alpha, min_periods=1).mean()).to_numpy()


def _check_settings(detector: SeasonalLikelihood | TailRank, counts: tuple[str, ...]) -> None:
    """Positive integer row counts and a seasonal weight in (0, 1], or a clear error."""
    for name in counts:
        value = getattr(detector, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    alpha = detector.seasonal_alpha
    if not 0 < alpha <= 1:
        raise ValueError(f"seasonal_alpha must be in (0, 1], got {alpha!r}")


@dataclass(frozen=True, slots=True)
class SeasonalLikelihood:
    """Persistence + seasonal residuals, robust z-scores, a likelihood of the recent error.

    One parameter set serves every series: all scales are learnt from the series' own past.

    Parameters
    ----------
    short : int, default=3
        Rows in the recent mean of z-scores whose likelihood is judged.
    density : int, default=10
        Rows in the mean of persistence z-scores whose likelihood is judged against the
        distribution of that mean (a burst of spikes, a rise in variance).
    history : int, default=2000
        Rows of past residuals and z-scores the robust scale and the likelihood are learnt on.
    min_rows : int, default=200
        Rows seen before any score is given (the detector's own learning period).
    cap : float, default=30.0
        Robust z-scores are capped here, so one huge spike does not blind the detector for
        ``history`` rows (Numenta caps its raw score at 1 for the same reason).
    seasonal_alpha : float, default=0.3
        Weight of the newest day in each time-of-day slot's baseline.
    refractory : int, default=300
        A score is kept only when it beats every score of the previous ``refractory`` rows.
    squash : float, default=10.0
        Surprise ``u`` (in standard deviations) becomes ``u / (u + squash)``.
    """

    short: int = 3
    density: int = 10
    history: int = 2000
    min_rows: int = 200
    cap: float = 30.0
    seasonal_alpha: float = 0.3
    refractory: int = 300
    squash: float = 10.0

    def _check(self) -> None:
        _check_settings(self, ("short", "density", "history", "min_rows", "refractory"))
        if not self.cap > 0 or not self.squash > 0:
            raise ValueError(f"cap and squash must be positive, got {self.cap!r}, {self.squash!r}")

    def surprises(self, timestamps: ArrayLike, values: ArrayLike) -> dict[str, NDArray[np.float64]]:
        """Each method's surprise per row (standard deviations, >= 0), before combining.

        Parameters
        ----------
        timestamps : array-like of shape (n_rows,)
        values : array-like of shape (n_rows,)

        Returns
        -------
        dict of str to ndarray of shape (n_rows,)
            ``"persistence"``, ``"seasonal"`` and ``"density"`` (of persistence surprises).
        """
        self._check()
        index, x = _series(timestamps, values)
        # The time-of-day slot comes from the first rows' sampling only, and the seasonal
        # residual waits for them: a later change of sampling must not reach back.
        slots = sampling_slots_per_day(index[:_SLOT_ROWS])
        seasonal = x - _seasonal_baseline(index, x, slots, self.seasonal_alpha)
        seasonal[:_SLOT_ROWS] = np.nan
        residuals = {
            "persistence": np.r_[0.0, np.diff(x)] if len(x) else x,
            "seasonal": np.nan_to_num(seasonal),
        }
        out, zs = {}, {}
        for name, residual in residuals.items():
            zs[name] = np.minimum(_robust_z(residual, self.history, max(1, self.min_rows // 2)),
                                  self.cap)
            out[name] = _surprise(zs[name], self.short, self.history, self.min_rows)
        out["density"] = _density_surprise(zs["persistence"], self.density, self.history,
                                           self.min_rows)
        return out

    def score(self, timestamps: ArrayLike, values: ArrayLike) -> NDArray[np.float64]:
        """Anomaly score per row, in [0, 1], causal.

        Parameters
        ----------
        timestamps : array-like of shape (n_rows,)
        values : array-like of shape (n_rows,)

        Returns
        -------
        ndarray of shape (n_rows,)
        """
        parts = self.surprises(timestamps, values)
        total = np.sum(list(parts.values()), axis=0)
        return _new_maxima(total / (total + self.squash), self.refractory)


def _new_maxima(scores: NDArray[np.float64], rows: int) -> NDArray[np.float64]:
    """Keep a score only where it beats every score of the previous ``rows`` rows (else 0)."""
    previous_best = (pd.Series(scores).shift(1).rolling(rows, min_periods=1)
                     .max().fillna(0.0).to_numpy())
    return np.where(scores > previous_best, scores, 0.0)


@dataclass(frozen=True, slots=True)
class SeasonalARTime:
    """The larger of :class:`SeasonalLikelihood`'s and :class:`~models.artime.ARTime`'s scores.

    No weights: both scores are in [0, 1] and one threshold serves the pair. As in the likelihood
    alone, a score is kept only when it beats every score of the likelihood's ``refractory``
    previous rows, so an incident both detectors see is one alert, not two.

    Parameters
    ----------
    likelihood : SeasonalLikelihood, default=SeasonalLikelihood()
    shapes : ARTime, default=ARTime()
    """

    likelihood: SeasonalLikelihood = field(default_factory=SeasonalLikelihood)
    shapes: ARTime = field(default_factory=ARTime)

    def score(self, timestamps: ArrayLike, values: ArrayLike) -> NDArray[np.float64]:
        """Anomaly score per row, in [0, 1], causal.

        Parameters
        ----------
        timestamps : array-like of shape (n_rows,)
        values : array-like of shape (n_rows,)

        Returns
        -------
        ndarray of shape (n_rows,)
        """
        either = np.maximum(self.likelihood.score(timestamps, values),
                            self.shapes.score(timestamps, values))
        return _new_maxima(either, self.likelihood.refractory)


def _tail_surprise(x: NDArray[np.float64], history: int, min_rows: int) -> NDArray[np.float64]:
    """How rare each value is among the previous ``history`` values, in [0, 1].

    The two-sided rank p-value ``p = min(#{past >= x} + 1, #{past <= x} + 1) / (n_past + 1)``
    becomes ``-log(p) / log(n_past + 1)``: 1 when the value lies beyond every value seen in the
    history, 0 when it is in the middle. It needs no scale and no distribution, so one setting
    serves counts, ratios and latencies, flat or noisy, and ties (a flat series) score 0.
    Dividing by the history actually seen (not its full length) keeps one threshold right for a
    short file whose history never fills: scaled by the full length, the same extreme scored
    0.83 after 300 rows and 1.0 after 1000, and the threshold of long files missed short ones.
    """
    s = pd.Series(x)
    window = s.rolling(history + 1, min_periods=min_rows + 1)
    below_or_equal = window.rank(method="max").to_numpy() - 1  # past values <= x
    strictly_below = window.rank(method="min").to_numpy() - 1  # past values < x
    past = s.rolling(history + 1, min_periods=min_rows + 1).count().to_numpy() - 1
    above_or_equal = past - strictly_below
    p = (np.minimum(below_or_equal, above_or_equal) + 1) / (past + 1)
    out = -np.log(p) / np.log(past + 1)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class TailRank:
    """How rare the value, its step and its seasonal residual are among the last ``history`` rows.

    Three views of each row, each ranked against its own recent past (:func:`_tail_surprise`):
    the value itself (a level never seen lately: bursts, drops, shifts, drifts), the step from the
    previous row (a jump, even inside the usual range) and the residual from the same time of day
    on earlier days (a broken daily rhythm). A row's surprise is the largest of the three; the
    score is the mean surprise of the last ``short`` rows (one odd row is weak evidence, three are
    strong), kept only where it beats every score of the previous ``refractory`` rows, so one
    incident is one alert. Ranks have no scale to learn, which is why one setting carries from
    one series to the next; its parameters were chosen by the worst left-out score over NAB's 18
    shared files and two seeded synthetic corpora (docs/anomaly.md).

    Parameters
    ----------
    history : int, default=2000
        Past rows each view is ranked against (a week at 5 minutes, 12 weeks hourly).
    min_rows : int, default=100
        Past rows a view needs before it scores (the detector's own learning period).
    short : int, default=3
        Rows whose mean surprise is the score.
    refractory : int, default=300
        A score is kept only when it beats every score of the previous ``refractory`` rows.
    seasonal_alpha : float, default=0.3
        Weight of the newest day in each time-of-day slot's baseline.
    """

    history: int = 2000
    min_rows: int = 100
    short: int = 3
    refractory: int = 300
    seasonal_alpha: float = 0.3

    def _check(self) -> None:
        _check_settings(self, ("history", "min_rows", "short", "refractory"))
        if self.min_rows > self.history:
            raise ValueError(f"min_rows ({self.min_rows}) must not exceed history ({self.history}): "
                             "a score needs min_rows of the history it ranks against")

    def surprises(self, timestamps: ArrayLike, values: ArrayLike) -> dict[str, NDArray[np.float64]]:
        """Each view's surprise per row, in [0, 1], before combining.

        Parameters
        ----------
        timestamps : array-like of shape (n_rows,)
        values : array-like of shape (n_rows,)

        Returns
        -------
        dict of str to ndarray of shape (n_rows,)
            ``"level"``, ``"step"`` and ``"seasonal"``.
        """
        self._check()
        index, x = _series(timestamps, values)
        out = {"level": _tail_surprise(x, self.history, self.min_rows)}
        if not len(x):
            return {**out, "step": x.copy(), "seasonal": x.copy()}
        step = np.r_[np.nan, np.diff(x)]
        out["step"] = np.r_[0.0, _tail_surprise(step[1:], self.history, self.min_rows)]
        slots = sampling_slots_per_day(index[:_SLOT_ROWS])
        residual = x - _seasonal_baseline(index, x, slots, self.seasonal_alpha)
        residual[:_SLOT_ROWS] = np.nan  # wait for the slots, as SeasonalLikelihood does
        seen = np.flatnonzero(~np.isnan(residual))
        seasonal = np.zeros(len(x))
        if len(seen):
            # Rank only the rows that have a residual, so the history holds residuals only.
            seasonal[seen] = _tail_surprise(residual[seen], self.history, self.min_rows)
        out["seasonal"] = seasonal
        return out

    def score(self, timestamps: ArrayLike, values: ArrayLike) -> NDArray[np.float64]:
        """Anomaly score per row, in [0, 1], causal.

        Parameters
        ----------
        timestamps : array-like of shape (n_rows,)
        values : array-like of shape (n_rows,)

        Returns
        -------
        ndarray of shape (n_rows,)
        """
        surprise = np.max(list(self.surprises(timestamps, values).values()), axis=0)
        recent = pd.Series(surprise).rolling(self.short, min_periods=1).mean().to_numpy()
        return _new_maxima(recent, self.refractory)


class Detector(Protocol):
    """Anything that scores a series causally, one score in [0, 1] per row."""

    def score(self, timestamps: ArrayLike, values: ArrayLike) -> NDArray[np.float64]: ...


DEFAULT_DETECTOR = "tail-rank"
DETECTORS: dict[str, type[Detector]] = {
    "tail-rank": TailRank,
    "seasonal-artime": SeasonalARTime,
    "seasonal-likelihood": SeasonalLikelihood,
    "artime": ARTime,
    "windowed-gaussian": WindowedGaussian,
}


def make_detector(name: str) -> Detector:
    """A detector by name with its default parameters (one set for every series)."""
    try:
        return DETECTORS[name]()
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}") from None


@dataclass(frozen=True, slots=True)
class NabHarness:
    """What NAB's harness tells every published detector before it scores a file.

    NAB hands each detector the file's minimum and maximum value and its probationary length
    (from the file's length). Both look ahead: a live stream knows neither. Scores made with
    them are reported apart from the causal ones (``pushpilot anomaly eval --nab-harness``), to
    compare with NAB's published results on the same footing, never to run the guard.
    """

    low: float
    high: float
    probation: int

    @classmethod
    def of(cls, values: ArrayLike, probation: int) -> NabHarness:
        """The harness of one whole file."""
        x = np.asarray(values, dtype=np.float64)
        if not len(x):
            raise ValueError("a harness needs the file's values; got none")
        return cls(float(x.min()), float(x.max()), int(probation))


def with_harness(detector: Detector, harness: NabHarness) -> Detector:
    """``detector`` configured with NAB's look-ahead inputs, as NAB configures its detectors.

    ARTime scales by the file's range and learns for the probation (as its NAB version does);
    TailRank and SeasonalLikelihood learn for the probation before they score; the windowed
    Gaussian uses neither (nor does NAB's).
    """
    if isinstance(detector, ARTime):
        least = 2 * detector.window * detector.windows_per_learning
        return replace(detector, learning_rows=max(least, harness.probation),
                       value_range=(harness.low, harness.high))
    if isinstance(detector, SeasonalARTime):
        return replace(detector, likelihood=with_harness(detector.likelihood, harness),
                       shapes=with_harness(detector.shapes, harness))
    if isinstance(detector, (TailRank, SeasonalLikelihood)):
        return replace(detector, min_rows=max(detector.min_rows, harness.probation))
    return detector


@dataclass(frozen=True, slots=True)
class RateBurstDetector:
    """Online burst test on a rate (per second), with a state small enough for a Redis hash.

    The state holds an EWMA of the rate and of its absolute deviation, and how many updates it
    has seen. ``update`` scores the new rate against the baseline *before* learning from it, so a
    burst cannot hide itself, and learns from a bursty rate only a little (``burst_alpha``), so a
    sustained attack does not become normal within seconds.

    Parameters
    ----------
    alpha : float, default=0.05
        Weight of a new normal rate in the baseline.
    burst_alpha : float, default=0.002
        Weight of a rate that is itself a burst.
    ratio : float, default=4.0
        A rate is a burst when it exceeds ``ratio`` times the baseline rate ...
    min_sigma : float, default=6.0
        ... and the baseline by ``min_sigma`` mean absolute deviations.
    min_updates : int, default=30
        Updates learnt before any burst is called (the warm-up, in updates) ...
    min_total : float, default=0.0
        ... and the sum of the rates learnt by then (the warm-up, in events).
    min_rate : float, default=0.0
        A rate at or under this floor is never a burst, whatever the baseline: a quiet series
        that wakes up at a modest rate is not an attack.
    """

    alpha: float = 0.05
    burst_alpha: float = 0.002
    ratio: float = 4.0
    min_sigma: float = 6.0
    min_updates: int = 30
    min_total: float = 0.0
    min_rate: float = 0.0

    def update(self, state: dict[str, float], rate: float) -> tuple[float, bool, dict[str, float]]:
        """Score ``rate`` against ``state`` and learn it; returns (score in [0, 1], is_burst, state)."""
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"rate must be a finite non-negative number, got {rate!r}")
        n = float(state.get("n", 0.0))
        total = float(state.get("total", 0.0))
        mean = float(state.get("mean", rate))
        dev = float(state.get("dev", 0.0))
        spread = max(dev, 0.1 * mean, 1e-3)
        sigma = (rate - mean) / spread
        is_warm = n >= self.min_updates and total >= self.min_total
        is_burst = (is_warm and rate > self.min_rate and rate > self.ratio * max(mean, 1e-3)
                    and sigma > self.min_sigma)
        score = 0.0 if not is_warm else float(1.0 - math.exp(-max(sigma, 0.0) / self.min_sigma))
        weight = self.burst_alpha if is_burst else (self.alpha if n >= self.min_updates else 1.0 / (n + 1))
        new_mean = mean + weight * (rate - mean)
        new_dev = dev + weight * (abs(rate - mean) - dev)
        return score, is_burst, {"n": n + 1, "total": total + rate, "mean": new_mean, "dev": new_dev}
