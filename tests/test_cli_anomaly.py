"""`pushpilot anomaly detect|eval` through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PUSHPILOT = Path(sys.executable).with_name("pushpilot")
NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab_subset"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([str(PUSHPILOT), "anomaly", *args], capture_output=True, text=True,
                          env=env, timeout=180, cwd=tmp_path)


def test_detect_writes_the_series_back_with_a_causal_score(tmp_path: Path) -> None:
    source = NAB / "data" / "realKnownCause" / "ec2_request_latency_system_failure.csv"
    out = tmp_path / "scored.csv"
    done = _run(tmp_path, "detect", "--input", str(source), "--out", str(out))
    assert done.returncode == 0, done.stderr
    scored, original = pd.read_csv(out), pd.read_csv(source)
    assert list(scored.columns) == ["timestamp", "value", "anomaly_score"]
    assert scored["timestamp"].tolist() == original["timestamp"].tolist()
    assert scored["anomaly_score"].between(0, 1).all()
    prefix = tmp_path / "prefix.csv"
    original.head(2000).to_csv(prefix, index=False)
    assert _run(tmp_path, "detect", "--input", str(prefix), "--out", str(tmp_path / "p.csv")).returncode == 0
    assert pd.read_csv(tmp_path / "p.csv")["anomaly_score"].tolist() == scored["anomaly_score"].head(2000).tolist()


@pytest.mark.slow
def test_eval_prints_files_the_left_out_scores_and_the_baselines_in_one_run(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval", "--data", str(NAB / "data"), "--windows", str(NAB / "windows.json"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert sum(": raw=" in line for line in lines) == 18
    table = [line.split() for line in lines if line.split()[:1] in (["tail-rank"], ["windowed-gaussian"])]
    assert [row[0] for row in table] == ["tail-rank", "windowed-gaussian"]
    summary = json.loads(lines[-1])
    assert summary["detector"] == "tail-rank"
    assert summary["windowed-gaussian"]["score"] == pytest.approx(12.1, abs=0.5)
    ours = summary["tail-rank"]  # 56.00 in-sample, 52.16 left out (docs/anomaly.md)
    assert ours["score"] >= 55.5 and ours["left_out"] >= 51.5
    assert set(ours["left_out_by_group"]) == {"artificialNoAnomaly", "artificialWithAnomaly",
                                                 "realKnownCause"}
    assert float(table[0][2]) == pytest.approx(ours["left_out"], abs=0.01)
    assert summary["seasonal-artime"]["score"] == pytest.approx(63.55, abs=0.05)  # the old default


@pytest.mark.slow
def test_a_written_corpus_evaluates_with_the_harness_reported_apart(tmp_path: Path) -> None:
    written = _run(tmp_path, "corpus", "--out", str(tmp_path / "c"), "--seed", "3",
                   "--files-per-category", "2")
    assert written.returncode == 0, written.stderr
    counts = json.loads(written.stdout)
    assert counts["files"] == 6 and counts["seed"] == 3
    done = _run(tmp_path, "eval", "--data", str(tmp_path / "c" / "data"), "--windows",
                str(tmp_path / "c" / "windows.json"), "--baseline", "windowed-gaussian",
                "--baseline", "artime", "--nab-harness")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k for k in summary if isinstance(summary[k], dict)} == {
        "tail-rank", "windowed-gaussian", "artime", "tail-rank+harness",
        "windowed-gaussian+harness", "artime+harness"}
    assert set(summary["tail-rank"]["left_out_by_group"]) == {"synthHourly", "synthMetrics",
                                                                 "synthRequests"}
    # The windowed Gaussian takes nothing from the harness; ARTime's range does change its scores.
    assert summary["windowed-gaussian+harness"]["raw"] == summary["windowed-gaussian"]["raw"]
    again = _run(tmp_path, "corpus", "--out", str(tmp_path / "c"))
    assert again.returncode == 2 and "already holds a corpus" in again.stderr
    assert json.loads((tmp_path / "c" / "truth.json").read_text())  # left as it was


def test_unknown_baseline_fails_before_any_work(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval", "--data", str(NAB / "data"), "--windows", str(NAB / "windows.json"),
                "--baseline", "nope")
    assert done.returncode == 2 and "error: --baseline: unknown detector 'nope'" in done.stderr


def _small_corpus(tmp_path: Path, files: list[str]) -> tuple[Path, Path]:
    """Shared NAB files and their windows, as a corpus of their own."""
    source = json.loads((NAB / "windows.json").read_text())
    data = tmp_path / "small"
    for name in files:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes((NAB / "data" / name).read_bytes())
    windows = tmp_path / "small.json"
    windows.write_text(json.dumps({name: source[name] for name in files}))
    return data, windows


def test_one_category_leaves_each_file_out_and_says_so(tmp_path: Path) -> None:
    files = ["artificialWithAnomaly/art_daily_jumpsup.csv", "artificialWithAnomaly/art_daily_nojump.csv"]
    data, windows = _small_corpus(tmp_path, files)
    done = _run(tmp_path, "eval", "--data", str(data), "--windows", str(windows),
                "--baseline", "windowed-gaussian")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["tail-rank"]["left_out_by"] == "file"
    assert set(summary["tail-rank"]["left_out_by_group"]) == set(files)
    header = next(line for line in lines if line.startswith("detector"))
    assert header.split()[3:] == ["art_daily_jumpsup", "art_daily_nojump"]
    assert "(file left out)" in done.stdout


def test_one_file_is_scored_in_sample_with_no_left_out_score(tmp_path: Path) -> None:
    data, windows = _small_corpus(tmp_path, ["artificialWithAnomaly/art_daily_jumpsup.csv"])
    done = _run(tmp_path, "eval", "--data", str(data), "--windows", str(windows), "--nab-harness")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["tail-rank"]["left_out"] is None and summary["tail-rank+harness"]["left_out"] is None
    assert summary["tail-rank"]["score"] > 0 and summary["tail-rank"]["left_out_by_group"] == {}
    assert "left out: not scored" in done.stderr and "at least two files" in done.stderr


def test_a_series_with_no_rows_is_named_and_nothing_is_scored(tmp_path: Path) -> None:
    data, windows = _small_corpus(tmp_path, ["artificialWithAnomaly/art_daily_jumpsup.csv",
                                             "realKnownCause/nyc_taxi.csv"])
    (data / "realKnownCause" / "nyc_taxi.csv").write_text("timestamp,value\n")
    done = _run(tmp_path, "eval", "--data", str(data), "--windows", str(windows), "--nab-harness")
    assert done.returncode == 2 and done.stdout == ""
    assert "nyc_taxi.csv: has no rows" in done.stderr


def test_corpus_refuses_a_negative_seed_a_file_and_a_folder_in_use(tmp_path: Path) -> None:
    negative = _run(tmp_path, "corpus", "--out", str(tmp_path / "n"), "--seed", "-1")
    assert negative.returncode == 2 and "--seed" in negative.stderr and not (tmp_path / "n").exists()
    (tmp_path / "f").write_text("mine")
    as_file = _run(tmp_path, "corpus", "--out", str(tmp_path / "f"))
    assert as_file.returncode == 2 and "is a file" in as_file.stderr
    assert (tmp_path / "f").read_text() == "mine"
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    in_use = _run(tmp_path, "corpus", "--out", str(tmp_path / "used"))
    assert in_use.returncode == 2 and "already holds files" in in_use.stderr
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]


def test_detector_help_names_every_detector() -> None:
    from models.streaming import DEFAULT_DETECTOR, DETECTORS
    from serving.cli_anomaly import _DETECTOR_HELP

    assert all(name in _DETECTOR_HELP for name in DETECTORS)
    assert f"{DEFAULT_DETECTOR} (default)" in _DETECTOR_HELP


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,value\n2014-01-01 00:00:00,1\n", "column 'timestamp' is missing"),
        ("timestamp,value\nyesterday-ish,1\n", "row 2 has timestamp 'yesterday-ish'"),
        ("timestamp,value\n2014-01-01 00:00:00,abc\n", "row 2 has value 'abc'"),
    ],
)
def test_bad_series_is_an_error_with_exit_2(tmp_path: Path, content: str, message: str) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(content)
    done = _run(tmp_path, "detect", "--input", str(source), "--out", str(tmp_path / "o.csv"))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr


def test_missing_windows_file_is_an_error_with_exit_2(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval", "--data", str(NAB / "data"), "--windows", str(tmp_path / "nope.json"))
    assert done.returncode == 2 and "error: --windows" in done.stderr and "no such file" in done.stderr
