"""ARTime: anomalies as novel shapes, found by a dual-vigilance fuzzy ART over a downsampled window.

Our own numpy implementation of the algorithm of ARTime (Mark Hampton, 2021; ARTimeNAB,
https://github.com/markNZed/ARTimeNAB.jl, run in NAB as the detector ``ARTime``), written from its
description; no code is copied. It works on rows, not on time:

1. Downsample. Every ``block_rows`` rows, the block of those values becomes one value: its
   maximum, or its minimum when that lies further from a moving average of block means, or the
   block mean when the extreme is within 10% of it (a spike must stand out to be kept).
2. Scale causally to [0, 1] with the minimum and maximum of the values seen so far, quantise to
   ``levels`` levels, and snap a level close to a running median level onto it (``chomp``).
   NAB's harness hands ARTime the whole file's minimum and maximum, which looks ahead; we do not.
3. Features of the last ``window`` downsampled values: their shape (min-max normalised, Haar
   wavelet transform, normalised again) and their levels.
4. A dual-vigilance fuzzy ART (complement coding; match ``(|min(x, w)| / |w|)^3 * energy^2``,
   with ``energy`` the match of the newest level alone) learns categories online. A match above
   the upper vigilance refines a category, one between the vigilances adds a category to the same
   cluster, one below the lower vigilance starts a new cluster: a candidate anomaly.
5. The first ``learning_rows`` rows are only learnt from: the initial vigilance comes from a
   scratch ART trained on their features, most typical first, and then they are replayed. After
   that the vigilances follow the similarities seen (every half learning period and after each
   anomaly), and anomalies are masked for a few steps after an anomaly or a vigilance change
   unless the similarity is clearly lower than the last anomaly's.
6. A new cluster that is not masked scores by how far its similarity lies below the vigilances
   plus its energy mismatch, capped at 1. Every other row scores 0.

Causal: a row's score depends only on rows up to it. One parameter set serves every series; the
defaults are ARTime's own for a series of at least 5000 rows (a learning period of 750 rows, so a
block of 7 rows and a learning window of 107 blocks), whatever the series' length.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ARTime", "haar_transform"]

_MASK_FACTOR = 1.5  # masking period after an anomaly, in windows (ARTime's value)
_MAX_UPPER_VIGILANCE = 0.97
_SPIKE_FRACTION = 0.1


def haar_transform(values: ArrayLike) -> NDArray[np.float64]:
    """Full orthonormal Haar transform of a power-of-two length: ``[approximation, coarsest
    detail, ..., finest details]``."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) & (len(x) - 1) or not len(x):
        raise ValueError(f"the Haar transform needs a power-of-two length, got {len(x)}")
    details = []
    while len(x) > 1:
        even, odd = x[0::2], x[1::2]
        details.append((even - odd) / math.sqrt(2))
        x = (even + odd) / math.sqrt(2)
    return np.concatenate([x, *reversed(details)])


def _rescaled(x: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = x - x.min()
    top = shifted.max()
    return shifted / top if top != 0 else shifted


class _FuzzyART:
    """Dual-vigilance fuzzy ART over complement-coded features (one row of ``weights`` a category)."""

    def __init__(self, n_features: int, lower: float, upper: float):
        self.n_features = n_features
        self.lower = lower
        self.upper = upper
        self.weights = np.ones((1, 2 * n_features))  # a first category that matches anything
        self.clusters = [0]
        self.n_clusters = 1
        self.has_seen_input = False

    def _match(self, coded: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        common = np.minimum(self.weights, coded)
        size = self.weights.sum(axis=1)
        similarity = common.sum(axis=1) / np.where(size == 0, 1e-3, size)
        newest = [self.n_features - 1, 2 * self.n_features - 1]  # the newest level, and its complement
        energy_size = self.weights[:, newest].sum(axis=1)
        energy = np.divide(common[:, newest].sum(axis=1), energy_size,
                           out=np.ones(len(size)), where=energy_size > 0)
        return common, similarity**3 * energy**2, energy

    def train(self, features: NDArray[np.float64], is_learning: bool = True) -> tuple[bool, float, float]:
        """Present one sample; returns (fits no cluster, best match, that category's energy)."""
        coded = np.concatenate([features, 1.0 - features])
        if not self.has_seen_input:
            # ARTime's first sample only sets the ART up; it is neither matched nor learnt.
            self.has_seen_input = True
            return False, 0.0, 0.0
        common, match, energy = self._match(coded)
        best = int(np.argmax(match))
        best_match, best_energy = float(match[best]), float(energy[best])
        if not is_learning:
            return True, best_match, best_energy
        if best_match >= self.upper:
            resonant = match >= self.upper
            self.weights[resonant] = common[resonant]
            return False, best_match, best_energy
        self.weights = np.vstack([self.weights, coded])
        if best_match >= self.lower:
            self.clusters.append(self.clusters[best])
            return False, best_match, best_energy
        self.clusters.append(self.n_clusters)
        self.n_clusters += 1
        return True, best_match, best_energy


def _similarity_matrix(features: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cosine similarity, with ARTime's ``1 - |other|`` when one side is all zeros."""
    norms = np.linalg.norm(features, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    out = (features @ features.T) / np.outer(safe, safe)
    zero = norms == 0
    out[zero, :] = 1.0 - norms[None, :]
    out[:, zero] = 1.0 - norms[:, None]
    np.fill_diagonal(out, 1.0)
    return out


@dataclass(frozen=True, slots=True)
class ARTime:
    """Novel shapes of the downsampled series, by a dual-vigilance fuzzy ART (see the module).

    Parameters
    ----------
    learning_rows : int, default=750
        Rows only learnt from before any score is given; also sets the block size,
        ``learning_rows // (window * windows_per_learning)`` rows per downsampled value.
    window : int, default=8
        Downsampled values per feature window (a power of two, for the Haar transform).
    windows_per_learning : int, default=13
        Feature windows that fit in the learning period.
    levels : int, default=80
        Quantisation levels of the scaled value.
    chomp : float, default=0.075
        A scaled value this close to the running median level is snapped onto it.
    initial_vigilance : float, default=0.8
        Vigilance of the scratch ART that sets the first vigilance.
    value_range : (float, float) or None, default=None
        Fixed ``(low, high)`` to scale values by. ``None`` (causal) scales by the running minimum
        and maximum of the rows seen so far; NAB's harness gives published detectors the whole
        file's range (``models.streaming.with_harness``), which looks ahead.
    """

    learning_rows: int = 750
    window: int = 8
    windows_per_learning: int = 13
    levels: int = 80
    chomp: float = 0.075
    initial_vigilance: float = 0.8
    value_range: tuple[float, float] | None = None

    def _check(self) -> None:
        for name in ("learning_rows", "window", "windows_per_learning", "levels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.window < 2 or self.window & (self.window - 1):
            raise ValueError(f"window must be a power of two of at least 2, got {self.window}")
        if self.learning_rows < 2 * self.window * self.windows_per_learning:
            raise ValueError(f"learning_rows must be at least 2 * window * windows_per_learning "
                             f"({2 * self.window * self.windows_per_learning}), got {self.learning_rows}")
        if not 0 <= self.chomp < 1 or not 0 < self.initial_vigilance <= 1:
            raise ValueError(f"chomp must be in [0, 1) and initial_vigilance in (0, 1], got "
                             f"{self.chomp!r} and {self.initial_vigilance!r}")

    @property
    def block_rows(self) -> int:
        """Rows per downsampled value."""
        return max(1, self.learning_rows // (self.window * self.windows_per_learning))

    def score(self, timestamps: ArrayLike, values: ArrayLike) -> NDArray[np.float64]:
        """Anomaly score per row, in [0, 1], causal.

        Parameters
        ----------
        timestamps : array-like of shape (n_rows,)
            Unused (ARTime works on rows); taken so every detector has one signature.
        values : array-like of shape (n_rows,)

        Returns
        -------
        ndarray of shape (n_rows,)
            Non-zero only on the last row of a block that starts a new, unmasked cluster.
        """
        self._check()
        x = np.asarray(values, dtype=np.float64)
        n_timestamps = len(np.asarray(timestamps))
        if x.ndim != 1 or len(x) != n_timestamps:
            raise ValueError(f"need one value per timestamp, got {n_timestamps} timestamps and "
                             f"values of shape {x.shape}")
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            raise ValueError(f"values must be finite numbers; row {bad} is {x[bad]!r}")
        out = np.zeros(len(x))
        if not len(x):
            return out
        run = _Run(self)
        if self.value_range is None:
            lows, highs = np.minimum.accumulate(x), np.maximum.accumulate(x)
        else:
            lows, highs = np.full(len(x), self.value_range[0]), np.full(len(x), self.value_range[1])
        step = self.block_rows
        for end in range(step, len(x) + 1, step):
            out[end - 1] = run.add_block(x[end - step:end], lows[end - 1], highs[end - 1])
        return out


class _Run:
    """The state of one ARTime pass over a series (one downsampled value at a time)."""

    def __init__(self, params: ARTime):
        self.p = params
        self.learning_blocks = params.learning_rows // params.block_rows
        self.mask = params.window * _MASK_FACTOR
        self.blocks = 0
        self.moving_average = 0.0
        self.level_counts = np.zeros(params.levels + 1, dtype=np.int64)
        self.median = self.n_below = self.n_above = 0
        self.levels: deque[float] = deque([0.0] * params.window, maxlen=params.window)
        self.learning: list[NDArray[np.float64]] = []
        self.art = _FuzzyART(2 * params.window, 0.0, 0.0)
        self.recent_matches: deque[float] = deque([1.0] * (self.learning_blocks // 2 + 1),
                                                  maxlen=self.learning_blocks // 2 + 1)
        self.recent_shortfalls: deque[float] = deque([0.0] * (self.learning_blocks + 1),
                                                     maxlen=self.learning_blocks + 1)
        self.match_sum = 0.0
        self.anomaly_matches: list[float] = []
        self.last_anomaly = 0
        self.last_anomaly_match = 0.0
        self.last_vigilance_update = 0
        self.is_masked_after_cluster = False
        self.steps_without_cluster = 0

    def add_block(self, block: NDArray[np.float64], low: float, high: float) -> float:
        self.blocks += 1
        mean, top, bottom = float(block.mean()), float(block.max()), float(block.min())
        if self.blocks == 1:
            self.moving_average = mean
        self.moving_average = (self.moving_average + mean) / 2
        value = bottom if abs(top - self.moving_average) < abs(bottom - self.moving_average) else top
        if abs(value - mean) < _SPIKE_FRACTION * abs(mean):
            value = mean
        scaled = (value - low) / (high - low) if high > low else 0.0
        self.levels.append(self._levelled(scaled))
        features = self._features()
        if self.blocks < self.learning_blocks:
            self.learning.append(features)
            return 0.0
        if self.blocks == self.learning_blocks:
            self.learning.append(features)
            self._finish_learning()
            return 0.0
        return self._detect(features, self.blocks)

    def _levelled(self, scaled: float) -> float:
        levels, counts = self.p.levels, self.level_counts
        level = min(max(int(np.rint(scaled * levels)), 0), levels)
        counts[level] += 1
        # ARTime's running median: it moves by at most one occupied level per value, so it
        # costs nothing and is close to, not exactly, the median.
        if self.blocks == 1:
            self.median = level
        if level < self.median:
            self.n_below += 1
        elif level > self.median:
            self.n_above += 1
        half = self.blocks // 2
        if self.n_above > half:
            self.n_below += counts[self.median]
            self.median += 1
            while counts[self.median] == 0:
                self.median += 1
            self.n_above -= counts[self.median]
        elif self.n_below > half:
            self.n_above += counts[self.median]
            self.median -= 1
            while counts[self.median] == 0:
                self.median -= 1
            self.n_below -= counts[self.median]
        # ARTime compares in scaled units; a gap of exactly ``chomp`` then snaps or not as the
        # rounding falls. Kept as published: docs/anomaly.md shows how much the rule moves scores.
        if abs(level / levels - self.median / levels) < self.p.chomp:
            return self.median / levels
        return level / levels

    def _features(self) -> NDArray[np.float64]:
        if self.blocks < self.p.window:
            return np.zeros(2 * self.p.window)
        window = np.fromiter(self.levels, dtype=np.float64, count=self.p.window)
        return np.concatenate([_rescaled(haar_transform(_rescaled(window))), window])

    def _finish_learning(self) -> None:
        features = np.asarray(self.learning[self.p.window - 1:])
        typical_first = np.argsort(_similarity_matrix(features).sum(axis=0), kind="stable")
        scratch = _FuzzyART(2 * self.p.window, self.p.initial_vigilance, self.p.initial_vigilance)
        matches = [scratch.train(f)[1] for f in features[typical_first]]
        vigilance = float(np.mean(matches[self.learning_blocks // 2 - 1:]))
        self.art.lower = self.art.upper = vigilance
        for number, f in enumerate(self.learning, start=1):
            self._detect(f, number)
        self.learning = []

    def _detect(self, features: NDArray[np.float64], i: int) -> float:
        art, mask = self.art, self.mask
        is_update_after_anomaly = i - self.last_anomaly == mask
        is_update_for_trend = i - self.last_vigilance_update >= self.learning_blocks // 2
        is_masked_after_anomaly = i - self.last_anomaly <= mask
        is_learnt = i > self.learning_blocks
        if (i > self.learning_blocks + mask and self.is_masked_after_cluster
                and self.steps_without_cluster >= mask):
            self.is_masked_after_cluster = False
        if i < self.p.window:  # no full window yet: match, but learn nothing
            _, match, energy = art.train(features, is_learning=False)
            is_new_cluster = True
        else:
            is_new_cluster, match, energy = art.train(features)
        self.steps_without_cluster = 0 if is_new_cluster else self.steps_without_cluster + 1
        self.match_sum += match
        self.recent_matches.append(match)
        self.recent_shortfalls.append(art.upper - match)
        if i - self.last_anomaly < mask and self.anomaly_matches:
            self.anomaly_matches[-1] = min(self.anomaly_matches[-1], match)
        is_masked = self.is_masked_after_cluster or is_masked_after_anomaly
        is_below_last = match < self.last_anomaly_match * (0.9 if is_masked_after_anomaly else 0.7)
        score = 0.0
        if is_learnt and is_new_cluster and (not is_masked or is_below_last):
            score = self._confidence(match, energy)
            self.anomaly_matches.append(match)
            self.last_anomaly_match = match
            self.last_anomaly = i
        self.is_masked_after_cluster = is_new_cluster or self.is_masked_after_cluster
        if is_learnt and (is_update_after_anomaly or is_update_for_trend):
            self._update_vigilance(i)
        return score

    def _update_vigilance(self, i: int) -> None:
        art = self.art
        upper = min(_MAX_UPPER_VIGILANCE, self.match_sum / i)
        lowest_recent = min(self.recent_matches)
        if art.lower <= lowest_recent:
            lower = art.lower + 0.19 * (lowest_recent - art.lower)
        else:
            shortfalls = [min(0.37, s) for s in self.recent_shortfalls if s > 0.05]
            step = float(np.mean(shortfalls)) if i > 2 * self.learning_blocks and shortfalls else 0.0
            lower = art.lower - max(0.01, step) / 2
            if self.anomaly_matches:
                lower = max(float(np.mean(self.anomaly_matches)), lower)
        art.lower, art.upper = min(upper, lower), upper
        self.last_vigilance_update = i
        self.is_masked_after_cluster = True

    def _confidence(self, match: float, energy: float) -> float:
        match = min(0.999, match)
        above_upper = (self.art.upper - match) / (1 - match)
        above_lower = (self.art.lower - match) / (1 - match)
        return float(min(1.0, 0.35 * above_upper + 0.65 * above_lower + 1.5 * (1 - energy)))
