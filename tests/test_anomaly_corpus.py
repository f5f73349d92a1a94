"""The seeded corpus of push-platform anomalies: NAB's layout, reproducible, labels in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.anomaly_corpus import CATEGORIES, KINDS, generate_series, write_corpus
from models.nab import label_series, probationary_length, read_windows


def test_the_same_seed_writes_the_same_corpus_and_another_seed_another(tmp_path: Path) -> None:
    first = write_corpus(tmp_path / "a", seed=7, files_per_category=3)
    write_corpus(tmp_path / "b", seed=7, files_per_category=3)
    write_corpus(tmp_path / "c", seed=8, files_per_category=3)
    name = "synthRequests/series_01.csv"
    assert (tmp_path / "a/data" / name).read_bytes() == (tmp_path / "b/data" / name).read_bytes()
    assert (tmp_path / "a/data" / name).read_bytes() != (tmp_path / "c/data" / name).read_bytes()
    assert first["files"] == 3 * len(CATEGORIES)
    windows = read_windows(tmp_path / "a" / "windows.json")
    assert sorted(windows) == sorted(f"{c}/series_{i:02d}.csv" for c in CATEGORIES for i in range(3))
    assert first["windows"] == sum(len(w) for w in windows.values())


def test_every_window_holds_its_anomaly_after_the_probation(tmp_path: Path) -> None:
    write_corpus(tmp_path, seed=1, files_per_category=6)
    windows = read_windows(tmp_path / "windows.json")
    truth = json.loads((tmp_path / "truth.json").read_text())
    for name, file_windows in windows.items():
        frame = pd.read_csv(tmp_path / "data" / name, parse_dates=["timestamp"])
        assert frame["timestamp"].is_monotonic_increasing and np.isfinite(frame["value"]).all()
        labelled = label_series(name, frame["timestamp"], file_windows)  # NAB's own checks pass
        assert labelled.n_windows == len(file_windows) == len(truth[name])
        probation_end = frame["timestamp"].iloc[probationary_length(len(frame))]
        for (start, end), anomaly in zip(file_windows, truth[name], strict=True):
            assert pd.Timestamp(start) <= pd.Timestamp(anomaly["start"]) <= pd.Timestamp(end)
            assert pd.Timestamp(anomaly["start"]) > probation_end and anomaly["kind"] in KINDS


def test_the_kinds_all_appear_and_some_files_have_no_anomaly() -> None:
    rng = np.random.default_rng(0)
    kinds: set[str] = set()
    empty = total = 0
    for _ in range(20):
        for category in CATEGORIES:
            _, anomalies, windows = generate_series(category, rng)
            kinds.update(a.kind for a in anomalies)
            empty += not windows
            total += 1
    assert kinds == set(KINDS)
    assert 0.1 < empty / total < 0.3


def test_a_burst_is_visible_in_the_values() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        frame, anomalies, _ = generate_series("synthHourly", rng)
        bursts = [a for a in anomalies if a.kind == "burst"]
        if bursts:
            break
    a = bursts[0]
    before = frame["value"].iloc[a.start - 48:a.start].median()
    assert frame["value"].iloc[a.start:a.start + a.rows].max() > 2 * before


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown category 'synthNope'"):
        generate_series("synthNope", np.random.default_rng(0))
    with pytest.raises(ValueError, match="files_per_category must be at least 1"):
        write_corpus(tmp_path, files_per_category=0)
    assert not any(tmp_path.iterdir())
