"""Streaming detectors score causally, in [0, 1], and find a break in a daily rhythm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.artime import ARTime, haar_transform
from models.streaming import (
    DEFAULT_DETECTOR,
    DETECTORS,
    NabHarness,
    RateBurstDetector,
    SeasonalARTime,
    SeasonalLikelihood,
    TailRank,
    WindowedGaussian,
    make_detector,
    sampling_slots_per_day,
    with_harness,
)

ALL_DETECTORS = [TailRank(), SeasonalARTime(), SeasonalLikelihood(), ARTime(), WindowedGaussian()]


def _daily(n: int = 4000, seed: int = 0) -> tuple[pd.DatetimeIndex, np.ndarray]:
    stamps = pd.date_range("2025-01-01", periods=n, freq="5min")
    hours = stamps.hour + stamps.minute / 60
    rng = np.random.default_rng(seed)
    values = 50 + 30 * np.sin(2 * np.pi * np.asarray(hours) / 24) + rng.normal(0, 1, n)
    return stamps, values


@pytest.mark.parametrize("detector", ALL_DETECTORS, ids=type)
def test_scores_use_only_the_past(detector) -> None:  # type: ignore[no-untyped-def]
    stamps, values = _daily()
    values[3000:3100] = 50.0  # something to score, so the prefixes are not all zeros
    values[3500:3510] += 100.0  # a new maximum after every prefix: scaling by the whole series' range would leak it
    full = detector.score(stamps, values)
    # 3003 ends inside one of ARTime's 7-row blocks, 760 just after its learning period.
    for rows in (760, 2500, 3003):
        np.testing.assert_allclose(full[:rows], detector.score(stamps[:rows], values[:rows]))
    assert ((full >= 0) & (full <= 1)).all()
    assert full.max() > 0


@pytest.mark.parametrize("detector", ALL_DETECTORS, ids=type)
def test_a_later_change_of_sampling_does_not_reach_back(detector) -> None:  # type: ignore[no-untyped-def]
    # 5-minute rows for 12 days, then 10-minute rows: a slot size taken from the whole series'
    # median step would change the earlier scores.
    first = pd.date_range("2025-01-01", periods=3456, freq="5min")
    later = pd.date_range(first[-1] + pd.Timedelta("10min"), periods=4000, freq="10min")
    stamps = first.append(later)
    hours = np.asarray(stamps.hour + stamps.minute / 60)
    values = 50 + 30 * np.sin(2 * np.pi * hours / 24) + np.random.default_rng(1).normal(0, 1, len(stamps))
    values[3000:3050] = 50.0
    full = detector.score(stamps, values)
    np.testing.assert_allclose(full[:3400], detector.score(stamps[:3400], values[:3400]))


@pytest.mark.parametrize("detector", ALL_DETECTORS, ids=type)
def test_scores_are_deterministic(detector) -> None:  # type: ignore[no-untyped-def]
    stamps, values = _daily(seed=4)
    first = detector.score(stamps, values)
    np.testing.assert_array_equal(first, type(detector)().score(stamps, values))
    np.testing.assert_array_equal(first, detector.score(stamps, values))


def test_artime_flags_a_novel_shape_and_nothing_on_a_steady_rhythm() -> None:
    stamps, values = _daily()
    assert not ARTime().score(stamps, values).any()
    values[3000:3100] = 50.0  # eight hours of flat line where the daily curve should be
    scores = ARTime().score(stamps, values)
    assert not scores[:750].any()  # the learning period is never scored
    flagged = np.flatnonzero(scores)
    assert len(flagged) and 3000 <= flagged.min() and flagged.max() < 3100 + 7 * 8


def test_the_default_detector_alerts_once_where_either_part_is_the_most_surprised() -> None:
    stamps, values = _daily()
    values[2000:2004] += 25.0
    values[3000:3100] = 50.0
    both = SeasonalARTime().score(stamps, values)
    parts = np.maximum(SeasonalLikelihood().score(stamps, values), ARTime().score(stamps, values))
    kept = both > 0
    np.testing.assert_array_equal(both[kept], parts[kept])
    assert both.max() == parts.max()
    for row in np.flatnonzero(kept):  # a score survives only as a new maximum of 300 rows
        assert both[row] > parts[max(0, row - 300):row].max(initial=0.0)
    assert kept.sum() < (parts > 0).sum()  # the flat stretch is one alert, not one per part


def test_the_default_is_tail_rank_and_every_name_makes_its_detector() -> None:
    assert isinstance(make_detector(DEFAULT_DETECTOR), TailRank)
    assert set(DETECTORS) == {"tail-rank", "seasonal-artime", "seasonal-likelihood", "artime",
                              "windowed-gaussian"}
    for name, kind in DETECTORS.items():
        assert isinstance(make_detector(name), kind)


def test_tail_rank_flags_each_kind_of_change_where_it_starts() -> None:
    # A noisy daily rhythm; each change below is planted in its own copy, after 1500 rows.
    changes = {
        "burst": lambda v: v.__setitem__(slice(3000, 3003), v[3000:3003] + 150.0),
        "drop": lambda v: v.__setitem__(slice(3000, 3040), 0.0),
        "level shift": lambda v: v.__setitem__(slice(3000, None), v[3000:] + 60.0),
        "flat rhythm": lambda v: v.__setitem__(slice(3000, 3100), 50.0),
    }
    stamps, clean = _daily(seed=3)
    quiet = TailRank().score(stamps, clean)[1500:].max()  # the clean series' worst noise
    for name, plant in changes.items():
        values = clean.copy()
        plant(values)
        scores = TailRank().score(stamps, values)
        # Within three rows of the start, an alert above anything the clean series scored.
        assert scores[3000:3003].max() > quiet, (name, scores[3000:3003], quiet)
        assert not scores[1500:3000].any() or scores[1500:3000].max() <= quiet, name
    # A burst and a lasting shift are beyond every value of the history: the top score.
    for name in ("burst", "level shift"):
        values = clean.copy()
        changes[name](values)
        assert TailRank().score(stamps, values)[3000:3003].max() == 1.0, name


def test_tail_rank_is_scale_free_and_silent_on_a_flat_line() -> None:
    stamps, values = _daily(seed=5)
    values[3000:3003] += 150.0
    scores = TailRank().score(stamps, values)
    # Ranks, not distances: any increasing affine change of the values gives the same scores.
    np.testing.assert_allclose(TailRank().score(stamps, 1000 * values + 7), scores)
    assert not TailRank().score(stamps, np.full(len(stamps), 3.0)).any()
    parts = TailRank().surprises(stamps, values)
    assert set(parts) == {"level", "step", "seasonal"}
    assert not any(part[:100].any() for part in parts.values())  # min_rows of learning first


def test_tail_rank_rejects_bad_parameters() -> None:
    stamps, values = _daily(300)
    for bad in ({"history": 0}, {"short": 1.5}, {"seasonal_alpha": 0.0}):
        with pytest.raises(ValueError, match="must be"):
            TailRank(**bad).score(stamps, values)
    with pytest.raises(ValueError, match=r"min_rows \(600\) must not exceed history \(500\)"):
        TailRank(history=500, min_rows=600).score(stamps, values)


def test_the_nab_harness_gives_the_file_range_and_probation_and_is_not_causal() -> None:
    stamps, values = _daily()
    values[3500:3510] += 100.0
    harness = NabHarness.of(values, probation=600)
    assert (harness.low, harness.high, harness.probation) == (values.min(), values.max(), 600)
    artime = with_harness(ARTime(), harness)
    assert artime.value_range == (values.min(), values.max()) and artime.learning_rows == 600
    assert with_harness(ARTime(), NabHarness(0.0, 1.0, 50)).learning_rows == 2 * 8 * 13
    assert with_harness(TailRank(), harness).min_rows == 600
    assert with_harness(WindowedGaussian(), harness) == WindowedGaussian()
    both = with_harness(SeasonalARTime(), harness)
    assert both.shapes == artime and both.likelihood.min_rows == 600
    # The whole file's range reaches back: the spike at 3500 squeezes the scale, and the flat
    # stretch at 3000 that the prefix's own range shows is no longer seen.
    values[3000:3100] = 50.0
    whole = with_harness(ARTime(), NabHarness.of(values, 600)).score(stamps, values)
    prefix = with_harness(ARTime(), NabHarness.of(values[:3200], 600)).score(stamps[:3200], values[:3200])
    assert prefix[3000:3100].any() and not whole[3000:3100].any()
    assert ARTime().score(stamps, values)[3000:3100].any()  # the causal form sees it
    with pytest.raises(ValueError, match="needs the file's values"):
        NabHarness.of([], probation=10)


def test_haar_transform_is_orthonormal_with_the_mean_first() -> None:
    np.testing.assert_allclose(haar_transform([1, 1, 1, 1]), [2, 0, 0, 0])
    np.testing.assert_allclose(haar_transform([1, 0]), [2**-0.5, 2**-0.5])
    x = np.random.default_rng(0).normal(size=8)
    assert np.linalg.norm(haar_transform(x)) == pytest.approx(np.linalg.norm(x))
    with pytest.raises(ValueError, match="power-of-two length, got 6"):
        haar_transform(np.zeros(6))


def test_artime_scores_a_short_or_flat_series_as_zero() -> None:
    stamps = pd.date_range("2025-01-01", periods=2000, freq="5min")
    assert not ARTime().score(stamps, np.full(2000, 7.0)).any()
    assert not ARTime().score(stamps[:500], np.arange(500.0)).any()  # shorter than learning
    assert len(ARTime().score(stamps[:0], np.array([]))) == 0


def test_a_broken_daily_rhythm_scores_highest_where_it_breaks() -> None:
    stamps, values = _daily()
    values[3000:3100] = 50.0  # the day's curve goes flat
    scores = SeasonalLikelihood().score(stamps, values)
    learnt = scores[600:]  # NAB's probation: the first 15% are for learning
    assert 3000 <= 600 + int(np.argmax(learnt)) < 3100
    assert scores[600:2990].max() < learnt.max() * 0.8


def test_slots_per_day_does_not_depend_on_the_time_unit() -> None:
    stamps = pd.date_range("2025-01-01", periods=100, freq="30min")
    # pandas 3 parses CSV times to microseconds; asi8 then counts microseconds, not nanoseconds.
    assert sampling_slots_per_day(stamps.as_unit("us")) == 48
    assert sampling_slots_per_day(stamps.as_unit("s")) == 48
    assert sampling_slots_per_day(stamps) == 48


def test_a_run_of_moderate_spikes_is_seen_by_the_density_surprise() -> None:
    rng = np.random.default_rng(2)
    n = 3000
    stamps = pd.date_range("2025-01-01", periods=n, freq="5min")
    values = rng.normal(0, 1, n)
    values[rng.choice(np.arange(300, 2500), 40, replace=False)] += 6.0  # rare spikes are normal
    values[2600:2700:4] += 6.0  # then the same spikes, dense
    parts = SeasonalLikelihood().surprises(stamps, values)
    learnt = parts["density"][600:]  # NAB's probation: the first 15% are for learning
    assert 2600 <= 600 + int(np.argmax(learnt)) < 2700
    assert parts["density"][2600:2700].max() > 2 * parts["density"][600:2500].max()


def test_unknown_detector_and_bad_values_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        make_detector("nope")
    stamps, values = _daily(300)
    values[5] = np.nan
    with pytest.raises(ValueError, match="row 5"):
        SeasonalLikelihood().score(stamps, values)
    with pytest.raises(ValueError, match="row 5"):
        SeasonalARTime().score(stamps, values)
    with pytest.raises(ValueError, match="window must be a power of two"):
        ARTime(window=6).score(stamps, np.zeros(300))
    with pytest.raises(ValueError, match="one value per timestamp"):
        ARTime().score(stamps[:10], np.zeros(300))


def test_rate_burst_detector_flags_ten_times_the_normal_rate_but_not_noise() -> None:
    rng = np.random.default_rng(1)
    detector, state = RateBurstDetector(), {}
    normal_flags = 0
    for rate in rng.poisson(5, 600):
        _, is_burst, state = detector.update(state, float(rate))
        normal_flags += is_burst
    _, is_burst, _ = detector.update(state, 50.0)
    assert normal_flags == 0 and is_burst
