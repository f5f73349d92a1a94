"""The NAB scorer against hand-computed cases and NAB's published windowed-Gaussian score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.nab import (
    STANDARD_PROFILE,
    label_series,
    left_out_score,
    optimise_threshold,
    probationary_length,
    scaled_sigmoid,
    score_corpus,
    score_file,
)
from models.streaming import SeasonalARTime, SeasonalLikelihood, TailRank, WindowedGaussian

NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab_subset"


def _stamps(n: int) -> pd.DatetimeIndex:
    return pd.date_range("2014-01-01", periods=n, freq="5min")


def test_scaled_sigmoid_matches_the_paper() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(3.0) == -1.0


def test_probation_is_fifteen_percent_capped_at_750_rows() -> None:
    assert probationary_length(4032) == 604
    assert probationary_length(22695) == 750


def test_first_detection_in_a_window_counts_once_and_earliest_is_worth_tp_weight() -> None:
    stamps = _stamps(1000)
    series = label_series("f", stamps, [(stamps[500], stamps[599])])
    scores = np.zeros(1000)
    scores[[500, 550, 560]] = 1.0
    result = score_file(series, scores, threshold=0.5)
    assert result.raw == pytest.approx(1.0)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (1, 0, 0)


def test_missed_window_costs_fn_and_early_false_positive_costs_fp() -> None:
    stamps = _stamps(1000)
    series = label_series("f", stamps, [(stamps[500], stamps[599])])
    scores = np.zeros(1000)
    scores[300] = 1.0  # after probation (150 rows), before the window
    scores[10] = 1.0  # in probation: ignored
    result = score_file(series, scores, threshold=0.5)
    assert result.raw == pytest.approx(-1.0 - 0.11)


def test_false_positive_just_after_a_window_costs_little_and_far_after_costs_fp() -> None:
    stamps = _stamps(1000)
    series = label_series("f", stamps, [(stamps[500], stamps[599])])
    near, far = np.zeros(1000), np.zeros(1000)
    near[601] = 1.0
    far[990] = 1.0
    near_raw = score_file(series, near, 0.5).raw + 1.0  # remove the missed window
    far_raw = score_file(series, far, 0.5).raw + 1.0
    assert -0.11 < near_raw < -0.005
    assert far_raw == pytest.approx(-0.11, abs=1e-4)


def test_threshold_sweep_agrees_with_scoring_at_that_threshold() -> None:
    rng = np.random.default_rng(0)
    corpus = {}
    for name in ("a/x.csv", "a/y.csv"):
        stamps = _stamps(2000)
        series = label_series(name, stamps, [(stamps[900], stamps[1000]), (stamps[1500], stamps[1550])])
        corpus[name] = (series, rng.random(2000))
    threshold, best = optimise_threshold(list(corpus.values()))
    at = sum(score_file(s, v, threshold).raw for s, v in corpus.values())
    assert at == pytest.approx(best)
    result = score_corpus(corpus)
    assert result.score == pytest.approx(100 * (best + 4) / 8)


def _nab_corpus(detector) -> dict:  # type: ignore[no-untyped-def]
    windows = json.loads((NAB / "windows.json").read_text())
    corpus = {}
    for name, file_windows in windows.items():
        frame = pd.read_csv(NAB / "data" / name, parse_dates=["timestamp"])
        series = label_series(name, frame["timestamp"], file_windows, STANDARD_PROFILE)
        corpus[name] = (series, detector.score(frame["timestamp"], frame["value"]))
    return corpus


def test_windowed_gaussian_scores_near_nabs_published_12_1_and_ours_beats_it() -> None:
    baseline = score_corpus(_nab_corpus(WindowedGaussian())).score
    ours = score_corpus(_nab_corpus(SeasonalLikelihood())).score
    assert baseline == pytest.approx(12.1, abs=0.5)
    # Issue 7 asks for >= 60; this pins what the detector reaches today, 54.19 (docs/anomaly.md).
    assert ours >= 53


@pytest.mark.slow
def test_default_detector_reaches_the_issues_60_on_the_nab_subset() -> None:
    result = score_corpus(_nab_corpus(SeasonalARTime()))
    # 63.55 in docs/anomaly.md; a change that loses more than 0.55 points fails here.
    assert result.score >= 63.0
    categories = result.by_prefix()
    assert categories["artificialWithAnomaly"] >= 86.5 and categories["realKnownCause"] >= 55.5


def test_left_out_score_scores_each_category_at_the_threshold_of_the_others() -> None:
    stamps = _stamps(1000)
    window = [(stamps[600], stamps[650])]
    corpus = {}
    # Category A's anomaly scores 0.9, B's 0.5; each file also has one false alarm at 0.4.
    for name, peak in (("A/one.csv", 0.9), ("A/two.csv", 0.9), ("B/one.csv", 0.5)):
        scores = np.zeros(1000)
        scores[610], scores[300] = peak, 0.4
        corpus[name] = (label_series(name, stamps, window), scores)
    left_out = left_out_score(corpus)
    assert set(left_out.by_group) == {"A", "B"} and left_out.grouped_by == "category"
    for group, members in (("A", ["A/one.csv", "A/two.csv"]), ("B", ["B/one.csv"])):
        others = [corpus[n] for n in corpus if n not in members]
        assert left_out.thresholds[group] == optimise_threshold(others)[0]
    # B's threshold comes from A (0.9): B's 0.5 is missed there, so the left-out score is lower.
    assert left_out.thresholds["B"] == 0.9
    assert left_out.by_group["B"] == 0.0
    assert left_out.score < score_corpus(corpus).score
    raw = sum(f.raw for f in left_out.files)
    assert left_out.score == pytest.approx(100 * (raw + 3) / 6)
    # One category: each file is left out instead.
    single = {f"A/{n}": v for n, v in corpus.items()}
    by_file = left_out_score(single)
    assert set(by_file.by_group) == {f"A/{n}" for n in corpus} and by_file.grouped_by == "file"
    with pytest.raises(ValueError, match="at least two files"):
        left_out_score({"A/one.csv": corpus["A/one.csv"]})


@pytest.mark.slow
def test_tail_rank_beats_the_baseline_on_the_nab_subset_left_out() -> None:
    corpus = _nab_corpus(TailRank())
    result, left_out = score_corpus(corpus), left_out_score(corpus)
    baseline = left_out_score(_nab_corpus(WindowedGaussian())).score
    # 56.00 in-sample and 52.16 left out in docs/anomaly.md; the baseline 11.43 left out.
    assert result.score >= 55.5 and left_out.score >= 51.5
    assert left_out.score > baseline + 30
