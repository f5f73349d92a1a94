"""Streaming detectors score causally, in [0, 1], and find a break in a daily rhythm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.streaming import (
    RateBurstDetector,
    SeasonalLikelihood,
    WindowedGaussian,
    make_detector,
    sampling_slots_per_day,
)


def _daily(n: int = 4000, seed: int = 0) -> tuple[pd.DatetimeIndex, np.ndarray]:
    stamps = pd.date_range("2025-01-01", periods=n, freq="5min")
    hours = stamps.hour + stamps.minute / 60
    rng = np.random.default_rng(seed)
    values = 50 + 30 * np.sin(2 * np.pi * np.asarray(hours) / 24) + rng.normal(0, 1, n)
    return stamps, values


@pytest.mark.parametrize("detector", [SeasonalLikelihood(), WindowedGaussian()], ids=type)
def test_scores_use_only_the_past(detector) -> None:  # type: ignore[no-untyped-def]
    stamps, values = _daily()
    full = detector.score(stamps, values)
    prefix = detector.score(stamps[:2500], values[:2500])
    np.testing.assert_allclose(full[:2500], prefix)
    assert ((full >= 0) & (full <= 1)).all()


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


def test_rate_burst_detector_flags_ten_times_the_normal_rate_but_not_noise() -> None:
    rng = np.random.default_rng(1)
    detector, state = RateBurstDetector(), {}
    normal_flags = 0
    for rate in rng.poisson(5, 600):
        _, is_burst, state = detector.update(state, float(rate))
        normal_flags += is_burst
    _, is_burst, _ = detector.update(state, 50.0)
    assert normal_flags == 0 and is_burst
